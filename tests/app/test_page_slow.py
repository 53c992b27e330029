"""lucid-app's page in a real headless Chromium, the longer journeys (``-m slow``): stop and resume
from the page with the live splats on the way, the mesh export with its 3D view and downloads, two
runs queued, runs found under --outputs reopened, a password in the browser, and the command itself
(``lucid-app`` in its own process, Ctrl-C'd while a run trains)."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from .conftest import call, page_errors, tiny_toy_config, wait_for, world_env
from .test_page import canvas_pixels, fill_config

pytestmark = pytest.mark.slow

BACKGROUND = np.array([0.17, 0.176, 0.192]) * 255


def drawn(page, selector):
    pixels = canvas_pixels(page, selector)
    return (np.abs(pixels - BACKGROUND).sum(-1) > 30).mean()


def open_page(browser, url, **context):
    page = browser.new_context(viewport={"width": 1400, "height": 1700}, **context).new_page()
    errors = page_errors(page)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def start_run(page, prompt, config, steps, every):
    page.select_option("#config", f"lucid/{config}")
    page.fill("#prompt", prompt)
    fill_config(page, tiny_toy_config(f"{config}.yaml", steps=steps, every=every))
    page.wait_for_function(f"() => document.getElementById('field-max_steps').value === '{steps}'")
    page.click("#run-button")
    page.wait_for_selector("#run:not([hidden])")


def state_is(page, *states):
    """The selected run's state (the badge's class: its text adds the place in the queue)."""
    return ("() => [" + ",".join(f"'{s}'" for s in states) + "].some(s => "
            "document.getElementById('run-state').classList.contains(s))")


def test_stop_resume_and_export_from_the_page_with_live_splats(browser, serve_app, app_toy_world):
    url = serve_app(toy_world=app_toy_world)
    page, errors = open_page(browser, url)
    start_run(page, "a penguin", "lucid-ism-toy", steps=1200, every=50)
    # live 3D: the running job's splats in the view (its live PLY; the first may be the faint initial
    # Gaussians of step 1, so the view is given a refresh or two to show the object)
    wait_for(page, "() => /^Live splats: step \\d+, \\d+ Gaussians/.test(document.getElementById('splats-caption').textContent)",
             120, "live splats with their step")
    deadline = time.time() + 30
    while drawn(page, "#splat-view") <= 0.01 and time.time() < deadline:
        time.sleep(1.0)
    assert drawn(page, "#splat-view") > 0.01
    page.click("#stop")
    wait_for(page, state_is(page, "stopping", "stopped"), 20, "stopping")
    wait_for(page, state_is(page, "stopped"), 120, "the stop")
    message = page.text_content("#run-message")
    k = int(re.search(r"stopped at step (\d+): Resume continues from interrupted-step=(\d+)\.ckpt", message).group(1))
    assert 0 < k < 1200
    wait_for(page, "() => document.getElementById('splats-caption').textContent.includes('point_cloud.ply')", 30)
    assert page.is_enabled("#resume") and not page.is_enabled("#stop")

    page.click("#resume")
    wait_for(page, state_is(page, "running"), 30, "the resume to start")
    command = page.text_content("#command")
    assert re.search(r"lucid-launch --config \S+/configs/parsed\.yaml --train --gpu 0 resume=\S+/ckpts/interrupted-step="
                     rf"{k}\.ckpt$", command), command
    wait_for(page, state_is(page, "done"), 240, "the resumed run to finish")
    wait_for(page, "() => document.getElementById('video').readyState >= 1", 30, "the video")
    assert page.text_content("#progress-text") == "step 1200 / 1200"

    page.click("#export")
    wait_for(page, "() => document.getElementById('export-state').textContent === 'export: done'", 240, "the export")
    wait_for(page, "() => !document.getElementById('mesh-box').hidden", 10)
    wait_for(page, "() => document.querySelectorAll('#downloads a').length >= 3", 10)
    time.sleep(1.0)
    assert drawn(page, "#mesh-view") > 0.01
    magic = {"PLY": b"ply", "OBJ": b"#", "GLB": b"glTF"}
    for link in page.locator("#downloads a").all():
        label, href = link.text_content(), link.get_attribute("href")
        response = page.request.get(url.rstrip("/") + href)
        assert response.status == 200 and "attachment" in response.headers["content-disposition"], label
        if label in magic:
            assert response.body().startswith(magic[label]) or label == "OBJ", label
    assert errors == []


def test_two_runs_queue_in_the_page_and_both_finish(browser, serve_app, app_toy_world):
    url = serve_app(toy_world=app_toy_world)
    page, errors = open_page(browser, url)
    start_run(page, "a penguin", "lucid-sds-toy", steps=300, every=100)
    first = page.evaluate("() => location.hash")
    page.fill("#prompt", "a red cube")
    page.click("#run-button")
    wait_for(page, state_is(page, "queued"), 10, "the second run to wait")
    assert page.text_content("#run-state") == "queued: #1 in line"
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() == 2 and "queued (#1)" in rows.nth(0).text_content() and "running" in rows.nth(1).text_content()
    wait_for(page, state_is(page, "running"), 180, "the second run to start")
    listing = call(url, "/api/runs")[1]
    assert [r["state"] for r in listing["runs"]] == ["running", "done"] and listing["queued"] == 0
    wait_for(page, state_is(page, "done"), 180, "the second run")
    page.goto(url + first)  # the first run, reopened by its address
    wait_for(page, "() => document.getElementById('folder').textContent.includes('a_penguin@')", 10)
    assert page.text_content("#run-state") == "done"
    assert errors == []


def test_runs_under_outputs_are_listed_and_reopened_and_a_password_is_asked(browser, serve_app, app_toy_world, tmp_path):
    outputs = tmp_path / "outputs"
    launch = os.path.join(os.path.dirname(sys.executable), "lucid-launch")
    text = tiny_toy_config("lucid-sds-toy.yaml", steps=20, every=10)
    (tmp_path / "cfg.yaml").write_text(text)
    done = subprocess.run([launch, "--config", str(tmp_path / "cfg.yaml"), "--train", "--gpu", "0",
                           "system.prompt_processor.prompt=a red cube", f"exp_root_dir={outputs / 'cli'}",
                           f"system.prompt_processor.pretrained_model_name_or_path={app_toy_world}",
                           f"system.guidance.pretrained_model_name_or_path={app_toy_world}"],
                          cwd=tmp_path, env=world_env(app_toy_world), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from threestudio_lucid.app.access import Credentials

    url = serve_app(toy_world=app_toy_world, credentials=Credentials("ann", "pw"))
    denied = browser.new_page()
    assert denied.goto(url).status == 401
    page, errors = open_page(browser, url, http_credentials={"username": "ann", "password": "pw"})
    row = page.locator("#runs-table tbody tr").first
    assert "a red cube" in row.text_content() and "cli/lucid-sds-toy/a_red_cube@" in row.text_content()
    row.click()
    wait_for(page, state_is(page, "done"), 10)
    wait_for(page, "() => document.getElementById('splats-caption').textContent.includes('Gaussians')", 20)
    assert not page.locator("#scores-box").is_hidden()
    assert page.evaluate("() => location.hash").startswith("#run=d%3Acli%2F")
    assert errors == []


def test_the_command_serves_and_ctrl_c_stops_the_running_job_with_a_checkpoint(app_toy_world, tmp_path):
    text = tiny_toy_config("lucid-sds-toy.yaml", steps=5000, every=50)
    env = world_env(app_toy_world)
    app = subprocess.Popen([sys.executable, "-m", "threestudio_lucid.app", "--port", "0", "--outputs",
                            str(tmp_path / "outputs"), "--toy-world", app_toy_world], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = app.stdout.readline()
        url = re.match(r"lucid-app: (http://127\.0\.0\.1:\d+/) \(outputs .*; devices cpu\)", line).group(1)
        fields = {"model": app_toy_world}
        status, answer = call(url, "/api/runs", {"prompt": "a penguin", "config_id": "lucid/lucid-sds-toy", "text": text,
                                                 "fields": fields})
        assert status == 200, answer
        key = answer["key"]
        deadline = time.time() + 120
        while time.time() < deadline and not (call(url, f"/api/run?key={key}")[1].get("progress") or {}).get("step"):
            time.sleep(0.5)
        folder = call(url, f"/api/run?key={key}")[1]["folder"]
        app.send_signal(signal.SIGINT)
        out, _ = app.communicate(timeout=120)
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == 0 and "stopping; running jobs save a checkpoint first" in out
    assert any(name.startswith("interrupted-step=") for name in os.listdir(os.path.join(folder, "ckpts")))
