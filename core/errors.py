"""Errors the CLI turns into one clear line and an exit code.

UsageError (exit 2): the user asked for something malformed or impossible.
RunError (exit 1): the request was fine but running it failed.
"""


class PipelineError(Exception):
    exit_code = 1


class UsageError(PipelineError):
    exit_code = 2


class RunError(PipelineError):
    exit_code = 1
