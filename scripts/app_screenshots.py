"""The README's two pictures of lucid-app (``docs/app_running.png``, ``docs/app_done.png``), taken from a real run.

    python scripts/app_screenshots.py [--out docs] [--steps 400] [--world DIR]

It builds a two-object toy world (penguin, cube; the demo's settings) in a temporary folder unless ``--world``
names one, serves lucid-app on the CPU with it as the model, and in the headless Chromium that
``scripts/setup.sh`` installs, through the page as a user would: starts ISM on "a penguin" with
``lucid-ism-toy.yaml``'s own settings (``--steps`` only shortens or lengthens it), queues "a red cube" behind
it, and takes the first picture once the run has validation images of two steps (the step slider shows) and
its splats are in the live view. Then it stops the queued run from the page (the one device would run it
before the export), waits for the first to end, exports its mesh, makes the progress video and takes the
second picture.
Nothing is shown that the page did not draw; it takes about a minute on 2 cores.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWPORT = {"width": 1400, "height": 1000}  # the page's figures sit two abreast from about 1350 px


def chromium() -> str:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("error: no Chromium on this machine: scripts/setup.sh installs chromium-headless-shell with apt")


def wait_until(page, script: str, seconds: float, what: str) -> None:
    try:
        page.wait_for_function(script, timeout=seconds * 1000, polling=500)
    except Exception:
        raise SystemExit(f"error: the page did not show {what} within {seconds:.0f} s "
                         f"(state: {page.text_content('#run-state')!r}, {page.text_content('#run-message')!r})") from None


def state_is(*states: str) -> str:
    return "() => [" + ",".join(f"'{s}'" for s in states) + "].some(s => document.getElementById('run-state').classList.contains(s))"


def shoot(page, path: str) -> None:
    time.sleep(1.5)  # the 3D views draw on the next animation frames
    page.screenshot(path=path, full_page=True)
    print(f"wrote {path}")


def take_pictures(browser, url: str, out: str, steps: int) -> None:
    """Drive lucid-app at ``url`` in ``browser`` (Playwright's Chromium) and write both pictures into ``out``."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        drive(context.new_page(), url, out, steps)
    finally:
        context.close()


def drive(page, url: str, out: str, steps: int) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    page.select_option("#config", "lucid/lucid-ism-toy")
    page.wait_for_function("() => document.getElementById('field-max_steps').value !== ''")
    page.fill("#prompt", "a penguin")
    page.fill("#field-max_steps", str(steps))
    page.click("#run-button")
    page.wait_for_selector("#run:not([hidden])")
    wait_until(page, state_is("running"), 300, "the run starting")
    first = page.evaluate("() => location.hash")
    page.fill("#prompt", "a red cube")
    page.click("#run-button")
    wait_until(page, state_is("queued"), 30, "the second run waiting")
    second = page.evaluate("() => location.hash")
    page.goto(url + first)
    wait_until(page, "() => !document.getElementById('image-steps').hidden", 600,
               "validation images of two steps")
    wait_until(page, "() => /^Live splats/.test(document.getElementById('splats-caption').textContent)", 120,
               "the live splats")
    shoot(page, os.path.join(out, "app_running.png"))

    page.goto(url + second)
    wait_until(page, state_is("queued"), 30, "the second run waiting")
    page.click("#stop")
    wait_until(page, state_is("cancelled"), 30, "the second run cancelled")
    page.goto(url + first)
    wait_until(page, state_is("done"), 900, "the run's end")
    wait_until(page, "() => document.getElementById('video').readyState >= 2", 60, "the orbit video's first frame")
    page.click("#export")
    wait_until(page, "() => document.getElementById('export-state').textContent === 'export: done'", 600,
               "the export")
    wait_until(page, "() => document.querySelectorAll('#downloads a').length >= 3", 30, "the mesh downloads")
    page.click("#make-progress-video")
    wait_until(page, "() => !document.getElementById('progress-video').hidden", 300, "the progress video")
    wait_until(page, "() => document.getElementById('progress-video').readyState >= 2", 60,
               "the progress video's first frame")
    page.evaluate("() => { document.getElementById('console-box').open = false; }")
    shoot(page, os.path.join(out, "app_done.png"))


def main(argv=None, browser=None) -> int:
    """``browser``: a Playwright browser to use instead of launching one (the tests pass theirs: one process
    can hold only one Playwright sync session)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "docs"), help="folder for app_running.png and app_done.png")
    p.add_argument("--steps", type=int, default=400, help="training steps of the penguin run (the config's: 400; "
                                                          "it must outlast the second run's submission)")
    p.add_argument("--world", help="a toy-world folder with the penguin and the cube (default: built in a temporary folder)")
    args = p.parse_args(argv)
    if browser is None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise SystemExit("error: playwright is not installed: pip install -e '.[test]' (scripts/setup.sh does)")
        executable = chromium()
    from threestudio_lucid.app.cli import serve_in_thread
    from threestudio_lucid.app.server import Settings
    from threestudio_lucid.toy_world.pipeline import build_toy_world

    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="lucid-app-shots-")
    world = os.path.abspath(args.world) if args.world else build_toy_world(
        os.path.join(work, "toy-world"), objects=["penguin", "cube"], bandwidth=0.2)
    url, stop_app = serve_in_thread(Settings(outputs=os.path.join(work, "outputs"), devices=["cpu"], toy_world=world,
                                             cwd=work))
    try:
        if browser is not None:
            take_pictures(browser, url, args.out, args.steps)
        else:
            with sync_playwright() as playwright:
                own = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu-sandbox"])
                try:
                    take_pictures(own, url, args.out, args.steps)
                finally:
                    own.close()
    finally:
        stop_app()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
