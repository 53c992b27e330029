"""``lucid-launch``: threestudio's launch.py for the plugin, on GPU when CUDA is there, else on CPU.

Same flags (``--config``, ``--gpu``, one of ``--train|--validate|--test|--export``, ``--verbose``,
``--typecheck``; unknown arguments are dotlist overrides), same order of operations, same output layout
``<exp_root_dir>/<name>/<tag>@<timestamp>/{cmd.txt,configs,code,ckpts,save,csv_logs,...}``; after
``--train`` the test stage runs with the in-memory weights, as launch.py does.

Differences, on purpose: the accelerator is ``gpu`` only when CUDA is available (launch.py hard-codes
it), and a bad input (config key, file, value, missing model) ends with one ``error:`` line and exit
code 2 instead of a traceback. Also:

- the experiment config is checked before torch, Lightning and the components are imported
  (``preflight.py``; the console script starts that check even before the package import, see
  ``early_launch_check.py``), and again, fully, once ``./custom`` is loaded;
- ``trainer.max_steps`` must be >= 1 or -1 (no limit) with ``--train``: 0 would train nothing;
- ``trainer.enable_progress_bar=false`` is honoured (launch.py always adds its progress bar, which
  Lightning then rejects);
- a run never writes into an earlier run's folder: ``--train`` into an existing folder
  (``use_timestamp=false``, or a parsed.yaml's timestamp) is refused unless it resumes a checkpoint
  of that run; ``--validate/--test/--export`` then write into a fresh timestamped folder;
- the run folder is claimed (``run_folder.py``: an exclusive lock held while the launch runs): a
  launch that finds its folder claimed by another one (same config, same second) takes the next free
  timestamp and says which;
- the trial folder name is made safe from the tag (``utils/config.py:safe_folder_name``);
- a launch that fails before training wrote anything removes the folders it created;
- ``resume=`` must be a complete checkpoint (checked before anything is loaded).
"""
import importlib
import inspect
import logging
import os
import sys

from .preflight import build_parser  # noqa: F401  (launch.py's flags; light, used before the heavy imports)


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
    print(_preflight().error_line(message), file=sys.stderr)
    return 2


def _preflight():
    # looked up each time: --typecheck imports the package (and its ConfigError) afresh
    return importlib.import_module("threestudio_lucid.host.preflight")


def _remove_unused_run_dirs(created, trial_dir: str) -> None:
    """Undo the folders of a launch that failed before training wrote anything.

    Only folders this launch created (``created``, deepest first) are touched. The trial folder goes
    only if it holds nothing but what the launcher itself puts there before training (``cmd.txt`` and
    empty folders); anything else (a config snapshot, a checkpoint, an image) keeps it for the user.
    """
    from threestudio_lucid import run_folder

    trial_dir = os.path.abspath(trial_dir)
    if trial_dir in created and os.path.isdir(trial_dir):
        launcher_files = ("cmd.txt", run_folder.LOCK_NAME)
        for root, _, files in os.walk(trial_dir):
            if any(not (root == trial_dir and f in launcher_files) for f in files):
                run_folder.release(trial_dir)
                return
        run_folder.remove_claim(trial_dir)
        cmd = os.path.join(trial_dir, "cmd.txt")
        if os.path.isfile(cmd):
            os.remove(cmd)
        for root, _, _ in sorted(os.walk(trial_dir), key=lambda w: -len(w[0])):
            try:
                os.rmdir(root)
            except OSError:
                return
    for path in created:
        if path != trial_dir:
            try:
                os.rmdir(path)  # only when empty: a parallel launch may have put its run there
            except OSError:
                return


