"""The live 3D view: the run's live PLY (save/live/, written by the system as it trains) or its newest
checkpoint, whichever is newer, as a splat PLY converted once per version; served for a running job
of the app, which starts its runs with the live PLY on; and picked up by the page's viewer, which keeps
the camera the user has set."""
import io
import json
import os
import sys
import time

import numpy as np
import pytest
import torch
from plyfile import PlyData

from threestudio_lucid.app.live_splats import LiveSplats
from threestudio_lucid.geometry.ply_io import write_gaussian_ply
from threestudio_lucid.system.live_splats import write_sidecar

from .conftest import call, page_errors
from .test_queue import STAND_IN, records, submit, wait


def checkpoint(path, n, step, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {
        "geometry._xyz": torch.randn(n, 3, generator=g), "geometry._features_dc": torch.randn(n, 1, 3, generator=g),
        "geometry._features_rest": torch.zeros(n, 15, 3), "geometry._opacity": torch.arange(n, dtype=torch.float32)[:, None],
        "geometry._scaling": torch.randn(n, 3, generator=g), "geometry._rotation": torch.randn(n, 4, generator=g),
        "renderer.bbox": torch.zeros(2, 3),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"state_dict": state, "global_step": step, "epoch": 0}, path)
    return state


def test_the_newest_checkpoint_becomes_a_splat_ply_once(tmp_path):
    run = tmp_path / "run"
    live = LiveSplats(max_splats=3)
    assert live.get(str(run)) is None  # no checkpoint yet
    state = checkpoint(str(run / "ckpts" / "epoch=0-step=10.ckpt"), 5, 10)
    version, step, body = live.get(str(run))
    assert step == 10 and version.startswith("checkpoint:epoch=0-step=10.ckpt:")
    vertex = PlyData.read(io.BytesIO(body))["vertex"]
    assert len(vertex) == 3  # the three most opaque of five
    assert np.allclose(vertex["opacity"], [2.0, 3.0, 4.0])
    assert np.allclose(vertex["x"], state["geometry._xyz"][2:, 0].numpy())
    assert np.allclose(vertex["f_dc_1"], state["geometry._features_dc"][2:, 0, 1].numpy())
    assert live.get(str(run))[2] is body  # converted once
    # a checkpoint being written cannot be read yet: the last answer stays
    (run / "ckpts" / "epoch=0-step=20.ckpt").write_bytes(b"PK\x03\x04 half written")
    os.utime(run / "ckpts" / "epoch=0-step=20.ckpt", (2e9, 2e9))
    assert live.get(str(run))[2] is body
    checkpoint(str(run / "ckpts" / "epoch=0-step=20.ckpt"), 2, 20)
    os.utime(run / "ckpts" / "epoch=0-step=20.ckpt", (2e9, 2e9))
    assert live.get(str(run))[1] == 20


def live_ply(path, n, shift=0.0, mtime=None):
    """A live snapshot as the system writes it (the geometry's PLY writer, SH degree 1)."""
    g = torch.Generator().manual_seed(n)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_gaussian_ply(str(path), torch.randn(n, 3, generator=g) + shift, torch.randn(n, 1, 3, generator=g),
                       torch.zeros(n, 3, 3), torch.randn(n, 1, generator=g), torch.randn(n, 3, generator=g),
                       torch.randn(n, 4, generator=g))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_the_live_ply_is_shown_when_newer_than_the_checkpoint_and_only_under_the_root(tmp_path):
    run = tmp_path / "outputs" / "run"
    live = LiveSplats(root=str(tmp_path / "outputs"))
    checkpoint(str(run / "ckpts" / "epoch=0-step=10.ckpt"), 5, 10)
    os.utime(run / "ckpts" / "epoch=0-step=10.ckpt", (1e9, 1e9))
    live_ply(run / "save" / "live" / "point_cloud.ply", 7, mtime=1.5e9)
    version, step, body = live.get(str(run))
    assert version.startswith("live:point_cloud.ply:") and step is None
    vertex = PlyData.read(io.BytesIO(body))["vertex"]
    assert len(vertex) == 7 and "f_rest_0" not in vertex.data.dtype.names  # degree 0 for the page
    assert version == live.version(str(run)) and live.get(str(run))[2] is body
    checkpoint(str(run / "ckpts" / "epoch=0-step=20.ckpt"), 4, 20)  # now the checkpoint is newer
    assert live.get(str(run))[1] == 20
    # the run's own ply_name; a link that leads out of --outputs is not followed
    (run / "configs").mkdir()
    (run / "configs" / "parsed.yaml").write_text("system:\n  ply_name: splats.ply\n")
    live_ply(tmp_path / "elsewhere.ply", 9, mtime=2e9)
    os.symlink(tmp_path / "elsewhere.ply", run / "save" / "live" / "splats.ply")
    assert live.version(str(run)).startswith("checkpoint:")
    os.remove(run / "save" / "live" / "splats.ply")
    live_ply(run / "save" / "live" / "splats.ply", 3, mtime=2e9)
    assert len(PlyData.read(io.BytesIO(live.get(str(run))[2]))["vertex"]) == 3


