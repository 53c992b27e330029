"""The training-progress video: the run's validation images, one frame per validation step.

LucidDreamer's demo returns a "process video" (``process_videos/video_rgb.mp4``) beside the final orbit,
rendered during training and written when training ends. Here the frames are the images the run
already writes at every validation step (``save/it<k>-<view>.png``, rgb | depth | alpha from the same
fixed cameras each time), so nothing is rendered twice and the video can be made at any moment, while
the run trains too: the page asks for it, and :func:`make` writes ``save/progress.mp4`` in the run's own
folder (atomically: a temporary in ``save/``, checked to be a complete MP4, then renamed).

A frame is a step's first :data:`MAX_VIEWS` views stacked top to bottom, on black, every frame padded to
the same size (a multiple of 16, as H.264 wants). The frame rate makes the video last about
:data:`SECONDS` seconds (within 2-30 frames a second), whatever the number of steps.
"""
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import access

FILE_NAME = "progress.mp4"
MAX_VIEWS = 4
SECONDS = 10.0
BLOCK = 16


class ProgressVideoError(ValueError):
    """Why no video was made, in one line."""


def target(trial_dir: str) -> str:
    return os.path.join(trial_dir, "save", FILE_NAME)


def existing(trial_dir: str) -> Optional[Dict[str, Any]]:
    """``{path, time}`` of the run's progress video when there is one (``time``: its modification time)."""
    path = target(trial_dir)
    try:
        return {"path": path, "time": os.path.getmtime(path)}
    except OSError:
        return None


def frames_per_second(n_frames: int) -> int:
    return int(min(30, max(2, round(n_frames / SECONDS))))


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _rgb(path: str):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _frame(paths: Sequence[str], height: int, width: int):
    import numpy as np

    frame = np.zeros((height, width, 3), np.uint8)
    top = 0
    for path in paths:
        image = _rgb(path)
        h, w = image.shape[:2]
        frame[top:top + h, :w] = image
        top += h
    return frame


def _size(paths: Sequence[str]) -> Tuple[int, int]:
    from PIL import Image

    height, width = 0, 0
    for path in paths:
        with Image.open(path) as image:  # reads the header only
            w, h = image.size
        height, width = height + h, max(width, w)
    return height, width


def make(root: str, trial_dir: str, steps: List[Tuple[int, List[str]]]) -> Dict[str, Any]:
    """Write ``<trial_dir>/save/progress.mp4`` from ``steps`` (``run_reader.validation_steps``: ``[(step,
    [image paths])]``), one frame per step. Only files under ``root`` (``--outputs``, by ``access.py``'s
    rules) are read, and the video is written only into a ``save/`` folder under ``root``.
    Returns ``{path, steps: [k, ...], frames, fps, width, height}``; raises
    :class:`ProgressVideoError` when there is nothing to make it from."""
    import imageio.v2 as imageio

    from ..atomic_files import check_complete_mp4, temporary_path

    save = os.path.join(trial_dir, "save")
    rel = access.relative_inside(root, save)
    if not rel or access.resolve_folder_under(root, rel) is None:
        raise ProgressVideoError("the run's save folder is not a folder under the app's outputs")
    usable = []
    for step, paths in steps:
        served = [p for p in paths if (r := access.relative_inside(root, p)) and access.resolve_under(root, r)]
        if served:
            usable.append((step, served[:MAX_VIEWS]))
    if not usable:
        raise ProgressVideoError("no validation images yet: the run writes them every trainer.val_check_interval steps")
    sizes = []
    for step, paths in usable:
        try:
            sizes.append(_size(paths))
        except OSError as e:
            raise ProgressVideoError(f"cannot read the images of step {step}: {e}") from None
    height, width = _padded(max(h for h, _ in sizes)), _padded(max(w for _, w in sizes))
    fps = frames_per_second(len(usable))
    path = os.path.join(save, FILE_NAME)
    with temporary_path(path, verify=check_complete_mp4) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=BLOCK, ffmpeg_log_level="error")
        try:
            for _step, paths in usable:
                writer.append_data(_frame(paths, height, width))
        finally:
            writer.close()
    return {"path": path, "steps": [step for step, _ in usable], "frames": len(usable), "fps": fps,
            "width": width, "height": height}
