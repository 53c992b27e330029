"""What the page offers: the configs (one per method and world), the options people change most, and
the default model of this machine.

A config is a YAML file: the plugin's own (``configs/*.yaml``, LucidDreamer's in
``configs/luciddreamer/``), any folder given with ``--configs``, and threestudio's baselines
(``<checkout>/configs/*.yaml``) when ``--threestudio`` is given. Its method is read from its
``system.guidance_type``. The page shows each option of :data:`FIELDS` that the config's guidance
has, pre-filled from the config text (or the guidance's own default where the text leaves it out);
an option with ``needs`` only where the config's component has that key (the init prompt: where the
geometry has ``init_prompt``, i.e. the plugin's Gaussian splatting).
"""
import dataclasses
import glob
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHODS = {
    "lucid-sds-guidance": "SDS",
    "lucid-ism-guidance": "ISM",
    "lucid-vsd-guidance": "VSD",
    "lucid-esd-guidance": "ESD",
    "stable-diffusion-guidance": "SDS (threestudio)",
    "stable-diffusion-vsd-guidance": "VSD (threestudio)",
}


@dataclass(frozen=True)
class Field:
    """One option of the form: its name in the page, the config keys it sets, its type, the guidance
    types that have it (None: every config), and ``needs``: a config key the option is shown for only
    where the config's component has it (in the text, or in its registered class's ``Config``)."""

    name: str
    label: str
    keys: tuple
    kind: type
    guidance: Optional[tuple] = None
    needs: Optional[str] = None


MODEL_KEYS = ("system.prompt_processor.pretrained_model_name_or_path", "system.guidance.pretrained_model_name_or_path")
RESOLUTION_KEYS = ("data.width", "data.height", "data.eval_width", "data.eval_height")
INIT_TYPE_KEY, INIT_PROMPT_KEY = "system.geometry.init_type", "system.geometry.init_prompt"
POINT_E = "point_e"

FIELDS = [
    # LucidDreamer's demo's "Point-E init prompt": non-empty starts from a Point-E cloud of that text
    # (system.geometry.init_type=point_e); empty keeps the config's init
    Field("init_prompt", "init prompt (Point-E)", (INIT_TYPE_KEY, INIT_PROMPT_KEY), str, needs=INIT_PROMPT_KEY),
    Field("negative_prompt", "negative prompt", ("system.prompt_processor.negative_prompt",), str),
    Field("model", "model (hub id or local folder)", MODEL_KEYS, str),
    Field("guidance_scale", "guidance scale", ("system.guidance.guidance_scale",), float),
    Field("lambda_coeff", "lambda_coeff (ESD)", ("system.guidance.lambda_coeff",), float, ("lucid-esd-guidance",)),
    Field("guidance_scale_lora", "guidance_scale_lora (VSD)", ("system.guidance.guidance_scale_lora",), float,
          ("lucid-vsd-guidance", "stable-diffusion-vsd-guidance")),
    Field("delta_t", "delta_t (ISM)", ("system.guidance.delta_t",), int, ("lucid-ism-guidance",)),
    Field("xs_delta_t", "xs_delta_t (ISM)", ("system.guidance.xs_delta_t",), int, ("lucid-ism-guidance",)),
    Field("max_steps", "steps", ("trainer.max_steps",), int),
    Field("seed", "seed", ("seed",), int),
    Field("resolution", "resolution (px)", RESOLUTION_KEYS, int),
]
FIELDS_BY_NAME = {f.name: f for f in FIELDS}


@dataclass
class ConfigEntry:
    id: str  # "lucid/lucid-ism-toy", "threestudio/dreamfusion-sd", ...
    path: str
    label: str
    method: str
    guidance_type: str
    world: str  # "toy", "cpu", "gpu", "luciddreamer", "threestudio", "extra"
    plugin: bool  # a lucid- system: runs through lucid-launch (or launch.py with --threestudio)

    def public(self) -> Dict[str, Any]:
        return {"id": self.id, "label": self.label, "method": self.method, "world": self.world, "plugin": self.plugin}


@dataclass
class Catalog:
    entries: List[ConfigEntry] = field(default_factory=list)

    def get(self, config_id: str) -> Optional[ConfigEntry]:
        return next((e for e in self.entries if e.id == config_id), None)


