"""What lucid-app's live 3D view costs the training it watches, measured side by side in one run.

The same toy run (``lucid-ism-toy.yaml``, a checkpoint every ``--every`` steps in both conditions) is
started through the app ``--repeats`` times alone and as often while a viewer watches it, in the
order alone, watched, watched, alone, ... (so drift over time falls on both sides). The viewer does
what the page does: the runs list and the run once a second, and the live splats each time a new
checkpoint appears (the app reads it and answers with a PLY); with ``--browser`` it is the page
itself in a headless Chromium, drawing the splats with WebGL on this machine's CPU.

Training speed is taken from the run's own checkpoints: seconds per step between the first and the
last step checkpoint (file times), so model loading and the test stage are not counted. It prints
each run and the ratio watched / alone (1.00 = no cost).

    python scripts/bench_app_live_view.py [--steps 300] [--every 50] [--repeats 2] [--browser]
"""
import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "custom", "threestudio-lucid", "configs", "lucid-ism-toy.yaml")


def get(url, path, raw=False):
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=60) as r:
        body = r.read()
    return body if raw else json.loads(body)


def post(url, path, body):
    request = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


class PageLikeViewer(threading.Thread):
    """The page's requests: list + run every second, the live PLY whenever its version changes."""

    def __init__(self, url, key):
        super().__init__(daemon=True)
        self.url, self.key, self.stop, self.fetched, self.bytes = url, key, threading.Event(), 0, 0

    def run(self):
        seen = None
        while not self.stop.is_set():
            get(self.url, "/api/runs")
            detail = get(self.url, f"/api/run?key={self.key}")
            live = detail.get("live")
            if live and live["version"] != seen:
                seen = live["version"]
                self.bytes += len(get(self.url, live["url"], raw=True))
                self.fetched += 1
            self.stop.wait(1.0)


class BrowserViewer(threading.Thread):
    """The page itself in a headless Chromium (it polls and draws on its own)."""

    def __init__(self, url, key):
        super().__init__(daemon=True)
        self.url, self.key, self.stop, self.fetched, self.bytes = url, key, threading.Event(), 0, 0

    def run(self):
        from playwright.sync_api import sync_playwright

        executable = next((p for p in ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium") if os.path.exists(p)), None)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"{self.url}#run={self.key}")
            captions = set()
            while not self.stop.is_set():
                captions.add(page.text_content("#splats-caption"))
                self.stop.wait(0.5)
            self.fetched = sum("live" in (c or "") for c in captions)
            browser.close()


def seconds_per_step(folder):
    steps = {}
    for name in os.listdir(os.path.join(folder, "ckpts")):
        m = re.match(r"epoch=\d+-step=(\d+)\.ckpt$", name)
        if m:
            steps[int(m.group(1))] = os.path.getmtime(os.path.join(folder, "ckpts", name))
    first, last = min(steps), max(steps)
    return (steps[last] - steps[first]) / (last - first)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="checkpoint (and live refresh) interval, both conditions")
    parser.add_argument("--repeats", type=int, default=2, help="runs per condition")
    parser.add_argument("--browser", action="store_true", help="watch with the real page in headless Chromium")
    parser.add_argument("--world", help="a toy world folder (default: built with the penguin in a temporary folder)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from threestudio_lucid.app.cli import serve_in_thread
    from threestudio_lucid.app.server import Settings
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    work = tempfile.mkdtemp(prefix="bench-app-")
    world = args.world or str(build_toy_world(os.path.join(work, "toy-penguin"), objects=["penguin"], bandwidth=0.2))
    url, stop = serve_in_thread(Settings(outputs=os.path.join(work, "outputs"), devices=["cpu"], toy_world=world,
                                         cwd=work))
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read().replace("every_n_train_steps: 100", f"every_n_train_steps: {args.every}")
    fields = {"model": world, "max_steps": str(args.steps)}
    order = (["alone", "watched", "watched", "alone"] * args.repeats)[: 2 * args.repeats]
    results = {"alone": [], "watched": []}
    print(f"lucid-app live view: {args.steps} steps of lucid-ism-toy, a checkpoint every {args.every}, "
          f"{args.repeats} runs per condition, viewer: {'Chromium page' if args.browser else 'the page requests'}",
          flush=True)
    try:
        for i, condition in enumerate(order):
            key = post(url, "/api/runs", {"prompt": "a penguin", "config_id": "lucid/lucid-ism-toy", "text": text,
                                          "fields": fields})["key"]
            viewer = None
            if condition == "watched":
                viewer = (BrowserViewer if args.browser else PageLikeViewer)(url, key)
                viewer.start()
            while True:  # the runs list only (the viewer, when there is one, asks for more)
                state = next(r["state"] for r in get(url, "/api/runs")["runs"] if r["key"] == key)
                if state in ("done", "failed", "stopped"):
                    break
                time.sleep(2.0)
            detail = get(url, f"/api/run?key={key}")
            if viewer:
                viewer.stop.set()
                viewer.join(60)
            if detail["state"] != "done":
                raise SystemExit(f"run {key} {detail['state']}: {detail.get('error')}")
            s = seconds_per_step(detail["folder"])
            results[condition].append(s)
            extra = ""
            if viewer:
                extra = f", {viewer.fetched} live refreshes" + (f" ({viewer.bytes / 1e6:.1f} MB)" if viewer.bytes else " shown")
            print(f"  [{i + 1}/{len(order)}] {condition:8s} {1000 * s:7.1f} ms/step{extra}", flush=True)
    finally:
        stop()
    alone, watched = statistics.mean(results["alone"]), statistics.mean(results["watched"])
    print(f"mean ms/step: alone {1000 * alone:.1f}, watched {1000 * watched:.1f}; ratio watched/alone = "
          f"{watched / alone:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
