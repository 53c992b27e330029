"""Random-number streams that make a resumed run continue exactly.

Lightning fetches each training batch one step ahead (its prefetcher), so cameras drawn from the
global generator in ``collate`` interleave with the step's own draws differently in a run resumed from
a checkpoint. Two rules keep every stream a function of the seed and the step alone:

- training cameras are drawn by :func:`batch_rng` from their own generator, seeded by the data set's
  seed and the batch index (= the step that consumes it), leaving the global generators untouched;
- everything else (guidance noise and timesteps, augmentations, densification) draws from the global
  generators, whose states go into the checkpoint (:func:`global_rng_state`) and come back on resume.
"""
import contextlib
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

# large odd multiplier: distinct (seed, index) pairs give distinct, well-spread seeds
_SEED_STRIDE = 0x9E3779B97F4A7C15


def batch_seed(seed: int, index: int) -> int:
    return (int(seed) * _SEED_STRIDE + int(index)) % (2**63 - 1)


@contextlib.contextmanager
def batch_rng(seed: int, index: int):
    """Inside: torch's CPU generator and Python's ``random`` seeded for batch ``index``; outside,
    both are exactly as they were (CUDA generators are not touched: cameras are drawn on the CPU)."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        value = batch_seed(seed, index)
        torch.manual_seed(value)
        random.seed(value)
        try:
            yield
        finally:
            random.setstate(py_state)


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
    """Mixin for an endless training-camera data set (``collate`` draws a whole batch) whose batches a
    resumed run must redraw exactly. Subclasses implement ``_apply_step(step)`` (set the step-dependent
    ranges / resolution; ``None``: the state before any ``update_step``) and ``_sample_batch()``.

    - batch ``i`` (the ``i``-th drawn, which step ``i`` consumes) draws from ``batch_rng(seed, i)``;
    - it uses the ranges of the latest ``update_step``, as threestudio's data sets do; Lightning draws
      a batch before the step that updates the data set runs, so each drawn batch remembers the step
      whose ranges it used, and ``resume_state`` hands the not yet consumed ones to the checkpoint.
    """

    def _init_stream(self, seed: Optional[int]) -> None:
        self.seed = torch.initial_seed() if seed is None else int(seed)
        self.next_index = 0
        self.updated_step: Optional[int] = None
        self._drawn_with: Dict[int, Optional[int]] = {}  # index -> the step whose ranges drew it
        self._pending: Dict[int, Optional[int]] = {}  # after a resume: index -> step to draw it with

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.updated_step = global_step
        self._apply_step(global_step)

    def collate(self, batch) -> Dict[str, Any]:
        index = self.next_index
        self.next_index += 1
        step = self._pending.pop(index, self.updated_step)
        self._apply_step(step)
        self._drawn_with = {i: s for i, s in self._drawn_with.items() if i > index - 8}
        self._drawn_with[index] = step
        with batch_rng(self.seed, index):
            return self._sample_batch()

    def resume_state(self, consumed: int) -> Dict[str, Any]:
        """What a run resumed after ``consumed`` steps needs to draw the same batches."""
        return {
            "train_batch_index": int(consumed),
            "updated_step": self.updated_step,
            "drawn_with": {int(i): s for i, s in self._drawn_with.items() if i >= consumed},
        }

    def load_resume_state(self, state: Dict[str, Any]) -> None:
        self.next_index = int(state["train_batch_index"])
        self._pending = {int(i): s for i, s in state.get("drawn_with", {}).items()}
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
