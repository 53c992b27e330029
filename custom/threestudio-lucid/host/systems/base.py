"""``BaseSystem`` and ``BaseLift3DSystem``: the LightningModule skeleton of every threestudio system."""
import os

import pytorch_lightning as pl

from .. import find, info, warn
from ..utils.base import Updateable, update_end_if_possible, update_if_possible
from ..utils.config import load_config, parse_structured
from ..utils.misc import C, cleanup, find_last_path, get_device, load_module_weights
from ..utils.saving import SaverMixin
from ..utils.typing import Any, List, Optional, dataclass, field
from .utils import parse_optimizer, parse_scheduler


class BaseSystem(pl.LightningModule, Updateable, SaverMixin):
    @dataclass
    class Config:
        loggers: dict = field(default_factory=dict)
        loss: dict = field(default_factory=dict)
        optimizer: dict = field(default_factory=dict)
        scheduler: Optional[dict] = None
        weights: Optional[str] = None
        weights_ignore_modules: Optional[List[str]] = None
        cleanup_after_validation_step: bool = False
        cleanup_after_test_step: bool = False

    cfg: Config

    def __init__(self, cfg, resumed=False) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self._save_dir: Optional[str] = None
        self._resumed: bool = resumed
        self._resumed_eval: bool = False
        self._resumed_eval_status: dict = {"global_step": 0, "current_epoch": 0}
        if "loggers" in cfg:
            self.create_loggers(cfg.loggers)

        self.configure()
        if self.cfg.weights is not None:
            self.load_weights(self.cfg.weights, self.cfg.weights_ignore_modules)
        self.post_configure()

    def load_weights(self, weights: str, ignore_modules: Optional[List[str]] = None):
        state_dict, epoch, global_step = load_module_weights(
            weights, ignore_modules=ignore_modules, map_location="cpu"
        )
        self.load_state_dict(state_dict, strict=False)
        self.do_update_step(epoch, global_step, on_load_weights=True)

    def set_resume_status(self, current_epoch: int, global_step: int):
        """Eval modes load weights outside fit(); this restores the step they were saved at."""
        self._resumed_eval = True
        self._resumed_eval_status["current_epoch"] = current_epoch
        self._resumed_eval_status["global_step"] = global_step

    @property
    def resumed(self):
        return self._resumed

    @property
    def true_global_step(self):
        return self._resumed_eval_status["global_step"] if self._resumed_eval else self.global_step

    @property
    def true_current_epoch(self):
        return self._resumed_eval_status["current_epoch"] if self._resumed_eval else self.current_epoch

    def configure(self) -> None:
        pass

    def post_configure(self) -> None:
        """Runs after weights are loaded."""

    def C(self, value: Any) -> float:
        return C(value, self.true_current_epoch, self.true_global_step)

    def configure_optimizers(self):
        optim = parse_optimizer(self.cfg.optimizer, self)
        ret = {"optimizer": optim}
        if self.cfg.scheduler is not None:
            ret["lr_scheduler"] = parse_scheduler(self.cfg.scheduler, optim)
        return ret

    def training_step(self, batch, batch_idx):
        raise NotImplementedError

    def validation_step(self, batch, batch_idx):
        raise NotImplementedError

    def on_validation_epoch_end(self):
        raise NotImplementedError

    def test_step(self, batch, batch_idx):
        raise NotImplementedError

    def on_test_epoch_end(self):
        pass

    def predict_step(self, batch, batch_idx):
        raise NotImplementedError

    def on_predict_epoch_end(self):
        pass

    def preprocess_data(self, batch, stage):
        pass

    # Batch hooks: preprocess, then bring the dataset and every Updateable to the current step.
    def _batch_start(self, batch, stage: str, dataset):
        self.preprocess_data(batch, stage)
        self.dataset = dataset
        update_if_possible(self.dataset, self.true_current_epoch, self.true_global_step)
        self.do_update_step(self.true_current_epoch, self.true_global_step)

    def _batch_end(self, dataset, cleanup_after: bool = False):
        self.dataset = dataset
        update_end_if_possible(self.dataset, self.true_current_epoch, self.true_global_step)
        self.do_update_step_end(self.true_current_epoch, self.true_global_step)
        if cleanup_after:
            cleanup()

    def on_train_batch_start(self, batch, batch_idx, unused=0):
        self._batch_start(batch, "train", self.trainer.train_dataloader.dataset)

    def on_validation_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._batch_start(batch, "validation", self.trainer.val_dataloaders.dataset)

    def on_test_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._batch_start(batch, "test", self.trainer.test_dataloaders.dataset)

    def on_predict_batch_start(self, batch, batch_idx, dataloader_idx=0):
        self._batch_start(batch, "predict", self.trainer.predict_dataloaders.dataset)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._batch_end(self.trainer.train_dataloader.dataset)

    def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(self.trainer.val_dataloaders.dataset, self.cfg.cleanup_after_validation_step)

    def on_test_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(self.trainer.test_dataloaders.dataset, self.cfg.cleanup_after_test_step)

    def on_predict_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end(self.trainer.predict_dataloaders.dataset, self.cfg.cleanup_after_test_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        pass

    def on_before_optimizer_step(self, optimizer):
        pass


class BaseLift3DSystem(BaseSystem):
    @dataclass
    class Config(BaseSystem.Config):
        geometry_type: str = ""
        geometry: dict = field(default_factory=dict)
        geometry_convert_from: Optional[str] = None
        geometry_convert_inherit_texture: bool = False
        # overrides applied to the previous geometry's config when converting from it
        geometry_convert_override: dict = field(default_factory=dict)

        material_type: str = ""
        material: dict = field(default_factory=dict)

        background_type: str = ""
        background: dict = field(default_factory=dict)

        renderer_type: str = ""
        renderer: dict = field(default_factory=dict)

        guidance_type: str = ""
        guidance: dict = field(default_factory=dict)

        prompt_processor_type: str = ""
        prompt_processor: dict = field(default_factory=dict)

        exporter_type: str = "mesh-exporter"
        exporter: dict = field(default_factory=dict)

    cfg: Config

    def configure(self) -> None:
        """Build geometry, material, background and renderer from ``*_type`` + config.

        Guidance and prompt processor are left to subclasses, as in threestudio.
        """
        self.cfg.geometry_convert_from = find_last_path(self.cfg.geometry_convert_from)
        self.cfg.weights = find_last_path(self.cfg.weights)
        if self.cfg.geometry_convert_from and not self.cfg.weights and not self.resumed:
            info("Initializing geometry from a given checkpoint ...")
            # the previous run's config sits next to its checkpoint folder
            prev_cfg = load_config(
                os.path.join(os.path.dirname(self.cfg.geometry_convert_from), "../configs/parsed.yaml")
            )
            prev_system_cfg = parse_structured(self.Config, prev_cfg.system)
            prev_geometry_cfg = prev_system_cfg.geometry
            prev_geometry_cfg.update(self.cfg.geometry_convert_override)
            prev_geometry = find(prev_system_cfg.geometry_type)(prev_geometry_cfg)
            state_dict, epoch, global_step = load_module_weights(
                self.cfg.geometry_convert_from, module_name="geometry", map_location="cpu"
            )
            prev_geometry.load_state_dict(state_dict, strict=False)
            prev_geometry.do_update_step(epoch, global_step, on_load_weights=True)
            prev_geometry = prev_geometry.to(get_device())
            self.geometry = find(self.cfg.geometry_type).create_from(
                prev_geometry, self.cfg.geometry, copy_net=self.cfg.geometry_convert_inherit_texture
            )
            del prev_geometry
            cleanup()
        else:
            self.geometry = find(self.cfg.geometry_type)(self.cfg.geometry)

        self.material = find(self.cfg.material_type)(self.cfg.material)
        self.background = find(self.cfg.background_type)(self.cfg.background)
        self.renderer = find(self.cfg.renderer_type)(
            self.cfg.renderer,
            geometry=self.geometry,
            material=self.material,
            background=self.background,
        )

    def on_fit_start(self) -> None:
        if self._save_dir is not None:
            info(f"Validation results will be saved to {self._save_dir}")
        else:
            warn("Saving directory not set for the system, visualization results will not be saved")

    def on_test_end(self) -> None:
        if self._save_dir is not None:
            info(f"Test results saved to {self._save_dir}")

    def on_predict_start(self) -> None:
        self.exporter = find(self.cfg.exporter_type)(
            self.cfg.exporter,
            geometry=self.geometry,
            material=self.material,
            background=self.background,
        )

    def predict_step(self, batch, batch_idx):
        if self.exporter.cfg.save_video:
            self.test_step(batch, batch_idx)

    def on_predict_epoch_end(self) -> None:
        if self.exporter.cfg.save_video:
            self.on_test_epoch_end()
        for out in self.exporter():
            save_func_name = f"save_{out.save_type}"
            if not hasattr(self, save_func_name):
                raise ValueError(f"{save_func_name} not supported by the SaverMixin")
            getattr(self, save_func_name)(f"it{self.true_global_step}-export/{out.save_name}", **out.params)

    def on_predict_end(self) -> None:
        if self._save_dir is not None:
            info(f"Export assets saved to {self._save_dir}")
