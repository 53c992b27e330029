"""Experiment configuration: threestudio's ``ExperimentConfig``, ``load_config`` and resolvers.

Same fields, defaults, resolvers and strictness as threestudio. Additions: every config error is
raised as a :class:`ConfigError` (a ``TypeError`` for unknown keys, as threestudio raises, and a
``ValueError`` otherwise) whose one-line message names the full key, where it came from, and the fix;
the trial folder name is made safe (:func:`safe_folder_name`), so a prompt cannot put it outside
``exp_root_dir`` or past the file system's name length.

This module imports only the standard library, omegaconf and packaging (no torch): ``lucid-launch``
loads it on its own to check a config before the heavy imports (``host/preflight.py``).
"""
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field, fields as dataclass_fields, is_dataclass
from datetime import datetime, timedelta
from typing import Any, List, Optional, Union

import omegaconf
from omegaconf import DictConfig, OmegaConf
from packaging.version import Version
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, UnsupportedInterpolationType

from ...errors import ConfigError, UnknownConfigKeyError, UnknownResolverError  # noqa: F401  (re-exported)


_OMEGACONF_VERSION = Version(omegaconf.__version__)

# Where the current experiment config came from, so errors found later (when a component parses its
# own sub-config) can say which file or command-line argument to fix.
_SOURCES = {"files": [], "cli_keys": set(), "made_timestamp": None}


def _register_resolver(name, fn):
    # threestudio registers these at import; a second registration (real threestudio present, or a
    # reload) must not raise.
    if OmegaConf.has_resolver(name):
        return
    # omegaconf >= 2.4 renamed register_new_resolver (deprecated there) to register_resolver, which
    # in 2.3 (threestudio's pin) is the old string-only API.
    if _OMEGACONF_VERSION >= Version("2.4.0.dev0"):
        OmegaConf.register_resolver(name, fn, annotation_validation="off")
    else:
        OmegaConf.register_new_resolver(name, fn)


def C_max(value: Any) -> float:
    """Largest value a ``C()`` schedule reaches (plain numbers pass through)."""
    if isinstance(value, (int, float)):
        return value
    value = config_to_primitive(value)
    if not isinstance(value, list):
        raise TypeError("Scalar specification only supports list, got", type(value))
    if len(value) >= 6:
        # piecewise [s0, v0, v1, s1, v2, s2, ...]: the values are at 1, 2, 4, 6, ...
        return max([value[1]] + [value[i] for i in range(2, len(value), 2)])
    if len(value) == 3:
        value = [0] + value
    if len(value) != 4:
        raise ConfigError(f"A C() schedule needs 3, 4 or >= 6 entries, got {value}")
    return max(value[1], value[2])


# threestudio's resolvers (by name; the launcher's early check removes them again, see preflight)
RESOLVERS = {
    "calc_exp_lr_decay_rate": lambda factor, n: factor ** (1.0 / n),
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "idiv": lambda a, b: a // b,
    "basename": lambda p: os.path.basename(p),
    "rmspace": lambda s, sub: s.replace(" ", sub),
    "tuple2": lambda s: [float(s), float(s)],
    "gt0": lambda s: s > 0,
    "cmaxgt0": lambda s: C_max(s) > 0,
    "not": lambda s: not s,
    "cmaxgt0orcmaxgt0": lambda a, b: C_max(a) > 0 or C_max(b) > 0,
}
for _name, _fn in RESOLVERS.items():
    _register_resolver(_name, _fn)


