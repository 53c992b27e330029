"""Component bases: ``Configurable``, ``Updateable``, ``BaseObject``, ``BaseModule`` (threestudio semantics)."""
import torch
import torch.nn as nn

from .config import ConfigError, parse_structured
from .misc import get_device, load_module_weights
from .typing import Any, DictConfig, Optional, Union, dataclass


class Configurable:
    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)


class Updateable:
    """Objects that follow the training step.

    ``do_update_step`` walks every public attribute (properties included), recurses into Updateable
    ones, then calls ``update_step``. A component reachable along two paths (``system.geometry`` and
    ``system.renderer.geometry``) is therefore updated twice per step: ``update_step`` must be
    idempotent.

    The walk is cached: evaluating every property (a LightningModule has ~300 attributes; a Gaussian
    geometry's properties activate all its parameters) twice a step cost ~10% of a small training
    step. The first walk of an object evaluates its class attributes once and remembers those that
    gave an Updateable or raised (tried again every time); the instance's own attributes and
    submodules are always looked at, so assigning a component later is seen (the list of names is
    rebuilt when an attribute or submodule is added). A property that starts
    returning an Updateable only after the first walk is not (none of threestudio's do).
    """

    def _updateable_names(self):
        modules = self.__dict__.get("_modules") or {}
        key = (len(self.__dict__), len(modules))  # a new attribute or submodule changes one of these
        known = self.__dict__.get("_updateable_names_cache")
        if known is not None and known[0] == key:
            return known[1]
        instance = [name for name in vars(self) if not name.startswith("_")]
        instance += [name for name in modules if not name.startswith("_")]
        cache = self.__dict__.get("_updateable_class_names")
        if cache is None:
            cache = []
            for name in dir(type(self)):
                if name.startswith("_") or name in instance:
                    continue
                try:
                    value = getattr(self, name)
                except Exception:
                    cache.append(name)  # cannot be evaluated yet: try again next time
                    continue
                if isinstance(value, Updateable):
                    cache.append(name)
            object.__setattr__(self, "_updateable_class_names", cache)
        names = sorted(set(instance).union(cache))  # dir()'s order, as threestudio walks
        object.__setattr__(self, "_updateable_names_cache", (None, names))
        self.__dict__["_updateable_names_cache"] = ((len(self.__dict__), len(modules)), names)
        return names

    def _updateable_children(self):
        for attr in self._updateable_names():
            try:
                module = getattr(self, attr)
            except Exception:
                continue  # properties that cannot be evaluated yet
            if isinstance(module, Updateable):
                yield module

    def do_update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        for module in self._updateable_children():
            module.do_update_step(epoch, global_step, on_load_weights=on_load_weights)
        self.update_step(epoch, global_step, on_load_weights=on_load_weights)

    def do_update_step_end(self, epoch: int, global_step: int):
        for module in self._updateable_children():
            module.do_update_step_end(epoch, global_step)
        self.update_step_end(epoch, global_step)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False):
        # With on_load_weights=True modules may not be on their device yet: no model evaluation here.
        pass

    def update_step_end(self, epoch: int, global_step: int):
        pass


def update_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step(epoch, global_step)


def update_end_if_possible(module: Any, epoch: int, global_step: int) -> None:
    if isinstance(module, Updateable):
        module.do_update_step_end(epoch, global_step)


class BaseObject(Updateable):
    """A configured component that is not an nn.Module (guidance, prompt processors)."""

    @dataclass
    class Config:
        pass

    cfg: Config

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.device = get_device()
        self.configure(*args, **kwargs)

    def configure(self, *args, **kwargs) -> None:
        pass


class BaseModule(nn.Module, Updateable):
    """A configured nn.Module. ``weights: "path.ckpt:module_name"`` loads that module's weights."""

    @dataclass
    class Config:
        weights: Optional[str] = None

    cfg: Config

    def __init__(self, cfg: Optional[Union[dict, DictConfig]] = None, *args, **kwargs) -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg)
        self.device = get_device()
        self.configure(*args, **kwargs)
        if self.cfg.weights is not None:
            if self.cfg.weights.count(":") != 1:
                raise ConfigError(
                    f"weights='{self.cfg.weights}' must have the form 'path/to/file.ckpt:module_name'"
                )
            weights_path, module_name = self.cfg.weights.split(":")
            state_dict, epoch, global_step = load_module_weights(
                weights_path, module_name=module_name, map_location="cpu"
            )
            self.load_state_dict(state_dict)
            self.do_update_step(epoch, global_step, on_load_weights=True)
        # marks the module's device/dtype (not saved in checkpoints)
        self.register_buffer("_dummy", torch.zeros(0).float(), persistent=False)

    def configure(self, *args, **kwargs) -> None:
        pass
