"""A cheap look at a checkpoint file before anything loads it (``resume=``, ``system.weights=``).

Standard library only: the launcher's config check (``host/preflight.py``) runs it before torch is
imported.
"""
import os
import zipfile

from .errors import ConfigError

# torch.save's legacy (pre-1.6, non-zip) format starts with a pickled magic number
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def is_zip_checkpoint(path: str) -> bool:
    """A torch.save archive of the current (zip) format, which torch.load can memory-map."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_LEGACY_TORCH_MAGIC)) != _LEGACY_TORCH_MAGIC and zipfile.is_zipfile(path)
    except OSError:
        return False


def check_checkpoint_file(path: str, key: str = "resume") -> None:
    """A cheap look at a checkpoint before anything loads it: it exists, is a file, and is a
    complete torch.save archive (a zip whose central directory, at the very end, can be read:
    a truncated file has lost it)."""
    fix = "point it at a checkpoint the training wrote, e.g. outputs/<name>/<run>/ckpts/last.ckpt."
    if not os.path.exists(path):
        raise ConfigError(f"{key}='{path}' does not exist: {fix}")
    if not os.path.isfile(path):
        raise ConfigError(f"{key}='{path}' is not a file: {fix}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
    except OSError as e:
        raise ConfigError(f"{key}='{path}' cannot be read ({e.strerror}): {fix}") from None
    if head == _LEGACY_TORCH_MAGIC:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        if head.startswith(b"PK"):
            raise ConfigError(
                f"{key}='{path}' is not a complete checkpoint (the archive is truncated or damaged): "
                f"re-run the training that writes it, or {fix}"
            ) from None
        raise ConfigError(
            f"{key}='{path}' is not a checkpoint (not a torch.save archive; a .ply or a log cannot be "
            f"resumed from): {fix}"
        ) from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise ConfigError(f"{key}='{path}' is a zip archive but not a torch checkpoint (no data.pkl): {fix}")