@dataclass
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    tag: str = ""
    seed: int = 0
    use_timestamp: bool = True
    timestamp: Optional[str] = None
    exp_root_dir: str = "outputs"

    # derived in __post_init__, not meant to be set by hand
    exp_dir: str = "outputs/default"
    trial_name: str = "exp"
    trial_dir: str = "outputs/default/exp"
    n_gpus: int = 1

    resume: Optional[str] = None

    data_type: str = ""
    data: dict = field(default_factory=dict)

    system_type: str = ""
    system: dict = field(default_factory=dict)

    # pytorch-lightning Trainer kwargs
    trainer: dict = field(default_factory=dict)
    # pytorch-lightning ModelCheckpoint kwargs
    checkpoint: dict = field(default_factory=dict)

    def __post_init__(self):
        for key in ("exp_root_dir", "name"):  # `exp_root_dir=` on the command line is None
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{key}={value!r} {_where(key)}: must name a folder (e.g. {key}="
                                  f"{'outputs' if key == 'exp_root_dir' else 'my-run'}).")
        if not self.tag and not self.use_timestamp:
            raise ConfigError("Either tag is specified or use_timestamp is True.")
        # the folder name is made safe; the tag itself keeps the prompt's text
        self.trial_name = safe_folder_name(self.tag)
        # a relaunch from a saved parsed.yaml keeps its timestamp
        if self.timestamp is None:
            self.timestamp = ""
            if self.use_timestamp:
                if self.n_gpus > 1:
                    from .. import warn

                    warn(
                        "Timestamp is disabled when using multiple GPUs, "
                        "please make sure you have a unique tag."
                    )
                else:
                    self.timestamp = free_timestamp(os.path.join(self.exp_root_dir, safe_folder_name(self.name)), self.trial_name)
                    _SOURCES["made_timestamp"] = self.timestamp
        self.trial_name += safe_folder_name(self.timestamp, max_len=40)
        self.exp_dir = os.path.join(self.exp_root_dir, safe_folder_name(self.name))
        self.trial_dir = os.path.join(self.exp_dir, self.trial_name)


def free_timestamp(exp_dir: str, trial_prefix: str) -> str:
    """A fresh ``@YYYYmmdd-HHMMSS``; two runs started in the same second would share (and
    overwrite) one trial folder, so the later one moves to the next free second."""
    now = datetime.now()
    while True:
        stamp = now.strftime("@%Y%m%d-%H%M%S")
        if not os.path.exists(os.path.join(exp_dir, trial_prefix + stamp)):
            return stamp
        now += timedelta(seconds=1)


# Folder names keep ASCII letters, digits and these; any other run of characters becomes one "_".
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_\-.,@+=]+")
MAX_FOLDER_NAME = 100


