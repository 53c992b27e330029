"""What ``lucid-launch`` checks before it imports torch, Lightning or the plugin's components.

A bad experiment config should cost a second, not a model load. This module reads the config as the
launcher will (``utils/config.py``: YAML, command-line overrides, resolvers, ExperimentConfig fields,
unfilled ``???`` values), then checks what the launcher hands to Lightning (``trainer``,
``checkpoint``), the image sizes every camera data module shares, where the run folder goes, and the
``resume`` checkpoint. It writes nothing: a probe folder made and removed at once tests that
``exp_root_dir`` can be written.

It imports only the standard library, omegaconf and its two relatives (``utils/config.py``,
``../errors.py``), so it also runs loaded on its own, before the package (see
``early_launch_check.py``); ``launch.run`` calls it again with the full package loaded.
"""
import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import OmegaConf

from ..errors import ConfigError, UnknownResolverError, error_line  # noqa: F401  (the launcher uses these)
from ..checkpoint_file import check_checkpoint_file, is_zip_checkpoint  # noqa: F401  (the launcher uses both)
from ..run_folder import process_rank
from ..trainer_precision import SYSTEM_TYPE, precision_rule
from .utils import config as config_module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lucid-launch",
        description="Run a threestudio(-lucid) config: like threestudio's launch.py, on CPU or GPU. "
        "Extra arguments are config overrides, e.g. system.prompt_processor.prompt='a cat'.",
    )
    parser.add_argument("--config", required=True, help="path to config file")
    parser.add_argument(
        "--gpu",
        default="0",
        help="GPU(s) to be used (comma list). Ignored when CUDA_VISIBLE_DEVICES is already set; "
        "ignored on machines without CUDA.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--train", action="store_true")
    group.add_argument("--validate", action="store_true")
    group.add_argument("--test", action="store_true")
    group.add_argument("--export", action="store_true")
    parser.add_argument("--gradio", action="store_true", help="accepted for compatibility; no effect")
    parser.add_argument("--verbose", action="store_true", help="set logging level to DEBUG")
    parser.add_argument("--typecheck", action="store_true", help="enable jaxtyping runtime type checks")
    return parser


