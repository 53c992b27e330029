"""system.live_ply_every_n_steps: the splats of the running job in save/live/<ply_name>, every N steps,
always a complete PLY (a reader polling it while the run trains never sees a partial one), with its step
in <ply_name>.json beside it (never newer than the PLY); off by default; a bad value is one line."""
import hashlib
import json
import os
import threading
import time

import pytest

from threestudio_lucid.geometry.gaussian_splatting import GaussianSplatting
from threestudio_lucid.geometry.ply_io import read_gaussian_ply
from threestudio_lucid.host import launch
from threestudio_lucid.system import live_splats
from threestudio_lucid.system.gaussian_system import GaussianSplattingSystem

from small_runs import small_run_args, trial_dirs


class Poller(threading.Thread):
    """Reads the live PLY with the geometry's own reader (plyfile) as fast as it can, as a viewer
    would: every read must give a whole file. It reads the sidecar first, then the PLY's bytes, and
    keeps ``(sidecar step, sha1 of the PLY)`` of each read: the PLY must be the sidecar's or newer."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.stop, self.reads, self.failures, self.sizes = path, threading.Event(), 0, [], set()
        self.pairs = []

    def run(self):
        while not self.stop.wait(0.0005):
            if not os.path.exists(self.path):
                continue
            try:
                step = None
                if os.path.exists(self.path + ".json"):
                    with open(self.path + ".json") as f:
                        step = json.load(f)["step"]
                with open(self.path, "rb") as f:
                    self.pairs.append((step, hashlib.sha1(f.read()).hexdigest()))
                self.sizes.add(read_gaussian_ply(self.path)["xyz"].shape[0])
                self.reads += 1
            except FileNotFoundError:
                continue
            except Exception as e:  # a partial or damaged file
                self.failures.append(repr(e))


def test_the_splats_are_written_every_n_steps_whole_while_a_reader_polls(run_dir, tiny_sd_path, monkeypatch, caplog):
    written, poller, step_of = [], Poller(""), {}  # step_of: sha1 of each PLY written -> its step
    due, save_ply = live_splats.LiveSplatsWriter.due, GaussianSplatting.save_ply

    def recording_due(self, step, now):
        answer = due(self, step, now)
        if answer:
            written.append(step)
        return answer

    def save_ply_then_poll(self, path):  # the first write names the file: a reader polls it from then on
        if not poller.is_alive():
            poller.path = path
            poller.start()
        answer = save_ply(self, path)
        with open(path, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        step_of[digest] = max(step_of.get(digest, 0), written[-1])
        return answer

    monkeypatch.setattr(live_splats.LiveSplatsWriter, "due", recording_due)
    monkeypatch.setattr(GaussianSplatting, "save_ply", save_ply_then_poll)
    code = launch.main(small_run_args(tiny_sd_path, 6, "system.live_ply_every_n_steps=2",
                                      "system.live_ply_min_seconds=0"))
    poller.stop.set()
    poller.join(10)
    assert code == 0
    assert written == [2, 4, 6]  # every 2nd step, and only those
    (trial,) = trial_dirs(run_dir)
    path = os.path.join(trial, "save", "live", "point_cloud.ply")
    assert os.path.abspath(poller.path) == path and poller.reads > 0 and poller.failures == []
    final = read_gaussian_ply(os.path.join(trial, "save", "point_cloud.ply"))
    assert read_gaussian_ply(path)["xyz"].shape == final["xyz"].shape  # the last write: the trained splats
    assert sorted(os.listdir(os.path.dirname(path))) == ["point_cloud.ply", "point_cloud.ply.json"]  # no temporary
    assert "Live splats: 3 writes of " in caplog.text  # the console's account of what it cost
    # the sidecar: the step of the PLY beside it, and that PLY's identity
    with open(path + ".json") as f:
        sidecar = json.load(f)
    stat = os.stat(path)
    assert sidecar["step"] == 6 and sidecar["file"] == "point_cloud.ply" and abs(sidecar["time"] - time.time()) < 600
    assert (sidecar["ply_mtime_ns"], sidecar["ply_size"], sidecar["ply_inode"]) == (stat.st_mtime_ns, stat.st_size,
                                                                                  stat.st_ino)
    # while it trained: a sidecar never named a step newer than the PLY read after it
    seen = [(step, step_of[digest]) for step, digest in poller.pairs]
    assert seen and all(step is None or step <= ply_step for step, ply_step in seen), seen
    assert {ply_step for _, ply_step in seen} <= {2, 4, 6} and seen[-1] == (6, 6)


def test_the_time_floor_skips_writes_on_fast_steps_and_it_is_off_by_default():
    writer = live_splats.LiveSplatsWriter(every=1, min_seconds=2.0, ply_name="point_cloud.ply")
    assert writer.due(1, now=100.0)
    writer._last_write = 100.0
    assert not writer.due(2, now=101.0) and writer.due(3, now=102.0)
    assert not writer.due(0, now=200.0)  # nothing trained yet
    cfg = GaussianSplattingSystem.Config()
    assert cfg.live_ply_every_n_steps == 0 and live_splats.callbacks_of(cfg) == []


@pytest.mark.parametrize("override", ["system.live_ply_every_n_steps=-1", "system.live_ply_min_seconds=-0.5"])
def test_a_bad_value_is_one_line_naming_the_option(run_dir, tiny_sd_path, capsys, override):
    code = launch.main(small_run_args(tiny_sd_path, 2, "system.live_ply_every_n_steps=1", override))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert override.split("=")[0] in lines[0] and "must be" in lines[0]
