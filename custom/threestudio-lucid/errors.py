"""Errors the plugin raises for bad user input. Each message is one line naming the key/file/value
and the fix; the launcher prints it without a traceback."""


class ConfigError(ValueError):
    """A bad configuration value, file or path."""


class UnknownConfigKeyError(ConfigError, TypeError):
    """A key the component's ``Config`` does not define (threestudio raises TypeError here)."""


class NonFiniteError(RuntimeError):
    """Training diverged: a loss, gradient or parameter became NaN/inf (or absurdly large). The message
    is one line with the step, what went bad, the last good checkpoint and a hint; nothing non-finite
    is written to a checkpoint or a PLY."""


class UnknownResolverError(ConfigError):
    """An interpolation ``${name:...}`` whose resolver nobody registered (yet): an extension in
    ``./custom`` may register it, so the launcher's early check leaves it to the full check."""