def safe_folder_name(text: str, max_len: int = MAX_FOLDER_NAME) -> str:
    """``text`` as a single folder name that stays where it is put.

    Path separators, ``..``, a leading dot, spaces left over and non-ASCII characters are replaced
    (accents are dropped first: "café" -> "cafe"); the result is cut to ``max_len`` characters. When
    anything changed, an 8-digit hash of the full text is appended, so two prompts that differ only
    in what was replaced or cut still get different folders. Names that are already safe (threestudio's
    usual ``a_DSLR_photo_of_a_corgi``) are returned unchanged.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    safe = _UNSAFE_RUN.sub("_", ascii_text)
    safe = re.sub(r"\.\.+", "_", safe)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe == text and len(safe) <= max_len:
        return safe
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    return safe[: max_len - len(digest) - 1] + "-" + digest


def made_timestamp(cfg: Any) -> bool:
    """Whether the last config read got its timestamp now (not from the config or the command line,
    as a relaunch from a parsed.yaml does)."""
    return bool(cfg.timestamp) and cfg.timestamp == _SOURCES["made_timestamp"]


def make_trial_dir(cfg: Any) -> None:
    """Create ``cfg.trial_dir`` (threestudio does it when the config is loaded)."""
    try:
        os.makedirs(cfg.trial_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"exp_root_dir='{cfg.exp_root_dir}' cannot hold the run folder '{cfg.trial_dir}' "
            f"({e.strerror or e}): set exp_root_dir to a writable folder, e.g. exp_root_dir=outputs."
        ) from None


def _cli_keys(cli_args: List[str]) -> set:
    keys = set()
    for arg in cli_args:
        key = arg.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def _where(full_key: str) -> str:
    """Say where a key was set: on the command line, or in which config file(s)."""
    if full_key and full_key in _SOURCES["cli_keys"]:
        return "on the command line"
    files = _SOURCES["files"]
    if files:
        return "in " + ", ".join(files)
    return "in the config"


def load_config(*yamls: str, cli_args: list = [], from_string=False, **kwargs) -> Any:
    """Merge YAML files, command-line dotlist overrides and kwargs, resolve, validate, and create the
    trial folder.

    Order and semantics follow threestudio: merge -> eager ``OmegaConf.resolve`` ->
    ``parse_structured(ExperimentConfig, ...)`` -> ``os.makedirs(trial_dir)``.
    """
    cfg = read_config(*yamls, cli_args=cli_args, from_string=from_string, **kwargs)
    make_trial_dir(cfg)
    return cfg


def read_config(*yamls: str, cli_args: list = [], from_string=False, **kwargs) -> Any:
    """:func:`load_config` without touching the disk: the launcher checks a config with it before
    anything is created."""
    yaml_confs = []
    for y in yamls:
        if from_string:
            yaml_confs.append(OmegaConf.create(y))
            continue
        if os.path.isdir(y):
            raise ConfigError(f"Config file '{y}' is a folder: pass a YAML file to --config "
                              "(e.g. custom/threestudio-lucid/configs/lucid-ism-cpu.yaml).")
        if not os.path.isfile(y):
            raise ConfigError(f"Config file '{y}' does not exist: pass an existing YAML file to --config.")
        # an empty file (or a list, or one value) is no run config: threestudio would go on and fail on
        # the first empty field (data_type=''); the document's root node says what it is
        import yaml

        fix = "pass a run config, a mapping of keys such as name:, data_type:, system_type:, system: (e.g. " \
              "custom/threestudio-lucid/configs/lucid-ism-cpu.yaml)"
        try:
            with open(y, encoding="utf-8") as f:
                root = yaml.compose(f, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, UnicodeDecodeError):
            root = "unparsed"  # OmegaConf.load below names the syntax error
        except OSError as e:
            raise ConfigError(f"Config file '{y}' cannot be read ({e.strerror or e}): {fix}.") from None
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")) or \
                (isinstance(root, yaml.MappingNode) and not root.value):
            raise ConfigError(f"Config file '{y}' is empty (it holds no keys: only blank lines, comments, {{}} or null): {fix}.")
        if isinstance(root, (yaml.SequenceNode, yaml.ScalarNode)):
            what = "a YAML list" if isinstance(root, yaml.SequenceNode) else f"a single value ({root.value[:40]!r})"
            raise ConfigError(f"Config file '{y}' holds {what}, not a mapping of config keys: {fix}.")
        try:
            yaml_confs.append(OmegaConf.load(y))
        except Exception as e:  # yaml syntax errors carry line numbers; keep them on one line
            msg = " ".join(str(e).split())
            raise ConfigError(f"Config file '{y}' is not valid YAML: {msg}") from None
    _SOURCES["files"] = [] if from_string else list(yamls)
    _SOURCES["cli_keys"] = _cli_keys(cli_args)
    _SOURCES["made_timestamp"] = None
    try:
        cli_conf = OmegaConf.from_cli(cli_args)
    except Exception as e:
        raise ConfigError(
            f"Cannot parse command-line overrides {cli_args}: {' '.join(str(e).split())}. "
            "Overrides are dotlist items such as system.guidance.guidance_scale=7.5"
        ) from None
    cfg = OmegaConf.merge(*yaml_confs, cli_conf, kwargs)
    # threestudio fails on an unfilled ??? only when something reads it; name the key itself up front
    # (resolving first would blame whatever interpolates it, e.g. the tag built from the prompt)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(
            f"Missing mandatory value '{key}' (???) {_where(key)}{also}: "
            f"set it, e.g. on the command line as {key}=..."
        )
    # `prompt=` on the command line is None: the tag interpolating it would fail with an AttributeError
    prompt_key = "system.prompt_processor.prompt"
    if OmegaConf.select(cfg, "system.prompt_processor") is not None and \
            "prompt" in cfg.system.prompt_processor and cfg.system.prompt_processor._get_node("prompt")._is_none():
        raise ConfigError(
            f"{prompt_key} is empty {_where(prompt_key)}: give the prompt, e.g. {prompt_key}=\"a DSLR photo of a corgi\"."
        )
    try:
        OmegaConf.resolve(cfg)
    except MissingMandatoryValue as e:
        key = e.full_key
        raise ConfigError(
            f"Missing mandatory value '{key}' (???) {_where(key)}: "
            f"set it, e.g. on the command line as {key}=..."
        ) from None
    except UnsupportedInterpolationType as e:
        key = getattr(e, "full_key", None) or "?"
        raise UnknownResolverError(
            f"Cannot resolve config key '{key}' {_where(key)}: {' '.join(str(e).split())}. "
            "Use one of threestudio's resolvers or load the extension that registers it from ./custom."
        ) from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(
            f"Cannot resolve config key '{key}' {_where(key)}: {' '.join(str(e).split())}"
        ) from None
    assert isinstance(cfg, DictConfig)
    return parse_structured(ExperimentConfig, cfg)


def config_to_primitive(config, resolve: bool = True) -> Any:
    return OmegaConf.to_container(config, resolve=resolve)


def dump_config(path: str, config) -> None:
    """``OmegaConf.save``'s YAML, written atomically (``atomic_files.py``)."""
    import io

    from ...atomic_files import write_text

    text = io.StringIO()
    OmegaConf.save(config=config, f=text)
    write_text(path, text.getvalue())


