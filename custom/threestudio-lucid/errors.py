"""Errors the plugin raises for bad user input. Each message is one line naming the key/file/value
and the fix; the launcher prints it without a traceback."""


class ConfigError(ValueError):
    """A bad configuration value, file or path."""


class UnknownConfigKeyError(ConfigError, TypeError):
    """A key the component's ``Config`` does not define (threestudio raises TypeError here)."""
