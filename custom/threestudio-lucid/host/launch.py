"""``lucid-launch``: threestudio's launch.py for the plugin, on GPU when CUDA is there, else on CPU.

Same flags (``--config``, ``--gpu``, one of ``--train|--validate|--test|--export``, ``--verbose``,
``--typecheck``; unknown arguments are dotlist overrides), same order of operations, same output layout
``<exp_root_dir>/<name>/<tag>@<timestamp>/{cmd.txt,configs,code,ckpts,save,csv_logs,...}``; after
``--train`` the test stage runs with the in-memory weights, as launch.py does.

Differences, on purpose: the accelerator is ``gpu`` only when CUDA is available (launch.py hard-codes
it), and a bad input (config key, file, value, missing model) ends with one ``error:`` line and exit
code 2 instead of a traceback.
"""
import argparse
import importlib
import logging
import os
import sys


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


def _import_plugin(typecheck: bool):
    """Return the plugin's ``compat`` module, with the jaxtyping import hook when asked.

    The hook only affects modules imported after it, and this module lives inside the plugin, so with
    --typecheck the plugin (and the bundled host with its registry) is imported afresh.
    """
    if typecheck:
        from importlib import util as importlib_util

        from jaxtyping import install_import_hook

        # the checker module is loaded on its own (top-level name), not as part of the package the
        # hook is about to re-import
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "typecheck.py")
        spec = importlib_util.spec_from_file_location("_lucid_typecheck", path)
        checker = importlib_util.module_from_spec(spec)
        spec.loader.exec_module(checker)
        sys.modules["_lucid_typecheck"] = checker
        install_import_hook(["threestudio_lucid"], "_lucid_typecheck.typechecker")
        for name in [m for m in sys.modules if m == "threestudio_lucid" or m.startswith("threestudio_lucid.")]:
            if name != __name__:
                del sys.modules[name]
    return importlib.import_module("threestudio_lucid.compat")


def load_custom_modules(custom_dir: str = "custom") -> None:
    """Import the extensions in ``./custom`` as launch.py does (folder name = module name; import
    errors are printed, not raised). The plugin itself is skipped: it is already imported."""
    import importlib.util
    import time
    import traceback

    if not os.path.isdir(custom_dir):
        return
    plugin_dir = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    times = []
    for entry in sorted(os.listdir(custom_dir)):
        path = os.path.join(custom_dir, entry)
        if entry == "__pycache__" or entry.endswith("_disabled"):
            continue
        if os.path.isfile(path) and not entry.endswith(".py"):
            continue
        if os.path.realpath(path) == plugin_dir:
            continue
        init = path if os.path.isfile(path) else os.path.join(path, "__init__.py")
        if not os.path.isfile(init):
            continue
        name = os.path.splitext(path)[0] if os.path.isfile(path) else entry
        start = time.perf_counter()
        ok = True
        try:
            spec = importlib.util.spec_from_file_location(name, init)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except Exception as e:
            print(traceback.format_exc())
            print(f"Cannot import {path} module for custom nodes:", e)
            ok = False
        times.append((time.perf_counter() - start, path, ok))
    if times:
        print("\nImport times for custom modules:")
        for t, path, ok in sorted(times):
            print("{:6.1f} seconds{}:".format(t, "" if ok else " (IMPORT FAILED)"), path)
        print()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (a handler bound to an old stream would
    write to a closed file after an in-process relaunch, e.g. under pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _set_log_format(verbose: bool):
    logger = logging.getLogger("pytorch_lightning")
    if verbose:
        logger.setLevel(logging.DEBUG)
    elif logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        # replace Lightning's own stderr handler (if any) by one that follows sys.stderr
        for h in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(h)
        logger.addHandler(_StderrHandler())
    for handler in logger.handlers:
        if isinstance(handler, _StderrHandler):
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))


def _find(compat, name: str, key: str):
    from threestudio_lucid.errors import ConfigError

    try:
        return compat.find(name)
    except KeyError as e:
        detail = e.args[0] if e.args else name
        raise ConfigError(f"{key}='{name}' is not a registered component. {detail}") from None


