"""Inside real threestudio the system's images and videos are written by threestudio's SaverMixin, in place
(OpenCV, imageio); the system's own save_image_grid / save_img_sequence make them atomic: the file is
written under a hidden temporary name through threestudio's writer and renamed once it is complete.
Here a stand-in for threestudio's mixin writes in place and, like cv2.imwrite, reports a failed write
only by its return value."""
import os

import imageio
import numpy as np
import pytest
from PIL import Image

from threestudio_lucid import atomic_files
from threestudio_lucid.atomic_files import is_temporary
from threestudio_lucid.errors import StorageError
from threestudio_lucid.host.utils.saving import SaverMixin
from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem


class InPlaceSaver(SaverMixin):
    """threestudio's behaviour: the file is written where it is asked for; a failure leaves what was
    written and returns False (cv2.imwrite)."""

    SAVER_WRITES_ATOMICALLY = False
    fail_after = None  # bytes: simulate a disk that fills in the middle of the image
    calls = []

    def save_image_grid(self, filename, imgs, align="max", name=None, step=None, texts=None):
        path = self.get_save_path(filename)
        self.calls.append(os.path.basename(path))
        data = imageio.v3.imwrite("<bytes>", self.get_image_grid_(imgs, align), extension=".png")
        with open(path, "wb") as f:
            f.write(data if self.fail_after is None else data[:self.fail_after])
        return path

    def save_img_sequence(self, filename, img_dir, matcher, save_format="mp4", fps=30, name=None, step=None):
        path = self.get_save_path(filename if filename.endswith(save_format) else f"{filename}.{save_format}")
        self.calls.append(os.path.basename(path))
        frames = [np.asarray(Image.open(os.path.join(self.get_save_dir(), img_dir, f)))
                  for f in sorted(os.listdir(os.path.join(self.get_save_dir(), img_dir))) if f.endswith(".png")]
        imageio.mimsave(path, frames, fps=fps)
        return path


class ThreestudioLikeSystem(GaussianSplattingSystem, InPlaceSaver):
    """The plugin's system over an in-place SaverMixin (the MRO puts InPlaceSaver right before SaverMixin)."""


@pytest.fixture
def system(tmp_path):
    system = ThreestudioLikeSystem.__new__(ThreestudioLikeSystem)  # only the writers are exercised
    system._save_dir = str(tmp_path / "save")  # (set_save_dir would claim the run folder)
    InPlaceSaver.calls = []
    InPlaceSaver.fail_after = None
    return system


def grid(value):
    return [{"type": "rgb", "img": np.full((8, 8, 3), value, np.float32), "kwargs": {"data_format": "HWC"}}]


def test_an_image_grid_goes_to_a_hidden_temporary_and_is_renamed(system, tmp_path):
    path = system.save_image_grid("it4-test/0.png", grid(1.0))
    assert path == str(tmp_path / "save" / "it4-test" / "0.png")
    (written,) = InPlaceSaver.calls
    assert is_temporary(written) and written.endswith(".png")  # threestudio's writer saw the temporary
    assert os.listdir(tmp_path / "save" / "it4-test") == ["0.png"]
    assert np.asarray(Image.open(path)).min() == 255


def test_a_truncated_image_never_replaces_the_previous_one(system, tmp_path, monkeypatch):
    path = system.save_image_grid("it4-0.png", grid(1.0))
    InPlaceSaver.fail_after = 40
    with pytest.raises(OSError, match="incomplete"):  # not a full disk: the writer's own failure
        system.save_image_grid("it4-0.png", grid(0.0))
    monkeypatch.setattr(atomic_files, "free_space", lambda folder: 0)  # now the disk is full
    with pytest.raises(StorageError, match=r"no space left.*ENOSPC"):
        system.save_image_grid("it4-0.png", grid(0.0))
    assert np.asarray(Image.open(path)).min() == 255
    assert os.listdir(tmp_path / "save") == ["it4-0.png"]


def test_a_video_goes_to_a_temporary_with_its_extension(system, tmp_path):
    for i in range(3):
        system.save_image(f"it4-test/{i}.png", np.full((16, 16, 3), 50 * i, np.uint8))
    path = system.save_img_sequence("it4-test", "it4-test", r"(\d+)\.png", save_format="mp4", fps=10)
    assert path == str(tmp_path / "save" / "it4-test.mp4")
    (written,) = InPlaceSaver.calls
    assert is_temporary(written) and written.endswith(".mp4")
    assert len(imageio.v3.imread(path, index=None)) == 3
    assert sorted(os.listdir(tmp_path / "save")) == ["it4-test", "it4-test.mp4"]


def test_the_host_mixin_needs_no_second_temporary(tmp_path):
    """The bundled host's SaverMixin is atomic itself: the system passes the name through."""
    class HostSystem(GaussianSplattingSystem):
        pass

    system = HostSystem.__new__(HostSystem)
    system._save_dir = str(tmp_path)
    assert system.SAVER_WRITES_ATOMICALLY
    assert system.save_image_grid("a.png", grid(0.5)) == str(tmp_path / "a.png")
    assert os.listdir(tmp_path) == ["a.png"]


def test_temporaries_of_the_sequence_folder_are_not_frames(system, tmp_path):
    """A killed writer's temporary left among the frames is not read as a frame."""
    for i in range(2):
        system.save_image(f"it4-test/{i}.png", np.full((16, 16, 3), 100 * i, np.uint8))
    stale = tmp_path / "save" / "it4-test" / f".lucid-tmp-{atomic_files._HOST_ID}-999999-0a0b0c0d~.png"
    stale.write_bytes(b"half a png")
    SaverMixin.save_img_sequence(system, "v", "it4-test", r"(\d+)\.png", save_format="gif", fps=10)
    assert len(imageio.v3.imread(tmp_path / "save" / "v.gif", index=None)) == 2
