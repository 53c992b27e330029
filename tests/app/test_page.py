"""lucid-app's page in a real headless Chromium: the short run every test suite makes (well under 30 s).

A toy run is started from the page (the config edited in the page's editor), the progress bar moves,
a validation image appears, the run ends with its video, its splats in the 3D view (a canvas that
is not blank) and its validation steps on a slider, from which the progress video is made; before that,
a bad option is refused with the launcher's own one-line error. A run folder's older validation step
on the slider, and the progress video with its download (about 2 s)."""
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
    # the run's validation steps on the slider, and its progress video: one frame for each
    n_steps = int(page.get_attribute("#image-step", "max")) + 1
    assert n_steps >= 2 and page.input_value("#image-step") == str(n_steps - 1)
    page.click("#make-progress-video")
    page.wait_for_function("() => /frames/.test(document.getElementById('progress-video-state').textContent)", timeout=30_000)
    assert page.text_content("#progress-video-state").startswith(f"{n_steps} frames (steps ")
    assert page.locator("#runs-table tbody tr").count() == 1
    assert errors == []


def threestudio_textured_cube(folder):
    """What threestudio's mesh exporter writes in format obj-mtl (``save_obj`` / ``_save_mtl``): model.obj
    (``mtllib``, ``usemtl``, ``v``, ``vt`` written as 1 - v, ``f a/b/`` corners), model.mtl with ``map_Kd``
    and texture_kd.jpg. The texture's top half is orange, its bottom half blue, and every UV of the cube
    lies in the top half (OBJ's v = 0 is the image's bottom row): drawn orange, never blue, never grey.
    Inside each face's UV rectangle, away from its corners, is a green square: every vertex's UV is on
    orange, so green shows only when the texture is mapped per pixel, not sampled per vertex."""
    import imageio.v2 as imageio

    folder.mkdir(parents=True)
    texture = np.zeros((64, 64, 3), np.uint8)
    texture[:32], texture[32:] = (240, 140, 20), (20, 40, 230)
    texture[12:20, 24:40] = (40, 200, 60)  # the UVs span rows 6 to 25 and columns 6 to 57
    imageio.imwrite(folder / "texture_kd.jpg", texture, quality=95)
    corners = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    lines = ["mtllib model.mtl", "g object", "usemtl default"] + [f"v {x} {y} {z}" for x, y, z in corners]
    uv_rows = [(0.1, 0.6), (0.9, 0.6), (0.9, 0.9), (0.1, 0.9)]  # (u, 1 - v) as threestudio keeps them
    lines += [f"vt {u} {1.0 - v}" for _ in quads for u, v in ((u, 1.0 - r) for u, r in uv_rows)]
    for q, quad in enumerate(quads):
        for tri in ((0, 1, 2), (0, 2, 3)):
            lines.append("f" + "".join(f" {quad[k] + 1}/{4 * q + k + 1}/" for k in tri))
    (folder / "model.obj").write_text("\n".join(lines) + "\n")
    (folder / "model.mtl").write_text("newmtl default\nKa 0.0 0.0 0.0\nmap_Kd texture_kd.jpg\nKs 0.0 0.0 0.0\n")


