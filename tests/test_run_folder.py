"""Run folders are claimed: one launch per folder, whatever runs at the same moment (run_folder.py)."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from omegaconf import OmegaConf

from threestudio_lucid import run_folder
from threestudio_lucid.run_folder import RunFolderTaken

RUN_FOLDER_PY = run_folder.__file__
# run_folder.py is standard library only: the helper processes load it alone (a package import costs seconds)
LOAD = f"import importlib.util as u; s = u.spec_from_file_location('run_folder', {RUN_FOLDER_PY!r}); " \
       "run_folder = u.module_from_spec(s); s.loader.exec_module(run_folder)\n"
HOLD_SCRIPT = LOAD + textwrap.dedent(
    """
    import sys, time
    run_folder.claim(sys.argv[1])
    print("claimed", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Another process that claims a folder and keeps running."""
    procs = []

    def start(folder):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "claimed"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_folder_held_by_a_running_launch_is_refused_with_who_holds_it(tmp_path, holder):
    folder = tmp_path / "run@20261207-120000"
    proc = holder(folder)
    with pytest.raises(RunFolderTaken) as taken:
        run_folder.claim(str(folder))
    assert taken.value.live and taken.value.holder["pid"] == proc.pid
    assert f"in use by another launch (pid {proc.pid}, started " in str(taken.value)
    with pytest.raises(RunFolderTaken):  # resuming does not share a folder with a running launch either
        run_folder.claim(str(folder), resuming=True)


def test_a_killed_holders_folder_is_an_earlier_run_that_only_a_resume_may_claim(tmp_path, holder):
    folder = tmp_path / "run@20261207-120000"
    proc = holder(folder)
    proc.kill()  # kill -9: the kernel drops the lock, the record stays
    proc.wait()
    with pytest.raises(RunFolderTaken) as taken:
        run_folder.claim(str(folder))
    assert not taken.value.live and "an earlier run's folder" in str(taken.value)
    run_folder.claim(str(folder), resuming=True)
    try:
        record = json.loads((folder / run_folder.LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
    finally:
        run_folder.release(str(folder))


def test_a_folder_with_files_but_no_record_is_an_earlier_run(tmp_path):
    folder = tmp_path / "old-run"
    (folder / "ckpts").mkdir(parents=True)
    (folder / "ckpts" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunFolderTaken):
        run_folder.claim(str(folder))
    empty = tmp_path / "made-by-threestudio"  # threestudio's load_config creates the folder before the claim
    (empty / "save").mkdir(parents=True)
    run_folder.claim(str(empty))
    assert run_folder.holds(str(empty))
    run_folder.claim(str(empty))  # again from the same process: a no-op
    run_folder.release(str(empty))
    assert not run_folder.holds(str(empty))


def test_the_next_free_timestamp_skips_every_taken_folder(tmp_path, holder):
    exp = tmp_path / "exp"
    holder(exp / "tag@20261207-120001")
    (exp / "tag@20261207-120002" / "save").mkdir(parents=True)
    (exp / "tag@20261207-120002" / "save" / "a.png").write_bytes(b"x")
    folder, stamp = run_folder.claim_next_free(str(exp), "tag", "@20261207-120000")
    try:
        assert stamp == "@20261207-120003" and folder == str(exp / "tag@20261207-120003")
    finally:
        run_folder.release(folder)
    assert run_folder.next_timestamp("@20261231-235959") == "@20270101-000000"


CONCURRENT_CLAIM = LOAD + textwrap.dedent(
    """
    import json, sys, time
    exp_dir, start = sys.argv[1], float(sys.argv[2])
    folder, stamp = exp_dir + "/tag@20261207-120000", "@20261207-120000"
    while time.time() < start:
        pass
    try:  # what lucid-launch does after its config check (host/launch.py: _claim_run_folder)
        run_folder.claim(folder)
    except run_folder.RunFolderTaken as taken:
        folder, stamp = run_folder.claim_next_free(exp_dir, "tag", stamp)
        print("moved from", taken.folder, file=sys.stderr)
    print(json.dumps(folder), flush=True)
    time.sleep(2)  # hold the claim while the others try
    """
)


def test_eight_processes_claiming_one_folder_at_once_get_eight_folders(tmp_path):
    """8 processes released at the same instant, all planned into the same folder: each gets its own
    (the end-to-end case with 8 lucid-launch runs is tests/reliability/test_concurrent_launches.py)."""
    exp = tmp_path / "exp"
    start = time.time() + 2.0  # after every process has started
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_CLAIM, str(exp), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in results]
    folders = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert len(set(folders)) == 8, folders
    assert sorted(os.listdir(exp)) == sorted(os.path.basename(f) for f in folders)
    assert sum("moved from" in err for _, err in results) == 7
    pids = {json.loads((exp / os.path.basename(f) / run_folder.LOCK_NAME).read_text())["pid"] for f in folders}
    assert pids == {proc.pid for proc in procs}


def test_inside_threestudio_a_taken_folder_moves_the_launch_config_to_the_next_free_one(tmp_path, holder):
    """threestudio's launch.py names the folder itself; the plugin's claim (from set_save_dir) points
    the launch's config at the next free folder before its callbacks read ``cfg.trial_dir``."""
    exp = tmp_path / "outputs" / "lucid-sds"
    taken = exp / "a_cat@20261207-120000"
    holder(taken)
    cfg = OmegaConf.create({"exp_dir": str(exp), "trial_name": "a_cat@20261207-120000", "timestamp": "@20261207-120000",
                            "trial_dir": str(taken), "resume": None, "tag": "a_cat"})
    said = []
    folder = run_folder.claim_launch_folder(str(taken), resumed=False, say=said.append)
    try:
        assert folder == str(exp / "a_cat@20261207-120001")
        assert (cfg.trial_dir, cfg.trial_name, cfg.timestamp) == (folder, "a_cat@20261207-120001", "@20261207-120001")
        assert len(said) == 1 and "in use by another launch" in said[0] and folder in said[0]
    finally:
        run_folder.release(folder)
    # without the launch's config on the stack the taken folder is refused, not shared
    del cfg
    with pytest.raises(RunFolderTaken):
        run_folder.claim_launch_folder(str(taken), resumed=False, say=said.append)
