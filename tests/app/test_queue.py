"""The queue: clicks on Run queue up, one job at a time per device slot, places shown; Stop cancels
a waiting job and Ctrl-C's a running one; the app's records survive a restart. The launcher is a
stand-in process here (``stand_in_launch.py``, a second each); real launches are in test_page*.py."""
import json
import os
import sys
import time

from .conftest import CONFIGS, call

STAND_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_in_launch.py")


def submit(url, prompt):
    status, answer = call(url, "/api/runs", {"prompt": prompt, "config_id": "lucid/lucid-sds-toy", "fields": {}})
    assert status == 200, answer
    return answer["key"]


def wait(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_many_clicks_queue_in_order_and_never_run_more_jobs_than_the_device_slots(serve_app, tmp_path, monkeypatch):
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    # each job outlasts the five submissions, even on a loaded machine, so the first two are still running when
    # the others are queued behind them (at 0.6 s the first could end while the fifth was being submitted)
    monkeypatch.setenv("STAND_IN_SECONDS", "2.0")
    url = serve_app(launcher=[sys.executable, STAND_IN], devices=["cpu", "cpu"])
    prompts = [f"a penguin {i}" for i in range(5)]
    keys = [submit(url, p) for p in prompts]

    def listing():
        return {r["key"]: r for r in call(url, "/api/runs")[1]["runs"]}

    # two slots: two run, the other three wait with their places
    runs = wait(lambda: (lambda r: r if sum(x["state"] == "running" for x in r.values()) == 2 else None)(listing()))
    assert [runs[k]["state"] for k in keys[:2]] == ["running", "running"]
    assert [(runs[k]["state"], runs[k]["place"]) for k in keys[2:]] == [("queued", 1), ("queued", 2), ("queued", 3)]
    detail = call(url, f"/api/run?key={keys[4]}")[1]
    assert detail["state"] == "queued" and detail["place"] == 3 and detail["actions"]["stop"]

    wait(lambda: all(r["state"] == "done" for r in listing().values()), timeout=60)
    events = records(record)
    starts = [e for e in events if e["event"] == "start"]
    assert [e["prompt"] for e in starts] == prompts  # first come, first served
    spans = []
    for start in starts:
        end = next(e for e in events if e["pid"] == start["pid"] and e["event"] == "end")
        spans.append((start["time"], end["time"]))
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most == 2, spans

    # each job ran the launcher's arguments, never a shell: the prompt is one argument of its own
    job = call(url, f"/api/run?key={keys[0]}")[1]
    assert "'system.prompt_processor.prompt=a penguin 0'" in job["command"]
    assert f"--config {os.path.join(CONFIGS, 'lucid-sds-toy.yaml')} --train --gpu 0" in job["command"]


def test_stop_cancels_a_waiting_job_and_interrupts_a_running_one(serve_app, tmp_path, monkeypatch):
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    monkeypatch.setenv("STAND_IN_SECONDS", "30")
    url = serve_app(launcher=[sys.executable, STAND_IN])
    first, second = submit(url, "a penguin"), submit(url, "a red cube")
    wait(lambda: record.exists() and records(record))  # the first has started
    assert call(url, f"/api/run?key={second}")[1]["place"] == 1
    assert call(url, "/api/run/stop", {"key": second}) == (200, {"key": second, "state": "cancelled"})
    status, answer = call(url, "/api/run/stop", {"key": first})
    assert status == 200 and answer["state"] == "stopping"
    detail = wait(lambda: (lambda d: d if d["state"] == "stopped" else None)(call(url, f"/api/run?key={first}")[1]))
    assert detail["message"] == "stopped before the first checkpoint" and not detail["actions"]["resume"]
    assert [e["event"] for e in records(record)] == ["start", "stopped"]  # the second never started
    assert call(url, f"/api/run?key={second}")[1]["state"] == "cancelled"
    status, answer = call(url, "/api/run/stop", {"key": first})
    assert status == 409 and answer["error"] == "error: nothing is running or waiting for this run"


def test_the_runs_list_survives_a_restart_of_the_app(serve_app, tmp_path, monkeypatch):
    monkeypatch.setenv("STAND_IN_RECORD", str(tmp_path / "record.jsonl"))
    monkeypatch.setenv("STAND_IN_SECONDS", "0.1")
    url = serve_app(launcher=[sys.executable, STAND_IN])
    key = submit(url, "a penguin")
    wait(lambda: call(url, f"/api/run?key={key}")[1]["state"] == "done")
    serve_app.stop(url)
    again = serve_app(launcher=[sys.executable, STAND_IN])  # the app again, on the same outputs
    runs = call(again, "/api/runs")[1]["runs"]
    assert [(r["key"], r["prompt"], r["state"]) for r in runs] == [(key, "a penguin", "done")]


def test_a_prompt_reaches_the_launcher_as_typed_and_its_folder_stays_under_outputs(serve_app, tmp_path, monkeypatch):
    """Shell syntax, path syntax and interpolation in a prompt are text: one argument, read back by
    OmegaConf exactly, and a run folder with the launcher's sanitised name under --outputs."""
    from omegaconf import OmegaConf

    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    monkeypatch.setenv("STAND_IN_SECONDS", "0.1")
    url = serve_app(launcher=[sys.executable, STAND_IN])
    prompt = "../../x; touch pwned $(touch pwned2) `touch pwned3` ${oc.env:HOME} 'q' \"d\" | a: b"
    key = submit(url, prompt)
    wait(lambda: call(url, f"/api/run?key={key}")[1]["state"] == "done")
    (start,) = [e for e in records(record) if e["event"] == "start"]
    value = OmegaConf.from_dotlist([f"p={start['prompt']}"])
    assert OmegaConf.to_container(value, resolve=True)["p"] == prompt
    assert not any((tmp_path / name).exists() for name in ("pwned", "pwned2", "pwned3"))
    with open(tmp_path / "outputs" / ".lucid-app" / "runs.json") as f:
        (run,) = json.load(f)["runs"]
    outputs = os.path.realpath(tmp_path / "outputs")
    folder = os.path.realpath(run["trial_dir"])
    assert os.path.commonpath([outputs, folder]) == outputs
    name = os.path.basename(folder)
    assert "/" not in name and ".." not in name and " " not in name and name.count("@") == 1
