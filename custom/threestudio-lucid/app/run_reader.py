"""What a run folder (``<exp_root_dir>/<name>/<tag>@<timestamp>/``) and a launch's console hold.

Read-only and cheap: the page polls it every second. Paths are returned absolute; the server turns
them into ``/files/...`` URLs (and refuses any that are not under ``--outputs``).

- progress: the training bar the launcher prints (Lightning's tqdm bar, as in threestudio:
  ``Epoch 0:  75%|...| 15/20 [00:03<00:01, 4.62it/s, train/loss=...]``), from the console's tail;
- the loss curve: ``csv_logs/version_*/metrics.csv`` (a resumed run adds a version; later rows win);
- images: the validation grids ``save/it<k>-<view>.png`` of every step (the newest shown first), the
  progress video made of them (``save/progress.mp4``, :mod:`progress_video`) and ``save/toy_world_eval.png``;
- results: the orbit video ``save/it<k>-test.mp4``, the splats ``save/point_cloud.ply`` (or an
  interrupted run's ``save/it<k>-interrupted/point_cloud.ply``), meshes ``save/it<k>-export/model.*``
  (the plugin's PLY with faces, or threestudio's OBJ with its MTL and texture: :func:`mesh_view`),
  ``save/toy_world_scores.json``; checkpoints ``ckpts/*.ckpt``.
"""
import csv
import glob
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

from . import access, progress_video

BAR = re.compile(
    r"(Epoch \d+|Training|Validation DataLoader \d+|Testing DataLoader \d+|Predicting DataLoader \d+|Validation|Testing|Predicting)"
    r":\s*(?:\d+%)?\|[^|\r\n]*\|\s*(\d+)/(\d+|\?)\s*\[([0-9:]+)<([0-9:?]+),\s*(?:([0-9.]+)(it/s|s/it)|\?it/s)"
)
VALIDATION_IMAGE = re.compile(r"^it(\d+)-(\d+)\.png$")
TEST_VIDEO = re.compile(r"^it(\d+)-test\.mp4$")
INTERRUPTED = re.compile(r"^interrupted-step=(\d+)\.ckpt$")
STEP_CKPT = re.compile(r"step=(\d+)")


def read_tail(path: str, size: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def console_lines(text: str, limit: int = 60) -> List[str]:
    """The console as a terminal shows it: each ``\\r`` rewrites its line (progress bars)."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        shown = raw.rsplit("\r", 1)[-1] if "\r" in raw else raw
        # tqdm's cursor-up codes for nested bars; a browser shows them as garbage
        shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown)
        if shown.strip():
            lines.append(shown)
    return lines[-limit:]


def _seconds(clock: str) -> Optional[float]:
    if "?" in clock:
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


def _bar(match: re.Match) -> Dict[str, Any]:
    label, n, total, elapsed, remaining, rate, unit = match.groups()
    speed = None
    if rate:
        speed = float(rate) if unit == "it/s" else (1.0 / float(rate) if float(rate) > 0 else None)
    return {
        "phase": "training" if label.startswith(("Epoch", "Training")) else label.split()[0].lower(),
        "step": int(n),
        "total": None if total == "?" else int(total),
        "rate": speed,
        "elapsed": _seconds(elapsed),
        "remaining": _seconds(remaining),
    }


def progress_of(console: str, max_steps: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """The last training bar in ``console`` (``{step, total, rate (it/s), elapsed, remaining}``) and
    what the launch is doing now (``phase``: training, validation, testing, predicting). A resumed
    run's bar has no total (``892/?``): ``max_steps`` is the total then, and the time left is
    computed from the rate."""
    training, last = None, None
    for match in BAR.finditer(console):
        last = match
        if match.group(1).startswith(("Epoch", "Training")):
            training = match
    if last is None:
        return None
    out = _bar(training) if training is not None else {"step": None, "total": None, "rate": None,
                                                        "elapsed": None, "remaining": None}
    out["phase"] = _bar(last)["phase"]
    if out["total"] is None and max_steps and max_steps > 0 and out["step"] is not None:
        out["total"] = max_steps
        out["remaining"] = (max_steps - out["step"]) / out["rate"] if out["rate"] else None
    return out


def error_line(console: str) -> str:
    """The one line that says why a launch failed: its ``error: ...`` line (the launcher's bad
    input), else the last ``SomethingError: ...`` line of a traceback, else the last line."""
    lines = [line.strip() for line in console_lines(console, limit=400)]
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[:1000]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line):
            return line[:1000]
    return lines[-1][:1000] if lines else "the launch ended without output"


# ------------------------------------------------------------------------------------------------
# the run folder
# ------------------------------------------------------------------------------------------------
def is_run_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "configs", "parsed.yaml")) or os.path.isfile(os.path.join(path, "cmd.txt"))


def find_run_folders(root: str, depth: int = 4) -> List[str]:
    """Run folders under ``root`` (a folder with ``configs/parsed.yaml`` or ``cmd.txt``), at most
    ``depth`` levels down; dot-folders (the app's own state) are skipped and symlinks not followed."""
    found = []
    root = os.path.abspath(root)
    base_depth = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, _files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(folder, d)))
        if folder != root and is_run_folder(folder):
            found.append(folder)
            dirs[:] = []
            continue
        if folder.count(os.sep) - base_depth >= depth:
            dirs[:] = []
    return found