def _claim_run_folder(compat, plan) -> list:
    """Claim the planned run folder for this launch (``run_folder.py``); when another launch got it
    first (same config started in the same second), move to the next free timestamp and say so.
    Returns the folders this launch created, deepest first (the only ones it may remove again)."""
    from threestudio_lucid import run_folder
    from threestudio_lucid.errors import ConfigError

    created = plan.missing_dirs()
    if run_folder.process_rank() != 0:
        return created
    resuming = plan.resume is not None and _preflight()._inside(plan.resume, plan.trial_dir)
    try:
        run_folder.claim(plan.trial_dir, resuming=resuming)
        return created
    except OSError as e:
        raise ConfigError(
            f"Cannot create the run folder '{plan.trial_dir}' ({e.strerror or e}): set exp_root_dir to a "
            "writable folder with free space, e.g. exp_root_dir=outputs."
        ) from None
    except run_folder.RunFolderTaken as taken:
        who = run_folder.describe_holder(taken.holder, taken.live)
        if resuming:
            raise ConfigError(
                f"resume='{plan.resume}': its run folder '{plan.trial_dir}' is {who}: two launches must not "
                "continue one run; wait for the other to finish (or stop it) and resume again."
            ) from None
        if not plan.timestamp:
            raise ConfigError(
                f"The run folder '{plan.trial_dir}' is {who} (a fixed name: use_timestamp=false, or several "
                "GPUs): set another tag (tag=...), or use_timestamp=true for a folder of its own."
            ) from None
        old = plan.trial_dir
        created = [d for d in created if d != os.path.abspath(old)]
        try:
            plan.trial_dir, plan.timestamp = run_folder.claim_next_free(plan.exp_dir, plan.trial_prefix, plan.timestamp)
        except OSError as e:
            raise ConfigError(
                f"Cannot create a run folder in '{plan.exp_dir}' ({e.strerror or e}): set exp_root_dir to a "
                "writable folder with free space, e.g. exp_root_dir=outputs."
            ) from None
        created.insert(0, os.path.abspath(plan.trial_dir))
        compat.info(f"'{old}' is {who}: this run writes into '{plan.trial_dir}'.")
        return created


