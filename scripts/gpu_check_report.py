"""What scripts/gpu_check.sh reads back from its steps, one subcommand each (run by the driver with the
check's Python; nothing here needs a GPU):

    gpu_check_report.py modules SITE CARRIED...   where each module the check uses comes from; exit 1 when a
                                                  carried one (a module name) does not import from SITE
    gpu_check_report.py e2e ROOT STEPS            the end-to-end run folder under ROOT: its PLY, its
                                                  it<STEPS>-test.mp4 and its checkpoints
    gpu_check_report.py ism JSON                  the summary line of scripts/gpu_ism_step.py's JSON
"""
import glob
import importlib
import json
import os
import sys

MODULES = ("torch", "diffusers", "transformers", "peft", "pytorch_lightning", "omegaconf", "gsplat",
           "diff_gaussian_rasterization", "imageio_ffmpeg", "threestudio_lucid")


def modules(site, carried):
    """Print each module's version and file; the carried wheels must win over the machine's own copies
    (PYTHONPATH puts SITE first), the rest is for reading (a failed CUDA build shows here)."""
    site = os.path.abspath(site) + os.sep
    wrong = []
    for name in dict.fromkeys(MODULES + tuple(carried)):
        try:
            module = importlib.import_module(name)
        except Exception as e:  # the CUDA libraries may be missing: the parity step says so
            print(f"{name} unavailable: {type(e).__name__}: {e}")
            if name in carried:
                wrong.append(f"{name} (unavailable)")
            continue
        where = getattr(module, "__file__", None) or "?"
        print(f"{name} {getattr(module, '__version__', '')} from {where}")
        if name in carried and not os.path.abspath(where).startswith(site):
            wrong.append(f"{name} ({where})")
    if wrong:
        print(f"error: carried modules not imported from {site}: {', '.join(wrong)}; "
              f"the pip install --target of .gpu_carry/whl did not take", file=sys.stderr)
        return 1
    return 0


def e2e(root, steps):
    trials = glob.glob(os.path.join(root, "*", "*"))
    if not trials:
        print(f"error: no run folder under {root}: the launcher wrote none, see its log above", file=sys.stderr)
        return 1
    trial = trials[0]
    plys = glob.glob(os.path.join(trial, "save", "*.ply"))
    videos = glob.glob(os.path.join(trial, "save", f"it{steps}-test.mp4"))
    ckpts = sorted(os.listdir(os.path.join(trial, "ckpts"))) if os.path.isdir(os.path.join(trial, "ckpts")) else []
    missing = [what for what, found in (("a PLY in save/", plys), (f"save/it{steps}-test.mp4", videos),
                                        ("a checkpoint in ckpts/", ckpts)) if not found]
    if missing:
        print(f"error: the run folder {trial} lacks {', '.join(missing)}: see the launcher's log above",
              file=sys.stderr)
        return 1
    from plyfile import PlyData

    vertices = PlyData.read(plys[0])["vertex"].count
    print(f"run folder {trial}: PLY {os.path.basename(plys[0])} with {vertices} Gaussians, "
          f"video {os.path.basename(videos[0])}, checkpoints {ckpts}")
    return 0


def ism(path):
    with open(path) as f:
        s = json.load(f)
    peak = "-" if s["peak_gib"] is None else round(s["peak_gib"], 2)
    print(f"ISM step: {s['device']}, backend {s['backend']}, UNet {s['unet_dtype']}, {s['resolution']}px x "
          f"{s['views']} views, {s['gaussians']} Gaussians: {s['median_step_seconds']} s/step (median), peak "
          f"{peak} GiB, {s['unet_calls_per_step']} UNet calls/step, losses finite: {s['all_losses_finite']}; "
          f"{s['projected_steps']} steps at this size: {s['projected_minutes']} min (LucidDreamer: ~35 min on an A100)"
          + (f"; gradients finite: {s['all_gradients_finite']}" if "all_gradients_finite" in s else ""))
    probe = s.get("memory_probe")
    if probe:  # the projection's method held against the device's own count of the same step
        check = probe.get("check") or {}
        print(f"memory probe (step {probe['step']}{', FAILED: ' + probe['failed'] if probe.get('failed') else ''}): "
              f"projected {s['projected_fp16_gpu_gib']} GiB with fp16 weights; new bytes seen "
              f"{check.get('probe_new_gib')} GiB vs {check.get('measured_new_gib')} GiB by {check.get('measured_by')} "
              f"(ratio {check.get('probe_over_measured')})")
    return 0


def main(argv):
    usage = "error: usage: gpu_check_report.py modules SITE MODULE... | e2e ROOT STEPS | ism JSON"
    if argv[:1] == ["modules"] and len(argv) >= 2:
        return modules(argv[1], argv[2:])
    if argv[:1] == ["e2e"] and len(argv) == 3 and argv[2].isdigit():
        return e2e(argv[1], int(argv[2]))
    if argv[:1] == ["ism"] and len(argv) == 2:
        return ism(argv[1])
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
