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


class StorageError(RuntimeError):
    """A file could not be written because its folder cannot take it: a full disk or quota (ENOSPC,
    EDQUOT, EFBIG), a read-only or forbidden folder (EROFS, EACCES). The message is one line with the
    file, the folder, the space it needs and the space free there, and the fix; the files written
    before it (earlier checkpoints, exports) are complete and kept (``atomic_files.py``)."""


class UnknownResolverError(ConfigError):
    """An interpolation ``${name:...}`` whose resolver nobody registered (yet): an extension in
    ``./custom`` may register it, so the launcher's early check leaves it to the full check."""


def error_line(message) -> str:
    """The one line a launcher prints for a bad input, a diverged run or a full disk."""
    return f"error: {' '.join(str(message).split())}"


def one_line_errors() -> tuple:
    """The plugin's errors that end a launch with their one line, never a traceback."""
    return (ConfigError, NonFiniteError, StorageError)


def plugin_error_of(exc):
    """The plugin error ``exc`` is; for an ``OSError``, the full disk it means (a logger that hit it
    first, or while the run stopped on the plugin's own ``StorageError``: ``atomic_files.as_storage_error``);
    else None."""
    if isinstance(exc, one_line_errors()):
        return exc
    if isinstance(exc, OSError):
        from .atomic_files import as_storage_error

        return as_storage_error(exc)
    return None


def install_launch_excepthook() -> None:
    """Under threestudio's own ``launch.py`` (which catches nothing), print the plugin's errors as the
    one ``error:`` line ``lucid-launch`` prints, instead of a traceback through Lightning; any other
    exception goes to the previous hook unchanged."""
    import os
    import sys

    if not sys.argv or os.path.basename(sys.argv[0]) != "launch.py":
        return
    previous = sys.excepthook
    if getattr(previous, "lucid_one_line", False):
        return

    def hook(kind, value, traceback):
        error = plugin_error_of(value)
        if error is not None:
            print(error_line(error), file=sys.stderr, flush=True)
        else:
            previous(kind, value, traceback)

    hook.lucid_one_line = True
    sys.excepthook = hook
