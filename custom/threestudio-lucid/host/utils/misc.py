"""Small helpers threestudio components rely on: ``C()`` schedules, ranks, devices, weights."""
import gc
import math
import os

import torch
from packaging import version
from omegaconf import ListConfig

from .config import ConfigError, config_to_primitive
from .typing import Any, List, Optional


def parse_version(ver: str):
    return version.parse(ver)


def get_rank() -> int:
    # SLURM_PROCID can be set even when SLURM is not managing the multiprocessing,
    # therefore LOCAL_RANK needs to be checked first
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        rank = os.environ.get(key)
        if rank is not None:
            return int(rank)
    return 0


def get_device() -> torch.device:
    """threestudio hard-codes ``cuda:<rank>``; the host falls back to the CPU when CUDA is absent."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{get_rank()}")
    return torch.device("cpu")


def C(value: Any, epoch: int, global_step: int, interpolation: str = "linear") -> float:
    """Evaluate a scheduled value.

    A number is returned as is. Lists (ListConfig, as in configs) come in three shapes:
    ``[v0, v1, end]`` (start at 0), ``[start, v0, v1, end]`` and the piecewise
    ``[s0, v0, v1, s1, v2, s2, ...]`` (the last segment whose start is <= the current step is used).
    An int end step interpolates on ``global_step``, a float one on ``epoch``. ``interpolation`` is
    ``"linear"`` or ``"exp"`` (log-linear, for learning-rate decays).
    """
    if isinstance(value, (int, float)):
        return value
    if not isinstance(value, ListConfig):
        # threestudio's C() converts every non-number with config_to_primitive, which refuses plain lists:
        # so does this one, or a component that works here would fail inside threestudio
        raise ValueError(f"C() takes a number or a config list (ListConfig), got {type(value).__name__} {value!r}; "
                         "threestudio's C() refuses anything else")
    value = config_to_primitive(value)
    if not isinstance(value, list):
        raise TypeError("Scalar specification only supports list, got", type(value))
    if len(value) >= 6:
        # piecewise: segments (s0, v0 -> v1, s1), (s1, v1 -> v2, s2), ...
        select_i = 3
        for i in range(3, len(value) - 2, 2):
            if global_step >= value[i]:
                select_i = i + 2
        if select_i != 3:
            start_value, start_step = value[select_i - 3], value[select_i - 2]
        else:
            start_step, start_value = value[:2]
        end_value, end_step = value[select_i - 1], value[select_i]
        value = [start_step, start_value, end_value, end_step]
    if len(value) == 3:
        value = [0] + value
    if len(value) != 4:
        raise ConfigError(f"A C() schedule needs 3, 4 or >= 6 entries, got {value}")
    start_step, start_value, end_value, end_step = value
    if isinstance(end_step, int):
        current_step = global_step
    elif isinstance(end_step, float):
        current_step = epoch
    else:
        raise ConfigError(f"The end step of a C() schedule must be an int or a float, got {value}")
    t = max(min(1.0, (current_step - start_step) / (end_step - start_step)), 0.0)
    if interpolation == "linear":
        return start_value + (end_value - start_value) * t
    if interpolation == "exp":
        return math.exp(math.log(start_value) * (1 - t) + math.log(end_value) * t)
    raise ValueError(f"Unknown interpolation '{interpolation}': use 'linear' or 'exp'")


def cleanup():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finish_with_cleanup(func):
    def wrapper(*args, **kwargs):
        out = func(*args, **kwargs)
        cleanup()
        return out

    return wrapper


def _distributed_available():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier():
    if _distributed_available():
        torch.distributed.barrier()


def broadcast(tensor, src=0):
    if not _distributed_available():
        return tensor
    torch.distributed.broadcast(tensor, src=src)
    return tensor


def enable_gradient(model, enabled: bool = True) -> None:
    for param in model.parameters():
        param.requires_grad_(enabled)


def find_last_path(path: Optional[str]) -> Optional[str]:
    """Resolve a ``LAST`` token in a path to the lexicographically last entry of that folder."""
    if path is not None and "LAST" in path:
        path = path.replace(" ", "_")
        base_dir_prefix, suffix = path.split("LAST", 1)
        base_dir = os.path.dirname(base_dir_prefix)
        prefix = os.path.split(base_dir_prefix)[-1]
        base_dir_prefix = os.path.join(base_dir, prefix)
        all_path = sorted(p for p in os.listdir(base_dir) if p.startswith(prefix))
        if not all_path:
            raise ConfigError(f"No path in '{base_dir}' starts with '{prefix}' to resolve LAST in '{path}'")
        path = os.path.join(base_dir, all_path[-1] + suffix)
    return path


def load_module_weights(
    path: str,
    module_name: Optional[str] = None,
    ignore_modules: Optional[List[str]] = None,
    map_location=None,
):
    """Load ``ckpt["state_dict"]``, keeping only ``module_name.*`` (prefix stripped) or dropping
    ``ignore_modules``. Returns ``(state_dict, epoch, global_step)``."""
    if module_name is not None and ignore_modules is not None:
        raise ValueError("module_name and ignore_modules cannot be both set")
    if not os.path.isfile(path):
        raise ConfigError(f"Weights file '{path}' does not exist: check the 'weights' / 'resume' path.")
    # torch.load's own default, as threestudio calls it (weights_only=True since torch 2.6)
    ckpt = torch.load(path, map_location=map_location)
    state_dict = ckpt["state_dict"]
    if ignore_modules is not None:
        state_dict = {
            k: v for k, v in state_dict.items() if not any(k.startswith(m + ".") for m in ignore_modules)
        }
    if module_name is not None:
        prefix = module_name + "."
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not state_dict:
            raise ConfigError(f"'{path}' has no weights under module '{module_name}'.")
    return state_dict, ckpt["epoch"], ckpt["global_step"]
