"""Built-in tasks: a teacher shipped with the project and a real test split used only for reports."""

# Input shape and class count of each built-in task. Kept free of torch so that the config can check
# shape-dependent settings before any work starts.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {"digits": ((1, 8, 8), 10)}
