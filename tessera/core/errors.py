"""User-facing errors: each says what was wrong and what to do about it.

The command line prints a ``TesseraError`` as one line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class TesseraError(Exception):
    """Base class of every error caused by the user's input, config, data or environment."""


class ConfigError(TesseraError):
    """A configuration value, technique name or parameter is invalid."""


class IncompatibleError(ConfigError):
    """Two selected techniques (or a technique and the model) cannot be combined.

    ``IncompatibleError(first, second, reason)`` names both parts (``adapter=lora cannot be combined with
    model=tiny: ...``); ``IncompatibleError(message)`` is a message of its own (``first`` and ``second`` are then None).
    """

    def __init__(self, first: str, second: str | None = None, reason: str | None = None):
        if (second is None) != (reason is None):
            raise TypeError("IncompatibleError takes a message, or first, second and reason")
        self.first, self.second = (first, second) if reason is not None else (None, None)
        super().__init__(first if reason is None else f"{first} cannot be combined with {second}: {reason}")


class DataError(TesseraError):
    """A data file is missing or its content does not match the configuration."""


class AssetError(TesseraError):
    """An offline asset is missing or corrupt."""


class PluginError(TesseraError):
    """A plugin package is broken or misbehaves."""