def select(tree: Any, key: str) -> Any:
    """The value at a dotted ``key`` of a plain nested dict (None when absent)."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def has_key(tree: Any, key: str) -> bool:
    *parents, last = key.split(".")
    node = select(tree, ".".join(parents)) if parents else tree
    return isinstance(node, dict) and last in node


def read_yaml_text(text: str) -> Dict[str, Any]:
    """A config text as a plain dict, interpolations kept as written."""
    cfg = OmegaConf.create(text)
    if not OmegaConf.is_dict(cfg):
        raise ValueError("the config is not a YAML mapping (key: value lines)")
    return OmegaConf.to_container(cfg, resolve=False)


def _world_of(name: str) -> str:
    for suffix in ("toy", "cpu"):
        if name.endswith("-" + suffix):
            return suffix
    return "gpu"


def _entry(path: str, config_id: str, world: str) -> Optional[ConfigEntry]:
    try:
        tree = read_yaml_text(open(path, encoding="utf-8").read())
    except Exception:
        return None  # not a config the page can offer
    system_type = str(tree.get("system_type", ""))
    if not system_type:
        return None
    guidance_type = str(select(tree, "system.guidance_type") or "")
    method = METHODS.get(guidance_type, guidance_type or system_type)
    name = os.path.splitext(os.path.basename(path))[0]
    plugin = system_type.startswith("lucid-")
    label = f"{method} - {name}" if plugin else f"threestudio: {name} ({method})"
    return ConfigEntry(config_id, os.path.abspath(path), label, method, guidance_type, world, plugin)


def build_catalog(threestudio: Optional[str] = None, extra_dirs: Optional[List[str]] = None) -> Catalog:
    entries: List[ConfigEntry] = []
    configs = os.path.join(PLUGIN_DIR, "configs")
    for path in sorted(glob.glob(os.path.join(configs, "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        entries.append(_entry(path, f"lucid/{name}", _world_of(name)))
    for path in sorted(glob.glob(os.path.join(configs, "luciddreamer", "*.yaml"))):
        name = os.path.splitext(os.path.basename(path))[0]
        entries.append(_entry(path, f"lucid/luciddreamer/{name}", "luciddreamer"))
    for folder in extra_dirs or []:
        for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
            name = os.path.splitext(os.path.basename(path))[0]
            entries.append(_entry(path, f"extra/{os.path.basename(os.path.abspath(folder))}/{name}", "extra"))
    if threestudio:
        for path in sorted(glob.glob(os.path.join(threestudio, "configs", "*.yaml"))):
            name = os.path.splitext(os.path.basename(path))[0]
            entries.append(_entry(path, f"threestudio/{name}", "threestudio"))
    order = {"ISM": 0, "SDS": 1, "VSD": 2, "ESD": 3}
    kept = [e for e in entries if e is not None]
    kept.sort(key=lambda e: (not e.plugin, order.get(e.method, 9), e.world == "luciddreamer", e.id))
    return Catalog(kept)


_MISSING = object()


def _registered_default(type_name: str, name: str) -> Any:
    """The default of the field ``name`` in the ``Config`` of the registered component ``type_name``
    where it is one of this plugin's (threestudio's are not imported by the app); ``_MISSING`` when
    it has no such field."""
    if not type_name.startswith("lucid-"):
        return _MISSING
    try:
        from .. import compat

        cls = compat.find(type_name)
    except Exception:
        return _MISSING
    config = getattr(cls, "Config", None)
    for f in dataclasses.fields(config) if dataclasses.is_dataclass(config) else []:
        if f.name == name:
            return None if f.default is dataclasses.MISSING else f.default
    return _MISSING


def guidance_default(guidance_type: str, name: str) -> Any:
    """The default of ``system.guidance.<name>`` in the registered guidance's Config, where the
    guidance is one of this plugin's (threestudio's are not imported by the app)."""
    value = _registered_default(guidance_type, name)
    return None if value is _MISSING else value


def config_value(tree: Dict[str, Any], key: str) -> Any:
    """``system.<part>.<name>``'s value: the config text's, else the default of the registered
    ``system.<part>_type`` (``_MISSING`` when neither has it). Other keys: the text's only."""
    if has_key(tree, key):
        return select(tree, key)
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "system":
        return _MISSING
    return _registered_default(str(select(tree, f"system.{parts[1]}_type") or ""), parts[2])


