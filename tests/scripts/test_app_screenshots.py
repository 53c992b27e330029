"""scripts/app_screenshots.py (slow: a real 400-step run from the page, its export and progress video): it writes
both pictures of the page, the running one with the step slider and the live splats, the finished one with
its videos, mesh and scores, and says in one line what the page failed to show."""
import numpy as np
import pytest
from PIL import Image
from repo_scripts import load_repo_script

pytestmark = pytest.mark.slow


def test_both_pictures_are_taken_through_the_page(tmp_path):
    pytest.importorskip("playwright")
    shots = load_repo_script("scripts/app_screenshots.py")
    try:
        shots.chromium()
    except SystemExit as e:
        pytest.skip(str(e))
    assert shots.main(["--out", str(tmp_path), "--steps", "400"]) == 0
    running = np.asarray(Image.open(tmp_path / "app_running.png").convert("RGB"), dtype=np.float32)
    done = np.asarray(Image.open(tmp_path / "app_done.png").convert("RGB"), dtype=np.float32)
    assert running.shape[1] == done.shape[1] == shots.VIEWPORT["width"]
    assert done.shape[0] > running.shape[0] > 1000  # the finished run adds its videos, mesh and scores
    assert running.std() > 10 and done.std() > 10  # not blank pages
