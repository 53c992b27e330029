"""lucid-app test fixtures: a small toy world, the app served from this process, and a real headless
Chromium (the one scripts/setup.sh installs) driven by Playwright."""
import os
import shutil

import pytest

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "custom",
                       "threestudio-lucid", "configs")


@pytest.fixture(scope="session")
def app_toy_world(tmp_path_factory):
    """A two-object toy world at 32 px (cube, penguin), built once; its render cache is shared with
    the launches through LUCID_TOY_WORLD_CACHE in their environment (:func:`world_env`)."""
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    base = tmp_path_factory.mktemp("app-world")
    path = build_toy_world(base / "toy", objects=["cube", "penguin"], image_size=32, n_azimuths=4,
                           elevations_deg=[0.0, 30.0], n_eval_views=2, bandwidth=0.2, cache_dir=str(base / "cache"))
    return str(path)


def world_env(world: str) -> dict:
    """The environment of a launch on ``world``: its render cache (built with the world)."""
    return dict(os.environ, LUCID_TOY_WORLD_CACHE=os.path.join(os.path.dirname(world), "cache"),
                OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def tiny_toy_config(name: str, steps: int, every: int = 5, points: int = 300) -> str:
    """The text of a toy config shrunk for tests: 32 px, one view a step, ``points`` Gaussians,
    validation and a checkpoint every ``every`` steps, four test views."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(CONFIGS, name))
    cfg.data.width = cfg.data.height = cfg.data.eval_width = cfg.data.eval_height = 32
    cfg.data.batch_size, cfg.data.n_val_views, cfg.data.n_test_views = 1, 1, 4
    cfg.system.geometry.init_num_pts = points
    cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.trainer.log_every_n_steps = steps, every, 1
    cfg.checkpoint.every_n_train_steps = every
    if "warmup_iter" in cfg.system.guidance:
        cfg.system.guidance.warmup_iter = 1
    return OmegaConf.to_yaml(cfg)


def chromium_executable():
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="session")
def browser():
    """Playwright's Chromium driver on the installed Chromium (Playwright's own download is not needed)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]' (scripts/setup.sh does)")
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium on this machine: scripts/setup.sh installs chromium-headless-shell with apt")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def serve_app(tmp_path):
    """``serve_app(**settings) -> url``: lucid-app in a background thread of this process, its outputs
    and working directory under ``tmp_path``; ``serve_app.stop(url)`` stops one, and every one still
    running is stopped (its jobs Ctrl-C'd) at the end."""
    from threestudio_lucid.app.cli import serve_in_thread
    from threestudio_lucid.app.server import Settings

    stops = {}

    def start(**options):
        settings = dict(outputs=str(tmp_path / "outputs"), devices=["cpu"], cwd=str(tmp_path))
        if options.get("toy_world"):
            settings["env"] = world_env(options["toy_world"])
        settings.update(options)
        url, stop = serve_in_thread(Settings(**settings))
        stops[url] = stop
        return url

    start.stop = lambda url: stops.pop(url)()
    yield start
    for stop in stops.values():
        stop()


def page_errors(page):
    """Collect the page's JavaScript errors (a test fails on any)."""
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def wait_for(page, predicate: str, timeout: float = 60.0, what: str = ""):
    """Poll ``predicate`` (a JavaScript function) in the page until it returns true; fail at once,
    with the run's one-line error, when the selected run failed."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if page.evaluate(predicate):
            return
        state = page.evaluate("() => (document.getElementById('run-state') || {}).textContent")
        if state == "failed":
            raise AssertionError(f"the run failed while waiting for {what or predicate}: "
                                 f"{page.text_content('#run-error')}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}; page says: "
                         f"{page.text_content('#run-state')} {page.text_content('#run-message')} "
                         f"{page.text_content('#run-error')} {page.text_content('#progress-text')}")


def call(url: str, path: str, body=None, headers=None):
    """``(status, parsed JSON or text)`` of a request to the app (JSON body -> POST)."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers={
        **({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(raw) if "json" in kind else raw.decode("utf-8", "replace")
