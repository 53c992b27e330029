"""Live splats: the Gaussians as they train, written to ``save/live/<ply_name>`` for a viewer to read
while the run goes on (lucid-app's live 3D view; any PLY viewer that reloads a file).

``system.live_ply_every_n_steps``: N > 0 writes the splats after every N-th training step (0, the
default: never); ``system.live_ply_min_seconds``: a write is skipped while the previous one is younger
than this (the snapshot is for a person watching: a few seconds apart is live enough, and bounds the
cost on fast steps). The file is the geometry's own ``save_ply`` (INRIA layout, every SH band, loads
back with ``load_ply``), made in memory and written atomically (``atomic_files.py``: same-folder
temporary, fsync, rename), so a reader opening it at any moment gets the previous complete snapshot or
the new one, never a partial file. It is overwritten in place: one file per run, whatever its length.

Beside it, ``save/live/<ply_name>.json`` says which snapshot it is (the PLY layout has no field for it):
``{"step": global step, "time": unix time of the write, "file": ply_name, "ply_mtime_ns", "ply_size",
"ply_inode"}``, written atomically too and only once the PLY is in place, so a sidecar is never newer
than the PLY beside it. The last three are the PLY's ``os.stat`` after its rename: a reader that has
opened the PLY takes the step only when they match the file it holds (between the two renames the
sidecar still describes the previous snapshot).

The write happens on the training thread, between two steps, on rank 0 only. It costs what
``save_ply`` costs (on 2 CPU cores: ~6 ms for 20,000 Gaussians at SH degree 0, ~18 ms at degree 3,
~90 ms for 100,000 at degree 3), so its share of the training time is at most that over
``live_ply_min_seconds`` (0.3% at 2 s for the first) when steps are fast, and that over N steps' time
when they are slow. ``scripts/bench_app_live_view.py --live-ply`` measures it in a real run.

It is a Lightning callback the system returns from ``configure_callbacks``, so it runs under
``lucid-launch`` and threestudio's ``launch.py`` alike and uses only the system's save folder.
"""
import json
import os
import time
from typing import Any, List, Optional

import pytorch_lightning as pl

from ..atomic_files import write_text
from ..compat import info
from ..errors import ConfigError

LIVE_FOLDER = "live"
SIDECAR_SUFFIX = ".json"


def write_sidecar(ply_path: str, step: int) -> str:
    """``<ply_path>.json``: which step the (complete, renamed) PLY at ``ply_path`` holds; atomic."""
    stat = os.stat(ply_path)
    record = {"step": int(step), "time": time.time(), "file": os.path.basename(ply_path),
              "ply_mtime_ns": stat.st_mtime_ns, "ply_size": stat.st_size, "ply_inode": stat.st_ino}
    return write_text(ply_path + SIDECAR_SUFFIX, json.dumps(record) + "\n")


def check_options(cfg: Any) -> None:
    """One ``ConfigError`` line for a bad ``system.live_ply_every_n_steps`` / ``live_ply_min_seconds``."""
    every = cfg.live_ply_every_n_steps
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"system.live_ply_every_n_steps={every!r} must be a whole number >= 0 (0: off; e.g. 25 "
                          "writes the splats to save/live/ every 25 steps).")
    seconds = cfg.live_ply_min_seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigError(f"system.live_ply_min_seconds={seconds!r} must be a number of seconds >= 0 (0: write at "
                          "every live_ply_every_n_steps step however fast they come).")


class LiveSplatsWriter(pl.Callback):
    """After every ``every``-th training step (and at least ``min_seconds`` after the previous write),
    ``system.geometry.save_ply(save/live/<ply_name>)``, then its step in ``<ply_name>.json``
    (:func:`write_sidecar`). ``writes`` and ``write_seconds`` count what it did; the end of training
    prints them."""

    def __init__(self, every: int, min_seconds: float, ply_name: str):
        self.every, self.min_seconds, self.ply_name = int(every), float(min_seconds), ply_name
        self.writes, self.write_seconds = 0, 0.0
        self.path: Optional[str] = None
        self._last_write: Optional[float] = None  # time.monotonic() at the end of the previous write

    def due(self, step: int, now: float) -> bool:
        if step <= 0 or step % self.every:
            return False
        return self._last_write is None or now - self._last_write >= self.min_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        start = time.monotonic()
        step = int(pl_module.true_global_step)
        if not self.due(step, start):
            return
        self.path = pl_module.get_save_path(os.path.join(LIVE_FOLDER, self.ply_name))
        pl_module.geometry.save_ply(self.path)
        write_sidecar(self.path, step)  # after the PLY's rename: never newer than the PLY
        self._last_write = time.monotonic()
        self.writes += 1
        self.write_seconds += self._last_write - start

    def on_train_end(self, trainer, pl_module) -> None:
        if self.writes:
            info(f"Live splats: {self.writes} writes of {self.path}, {1000 * self.write_seconds / self.writes:.1f} ms "
                 f"each ({self.write_seconds:.2f} s in all)")


def callbacks_of(cfg: Any) -> List[pl.Callback]:
    """The system's callbacks for its ``configure_callbacks``: the writer when it is on (checked first)."""
    check_options(cfg)
    if not cfg.live_ply_every_n_steps:
        return []
    return [LiveSplatsWriter(cfg.live_ply_every_n_steps, cfg.live_ply_min_seconds, cfg.ply_name)]
