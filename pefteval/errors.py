"""Errors a user can cause. The CLI prints them without a traceback and exits with status 2."""


class UserError(Exception):
    """A problem with the user's input (config, names, data files) and how to fix it."""


class ConfigError(UserError):
    """An experiment config is malformed; the message names the YAML path."""


class DataError(UserError):
    """A data file is missing or malformed; the message names the file (and line)."""


class OutputError(UserError):
    """A results file could not be written (no space left, read-only file system, a file where a
    directory should be); the message names the file and the reason. Inside a trial it fails the
    trial; before or between trials it stops the sweep."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""
