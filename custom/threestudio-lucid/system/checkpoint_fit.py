"""Whether a checkpoint fits the Gaussian system; one line naming what does not, and the fix.

``resume=`` restores everything a checkpoint holds through Lightning's strict ``load_state_dict``:
a checkpoint of another guidance (VSD's LoRA into an ISM config, or the reverse), another geometry
(another ``sh_degree``, a NeRF's networks) or another system ends in a ``RuntimeError`` that lists
hundreds of keys. ``system.weights=`` (threestudio's ``BaseSystem.load_weights``) loads with
``strict=False`` and silently skips what does not fit: weights whose geometry is not Gaussian would
leave the freshly initialised Gaussians in place. Both compare the checkpoint's ``state_dict`` with
the system's here, module by module (the first part of each key: geometry, guidance, renderer, ...),
before anything is loaded, and raise :class:`ConfigError` with one line.

The Gaussian geometry takes any number of Gaussians (``GaussianSplatting._load_from_state_dict``
resizes), so its parameters compare by their shape past the first dimension; a checkpoint written
before the densification statistics were saved lacks ``geometry._extra_state``, which the geometry
accepts too.

What a checkpoint holds is read from the record the system writes into it (:data:`COMPONENTS_KEY`,
from ``on_save_checkpoint``) and, for checkpoints without one (written before the record, or by
another system), from the state_dict's key prefixes.
"""
import math
import os
from typing import Any, Dict, Iterable, List, Optional

import torch

from ..checkpoint_file import check_checkpoint_file
from ..errors import ConfigError
from ..geometry.gaussian_splatting import EXTRA_STATE_KEY, PARAM_ATTRS, GaussianSplatting
from ..trainer_precision import SYSTEM_TYPE

COMPONENTS_KEY = "lucid_components"
RNG_KEY = "lucid_rng_states"  # the system's RNG record: only the plugin's checkpoints hold it
MODULE_TYPES = ("geometry", "material", "background", "renderer", "guidance")
GAUSSIAN_ROW_KEYS = tuple(f"geometry.{attr}" for attr in PARAM_ATTRS.values())
OPTIONAL_KEYS = (f"geometry.{EXTRA_STATE_KEY}",)


def component_record(system) -> Dict[str, Any]:
    """What ``system`` is made of, for its checkpoints: the registered type of each component."""
    record = {"system": SYSTEM_TYPE}
    for name in MODULE_TYPES:
        record[name] = str(system.cfg.get(f"{name}_type", ""))
    sh_degree = getattr(getattr(system.geometry, "cfg", None), "sh_degree", None)
    if sh_degree is not None:
        record["sh_degree"] = int(sh_degree)
    return record


# ---- reading a state_dict ----
def _module_of(key: str) -> str:
    return key.split(".", 1)[0]


def _keys_of(state: Dict[str, Any], module: str) -> List[str]:
    return [k for k in state if _module_of(k) == module]


def _groups(keys: Iterable[str], limit: int = 3) -> str:
    """``guidance.lora_layers.*, guidance.camera_embedding.*``: the keys by their first two parts."""
    groups: List[str] = []
    for key in keys:
        parts = key.split(".")
        group = ".".join(parts[:2]) + (".*" if len(parts) > 2 else "")
        if group not in groups:
            groups.append(group)
    shown = ", ".join(groups[:limit])
    return shown + (f", ... ({len(groups)} groups)" if len(groups) > limit else "")


def _shape(value: Any) -> Optional[tuple]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _show_shape(shape: tuple, rows: bool) -> str:
    return "[" + ", ".join(["N"] + [str(s) for s in shape[1:]] if rows else [str(s) for s in shape]) + "]"


def sh_degree_of(state: Dict[str, Any]) -> Optional[int]:
    """The SH degree of a state_dict's Gaussians (``_features_rest`` is [N, (d+1)^2-1, 3])."""
    shape = _shape(state.get("geometry._features_rest"))
    if shape is None or len(shape) != 3:
        return None
    degree = round(math.sqrt(shape[1] + 1)) - 1
    return degree if (degree + 1) ** 2 == shape[1] + 1 else None


def _is_gaussian(state: Dict[str, Any]) -> bool:
    return all(key in state for key in GAUSSIAN_ROW_KEYS)


def describe_geometry(state: Dict[str, Any], geometry_type: Optional[str] = None) -> str:
    keys = _keys_of(state, "geometry")
    name = f"{geometry_type} " if geometry_type else ""
    if not keys:
        return f"no geometry{f' ({geometry_type})' if geometry_type else ''}"
    if _is_gaussian(state):
        count = _shape(state["geometry._xyz"])[0]
        degree = sh_degree_of(state)
        return f"{name}Gaussians ({count} of them, sh_degree {degree if degree is not None else '?'})"
    return (f"a {name}geometry that is not Gaussians ({_groups(keys)}; e.g. threestudio's implicit-volume or "
            "implicit-sdf)")


