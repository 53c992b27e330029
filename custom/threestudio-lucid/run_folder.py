"""Run folders are claimed, not just created: one launch per ``<tag>@<timestamp>`` folder.

threestudio names a run folder to the second (``@%Y%m%d-%H%M%S``) and creates it with
``exist_ok=True``, so two launches of one config started in the same second train into the same
folder. A claim is an exclusive ``flock`` on ``<trial>/.lucid-run.lock``, held for the life of the
process (the kernel drops it when the process ends, ``kill -9`` included), plus a one-line record of
who claimed it (pid, host, start, command) that stays in the file afterwards.

A folder is free for a launch when nobody holds the lock and no earlier launch used it, i.e. it has
no record and holds no file. The one exception is a launch that continues a run of that folder
(``resume=`` of one of its checkpoints, threestudio's way of continuing from its ``parsed.yaml``).

Standard library only: the launcher's config check (``host/preflight.py``) loads it before the
package is imported.
"""
import json
import os
import socket
import sys
import time
from datetime import datetime, timedelta
from typing import Dict, Optional

LOCK_NAME = ".lucid-run.lock"
TIMESTAMP_FORMAT = "@%Y%m%d-%H%M%S"

# folders this process holds: realpath -> open file descriptor carrying the flock
_HELD: Dict[str, int] = {}


class RunFolderTaken(Exception):
    """``folder`` is another launch's: ``live`` when that launch is running now (it holds the lock),
    else an earlier launch wrote there. ``holder`` is its record (may be empty for runs made before
    claims, or by a launch without the plugin)."""

    def __init__(self, folder: str, holder: dict, live: bool):
        self.folder, self.holder, self.live = folder, holder, live
        super().__init__(f"{folder} is {describe_holder(holder, live)}")


