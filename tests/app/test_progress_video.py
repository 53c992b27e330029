"""The training-progress video: one frame per validation step, written atomically into the run's own
``save/`` folder, from files under ``--outputs`` only."""
import os

import numpy as np
import pytest

from threestudio_lucid.app import progress_video, run_reader
from threestudio_lucid.atomic_files import check_complete_mp4

# one colour per step, far apart so that H.264 keeps them apart
COLOURS = {10: (230, 30, 30), 20: (30, 200, 30), 35: (30, 30, 230)}


def validation_run(root, colours=COLOURS, views=2, size=(24, 40)):
    """A run folder whose ``save/`` holds ``it<step>-<view>.png`` grids of one colour per step."""
    import imageio.v2 as imageio

    run = root / "lucid-ism-toy" / "a_penguin@20261207-000000"
    (run / "save").mkdir(parents=True)
    for step, colour in colours.items():
        for view in range(views):
            imageio.imwrite(run / "save" / f"it{step}-{view}.png", np.full((*size, 3), colour, np.uint8))
    return run


def frames_of(path):
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [np.asarray(frame) for frame in reader]
    finally:
        reader.close()


def test_the_progress_video_is_a_complete_mp4_with_one_frame_per_step_in_order(tmp_path):
    import imageio.v2 as imageio

    run = validation_run(tmp_path)
    made = progress_video.make(str(tmp_path), str(run), run_reader.validation_steps(str(run)))
    path = run / "save" / "progress.mp4"
    assert made["path"] == str(path) and made["steps"] == [10, 20, 35] and made["frames"] == 3
    check_complete_mp4(str(path))  # moov and mdat, the boxes tile the file
    frames = frames_of(path)
    assert len(frames) == 3
    # two 24x40 views stacked: 48x40, padded to 48x48 (H.264's 16-pixel blocks)
    assert frames[0].shape == (48, 48, 3) and (made["height"], made["width"]) == (48, 48)
    for frame, colour in zip(frames, COLOURS.values()):
        assert np.abs(frame[:48, :40].reshape(-1, 3).mean(0) - colour).max() < 20  # each step, in order
    assert sorted(os.listdir(run / "save")) == sorted(["progress.mp4"] + [f"it{s}-{v}.png" for s in COLOURS for v in (0, 1)])
    assert run_reader.results(str(run))["progress_video"]["path"] == str(path)

    # made again after a new step: replaced in place, one frame more
    imageio.imwrite(run / "save" / "it50-0.png", np.full((24, 40, 3), 128, np.uint8))
    again = progress_video.make(str(tmp_path), str(run), run_reader.validation_steps(str(run)))
    assert again["steps"] == [10, 20, 35, 50] and len(frames_of(path)) == 4


def test_no_video_without_images_or_outside_the_outputs(tmp_path):
    empty = tmp_path / "outputs" / "empty"
    (empty / "save").mkdir(parents=True)
    with pytest.raises(progress_video.ProgressVideoError, match="no validation images yet"):
        progress_video.make(str(tmp_path / "outputs"), str(empty), [])
    # a run whose save folder is a link out of --outputs: nothing is written there
    elsewhere = validation_run(tmp_path / "elsewhere")
    linked = tmp_path / "outputs" / "linked"
    linked.mkdir()
    os.symlink(elsewhere / "save", linked / "save")
    with pytest.raises(progress_video.ProgressVideoError, match="not a folder under the app's outputs"):
        progress_video.make(str(tmp_path / "outputs"), str(linked), run_reader.validation_steps(str(linked)))
    assert not (elsewhere / "save" / "progress.mp4").exists()
    # images that are links out of --outputs are not read: a step of such images only is no frame
    run = validation_run(tmp_path / "outputs", colours={10: (200, 0, 0)})
    os.symlink(elsewhere / "save" / "it20-0.png", run / "save" / "it20-0.png")
    made = progress_video.make(str(tmp_path / "outputs"), str(run), run_reader.validation_steps(str(run)))
    assert made["steps"] == [10] and len(frames_of(made["path"])) == 1


def test_the_frame_rate_makes_a_video_of_about_ten_seconds():
    assert [progress_video.frames_per_second(n) for n in (1, 20, 100, 600, 5000)] == [2, 2, 10, 30, 30]
