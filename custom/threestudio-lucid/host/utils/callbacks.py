"""Lightning callbacks launch.py installs for ``--train``: code and config snapshots, progress bar.
Every snapshot file is written atomically (``atomic_files.py``)."""
import os
import subprocess

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.callbacks.progress import TQDMProgressBar
from pytorch_lightning.utilities.rank_zero import rank_zero_only, rank_zero_warn

from ...atomic_files import copy_file
from ...errors import StorageError
from .config import dump_config


class VersionedCallback(Callback):
    """Writes under ``save_root`` or, with ``use_version``, under ``save_root/version_<n>``."""

    def __init__(self, save_root, version=None, use_version=True):
        self.save_root = save_root
        self._version = version
        self.use_version = use_version

    @property
    def version(self):
        if self._version is None:
            taken = []
            if os.path.isdir(self.save_root):
                for name in os.listdir(self.save_root):
                    if name.startswith("version_"):
                        try:
                            taken.append(int(os.path.splitext(name)[0].split("_")[1]))
                        except ValueError:
                            pass
            self._version = max(taken) + 1 if taken else 0
        return self._version

    @property
    def savedir(self):
        if not self.use_version:
            return self.save_root
        v = self.version
        return os.path.join(self.save_root, v if isinstance(v, str) else f"version_{v}")


class CodeSnapshotCallback(VersionedCallback):
    """Copies the files git knows in the working directory (tracked and untracked, minus load/)."""

    def get_file_list(self):
        tracked = subprocess.check_output(["git", "ls-files", "--", ":!:load/*"], stderr=subprocess.DEVNULL)
        untracked = subprocess.check_output(
            ["git", "ls-files", "--others", "--exclude-standard"], stderr=subprocess.DEVNULL
        )
        return sorted({b.decode() for b in tracked.splitlines()} | {b.decode() for b in untracked.splitlines()})

    @rank_zero_only
    def save_code_snapshot(self):
        os.makedirs(self.savedir, exist_ok=True)
        for f in self.get_file_list():
            if not os.path.exists(f) or os.path.isdir(f):
                continue
            os.makedirs(os.path.join(self.savedir, os.path.dirname(f)), exist_ok=True)
            copy_file(f, os.path.join(self.savedir, f))

    def on_fit_start(self, trainer, pl_module):
        try:
            self.save_code_snapshot()
        except StorageError:  # a full disk is not a missing git: the run stops with its one line
            raise
        except Exception:
            rank_zero_warn(
                "Code snapshot is not saved. Please make sure you have git installed and are in a git repository."
            )


class ConfigSnapshotCallback(VersionedCallback):
    """Writes ``parsed.yaml`` (the resolved ExperimentConfig) and ``raw.yaml`` (the --config file)."""

    def __init__(self, config_path, config, save_root, version=None, use_version=True):
        super().__init__(save_root, version, use_version)
        self.config_path = config_path
        self.config = config

    @rank_zero_only
    def save_config_snapshot(self):
        os.makedirs(self.savedir, exist_ok=True)
        dump_config(os.path.join(self.savedir, "parsed.yaml"), self.config)
        copy_file(self.config_path, os.path.join(self.savedir, "raw.yaml"))

    def on_fit_start(self, trainer, pl_module):
        self.save_config_snapshot()


class CustomProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar without the ``v_num`` entry."""

    def get_metrics(self, *args, **kwargs):
        items = super().get_metrics(*args, **kwargs)
        items.pop("v_num", None)
        return items