# A component's config is a new OmegaConf root (parse_structured), so the keys below it start again
# at its own fields; the key it came from is kept on that root to name nested keys in full
# (system.guidance.x, not guidance.x).
_KEY_PREFIX_ATTR = "_lucid_key_prefix"


def _key_prefix(cfg) -> str:
    try:
        root = cfg._get_root()
    except Exception:
        return ""
    return root.__dict__.get(_KEY_PREFIX_ATTR, "")


def _full_key(cfg, key: str) -> str:
    """``key`` of ``cfg`` as a dotted path from the experiment config's root."""
    full = key
    if isinstance(cfg, DictConfig):
        try:
            full = cfg._get_full_key(key)
        except Exception:
            pass
        prefix = _key_prefix(cfg)
        if prefix:
            full = f"{prefix}.{full}" if full else prefix
    return full


def parse_structured(fields: Any, cfg: Optional[Union[dict, DictConfig]] = None) -> Any:
    """Validate ``cfg`` against the dataclass ``fields`` and return a struct-mode DictConfig.

    As in threestudio, ``fields(**cfg)`` is built first (so a list given for a ``float`` field stays an
    unvalidated ListConfig: that is how ``C()`` schedules live in float fields), unknown keys are an
    error, and ``dict`` fields stay open.
    """
    if cfg is None:
        cfg = {}
    if is_dataclass(fields):
        known = {f.name for f in dataclass_fields(fields) if f.init}
        unknown = [k for k in cfg.keys() if k not in known]
        if unknown:
            key = _full_key(cfg, str(unknown[0]))
            owner = getattr(fields, "__qualname__", str(fields))
            raise UnknownConfigKeyError(
                f"Unknown config key '{key}' {_where(key)}: {owner} has no field '{unknown[0]}'. "
                f"Valid fields: {', '.join(sorted(known))}. Fix the spelling or remove the key."
            )
    prefix = _full_key(cfg, "") if isinstance(cfg, DictConfig) else ""
    try:
        scfg = OmegaConf.structured(fields(**cfg))
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or ""
        if prefix and key and not key.startswith(prefix):
            key = f"{prefix}.{key}" if not prefix.endswith(".") else prefix + key
        msg = " ".join(str(e).split("\n")[0].split())
        raise ConfigError(f"Invalid value for config key '{key}' {_where(key)}: {msg}") from None
    if prefix:
        scfg.__dict__[_KEY_PREFIX_ATTR] = prefix
    return scfg
