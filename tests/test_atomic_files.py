"""atomic_files.py: a write replaces the file whole or not at all, its temporary is a hidden name no reader
takes for a result, a dead writer's temporaries go at the next write in the folder, and a folder that
cannot take the file raises one StorageError line naming the file, the folder and the sizes."""
import errno
import os
import re
import stat
import subprocess
import sys

import pytest

from threestudio_lucid import atomic_files
from threestudio_lucid.atomic_files import (
    as_storage_error,
    is_temporary,
    remove_stale_temporaries,
    temporary_path,
    write_bytes,
    write_text,
)
from threestudio_lucid.errors import StorageError


def listing(folder):
    return sorted(os.listdir(folder))


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "model.ply"
    assert write_bytes(target, b"first") == str(target)
    write_bytes(target, memoryview(b"second version"))
    assert target.read_bytes() == b"second version"
    assert listing(target.parent) == ["model.ply"]
    write_text(tmp_path / "scores.json", "{\"psnr\": 1.0}\n")
    assert (tmp_path / "scores.json").read_text() == "{\"psnr\": 1.0}\n"


def test_new_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_bytes(tmp_path / "a.ckpt", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.ckpt").st_mode) == 0o644  # not mkstemp's private 0600


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"old complete checkpoint")
    with pytest.raises(ValueError, match="serialiser broke"):
        with temporary_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise ValueError("serialiser broke")
    assert target.read_bytes() == b"old complete checkpoint"
    assert listing(tmp_path) == ["last.ckpt"]


def test_a_refused_verification_keeps_the_old_file(tmp_path):
    target = tmp_path / "0.png"
    target.write_bytes(b"old")

    def refuse(path):
        raise OSError("truncated image")

    with pytest.raises(OSError, match="truncated"):
        with temporary_path(target, verify=refuse) as tmp:
            open(tmp, "wb").close()
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["0.png"]


@pytest.mark.parametrize("name", ["0.png", "12.png", "last.ckpt", "model.obj"])
def test_temporaries_are_hidden_and_match_no_reader_pattern(tmp_path, name):
    """threestudio's save_img_sequence lists the folder with re.search(r"(\\d+)\\.png"); Lightning looks
    for "last" in checkpoint names; filters test the extension."""
    with temporary_path(tmp_path / name) as kept:  # keeps the extension: libraries choose the format by it
        pass
    with temporary_path(tmp_path / name, keep_extension=False) as plain:
        pass
    assert os.path.splitext(kept)[1] == os.path.splitext(name)[1]
    for tmp in (kept, plain):
        base = os.path.basename(tmp)
        assert base.startswith(".") and is_temporary(base)
        assert not re.search(r"(\d+)\.png", base) and "last" not in base
    assert not os.path.basename(plain).endswith(os.path.splitext(name)[1])


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_next_write_in_a_folder_removes_what_dead_writers_left(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_files, "_cleaned_folders", set())
    host = atomic_files._HOST_ID
    dead = tmp_path / f".lucid-tmp-{host}-{_dead_pid()}-0a1b2c3d~.ckpt"
    alive = tmp_path / f".lucid-tmp-{host}-{os.getppid()}-0a1b2c3d~"
    other_host = tmp_path / f".lucid-tmp-ffffffff-{_dead_pid()}-0a1b2c3d~"
    for path in (dead, alive, other_host):
        path.write_bytes(b"partial")
    write_bytes(tmp_path / "model.ply", b"ply")
    assert not dead.exists()
    assert alive.exists() and other_host.exists()  # a live writer's, and one from another machine (NFS)
    assert remove_stale_temporaries(tmp_path) == 0


def test_a_full_disk_raises_one_line_with_the_file_folder_and_sizes(tmp_path, monkeypatch):
    target = tmp_path / "ckpts" / "epoch=0-step=4.ckpt"
    target.parent.mkdir()
    target.write_bytes(b"earlier")
    real_open = open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:1000])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(atomic_files, "open", lambda path, mode="r": FullDisk(real_open(path, mode)), raising=False)
    with pytest.raises(StorageError) as raised:
        write_bytes(target, b"x" * 2_500_000)
    message = str(raised.value)
    assert "\n" not in message
    assert f"'{target}'" in message and f"in '{target.parent}'" in message
    assert "ENOSPC" in message and "it needs 2.5 MB" in message and " free there" in message
    assert "written before it are kept" in message and "exp_root_dir=" in message
    assert target.read_bytes() == b"earlier" and listing(target.parent) == [target.name]


def test_a_library_that_fails_on_a_full_disk_without_an_errno_counts_as_full(tmp_path, monkeypatch):
    """ffmpeg ends with an exit status and a log: its error says so, or the folder is (nearly) full."""
    monkeypatch.setattr(atomic_files, "free_space", lambda folder: 4096)
    with pytest.raises(StorageError, match=r"it needs at least 3\.0 kB, 4\.1 kB free there"):
        with temporary_path(tmp_path / "it6-test.mp4") as tmp:
            with open(tmp, "wb") as f:
                f.write(b"v" * 3000)
            raise IOError("ffmpeg exited with code 1")
    assert listing(tmp_path) == []


def test_a_read_only_folder_says_so(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic_files.os, "open", read_only)
    with pytest.raises(StorageError, match=r"read-only .*EROFS.*make the folder writable"):
        write_bytes(tmp_path / "a.json", b"{}")


def test_other_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(KeyError):
        with temporary_path(tmp_path / "a.txt"):
            raise KeyError("not a storage problem")


def test_an_oserror_from_elsewhere_becomes_a_storage_error_and_an_earlier_one_wins(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device")
    converted = as_storage_error(full, folder=tmp_path)
    assert isinstance(converted, StorageError) and f"in '{tmp_path}'" in str(converted)
    assert as_storage_error(OSError(errno.ENOENT, "missing")) is None
    assert as_storage_error(OSError(errno.EACCES, "a model file one cannot read")) is None
    first = StorageError("cannot write 'last.ckpt': ...")
    try:
        try:
            raise first
        except StorageError:
            raise OSError(errno.ENOSPC, "the logger failed too")
    except OSError as later:
        assert as_storage_error(later, folder=tmp_path) is first


def test_an_mp4_without_its_trailer_is_refused(tmp_path):
    """imageio-ffmpeg only logs ffmpeg's failure at the trailer (the `moov` box, written last)."""
    import imageio
    import numpy as np

    from threestudio_lucid.atomic_files import check_complete_mp4

    path = str(tmp_path / "a.mp4")
    imageio.mimsave(path, [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(4)], fps=10, macro_block_size=1)
    check_complete_mp4(path)
    data = open(path, "rb").read()
    for cut in (4096 % len(data), len(data) // 2, len(data) - 1):
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        with pytest.raises(OSError, match="incomplete MP4"):
            check_complete_mp4(str(tmp_path / "cut.mp4"))
