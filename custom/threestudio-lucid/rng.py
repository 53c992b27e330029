"""Random-number state that makes a resumed run continue exactly.

Training draws from the global generators only (torch, CUDA, Python, NumPy), in threestudio's order:
cameras in the data set's ``collate``, then the step's own draws (guidance noise and timesteps,
augmentations, densification). A checkpoint holds those generators' states (:func:`global_rng_state`,
saved by the system), and a resumed run restores them. Two things move the generators differently
in a resumed run, and each is undone here:

- Lightning draws each training batch a step ahead (its prefetcher), so when a checkpoint is written
  the next batch is already drawn, before the step whose state the checkpoint holds. The camera data
  set remembers the generator state before each draw (:class:`ResumableCameraStream`); the data module
  checkpoints it for the batches drawn but not yet used, and a resumed run redraws them from those
  states, then draws its first new batch from the checkpoint's state;
- a DataLoader iterator draws a base seed from the global generator when it starts: the resumed run's
  train iterator does, the uninterrupted run's did long ago (undone by the same reset), and a
  validation's does in the uninterrupted run only (the system puts the generators back after it).
"""
import random
from typing import Any, Dict, Optional

import numpy as np
import torch


def global_rng_state() -> Dict[str, Any]:
    """Tensors and plain Python values only: Lightning loads checkpoints with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def generator_states(module: Any) -> Dict[str, torch.Tensor]:
    """States of the ``torch.Generator`` attributes of ``module`` (e.g. ISM's noise generator)."""
    return {name: value.get_state() for name, value in vars(module).items() if isinstance(value, torch.Generator)}


def set_generator_states(module: Any, states: Dict[str, torch.Tensor]) -> None:
    for name, state in states.items():
        generator = getattr(module, name, None)
        if isinstance(generator, torch.Generator):
            generator.set_state(state)


class ResumableCameraStream:
    """Mixin for an endless training-camera data set whose ``collate`` draws a whole batch, so that a
    resumed run draws the same batches. Subclasses implement ``_apply_step(step)`` (set the
    step-dependent ranges / resolution; ``None``: the state before any ``update_step``) and
    ``_sample_batch()``.

    Each batch uses the ranges of the latest ``update_step`` and the global generators, as threestudio's
    data sets do; it also remembers that step and the generators' state before its draws, and
    ``resume_state`` hands both to the checkpoint for the batches not yet consumed.
    """

    _KEEP = 8  # drawn batches remembered (Lightning draws one ahead)

    def _init_stream(self) -> None:
        self.next_index = 0  # the index of the next batch drawn; batch i is consumed by step i
        self.updated_step: Optional[int] = None
        self._drawn: Dict[int, Dict[str, Any]] = {}  # index -> {"step", "rng"} of recent draws
        self._replay: Dict[int, Dict[str, Any]] = {}  # after a resume: the draws to repeat
        self._rng_after_replay: Optional[Dict[str, Any]] = None

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.updated_step = global_step
        self._apply_step(global_step)

    def collate(self, batch) -> Dict[str, Any]:
        index = self.next_index
        self.next_index += 1
        replay = self._replay.pop(index, None)
        if replay is not None:  # drawn before the checkpoint was written: draw it again, the same way
            set_global_rng_state(replay["rng"])
            step = replay["step"]
        else:
            step = self.updated_step
            if self._rng_after_replay is not None:
                # the first new batch of a resumed run starts from the checkpoint's state, as it did in
                # the run it continues: what the resumed run drew since (the replayed batches, its
                # loaders' base seeds) did not happen there, or happened before the checkpoint
                set_global_rng_state(self._rng_after_replay)
                self._rng_after_replay = None
        self._drawn = {i: d for i, d in self._drawn.items() if i > index - self._KEEP}
        self._drawn[index] = {"step": step, "rng": global_rng_state()}
        self._apply_step(step)
        return self._sample_batch()

    def resume_state(self, consumed: int) -> Dict[str, Any]:
        """What a run resumed after ``consumed`` steps needs to draw the same batches (called while
        the checkpoint is written: the global state now is the checkpoint's)."""
        return {
            "train_batch_index": int(consumed),
            "updated_step": self.updated_step,
            "drawn": {int(i): d for i, d in self._drawn.items() if i >= consumed},
            "rng": global_rng_state(),
        }

    def load_resume_state(self, state: Dict[str, Any]) -> None:
        self.next_index = int(state["train_batch_index"])
        self._replay = {int(i): d for i, d in state.get("drawn", {}).items()}
        self._rng_after_replay = state.get("rng") if self._replay else None
        if state.get("updated_step") is not None:
            self.update_step(0, int(state["updated_step"]))


class ResumableCameraDataModule:
    """Mixin for a LightningDataModule whose ``train_dataset`` is a :class:`ResumableCameraStream`:
    the checkpoint holds where the camera stream stands after the steps done so far (the optimizer
    steps; the data set has drawn a batch more, Lightning prefetches), and a resumed run restores it."""

    def state_dict(self) -> Dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None or not hasattr(self, "train_dataset"):
            return {}
        return self.train_dataset.resume_state(trainer.global_step)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "train_batch_index" in state_dict and hasattr(self, "train_dataset"):
            self.train_dataset.load_resume_state(state_dict)
