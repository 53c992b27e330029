"""What lucid-app's live 3D view costs the training it watches, measured side by side in one run.

Two measurements, each of the same toy run (``lucid-ism-toy.yaml``, a checkpoint every ``--every``
steps in every condition) started through the app, the conditions alternating (A B B A, or A B C C B A)
so that drift over time falls on every side:

- the viewer (default): the run ``--repeats`` times alone and as often while a viewer watches it. The
  viewer does what the page does: the runs list and the run once a second, and the live splats each
  time a new version appears (the app converts it and answers with a PLY); with ``--browser`` it is the
  page itself in a headless Chromium, drawing the splats with WebGL on this machine's CPU.
- ``--live-ply``: the writer of the live splats in the training process (``system/live_splats.py``),
  no viewer: ``off`` (``system.live_ply_every_n_steps: 0`` in the config), ``app`` (what the app starts
  its runs with: every step, at most one write per ``live_ply_min_seconds`` = 2 s) and, as the positive
  control that shows the measurement can see a cost, ``every step`` (``live_ply_min_seconds: 0``). The
  test stage is shortened (4 views, no scoring): it is not timed.

Training speed is taken from the run's own checkpoints: seconds per step between the first and the
last step checkpoint (file times), so model loading and the test stage are not counted. The live PLY's
write time is the run's own account (its ``Live splats: <k> writes ..., <ms> ms each`` console line).
It prints each run and the ratios to the reference condition (1.00 = no cost).

    python scripts/bench_app_live_view.py [--steps 300] [--every 50] [--repeats 2] [--browser | --live-ply]
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


LIVE_LINE = re.compile(r"Live splats: (\d+) writes of .*?, ([0-9.]+) ms each \(([0-9.]+) s in all\)")
# --live-ply: what each condition puts in the config's system section
LIVE_CONDITIONS = {
    "off": "  live_ply_every_n_steps: 0\n",
    "app": "",  # the config does not set it: the app adds system.live_ply_every_n_steps=1 (2 s floor)
    "every step": "  live_ply_every_n_steps: 1\n  live_ply_min_seconds: 0\n",
}


class CpuClock(threading.Thread):
    """The training process's own CPU time (``/proc/<pid>/stat``, all its threads) at each step checkpoint
    it writes: CPU seconds per step, which other work on a shared machine disturbs far less than the
    wall clock (it still counts what the process itself spends, the live PLY writes included)."""

    def __init__(self, outputs, key):
        super().__init__(daemon=True)
        self.outputs, self.key, self.stop, self.at = outputs, key, threading.Event(), {}

    def job(self):
        try:
            with open(os.path.join(self.outputs, ".lucid-app", "runs.json"), encoding="utf-8") as f:
                records = json.load(f)
        except (OSError, ValueError):
            return None, None
        run = next((r for r in records["runs"] if r["id"] == self.key), None)
        jobs = [j for j in records["jobs"] if run and j["id"] in run["jobs"] and j.get("pid")]
        return (jobs[-1]["pid"], jobs[-1]["trial_dir"]) if jobs else (None, None)

    @staticmethod
    def cpu_seconds(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def run(self):
        while not self.stop.wait(0.05):
            pid, trial = self.job()
            if not pid or not trial or not os.path.isdir(os.path.join(trial, "ckpts")):
                continue
            try:
                names = os.listdir(os.path.join(trial, "ckpts"))
                cpu = self.cpu_seconds(pid)
            except OSError:
                continue
            for name in names:
                m = re.match(r"epoch=\d+-step=(\d+)\.ckpt$", name)
                if m and int(m.group(1)) not in self.at:
                    self.at[int(m.group(1))] = cpu

    def seconds_per_step(self):
        if len(self.at) < 2:
            return float("nan")
        first, last = min(self.at), max(self.at)
        return (self.at[last] - self.at[first]) / (last - first)


def live_writes(log):
    """``(writes, ms each, seconds in all)`` from a launch's console, or None when it wrote none."""
    with open(log, encoding="utf-8", errors="replace") as f:
        m = LIVE_LINE.search(f.read())
    return (int(m.group(1)), float(m.group(2)), float(m.group(3))) if m else None


def alternating(conditions, repeats):
    """A B C C B A A B C ...: each condition as often early as late."""
    forth = list(conditions)
    return [c for r in range(repeats) for c in (forth if r % 2 == 0 else forth[::-1])]


def run_to_end(url, text, fields, watch=None):
    """Start one run through the app and wait for its end: ``(detail, watcher)``. ``watch(key)``: a thread
    (a viewer, a clock) that runs beside it and is stopped at its end."""
    key = post(url, "/api/runs", {"prompt": "a penguin", "config_id": "lucid/lucid-ism-toy", "text": text,
                                  "fields": fields})["key"]
    viewer = None
    if watch is not None:
        viewer = watch(key)
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
    return detail, viewer


