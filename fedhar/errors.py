"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class FedharError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(FedharError):
    """A config key or value is wrong."""


class DataError(FedharError):
    """Input data is missing, malformed or inconsistent."""


class BackboneError(FedharError):
    """A backbone cannot be resolved, fetched or loaded."""


class CheckpointError(FedharError):
    """A checkpoint does not match the model it is loaded into."""