_CACHE: Dict[Tuple[str, str], Tuple[Tuple[int, int], Any]] = {}


def _cached(path: str, read, what: str = ""):
    """``read(path)``, again only when the file changed (the page asks every second; a run's
    parsed.yaml and metrics.csv are read once per change, not once per request)."""
    try:
        stat = os.stat(path)
    except OSError:
        _CACHE.pop((path, what), None)
        return read(None)
    key = (stat.st_mtime_ns, stat.st_size)
    hit = _CACHE.get((path, what))
    if hit is not None and hit[0] == key:
        return hit[1]
    value = read(path)
    if len(_CACHE) > 4096:
        _CACHE.clear()
    _CACHE[(path, what)] = (key, value)
    return value


def _read_yaml(path: Optional[str]) -> Dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def parsed_config(trial_dir: str) -> Dict[str, Any]:
    """The run's ``configs/parsed.yaml`` (resolved YAML, read as plain YAML)."""
    return _cached(os.path.join(trial_dir, "configs", "parsed.yaml"), _read_yaml)


def _read_csv_column(column: str):
    def read(path: Optional[str]) -> Dict[int, float]:
        points: Dict[int, float] = {}
        if path is None:
            return points
        try:
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    value, step = row.get(column), row.get("step")
                    if value and step:
                        try:
                            points[int(float(step))] = float(value)
                        except ValueError:
                            continue
        except OSError:
            pass
        return points

    return read


def command_of(trial_dir: str) -> Optional[str]:
    """The first line of the run's ``cmd.txt`` (the launcher's command line)."""
    try:
        with open(os.path.join(trial_dir, "cmd.txt"), encoding="utf-8", errors="replace") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def loss_curve(trial_dir: str, column: str = "train/loss", limit: int = 2000) -> List[Tuple[int, float]]:
    """``[(step, value)]`` of ``column`` from every ``csv_logs/version_*`` (later versions win)."""
    points: Dict[int, float] = {}
    versions = glob.glob(os.path.join(glob.escape(trial_dir), "csv_logs", "version_*", "metrics.csv"))
    for path in sorted(versions, key=lambda p: int(re.sub(r"\D", "", os.path.basename(os.path.dirname(p))) or 0)):
        points.update(_cached(path, _read_csv_column(column), what=column))
    curve = sorted(points.items())
    if len(curve) > limit:  # keep the page light: every k-th point, and the last
        k = len(curve) // limit + 1
        curve = curve[::k] + [curve[-1]]
    return curve


def _by_step(folder: str, pattern: re.Pattern) -> List[Tuple[int, List[str]]]:
    """``[(step, [paths])]`` of the files of ``folder`` matching ``pattern`` (its group 1 is the step),
    by step, each step's files in natural order (``it10-2.png`` before ``it10-10.png``)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    by_step: Dict[int, List[str]] = {}
    for name in names:
        m = pattern.match(name)
        if m:
            by_step.setdefault(int(m.group(1)), []).append(name)
    key = lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
    return [(step, [os.path.join(folder, n) for n in sorted(by_step[step], key=key)]) for step in sorted(by_step)]


def _newest(folder: str, pattern: re.Pattern) -> Tuple[Optional[int], List[str]]:
    """The highest step among the files of ``folder`` matching ``pattern`` and those files."""
    found = _by_step(folder, pattern)
    return found[-1] if found else (None, [])


def validation_steps(trial_dir: str) -> List[Tuple[int, List[str]]]:
    """Every step that has validation images, oldest first: ``[(step, [save/it<step>-<view>.png, ...])]``
    (the views in order). What the page's slider steps through and the progress video is made of."""
    return _by_step(os.path.join(trial_dir, "save"), VALIDATION_IMAGE)


