"""lucid-app's page in a real headless Chromium: the short run every test suite makes (well under 30 s).

A toy run is started from the page (the config edited in the page's editor), the progress bar moves,
a validation image appears, the run ends with its video and its splats in the 3D view (a canvas that
is not blank); before that, a bad option is refused with the launcher's own one-line error."""
import io
import re

import numpy as np

from .conftest import page_errors, tiny_toy_config, wait_for


def canvas_pixels(page, selector):
    import imageio.v2 as imageio

    return imageio.imread(io.BytesIO(page.locator(selector).screenshot())).astype(np.float32)[..., :3]


def fill_config(page, text):
    page.locator("#editor-box summary").click()
    page.locator("#config-text").fill(text)
    page.locator("#config-text").dispatch_event("change")


def test_a_toy_run_from_the_page_shows_progress_images_video_and_splats(browser, serve_app, app_toy_world):
    url = serve_app(toy_world=app_toy_world)
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors = page_errors(page)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    page.select_option("#config", "lucid/lucid-sds-toy")
    page.wait_for_selector("#field-delta_t", state="detached")  # SDS has no ISM options
    page.fill("#prompt", "a penguin")
    fill_config(page, tiny_toy_config("lucid-sds-toy.yaml", steps=200, every=50))
    page.wait_for_function("() => document.getElementById('field-max_steps').value === '200'")

    # a bad option: the launcher's own check, one line, at once; nothing is queued
    page.fill("#field-seed", "-1")
    page.click("#run-button")
    page.wait_for_function("() => document.getElementById('form-error').textContent.startsWith('error: ')")
    message = page.text_content("#form-error")
    assert message.startswith("error: seed=-1") and "\n" not in message.strip(), message
    assert "Traceback" not in page.content()
    assert page.locator("#runs-table tbody tr").count() == 0

    page.fill("#field-seed", "0")
    page.click("#run-button")
    page.wait_for_selector("#run:not([hidden])")
    # the bar moves: a step between the first and the last is shown while it trains
    wait_for(page, "() => { const m = document.getElementById('progress-text').textContent.match(/step (\\d+) \\/ 200/);"
                   " return m && +m[1] > 0 && +m[1] < 200; }", 90, "a step between the first and the last")
    assert 0 < float(page.evaluate("parseFloat(document.getElementById('progress-bar').style.width)")) < 100
    assert re.search(r"it/s|s/it", page.text_content("#progress-text"))
    wait_for(page, "() => !!document.querySelector('#images img')", 60, "a validation image")
    wait_for(page, "() => document.getElementById('run-state').textContent === 'done'", 90, "the end of the run")

    # the results: the orbit video plays, the splats are drawn, the folder is shown
    page.wait_for_function("() => document.getElementById('video').readyState >= 1", timeout=30_000)
    page.wait_for_function("() => document.getElementById('splats-caption').textContent.includes('Gaussians')", timeout=30_000)
    pixels = canvas_pixels(page, "#splat-view")
    background = np.array([0.17, 0.176, 0.192]) * 255
    drawn = np.abs(pixels - background).sum(-1) > 30
    assert drawn.mean() > 0.01 and pixels.std() > 5, "the 3D view shows nothing"
    assert "a_penguin@" in page.text_content("#folder")
    assert "lucid-launch --config" in page.text_content("#command")
    assert page.locator("#runs-table tbody tr").count() == 1
    assert errors == []