def describe_guidance(state: Dict[str, Any], guidance_type: Optional[str] = None) -> str:
    keys = _keys_of(state, "guidance")
    if not keys:
        return f"{guidance_type or 'a guidance'} without trained parameters{'' if guidance_type else ' (ISM or SDS)'}"
    if any(".lora_layers." in k for k in keys):
        return f"{guidance_type or 'a guidance'} with a trained LoRA ({_groups(keys, 2)}{'' if guidance_type else '; VSD or ESD'})"
    return f"{guidance_type or 'a guidance'} with trained parameters ({_groups(keys, 2)})"


def describe_loaded(state: Dict[str, Any]) -> str:
    """What a (filtered) state_dict gives the system: ``Gaussians (...), background, renderer``."""
    modules = sorted({_module_of(k) for k in state}, key=lambda m: (m != "geometry", m))
    parts = [describe_geometry(state) if m == "geometry" and _is_gaussian(state) else m for m in modules]
    return ", ".join(parts) or "nothing"


def describe_checkpoint(checkpoint: Dict[str, Any]) -> str:
    """One phrase: which system wrote the checkpoint, its guidance and its geometry."""
    state = checkpoint["state_dict"]
    record = checkpoint.get(COMPONENTS_KEY)
    if isinstance(record, dict):
        origin = f"a {record.get('system', SYSTEM_TYPE)} run"
        guidance, geometry = record.get("guidance"), record.get("geometry")
    else:
        origin = ("a threestudio-lucid run (written before checkpoints named their components)" if RNG_KEY in checkpoint
                  else "a checkpoint not written by threestudio-lucid")
        guidance = geometry = None
    return f"{origin} with {describe_guidance(state, guidance)} and {describe_geometry(state, geometry)}"


def describe_system(system, own: Dict[str, Any]) -> str:
    return (f"{describe_guidance(own, system.cfg.guidance_type)} and "
            f"{system.cfg.geometry_type} Gaussians (sh_degree {sh_degree_of(own)})")


# ---- comparing ----
def differences(own: Dict[str, Any], state: Dict[str, Any], modules: Iterable[str], resizable: bool) -> Dict[str, str]:
    """``module -> what does not fit`` for each of ``modules`` (none: everything fits). ``resizable``:
    the Gaussian parameters may hold another number of rows."""
    found = {}
    for module in modules:
        mine = set(_keys_of(own, module)) - set(OPTIONAL_KEYS)
        theirs = set(_keys_of(state, module)) - set(OPTIONAL_KEYS)
        extra, lacking = sorted(theirs - mine), sorted(mine - theirs)
        what = []
        if extra:
            what.append(f"{len(extra)} key(s) this config has no place for ({_groups(extra)})")
        if lacking:
            what.append(f"{len(lacking)} key(s) the checkpoint lacks ({_groups(lacking)})")
        for key in sorted(mine & theirs):
            a, b = _shape(own[key]), _shape(state[key])
            if a is None or b is None:
                continue
            rows = resizable and key in GAUSSIAN_ROW_KEYS
            if (a[1:] != b[1:] or len(a) != len(b)) if rows else a != b:
                what.append(f"{key} is {_show_shape(b, rows)} in the checkpoint, {_show_shape(a, rows)} here")
                break
        if what:
            found[module] = "; ".join(what)
    return found


def _resizable(system) -> bool:
    return isinstance(system.geometry, GaussianSplatting)


def _gaussians_fix(system, state: Dict[str, Any], found: Dict[str, str], lead: str, first: List[str],
                   ignored: Optional[List[str]] = None) -> str:
    """The way to take what fits: the Gaussians alone (``lead`` + overrides), or why they cannot be."""
    if ignored and "geometry" in ignored:  # system.weights for other modules than the Gaussians
        return f"{lead} system.weights_ignore_modules=[{','.join(sorted(set(ignored) | set(found)))}] to skip them"
    if not _keys_of(state, "geometry") or not _is_gaussian(state):
        return ("its geometry is not Gaussians, which no Gaussian config can take: start from a point cloud "
                "instead (system.geometry.init_type=ply system.geometry.init_ply_path=<a .ply of that object>)")
    overrides = list(first)
    if "geometry" in found:
        degree = sh_degree_of(state)
        if degree is None or degree == getattr(system.geometry.cfg, "sh_degree", degree):
            return "its Gaussians do not fit this config's geometry either: use that run's own config"
        overrides.append(f"system.geometry.sh_degree={degree}")
    ignore = ["guidance"] + sorted(m for m in set(found) | set(ignored or ()) if m not in ("guidance", "geometry"))
    overrides.append(f"system.weights_ignore_modules=[{','.join(ignore)}]")
    return f"to start this config from its Gaussians alone (a fresh guidance), {lead} {' '.join(overrides)}"


