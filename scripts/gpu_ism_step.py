"""Time full training steps of a config at a given size, and measure their memory and gradients.

Seconds per step, peak memory, UNet calls per step, finite gradients, and what the step needs on a GPU
with fp16 weights, measured through the same system, data module and Lightning loop that
``lucid-launch`` runs (prints a table and writes a JSON; asserts nothing). Step 3 of
``scripts/gpu_check.sh``.

    python scripts/gpu_ism_step.py --pipeline /tmp/sd21 --architecture sd21-base --json step.json
    python scripts/gpu_ism_step.py --pipeline /tmp/tiny --architecture tiny --resolution 64 \
        --gaussians 2000 --views 2 --steps 2 --warmup 1          # a CPU-sized rehearsal
    OMP_WAIT_POLICY=PASSIVE python scripts/gpu_ism_step.py --device cpu --pipeline /tmp/sd21-fp32 \
        --architecture sd21-base --steps 1 --warmup 0 --json cpu-step.json
        # the real size (512x512, 4 views, 100k Gaussians) in fp32 on the CPU: one step. On 2 shared
        # cores it took 2.5 to 8 min (2 to 7 UNet calls, and the machine's other load) and 18.2-18.4
        # GiB peak RSS (the pipeline: 4.9 GB on disk, built in 0.5-1 min); add --cpu-half for the
        # bfloat16 check (2.5 min, 10.1 GiB)

``--pipeline`` is a diffusers folder; if it does not exist it is built there with random weights
(``--architecture sd21-base``: Stable Diffusion 2.1-base's UNet, VAE and text encoder at full size,
fp16 on CUDA, fp32 on the CPU; no download). The config (default ``lucid-ism.yaml``, its official
settings) is loaded with overrides for the prompt, the model folder, the render size, the views per
step (``data.batch_size``) and the number of Gaussians (``geometry.init_num_pts``); other
``key=value`` arguments are passed on. ``--device cpu`` hides CUDA from the process (the system, the
guidance and the prompt processor then all run on the CPU); the default is CUDA when available.

Per step (each timed between Lightning's ``on_train_batch_start`` and ``on_train_batch_end``, after
a CUDA synchronisation, so it holds rendering, guidance, backward, optimizer and densification
bookkeeping): wall seconds; peak memory (``peak_gib``: on CUDA ``torch.cuda.max_memory_allocated``
since the step started; on the CPU the process's peak RSS, VmHWM, reset at the step's start through
``/proc/self/clear_refs``); calls of the guidance UNet's forward; Gaussians; whether the loss was
finite; and whether every gradient of the Gaussians was finite, read by a pre-hook of the geometry's
optimizer, i.e. right before the step that would use it (``gradients``: norm per parameter group).
The first ``--warmup`` steps are reported but left out of the median (cuDNN autotuning, allocator
growth, lazy loading). ``projected_minutes`` is the median step times ``--project-steps``
(LucidDreamer's 5,000); densification grows the number of Gaussians in a real run, so read it as the
time at this size.

Memory probe (step ``--probe-step``, default 1; 0 turns it off): a ``TorchDispatchMode`` sees every
aten op of the step (forward, backward, optimizer) and follows each tensor storage an op creates until
it is freed (a weak reference on the storage), so it knows the bytes alive at every moment, as
``torch.cuda.max_memory_allocated`` counts them, and in which phase each was made (render, guidance,
VAE, UNet, backward, the VAE's backward, optimizer; module hooks and, for the VAE's backward, tensor
hooks on the encoder's output and input). A storage no aten op made (the CPU rasterizer's buffers,
which its kernel wraps itself; ``torch.tensor`` of Python data) is counted from when autograd saves it.
From it:

- ``saved_activations``: the storages autograd saves for backward (``saved_tensors_hooks``, each
  storage once, parameters left out), by the phase that made them;
- ``unet_calls``: per no-grad UNet call, the peak of the storages made inside the call, still alive;
- ``projected_fp16_gpu_gib``: the step's peak on a GPU with fp16 weights, ``static + peak(new)``:
  static = UNet and VAE parameters and buffers at 2 bytes each (their dtype on CUDA, see
  ``half_precision_weights``), the Gaussians and their Adam moments in fp32, other live tensors as
  they are; new = the probe's bytes over the step, where an fp32 storage made inside the VAE (its
  forward and its backward span) or the UNet counts half, as fp16, and everything else (renderer,
  DDIM arithmetic, gradients of the Gaussians, Adam) stays as measured. Where the weights already are
  half (on CUDA, or ``--cpu-half``) nothing is halved and the projection is the probe's own reading.
  ``projection_additive_gib`` is the short form: static + saved activations + the largest UNet call.

The projection counts what torch's allocator hands out (``max_memory_allocated``), not what
``nvidia-smi`` shows: not the CUDA context, cuBLAS/cuDNN workspaces, nor the allocator's cached and
fragmented blocks (reserved memory); the renderer's buffers are the CPU kernel's (gsplat and inria
keep their own); scratch memory a kernel keeps outside torch tensors (the CPU rasterizer's
backward rows, oneDNN) is not seen.

How the method is checked (``memory_probe.check``, and ``memory_probe.phases`` phase by phase): the
probe's reading of the step's new bytes against an independent count of the same step: on the CPU,
the peak RSS during the step minus the RSS at its start (the models' weights read once before, as
safetensors maps them from their files and they would otherwise become resident inside the step;
freed heap returned with ``malloc_trim``); on CUDA, ``max_memory_allocated`` minus
``memory_allocated`` at the step's start. ``--cpu-half`` (CPU only) runs the UNet and VAE in
bfloat16, 2 bytes like fp16, through the same ``weights_dtype`` casts the GPU path uses: a
half-precision step measured on the CPU, to hold against the fp16 projection of an fp32 run of the
same size. Measured at the real size (512x512, 4 views, 100k Gaussians, 2-core CPU): the probe saw
94 % of the RSS growth in fp32 (13.42 of 14.28 GiB; in the VAE's forward 12.40 of 12.57) and 90 % in
bfloat16 (6.99 of 7.77 GiB); the rest is memory outside torch tensors (0.23 GiB of it while
rendering: the rasterizer kernel's scratch). The fp32 run projected 8.80 GiB for fp16; the bfloat16
run read 8.79 GiB. The probe costs Python time per op: the probed step's seconds are a little high
(on a GPU the default probes warm-up step 1, which the median leaves out).
"""
import argparse
import ctypes
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

