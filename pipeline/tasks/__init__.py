"""Built-in tasks: a teacher shipped with the project and a real test split used only for reports."""