def test_a_live_snapshots_step_is_its_sidecars_only_when_the_sidecar_describes_that_ply(tmp_path):
    run = tmp_path / "outputs" / "run"
    path = run / "save" / "live" / "point_cloud.ply"
    live = LiveSplats(root=str(tmp_path / "outputs"))
    live_ply(path, 7, mtime=1.5e9)
    assert live.get(str(run))[1] is None  # an older run: no sidecar, no step
    write_sidecar(str(path), 120)  # the system's own writer, after the PLY
    version, step, body = live.get(str(run))
    assert step == 120 and len(PlyData.read(io.BytesIO(body))["vertex"]) == 7  # picked up without a new PLY
    live_ply(path, 9, mtime=1.6e9)  # a new PLY, its sidecar not yet written: the old one is not its step
    assert live.get(str(run))[1] is None
    write_sidecar(str(path), 140)
    assert live.get(str(run))[1] == 140
    for damaged in ('{"step": 160, "ply_si', "", "[1, 2]", '{"step": "160"}', "\x00\xff"):  # half-written, odd
        live_ply(path, 5 + len(damaged), mtime=1.7e9 + len(damaged))
        with open(str(path) + ".json", "w", encoding="latin-1") as f:
            f.write(damaged)
        version, step, body = live.get(str(run))
        assert step is None and version.startswith("live:") and len(PlyData.read(io.BytesIO(body))["vertex"]) == 5 + len(damaged)
    # a sidecar through a link out of --outputs is not read, even one that describes the PLY
    live_ply(path, 4, mtime=1.8e9)
    write_sidecar(str(path), 180)
    os.replace(str(path) + ".json", tmp_path / "sidecar.json")
    os.symlink(tmp_path / "sidecar.json", str(path) + ".json")
    assert live.get(str(run))[1] is None
    os.remove(str(path) + ".json")
    os.replace(tmp_path / "sidecar.json", str(path) + ".json")
    assert live.get(str(run))[1] == 180


CAMERA = "() => { const v = document.getElementById('splat-view').lucidView; return [v.az, v.el, v.dist, v.target]; }"


def running_job_with_live_ply(serve_app, tmp_path, monkeypatch):
    """A job of the app (a stand-in launcher that runs a minute) and its run folder, in which the test
    writes the live PLY as the system would."""
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("STAND_IN_RECORD", str(record))
    monkeypatch.setenv("STAND_IN_SECONDS", "60")
    url = serve_app(launcher=[sys.executable, STAND_IN])
    key = submit(url, "a penguin")
    wait(lambda: record.exists() and records(record))  # the stand-in launcher runs
    detail = call(url, f"/api/run?key={key}")[1]
    assert " system.live_ply_every_n_steps=1 " in detail["command"], detail["command"]  # the app turns it on
    assert detail.get("live") is None  # nothing written yet
    with open(tmp_path / "outputs" / ".lucid-app" / "runs.json") as f:
        trial = json.load(f)["runs"][0]["trial_dir"]
    return url, key, os.path.join(trial, "save", "live", "point_cloud.ply")


def open_run_page(browser, url, key, count, step=None):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors = page_errors(page)
    page.goto(f"{url}#run={key}")
    at = f"step {step}, " if step is not None else ""
    page.wait_for_function(f"() => /^Live splats: {at}{count} Gaussians \\(snapshot of/.test("
                           "document.getElementById('splats-caption').textContent)", timeout=20_000)
    return page, errors


def drag(page, selector):
    """Orbit the view as a user does; returns the camera before and after."""
    before = page.evaluate(CAMERA)
    box = page.locator(selector).bounding_box()
    page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + 160, box["y"] + 130, steps=4)
    page.mouse.up()
    after = page.evaluate(CAMERA)
    assert after[:2] != before[:2]
    return before, after


def test_the_app_serves_a_running_jobs_live_ply_and_the_viewer_keeps_the_users_camera(
        serve_app, browser, tmp_path, monkeypatch):
    url, key, path = running_job_with_live_ply(serve_app, tmp_path, monkeypatch)
    live_ply(path, 50)
    write_sidecar(path, 120)  # as the system does after each snapshot
    live = call(url, f"/api/run?key={key}")[1]["live"]
    assert live["version"].startswith("live:point_cloud.ply:")
    page, errors = open_run_page(browser, url, key, 50, step=120)  # picked up at once, with its step
    fitted, moved = drag(page, "#splat-view")
    # a reload of the live splats keeps the camera the user set; a plain load fits it again
    reload = ("async (keep) => { const r = await fetch(%r); const v = document.getElementById('splat-view').lucidView;"
              " return v.load(await r.arrayBuffer(), { keepCamera: keep }).count; }" % live["url"])
    assert page.evaluate(reload, True) == 50 and page.evaluate(CAMERA) == moved
    assert page.evaluate(reload, False) == 50 and page.evaluate(CAMERA) == fitted
    assert errors == []


@pytest.mark.slow
def test_a_new_live_snapshot_replaces_the_splats_in_the_page_without_moving_the_camera(
        serve_app, browser, tmp_path, monkeypatch):
    url, key, path = running_job_with_live_ply(serve_app, tmp_path, monkeypatch)
    live_ply(path, 50)
    page, errors = open_run_page(browser, url, key, 50)
    _fitted, moved = drag(page, "#splat-view")
    live_ply(path, 80, shift=0.5, mtime=time.time() + 1)  # no sidecar (an older run): the caption has no step
    page.wait_for_function("() => /^Live splats: 80 Gaussians/.test(document.getElementById('splats-caption').textContent)",
                           timeout=20_000)  # the page replaces the live splats every 5 s at most
    assert page.evaluate(CAMERA) == moved
    assert errors == []
