"""``lucid-report RUN_OR_SWEEP_DIR... --out DIR``: one static HTML page comparing runs, per prompt.

Each argument is a sweep folder (``lucid-sweep``'s, read through its ``sweep.json``), a run folder (a
launch's trial folder, with ``configs/parsed.yaml``), or any folder holding run folders. Per prompt the
page shows the methods side by side: the last test video (``save/it*-test.mp4``), the last validation
images, and a table with sortable columns: toy-world scores where the run was on a toy world
(``save/toy_world_scores.json``), the CLIP score of the test renders against the prompt when
``--clip MODEL`` is given (a transformers CLIP: 100 x the mean cosine similarity of image and text
embeddings over the test frames), the run's time (from the sweep), last step, Gaussian count, and the
config values that differ between that prompt's runs. Loss and metric curves from ``csv_logs`` are
plotted per prompt. Everything the page shows is copied into ``DIR/assets`` (the page opens offline).
"""
import argparse
import csv
import glob
import html
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from .atomic_files import copy_file, temporary_path, write_text
from .errors import StorageError

OUT_HINT = "free space there or give --out a folder on a disk with room"

PLOTTED = ("train/loss", "train/grad_norm", "gauss_num")
SCORE_KEYS = ("psnr", "iou", "sharpness", "consistency", "janus")
# config keys that name the run rather than configure it (never shown as differences)
RUN_IDENTITY = {"system.prompt_processor.prompt", "exp_root_dir", "exp_dir", "trial_dir", "trial_name", "timestamp",
                "name", "tag", "seed", "resume", "use_timestamp", "cmd"}


class ReportError(ValueError):
    """A bad report input; the message names it."""


def find_runs(paths: Sequence[str]) -> List[Dict[str, Any]]:
    """Runs under ``paths``: ``{trial_dir, prompt?, config?, seed?, seconds?, state?}``."""
    runs: Dict[str, Dict[str, Any]] = {}
    for path in paths:
        if not os.path.isdir(path):
            raise ReportError(f"{path!r} is not a folder: give run folders or sweep folders")
        manifest = os.path.join(path, "sweep.json")
        if os.path.isfile(manifest):
            with open(manifest, encoding="utf-8") as f:
                for run in json.load(f)["runs"]:
                    if os.path.isdir(run["trial_dir"]):
                        runs[os.path.abspath(run["trial_dir"])] = dict(run)
            continue
        found = [os.path.dirname(os.path.dirname(p)) for p in
                 glob.glob(os.path.join(glob.escape(path), "**", "configs", "parsed.yaml"), recursive=True)]
        for trial in found:
            runs.setdefault(os.path.abspath(trial), {"trial_dir": os.path.abspath(trial)})
    if not runs:
        raise ReportError(f"no runs under {', '.join(paths)}: a run folder holds configs/parsed.yaml")
    return [runs[k] for k in sorted(runs)]


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def read_metrics(trial: str) -> Dict[str, List[tuple]]:
    """``{column: [(step, value), ...]}`` from every ``csv_logs/*/metrics.csv`` of the run."""
    series: Dict[str, List[tuple]] = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(trial), "csv_logs", "*", "metrics.csv"))):
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                for key, value in row.items():
                    if key in ("step", "epoch") or value in (None, "") or step in (None, ""):
                        continue
                    try:
                        series.setdefault(key, []).append((int(float(step)), float(value)))
                    except ValueError:
                        continue
    return series


def last_of(pattern: str) -> Optional[str]:
    """The file matching ``pattern`` (with ``{it}``) at the largest iteration."""
    best, best_it = None, -1
    for path in glob.glob(pattern.replace("{it}", "*")):
        m = re.search(r"it(\d+)", os.path.basename(path))
        if m and int(m.group(1)) > best_it:
            best, best_it = path, int(m.group(1))
    return best


