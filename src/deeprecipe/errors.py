"""Errors caused by input a user can fix.

Every subclass of :class:`DeeprecipeError` carries a message that names the problem and the fix.
``deeprecipe.train.main`` prints such messages without a traceback; any other exception is a bug
and keeps its traceback.
"""


class DeeprecipeError(Exception):
    """Base class: a problem with the user's input (config, data, checkpoint), with its fix."""


class ConfigError(DeeprecipeError):
    """A config value of the wrong type or range."""


class DataNotFoundError(DeeprecipeError):
    """A dataset is not where the config says, and cannot be downloaded."""


class CorruptDataError(DeeprecipeError):
    """A data file exists but cannot be read or has the wrong content."""


class NonFiniteLossError(DeeprecipeError):
    """The training loss became NaN or infinite."""


class CheckpointError(DeeprecipeError):
    """A checkpoint is missing, unreadable, or does not fit the model it is loaded into."""