@dataclass
class Plan:
    """Where the run goes, decided before anything is created."""

    trial_dir: str
    timestamp: str  # passed to load_config, so the run lands in exactly this trial_dir
    exp_dir: str = ""
    trial_prefix: str = ""  # the folder name before the timestamp (the safe tag)
    resume: Optional[str] = None
    moved_from: Optional[str] = None  # an earlier run's folder an eval run does not write into

    def missing_dirs(self) -> List[str]:
        """``trial_dir`` and its ancestors that do not exist yet, deepest first: what this launch
        will create, and the only folders it may remove again."""
        missing, path = [], os.path.abspath(self.trial_dir)
        while not os.path.lexists(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        return missing


def check(args: argparse.Namespace, extras: List[str], n_gpus: int = 1) -> Plan:
    """Read and check the experiment config of a launch; raise :class:`ConfigError` with one line."""
    cfg = config_module.read_config(args.config, cli_args=extras, n_gpus=n_gpus)
    _check_experiment(cfg)
    _check_trainer(cfg, train=args.train)
    if args.train:
        _check_checkpoint_callback(cfg)
    _check_data_sizes(cfg)
    if cfg.resume is not None:
        check_checkpoint_file(cfg.resume)
    weights = OmegaConf.select(cfg, "system.weights")
    if isinstance(weights, str):
        check_checkpoint_file(weights, key="system.weights")
    plan = _plan_trial_dir(cfg, args, n_gpus)
    _check_exp_root(cfg.exp_root_dir, plan.trial_dir)
    return plan


def exit_on_config_error(argv: List[str]) -> None:
    """The early check: print the ``error:`` line and exit 2 when the config is bad, else return.

    A resolver no loaded module registers is left to the full check: an extension in ./custom may
    register it. The resolvers this copy of ``utils/config.py`` registered are removed again, so that
    threestudio (where installed) can register its own when the package is imported.
    """
    args, extras = build_parser().parse_known_args(argv)
    try:
        check(args, extras)
    except UnknownResolverError:
        return
    except ConfigError as e:
        print(error_line(e), file=sys.stderr)
        raise SystemExit(2)
    finally:
        for name in config_module.RESOLVERS:
            OmegaConf.clear_resolver(name)


# ------------------------------------------------------------------------------------------------
# what the launcher hands to Lightning
# ------------------------------------------------------------------------------------------------
def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(key: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} {config_module._where(key)}: {rule}")


def _check_experiment(cfg: Any) -> None:
    # Lightning's seed_everything (and NumPy under it) takes 0 .. 2**32 - 1
    if not _whole(cfg.seed) or not 0 <= cfg.seed < 2**32:
        raise _bad("seed", cfg.seed, "must be a whole number in [0, 4294967295] (e.g. seed=0).")


def _check_trainer(cfg: Any, train: bool) -> None:
    trainer = cfg.trainer
    if "max_steps" in trainer:
        steps = trainer.max_steps
        # Lightning takes -1 (no limit) or >= 0; 0 passes its check but trains nothing, then tests the
        # untrained system and writes an empty run, so --train refuses it
        if not _whole(steps) or steps < -1 or (train and steps == 0):
            why = "0 steps trains nothing; " if steps == 0 else ""
            raise _bad(
                "trainer.max_steps", steps,
                f"{why}give the number of training steps, a whole number >= 1, or -1 for no limit "
                "(e.g. trainer.max_steps=1000).",
            )
    lowest = {
        "max_epochs": -1, "min_steps": 0, "min_epochs": 0, "log_every_n_steps": 1,
        "num_sanity_val_steps": -1, "check_val_every_n_epoch": 1, "accumulate_grad_batches": 1,
    }
    for name, low in lowest.items():
        value = trainer.get(name)
        if value is not None and (not _whole(value) or value < low):
            raise _bad(f"trainer.{name}", value, f"must be a whole number >= {low}.")
    interval = trainer.get("val_check_interval")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0 or (
            isinstance(interval, float) and interval > 1
        ):
            raise _bad(
                "trainer.val_check_interval", interval,
                "must be a whole number of steps >= 1, or a fraction of an epoch in (0, 1].",
            )
    for name in ("enable_progress_bar", "enable_checkpointing", "enable_model_summary"):
        value = trainer.get(name)
        if value is not None and not isinstance(value, bool):
            raise _bad(f"trainer.{name}", value, f"must be true or false (e.g. trainer.{name}=false).")
    precision = trainer.get("precision")
    if precision is not None and cfg.get("system_type") == SYSTEM_TYPE and precision_rule(precision):
        raise _bad("trainer.precision", precision, precision_rule(precision))


def _check_checkpoint_callback(cfg: Any) -> None:
    checkpoint = cfg.checkpoint
    for name, low in (("every_n_train_steps", 0), ("every_n_epochs", 0), ("save_top_k", -1)):
        value = checkpoint.get(name)
        if value is None or (_whole(value) and value >= low):
            continue
        follows = ""
        if name == "every_n_train_steps" and value == cfg.trainer.get("max_steps", object()):
            follows = f" It follows trainer.max_steps={value} here: give checkpoint.every_n_train_steps a step count."
        raise _bad(
            f"checkpoint.{name}", value,
            f"must be a whole number >= {low}" + (" (0: no step checkpoints)." if low == 0 else ".") + follows,
        )


def _check_data_sizes(cfg: Any) -> None:
    """Render sizes and batch sizes every camera data module reads (one value, or one per stage)."""
    data = cfg.data
    for name in ("height", "width", "batch_size", "eval_height", "eval_width"):
        if name not in data:
            continue
        value = data[name]
        values = list(value) if OmegaConf.is_list(value) else [value]
        if not values or not all(_whole(v) and v >= 1 for v in values):
            raise _bad(
                f"data.{name}", OmegaConf.to_container(value) if OmegaConf.is_list(value) else value,
                "must be a whole number >= 1" + (
                    " or a list of them, one per resolution stage" if name in ("height", "width", "batch_size") else ""
                ) + f" (e.g. data.{name}={1 if name == 'batch_size' else 64}).",
            )


# ------------------------------------------------------------------------------------------------
# the run folder
# ------------------------------------------------------------------------------------------------
def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _plan_trial_dir(cfg: Any, args: argparse.Namespace, n_gpus: int) -> Plan:
    """Never write into an earlier run's folder: ``--train`` refuses it unless it resumes a
    checkpoint of that very run (threestudio's way to continue a run from its parsed.yaml); the
    other modes write into a fresh timestamped folder beside it (as a plain threestudio launch does).
    """
    plan = Plan(trial_dir=cfg.trial_dir, timestamp=cfg.timestamp, exp_dir=cfg.exp_dir,
                trial_prefix=config_module.safe_folder_name(cfg.tag), resume=cfg.resume)
    root = os.path.abspath(cfg.exp_root_dir)
    if not _inside(cfg.trial_dir, root):  # safe_folder_name makes this impossible; keep it so
        raise ConfigError(f"The run folder '{cfg.trial_dir}' is outside exp_root_dir='{cfg.exp_root_dir}': set another tag.")
    if process_rank() != 0 or not os.path.lexists(cfg.trial_dir):
        return plan
    if args.train and not config_module.made_timestamp(cfg):
        if cfg.resume is not None and _inside(cfg.resume, cfg.trial_dir):
            return plan
        how = "use_timestamp=false" if not cfg.use_timestamp else f"timestamp='{cfg.timestamp}'"
        raise ConfigError(
            f"The run folder '{cfg.trial_dir}' already exists (tag='{cfg.tag}' with {how}): --train does not "
            "write into an earlier run's folder. Set another tag (tag=...) or use_timestamp=true; to continue "
            f"that run, add resume={os.path.join(cfg.trial_dir, 'ckpts', 'last.ckpt')}."
        )
    if n_gpus > 1:
        return plan  # each rank would pick its own timestamp; threestudio writes into the folder too
    plan.timestamp = config_module.free_timestamp(cfg.exp_dir, plan.trial_prefix)
    plan.moved_from = cfg.trial_dir
    plan.trial_dir = os.path.join(cfg.exp_dir, plan.trial_prefix + plan.timestamp)
    return plan


def _check_exp_root(root: str, trial_dir: str) -> None:
    """The first existing folder on the way to ``trial_dir`` must be a folder this user can write."""
    path = os.path.abspath(trial_dir)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    fix = "set exp_root_dir to a folder you can write, e.g. exp_root_dir=outputs."
    if not os.path.isdir(path):
        raise ConfigError(f"exp_root_dir='{root}' cannot hold run folders: '{path}' is a file, not a folder: {fix}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lucid-launch-check-", dir=path))
    except OSError as e:
        raise ConfigError(f"exp_root_dir='{root}' is not writable ('{path}': {e.strerror or e}): {fix}") from None