def describe_run(run: Dict[str, Any]) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    trial = run["trial_dir"]
    cfg = OmegaConf.to_container(OmegaConf.load(os.path.join(trial, "configs", "parsed.yaml")), resolve=False)
    save = os.path.join(trial, "save")
    metrics = read_metrics(trial)
    scores = {}
    if os.path.isfile(os.path.join(save, "toy_world_scores.json")):
        with open(os.path.join(save, "toy_world_scores.json"), encoding="utf-8") as f:
            scores = {k: v for k, v in json.load(f).items() if k in SCORE_KEYS or k == "variant"}
    video = last_of(os.path.join(glob.escape(save), "it{it}-test.mp4"))
    val_it = last_of(os.path.join(glob.escape(save), "it{it}-0.png"))
    val = sorted(glob.glob(val_it.replace("-0.png", "-*.png"))) if val_it else []
    steps = [s for values in metrics.values() for s, _ in values]
    gauss = metrics.get("gauss_num", [])
    return {
        **run,
        "prompt": run.get("prompt") or cfg.get("system", {}).get("prompt_processor", {}).get("prompt", "?"),
        "method": run.get("config") or cfg.get("name", os.path.basename(os.path.dirname(trial))),
        "seed": run.get("seed", cfg.get("seed")),
        "config": flatten(cfg),
        "scores": scores,
        "metrics": metrics,
        "video": video,
        "validation": val,
        "test_frames": sorted(glob.glob(os.path.join(glob.escape(video[:-4]), "*.png"))) if video else [],
        "last_step": max(steps) if steps else None,
        "gaussians": int(gauss[-1][1]) if gauss else None,
    }


def clip_scores(runs: List[Dict[str, Any]], model_path: str, max_frames: int = 8) -> None:
    """Adds ``scores["clip"]``: 100 x mean cosine(image, prompt) over up to ``max_frames`` test frames."""
    import imageio.v2 as imageio
    import torch
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(model_path).eval()
        processor = CLIPProcessor.from_pretrained(model_path)
    except OSError as e:
        raise ReportError(f"--clip {model_path!r} is not a loadable CLIP model folder or hub id: {e}") from None
    for run in runs:
        frames = run["test_frames"]
        if not frames:
            continue
        pick = [frames[i * len(frames) // max_frames] for i in range(min(max_frames, len(frames)))]
        images = [imageio.imread(p)[..., :3] for p in pick]
        with torch.no_grad():
            inputs = processor(text=[run["prompt"]], images=images, return_tensors="pt", padding=True)
            # the forward's projected embeddings: get_*_features changed their return type in transformers 5
            outputs = model(**inputs)
            image, text = outputs.image_embeds, outputs.text_embeds
            image = image / image.norm(dim=-1, keepdim=True)
            text = text / text.norm(dim=-1, keepdim=True)
        run["scores"]["clip"] = float(100.0 * (image @ text.T).mean())


def plot_curves(runs: List[Dict[str, Any]], path: str) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in PLOTTED if any(k in r["metrics"] for r in runs)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for run in runs:
            points = run["metrics"].get(key, [])
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], label=f"{run['method']} s{run['seed']}")
        ax.set_title(key)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    try:
        with temporary_path(path, hint=OUT_HINT) as tmp:  # matplotlib writes by path (format from the extension)
            fig.savefig(tmp, dpi=80)
    finally:
        plt.close(fig)
    return path


SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.order !== "asc";
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value || a.cells[col].textContent;
      var y = b.cells[col].dataset.value || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? "asc" : "desc";
  });
});
"""


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return "" if value is None else str(value)


def write_report(runs: List[Dict[str, Any]], out: str) -> str:
    assets = os.path.join(out, "assets")
    os.makedirs(assets, exist_ok=True)

    def asset(path: Optional[str], name: str) -> Optional[str]:
        if not path:
            return None
        target = os.path.join(assets, name)
        copy_file(path, target, hint=OUT_HINT)
        return os.path.relpath(target, out)

    prompts = sorted({r["prompt"] for r in runs})
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lucid-report</title><style>",
             "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse;margin:.5em 0}",
             "td,th{border:1px solid #bbb;padding:3px 7px;font-size:13px} th{cursor:pointer;background:#eee}",
             ".runs{display:flex;flex-wrap:wrap;gap:12px} .run{border:1px solid #ccc;padding:6px}",
             ".run img{height:96px} video{width:256px;display:block}",
             "</style></head><body>", f"<h1>lucid-report: {len(runs)} run{'s' * (len(runs) != 1)}, "
             f"{len(prompts)} prompt{'s' * (len(prompts) != 1)}</h1>"]
    for p_index, prompt in enumerate(prompts):
        group = sorted((r for r in runs if r["prompt"] == prompt), key=lambda r: (r["method"], str(r["seed"])))
        keys = sorted({k for r in group for k in r["config"]})
        differ = [k for k in keys if len({json.dumps(r["config"].get(k), sort_keys=True, default=str) for r in group}) > 1
                  and k not in RUN_IDENTITY]
        score_keys = [k for k in (*SCORE_KEYS, "clip") if any(k in r["scores"] for r in group)]
        parts.append(f"<section class='prompt'><h2>{html.escape(prompt)}</h2><div class='runs'>")
        for i, run in enumerate(group):
            tag = f"p{p_index}-r{i}"
            parts.append(f"<div class='run' data-run='{html.escape(run['trial_dir'])}'>"
                         f"<b>{html.escape(str(run['method']))}</b> seed {html.escape(str(run['seed']))}")
            video = asset(run["video"], f"{tag}-test.mp4")
            if video:
                parts.append(f"<video controls loop muted src='{html.escape(video)}'></video>")
            for j, image in enumerate(run["validation"][:4]):
                parts.append(f"<img alt='validation' src='{html.escape(asset(image, f'{tag}-val{j}.png'))}'>")
            if run.get("state") not in (None, "done"):
                parts.append(f"<div class='state'>{html.escape(str(run['state']))}: {html.escape(str(run.get('error')))}</div>")
            parts.append("</div>")
        parts.append("</div><table class='sortable'><thead><tr><th>method</th><th>seed</th>")
        parts += [f"<th>{html.escape(k)}</th>" for k in score_keys]
        parts.append("<th>time s</th><th>last step</th><th>Gaussians</th>")
        parts += [f"<th>{html.escape(k)}</th>" for k in differ]
        parts.append("</tr></thead><tbody>")
        for run in group:
            cells = [run["method"], run["seed"], *[run["scores"].get(k) for k in score_keys], run.get("seconds"),
                     run["last_step"], run["gaussians"], *[run["config"].get(k) for k in differ]]
            parts.append("<tr>" + "".join(f"<td data-value='{html.escape(fmt(c))}'>{html.escape(fmt(c))}</td>"
                                          for c in cells) + "</tr>")
        parts.append("</tbody></table>")
        plot = plot_curves(group, os.path.join(assets, f"p{p_index}-curves.png"))
        if plot:
            parts.append(f"<img class='curves' alt='curves' src='{html.escape(os.path.relpath(plot, out))}'>")
        parts.append("</section>")
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>")
    index = os.path.join(out, "index.html")
    write_text(index, "\n".join(parts), hint=OUT_HINT)
    return index


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lucid-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep folders, run folders, or folders holding runs")
    parser.add_argument("--out", required=True, help="where index.html and assets/ go")
    parser.add_argument("--clip", help="a CLIP model (hub id or local folder) to score test renders against the prompt")
    args = parser.parse_args(argv)
    try:
        runs = [describe_run(r) for r in find_runs(args.paths)]
        if args.clip:
            clip_scores(runs, args.clip)
        index = write_report(runs, args.out)
    except (ReportError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"lucid-report: {len(runs)} runs -> {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
