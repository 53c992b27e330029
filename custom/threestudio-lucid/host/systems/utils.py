"""``parse_optimizer`` / ``parse_scheduler``: optimizers and LR schedulers from config, as threestudio."""
import torch
import torch.nn as nn
from torch.optim import lr_scheduler

from ... import errors
from .. import debug


def _resolve_attr(model, dotted: str):
    obj = model
    for part in dotted.split("."):
        if not hasattr(obj, part):
            raise errors.ConfigError(
                f"optimizer.params names '{dotted}', but the system has no attribute '{part}' there: "
                "use the dotted path of a submodule or parameter (e.g. geometry, guidance)."
            )
        obj = getattr(obj, part)
    return obj


def get_parameters(model, name: str):
    """Parameters of the sub-module or Parameter at the dotted path ``name`` (empty otherwise)."""
    target = _resolve_attr(model, name)
    if isinstance(target, nn.Module):
        return target.parameters()
    if isinstance(target, nn.Parameter):
        return target
    return []


def parse_optimizer(config, model):
    """Build ``torch.optim.<name>(params, **args)``; ``params: {path: {overrides}}`` makes named groups."""
    if not hasattr(config, "name") or not hasattr(config, "args"):
        raise errors.ConfigError(
            "system.optimizer needs 'name' (a torch.optim class, e.g. Adam) and 'args' (e.g. {lr: 0.01})."
        )
    if hasattr(config, "params"):
        params = [
            {"params": get_parameters(model, name), "name": name, **args}
            for name, args in config.params.items()
        ]
        debug(f"Specify optimizer params: {config.params}")
    else:
        params = model.parameters()
    if config.name == "FusedAdam":
        import apex  # GPU-only, as in threestudio

        return apex.optimizers.FusedAdam(params, **config.args)
    if not hasattr(torch.optim, config.name):
        raise errors.ConfigError(
            f"system.optimizer.name='{config.name}' is not a torch.optim optimizer (e.g. Adam, AdamW, SGD)."
        )
    return getattr(torch.optim, config.name)(params, **config.args)


def _scheduler_instance(config, optimizer):
    if config.name == "SequentialLR":
        return lr_scheduler.SequentialLR(
            optimizer,
            [_scheduler_instance(c, optimizer) for c in config.schedulers],
            milestones=config.milestones,
        )
    if config.name == "ChainedScheduler":
        return lr_scheduler.ChainedScheduler([_scheduler_instance(c, optimizer) for c in config.schedulers])
    if not hasattr(lr_scheduler, config.name):
        raise errors.ConfigError(
            f"system.scheduler.name='{config.name}' is not in torch.optim.lr_scheduler (e.g. LambdaLR, "
            "ExponentialLR, SequentialLR)."
        )
    return getattr(lr_scheduler, config.name)(optimizer, **config.args)


def parse_scheduler(config, optimizer):
    """Lightning scheduler dict ``{"scheduler": s, "interval": "epoch"|"step"}``."""
    interval = config.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise errors.ConfigError(f"system.scheduler.interval='{interval}' must be 'epoch' or 'step'.")
    return {"scheduler": _scheduler_instance(config, optimizer), "interval": interval}
