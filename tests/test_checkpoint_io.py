"""checkpoint_io.py: every checkpoint Lightning writes (ModelCheckpoint's, last.ckpt, trainer.save_checkpoint)
goes through AtomicCheckpointIO once the system's setup hook has run; a checkpoint IO the user chose stays."""
import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from threestudio_lucid.atomic_files import is_temporary
from threestudio_lucid.checkpoint_io import AtomicCheckpointIO, use_atomic_checkpoints


class TinyModule(pl.LightningModule):
    """Installs the atomic IO in setup, as the plugin's system does."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def setup(self, stage):
        super().setup(stage)
        use_atomic_checkpoints(self.trainer)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path, **kwargs):
    return pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_every_checkpoint_of_a_fit_goes_through_the_atomic_io(tmp_path, monkeypatch):
    saved = []
    real_save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        saved.append(os.path.basename(path))
        real_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=2, save_top_k=-1, save_last=True)
    t = trainer(tmp_path, max_steps=4, callbacks=[callback])
    t.fit(TinyModule())
    t.save_checkpoint(tmp_path / "ckpts" / "interrupted-step=4.ckpt")
    assert isinstance(t.strategy.checkpoint_io, AtomicCheckpointIO)
    assert {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt", "interrupted-step=4.ckpt"} <= set(saved)
    names = os.listdir(tmp_path / "ckpts")
    assert not [n for n in names if is_temporary(n)]
    assert torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_a_checkpoint_io_the_user_chose_is_kept(tmp_path):
    class MyIO(TorchCheckpointIO):
        pass

    t = trainer(tmp_path, max_steps=1, plugins=[MyIO()])
    assert use_atomic_checkpoints(t) is False
    assert type(t.strategy.checkpoint_io) is MyIO
    default = trainer(tmp_path, max_steps=1)
    assert use_atomic_checkpoints(default) is True and use_atomic_checkpoints(default) is True
    assert isinstance(default.strategy.checkpoint_io, AtomicCheckpointIO)


def test_the_atomic_io_round_trips_and_refuses_storage_options_as_lightning_does(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 3, "w": torch.arange(4)}, f"file://{tmp_path}/a/x.ckpt")
    loaded = io.load_checkpoint(tmp_path / "a" / "x.ckpt")
    assert loaded["global_step"] == 3 and torch.equal(loaded["w"], torch.arange(4))
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({}, tmp_path / "y.ckpt", storage_options={"x": 1})
    io.remove_checkpoint(tmp_path / "a" / "x.ckpt")
    assert os.listdir(tmp_path / "a") == []
