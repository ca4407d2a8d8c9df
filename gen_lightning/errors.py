"""Errors that the `gen` CLI turns into one clear line instead of a traceback.

Raise these for mistakes a user can fix from the config or the command line; the message
names the bad value and the fix. Programming errors stay ordinary exceptions.
"""


class GenError(Exception):
    """Base class of the user-facing errors; `gen` prints `error: <message>` and exits 2."""


class ConfigError(GenError, ValueError):
    """A value in the config or on the command line is wrong, or parts of it do not fit."""


def check_rules(rules: list[tuple[bool, str]]) -> None:
    """Raise ConfigError with the message of the first rule `(holds, message)` that does not hold."""
    for holds, message in rules:
        if not holds:
            raise ConfigError(message)


class DatasetNotFoundError(GenError, FileNotFoundError):
    """A dataset's files are not where the DataModule looked, and it could not download them."""


class CheckpointError(GenError, ValueError):
    """A checkpoint file is missing, truncated, or not a Lightning checkpoint."""


class CheckpointMismatchError(GenError, ValueError):
    """A checkpoint was written by another model class, or for data of another shape."""


class TrainingDivergedError(GenError, RuntimeError):
    """A loss became non-finite; the run stops and the last good checkpoint is kept."""