def checkpoints(trial_dir: str) -> List[str]:
    """The run's checkpoints, newest first (by modification time)."""
    paths = glob.glob(os.path.join(glob.escape(trial_dir), "ckpts", "*.ckpt"))
    return sorted(paths, key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0, reverse=True)


def _stored_step(path: Optional[str]) -> Optional[int]:
    """The ``global_step`` a Lightning checkpoint holds (memory-mapped, weights only); None unreadable."""
    if path is None:
        return None
    try:
        import torch

        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    except Exception:
        return None
    return int(step) if isinstance(step, int) else None


def resume_checkpoint(trial_dir: str) -> Optional[str]:
    """What Resume continues from: the newest ``interrupted-step=<k>.ckpt`` unless a checkpoint of a later
    state was written after it, else ``last.ckpt``, else the newest checkpoint. A checkpoint written after
    the interrupted one that holds the same ``global_step`` is the same state (Lightning's ModelCheckpoint
    writes ``last.ckpt`` at the end of a run that a Stop ended before its first checkpoint): the interrupted
    one, whose name says the step, is kept."""
    ckpts = checkpoints(trial_dir)
    if not ckpts:
        return None
    interrupted = [c for c in ckpts if INTERRUPTED.match(os.path.basename(c))]
    if interrupted:
        chosen = interrupted[0]
        try:
            at = os.path.getmtime(chosen)
            later = [c for c in ckpts if c != chosen and os.path.getmtime(c) >= at]
        except OSError:
            later = []
        step = _cached(chosen, _stored_step, what="global_step") if later else None
        if not later or (step is not None and all(_cached(c, _stored_step, what="global_step") == step
                                                   for c in later)):
            return chosen
    last = os.path.join(trial_dir, "ckpts", "last.ckpt")
    return last if os.path.isfile(last) else ckpts[0]


def ckpt_step(path: str) -> Optional[int]:
    m = STEP_CKPT.search(os.path.basename(path))
    return int(m.group(1)) if m else None


def exports(trial_dir: str) -> List[Dict[str, Any]]:
    """``save/it<k>-export/`` folders, newest first: ``{step, folder, files: {ply, obj, glb, mtl, and
    images by name, e.g. texture_kd.jpg}}``."""
    out = []
    for folder in glob.glob(os.path.join(glob.escape(trial_dir), "save", "it*-export")):
        m = re.match(r"^it(\d+)-export$", os.path.basename(folder))
        if not m or not os.path.isdir(folder):
            continue
        files = {}
        for name in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(name)
            if stem == "point_cloud":
                continue
            if ext.lower() in (".ply", ".obj", ".glb", ".mtl", ".png", ".jpg", ".jpeg"):
                files[ext.lower().lstrip(".") if ext.lower() in (".ply", ".obj", ".glb", ".mtl") else name] = os.path.join(folder, name)
        if files:
            out.append({"step": int(m.group(1)), "folder": folder, "files": files})
    return sorted(out, key=lambda e: e["step"], reverse=True)


HEAD_BYTES = 65536  # where a PLY's header and an OBJ's ``mtllib`` / ``usemtl`` lines are looked for


def _read_head(path: Optional[str]) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES).decode("latin-1")
    except OSError:
        return ""


def ply_has_faces(path: str) -> bool:
    """Whether the PLY's header declares a ``face`` element with at least one face."""
    head = _cached(path, _read_head, what="head")
    if not head.startswith("ply") or "end_header" not in head:
        return False
    for line in head.split("end_header", 1)[0].splitlines():
        words = line.split()
        if len(words) == 3 and words[:2] == ["element", "face"]:
            return words[2].isdigit() and int(words[2]) > 0
    return False


