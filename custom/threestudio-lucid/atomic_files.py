"""Atomic file writes: a kill, a crash or a full disk leaves the old complete file (or none), never a
partial one.

Every write goes to a temporary file in the target's own folder (so the rename stays on one file
system), is flushed and fsynced, then ``os.replace``-d over the target, and the folder is fsynced so
that the rename itself survives a power cut. On any failure the temporary is removed and the target
is untouched.

- :func:`write_bytes` / :func:`write_text` when the content is in memory (its size is then known
  exactly: serialise first, e.g. ``torch.save`` to a ``BytesIO``, ``PlyData.write`` to a file
  object, ``trimesh`` export without a path);
- :func:`temporary_path` for libraries that only write by path (ffmpeg, OpenCV, matplotlib): it
  yields the temporary path, whose name keeps the target's extension (the library picks the format
  from it), and renames it on success. A library that reports a failure only by a return value or a
  log (OpenCV's ``imwrite``, imageio-ffmpeg) gets a check of the written file first
  (:func:`check_image_decodes`, :func:`check_complete_mp4`).

Temporaries are hidden: ``.lucid-tmp-<host>-<pid>-<random>~<ext>``. The name carries neither the
target's name nor a digit before the extension, so a reader that lists the folder (threestudio's
``save_img_sequence`` with ``r"(\\d+)\\.png"``, Lightning's search for ``last`` checkpoints, a glob)
never takes one for a result; in-memory writes drop the extension too (a ``.ckpt`` filter does not
see them). A writer killed with ``-9`` can leave one: the first write of a later process into the same
folder removes those of dead writers on this host.

A full disk (ENOSPC, EDQUOT, EFBIG) or a folder that cannot be written (EROFS, EACCES) raises one
:class:`~threestudio_lucid.errors.StorageError` whose one-line message names the file, the folder, the
space the file needs and the space free there, and says what to do.
"""
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import struct
import threading
from typing import Callable, Iterator, Optional, Union

from .errors import StorageError

# errno values that mean "this folder cannot take the file", whatever the file
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
UNWRITABLE_ERRNOS = {errno.EROFS, errno.EACCES}
STORAGE_ERRNOS = FULL_ERRNOS | UNWRITABLE_ERRNOS
# a writer that fails without an errno (ffmpeg's exit status, OpenCV's False) on a folder with less than
# this left is taken to have filled the disk
NEARLY_FULL_BYTES = 1 << 20
FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")

DEFAULT_HINT = "free space there or set exp_root_dir= to a folder on a disk with room"
UNWRITABLE_HINT = "make the folder writable or set exp_root_dir= to a folder you can write"
# the caches threestudio keeps under the working directory (text embeddings, the toy world's renders)
CACHE_HINT = ("free space there or launch from a working directory on a disk with room "
              "(the cache is ./.threestudio_cache)")

TEMPORARY_PREFIX = ".lucid-tmp-"
_TEMPORARY_NAME = re.compile(r"^\.lucid-tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+~")
_HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_cleaned_folders = set()
_cleaned_lock = threading.Lock()

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# the error
# ---------------------------------------------------------------------------------------------
def size_text(n: int) -> str:
    """A byte count for a person: ``812 B``, ``3.4 kB``, ``25.3 MB``, ``1.2 GB`` (decimal units, as df -H)."""
    if n < 1000:
        return f"{n} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < scale * 1000 or unit == "GB":
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"  # not reached


def free_space(folder: str) -> Optional[int]:
    """Free bytes on the file system holding ``folder`` (its nearest existing parent), or None."""
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _reason(code: Optional[int]) -> str:
    if code == errno.EDQUOT:
        return "the disk quota is exceeded"
    if code == errno.EFBIG:
        return "the file is too large for the file system"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code == errno.EACCES:
        return "permission denied"
    return "no space left on the device"