def config_prompt(tree: Dict[str, Any]) -> Optional[str]:
    """The config's own prompt (LucidDreamer's configs have one; the plugin's leave it ``???``), which
    the page offers until the user types another; None when it has none or it is an interpolation."""
    prompt = select(tree, "system.prompt_processor.prompt")
    if not isinstance(prompt, str) or not prompt.strip() or prompt.strip() == "???" or "${" in prompt:
        return None
    return prompt


def point_e_installed() -> bool:
    """Whether the Point-E package is importable here: the jobs run in the app's own environment."""
    from ..geometry.initializers import point_e_available

    return point_e_available()


def init_prompt_field(tree: Dict[str, Any]) -> Dict[str, Any]:
    """The "init prompt (Point-E)" option: filled with the config's ``init_prompt`` when its geometry
    starts from Point-E, else empty (the config's own init, named in the placeholder)."""
    init_type = config_value(tree, INIT_TYPE_KEY)
    init_type = None if init_type is _MISSING else init_type
    prompt = select(tree, INIT_PROMPT_KEY)
    entry: Dict[str, Any] = {"value": prompt if init_type == POINT_E and isinstance(prompt, str) else None,
                             "placeholder": f"empty: the config's init ({init_type or 'its default'})"}
    if not point_e_installed():
        from ..geometry.initializers import POINT_E_INSTALL

        entry["note"] = f"needs point-e, not installed here: {POINT_E_INSTALL}"
    return entry


def fields_of(tree: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The form options a config has, with their values: ``{name: {label, value, note?}}``."""
    guidance_type = str(select(tree, "system.guidance_type") or "")
    out: Dict[str, Dict[str, Any]] = {}
    for f in FIELDS:
        if f.guidance is not None and guidance_type not in f.guidance:
            continue
        if f.needs is not None and config_value(tree, f.needs) is _MISSING:
            continue
        key = f.keys[-1] if f.name == "model" else f.keys[0]
        value = select(tree, key)
        entry: Dict[str, Any] = {"label": f.label, "type": f.kind.__name__}
        if f.name == "init_prompt":
            entry.update(init_prompt_field(tree))
            value = entry["value"]
        elif f.name == "resolution":
            if isinstance(value, list):
                entry["note"] = "resolution stages: set them in the config"
                value = None
                entry["disabled"] = True
        elif value is None and key.startswith("system.guidance."):
            value = guidance_default(guidance_type, key.rsplit(".", 1)[1])
        elif value is None and f.name == "seed":
            value = 0
        if isinstance(value, (dict, list)):
            entry["note"] = "a schedule: set it in the config"
            entry["disabled"] = True
            value = None
        entry["value"] = value
        out[f.name] = entry
    return out


def detect_devices() -> List[str]:
    """The GPUs this machine shows (``CUDA_VISIBLE_DEVICES`` first, else ``nvidia-smi -L``), or
    ``["cpu"]``. The app does not import CUDA to count them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return ids or ["cpu"]
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
            count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
            if count:
                return [str(i) for i in range(count)]
        except (OSError, subprocess.SubprocessError):
            pass
    return ["cpu"]


def default_config_id(catalog: Catalog, on_gpu: bool) -> Optional[str]:
    """ISM (LucidDreamer's method) on the toy world on a CPU, on Stable Diffusion on a GPU."""
    wanted = "lucid/lucid-ism" if on_gpu else "lucid/lucid-ism-toy"
    if catalog.get(wanted):
        return wanted
    return catalog.entries[0].id if catalog.entries else None


def toy_world_captions(path: str) -> List[str]:
    """The prompts a toy world knows (its objects' names), read from its ``toy_world.json``."""
    import json

    try:
        with open(os.path.join(path, "toy_world.json"), encoding="utf-8") as f:
            objects = json.load(f)["settings"]["objects"]
        from ..toy_world.objects import get_object

        return [get_object(key).name for key in objects]
    except Exception:
        from ..toy_world.objects import OBJECTS

        return [o.name for o in OBJECTS.values()]