def _own_config(path: str) -> str:
    """``<trial>/configs/parsed.yaml`` beside ``<trial>/ckpts/<ckpt>``, when it is there."""
    parsed = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "configs", "parsed.yaml")
    return f" (--config {parsed})" if os.path.isfile(parsed) else ""


def check_resume(system, checkpoint: Dict[str, Any], path: Optional[str]) -> Optional[str]:
    """Raise :class:`ConfigError` when ``checkpoint`` cannot be resumed by ``system``; return a note
    when it can but was written with another guidance or geometry type (the same parameters)."""
    where = f"resume='{path}'" if path else "The checkpoint to resume"
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{where} holds no state_dict: it is not a Lightning checkpoint; point it at a checkpoint "
                          "the training wrote, e.g. outputs/<name>/<run>/ckpts/last.ckpt.")
    own = system.state_dict()
    modules = sorted({_module_of(k) for k in own} | {_module_of(k) for k in state})
    found = differences(own, state, modules, _resizable(system))
    degree = sh_degree_of(state)
    if set(found) == {"geometry"} and _is_gaussian(state) and degree is not None and \
            degree != getattr(system.geometry.cfg, "sh_degree", degree):
        raise ConfigError(
            f"{where} holds Gaussians of sh_degree {degree}, this config's geometry has sh_degree "
            f"{system.geometry.cfg.sh_degree} ({found['geometry']}): set system.geometry.sh_degree={degree} to resume it."
        )
    if found:
        weights = f"system.weights={path}" if path else "system.weights=<the checkpoint>"
        raise ConfigError(
            f"{where} does not fit this config: it holds {describe_checkpoint(checkpoint)}, the config expects "
            f"{describe_system(system, own)} ({'; '.join(f'{m}: {w}' for m, w in found.items())}). To continue that run, "
            f"resume it with its own config{_own_config(path) if path else ''}; "
            f"{_gaussians_fix(system, state, found, 'drop resume= and add', [weights])}."
        )
    record = checkpoint.get(COMPONENTS_KEY)
    if isinstance(record, dict):
        changed = [f"{name} {record[name]} -> {system.cfg.get(f'{name}_type')}" for name in MODULE_TYPES
                   if record.get(name) and record[name] != system.cfg.get(f"{name}_type")]
        if changed:
            return (f"{where} was written by a run with other components ({', '.join(changed)}); their parameters "
                    "fit, so the run continues with this config's")
    return None


def check_weights(system, checkpoint: Dict[str, Any], state: Dict[str, Any], path: str,
                  ignore_modules: Optional[List[str]]) -> None:
    """``system.weights``: every module the (filtered) ``state`` holds must fit the system's, else
    ``load_state_dict(strict=False)`` would skip it without a word."""
    own = system.state_dict()
    modules = sorted({_module_of(k) for k in state})
    found = differences(own, state, modules, _resizable(system))
    if not found:
        return
    ignored = f" (after system.weights_ignore_modules={list(ignore_modules)})" if ignore_modules else ""
    raise ConfigError(
        f"system.weights='{path}' does not fit this config{ignored}: it holds {describe_checkpoint(checkpoint)}, the "
        f"config expects {describe_system(system, own)} ({'; '.join(f'{m}: {w}' for m, w in found.items())}); "
        f"{_gaussians_fix(system, state, found, 'add', [], ignore_modules)}."
    )


def read_weights(path: str) -> Dict[str, Any]:
    """The checkpoint ``system.weights`` names, as threestudio's ``load_module_weights`` reads it
    (``torch.load``, whose default is ``weights_only=True`` since torch 2.6; the plugin's checkpoints
    load that way). A checkpoint that holds other objects is the user's own file, named in their
    config: it is read in full then, as threestudio did before torch 2.6."""
    check_checkpoint_file(path, key="system.weights")  # exists, is a file, a complete torch archive
    fix = "point it at a checkpoint a training wrote, e.g. outputs/<name>/<run>/ckpts/last.ckpt"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a refusal of weights_only, or a damaged file: the full load tells them apart
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
            message = " ".join(str(e).split())[:200]
            raise ConfigError(f"system.weights='{path}' is not a complete checkpoint ({type(e).__name__}: "
                              f"{message}): {fix}.") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"system.weights='{path}' is a torch file but not a Lightning checkpoint (no state_dict): {fix}.")
    return checkpoint
