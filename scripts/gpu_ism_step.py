"""Time full training steps of a config at a given size: seconds per step, peak GPU memory and UNet
calls per step, measured through the same system, data module and Lightning loop that ``lucid-launch``
runs (prints a table and writes a JSON; asserts nothing). Step 3 of ``scripts/gpu_check.sh``.

    python scripts/gpu_ism_step.py --pipeline /tmp/sd21 --architecture sd21-base --json step.json
    python scripts/gpu_ism_step.py --pipeline /tmp/tiny --architecture tiny --resolution 64 \
        --gaussians 2000 --views 2 --steps 2 --warmup 1          # a CPU-sized rehearsal

``--pipeline`` is a diffusers folder; if it does not exist it is built there with random weights
(``--architecture sd21-base``: Stable Diffusion 2.1-base's UNet, VAE and text encoder at full size,
fp16 on CUDA; no download). The config (default ``lucid-ism.yaml``, its official settings) is loaded
with overrides for the prompt, the model folder, the render size, the views per step (``data.batch_size``)
and the number of Gaussians (``geometry.init_num_pts``); other ``key=value`` arguments are passed on.

Per step (each timed between Lightning's ``on_train_batch_start`` and ``on_train_batch_end``, after
a CUDA synchronisation, so it holds rendering, guidance, backward, optimizer and densification
bookkeeping): wall seconds, peak memory allocated by torch on the GPU since the step started, calls
of the guidance UNet's forward, Gaussians, and whether the loss was finite. The first ``--warmup``
steps are reported but left out of the median (cuDNN autotuning, allocator growth, lazy loading).
``projected_minutes`` is the median step times ``--project-steps`` (LucidDreamer's 5,000); densification
grows the number of Gaussians in a real run, so read it as the time at this size.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

PLUGIN_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "custom", "threestudio-lucid", "configs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(PLUGIN_CONFIGS, "lucid-ism.yaml"))
    parser.add_argument("--pipeline", required=True, help="diffusers folder (built here if missing)")
    parser.add_argument("--architecture", choices=("sd21-base", "tiny"), default="sd21-base",
                        help="what to build at --pipeline if it is missing")
    parser.add_argument("--prompt", default="a DSLR photo of a corgi wearing a red hat")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--views", type=int, default=4, help="views per step (data.batch_size)")
    parser.add_argument("--gaussians", type=int, default=100_000, help="geometry.init_num_pts")
    parser.add_argument("--steps", type=int, default=6, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--project-steps", type=int, default=5000)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value")
    return parser.parse_args(argv)


def build_pipeline_if_missing(path, architecture, device):
    import torch

    from threestudio_lucid.tiny_pipeline import build_stable_diffusion

    if os.path.isfile(os.path.join(path, "model_index.json")):
        return 0.0
    start = time.perf_counter()
    fp16 = architecture == "sd21-base" and device.type == "cuda"
    build_stable_diffusion(path, architecture, dtype=torch.float16 if fp16 else None, device=device)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    import pytorch_lightning as pl
    import torch

    from threestudio_lucid import compat
    from threestudio_lucid.renderer.cpu_backend import auto_backend_name

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    build_s = build_pipeline_if_missing(args.pipeline, args.architecture, device)
    total = args.warmup + args.steps
    res = args.resolution
    overrides = [
        f"system.prompt_processor.prompt={args.prompt}",
        f"system.prompt_processor.pretrained_model_name_or_path={args.pipeline}",
        f"system.guidance.pretrained_model_name_or_path={args.pipeline}",
        f"data.width={res}", f"data.height={res}", f"data.batch_size={args.views}",
        f"system.geometry.init_num_pts={args.gaussians}",
        f"trainer.max_steps={total}",
    ] + list(args.overrides)
    exp_root = tempfile.mkdtemp(prefix="lucid-step-")
    cfg = compat.load_config(args.config, cli_args=overrides + [f"exp_root_dir={exp_root}"], n_gpus=1)
    pl.seed_everything(cfg.seed, workers=True)
    dm = compat.find(cfg.data_type)(cfg.data)
    system = compat.find(cfg.system_type)(cfg.system)
    system.set_save_dir(os.path.join(cfg.trial_dir, "save"))

    unet_calls = [0]
    system.guidance.models.unet.register_forward_pre_hook(lambda *_: unet_calls.__setitem__(0, unet_calls[0] + 1))
    records = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            sync()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            unet_calls[0] = 0
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync()
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            records.append(dict(
                step=len(records) + 1,
                seconds=time.perf_counter() - self.start,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                unet_calls=unet_calls[0],
                gaussians=int(module.geometry.num_points),
                loss_finite=bool(torch.isfinite(loss.detach()).all()) if loss is not None else None,
            ))
            r = records[-1]
            peak = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "-"
            print(f"step {r['step']:>3}: {r['seconds']:.3f} s, peak {peak}, {r['unet_calls']} UNet calls, "
                  f"{r['gaussians']} Gaussians, loss finite: {r['loss_finite']}", flush=True)

    trainer = pl.Trainer(
        callbacks=[StepTimer()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        inference_mode=False, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        max_steps=total, num_sanity_val_steps=0, val_check_interval=cfg.trainer.get("val_check_interval"),
        precision=cfg.trainer.get("precision", "32-true"),
    )
    start = time.perf_counter()
    try:
        trainer.fit(system, datamodule=dm)
    finally:
        shutil.rmtree(exp_root, ignore_errors=True)
    fit_s = time.perf_counter() - start

    timed = records[args.warmup:] or records
    median = statistics.median(r["seconds"] for r in timed)
    summary = dict(
        config=os.path.relpath(args.config), device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        torch=torch.__version__, architecture=args.architecture, pipeline_build_seconds=round(build_s, 1),
        unet_dtype=str(system.guidance.weights_dtype), backend=auto_backend_name(device)
        if cfg.system.renderer.backend == "auto" else cfg.system.renderer.backend,
        resolution=res, views=args.views, gaussians=args.gaussians, warmup_steps=args.warmup,
        median_step_seconds=round(median, 4), min_step_seconds=round(min(r["seconds"] for r in timed), 4),
        peak_gib=max((r["peak_gib"] or 0.0) for r in records) if device.type == "cuda" else None,
        unet_calls_per_step=statistics.median(r["unet_calls"] for r in timed),
        all_losses_finite=all(r["loss_finite"] for r in records),
        projected_steps=args.project_steps, projected_minutes=round(median * args.project_steps / 60, 1),
        fit_seconds=round(fit_s, 1), steps=records,
    )
    print(f"\n{summary['device']}, backend {summary['backend']}, UNet {summary['unet_dtype']}, {res}x{res}, "
          f"{args.views} views, {args.gaussians} Gaussians: median {median:.3f} s/step over {len(timed)} steps, "
          f"peak {'-' if summary['peak_gib'] is None else round(summary['peak_gib'], 2)} GiB, "
          f"{summary['unet_calls_per_step']} UNet calls/step; {args.project_steps} steps at this size: "
          f"{summary['projected_minutes']} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