def _fail(message: str) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def run(args, extras) -> int:
    # GPU selection, exactly as launch.py: CUDA_VISIBLE_DEVICES wins over --gpu.
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env_gpus_str = os.environ.get("CUDA_VISIBLE_DEVICES", None)
    env_gpus = list(env_gpus_str.split(",")) if env_gpus_str else []
    if env_gpus:
        n_gpus = len(env_gpus)
    else:
        n_gpus = len(args.gpu.split(","))
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    compat = _import_plugin(args.typecheck)
    from threestudio_lucid.errors import ConfigError
    from threestudio_lucid.host.utils.callbacks import (
        CodeSnapshotCallback,
        ConfigSnapshotCallback,
        CustomProgressBar,
    )

    load_custom_modules()
    use_gpu = torch.cuda.is_available()
    if not use_gpu:
        n_gpus = 1
    _set_log_format(args.verbose)

    try:
        cfg = compat.load_config(args.config, cli_args=extras, n_gpus=n_gpus)
        if cfg.resume is not None and not os.path.isfile(cfg.resume):
            raise ConfigError(f"resume='{cfg.resume}' does not exist: point it at a checkpoint, e.g. .../ckpts/last.ckpt")
        if not (args.train or cfg.resume is not None):
            compat.warn("No resume=<ckpt> given: evaluating a freshly initialised system.")

        pl.seed_everything(cfg.seed + compat.get_rank(), workers=True)
        dm = _find(compat, cfg.data_type, "data_type")(cfg.data)
        system = _find(compat, cfg.system_type, "system_type")(cfg.system, resumed=cfg.resume is not None)
        system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

        callbacks, loggers = [], []
        if args.train:
            callbacks += [
                ModelCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), **cfg.checkpoint),
                LearningRateMonitor(logging_interval="step"),
                CodeSnapshotCallback(os.path.join(cfg.trial_dir, "code"), use_version=False),
                ConfigSnapshotCallback(args.config, cfg, os.path.join(cfg.trial_dir, "configs"), use_version=False),
                CustomProgressBar(refresh_rate=1),
            ]
            try:
                from pytorch_lightning.loggers import TensorBoardLogger

                rank_zero_only(lambda: os.makedirs(os.path.join(cfg.trial_dir, "tb_logs"), exist_ok=True))()
                loggers.append(TensorBoardLogger(cfg.trial_dir, name="tb_logs"))
            except (ImportError, ModuleNotFoundError):
                compat.debug("tensorboard is not installed: tb_logs/ is not written")
            loggers += [CSVLogger(cfg.trial_dir, name="csv_logs")] + system.get_loggers()

            def write_cmd():
                with open(os.path.join(cfg.trial_dir, "cmd.txt"), "w") as f:
                    f.write("python " + " ".join(sys.argv) + "\n")
                    f.write(str(args) + "\n")

            rank_zero_only(write_cmd)()

        try:
            trainer = Trainer(
                callbacks=callbacks,
                logger=loggers,
                inference_mode=False,
                accelerator="gpu" if use_gpu else "cpu",
                devices=-1 if use_gpu else 1,
                **cfg.trainer,
            )
        except TypeError as e:
            raise ConfigError(f"Invalid trainer option in 'trainer' ({e}): see pytorch_lightning.Trainer's arguments.")

        def set_system_status(ckpt_path):
            if ckpt_path is None:
                return
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            system.set_resume_status(ckpt["epoch"], ckpt["global_step"])

        if args.train:
            trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
            trainer.test(system, datamodule=dm)
        elif args.validate:
            set_system_status(cfg.resume)
            trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
        elif args.test:
            set_system_status(cfg.resume)
            trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
        elif args.export:
            set_system_status(cfg.resume)
            trainer.predict(system, datamodule=dm, ckpt_path=cfg.resume)
    except ConfigError as e:
        return _fail(str(e))
    return 0


def main(argv=None) -> int:
    args, extras = build_parser().parse_known_args(argv)
    return run(args, extras)


if __name__ == "__main__":
    sys.exit(main())
