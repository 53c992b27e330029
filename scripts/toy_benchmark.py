"""Benchmark SDS, ISM, VSD and ESD on the toy world (issue 7): same objects, seed and step budget.

For each object a one-object toy world is built (``load/toy-<object>``; renders cached), then every
method's ``lucid-<method>-toy.yaml`` runs through ``lucid-launch`` with the same overrides, and the
held-out scores each run writes (``save/toy_world_scores.json``) are collected into a markdown table
and an image grid (rows: ground truth, then one row per method; columns: held-out views per object).

    python scripts/toy_benchmark.py                       # small default: penguin + cube, 400 steps
    python scripts/toy_benchmark.py --objects penguin --steps 800 --methods ism sds

Scores: PSNR (dB) and mask IoU against held-out ground-truth views, and the Janus score (0 = the
true back, 1 = the back looks like a second front; only meaningful for the penguin). The
initialisation (0 steps) is scored too, as the floor.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import imageio.v2 as imageio
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "custom", "threestudio-lucid", "configs")
METHODS = ("sds", "ism", "vsd", "esd")


def bin_path(name: str) -> str:
    return shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)


def schedule_overrides(steps: int):
    """Scale the toy configs' step-dependent settings (written for 400 steps) to ``steps``."""
    f = steps / 400.0
    at = lambda n: max(1, int(round(n * f)))  # noqa: E731
    return [
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"checkpoint.every_n_train_steps={steps}",
        f"system.geometry.position_lr=[0,0.00016,0.0000016,{steps}]",
        f"system.geometry.feature_lr=[0,0.005,0.003,{steps}]",
        f"system.geometry.scaling_lr=[0,0.005,0.001,{steps}]",
        f"system.geometry.rotation_lr=[0,0.001,0.0002,{steps}]",
        f"system.geometry.densification_interval={at(50)}",
        f"system.geometry.densify_from_iter={at(50)}",
        f"system.geometry.densify_until_iter={at(300)}",
        f"system.geometry.prune_interval={at(50)}",
        f"system.geometry.prune_from_iter={at(50)}",
        f"system.geometry.prune_until_iter={at(300)}",
        f"system.geometry.prune_big_points_from_iter={at(100)}",
    ]


