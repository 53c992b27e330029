"""Keep a run's console to progress, the project's own lines and real problems.

Each filter below drops one message that a user of this plugin cannot act on, matched by its text so
that every other warning still shows. Installed when the plugin is imported (by ``lucid-launch`` or
threestudio's ``custom/`` loader), before it imports diffusers. Under real threestudio, whatever
threestudio itself imports earlier prints as before (there torchvision is installed, so the
transformers notices below do not arise).
"""
import logging
import re
import warnings

# (category, message regex): Python warnings
WARNINGS = (
    # the system optimises manually and its checkpoint is meant to hold the state after the step
    (UserWarning, r"Using ModelCheckpoint with manual optimization"),
    # --test / --export with resume=: Lightning asks for the training's callbacks, which predicting does not use
    (UserWarning, r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint"),
    # threestudio's predict_step returns nothing by design (the exporter writes the files)
    (UserWarning, r"predict returned None if it was on purpose"),
    # Lightning's own pytree code on torch >= 2.9; nothing to change on our side
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)

# logger name -> message regexes: log records
LOG_RECORDS = {
    # diffusers imports CLIP/SigLIP image processors it never uses here; without torchvision transformers
    # falls back to the PIL ones and says so
    "transformers.utils.import_utils": (r"requires torchvision \(not installed\); falling back",),
    # a model folder naming this plugin's own stand-ins for the UNet and VAE (the toy world's exact prior and
    # average-pool autoencoder: toy_world/prior.py): diffusers loads them and says they are not its classes
    "diffusers.pipelines.pipeline_utils": (r"^Expected types for (unet|vae): .*got <class 'threestudio[_-]lucid\.",),
    # Lightning's advertisements for its cloud products and the TPU count on machines without TPUs
    "pytorch_lightning.utilities.rank_zero": (r"^💡 Tip: ", r"^TPU available: False"),
    "lightning_fabric.utilities.rank_zero": (r"^💡 Tip: ", r"^TPU available: False"),
    "lightning.pytorch.utilities.rank_zero": (r"^💡 Tip: ", r"^TPU available: False"),
    "lightning.fabric.utilities.rank_zero": (r"^💡 Tip: ", r"^TPU available: False"),
}


class DropMessages(logging.Filter):
    """Drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(p.search(message) for p in self.patterns)


def install() -> None:
    """Add the filters (once: a second call changes nothing)."""
    for category, pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name, patterns in LOG_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in logger.filters):
            logger.addFilter(DropMessages(patterns))
