"""Checkpoints written atomically: a kill during a save leaves the previous checkpoint or the new one,
never a truncated file, and a full disk ends in one :class:`~threestudio_lucid.errors.StorageError`.

Lightning's ``TorchCheckpointIO`` serialises to memory and then writes the bytes into the target
(Lightning 2.0 in place; later through an fsspec transaction, without fsync). Here the checkpoint is
serialised the same way (``torch.save`` to a buffer, so its size is known) and written by
:func:`~threestudio_lucid.atomic_files.write_bytes`. Loading and removing are Lightning's.

The system installs it in its ``setup`` hook (:func:`use_atomic_checkpoints`), so it applies under the
bundled launcher and under threestudio's ``launch.py``, which builds the Trainer without plugins. Every
checkpoint goes through it: ModelCheckpoint's (``last.ckpt`` too, unless ``save_last="link"``, which
Lightning links itself), ``trainer.save_checkpoint`` (the interrupted checkpoint, the final
``last.ckpt``).
"""
import io
import os
from typing import Any, Dict, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .atomic_files import write_bytes


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs are left to Lightning)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:  # as Lightning's own
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`."
            )
        path = os.fspath(path)
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        if path.startswith("file://"):
            path = path[len("file://"):]
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with buffer.getbuffer() as data:
            write_bytes(path, data)


def use_atomic_checkpoints(trainer) -> bool:
    """Make ``trainer`` save through :class:`AtomicCheckpointIO` when it uses Lightning's default
    ``TorchCheckpointIO``; a checkpoint IO the user chose (a plugin, an async wrapper, a strategy's own)
    is kept. Returns whether it is in use."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return False
    current = getattr(strategy, "_checkpoint_io", None)
    if isinstance(current, AtomicCheckpointIO):
        return True
    if current is not None and type(current) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True
