"""A run from the page as the launcher's argument list: ``--config FILE --train --gpu N KEY=VALUE ...``.

The form's options become OmegaConf dotlist overrides, the same ``key=value`` arguments a user types
after ``lucid-launch``; only options that differ from the config text are added, so the command stays
the one a person would write (an init prompt adds ``system.geometry.init_type=point_e`` with it).
Values are written so that OmegaConf reads back exactly the text the user typed: a prompt such as
``a cat: sitting``, ``1984``, ``#1`` or ``${oc.env:HOME}`` is YAML-quoted (and ``${`` escaped), never
interpreted. Nothing here goes through a shell.
"""
import math
import os
import re
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence

import yaml

from . import catalog
from .catalog import (FIELDS_BY_NAME, INIT_PROMPT_KEY, INIT_TYPE_KEY, MODEL_KEYS, POINT_E, RESOLUTION_KEYS,
                      config_value, fields_of, has_key, read_yaml_text, select)

PROMPT_KEY = "system.prompt_processor.prompt"


class FormError(ValueError):
    """A bad value in the form; the message is one line naming the option."""


def dotlist_value(value: Any) -> str:
    """``value`` as the right-hand side of ``key=value`` that OmegaConf reads back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    try:
        plain = yaml.safe_load(text) == text
    except yaml.YAMLError:
        plain = False
    if plain and "${" not in text and "\\" not in text and text.strip() == text and text:
        return text
    if not any(c in text for c in '"\\$') and text.isprintable():
        return f'"{text}"'  # YAML's double quotes: the text as it is
    # OmegaConf reads "\${" as a literal "${"; backslashes right before it are escapes too (doubled)
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    return "'" + escaped.replace("'", "''") + "'"


def override(key: str, value: Any) -> str:
    return f"{key}={dotlist_value(value)}"


def _typed(name: str, raw: Any, kind: type) -> Any:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    if kind is str:
        text = str(raw)
        if "\n" in text or "\r" in text or "\x00" in text:
            raise FormError(f"{name}: one line only")
        return text.strip()
    try:
        number = float(str(raw).strip())
    except ValueError:
        raise FormError(f"{name} {raw!r} is not a number") from None
    if not math.isfinite(number):
        raise FormError(f"{name} {raw!r} is not a finite number")
    if kind is int:
        if number != int(number):
            raise FormError(f"{name} {raw!r} must be a whole number")
        return int(number)
    return number


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def parse_config_text(text: str) -> Dict[str, Any]:
    try:
        return read_yaml_text(text)
    except Exception as e:
        raise FormError(f"the config is not valid YAML: {' '.join(str(e).split())}") from None


def form_overrides(text: str, form: Dict[str, Any], outputs: str, train: bool = True) -> List[str]:
    """The dotlist overrides for a new run: the prompt, every form option that differs from the
    config ``text``, and ``exp_root_dir`` (runs always land under ``--outputs``)."""
    tree = parse_config_text(text)
    if train and tree.get("resume") is not None:
        raise FormError("resume: a new run does not resume; use Resume on a stopped run instead")
    prompt = _typed("prompt", form.get("prompt"), str)
    if not prompt:
        raise FormError("prompt: give the text to generate from, e.g. a penguin")
    out = [override(PROMPT_KEY, prompt)]
    current = fields_of(tree)
    for name, entry in current.items():
        if name not in form or entry.get("disabled"):
            continue
        spec = FIELDS_BY_NAME[name]
        value = _typed(spec.label, form[name], spec.kind)
        if value is None or _same(value, entry["value"]):
            continue
        if name == "init_prompt":  # a Point-E start from this text: both keys, whatever the config's init
            out += [override(INIT_TYPE_KEY, POINT_E), override(INIT_PROMPT_KEY, value)]
            continue
        if name == "model":
            keys = [k for k in MODEL_KEYS if has_key(tree, k)] or [MODEL_KEYS[-1]]
        elif name == "resolution":
            if value < 1:
                raise FormError(f"resolution {value} must be >= 1")
            keys = [k for k in RESOLUTION_KEYS if has_key(tree, k)] or list(RESOLUTION_KEYS[:2])
        else:
            keys = list(spec.keys)
        out += [override(k, value) for k in keys]
    check_point_e(tree, override(INIT_TYPE_KEY, POINT_E) in out)
    out.append(override("exp_root_dir", os.path.abspath(outputs)))
    return out


def check_point_e(tree: Dict[str, Any], from_form: bool) -> None:
    """A run that starts from Point-E (the form's init prompt, or the config's own ``init_type:
    point_e``, as in LucidDreamer's configs) needs the point_e package in the jobs' environment (the
    app's): without it the geometry would refuse the run after its wait in the queue; refused here
    at once, in one line, with both ways out."""
    if not from_form and config_value(tree, INIT_TYPE_KEY) != POINT_E:
        return
    if catalog.point_e_installed():
        return
    from ..geometry.initializers import POINT_E_INSTALL

    if from_form:
        raise FormError(f"init prompt (Point-E): Point-E is not installed here ({POINT_E_INSTALL}); "
                        "leave the init prompt empty to start from the config's shape")
    raise FormError(f"{INIT_TYPE_KEY}: the config starts from Point-E (init_type: point_e), which is not installed "
                    f"here: install it ({POINT_E_INSTALL}) or set init_type: sphere_solid in the config "
                    "(LucidDreamer's 'sphere')")


LIVE_SYSTEM = "lucid-gaussian-system"
LIVE_EVERY_KEY = "system.live_ply_every_n_steps"


def live_view_overrides(text: str) -> List[str]:
    """What the live 3D view needs from a new run: the splats in ``save/live/`` as it trains
    (``system/live_splats.py``). ``system.live_ply_every_n_steps=1`` with the system's floor of one write
    per ``live_ply_min_seconds`` (2 s) makes it time-based: a snapshot at most 2 s old when the page,
    which shows one every 5 s, asks, at ~6 ms a write for 20,000 Gaussians (<0.5% of the training time;
    measured by ``scripts/bench_app_live_view.py --live-ply``). Only for the plugin's system, and never
    over a config that sets the option itself (0 there keeps it off)."""
    tree = parse_config_text(text)
    if tree.get("system_type") != LIVE_SYSTEM or has_key(tree, LIVE_EVERY_KEY):
        return []
    return [override(LIVE_EVERY_KEY, 1)]


def lucid_launch() -> str:
    """The ``lucid-launch`` of this environment (beside this Python first, as lucid-sweep does)."""
    beside = os.path.join(os.path.dirname(sys.executable), "lucid-launch")
    return beside if os.path.isfile(beside) else (shutil.which("lucid-launch") or beside)


def launcher_argv(threestudio: Optional[str]) -> List[str]:
    if threestudio:
        return [sys.executable, os.path.join(os.path.abspath(threestudio), "launch.py")]
    return [lucid_launch()]


def launch_argv(threestudio: Optional[str], config: str, mode: str, device: str, overrides: Sequence[str]) -> List[str]:
    """``[launcher, --config, FILE, --<mode>, --gpu, N, *overrides]``. On a CPU ``--gpu 0`` is what
    the launcher ignores anyway (as in the README's commands)."""
    gpu = "0" if device == "cpu" else device
    return [*launcher_argv(threestudio), "--config", config, f"--{mode}", "--gpu", gpu, *overrides]


def model_of(text: str) -> Optional[str]:
    try:
        value = select(read_yaml_text(text), MODEL_KEYS[-1])
    except Exception:
        return None
    return value if isinstance(value, str) else None