def test_a_threestudio_obj_export_is_drawn_with_its_texture_and_a_bad_one_is_one_line(browser, serve_app, tmp_path):
    from urllib.parse import quote

    runs = {}
    for name, obj in (("a_cat", None), ("a_dog", "")):  # a textured export; an empty model.obj
        run = tmp_path / "outputs" / "dreamfusion-sd" / f"{name}@20261207-000000"
        (run / "configs").mkdir(parents=True)
        (run / "configs" / "parsed.yaml").write_text(f"name: dreamfusion-sd\nsystem:\n  prompt_processor:\n    prompt: {name}\n")
        threestudio_textured_cube(run / "save" / "it10000-export")
        if obj is not None:
            (run / "save" / "it10000-export" / "model.obj").write_text(obj)
        runs[name] = quote("d:" + str(run.relative_to(tmp_path / "outputs")), safe="")
    url = serve_app()
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors = page_errors(page)
    page.goto(f"{url}#run={runs['a_cat']}")
    page.wait_for_function("() => /triangles/.test(document.getElementById('mesh-caption').textContent)", timeout=20_000)
    assert page.text_content("#mesh-caption") == "Mesh: 8 vertices, 12 triangles (model.obj, texture_kd.jpg)"
    pixels = canvas_pixels(page, "#mesh-view")
    drawn = np.abs(pixels - np.array([0.17, 0.176, 0.192]) * 255).sum(-1) > 30
    r, g, b = np.moveaxis(pixels[drawn], -1, 0)
    orange, green = ((r > g + 30) & (g > b + 30)).mean(), ((g > r + 40) & (g > b + 40)).mean()
    blue = ((b > r + 60) & (b > g + 60)).mean()
    # the texture's orange with the green squares inside the faces (per pixel), never the bottom half's blue
    assert drawn.mean() > 0.05 and orange > 0.3 and green > 0.05 and blue == 0, (drawn.mean(), orange, green, blue)
    hrefs = {a.text_content(): a.get_attribute("href") for a in page.locator("#downloads a").all()}
    assert set(hrefs) == {"OBJ", "MTL", "texture_kd.jpg"}
    for label, start in (("OBJ", b"mtllib model.mtl"), ("MTL", b"newmtl default")):
        response = page.request.get(url.rstrip("/") + hrefs[label])
        assert response.status == 200 and "attachment" in response.headers["content-disposition"]
        assert response.body().startswith(start), label
    # the reader's forms: v/vt, v//vn, v/vt/vn, a/b/, negative indices, polygons, comments, unknown lines
    parsed = page.evaluate("""() => { const p = window.LucidViewer.parseObj;
        const o = p('# a quad\\no quad\\nv 0 0 0 1 0 0\\nv 1 0 0 0 1 0\\nv 1 1 0 0 0 1\\nv 0 1 0 1 1 1\\nvt 0 0\\nvn 0 0 1\\n'
                    + 's off\\nf -4/1/1 -3//-1 -2/-1/ 4 # the last corner plain\\nl 1 2\\n');
        const bad = [];
        for (const t of ['', 'v 0 0 0\\n', 'v 0 0 0\\nf 1 2 3\\n', 'v 0 0 0\\nf 0 0 0\\n', 'v 1 2\\n', 'f -1 -1 -1\\n'])
          try { p(t); bad.push(null); } catch (e) { bad.push(e.message); }
        return { tris: Array.from(o.triangles), n: o.vertices, colors: Array.from(o.colors.slice(0, 6)), bad }; }""")
    assert parsed["tris"] == [0, 1, 2, 0, 2, 3] and parsed["n"] == 4 and parsed["colors"] == [1, 0, 0, 0, 1, 0]
    assert all(message and "\n" not in message for message in parsed["bad"]), parsed["bad"]
    # without UVs the colour falls back per vertex (here grey, no texture on the GPU); with them it is mapped
    loads = page.evaluate("""() => { const v = document.getElementById('mesh-view').lucidView, image = new ImageData(2, 2);
        const a = v.loadObj('v 0 0 0\\nv 1 0 0\\nv 0 1 0\\nf 1 2 3\\n', { texture: image }), plain = v.texture === null;
        const b = v.loadObj('v 0 0 0\\nv 1 0 0\\nv 0 1 0\\nvt 0 0\\nf 1/1 2/1 3/1\\n', { texture: image });
        return [a.colour, plain, b.colour, v.texture !== null]; }""")
    assert loads == ["grey", True, "texture", True], loads
    # an empty model.obj: one line in the caption, no exception
    page.evaluate(f"() => {{ location.hash = 'run={runs['a_dog']}'; }}")
    page.wait_for_function("() => /cannot show/.test(document.getElementById('mesh-caption').textContent)", timeout=20_000)
    assert page.text_content("#mesh-caption") == "Mesh: cannot show model.obj: the OBJ has no vertices"
    assert page.evaluate("() => document.getElementById('mesh-view').lucidView.texture") is None  # released
    assert errors == []