PLUGIN_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "custom", "threestudio-lucid", "configs")
GIB = 2**30
# phases whose fp32 storages are fp16 on a GPU (the models' weights_dtype there)
HALF_PHASES = ("vae", "vae-backward", "unet")
PROJECTION_ASSUMPTIONS = (
    "UNet and VAE parameters and buffers at 2 bytes (fp16, weights_dtype on CUDA); Gaussians, their "
    "gradients and Adam moments in fp32",
    "activations: every storage an aten op makes during the step, alive from the op to its free; those "
    "made in fp32 inside the VAE (forward and backward) or the UNet count half (fp16 on the GPU)",
    "renderer buffers as the CPU kernel keeps them (gsplat/inria keep other, similar-sized ones)",
    "not counted: CUDA context, cuBLAS/cuDNN workspaces, allocator caching and fragmentation (reserved "
    "memory), kernels' non-tensor scratch (on the CPU the probe saw 90-94% of the RSS growth at the real size)",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(PLUGIN_CONFIGS, "lucid-ism.yaml"))
    parser.add_argument("--pipeline", required=True, help="diffusers folder (built here if missing)")
    parser.add_argument("--architecture", choices=("sd21-base", "tiny"), default="sd21-base",
                        help="what to build at --pipeline if it is missing")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available; cpu hides CUDA from the whole process")
    parser.add_argument("--prompt", default="a DSLR photo of a corgi wearing a red hat")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--views", type=int, default=4, help="views per step (data.batch_size)")
    parser.add_argument("--gaussians", type=int, default=100_000, help="geometry.init_num_pts")
    parser.add_argument("--steps", type=int, default=6, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--project-steps", type=int, default=5000)
    parser.add_argument("--probe-step", type=int, default=1, help="the step the memory probe follows (0: none)")
    parser.add_argument("--cpu-half", action="store_true",
                        help="CPU only: UNet and VAE in bfloat16 (a measured half-precision step, to check "
                             "the fp16 projection against)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="more config overrides, key=value")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# process memory (Linux /proc; None elsewhere)
# ---------------------------------------------------------------------------------------------
def proc_status_bytes(field):
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def fault_in(tensors):
    """Read every tensor once: weights loaded from safetensors are mapped from their files and become
    resident at their first use, which an RSS delta would otherwise count as the step's memory."""
    with torch.no_grad():
        torch._foreach_norm([t for t in tensors if t.numel()])


def release_free_heap():
    """Return freed heap to the OS, so an RSS delta sees the step's own allocations (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# the memory probe
# ---------------------------------------------------------------------------------------------
def storage_key(tensor):
    return tensor.untyped_storage()._cdata


def unique_storage_bytes(tensors, skip=()):
    seen, total = set(skip), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        key = storage_key(t)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


class StepMemoryProbe(TorchDispatchMode):
    """Tensor storages made by aten ops while the mode is active, alive from the op that makes them to
    their free, with ``measured`` bytes (as allocated here) and ``projected`` bytes (fp32 made in a
    ``HALF_PHASES`` phase counts half when ``half_models``). ``push``/``pop`` name the phase."""

    def __init__(self, half_models, rss_base=None):
        super().__init__()
        self.half_models = half_models
        # CPU: RSS at the step's start; each phase interval then also reads the peak RSS (VmHWM, reset
        # at every phase change) to set the OS's count beside the probe's, phase by phase
        self.rss_base = rss_base
        self.phases = ["other"]
        self.storages = {}  # key -> (measured, projected, phase)
        self.live = {"measured": 0, "projected": 0}
        self.peak = {"measured": 0, "projected": 0}
        self.live_by_phase = {"measured": {}, "projected": {}}
        self.peak_by_phase = {"measured": {}, "projected": {}}
        self.peak_phase = {"measured": None, "projected": None}
        self.saved = {}  # storage key -> (measured, projected, phase), parameters left out
        self.skip_saved = set()
        self.saved_at_backward = None  # saved_alive() when backward starts
        self.unet_calls = []
        self._call = None
        self.intervals = {}  # phase on top -> seconds, probe's peak of new bytes, peak RSS over the start
        self._interval = None
        self._timing = False
        self.failed = None  # why the probe stopped counting, if it did (the step itself goes on)

    # ---- phases ----
    def push(self, phase):
        self._close_interval()
        self.phases.append(phase)
        if phase == "unet":
            self._call = dict(start=dict(self.live), top=dict(self.live))
        self._open_interval()

    def pop(self, phase):
        self._close_interval()
        if self.phases[-1] == phase:  # an exception mid-phase may have left another one on top
            self.phases.pop()
        if phase == "unet" and self._call is not None:
            self.unet_calls.append({k: self._call["top"][k] - self._call["start"][k] for k in self.live})
            self._call = None
        self._open_interval()

    def start_intervals(self):
        """From now until ``close()``, time and peaks are kept per phase interval."""
        self._timing = True
        self._open_interval()

    def close(self):
        self._close_interval()
        self._timing = False

    def _open_interval(self):
        if self._timing:
            self._interval = [self.phases[-1], time.perf_counter(), self.live["measured"]]

    def _close_interval(self):
        if self._interval is None:
            return
        phase, start, top = self._interval
        self._interval = None
        entry = self.intervals.setdefault(phase, dict(seconds=0.0, probe_peak=0, rss_peak=None))
        entry["seconds"] += time.perf_counter() - start
        entry["probe_peak"] = max(entry["probe_peak"], top)
        if self.rss_base is not None:
            entry["rss_peak"] = max(entry["rss_peak"] or 0, proc_status_bytes("VmHWM") - self.rss_base)
            reset_peak_rss()

    # ---- allocations ----
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.failed is None:
            try:
                self._track(out, args, kwargs)
            except Exception as e:  # the probe must never break the step it measures (GPU check step 3)
                self.failed = f"{type(e).__name__}: {e}"
        return out

    def _track(self, out, args, kwargs):
        inputs = None
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            if inputs is None:  # in-place and view ops return their inputs' storages: not new
                inputs = {storage_key(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.storages:
                continue
            self._allocated(key, storage, t.dtype)

    def _allocated(self, key, storage, dtype):
        phase = self.phases[-1]
        measured = storage.nbytes()
        projected = measured // 2 if self.half_models and dtype == torch.float32 and phase in HALF_PHASES else measured
        self.storages[key] = (measured, projected, phase)
        for kind, n in (("measured", measured), ("projected", projected)):
            self.live[kind] += n
            by_phase = self.live_by_phase[kind]
            by_phase[phase] = by_phase.get(phase, 0) + n
            if self.live[kind] > self.peak[kind]:
                self.peak[kind] = self.live[kind]
                self.peak_by_phase[kind] = dict(by_phase)
                self.peak_phase[kind] = phase
        if self._call is not None:
            for kind in self.live:
                self._call["top"][kind] = max(self._call["top"][kind], self.live[kind])
        if self._interval is not None:
            self._interval[2] = max(self._interval[2], self.live["measured"])
        weakref.finalize(storage, self._freed, key).atexit = False

    def _freed(self, key):
        if key not in self.storages:
            return
        measured, projected, phase = self.storages.pop(key)
        for kind, n in (("measured", measured), ("projected", projected)):
            self.live[kind] -= n
            self.live_by_phase[kind][phase] -= n

    # ---- what autograd saves for backward ----
    def pack(self, tensor):
        if self.failed is None:
            try:
                self._saved(tensor)
            except Exception as e:
                self.failed = f"{type(e).__name__}: {e}"
        return tensor

    def _saved(self, tensor):
        key = storage_key(tensor)
        if key not in self.saved and key not in self.skip_saved:
            if key not in self.storages:
                # made in this step but by no aten op the mode saw (a custom op's composite kernel wrapping
                # its own buffers, torch.tensor from Python data): counted from now, as made in this phase
                self._allocated(key, tensor.untyped_storage(), tensor.dtype)
            self.saved[key] = self.storages[key]

    @staticmethod
    def unpack(tensor):
        return tensor

    def saved_alive(self):
        """Saved storages still alive (all of them when backward starts), by the phase that made them."""
        out = {"measured": {}, "projected": {}}
        for key, (measured, projected, phase) in self.saved.items():
            if key not in self.storages:
                continue
            for kind, n in (("measured", measured), ("projected", projected)):
                out[kind][phase] = out[kind].get(phase, 0) + n
        return out


def gib(n):
    return round(n / GIB, 4)


def static_bytes(system, half_models, tensors_alive):
    """Bytes held before the step: the models' parameters and buffers (fp16 on the GPU), the Gaussians,
    the optimizer's state and every other tensor Python can reach (prompt embeddings, ...)."""
    guidance, geometry = system.guidance, system.geometry
    models = {}
    seen = set()
    for name, model in (("unet", guidance.unet), ("vae", guidance.vae)):
        tensors = list(model.parameters()) + list(model.buffers())
        measured = unique_storage_bytes(tensors, skip=seen)
        fp32 = unique_storage_bytes([t for t in tensors if t.dtype == torch.float32], skip=seen)
        seen.update(storage_key(t) for t in tensors)
        models[name] = (measured, measured - fp32 // 2 if half_models else measured)
    gaussians = list(geometry.gaussian_parameters().values())
    n = unique_storage_bytes(gaussians, skip=seen)
    seen.update(storage_key(t) for t in gaussians)
    models["gaussians"] = (n, n)
    state = [t for opt in system.trainer.optimizers for s in opt.state.values() for t in s.values()
             if isinstance(t, torch.Tensor)]
    n = unique_storage_bytes(state, skip=seen)
    seen.update(storage_key(t) for t in state)
    models["optimizer_state"] = (n, n)
    n = unique_storage_bytes(tensors_alive, skip=seen)
    seen.update(storage_key(t) for t in tensors_alive)
    models["other_tensors"] = (n, n)
    return models, seen


def live_tensors():
    # type(), not isinstance: isinstance reads __class__, which warns on some lazy module proxies
    return [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]


class ProbeHooks:
    """Phase hooks on the system's parts for one probed step; ``remove()`` takes them all off."""

    def __init__(self, probe, system):
        self.probe, self.handles = probe, []
        guidance = system.guidance
        for phase, module in (("render", system.renderer), ("guidance", guidance), ("unet", guidance.unet)):
            self._phase_hooks(module, phase)
        for name in ("encoder", "quant_conv"):
            module = getattr(guidance.vae, name, None)
            if module is not None:
                self._phase_hooks(module, "vae")
        # the VAE's backward is one span: from the gradient of the encoder's output to that of its input
        self.handles.append(guidance.vae.encoder.register_forward_hook(self._mark_vae_backward))

    def _phase_hooks(self, module, phase):
        self.handles.append(module.register_forward_pre_hook(lambda *_: self.probe.push(phase)))
        self.handles.append(module.register_forward_hook(lambda *_: self.probe.pop(phase)))

    def _mark_vae_backward(self, module, inputs, output):
        if torch.is_grad_enabled() and output.requires_grad and inputs[0].requires_grad:
            output.register_hook(lambda _: self.probe.push("vae-backward"))
            inputs[0].register_hook(lambda _: self.probe.pop("vae-backward"))

    def remove(self):
        for handle in self.handles:
            handle.remove()


def summarise_probe(probe, static, half_models, step, measured_check):
    unet_calls = probe.unet_calls
    saved = probe.saved_at_backward or probe.saved_alive()
    static_measured = sum(m for m, _ in static.values())
    static_projected = sum(p for _, p in static.values())
    largest_call = max(unet_calls, key=lambda c: c["projected"]) if unet_calls else {"measured": 0, "projected": 0}
    saved_total = {k: sum(v.values()) for k, v in saved.items()}
    out = dict(
        step=step,
        failed=getattr(probe, "failed", None),  # not None: the probe stopped counting and its figures are incomplete
        method="TorchDispatchMode over the step: storages made by aten ops, alive until freed (weakref)",
        half_models=half_models,
        static_gib={name: dict(measured=gib(m), projected=gib(p)) for name, (m, p) in static.items()},
        saved_activations_gib=dict(
            measured=gib(saved_total["measured"]), projected=gib(saved_total["projected"]),
            by_phase={phase: dict(measured=gib(n), projected=gib(saved["projected"].get(phase, 0)))
                      for phase, n in saved["measured"].items()},
        ),
        unet_calls_gib=[dict(measured=gib(c["measured"]), projected=gib(c["projected"])) for c in unet_calls],
        peak_new_gib=dict(measured=gib(probe.peak["measured"]), projected=gib(probe.peak["projected"])),
        peak_phase=probe.peak_phase,
        peak_breakdown_gib={kind: {phase: gib(n) for phase, n in by_phase.items() if n}
                            for kind, by_phase in probe.peak_by_phase.items()},
        # per phase (time on top of the phase stack): seconds, and the peak of the step's new bytes as the
        # probe saw them and, on the CPU, as RSS over its value at the step's start
        phases={phase: dict(seconds=round(e["seconds"], 2), probe_peak_new_gib=gib(e["probe_peak"]),
                            rss_peak_new_gib=None if e["rss_peak"] is None else gib(e["rss_peak"]))
                for phase, e in getattr(probe, "intervals", {}).items()},
        probe_peak_gib=gib(static_measured + probe.peak["measured"]),
        projected_gib=gib(static_projected + probe.peak["projected"]),
        projection_additive_gib=gib(static_projected + saved_total["projected"] + largest_call["projected"]),
    )
    if measured_check is not None:
        what, measured_new = measured_check
        out["check"] = dict(
            measured_by=what, measured_new_gib=gib(measured_new), probe_new_gib=gib(probe.peak["measured"]),
            probe_over_measured=round(probe.peak["measured"] / measured_new, 3) if measured_new > 0 else None,
        )
    return out


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
def build_pipeline_if_missing(path, architecture, device):
    from threestudio_lucid.tiny_pipeline import build_stable_diffusion

    if os.path.isfile(os.path.join(path, "model_index.json")):
        return 0.0
    start = time.perf_counter()
    fp16 = architecture == "sd21-base" and device.type == "cuda"
    build_stable_diffusion(path, architecture, dtype=torch.float16 if fp16 else None, device=device)
    return time.perf_counter() - start


def select_device(requested):
    """``cpu`` hides CUDA before anything initialises it: the host's get_device(), the prompt processor
    and the guidance all ask torch.cuda.is_available()."""
    if requested == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    available = torch.cuda.is_available()
    if requested == "cpu" and available:
        raise SystemExit("--device cpu: CUDA was initialised before this script could hide it")
    if requested == "cuda" and not available:
        raise SystemExit("--device cuda: no CUDA device is available to torch")
    return torch.device("cuda" if available else "cpu")


def gradient_report(optimizer):
    """Norm and finiteness of every gradient an optimizer is about to use, per parameter group."""
    report = {}
    for index, group in enumerate(optimizer.param_groups):
        grads = [p.grad for p in group["params"] if p.grad is not None and p.grad.numel()]
        name = group.get("name", str(index))
        if not grads:
            report[name] = dict(norm=None, finite=None)
            continue
        norm = float(torch.stack(torch._foreach_norm(grads)).norm())
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        report[name] = dict(norm=norm, finite=finite)
    return report


def main(argv=None):
    args = parse_args(argv)
    device = select_device(args.device)
    if args.cpu_half and device.type != "cpu":
        raise SystemExit("--cpu-half is a CPU check; on CUDA the weights already are fp16")
    import pytorch_lightning as pl

    from threestudio_lucid import compat
    from threestudio_lucid.renderer.cpu_backend import auto_backend_name

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
    guidance = system.guidance
    if args.cpu_half:
        # what the GPU path does with fp16, in the half type the CPU computes: weights and the casts
        # unet_eps and encode_images make to weights_dtype
        guidance.weights_dtype = torch.bfloat16
        guidance.unet.to(torch.bfloat16)
        guidance.vae.to(torch.bfloat16)
    half_models = guidance.weights_dtype == torch.float32

    unet_calls = [0]
    guidance.models.unet.register_forward_pre_hook(lambda *_: unet_calls.__setitem__(0, unet_calls[0] + 1))
    records = []
    probe_summary = {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    class StepTimer(pl.Callback):
        def on_train_start(self, trainer, module):
            self.gradients = {}
            for opt in trainer.optimizers:
                opt.register_step_pre_hook(lambda o, *_: self.gradients.update(gradient_report(o)))

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.gradients = {}
            self.probe = None
            probing = len(records) + 1 == args.probe_step
            if probing:
                self.prepare_probe(trainer, module)
            sync()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            else:
                self.rss_start = proc_status_bytes("VmRSS")
                self.peak_reset = reset_peak_rss()
            if probing:
                self.start_probe()
            unet_calls[0] = 0
            self.start = time.perf_counter()

        def prepare_probe(self, trainer, module):
            if device.type == "cpu":
                fault_in(list(guidance.unet.parameters()) + list(guidance.vae.parameters()))
            release_free_heap()
            probe = StepMemoryProbe(half_models)
            alive = live_tensors()
            self.static, probe.skip_saved = static_bytes(module, half_models, alive)
            del alive
            self.allocated_start = torch.cuda.memory_allocated() if device.type == "cuda" else None
            self.hooks = ProbeHooks(probe, module)
            backward = module.manual_backward

            def manual_backward(loss, *a, **k):
                probe.saved_at_backward = probe.saved_alive()
                probe.push("backward")
                try:
                    return backward(loss, *a, **k)
                finally:
                    probe.pop("backward")

            module.manual_backward = manual_backward
            for opt in trainer.optimizers:
                self.hooks.handles.append(opt.register_step_pre_hook(lambda *_: probe.push("optimizer")))
                self.hooks.handles.append(opt.register_step_post_hook(lambda *_: probe.pop("optimizer")))
            self.probe = probe

        def start_probe(self):
            probe = self.probe
            if device.type == "cpu" and self.peak_reset and self.rss_start is not None:
                probe.rss_base = self.rss_start
            self.saved_hooks = torch.autograd.graph.saved_tensors_hooks(probe.pack, probe.unpack)
            self.saved_hooks.__enter__()
            probe.__enter__()
            probe.start_intervals()

        def stop_probe(self, module, peak_bytes):
            probe = self.probe
            probe.close()
            probe.__exit__(None, None, None)
            self.saved_hooks.__exit__(None, None, None)
            self.hooks.remove()
            del module.manual_backward
            if device.type == "cuda":
                check = ("torch.cuda.max_memory_allocated - memory_allocated at the step's start",
                         peak_bytes - self.allocated_start)
            elif self.peak_reset and peak_bytes is not None:
                check = ("peak RSS in the step - RSS at its start (after malloc_trim)", peak_bytes - self.rss_start)
            else:
                check = None
            probe_summary.update(summarise_probe(probe, self.static, half_models, len(records), check))
            self.probe = None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            sync()
            seconds = time.perf_counter() - self.start
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated()
            else:
                peak = proc_status_bytes("VmHWM")
                if self.probe is not None and self.probe.rss_base is not None:
                    self.probe.close()  # its phase intervals reset VmHWM: the step's peak is theirs
                    peaks = [e["rss_peak"] for e in self.probe.intervals.values() if e["rss_peak"] is not None]
                    peak = max([peak] + [self.probe.rss_base + p for p in peaks])
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            grads = self.gradients
            records.append(dict(
                step=len(records) + 1,
                seconds=seconds,
                peak_gib=peak / GIB if peak is not None else None,
                unet_calls=unet_calls[0],
                gaussians=int(module.geometry.num_points),
                loss_finite=bool(torch.isfinite(loss.detach()).all()) if loss is not None else None,
                gradients_finite=bool(grads) and all(g["finite"] is not False for g in grads.values())
                and any(g["finite"] for g in grads.values()),
                gradients={name: dict(norm=g["norm"], finite=g["finite"]) for name, g in grads.items()},
            ))
            if self.probe is not None:
                self.stop_probe(module, peak)
            r = records[-1]
            shown = f"{r['peak_gib']:.2f} GiB" if r["peak_gib"] is not None else "-"
            print(f"step {r['step']:>3}: {r['seconds']:.3f} s, peak {shown}, {r['unet_calls']} UNet calls, "
                  f"{r['gaussians']} Gaussians, loss finite: {r['loss_finite']}, "
                  f"gradients finite: {r['gradients_finite']}", flush=True)

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
        torch=torch.__version__, cpu_threads=torch.get_num_threads(), architecture=args.architecture,
        pipeline_build_seconds=round(build_s, 1),
        unet_dtype=str(guidance.weights_dtype), backend=auto_backend_name(device)
        if cfg.system.renderer.backend == "auto" else cfg.system.renderer.backend,
        resolution=res, views=args.views, gaussians=args.gaussians, warmup_steps=args.warmup,
        median_step_seconds=round(median, 4), min_step_seconds=round(min(r["seconds"] for r in timed), 4),
        peak_gib=max((r["peak_gib"] or 0.0) for r in records) if records[0]["peak_gib"] is not None else None,
        peak_memory="torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process (VmHWM)",
        unet_calls_per_step=statistics.median(r["unet_calls"] for r in timed),
        all_losses_finite=all(r["loss_finite"] for r in records),
        all_gradients_finite=all(r["gradients_finite"] for r in records),
        projected_steps=args.project_steps, projected_minutes=round(median * args.project_steps / 60, 1),
        fit_seconds=round(fit_s, 1), steps=records,
    )
    if probe_summary:
        summary.update(
            projected_fp16_gpu_gib=probe_summary["projected_gib"],
            projection_additive_gib=probe_summary["projection_additive_gib"],
            projection_assumptions=list(PROJECTION_ASSUMPTIONS),
            memory_probe=probe_summary,
        )
    print(f"\n{summary['device']}, backend {summary['backend']}, UNet {summary['unet_dtype']}, {res}x{res}, "
          f"{args.views} views, {args.gaussians} Gaussians: median {median:.3f} s/step over {len(timed)} steps, "
          f"peak {'-' if summary['peak_gib'] is None else round(summary['peak_gib'], 2)} GiB "
          f"({summary['peak_memory']}), {summary['unet_calls_per_step']} UNet calls/step, gradients finite: "
          f"{summary['all_gradients_finite']}; {args.project_steps} steps at this size: "
          f"{summary['projected_minutes']} min")
    if probe_summary:
        print_probe(probe_summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


def print_probe(p):
    s = p["static_gib"]
    print(f"memory probe, step {p['step']} ({p['method']}):")
    print("  static (measured -> projected GiB): " + ", ".join(
        f"{name} {v['measured']} -> {v['projected']}" for name, v in s.items()))
    sa = p["saved_activations_gib"]
    print(f"  saved for backward: {sa['measured']} -> {sa['projected']} GiB (" + ", ".join(
        f"{phase} {v['measured']} -> {v['projected']}" for phase, v in sa["by_phase"].items()) + ")")
    calls = p["unet_calls_gib"]
    if calls:
        top = max(calls, key=lambda c: c["projected"])
        print(f"  no-grad UNet calls: {len(calls)}, the largest's activation peak {top['measured']} -> "
              f"{top['projected']} GiB")
    print(f"  peak of the step's new tensors: {p['peak_new_gib']['measured']} GiB in phase "
          f"{p['peak_phase']['measured']} -> projected {p['peak_new_gib']['projected']} GiB in phase "
          f"{p['peak_phase']['projected']} (" + ", ".join(
              f"{k} {v}" for k, v in p["peak_breakdown_gib"]["projected"].items()) + ")")
    print(f"  probe's reading of the step: {p['probe_peak_gib']} GiB")
    if p["phases"]:
        print("  by phase: seconds, peak new GiB (probe / RSS): " + "; ".join(
            f"{phase} {e['seconds']} s, {e['probe_peak_new_gib']} / {e['rss_peak_new_gib']}"
            for phase, e in p["phases"].items()))
    if "check" in p:
        c = p["check"]
        print(f"  check: {c['measured_by']} = {c['measured_new_gib']} GiB, probe {c['probe_new_gib']} GiB "
              f"(ratio {c['probe_over_measured']})")
    print(f"PROJECTED fp16 GPU memory: {p['projected_gib']} GiB (additive form: static + saved + largest "
          f"UNet call = {p['projection_additive_gib']} GiB)" if p["half_models"] else
          f"PROJECTED GPU memory (weights already half here): {p['projected_gib']} GiB")
    for a in PROJECTION_ASSUMPTIONS:
        print(f"  assumes: {a}")


if __name__ == "__main__":
    sys.exit(main())
