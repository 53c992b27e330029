"""Ctrl-C (SIGINT) or SIGTERM during training keeps the work: after the current step a checkpoint and
the splats are written, one line says how to resume, and resuming from that checkpoint continues;
kill -9 loses at most the steps since the last checkpoint."""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cpu_runs import cpu_run_args
from threestudio_lucid.host import launch


def args(tiny_sd_path, steps, *extra):
    return cpu_run_args("lucid-sds-cpu.yaml", tiny_sd_path, steps, "trainer.val_check_interval=1000",
                        "checkpoint.every_n_train_steps=2", *extra)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_writes_a_checkpoint_and_the_splats_and_says_how_to_resume(tmp_path, tiny_sd_path, signum):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "threestudio_lucid.host.launch", *args(tiny_sd_path, 100000)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not glob.glob(str(tmp_path / "outputs" / "*" / "*" / "ckpts" / "epoch=0-step=2.ckpt")):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, (out[-2000:], err[-2000:])
    assert "Traceback" not in err
    (trial,) = glob.glob(str(tmp_path / "outputs" / "*" / "*"))
    (ckpt,) = glob.glob(os.path.join(trial, "ckpts", "interrupted-step=*.ckpt"))
    step = int(ckpt.rsplit("=", 1)[1].split(".")[0])
    assert step >= 2
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert state["global_step"] == step
    ply = os.path.join(trial, "save", f"it{step}-interrupted", "point_cloud.ply")
    assert os.path.isfile(ply)
    name = signal.Signals(signum).name
    lines = [line for line in (out + err).splitlines() if line.startswith(f"{name}: stopped at step {step}")]
    assert len(lines) == 1, out[-3000:]
    parsed = os.path.join(trial, "configs", "parsed.yaml")
    assert f"Resume with: lucid-launch --config {parsed} --train resume={ckpt}" in lines[0]
    assert not glob.glob(os.path.join(trial, "save", "it*-test.mp4"))  # the test stage did not run

    # the printed command works: it continues the same run in its folder, as threestudio's parsed.yaml does
    os.chdir(tmp_path)
    assert launch.main(["--config", parsed, "--train", f"resume={ckpt}", f"trainer.max_steps={step + 2}"]) == 0
    assert glob.glob(str(tmp_path / "outputs" / "*" / "*")) == [trial]
    last = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), weights_only=False, map_location="cpu")
    assert last["global_step"] == step + 2
    assert os.path.isfile(ckpt) and os.path.isfile(ply)  # the interrupted state is kept beside it
    assert not glob.glob(os.path.join(trial, "ckpts", "last-v*.ckpt"))


def test_kill_9_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path, tiny_sd_path):
    """SIGKILL cannot be caught: what survives is the checkpoints written every interval. Each file
    left is either complete (and resumes) or refused by the launcher in one line as incomplete."""
    from threestudio_lucid.errors import ConfigError
    from threestudio_lucid.checkpoint_file import check_checkpoint_file

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "threestudio_lucid.host.launch", *args(tiny_sd_path, 100000)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not glob.glob(str(tmp_path / "outputs" / "*" / "*" / "ckpts" / "epoch=0-step=4.ckpt")):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    (trial,) = glob.glob(str(tmp_path / "outputs" / "*" / "*"))
    complete = []
    for path in glob.glob(os.path.join(trial, "ckpts", "epoch=*.ckpt")):
        try:
            check_checkpoint_file(path)
        except ConfigError as e:
            assert "is not a complete checkpoint" in str(e)
            continue
        complete.append((torch.load(path, weights_only=False, map_location="cpu")["global_step"], path))
    step, newest = max(complete)
    assert step >= 4 and step % 2 == 0  # the interval is 2: at most the steps since it are lost
    os.chdir(tmp_path)
    assert launch.main(args(tiny_sd_path, step + 2, f"resume={newest}", "tag=continued",
                            "use_timestamp=false")) == 0
    last = torch.load(str(tmp_path / "outputs" / "lucid-sds-cpu" / "continued" / "ckpts" / "last.ckpt"),
                      weights_only=False, map_location="cpu")
    assert last["global_step"] == step + 2