def run_method(method, obj_caption, world, out_root, steps, seed, backend, extra, tag=None):
    config = os.path.join(CONFIGS, f"lucid-{method}-toy.yaml")
    tag = tag or f"{method}-{obj_caption.replace(' ', '_')}"
    args = [
        bin_path("lucid-launch"), "--config", config, "--train",
        f"system.prompt_processor.prompt={obj_caption}",
        f"system.prompt_processor.pretrained_model_name_or_path={world}",
        f"system.guidance.pretrained_model_name_or_path={world}",
        f"system.renderer.backend={backend}",
        f"exp_root_dir={out_root}", f"tag={tag}", "use_timestamp=false", f"seed={seed}",
        "data.n_test_views=8",
        *schedule_overrides(steps), *extra,
    ]
    if method == "ism":
        args.append(f"system.guidance.warmup_iter={max(1, int(round(150 * steps / 400)))}")
    start = time.time()
    log = os.path.join(out_root, f"{tag}.log")
    with open(log, "w") as f:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        proc = subprocess.run(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
    elapsed = time.time() - start
    trial = os.path.join(out_root, f"lucid-{method}-toy", tag)
    scores_file = os.path.join(trial, "save", "toy_world_scores.json")
    if proc.returncode != 0 or not os.path.exists(scores_file):
        raise RuntimeError(f"{method} on {obj_caption!r} failed (exit {proc.returncode}); see {log}")
    with open(scores_file) as f:
        scores = json.load(f)
    scores.update(method=method, seconds=elapsed, grid=os.path.join(trial, "save", "toy_world_eval.png"))
    return scores


def split_grid(path):
    """The eval grid is two rows (renders, ground truth) of equal height."""
    img = imageio.imread(path)[..., :3]
    h = img.shape[0] // 2
    return img[:h], img[h:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", nargs="+", default=["penguin", "cube"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bandwidth", type=float, default=0.2)
    parser.add_argument("--backend", default="auto", help="rasterizer backend (auto: the fast CPU kernel when it builds)")
    parser.add_argument("--out", default="outputs/toy-benchmark", help="runs and logs")
    parser.add_argument("--report", default="docs/toy_benchmark", help="writes <report>.md and <report>.png")
    parser.add_argument("extra", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args(argv)

    sys.path.insert(0, REPO)
    from threestudio_lucid.toy_world.objects import get_object
    from threestudio_lucid.toy_world.pipeline import DEFAULT_ESTIMATOR_STEPS, build_toy_world, is_exact_toy_world

    out_root = os.path.abspath(args.out)
    os.makedirs(out_root, exist_ok=True)
    rows, grids = [], {}
    total_start = time.time()
    for key in args.objects:
        obj = get_object(key)
        world = os.path.join(REPO, "load", f"toy-{obj.key}")
        settings_file = os.path.join(world, "toy_world.json")
        wanted = {"objects": [obj.key], "bandwidth": args.bandwidth}
        record = json.load(open(settings_file)) if os.path.exists(settings_file) else {}
        current = record.get("settings")
        pretrained = (record.get("estimator") or {}).get("steps", 0) == DEFAULT_ESTIMATOR_STEPS  # VSD/ESD run on it
        if not is_exact_toy_world(world) or not current or any(current.get(k) != v for k, v in wanted.items()) \
                or not os.path.isdir(os.path.join(world, "estimator_unet")) or not pretrained:
            build_toy_world(world, objects=[obj.key], bandwidth=args.bandwidth, estimator_steps=DEFAULT_ESTIMATOR_STEPS)
        for method in ["init"] + list(args.methods):
            if method == "init":
                scores = run_method("ism", obj.name, world, out_root, 1, args.seed, args.backend,
                                    ["system.geometry.densify_from_iter=1000000", "system.geometry.position_lr=0.0",
                                     "system.geometry.feature_lr=0.0", "system.geometry.opacity_lr=0.0",
                                     "system.geometry.scaling_lr=0.0", "system.geometry.rotation_lr=0.0"],
                                    tag=f"init-{obj.key}")
                scores["method"] = "init"
            else:
                scores = run_method(method, obj.name, world, out_root, args.steps, args.seed, args.backend, args.extra)
            rows.append(scores)
            renders, truth = split_grid(scores["grid"])
            grids.setdefault(obj.key, {"truth": truth})[scores["method"]] = renders
            print(f"{obj.key:8s} {scores['method']:5s} PSNR {scores['psnr']:6.2f}  IoU {scores['iou']:.3f}  "
                  f"Janus {scores['janus']:.3f}  ({scores['seconds']:.0f} s)", flush=True)
    total = time.time() - total_start

    os.makedirs(os.path.dirname(os.path.abspath(args.report)) or ".", exist_ok=True)
    order = ["truth", "init"] + list(args.methods)
    columns = [np.concatenate([grids[k][m] for m in order], axis=0) for k in args.objects]
    sep = np.full((columns[0].shape[0], 4, 3), 255, dtype=np.uint8)
    image = columns[0]
    for col in columns[1:]:
        image = np.concatenate([image, sep, col], axis=1)
    imageio.imwrite(args.report + ".png", image)

    cmd = "python scripts/toy_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Toy-world benchmark",
        "",
        f"Command: `{cmd.strip()}` ({total / 60:.1f} min in all on this machine).",
        f"Same seed ({args.seed}), cameras, geometry initialisation and step budget ({args.steps} steps, 4 views of "
        f"64x64) for every method; one-object toy worlds with bandwidth {args.bandwidth}; scores on the world's "
        "8 held-out views (azimuths off the training grid, elevation 15 deg).",
        "",
        "| object | method | PSNR (dB) | mask IoU | Janus | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['object']} | {r['method']} | {r['psnr']:.2f} | {r['iou']:.3f} | {r['janus']:.3f} | {r['seconds']:.0f} |")
    lines += [
        "",
        f"![grid]({os.path.basename(args.report)}.png)",
        "",
        "Grid: one column block per object; rows are the ground truth, the initialisation, then "
        + ", ".join(m.upper() for m in args.methods)
        + ", each over the 8 held-out views.",
        "",
        "Janus: for back views, d_back / (d_back + d_front) with d the rgb error to the true back and to the "
        "mirrored front; 0 is the true back, 1 a second face; it only means something for the penguin.",
    ]
    with open(args.report + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.report}.md and {args.report}.png")


if __name__ == "__main__":
    main()