def storage_error(path: Optional[PathLike], code: Optional[int] = errno.ENOSPC, needed: Optional[int] = None,
                  at_least: Optional[int] = None, folder: Optional[PathLike] = None,
                  hint: Optional[str] = None) -> StorageError:
    """The one-line error for a file that could not be written.

    ``needed``: the file's exact size; else ``at_least``: what was written before the failure.
    ``folder`` defaults to the file's folder; ``hint`` to :data:`DEFAULT_HINT` (or
    :data:`UNWRITABLE_HINT` for EROFS/EACCES)."""
    if folder is None:
        folder = os.path.dirname(os.path.abspath(os.fspath(path))) if path is not None else os.getcwd()
    folder = os.path.abspath(os.fspath(folder))
    if hint is None:
        hint = UNWRITABLE_HINT if code in UNWRITABLE_ERRNOS else DEFAULT_HINT
    what = f"cannot write '{os.fspath(path)}'" if path is not None else "cannot write"
    if needed is not None:
        size = f"it needs {size_text(needed)}"
    elif at_least:
        size = f"it needs at least {size_text(at_least)}"
    else:
        size = "its size is unknown"
    free = free_space(folder)
    free_text = f"{size_text(free)} free there" if free is not None else "free space unknown"
    name = errno.errorcode.get(code, "") if code is not None else ""
    return StorageError(
        f"{what}: {_reason(code)} in '{folder}'{f' ({name})' if name else ''}: {size}, {free_text}; "
        f"the files written before it are kept; {hint}."
    )


def is_storage_failure(exc: BaseException, folder: Optional[PathLike] = None,
                       codes=STORAGE_ERRNOS) -> Optional[int]:
    """The errno when ``exc`` means the folder cannot take the file (one of ``codes``: a full disk, a
    read-only or forbidden folder), else None. Errors without an errno (a library's own IOError, an
    ffmpeg exit status) count as ENOSPC when they say so or when ``folder`` has under 1 MiB left."""
    seen = set()
    while exc is not None and id(exc) not in seen:  # a library may wrap the OSError
        seen.add(id(exc))
        if isinstance(exc, StorageError):
            return None
        code = getattr(exc, "errno", None)
        if isinstance(exc, OSError) and code in codes:
            return code
        if any(text in str(exc) for text in FULL_DISK_TEXTS):
            return errno.ENOSPC
        exc = exc.__cause__ or exc.__context__
    if folder is not None:
        free = free_space(os.fspath(folder))
        if free is not None and free < NEARLY_FULL_BYTES:
            return errno.ENOSPC
    return None


def as_storage_error(exc: BaseException, path: Optional[PathLike] = None, folder: Optional[PathLike] = None,
                     hint: Optional[str] = None) -> Optional[StorageError]:
    """``exc`` as a :class:`StorageError` when it is a storage failure (an OSError with ENOSPC, ...
    raised outside this module, e.g. by a logger), else None. A StorageError it was raised while
    handling (a logger that failed on the same full disk while the run stopped) is the one returned.
    EACCES is left alone here: outside a write it may come from reading a file."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, StorageError):
            return cause
        cause = cause.__cause__ or cause.__context__
    code = is_storage_failure(exc, codes=FULL_ERRNOS | {errno.EROFS})
    if code is None:
        return None
    if path is None and getattr(exc, "filename", None):
        path, folder = exc.filename, None  # the file's own folder, not the fallback
    return storage_error(path, code, folder=folder, hint=hint)


# ---------------------------------------------------------------------------------------------
# temporaries
# ---------------------------------------------------------------------------------------------
def _temporary_name(extension: str) -> str:
    return f"{TEMPORARY_PREFIX}{_HOST_ID}-{os.getpid()}-{secrets.token_hex(4)}~{extension}"


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporaries."""
    return _TEMPORARY_NAME.match(os.path.basename(name)) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temporaries(folder: PathLike) -> int:
    """Remove the temporaries that writers on this host left in ``folder`` when they died (kill -9,
    power cut); those of live writers stay. Returns how many went."""
    folder = os.fspath(folder)
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = _TEMPORARY_NAME.match(name)
        if not match or match["host"] != _HOST_ID:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed += 1
        except OSError:
            pass
    return removed