def _read_mtl(path: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """``{material: {"Kd": [r, g, b], "map_Kd": name}}`` of an MTL file (its first 64 kB)."""
    materials: Dict[str, Dict[str, Any]] = {}
    current: Optional[Dict[str, Any]] = None
    for line in _read_head(path).splitlines():
        key, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if key == "newmtl":
            current = materials.setdefault(rest, {})
        elif current is None or not rest:
            continue
        elif key == "Kd":
            try:
                rgb = [float(x) for x in rest.split()[:3]]
            except ValueError:
                continue
            if len(rgb) == 3 and all(math.isfinite(x) for x in rgb):
                current["Kd"] = [min(1.0, max(0.0, x)) for x in rgb]
        elif key == "map_Kd":
            # options (-s 1 1 1, -clamp on, ...) come before the file name: it is then the last word
            current["map_Kd"] = rest.split()[-1] if rest.startswith("-") else rest
    return materials


def _beside(folder: str, name: Optional[str]) -> Optional[str]:
    """The file ``name`` (as an OBJ or MTL names it) in ``folder`` or below it, by ``access.py``'s
    rules: no ``..``, no absolute path, no dot-file, no symlink out of ``folder``; else None."""
    if not name:
        return None
    return access.resolve_under(folder, name.strip().replace("\\", "/"))


def mesh_view(files: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """What the page's mesh view draws of an export folder's ``files`` (as :func:`exports` lists them):
    the PLY when it has faces (the plugin's ``--export``), else the OBJ (threestudio's exporters:
    ``obj-mtl`` with ``mtllib model.mtl`` and the MTL's ``map_Kd texture_kd.jpg`` or ``Kd``; ``obj`` with
    vertex colours). ``{kind, path, mtl, texture, kd}`` (absolute paths; ``mtl`` and ``texture`` only
    when they are in the export folder, by :func:`_beside`), or None when there is neither."""
    ply, obj = files.get("ply"), files.get("obj")
    if ply and ply_has_faces(ply):
        return {"kind": "ply", "path": ply, "mtl": None, "texture": None, "kd": None}
    if not obj:
        return None
    folder = os.path.dirname(obj)
    mtllib, usemtl = None, None
    for line in _cached(obj, _read_head, what="head").splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "mtllib" and mtllib is None and rest.strip():
            mtllib = rest.strip()
        elif key == "usemtl" and usemtl is None and rest.strip():
            usemtl = rest.strip()
    mtl = _beside(folder, mtllib)
    materials = _cached(mtl, _read_mtl, what="mtl") if mtl else {}
    material = materials.get(usemtl) if usemtl in materials else next(iter(materials.values()), {})
    texture = _beside(os.path.dirname(mtl), material.get("map_Kd")) if mtl else None
    return {"kind": "obj", "path": obj, "mtl": mtl, "texture": texture, "kd": material.get("Kd")}


def splats_file(trial_dir: str) -> Optional[str]:
    """The splats to show: the final ``save/point_cloud.ply``, else the newest interrupted one."""
    save = os.path.join(trial_dir, "save")
    final = os.path.join(save, "point_cloud.ply")
    if os.path.isfile(final):
        return final
    found = []
    for path in glob.glob(os.path.join(glob.escape(save), "it*-interrupted", "*.ply")):
        m = re.search(r"it(\d+)-interrupted", path)
        found.append((int(m.group(1)) if m else -1, path))
    return max(found)[1] if found else None


def scores(trial_dir: str) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(trial_dir, "save", "toy_world_scores.json"), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str))}


def results(trial_dir: str) -> Dict[str, Any]:
    """Everything the page shows of a run folder (absolute paths)."""
    save = os.path.join(trial_dir, "save")
    steps = validation_steps(trial_dir)
    image_step, images = steps[-1] if steps else (None, [])
    video_step, videos = _newest(save, TEST_VIDEO)
    eval_png = os.path.join(save, "toy_world_eval.png")
    ckpts = checkpoints(trial_dir)
    curve = loss_curve(trial_dir)
    return {
        "images": images,
        "image_step": image_step,
        "image_steps": steps,
        "progress_video": progress_video.existing(trial_dir),
        "video": videos[0] if videos else None,
        "video_step": video_step,
        "splats": splats_file(trial_dir),
        "exports": exports(trial_dir),
        "scores": scores(trial_dir),
        "toy_world_eval": eval_png if os.path.isfile(eval_png) else None,
        "checkpoints": [os.path.basename(c) for c in ckpts],
        "resume_from": resume_checkpoint(trial_dir),
        "loss": curve,
        "last_step": curve[-1][0] if curve else None,
    }


def summary(trial_dir: str) -> Dict[str, Any]:
    """What the runs list shows of a folder the app did not start."""
    cfg = parsed_config(trial_dir)
    system = cfg.get("system") or {}
    prompt = (system.get("prompt_processor") or {}).get("prompt")
    guidance = system.get("guidance_type", "")
    save = os.path.join(trial_dir, "save")
    finished = os.path.isfile(os.path.join(save, "point_cloud.ply"))
    return {
        "prompt": prompt if isinstance(prompt, str) else os.path.basename(trial_dir),
        "name": cfg.get("name") or os.path.basename(os.path.dirname(trial_dir)),
        "guidance_type": guidance,
        "max_steps": (cfg.get("trainer") or {}).get("max_steps"),
        "state": "done" if finished else ("stopped" if checkpoints(trial_dir) else "unknown"),
        "modified": os.path.getmtime(trial_dir),
    }
