"""What the page offers: the configs (one per method and world), the options people change most, and
the default model of this machine.

A config is a YAML file: the plugin's own (``configs/*.yaml``, LucidDreamer's in
``configs/luciddreamer/``), any folder given with ``--configs``, and threestudio's baselines
(``<checkout>/configs/*.yaml``) when ``--threestudio`` is given. Its method is read from its
``system.guidance_type``. The page shows each option of :data:`FIELDS` that the config's guidance
has, pre-filled from the config text (or the guidance's own default where the text leaves it out).
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
    """One option of the form: its name in the page, the config keys it sets, its type, and the
    guidance types that have it (None: every config)."""

    name: str
    label: str
    keys: tuple
    kind: type
    guidance: Optional[tuple] = None


MODEL_KEYS = ("system.prompt_processor.pretrained_model_name_or_path", "system.guidance.pretrained_model_name_or_path")
RESOLUTION_KEYS = ("data.width", "data.height", "data.eval_width", "data.eval_height")

FIELDS = [
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


def guidance_default(guidance_type: str, name: str) -> Any:
    """The default of ``system.guidance.<name>`` in the registered guidance's Config, where the
    guidance is one of this plugin's (threestudio's are not imported by the app)."""
    if not guidance_type.startswith("lucid-"):
        return None
    try:
        from .. import compat

        cls = compat.find(guidance_type)
    except Exception:
        return None
    for f in dataclasses.fields(getattr(cls, "Config", object)) if dataclasses.is_dataclass(getattr(cls, "Config", None)) else []:
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            return None
    return None


def fields_of(tree: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The form options a config has, with their values: ``{name: {label, value, note?}}``."""
    guidance_type = str(select(tree, "system.guidance_type") or "")
    out: Dict[str, Dict[str, Any]] = {}
    for f in FIELDS:
        if f.guidance is not None and guidance_type not in f.guidance:
            continue
        key = f.keys[-1] if f.name == "model" else f.keys[0]
        value = select(tree, key)
        entry: Dict[str, Any] = {"label": f.label, "type": f.kind.__name__}
        if f.name == "resolution":
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
