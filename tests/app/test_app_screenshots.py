"""scripts/app_screenshots.py (slow: a real 400-step run from the page, its export and progress video; here, not
in tests/scripts, because it drives the app tests' browser: a process holds one Playwright session): it writes
both pictures of the page, the finished one taller (its videos, mesh and scores)."""
import numpy as np
import pytest
from PIL import Image
from repo_scripts import load_repo_script

pytestmark = pytest.mark.slow


def test_both_pictures_are_taken_through_the_page(browser, tmp_path):
    shots = load_repo_script("scripts/app_screenshots.py")
    assert shots.main(["--out", str(tmp_path), "--steps", "400"], browser=browser) == 0
    running = np.asarray(Image.open(tmp_path / "app_running.png").convert("RGB"), dtype=np.float32)
    done = np.asarray(Image.open(tmp_path / "app_done.png").convert("RGB"), dtype=np.float32)
    assert running.shape[1] == done.shape[1] == shots.VIEWPORT["width"]
    assert done.shape[0] > running.shape[0] > 1000  # the finished run adds its videos, mesh and scores
    assert running.std() > 10 and done.std() > 10  # not blank pages
