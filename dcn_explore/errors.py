"""Errors raised on bad input. Each message names the file, row, field or argument."""


class DCNExploreError(Exception):
    """Base class of the package's own errors."""


class ConfigError(DCNExploreError, ValueError):
    """An impossible or unknown configuration value; the message names the field."""


class DataError(DCNExploreError, ValueError):
    """Malformed input data; the message names the file/column/row and what was expected."""


class CheckpointError(DCNExploreError, ValueError):
    """A checkpoint that is missing, truncated, tampered with or of another format."""


class TrainingDivergedError(DCNExploreError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the last good metrics."""