def test_the_slider_shows_an_earlier_steps_images_and_the_progress_video_is_made_from_them(browser, serve_app, tmp_path):
    """A run folder with validation images at steps 10, 20 and 30 (one colour each) and its orbit video:
    the page opens on the newest step, the slider shows an older one, follows a new step only when it is
    at the end, and the progress video is made on request (one frame per step) with its download. The
    form fills a LucidDreamer config's prompt and Point-E init prompt."""
    import imageio.v2 as imageio
    from urllib.parse import quote

    from .test_progress_video import frames_of

    run = tmp_path / "outputs" / "lucid-ism-toy" / "a_penguin@20261207-000000"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "parsed.yaml").write_text("name: lucid-ism-toy\nsystem:\n  prompt_processor:\n    prompt: a penguin\n")
    save = run / "save"
    save.mkdir()
    for step, colour in ((10, (220, 40, 40)), (20, (40, 200, 40)), (30, (40, 40, 220))):
        imageio.imwrite(save / f"it{step}-0.png", np.full((16, 48, 3), colour, np.uint8))
    imageio.mimwrite(save / "it30-test.mp4", [np.full((16, 16, 3), 90, np.uint8)] * 2, fps=2, macro_block_size=16)
    url = serve_app()
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors = page_errors(page)
    page.goto(f"{url}#run={quote('d:' + str(run.relative_to(tmp_path / 'outputs')), safe='')}")
    page.wait_for_function("() => /step 30/.test(document.getElementById('images-caption').textContent)", timeout=20_000)
    shown = lambda: page.get_attribute("#images img", "src").split("?")[0].rsplit("/", 1)[-1]
    assert page.text_content("#images-caption") == "Validation images: step 30, 3 of 3 steps, the newest (rgb | depth | alpha)"
    assert shown() == "it30-0.png" and page.input_value("#image-step") == "2"

    page.locator("#image-step").fill("0")  # the slider to the oldest step
    assert shown() == "it10-0.png" and page.text_content("#images-caption").startswith("Validation images: step 10, 1 of 3")
    # a new step: the slider stays where the user put it; at the end again, it follows new steps
    imageio.imwrite(save / "it40-0.png", np.full((16, 48, 3), 200, np.uint8))
    page.locator("#runs-table tbody tr").first.click()  # a refresh now, not after the 5 s of a quiet page
    page.wait_for_function("() => document.getElementById('image-step').max === '3'", timeout=10_000)
    assert shown() == "it10-0.png"
    page.locator("#image-step").fill("3")
    assert shown() == "it40-0.png"
    imageio.imwrite(save / "it50-0.png", np.full((16, 48, 3), 100, np.uint8))
    page.locator("#runs-table tbody tr").first.click()
    page.wait_for_function("() => /it50-0.png/.test(document.querySelector('#images img').src)", timeout=10_000)

    # the progress video: made on request, one frame per step, offered as a download and played
    page.click("#make-progress-video")
    page.wait_for_function("() => /frames/.test(document.getElementById('progress-video-state').textContent)", timeout=20_000)
    assert page.text_content("#progress-video-state") == "5 frames (steps 10 to 50), 2 frames a second"
    href = page.get_attribute("#progress-video-links a", "href")
    response = page.request.get(url.rstrip("/") + href)
    assert response.status == 200 and "attachment" in response.headers["content-disposition"]
    assert len(frames_of(save / "progress.mp4")) == 5
    page.wait_for_function("() => document.getElementById('progress-video').readyState >= 1", timeout=10_000)
    assert page.text_content("#make-progress-video") == "Remake progress video"
    # the orbit video has its download too
    assert page.get_attribute("#video-links a", "href").split("?")[0].endswith("/it30-test.mp4")

    # the form: a LucidDreamer config brings its prompt and its Point-E init prompt
    page.select_option("#config", "lucid/luciddreamer/cat_armor")
    page.wait_for_function("() => !!document.getElementById('field-init_prompt') && "
                           "document.getElementById('field-init_prompt').value === 'a cat.'")
    assert page.input_value("#prompt") == "a DSLR photo of a cat wearing armor."
    assert errors == []