def _clean_once(folder: str) -> None:
    key = os.path.realpath(folder)
    with _cleaned_lock:
        if key in _cleaned_folders:
            return
        _cleaned_folders.add(key)
    remove_stale_temporaries(folder)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on a directory; the rename is done
        if e.errno in FULL_ERRNOS:
            raise
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def temporary_path(path: PathLike, *, size: Optional[int] = None, keep_extension: bool = True,
                   verify: Optional[Callable[[str], None]] = None,
                   hint: Optional[str] = None) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception, the
    temporary is fsynced and renamed to ``path``.

    ``size``: the exact size the content will have, when known (named by a full-disk error).
    ``keep_extension``: the temporary ends with ``path``'s extension (for libraries that choose the
    format by it). ``verify(temporary)``: checks the written file before it replaces ``path`` (raise to
    refuse it), for writers that report failure by a return value the caller cannot see.

    A failure removes the temporary, leaves ``path`` as it was and, when the folder could not take the
    file, raises :class:`StorageError` instead of the original error."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    extension = os.path.splitext(path)[1] if keep_extension else ""
    try:
        os.makedirs(folder, exist_ok=True)
        _clean_once(folder)
        tmp = os.path.join(folder, _temporary_name(extension))
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # claims the name (umask applies)
    except OSError as e:
        code = is_storage_failure(e)
        if code is None:
            raise
        raise storage_error(path, code, needed=size, hint=hint) from e
    try:
        yield tmp
        if verify is not None:
            verify(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        written = _size_of(tmp)
        code = is_storage_failure(e, folder) if isinstance(e, Exception) else None
        _unlink(tmp)
        if code is None:
            raise
        raise storage_error(path, code, needed=size, at_least=written, hint=hint) from e
    try:
        _fsync_folder(folder)
    except OSError as e:
        code = is_storage_failure(e)
        if code is None:
            raise
        raise storage_error(path, code, needed=size, hint=hint) from e


# ---------------------------------------------------------------------------------------------
# checks for writers that do not report a failure (``verify=`` of temporary_path)
# ---------------------------------------------------------------------------------------------
def check_image_decodes(path: str) -> None:
    """Raise OSError unless ``path`` decodes as an image (OpenCV's ``imwrite`` reports a failed write only
    by its return value, which threestudio's SaverMixin drops)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for a truncated file
        raise OSError(f"the image writer left an incomplete file ({type(e).__name__}: {e})") from None


def check_complete_mp4(path: str) -> None:
    """Raise OSError unless ``path``'s top-level MP4 boxes tile the file and hold ``moov`` and ``mdat``.
    ffmpeg writes ``moov`` last (the trailer); when that fails (a full disk) imageio-ffmpeg only prints
    ffmpeg's log and leaves a file no player opens."""
    size = os.path.getsize(path)
    kinds, offset = set(), 0
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box, kind = struct.unpack(">I4s", header[:8])
            if box == 1 and len(header) == 16:
                box = struct.unpack(">Q", header[8:16])[0]
            elif box == 0:
                box = size - offset
            if box < 8 or offset + box > size:
                break
            kinds.add(kind)
            offset += box
    if offset != size or not {b"moov", b"mdat"} <= kinds:
        raise OSError(f"ffmpeg left an incomplete MP4 ({size} bytes; boxes {sorted(k.decode('latin-1') for k in kinds)})")


def write_bytes(path: PathLike, data, *, hint: Optional[str] = None) -> str:
    """Write ``data`` (bytes, bytearray, memoryview) to ``path`` atomically; returns ``path``."""
    view = memoryview(data)
    size = view.nbytes
    with temporary_path(path, size=size, keep_extension=False, hint=hint) as tmp:
        with open(tmp, "wb") as f:
            f.write(view)
    return os.fspath(path)


def write_text(path: PathLike, text: str, *, encoding: str = "utf-8", hint: Optional[str] = None) -> str:
    """Write ``text`` to ``path`` atomically (universal newlines are not translated); returns ``path``."""
    return write_bytes(path, text.encode(encoding), hint=hint)


def copy_file(source: PathLike, path: PathLike, *, hint: Optional[str] = None) -> str:
    """Copy ``source`` to ``path`` atomically (streamed: large files are not read into memory)."""
    size = os.path.getsize(source)
    with temporary_path(path, size=size, keep_extension=False, hint=hint) as tmp:
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return os.fspath(path)
