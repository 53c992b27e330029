"""Time a training step of the main job, part by part, for the working tree and a git ref in one run
(interleaved), and print the ratios (asserts nothing).

    .venv/bin/python scripts/bench_training_step.py                   # working tree vs 98d61b7
    .venv/bin/python scripts/bench_training_step.py --ref HEAD~3 --cases main --rounds 2

Cases (both ``lucid-ism-toy.yaml`` on a penguin toy world, each tree building its own with its own
builder, seed 0):
- ``main``: the demo's step as configured (4 views of 64x64, 3,000 Gaussians at the start);
- ``heavy``: 100k Gaussians, 4 views of 256x256.

Each measurement is a fresh process (``--worker``) on one tree: the ref is exported with ``git archive``
into a temporary folder and imported ahead of the installed package. The worker builds the system and
data module as ``lucid-launch`` does, runs ``--warmup`` + ``--steps`` steps through Lightning, and
times per step, after wrapping the components (the same wrappers on both trees):
- render forward: the renderer's forward;
- render backward: from the moment the last render output (rgb, depth, alpha) has its gradient to the
  end of ``manual_backward`` (autograd reaches the renders after the guidance and regularisers);
- guidance and prior: the guidance's forward plus its share of the backward (up to that moment);
- optimizer: the geometry's ``optimizer.step``; densification: ``geometry.update_states``;
- everything else: the step (Lightning's batch start to batch end) minus the parts above.
Medians over the timed steps; the rounds alternate ref and tree, and the table gives the median over
rounds. OMP_WAIT_POLICY defaults to PASSIVE (see bench_rasterizers.py).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("render_fwd", "render_bwd", "guidance", "optimizer", "densify", "other")
CASES = {
    "main": [],
    "heavy": ["data.width=256", "data.height=256", "system.geometry.init_num_pts=100000",
              "system.geometry.max_num=200000"],
}


# ---------------------------------------------------------------------------------------------
# worker: one tree, one case
# ---------------------------------------------------------------------------------------------
def worker(args):
    import pytorch_lightning as pl
    import torch

    from threestudio_lucid import compat

    world = os.path.join(args.scratch, "toy-penguin")
    if not os.path.isfile(os.path.join(world, "model_index.json")):
        from threestudio_lucid.toy_world.pipeline import build_toy_world

        build_toy_world(world, objects=["penguin"], bandwidth=0.2)
    config = os.path.join(args.tree, "custom", "threestudio-lucid", "configs", "lucid-ism-toy.yaml")
    total = args.warmup + args.steps
    overrides = [
        "system.prompt_processor.prompt=a penguin",
        f"system.prompt_processor.pretrained_model_name_or_path={world}",
        f"system.guidance.pretrained_model_name_or_path={world}",
        f"trainer.max_steps={total}", f"exp_root_dir={os.path.join(args.scratch, 'outputs')}",
        "system.toy_world_eval=false",
    ] + CASES[args.case]
    cfg = compat.load_config(config, cli_args=overrides, n_gpus=1)
    pl.seed_everything(cfg.seed, workers=True)
    dm = compat.find(cfg.data_type)(cfg.data)
    system = compat.find(cfg.system_type)(cfg.system)
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

    now = time.perf_counter
    step = {}

    def timed(obj, name, key):
        inner = getattr(obj, name)

        def wrapper(*a, **k):
            start = now()
            try:
                return inner(*a, **k)
            finally:
                step[key] = step.get(key, 0.0) + now() - start

        setattr(obj, name, wrapper)

    renderer_forward = system.renderer.forward

    def render_forward(*a, **k):
        start = now()
        out = renderer_forward(*a, **k)
        step["render_fwd"] = step.get("render_fwd", 0.0) + now() - start
        for key in ("comp_rgb", "comp_depth", "comp_mask"):
            if torch.is_tensor(out.get(key)) and out[key].requires_grad:
                out[key].register_hook(lambda g: step.__setitem__("renders_have_grad", now()) or g)
        return out

    system.renderer.forward = render_forward
    timed(system.guidance, "forward", "guidance_fwd")
    timed(system.geometry.optimizer, "step", "optimizer")
    timed(system.geometry, "update_states", "densify")
    manual_backward = system.manual_backward

    def backward(*a, **k):
        start = now()
        manual_backward(*a, **k)
        end = now()
        reached = step.pop("renders_have_grad", start)
        step["guidance_bwd"] = reached - start
        step["render_bwd"] = end - reached

    system.manual_backward = backward
    records = []

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            step.clear()
            self.start = now()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            total_s = now() - self.start
            parts = {
                "render_fwd": step.get("render_fwd", 0.0),
                "render_bwd": step.get("render_bwd", 0.0),
                "guidance": step.get("guidance_fwd", 0.0) + step.get("guidance_bwd", 0.0),
                "optimizer": step.get("optimizer", 0.0),
                "densify": step.get("densify", 0.0),
            }
            parts["other"] = total_s - sum(parts.values())
            parts["step"] = total_s
            records.append(parts)

    trainer = pl.Trainer(callbacks=[StepTimer()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                         accelerator="cpu", devices=1, max_steps=total, num_sanity_val_steps=0,
                         val_check_interval=cfg.trainer.get("val_check_interval"),
                         log_every_n_steps=cfg.trainer.get("log_every_n_steps", 50))
    trainer.fit(system, datamodule=dm)
    timed_steps = records[args.warmup:]
    result = {key: statistics.median(r[key] for r in timed_steps) for key in PARTS + ("step",)}
    result["gaussians"] = int(system.geometry.num_points)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def export_ref(ref, folder):
    tree = os.path.join(folder, "tree")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", REPO, "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    shim = os.path.join(folder, "import")
    os.makedirs(shim)
    os.symlink(os.path.join(tree, "custom", "threestudio-lucid"), os.path.join(shim, "threestudio_lucid"))
    return tree, shim


def run_script_worker(script, worker_args, tree, shim, cwd, what):
    """Run ``script --worker --tree TREE worker_args`` in a fresh process (the ref's tree importable
    ahead of the installed package through ``shim``) and return the JSON of its ``RESULT`` line."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if shim:
        env["PYTHONPATH"] = shim + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(script), "--worker", "--tree", tree, *worker_args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SystemExit(f"error: the worker for {what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


def run_worker(tree, shim, case, args, scratch):
    worker_args = ["--case", case, "--steps", str(args.steps), "--warmup", str(args.warmup), "--scratch", scratch]
    return run_script_worker(__file__, worker_args, tree, shim, scratch, f"{tree} ({case})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="98d61b7", help="git ref to compare the working tree with")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per tree and case, interleaved")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="lucid-bench-step-") as tmp:
        ref_tree, ref_shim = export_ref(args.ref, os.path.join(tmp, "ref"))
        trees = {args.ref: (ref_tree, ref_shim, os.path.join(tmp, "ref-run")),
                 "working tree": (REPO, None, os.path.join(tmp, "tree-run"))}
        for _, _, scratch in trees.values():
            os.makedirs(scratch)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        print(f"{os.cpu_count()} cores, load average {load:.1f}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; "
              f"median of {args.steps} steps after {args.warmup} warm-up, median over {args.rounds} interleaved rounds")
        for case in args.cases:
            results = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, (tree, shim, scratch) in trees.items():
                    results[name].append(run_worker(tree, shim, case, args, scratch))
            table = {name: {k: statistics.median(r[k] for r in runs) for k in PARTS + ("step",)}
                     for name, runs in results.items()}
            print(f"\ncase {case} ({results['working tree'][0]['gaussians']} Gaussians at the end in the working tree)"
                  f"\n{'part':>12} | " + " | ".join(f"{n[:14]:>14}" for n in trees) + " | ratio")
            for part in PARTS + ("step",):
                ref_s, new_s = table[args.ref][part], table["working tree"][part]
                ratio = f"{ref_s / new_s:5.2f}x" if new_s > 1e-6 else "   -"
                print(f"{part:>12} | {ref_s * 1e3:11.1f} ms | {new_s * 1e3:11.1f} ms | {ratio}")
            new = table["working tree"]
            bookkeeping = new["other"] + new["densify"]
            print(f"working tree: everything but render, prior and optimizer is {100 * bookkeeping / new['step']:.0f}% "
                  f"of the step; step {table[args.ref]['step'] / new['step']:.2f}x faster than {args.ref}")


if __name__ == "__main__":
    sys.exit(main())