def process_rank() -> int:
    """The distributed rank Lightning will give this process (0 when not distributed): only rank 0
    claims, the other ranks join the folder it claimed."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            try:
                return int(os.environ[name])
            except ValueError:
                return 0
    return 0


def describe_holder(holder: dict, live: bool) -> str:
    who = []
    if holder.get("pid"):
        where = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
        who.append(f"pid {holder['pid']}{where}")
    if holder.get("started"):
        who.append(f"started {holder['started']}")
    detail = f" ({', '.join(who)})" if who else ""
    return f"in use by another launch{detail}" if live else f"an earlier run's folder{detail}"


def _read_record(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode("utf-8", "replace").strip()
    except OSError:
        return {}
    if not text:
        return {}
    try:
        record = json.loads(text.splitlines()[0])
    except ValueError:
        return {"note": text[:200]}
    return record if isinstance(record, dict) else {}


def _holds_files(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(name != LOCK_NAME for name in files):
            return True
    return False


def holds(folder: str) -> bool:
    """Whether this process has claimed ``folder``."""
    return os.path.realpath(folder) in _HELD


def claim(folder: str, resuming: bool = False) -> None:
    """Make ``folder`` (created if missing) this process's run folder, or raise :class:`RunFolderTaken`.

    ``resuming``: this launch continues a run of that very folder, so an earlier launch's record and
    files are expected; a live holder is refused all the same. Claiming a folder this process already
    holds is a no-op. Raises ``OSError`` when the folder cannot be created or the lock file written.
    """
    import fcntl  # POSIX; imported here so that the module loads anywhere

    real = os.path.realpath(folder)
    if real in _HELD:
        return
    lock_path = os.path.join(folder, LOCK_NAME)
    for attempt in range(5):
        os.makedirs(folder, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            break
        except FileNotFoundError:  # a failed launch removed its empty folder between the two calls
            if attempt == 4:
                raise
            time.sleep(0.01)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_record(fd)
        os.close(fd)
        raise RunFolderTaken(folder, holder, live=True) from None
    except OSError:
        os.close(fd)
        raise
    earlier = _read_record(fd)
    if not resuming and (earlier or _holds_files(folder)):
        os.close(fd)  # closing drops the lock
        raise RunFolderTaken(folder, earlier, live=False)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else "",
    }
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        os.fsync(fd)
    except OSError:
        os.close(fd)
        raise
    _HELD[real] = fd


def release(folder: str) -> None:
    """Give up this process's claim on ``folder`` (its record stays: the folder is an earlier run's)."""
    fd = _HELD.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)


def remove_claim(folder: str) -> None:
    """Release ``folder`` and delete its lock file: for a launch that leaves nothing behind (it failed
    before writing anything and removes the folder it made)."""
    if holds(folder):
        try:
            os.remove(os.path.join(folder, LOCK_NAME))
        except OSError:
            pass
    release(folder)


def next_timestamp(timestamp: str) -> str:
    """The timestamp one second after ``timestamp`` (``@%Y%m%d-%H%M%S``); now for an empty or
    unparsable one."""
    try:
        moment = datetime.strptime(timestamp, TIMESTAMP_FORMAT)
    except ValueError:
        return datetime.now().strftime(TIMESTAMP_FORMAT)
    return (moment + timedelta(seconds=1)).strftime(TIMESTAMP_FORMAT)


def claim_next_free(exp_dir: str, trial_prefix: str, timestamp: str, limit: int = 10000):
    """Claim ``<exp_dir>/<trial_prefix><stamp>`` for the first free stamp after ``timestamp``;
    return ``(trial_dir, stamp)``."""
    stamp = timestamp
    for _ in range(limit):
        stamp = next_timestamp(stamp)
        candidate = os.path.join(exp_dir, trial_prefix + stamp)
        if os.path.lexists(candidate) and not os.path.isdir(candidate):
            continue
        try:
            claim(candidate)
            return candidate, stamp
        except RunFolderTaken:
            continue
    raise RuntimeError(f"no free run folder for '{trial_prefix}' in {exp_dir} after {limit} tries")


# ------------------------------------------------------------------------------------------------
# inside threestudio's launch.py, which names and creates the folder itself
# ------------------------------------------------------------------------------------------------
def _experiment_config_of(trial_dir: str, frame):
    """The launch's experiment config (threestudio's ``ExperimentConfig`` as an OmegaConf structured
    config, or the dataclass) among the callers' locals, found by its ``trial_dir``; None if none."""
    real = os.path.realpath(trial_dir)
    while frame is not None:
        for value in list(frame.f_locals.values()):
            kind = type(value).__name__
            if kind != "DictConfig" and "trial_dir" not in getattr(type(value), "__dataclass_fields__", {}):
                continue
            try:
                fields = [value.trial_dir, value.exp_dir, value.trial_name, value.timestamp]
            except Exception:  # a DictConfig without these keys
                continue
            if all(isinstance(f, str) for f in fields) and os.path.realpath(value.trial_dir) == real:
                return value
        frame = frame.f_back
    return None


def claim_launch_folder(trial_dir: str, resumed: bool, say) -> str:
    """Claim the run folder a launcher outside the plugin (threestudio's launch.py) chose; return the
    folder the run writes into.

    When another launch holds it or used it, the run moves to the next free timestamp: the launch's
    experiment config (on the call stack: launch.py builds its checkpoint callback, loggers and config
    snapshot from ``cfg.trial_dir`` right after ``system.set_save_dir``) is pointed at the new folder,
    and ``say`` gets one line saying so. Without that config a taken folder raises ``RunFolderTaken``.
    """
    cfg = _experiment_config_of(trial_dir, sys._getframe(1))
    resume = getattr(cfg, "resume", None) if cfg is not None else None
    if resume:
        folder = os.path.realpath(trial_dir)
        resuming = os.path.commonpath([os.path.realpath(resume), folder]) == folder
    else:
        resuming = resumed and cfg is None
    try:
        claim(trial_dir, resuming=resuming)
        return trial_dir
    except RunFolderTaken as taken:
        if cfg is None:
            raise
        new_dir, stamp = claim_next_free(cfg.exp_dir, cfg.trial_name[: len(cfg.trial_name) - len(cfg.timestamp)],
                                         cfg.timestamp)
        cfg.trial_name = os.path.basename(new_dir)
        cfg.timestamp = stamp
        cfg.trial_dir = new_dir
        say(f"'{trial_dir}' is {describe_holder(taken.holder, taken.live)}: this run writes into '{new_dir}'.")
        return new_dir