def _resume_status(torch, path: str):
    """``(epoch, global_step)`` of the resume checkpoint; loading it first turns a damaged file into
    one config error instead of a traceback from inside Lightning (tensors are memory-mapped, not
    read)."""
    from threestudio_lucid.errors import ConfigError

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=_preflight().is_zip_checkpoint(path))
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise ConfigError(
            f"resume='{path}' is not a complete checkpoint ({type(e).__name__}: {e}): point it at a checkpoint "
            "the training wrote, e.g. outputs/<name>/<run>/ckpts/last.ckpt."
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(
            f"resume='{path}' is a torch file but not a Lightning checkpoint (no state_dict): point it at a "
            "checkpoint the training wrote, e.g. outputs/<name>/<run>/ckpts/last.ckpt."
        )
    return ckpt.get("epoch", 0), ckpt.get("global_step", 0)


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

    # the config first: a bad value must not wait for torch, Lightning, ./custom or a model
    preflight = _preflight()
    try:
        preflight.check(args, extras)
    except preflight.UnknownResolverError:
        pass  # an extension in ./custom may register it: checked again once they are loaded
    except preflight.ConfigError as e:
        return _fail(str(e))

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.utilities.exceptions import MisconfigurationException
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    compat = _import_plugin(args.typecheck)
    from threestudio_lucid.atomic_files import as_storage_error, write_text
    from threestudio_lucid.errors import ConfigError, NonFiniteError, StorageError
    from threestudio_lucid.host.utils.callbacks import (
        CodeSnapshotCallback,
        ConfigSnapshotCallback,
        CustomProgressBar,
    )
    from threestudio_lucid.host.utils.config import load_config

    load_custom_modules()
    use_gpu = torch.cuda.is_available()
    if not use_gpu:
        n_gpus = 1
    _set_log_format(args.verbose)

    preflight = _preflight()
    try:
        plan = preflight.check(args, extras, n_gpus=n_gpus)
    except ConfigError as e:
        return _fail(str(e))
    if plan.moved_from:
        compat.info(f"'{plan.moved_from}' is another run's folder: this run writes into '{plan.trial_dir}'.")
    try:
        created = _claim_run_folder(compat, plan)
    except ConfigError as e:
        return _fail(str(e))

    try:
        # the launcher's own load_config (with either threestudio): the folder just checked
        cfg = load_config(args.config, cli_args=extras, n_gpus=n_gpus, timestamp=plan.timestamp)
        resume_status = _resume_status(torch, cfg.resume) if cfg.resume is not None else None

        pl.seed_everything(cfg.seed + compat.get_rank(), workers=True)
        dm = _find(compat, cfg.data_type, "data_type")(cfg.data)
        system = _find(compat, cfg.system_type, "system_type")(cfg.system, resumed=cfg.resume is not None)
        system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

        callbacks, loggers = [], []
        if args.train:
            try:
                options = dict(cfg.checkpoint)
                # a run continued in its own folder (resume=) keeps writing last.ckpt, not last-v1.ckpt;
                # a new run never shares a folder, so nothing else can collide (Lightning >= 2.1)
                if "enable_version_counter" in inspect.signature(ModelCheckpoint.__init__).parameters:
                    options.setdefault("enable_version_counter", False)
                checkpoint = ModelCheckpoint(dirpath=os.path.join(cfg.trial_dir, "ckpts"), **options)
            except (TypeError, ValueError, MisconfigurationException) as e:
                raise ConfigError(
                    f"Invalid checkpoint option in 'checkpoint' ({e}): see pytorch_lightning's ModelCheckpoint arguments."
                ) from None
            callbacks += [
                checkpoint,
                LearningRateMonitor(logging_interval="step"),
                CodeSnapshotCallback(os.path.join(cfg.trial_dir, "code"), use_version=False),
                ConfigSnapshotCallback(args.config, cfg, os.path.join(cfg.trial_dir, "configs"), use_version=False),
            ]
            # launch.py always adds its bar, and Lightning rejects a bar with enable_progress_bar=false
            if cfg.trainer.get("enable_progress_bar", True) is not False:
                callbacks.append(CustomProgressBar(refresh_rate=1))
            try:
                from pytorch_lightning.loggers import TensorBoardLogger

                rank_zero_only(lambda: os.makedirs(os.path.join(cfg.trial_dir, "tb_logs"), exist_ok=True))()
                loggers.append(TensorBoardLogger(cfg.trial_dir, name="tb_logs"))
            except (ImportError, ModuleNotFoundError):
                compat.debug("tensorboard is not installed: tb_logs/ is not written")
            loggers += [CSVLogger(cfg.trial_dir, name="csv_logs")] + system.get_loggers()

            def write_cmd():
                write_text(os.path.join(cfg.trial_dir, "cmd.txt"), f"python {' '.join(sys.argv)}\n{args}\n")

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
        except (TypeError, ValueError, MisconfigurationException) as e:
            raise ConfigError(f"Invalid trainer option in 'trainer' ({e}): see pytorch_lightning.Trainer's arguments.")

        def set_system_status():
            if resume_status is not None:
                system.set_resume_status(*resume_status)

        if args.train:
            trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
            stop_signal = getattr(system, "stop_signal", None)
            if getattr(system, "interrupted_checkpoint", None) and stop_signal is not None:
                return 128 + int(stop_signal)  # the system saved and said how to resume; no test stage
            trainer.test(system, datamodule=dm)
        elif args.validate:
            set_system_status()
            trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
        elif args.test:
            set_system_status()
            trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
        elif args.export:
            set_system_status()
            trainer.predict(system, datamodule=dm, ckpt_path=cfg.resume)
    except ConfigError as e:
        _remove_unused_run_dirs(created, plan.trial_dir)
        return _fail(str(e))
    except NonFiniteError as e:  # the system stopped a diverged run; its checkpoints stay
        return _fail(str(e))
    except StorageError as e:  # a full disk: the files written before it (checkpoints) and the folder stay
        return _fail(str(e))
    except OSError as e:  # the same met outside the plugin's writers (a logger's file)
        full = as_storage_error(e, folder=plan.trial_dir)
        if full is None:
            _remove_unused_run_dirs(created, plan.trial_dir)
            raise
        return _fail(str(full))
    except BaseException:
        _remove_unused_run_dirs(created, plan.trial_dir)
        raise
    finally:
        from threestudio_lucid import run_folder

        run_folder.release(plan.trial_dir)  # the record stays: a later launch sees an earlier run's folder
    return 0


def main(argv=None) -> int:
    args, extras = build_parser().parse_known_args(argv)
    return run(args, extras)


if __name__ == "__main__":
    sys.exit(main())