def bench_live_ply(url, outputs, text, fields, args):
    """The live PLY writer's cost: off / app / every step, alternating."""
    text = text.replace("n_test_views: 60", "n_test_views: 4").replace("toy_world_eval: true", "toy_world_eval: false")
    order = alternating(LIVE_CONDITIONS, args.repeats)
    speeds = {c: [] for c in LIVE_CONDITIONS}
    writes = {c: [] for c in LIVE_CONDITIONS}
    cpu = {c: [] for c in LIVE_CONDITIONS}
    print(f"live PLY writing: {args.steps} steps of lucid-ism-toy, a checkpoint every {args.every}, "
          f"{args.repeats} runs per condition (off / app: every step, >= 2 s apart / every step), no viewer",
          flush=True)
    for i, condition in enumerate(order):
        detail, clock = run_to_end(url, text.replace("system:\n", "system:\n" + LIVE_CONDITIONS[condition], 1), fields,
                                   lambda key: CpuClock(outputs, key))
        s = seconds_per_step(detail["folder"])
        speeds[condition].append(s)
        cpu[condition].append(clock.seconds_per_step())
        w = live_writes(detail["log"])
        writes[condition].append(w)
        extra = ""
        if w:
            share = w[2] / (s * args.steps)
            extra = f", {w[0]} PLY writes of {w[1]:.2f} ms ({100 * share:.2f}% of the training time)"
        print(f"  [{i + 1}/{len(order)}] {condition:10s} {1000 * s:7.1f} ms/step (CPU {1000 * cpu[condition][-1]:.1f} "
              f"ms/step){extra}", flush=True)
    off, cpu_off = statistics.mean(speeds["off"]), statistics.mean(cpu["off"])
    cpu_spread = max(max(v) / min(v) for v in cpu.values()) - 1
    spread = max(max(v) / min(v) for v in speeds.values()) - 1
    print(f"mean ms/step: off {1000 * off:.2f}; runs of one condition differ by up to {100 * spread:.1f}% among "
          "themselves (the noise of this machine)")
    for condition in ("app", "every step"):
        mean = statistics.mean(speeds[condition])
        runs = [(w, s) for w, s in zip(writes[condition], speeds[condition]) if w]
        ms = statistics.mean([w[1] for w, _ in runs] or [float("nan")])
        n = statistics.mean([w[0] for w, _ in runs] or [0])
        share = statistics.mean([w[2] / (s * args.steps) for w, s in runs] or [0])
        slower = mean / off - 1
        verdict = "beyond the noise" if abs(slower) > spread else "within the noise"
        cpu_slower = statistics.mean(cpu[condition]) / cpu_off - 1
        cpu_verdict = "beyond the noise" if abs(cpu_slower) > cpu_spread else "within the noise"
        print(f"  {condition:10s} {1000 * mean:.2f} ms/step: ratio {mean / off:.3f} ({100 * slower:+.1f}%, {verdict}); "
              f"CPU ratio {1 + cpu_slower:.3f} ({100 * cpu_slower:+.1f}%, {cpu_verdict} of {100 * cpu_spread:.1f}%); "
              f"{n:.0f} PLY writes a run of {ms:.2f} ms each = {100 * share:.2f}% of its training time")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="checkpoint (and live refresh) interval, both conditions")
    parser.add_argument("--repeats", type=int, default=2, help="runs per condition")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--browser", action="store_true", help="watch with the real page in headless Chromium")
    mode.add_argument("--live-ply", action="store_true",
                      help="measure the live PLY writer in the training process instead of a viewer")
    parser.add_argument("--world", help="a toy world folder (default: built with the penguin in a temporary folder)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from threestudio_lucid.app.cli import serve_in_thread
    from threestudio_lucid.app.server import Settings
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    work = tempfile.mkdtemp(prefix="bench-app-")
    world = args.world or str(build_toy_world(os.path.join(work, "toy-penguin"), objects=["penguin"], bandwidth=0.2))
    outputs = os.path.join(work, "outputs")
    url, stop = serve_in_thread(Settings(outputs=outputs, devices=["cpu"], toy_world=world, cwd=work))
    with open(CONFIG, encoding="utf-8") as f:
        text = f.read().replace("every_n_train_steps: 100", f"every_n_train_steps: {args.every}")
    fields = {"model": world, "max_steps": str(args.steps)}
    if args.live_ply:
        try:
            bench_live_ply(url, outputs, text, fields, args)
        finally:
            stop()
        return 0
    order = alternating(["alone", "watched"], args.repeats)
    results = {"alone": [], "watched": []}
    print(f"lucid-app live view: {args.steps} steps of lucid-ism-toy, a checkpoint every {args.every}, "
          f"{args.repeats} runs per condition, viewer: {'Chromium page' if args.browser else 'the page requests'}",
          flush=True)
    try:
        for i, condition in enumerate(order):
            viewer_class = BrowserViewer if args.browser else PageLikeViewer
            detail, viewer = run_to_end(url, text, fields,
                                        (lambda key: viewer_class(url, key)) if condition == "watched" else None)
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
