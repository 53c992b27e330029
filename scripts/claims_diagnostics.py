"""Why the papers' claims do not hold on the toy worlds: the mechanism, measured (issue 15).

``scripts/claims_benchmark.py`` found that the toy worlds produce the failures the papers describe (SDS
over-smooths the multimodal ball; SDS and ISM put a second front on the biased penguin's back) but that
neither claim holds there (ISM is not sharper nor more consistent than SDS; VSD does not collapse, and the
ESD entropy term moves Janus up toward 0.5). This script measures what each guidance does to fixed renders,
with the real guidance classes rebuilt from each run's ``configs/parsed.yaml`` on the real world folder,
and for VSD/ESD with the estimator the run trained (``ckpts/last.ckpt``, the final step):

1. Over-smoothing (multimodal world; SDS, ISM). Inputs at the world's held-out views, and at the training
   cameras nearest them: every variant's ground truth (a perfect render) and the SDS and ISM runs' final
   renders. At timesteps spread over each method's official range (``--timesteps`` of them) and ``--draws``
   noise draws each: the method's pseudo-ground-truth, LucidDreamer's
   ``x0^t = (x_t - sqrt(1 - abar_t) eps(x_t, t, y)) / sqrt(abar_t)`` (SDS: x_t = the noised render; ISM: the
   DDIM-inverted x_t), its update ``u = -dL/dz`` on the render's latent ``z`` (SDS's is ``c (x0^t - z)``;
   ISM's is ``c (x0^t - x0^s)``, ``x0^s`` the estimate at the interval's start s, what ISM puts in place of
   z), and the exact prior's posterior at x_t (which variant, and which camera's renders, it reads x_t as).
2. Janus (biased world; SDS, ISM, VSD, ESD at lambda 0, 0.5, 1). Inputs: each run's final render at the
   held-out back views (those the Janus score uses), and the true back. The update's direction against
   ``true back - render`` and ``mirrored front - render`` (the front a Janus back would show, as the Janus
   score builds it); for VSD/ESD the update split as ``u = P + L``: the pretrained term
   ``P = -w (eps_pretrained - noise)`` and the estimator ("LoRA") term ``L = w (eps_estimate - noise)``,
   ``eps_estimate = (1 - lambda) eps_camera + lambda eps_no_camera``, both halves measured.

Directions are compared in the guidance's latent space, channels 0-2 (the toy VAE's latent is the 2x2
average-pooled image; channel 3 is constant zero and never reaches a render), i.e. at the resolution the
guidance sees and moves the render. The expected update is the mean over the timestep grid and the draws
(t uniform over the method's range, as in training).

    python scripts/claims_diagnostics.py                  # the seed-0 runs of the default benchmark (~6 min, 2 cores)
    python scripts/claims_diagnostics.py --seeds 0 1 2    # every seed (mean ± std over seeds; ~3 times as long)

Writes ``<report>.md`` (default ``docs/claims_mechanism.md``) and ``<report>.png`` (the pseudo-ground-truths
by timestep); with ``--json PATH`` also every measured number.
"""
import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

# before torch is imported: an OpenMP thread that spins while it waits makes these small tensor operations
# 20-30 times slower on a shared machine (measured: 22 s against 0.8 s for one input of study 1)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from claims_benchmark import SETTINGS, cpu_model, run_key, setting_label, write_grid  # noqa: E402
from toy_benchmark import REPO  # noqa: E402

DEFAULT_SEEDS = [0]
DEFAULT_TIMESTEPS, DEFAULT_DRAWS = 9, 32
FIGURE_SCALE = 2  # nearest-neighbour upscaling of the 64 px images in the figure
MULTIMODAL_SETTINGS = ("sds", "ism")
BIASED_SETTINGS = ("sds", "ism", "vsd", "esd-0", "esd-0.5", "esd-1")
BENCHMARK_COMMAND = "python scripts/claims_benchmark.py"
LOSS_KEYS = ("loss_sds", "loss_ism", "loss_vsd")
VISIBLE = 3  # latent channels that reach the render (the toy VAE's channel 3 is constant zero)


# ---------------------------------------------------------------------------------------------------
# the benchmark's runs


def run_folder(out_root: str, world: str, setting: str, seed: int) -> str:
    """``<out>/lucid-<method>-toy/<world>-<setting>-s<seed>``, as ``claims_benchmark.run_cell`` names it."""
    return os.path.join(out_root, f"lucid-{SETTINGS[setting].method}-toy", run_key(world, setting, seed))


def missing_inputs(out_root: str, wanted: Dict[str, Sequence[str]], seeds: Sequence[int]) -> List[str]:
    """The benchmark outputs this study needs and cannot find: each run's final checkpoint and parsed
    config, and the world folder the config names (the output folder alone when it does not exist)."""
    if not os.path.isdir(out_root):
        return [out_root]
    missing = []
    for world, settings in wanted.items():
        for setting in settings:
            for seed in seeds:
                trial = run_folder(out_root, world, setting, seed)
                for part in ("ckpts/last.ckpt", "configs/parsed.yaml"):
                    if not os.path.exists(os.path.join(trial, part)):
                        missing.append(os.path.join(trial, part))
                        break
                else:
                    from omegaconf import OmegaConf

                    world_path = OmegaConf.load(os.path.join(trial, "configs", "parsed.yaml")).system.guidance[
                        "pretrained_model_name_or_path"]
                    if not os.path.isfile(os.path.join(world_path, "model_index.json")) and world_path not in missing:
                        missing.append(world_path)
    return missing


def missing_message(missing: Sequence[str], seeds: Sequence[int]) -> str:
    seeds_part = "" if all(s in (0, 1, 2) for s in seeds) else " --seeds " + " ".join(map(str, seeds))
    shown = "\n".join(f"  {p}" for p in missing[:8]) + (f"\n  ... and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (f"error: the claims benchmark's runs or worlds are missing ({len(missing)}):\n{shown}\n"
            f"make them with `{BENCHMARK_COMMAND}{seeds_part}` (they are its default output folder; "
            "pass --out if you made them elsewhere).")


@dataclass
class LoadedRun:
    """A finished benchmark run: its system (geometry and guidance at the final step), the world, and the
    final renders at the held-out views with their scores."""

    setting: str
    seed: int
    trial: str
    system: Any
    world_path: str
    settings: Any  # ToyWorldSettings
    key: str  # the object
    step: int
    scores: Dict[str, Any]
    renders: torch.Tensor  # [V,H,W,3] at the held-out views, over the world's background

    @property
    def guidance(self):
        return self.system.guidance

    @property
    def prompt_utils(self):
        return self.system.prompt_utils


def load_run(trial: str, setting: str, seed: int) -> LoadedRun:
    """Rebuild the run's system from its parsed config, load its final checkpoint, and render and score it
    as the benchmark did (``evaluate_renderer``)."""
    from threestudio_lucid import compat
    from threestudio_lucid.toy_world.evaluate import evaluate_renderer, object_of_prompt, scores_only
    from threestudio_lucid.toy_world.pipeline import read_toy_world_settings

    cfg = compat.load_config(os.path.join(trial, "configs", "parsed.yaml"))
    system = compat.find(cfg.system_type)(cfg.system)
    ckpt = torch.load(os.path.join(trial, "ckpts", "last.ckpt"), map_location="cpu", weights_only=False)
    system.load_state_dict(ckpt["state_dict"])
    step = int(ckpt["global_step"])
    system.guidance.update_step(int(ckpt.get("epoch", 0)), step)  # the schedules at the final step
    system.eval()
    world = cfg.system.guidance.pretrained_model_name_or_path
    settings = read_toy_world_settings(world)
    result = evaluate_renderer(system.renderer, world, cfg.system.prompt_processor.prompt)
    return LoadedRun(setting, seed, trial, system, world, settings,
                     object_of_prompt(cfg.system.prompt_processor.prompt, settings.objects), step,
                     scores_only(result), result["renders"])


# ---------------------------------------------------------------------------------------------------
# cameras and reference images


def held_out_views(settings, key: str) -> Dict[str, torch.Tensor]:
    """The world's held-out cameras of object ``key`` (those ``evaluate_renderer`` scores): elevation,
    azimuth (degrees), distance [V]."""
    from threestudio_lucid.toy_world.dataset import eval_cameras

    cams = eval_cameras(settings)
    pick = (cams["object_index"] == settings.objects.index(key)) & (cams["variant_index"] == 0)
    return {k: cams[k][pick] for k in ("elevation", "azimuth", "distance")}


def back_view_mask(settings, azimuth: torch.Tensor) -> torch.Tensor:
    """The views the Janus score counts as back views (``evaluate.janus_of_views``)."""
    from threestudio_lucid.toy_world.dataset import shift_azimuth_deg

    return shift_azimuth_deg(azimuth).abs() > 180.0 - settings.back_threshold


def guidance_cameras(settings, views: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """What a guidance gets for these cameras, built as the training data module builds its batches
    (``progressive_camera.camera_batch``; azimuth in [-180, 180) as it samples them)."""
    from threestudio_lucid.data.progressive_camera import camera_batch, look_at_c2w, spherical

    elevation, distance = views["elevation"].float(), views["distance"].float()
    azimuth = (views["azimuth"].float() + 180.0) % 360.0 - 180.0
    c2w = look_at_c2w(spherical(distance, elevation, azimuth), torch.zeros(len(azimuth), 3))
    fovy = torch.full_like(elevation, math.radians(settings.fovy_deg))
    size = settings.image_size
    batch = camera_batch(c2w, fovy, elevation, azimuth, distance, size, size, True)
    return {k: batch[k] for k in ("elevation", "azimuth", "camera_distances", "mvp_mtx", "c2w")}


def janus_references(settings, key: str, variant: str, views: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``back``: the true view; ``front``: the object's front seen from there (the truth at azimuth + 180,
    mirrored), as ``evaluate.janus_of_views`` builds them (one ray per pixel); ``alpha``: the true view's."""
    from threestudio_lucid.toy_world.evaluate import ground_truth

    e, a, d = views["elevation"], views["azimuth"], views["distance"]
    back = ground_truth(settings, key, e, a, d)[variant]
    front = ground_truth(settings, key, e, a + 180.0, d)[variant]
    return {"back": back["rgb"], "front": front["rgb"].flip(2), "alpha": back["alpha"]}


# ---------------------------------------------------------------------------------------------------
# one guidance call, with what happened inside it


@contextmanager
def recording(module, *names: str):
    """Record every call of ``module``'s methods ``names`` as ``(args, kwargs, output)`` while inside;
    the methods run unchanged (an instance attribute shadows each, removed on exit)."""
    calls: Dict[str, List] = {n: [] for n in names}
    for name in names:
        original = getattr(module, name)

        def wrapper(*args, _name=name, _original=original, **kwargs):
            out = _original(*args, **kwargs)
            calls[_name].append((args, kwargs, out))
            return out

        object.__setattr__(module, name, wrapper)
    try:
        yield calls
    finally:
        for name in names:
            module.__dict__.pop(name, None)


def guidance_kind(guidance) -> str:
    from threestudio_lucid.guidance.ism_guidance import ISMGuidance
    from threestudio_lucid.guidance.vsd_guidance import VSDGuidance

    if isinstance(guidance, VSDGuidance):
        return "vsd"
    if isinstance(guidance, ISMGuidance):
        return "ism"
    return "sds"


def abar(guidance, t: torch.Tensor) -> torch.Tensor:
    return guidance.alphas_cumprod[t.long()].view(-1, 1, 1, 1)


def x0_estimate(guidance, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``: the one-step estimate of the clean latent."""
    a = abar(guidance, t)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def timestep_grid(guidance, n: int) -> List[int]:
    """``n`` timesteps spread evenly over the method's range at its current step: ``[min_step, max_step]``
    (SDS, VSD, ESD), or ISM's timestep-table indices ``[low, high)`` mapped to timesteps."""
    if guidance_kind(guidance) == "ism":
        low, high = guidance.index_bounds
        return [int(i) for i in np.unique(np.round(np.linspace(low, high - 1, n)).astype(int))]
    return [int(t) for t in np.unique(np.round(np.linspace(guidance.min_step, guidance.max_step, n)).astype(int))]


def timestep_of(guidance, value: int) -> int:
    """The timestep a grid value stands for (ISM's grid holds timestep-table indices)."""
    return guidance.timestep_values[value] if guidance_kind(guidance) == "ism" else value


def draw_noise(guidance, shape, generator: torch.Generator) -> torch.Tensor:
    """Noise as the method draws it: ISM's ``sample_noise`` (its own generator, offset noise included);
    standard normal otherwise."""
    if guidance_kind(guidance) == "ism":
        return guidance.sample_noise(shape)
    return torch.randn(shape, generator=generator)


def latent_shape(guidance, batch_size: int):
    return (batch_size, guidance.unet.config.in_channels, guidance.latent_size, guidance.latent_size)


def probe(guidance, rgb: torch.Tensor, prompt_utils, cams: Dict[str, torch.Tensor], value: int,
          noise: torch.Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """One call of the real guidance on renders ``rgb`` [B,H,W,3] at timestep grid value ``value`` with
    ``noise``. Returns (latents, detached): ``z``; ``update`` ``-dL/dz`` times B for the batch-mean losses
    (SDS, VSD: the guidance's own gradient ``-grad``); ``x_t``, ``t`` [B]; ``target`` (x0^t from the guided
    pretrained prediction); ``eps_cond``, ``eps_uncond`` (the pretrained prediction's two halves) and
    ``eps_target`` (what the guided prediction is compared with: the noise, ISM's e_s) and the ``guidance_scale``
    the call used (SDS's is its configured scale + 1); ISM: ``x_s``, ``s``, ``start`` (x0^s); VSD/ESD: ``pretrained`` (P),
    ``estimator`` (L), ``estimator_camera``, ``estimator_free`` (L with each half of the estimator alone)."""
    kind = guidance_kind(guidance)
    b = rgb.shape[0]
    rgb = rgb.detach().clone().requires_grad_(True)
    args = (rgb, prompt_utils, cams["elevation"], cams["azimuth"], cams["camera_distances"])
    names = ["prepare_latents", "predict_noise"] + {"ism": ["inversion_eps"], "vsd": ["lora_score"]}.get(kind, [])
    with recording(guidance, *names) as calls:
        if kind == "ism":
            out = guidance(*args, noise=noise, t_index=value)
        elif kind == "vsd":
            t = torch.full((b,), value, dtype=torch.long)
            out = guidance(*args, mvp_mtx=cams["mvp_mtx"], c2w=cams["c2w"], noise=noise, t=t, generator=generator)
        else:
            out = guidance(*args, noise=noise, t=torch.full((b,), value, dtype=torch.long))
    z = calls["prepare_latents"][0][2]
    loss = next(out[k] for k in LOSS_KEYS if k in out)
    scale = 1.0 if kind == "ism" else float(b)  # SDS, VSD: 0.5 ||z - sg(z - g)||^2 / B
    update = -torch.autograd.grad(loss, z)[0] * scale
    x_t, t = calls["predict_noise"][0][0][:2]
    predicted = calls["predict_noise"][0][2]
    eps = predicted["eps"]
    result = {"z": z.detach(), "update": update.detach(), "x_t": x_t.detach(), "t": t.detach().long(),
              "target": x0_estimate(guidance, x_t, eps, t).detach(),
              "eps_cond": predicted["eps_cond"].detach(), "eps_uncond": predicted["eps_uncond"].detach(),
              "eps_target": noise.detach(),  # what the guided eps is compared with (ISM: e_s, below)
              "guidance_scale": float(calls["predict_noise"][0][1]["guidance_scale"])}
    if kind == "ism":
        x_s, s = calls["inversion_eps"][-1][0][:2]  # the last inversion prediction is e_s = eps(x_s, s)
        e_s = calls["inversion_eps"][-1][2]
        s = s.reshape(1).expand(b).long()
        result.update(x_s=x_s.detach(), s=s, start=x0_estimate(guidance, x_s, e_s, s).detach(),
                      eps_target=(noise if guidance.cfg.sds else e_s).detach())
    if kind == "vsd":
        w = guidance.weight(t)
        eps_estimate = calls["lora_score"][0][2]
        text_cond = prompt_utils.get_text_embeddings(cams["elevation"], cams["azimuth"], cams["camera_distances"],
                                                     view_dependent_prompting=False)[:b]
        camera = guidance.camera_condition(cams["mvp_mtx"], cams["c2w"])
        with torch.no_grad():
            eps_camera = guidance.lora_eps(x_t, t, text_cond, camera)
            eps_free = guidance.lora_eps(x_t, t, text_cond, torch.zeros_like(camera))
        result.update(
            pretrained=(-w * (eps - noise)).detach(), estimator=(w * (eps_estimate - noise)).detach(),
            estimator_camera=(w * (eps_camera - noise)).detach(), estimator_free=(w * (eps_free - noise)).detach(),
        )
    return result


# ---------------------------------------------------------------------------------------------------
# measures


def visible(x: torch.Tensor) -> torch.Tensor:
    """Latent channels that reach the render, flattened per item: [B, 3 h w]."""
    return x[:, :VISIBLE].reshape(x.shape[0], -1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item cosine of latents [B,C,h,w] over the visible channels; nan where either is zero."""
    a, b = visible(a).double(), visible(b).double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    out = (a * b).sum(1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), out, torch.full_like(out, float("nan")))


def nanmean(x: torch.Tensor) -> float:
    """Mean of the finite entries; nan when there are none (e.g. every cosine undefined)."""
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else float("nan")


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-item root mean square over the visible channels."""
    return visible(x).double().pow(2).mean(1).sqrt()


def encode(guidance, rgb: torch.Tensor) -> torch.Tensor:
    """Images [B,H,W,3] in [0,1] -> the guidance's latents (its own VAE)."""
    with torch.no_grad():
        return guidance.prepare_latents(rgb.float())


def decode(guidance, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images [B,H,W,3] in [0,1] (the guidance's own decoder, clamped)."""
    with torch.no_grad():
        return guidance.decode_latents(latents).permute(0, 2, 3, 1)


def latent_sharpness(guidance, images: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """``evaluate.sharpness`` of ``images`` [V,H,W,3] against the truth passed through the same VAE (so a
    decoded latent is compared at the latent's resolution: the truth's own latent scores 1), both on the
    truth's interior ``mask`` [V,H,W]."""
    from threestudio_lucid.toy_world.evaluate import sharpness

    reference = decode(guidance, encode(guidance, truth))
    return sharpness(images, mask, reference, mask)


def spread(latents: torch.Tensor) -> torch.Tensor:
    """Per view, the RMS over the visible entries of the standard deviation over draws; ``latents``
    [draws, V, C, h, w] -> [V]."""
    sd = latents.double().std(dim=0, unbiased=False)
    return visible(sd).pow(2).mean(1).sqrt()


def responsibilities(guidance, x_t: torch.Tensor, t: torch.Tensor, prompt_utils, cams) -> torch.Tensor:
    """The exact prior's posterior over its renders at ``x_t`` [B, N] under the conditional prompt the
    guidance uses there (``ToyDenoiser.posterior``'s responsibilities)."""
    unet = guidance.unet
    cond = prompt_utils.get_text_embeddings(cams["elevation"], cams["azimuth"], cams["camera_distances"],
                                            guidance.cfg.view_dependent_prompting)[: x_t.shape[0]]
    return unet.posterior(x_t, t, unet.component_log_priors(unet.caption_weights(cond)))["responsibilities"]


def variant_shares(guidance, x_t: torch.Tensor, t: torch.Tensor, prompt_utils, cams) -> torch.Tensor:
    """Posterior mass per variant [B, variants]: the responsibilities summed over each variant's renders
    (variant indices as the world numbers them per object; the worlds here hold one object)."""
    resp = responsibilities(guidance, x_t, t, prompt_utils, cams)
    variant = guidance.models.pipe.unet.train_set.variant_index.long()
    return resp @ torch.nn.functional.one_hot(variant, int(variant.max()) + 1).to(resp)


def near_view_mask(train, views: Dict[str, torch.Tensor], max_deg: float, object_index: int = 0) -> torch.Tensor:
    """[V, N]: which of the world's renders show object ``object_index`` from a camera within ``max_deg``
    degrees (angle between the camera directions from the object's centre) of each view's."""
    from threestudio_lucid.toy_world.objects import orbit_c2w

    mine = orbit_c2w(views["elevation"], views["azimuth"], views["distance"])[:, :3, 3]
    theirs = orbit_c2w(train.elevation, train.azimuth, train.distance)[:, :3, 3]
    cos = torch.nn.functional.normalize(mine, dim=1) @ torch.nn.functional.normalize(theirs, dim=1).T
    return (cos >= math.cos(math.radians(max_deg)) - 1e-6) & (train.object_index == object_index)[None]


def sweep(guidance, rgb: torch.Tensor, prompt_utils, cams, n_timesteps: int, n_draws: int, seed: int,
          on_probe: Optional[Callable[[int, int, Dict], None]] = None) -> Dict[int, List[Dict]]:
    """``probe`` at every grid timestep with ``n_draws`` noise draws (reproducible: the draws come from
    ``seed``, and ISM's own generator is reseeded with it). Returns ``{grid value: [probe per draw]}``."""
    generator = torch.Generator().manual_seed(seed)
    if guidance_kind(guidance) == "ism":
        guidance.noise_generator.manual_seed(seed)
    out = {}
    for value in timestep_grid(guidance, n_timesteps):
        out[value] = []
        for k in range(n_draws):
            noise = draw_noise(guidance, latent_shape(guidance, rgb.shape[0]), generator)
            p = probe(guidance, rgb, prompt_utils, cams, value, noise, generator)
            if on_probe is not None:
                on_probe(value, k, p)
            out[value].append(p)
    return out


def expected(probes: Dict[int, List[Dict]], name: str, values: Optional[Sequence[int]] = None,
             half: Optional[int] = None) -> torch.Tensor:
    """Mean of ``name`` over the draws and the grid timesteps (``values``: a subset), [B,C,h,w]; ``half`` 0 or 1:
    over the even or the odd draws only (to see how much a number moves with the draws)."""
    values = list(probes) if values is None else list(values)
    return torch.stack([p[name] for v in values for p in (probes[v] if half is None else probes[v][half::2])]).mean(0)


def split_half(probes: Dict[int, List[Dict]], name: str, direction: torch.Tensor) -> float:
    """``|cos(E_even[name], direction) - cos(E_odd[name], direction)|``: how much a cosine of the expected term
    moves between two halves of the draws (the full-sample noise is about half of it)."""
    a, b = (nanmean(cosine(expected(probes, name, half=h), direction)) for h in (0, 1))
    return abs(a - b)


# ---------------------------------------------------------------------------------------------------
# study 1: over-smoothing on the multimodal world


def favoured_agreement(shares: torch.Tensor) -> torch.Tensor:
    """``shares`` [draws, V, variants] at one timestep -> per view, the fraction of draws whose favoured
    variant (largest posterior mass) is the one most draws favour: 1 = every draw picks the same mode."""
    favoured = shares.argmax(dim=2)  # [draws, V]
    modal = favoured.mode(dim=0).values  # [V]
    return (favoured == modal[None]).double().mean(0)


def oversmoothing_measures(guidance, rgb: torch.Tensor, prompt_utils, cams, nearest: Sequence[str],
                           variants: Dict[str, torch.Tensor], truth: torch.Tensor, mask: torch.Tensor,
                           near_view: torch.Tensor, n_timesteps: int, n_draws: int, seed: int) -> Dict[str, Any]:
    """What one method's guidance does to renders ``rgb`` [V,H,W,3] on the multimodal world.

    ``variants``: every variant's truth at these views [V,H,W,3] (anti-aliased, as the world's renders);
    ``nearest``: each view's nearest variant (for a variant's own truth, that variant); ``truth``: the variant
    the sharpness is scored against; ``mask``: the interior region [V,H,W]; ``near_view`` [V, N]: the world's
    renders taken from near each view's camera (``near_view_mask``). Over the timestep grid and the draws
    (``by_t``: per grid timestep; timesteps as keys):

    - ``input_sharpness`` / ``target_sharpness``: ``latent_sharpness`` of the input's latent / of the expected
      pseudo-ground-truth (the mean over the draws at each timestep, then averaged over the timesteps):
      1 = the variant's detail, < 1 = blurrier;
    - ``spread``: RMS of the pseudo-ground-truth's std over the draws, over the same for the variants (0 =
      the same target every draw, 1 = as different from draw to draw as the variants are from each other);
    - the prior's posterior at x_t (conditional prompt): ``share_max``, its mass on the variant it favours
      (1 = one mode, 1/variants = an even blend); ``share_view``, its mass on renders from near the view's
      camera (1 = it reads x_t as this view, 0 = as other views); ``agreement``: per view and timestep, the
      fraction of draws favouring the variant most draws favour; ``view_agreement``: the fraction of views
      whose favoured variant (over all draws and timesteps) is the one most views favour;
    - cosines of the expected update with ``nearest variant - render`` (``cos_variant``), ``mean of the
      variants - render`` (``cos_blend``), ``nearest variant - mean`` (``cos_texture``: the nearest variant's
      markings) and ``favoured variant - mean`` (``cos_favoured``: the markings of the variant the prior
      favours at the view); nan where a direction is zero (a variant's truth against itself);
      ``favoured_is_nearest``: the fraction of views where the two variants are the same;
    - ISM only: ``cos_variant_render``, ``cos_texture_render``, ``cos_favoured_render``: the same for the
      update ISM would make with the render in place of its start estimate x0^s (``c (x0^t - z)``, c ISM's
      own per-call factor); ``start_sharpness``.
    """
    lat = {v: encode(guidance, img) for v, img in variants.items()}
    stacked = torch.stack(list(lat.values()))
    blend = stacked.mean(0)
    variant_sd = visible(stacked.double().std(dim=0, unbiased=False)).pow(2).mean(1).sqrt()  # [V]
    names = list(variants)
    variant_of = torch.nn.functional.one_hot(guidance.models.pipe.unet.train_set.variant_index.long(), len(names)).double()
    shares: Dict[int, List[torch.Tensor]] = {}
    view_mass: Dict[int, List[torch.Tensor]] = {}

    def on_probe(value, k, p):
        resp = responsibilities(guidance, p["x_t"], p["t"], prompt_utils, cams)
        shares.setdefault(value, []).append(resp @ variant_of.to(resp))
        view_mass.setdefault(value, []).append((resp * near_view.to(resp)).sum(1))
        if "start" in p:  # ISM: its update is c (x0^t - x0^s); the same factor on (x0^t - z)
            step = p["target"] - p["start"]
            c = (visible(p["update"]) * visible(step)).sum(1) / visible(step).pow(2).sum(1).clamp_min(1e-30)
            p["update_render"] = c.view(-1, 1, 1, 1).to(step) * (p["target"] - p["z"])

    probes = sweep(guidance, rgb, prompt_utils, cams, n_timesteps, n_draws, seed, on_probe)
    z = next(iter(probes.values()))[0]["z"]
    near = torch.stack([lat[v][i] for i, v in enumerate(nearest)])
    near_index = torch.tensor([names.index(v) for v in nearest])
    is_ism = "start" in next(iter(probes.values()))[0]

    def sharp(latents) -> float:
        return latent_sharpness(guidance, decode(guidance, latents), truth, mask)

    def measures(values) -> Dict[str, float]:
        u = expected(probes, "update", values)
        sh = torch.stack([torch.stack(shares[v]) for v in values])  # [values, draws, V, variants]
        favoured = sh.sum(dim=(0, 1)).argmax(dim=-1)  # [V]: the variant the prior favours at each view
        fav = stacked[favoured, torch.arange(len(favoured))]
        m = {
            "target_sharpness": float(np.mean([sharp(expected(probes, "target", [v])) for v in values])),
            "spread": float(np.mean([float((spread(torch.stack([p["target"] for p in probes[v]])) / variant_sd).mean())
                                     for v in values])),
            "share_max": float(sh.max(dim=3).values.mean()),
            "share_view": float(torch.stack([torch.stack(view_mass[v]) for v in values]).mean()),
            "agreement": float(torch.stack([favoured_agreement(x) for x in sh]).mean()),
            "view_agreement": float(favoured_agreement(sh.sum(dim=(0, 1))[:, None]).mean()),
            "favoured_is_nearest": float((favoured == near_index).double().mean()),
            "cos_variant": nanmean(cosine(u, near - z)),
            "cos_blend": nanmean(cosine(u, blend - z)),
            "cos_texture": nanmean(cosine(u, near - blend)),
            "cos_favoured": nanmean(cosine(u, fav - blend)),
        }
        if is_ism:
            u_render = expected(probes, "update_render", values)
            m["cos_variant_render"] = nanmean(cosine(u_render, near - z))
            m["cos_texture_render"] = nanmean(cosine(u_render, near - blend))
            m["cos_favoured_render"] = nanmean(cosine(u_render, fav - blend))
            m["start_sharpness"] = float(np.mean([sharp(expected(probes, "start", [v])) for v in values]))
        return m

    result: Dict[str, Any] = measures(list(probes))
    result["split"] = {"cos_blend": split_half(probes, "update", blend - z),
                       "cos_texture": split_half(probes, "update", near - blend)}
    if bool((visible(near - z).norm(dim=1) > 0).all()):
        result["split"]["cos_variant"] = split_half(probes, "update", near - z)
    result["input_sharpness"] = sharp(z)
    result["by_t"] = {timestep_of(guidance, v): measures([v]) for v in probes}
    result["expected_targets"] = {timestep_of(guidance, v): decode(guidance, expected(probes, "target", [v]))
                                  for v in probes}
    return result


def render_views(renderer, settings, views: Dict[str, torch.Tensor]):
    """The asset's renders (rgb [V,H,W,3] over the world's background, alpha [V,H,W,1]) from any cameras,
    as ``evaluate.evaluate_renderer`` renders the held-out ones."""
    from threestudio_lucid.toy_world.evaluate import render_asset

    return render_asset(renderer, settings, views["elevation"], views["azimuth"], views["distance"], device="cpu")


def training_views(settings, views: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The training camera nearest each view: its azimuth moved down onto the training grid, its elevation
    onto the nearest training elevation (the world's renders there are exactly its mixture's components)."""
    step = 360.0 / settings.n_azimuths
    elevations = torch.tensor(settings.elevations_deg, dtype=torch.float32)
    nearest_elevation = elevations[(views["elevation"][:, None] - elevations[None]).abs().argmin(dim=1)]
    return {"elevation": nearest_elevation, "azimuth": torch.floor(views["azimuth"] / step) * step,
            "distance": views["distance"]}


VIEW_SETS = ("held-out", "training")


def oversmoothing_study(runs: Dict[str, LoadedRun], n_timesteps: int, n_draws: int, seed: int) -> Dict[str, Any]:
    """Every method of ``runs`` (SDS, ISM on the multimodal world) on the same inputs, at the held-out views
    and at the training cameras nearest them: each variant's truth, and every run's final render."""
    from threestudio_lucid.toy_world.evaluate import ground_truth, interior, score_renders

    first = next(iter(runs.values()))
    settings, key = first.settings, first.key
    held_out = held_out_views(settings, key)
    train = first.guidance.models.pipe.unet.train_set
    out: Dict[str, Any] = {}
    for view_set in VIEW_SETS:
        views = held_out if view_set == "held-out" else training_views(settings, held_out)
        cams = guidance_cameras(settings, views)
        near_deg = 360.0 / settings.n_azimuths  # "the view's own renders": within one step of the azimuth grid
        near_view = near_view_mask(train, views, near_deg, settings.objects.index(key))
        truths = ground_truth(settings, key, views["elevation"], views["azimuth"], views["distance"],
                              settings.supersample)
        variants = {v: t["rgb"] for v, t in truths.items()}
        masks = {v: interior(t["alpha"][..., 0] > 0.5) for v, t in truths.items()}
        n = len(views["azimuth"])
        inputs = {f"truth ({v})": (variants[v], [v] * n, v) for v in variants}
        scored = {}
        for name, run in runs.items():
            if view_set == "held-out":  # the benchmark's own renders and scores
                rgb, scores = run.renders, run.scores
            else:
                rgb, alpha = render_views(run.system.renderer, settings, views)
                scores = score_renders(settings, key, rgb, alpha, views["elevation"], views["azimuth"], views["distance"])
            scored[name] = {k: scores[k] for k in ("variant", "view_variants", "sharpness", "consistency")}
            inputs[f"{setting_label(name)} final render"] = (rgb, scores["view_variants"], scores["variant"])
        results: Dict[str, Dict[str, Any]] = {}
        for method, run in runs.items():
            for label, (rgb, nearest, variant) in inputs.items():
                start = time.time()
                results.setdefault(method, {})[label] = m = oversmoothing_measures(
                    run.guidance, rgb, run.prompt_utils, cams, nearest, variants, variants[variant], masks[variant],
                    near_view, n_timesteps, n_draws, seed)
                m["input_image"] = rgb
                print(f"  over-smoothing, {view_set} views: {setting_label(method)} on {label}: "
                      f"{time.time() - start:.0f} s", flush=True)
        out[view_set] = {"inputs": list(inputs), "variants": list(variants), "methods": results, "runs": scored,
                         "views": {k: v.tolist() for k, v in views.items()},
                         "near_renders": int(near_view.sum(1).min()), "near_deg": near_deg}
    return out


# ---------------------------------------------------------------------------------------------------
# study 2: Janus on the biased world

JANUS_TERMS = ("update", "pretrained", "estimator", "estimator_camera", "estimator_free", "entropy")


def janus_measures(guidance, rgb: torch.Tensor, prompt_utils, cams, refs: Dict[str, torch.Tensor],
                   n_timesteps: int, n_draws: int, seed: int) -> Dict[str, Any]:
    """The update of one method on back-view renders ``rgb`` [V,H,W,3] against ``back - render``,
    ``front - render`` and the Janus axis ``front - back`` (``refs``: ``janus_references``).

    For each term (``update``; VSD/ESD also ``pretrained`` P, ``estimator`` L, its halves
    ``estimator_camera`` and ``estimator_free``, and ``entropy`` = L_free - L_cam, what lambda multiplies:
    L = L_cam + lambda (L_free - L_cam)), the expected term's ``cos_back``, ``cos_front``,
    ``cos_axis`` (nan where a direction is zero, e.g. the true back against itself) and ``rms``; VSD/ESD
    also ``relative`` (rms over P's), ``cos_pretrained`` (with the expected P), and per single draw
    ``step_ratio`` = mean |L| / |P| and ``camera_effect`` = mean |L_free - L_cam| / |L_cam|. ``by_t``: the
    same per grid timestep (timesteps as keys)."""
    back, front = encode(guidance, refs["back"]), encode(guidance, refs["front"])

    def on_probe(value, k, p):
        if "pretrained" in p:
            p["entropy"] = p["estimator_free"] - p["estimator_camera"]

    probes = sweep(guidance, rgb, prompt_utils, cams, n_timesteps, n_draws, seed, on_probe)
    first = next(iter(probes.values()))[0]
    z = first["z"]
    terms = [t for t in JANUS_TERMS if t in first]

    def measures(values) -> Dict[str, Any]:
        m: Dict[str, Any] = {}
        mean_p = expected(probes, "pretrained", values) if "pretrained" in terms else None
        for term in terms:
            u = expected(probes, term, values)
            m[term] = {"cos_back": nanmean(cosine(u, back - z)),
                       "cos_front": nanmean(cosine(u, front - z)),
                       "cos_axis": nanmean(cosine(u, front - back)),
                       "rms": float(rms(u).mean())}
            if mean_p is not None:
                m[term]["cos_pretrained"] = nanmean(cosine(u, mean_p))
        if mean_p is not None:
            for term in terms:
                m[term]["relative"] = m[term]["rms"] / m["pretrained"]["rms"]
            draws = [p for v in values for p in probes[v]]
            m["step_ratio"] = float(np.mean([float((rms(p["estimator"]) / rms(p["pretrained"])).mean()) for p in draws]))
            m["camera_effect"] = float(np.mean([float((rms(p["entropy"]) / rms(p["estimator_camera"])).mean())
                                                for p in draws]))
        return m

    result = measures(list(probes))
    result["split"] = {f"{term} {d}": split_half(probes, term, direction)
                       for term in terms for d, direction in (("cos_back", back - z), ("cos_front", front - z),
                                                              ("cos_axis", front - back))
                       if bool((visible(direction).norm(dim=1) > 0).all())}
    result["by_t"] = {timestep_of(guidance, v): measures([v]) for v in probes}
    return result


def janus_study(runs: Dict[str, LoadedRun], n_timesteps: int, n_draws: int, seed: int) -> Dict[str, Any]:
    """Every run's method on its own final render at the back views; SDS also on the true back."""
    first = next(iter(runs.values()))
    settings, key = first.settings, first.key
    views = held_out_views(settings, key)
    back = back_view_mask(settings, views["azimuth"])
    views = {k: v[back] for k, v in views.items()}
    cams = guidance_cameras(settings, views)
    refs = janus_references(settings, key, settings.variants_of(key)[0], views)
    results: Dict[str, Any] = {}
    for name, run in runs.items():
        start = time.time()
        results[name] = janus_measures(run.guidance, run.renders[back], run.prompt_utils, cams, refs, n_timesteps,
                                       n_draws, seed)
        results[name]["janus"] = run.scores["janus"]
        print(f"  Janus: {setting_label(name)}: {time.time() - start:.0f} s", flush=True)
    if "sds" in runs:
        results[TRUE_BACK] = janus_measures(runs["sds"].guidance, refs["back"], runs["sds"].prompt_utils, cams, refs,
                                            n_timesteps, n_draws, seed)
    return {"azimuths": views["azimuth"].tolist(), "methods": results}


TRUE_BACK = "sds-true-back"


# ---------------------------------------------------------------------------------------------------
# aggregation over seeds, conclusions, report


def fmt(values: Sequence[float], digits: int = 2) -> str:
    """Mean (± sample std over seeds when there are several) of the finite values; n/a if none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{np.mean(xs):.{digits}f} ± {np.std(xs, ddof=1):.{digits}f}"


def mean_of(values: Sequence[float]) -> float:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(xs)) if xs else float("nan")


def dig(result: Any, path: Sequence[Any]) -> float:
    for k in path:
        if result is None or k not in result:
            return float("nan")
        result = result[k]
    return float(result) if result is not None else float("nan")


class Seeds:
    """Per-seed results; ``over(...)`` / ``janus(...)`` give the values of one number over the seeds.
    ``over`` with input ``"truth"`` averages the variants' truths within a seed first; ``views``: the view set
    of study 1 (``VIEW_SETS``)."""

    def __init__(self, results: Sequence[Dict]):
        self.results = list(results)

    def over(self, method: str, inp: str, *path, views: str = "held-out") -> List[float]:
        out = []
        for r in self.results:
            by_input = r["oversmoothing"][views]["methods"][method]
            labels = [k for k in by_input if k.startswith("truth (")] if inp == "truth" else [inp]
            out.append(mean_of([dig(by_input[k], path) for k in labels]))
        return out

    def janus(self, method: str, *path) -> List[float]:
        return [dig(r["janus"]["methods"].get(method), path) for r in self.results]


def _more(a: float, b: float, more: str = "more", less: str = "less") -> str:
    return more if a > b else less


def oversmoothing_conclusions(s: Seeds, renders: Sequence[str]) -> List[str]:
    """Plain statements from the measured numbers (seed means) of study 1; the direction of each sentence
    is decided by the numbers it quotes."""
    m = lambda *a, **k: mean_of(s.over(*a, **k))  # noqa: E731
    methods = s.results[0]["oversmoothing"]["held-out"]["methods"]
    first_truth = next(k for k in methods["sds"] if k.startswith("truth ("))
    t_sds, t_ism = list(methods["sds"][first_truth]["by_t"]), list(methods["ism"][first_truth]["by_t"])
    lo, hi, top = t_sds[0], t_sds[-1], t_ism[-1]
    lines = [
        "The prior blends only at high noise. On a perfect render (a variant's truth) its posterior puts "
        f"{m('sds', 'truth', 'by_t', lo, 'share_max'):.2f} of its mass on one variant and "
        f"{m('sds', 'truth', 'by_t', lo, 'share_view'):.2f} on renders from the view's own camera at t = {lo}, and "
        f"{m('sds', 'truth', 'by_t', hi, 'share_max'):.2f} and {m('sds', 'truth', 'by_t', hi, 'share_view'):.2f} at SDS's "
        f"highest t = {hi} (1/3 would be an even blend of the three variants); at ISM's highest t = {top} "
        f"{m('ism', 'truth', 'by_t', top, 'share_max'):.2f} and {m('ism', 'truth', 'by_t', top, 'share_view'):.2f}.",
    ]
    ts, ti = m("sds", "truth", "cos_texture"), m("ism", "truth", "cos_texture")
    lines.append(
        f"On a perfect render SDS's expected update {'erases' if ts < -0.1 else 'keeps'} the variant's markings "
        f"(cosine {ts:.2f} with them) and ISM's {'erases' if ti < -0.1 else 'keeps'} them (cosine {ti:.2f})"
        + (": ISM does keep detail that a render already has, as LucidDreamer says." if ti > ts + 0.1 and ti >= -0.1
           else "."))
    for r in renders:
        ss, si = m("sds", r, "spread"), m("ism", r, "spread")
        as_, ai = m("sds", r, "agreement"), m("ism", r, "agreement")
        vs, vi = m("sds", r, "view_agreement"), m("ism", r, "view_agreement")
        both = si < ss and ai > as_
        verdict = ("more consistent from draw to draw than SDS's, as LucidDreamer says" if both else
                   "not more consistent from draw to draw than SDS's" if si >= ss and ai <= as_ else
                   "consistent on one measure and not on the other")
        lines.append(
            f"On the {r}, ISM's pseudo-ground-truths are {verdict}: spread over draws ISM {si:.2f}, SDS {ss:.2f}; draws "
            f"favouring the same variant ISM {ai:.2f}, SDS {as_:.2f}. The favoured variant is the same in {vi:.2f} of the "
            f"views for ISM and {vs:.2f} for SDS"
            + (": ISM commits each view to a mode, but not every view to the same one (what the benchmark's "
               "consistency score counts)." if vi < 1 and vi < vs else "."))
    wrong_view, no_markings = [], []
    for r in renders:
        vs_, vi_ = m("sds", r, "share_view"), m("ism", r, "share_view")
        fs, fi = m("sds", r, "cos_favoured"), m("ism", r, "cos_favoured")
        xs, xi = m("sds", r, "cos_texture"), m("ism", r, "cos_texture")
        gs, gi = (m("sds", r, "share_view", views="training"), m("ism", r, "share_view", views="training"))
        wrong_view.append(max(vs_, vi_, gs, gi) < 0.25)
        no_markings.append(max(abs(fs), abs(fi), abs(xs), abs(xi)) < 0.2)
        lines.append(
            f"On the {r} (sharpness {m('sds', r, 'input_sharpness'):.3f} on this scale) the prior reads x_t as another view: "
            f"its posterior mass on renders from the view's own camera is {vs_:.2f} over SDS's range and {vi_:.2f} over ISM's "
            f"({gs:.2f} and {gi:.2f} at the training cameras, where the world has renders of exactly that view). The "
            f"expected update's cosine with the markings of the variant the prior favours there is {fs:.2f} (SDS) and "
            f"{fi:.2f} (ISM), with those of the render's nearest variant {xs:.2f} and {xi:.2f}.")
    for r in renders:
        vs, vi, vc = m("sds", r, "cos_variant"), m("ism", r, "cos_variant"), m("ism", r, "cos_variant_render")
        bs, bi = m("sds", r, "cos_blend"), m("ism", r, "cos_blend")
        lines.append(
            f"On the {r} ISM's update pulls {_more(vi, vs)} toward the nearest variant than SDS's (cosine with nearest "
            f"variant − render: ISM {vi:.2f}, SDS {vs:.2f}; with blend − render: {bi:.2f}, {bs:.2f}). ISM's update is "
            f"SDS's form c (x0^t − render) minus the term c (x0^s − render); with it kept, ISM's own pseudo-ground-truths "
            f"would give {vc:.2f}"
            + (": that left-out term is where the difference comes from. " if vc > vi + 0.1 and vi < vs else ". ")
            + f"x0^s is not the render: its sharpness is {m('ism', r, 'start_sharpness'):.2f} against the render's "
            f"{m('ism', r, 'input_sharpness'):.3f}.")
    if all(wrong_view) and all(no_markings):
        lines.append(
            "Mechanism: the ball looks the same from every camera but for its markings, so once a render is blurry "
            "nothing in it tells the prior which view it is. At every noise level the posterior explains the blurry "
            "render by renders of other views; SDS's pseudo-ground-truths are such renders, different from draw to draw, "
            "ISM's are the same from draw to draw, but in both cases their markings sit where that other view has them. "
            "Neither expected update carries the markings of this view, so neither method can put detail back into a "
            "blurred asset, and ISM's consistency does not make it sharper than SDS. (It does keep detail a render "
            "already has, by the perfect-render rows.)"
            if ti > ts + 0.1 else
            "Mechanism: once a render is blurry the posterior explains it by renders of other views, at every noise "
            "level and for both methods; neither expected update carries the markings of this view, so neither method "
            "can put detail back into a blurred asset, and ISM's consistency does not make it sharper than SDS.")
    else:
        lines.append(
            "These measurements do not single out one mechanism on every input (the summary needs the posterior to "
            "put under 0.25 of its mass on the view's own renders and both updates to have |cosine| under 0.2 with "
            "the markings, on both final renders); see the tables.")
    return lines


def janus_conclusions(s: Seeds) -> List[str]:
    """Plain statements from the measured numbers (seed means) of study 2; the direction of each sentence is
    decided by the numbers it quotes."""
    j = lambda *a: mean_of(s.janus(*a))  # noqa: E731
    res0 = s.results[0]["janus"]["methods"]
    lines = []
    if TRUE_BACK in res0:
        ts = list(res0[TRUE_BACK]["by_t"])
        lo, hi, mean = (j(TRUE_BACK, "by_t", ts[0], "update", "cos_axis"), j(TRUE_BACK, "by_t", ts[-1], "update", "cos_axis"),
                        j(TRUE_BACK, "update", "cos_axis"))
        lines.append(
            f"The biased prior pulls a true back toward the front, {_more(hi, lo, 'more', 'less')} at high noise: SDS's update "
            f"on the true back has cosine {lo:.2f} with the Janus axis (front − back) at t = {ts[0]}, {hi:.2f} at t = {ts[-1]} "
            f"and {mean:.2f} in expectation"
            + (". The world exposes the bias ESD blames." if mean > 0.1 else "."))
    if "sds" in res0:
        ts = list(res0["sds"]["by_t"])
        a = j("sds", "update", "cos_axis")
        lines.append(
            f"On SDS's own final backs (Janus {j('sds', 'janus'):.3f}) the expected update is "
            + (f"nearly balanced along the axis (cosine {a:.2f}): the half-front back is where SDS's pulls cancel"
               if abs(a) < 0.1 else f"{'toward' if a > 0 else 'away from'} the front (cosine {a:.2f} with the axis)")
            + f"; it pulls toward the front at low noise ({j('sds', 'by_t', ts[0], 'update', 'cos_axis'):.2f} at t = {ts[0]}) "
            f"and {'away from it' if j('sds', 'by_t', ts[-1], 'update', 'cos_axis') < 0 else 'toward it'} at high noise "
            f"({j('sds', 'by_t', ts[-1], 'update', 'cos_axis'):.2f} at t = {ts[-1]}).")
    if "ism" in res0:
        a, f, b = j("ism", "update", "cos_axis"), j("ism", "update", "cos_front"), j("ism", "update", "cos_back")
        lines.append(
            f"On ISM's own final backs (Janus {j('ism', 'janus'):.3f}, the highest) the expected update points "
            + (f"more toward the mirrored front ({f:.2f}) than toward the true back ({b:.2f})" if f > b else
               f"more toward the true back ({b:.2f}) than toward the mirrored front ({f:.2f})")
            + f", cosine {a:.2f} with the axis.")
    vsd = [m for m in ("vsd", "esd-0", "esd-0.5", "esd-1") if m in res0]
    if not vsd:
        return lines
    cam = [j(m, "camera_effect") for m in vsd]
    lines.append(
        "The trained estimator hardly uses the camera: per draw, its camera-free and camera-conditioned terms differ by "
        + ", ".join(f"{c:.3f} ({setting_label(m)})" for c, m in zip(cam, vsd)) + " of the camera-conditioned term. Since "
        "L = L_cam + λ (L_free − L_cam), λ changes the estimator term by λ times that fraction: the VSD estimate is "
        "already almost the camera-free one that ESD mixes in.")
    if "vsd" in res0:
        p, l_, u = j("vsd", "pretrained", "cos_axis"), j("vsd", "estimator", "cos_axis"), j("vsd", "update", "cos_axis")
        lines.append(
            f"On VSD's final backs (Janus {j('vsd', 'janus'):.3f}) the pretrained term P has cosine {p:.2f} with the Janus axis, "
            f"the estimator term L {l_:.2f}; L is {j('vsd', 'estimator', 'relative'):.2f} times P's size in expectation "
            f"({j('vsd', 'step_ratio'):.1f} times per draw) and "
            f"{'partly opposes' if j('vsd', 'estimator', 'cos_pretrained') < 0 else 'partly adds to'} it (cosine "
            f"{j('vsd', 'estimator', 'cos_pretrained'):.2f} with P). L = −c (x0_estimator − render) pushes the render away from the estimator's own, nearly camera-blind, "
            f"estimate of it; the sum has cosine {u:.2f} with the axis and points "
            + (f"more toward the true back ({j('vsd', 'update', 'cos_back'):.2f}) than toward the front "
               f"({j('vsd', 'update', 'cos_front'):.2f})" if j('vsd', 'update', 'cos_back') > j('vsd', 'update', 'cos_front')
               else f"more toward the front ({j('vsd', 'update', 'cos_front'):.2f}) than toward the true back "
                    f"({j('vsd', 'update', 'cos_back'):.2f})")
            + (". So it is the estimator term that keeps VSD's backs off the front." if l_ < -0.05 and abs(p) < abs(l_) else "."))
        e, r = j("vsd", "entropy", "cos_axis"), j("vsd", "entropy", "relative")
        lines.append(
            f"What λ adds at VSD's final state: the entropy direction L_free − L_cam has cosine {e:.2f} with the Janus axis "
            f"({'toward' if e > 0 else 'away from'} the front) at {r:.2f} of P's size, so λ = 0.5 or 1 would add "
            f"{0.5 * r:.2f} or {r:.2f} of P along a direction that "
            + ("raises Janus: consistent with the benchmark's ESD runs ending nearer 0.5, and small because the estimator "
               "hardly uses the camera." if e > 0.1 else "does not raise Janus; the final state does not show why the ESD "
               "runs end nearer 0.5."))
    esd = [m for m in ("esd-0.5", "esd-1") if m in res0]
    if esd:
        lines.append(
            "In the ESD runs' own final states the entropy direction has cosine "
            + ", ".join(f"{j(m, 'entropy', 'cos_axis'):.2f} ({setting_label(m)}, {j(m, 'entropy', 'relative'):.2f} of P)"
                        for m in esd)
            + " with the axis, and their whole updates "
            + ", ".join(f"{j(m, 'update', 'cos_axis'):.2f} ({setting_label(m)})" for m in esd)
            + ". These are end states of different runs (each trained its own estimator): they show where each run stopped, "
            "not the path that led there, and the measurement reads only the final step.")
    return lines


def report(path: str, s: Seeds, args, command: str, meta: Dict) -> str:
    seeds, label = args.seeds, setting_label
    r0 = s.results[0]
    lines = [
        "# Why the claims do not hold on the toy worlds: the mechanism",
        "",
        "Written by `scripts/claims_diagnostics.py` from measurements on the finished runs of `scripts/claims_benchmark.py` "
        "(`docs/claims.md`); nothing here is typed by hand. Each run's guidance is rebuilt from its `configs/parsed.yaml` "
        "(the official settings the run used) on the real world folder, with the state of its final checkpoint "
        f"(`ckpts/last.ckpt`, step {meta['step']}; for VSD/ESD the estimator the run trained), and called on fixed renders; "
        "what it computes inside is read from its own calls (`recording`), not recomputed. The conclusions are at the "
        "end of each section: [LucidDreamer's claim](#conclusion-luciddreamers-claim), "
        "[ESD's claim](#conclusion-esds-claim).",
        "",
        f"- Command: `{command}`",
        f"- Date: {meta['started']} UTC; {meta['wall_minutes']:.1f} min wall on {meta['machine']}",
        f"- Runs: seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))} of `{meta['out']}`"
        + ("; numbers are mean ± sample std over the seeds" if len(seeds) > 1 else "; one seed, so no spread over seeds "
           "(`--seeds 0 1 2` for all three)"),
        f"- Sampling: {args.timesteps} timesteps spread evenly over each method's range at the final step (SDS, VSD, ESD: "
        "[min_step, max_step]; ISM: its timestep-index range after warm-up), "
        f"{args.draws} noise draws at each (the method's own noise: ISM's generator with its offset noise), draw seed "
        f"{args.measure_seed}.",
        f"- Noise: the cosines of the expected update computed from the even and from the odd draws differ by "
        f"{meta['split_median']:.2f} (median) and at most {meta['split_max']:.2f} ({meta['split_worst']}), over the "
        f"{meta['split_count']} cosines of the two main tables; with all the draws the noise is about half that. Read "
        "smaller differences as noise.",
        "",
        "How to read the numbers:",
        "",
        "- The **pseudo-ground-truth** (LucidDreamer's term) is the one-step estimate of the clean image the loss pulls "
        "toward, `x0^t = (x_t − sqrt(1 − abar_t) eps(x_t, t, y)) / sqrt(abar_t)` with the guided prediction. SDS: x_t is the "
        "render noised with a fresh draw, and the update is `c (x0^t − z)` (z the render's latent). ISM: x_t comes from DDIM "
        "inversion of the render, and the update is `c (x0^t − x0^s)`, x0^s the estimate at the start s = t − δ of its "
        "interval: ISM puts x0^s where SDS has the render.",
        "- **Update** u = `−dL/dz`, the gradient the real guidance sends into the render's latent; the **expected update** "
        "is its mean over the timesteps and draws (what many steps add up to). Cosines are those of the expected update, "
        "taken in the latent (channels 0-2: the toy VAE's latent is the 2x2-pooled image), the resolution at which the "
        "guidance sees and moves the render.",
        "- **Sharpness** is `evaluate.sharpness` (Laplacian energy inside the silhouette) of a decoded latent against the "
        "variant's truth passed through the same VAE: 1 = the variant's detail at the latent's resolution, < 1 blurrier, "
        "> 1 more high-frequency energy (detail or noise). It is not the benchmark's scale (full-resolution renders): the "
        "input column gives each render's value on this one.",
        "",
        "## 1. Over-smoothing (multimodal world): SDS and ISM",
        "",
    ]
    study = r0["oversmoothing"]["held-out"]
    runs, variants = study["runs"], study["variants"]
    renders = [f"{label(m)} final render" for m in runs]
    inputs = ["truth"] + renders
    shown = {"truth": f"a variant's truth (mean of {len(variants)})", **{r: r for r in renders}}
    methods = list(study["methods"])
    lines += [
        f"Inputs, at the world's {meta['n_views']} held-out views: each variant's ground truth ("
        + ", ".join(variants) + "; a perfect render), and the final renders of the SDS and ISM runs (seed "
        f"{seeds[0]}; nearest variant over the views, then per view: "
        + "; ".join(f"{label(m)} {v['variant']}, " + ", ".join(f"{k} {n}" for k, n in _counts(v["view_variants"]).items())
                    for m, v in runs.items()) + "). Each method is applied to every input.",
        "",
        "| method | input | input sharpness | pseudo-GT sharpness | spread over draws | draws agreeing | views agreeing "
        "| mass on favoured variant | mass on the view's own renders | cos(u, variant − render) | cos(u, blend − render) "
        "| cos(u, markings of nearest) | cos(u, markings of favoured) |",
        "|---" * 13 + "|",
    ]
    keys = ("input_sharpness", "target_sharpness", "spread", "agreement", "view_agreement", "share_max", "share_view",
            "cos_variant", "cos_blend", "cos_texture", "cos_favoured")
    for method in methods:
        for inp in inputs:
            cells = [fmt(s.over(method, inp, k), 3 if "sharpness" in k else 2) for k in keys]
            lines.append(f"| {label(method)} | {shown[inp]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- pseudo-GT sharpness: of the expected pseudo-ground-truth (the mean over the draws at each timestep), averaged "
        "over the timesteps.",
        "- spread over draws: RMS of the pseudo-ground-truth's std over the draws, over that of the three variants (0 = "
        "the same target every draw, 1 = as different from draw to draw as the variants are from each other). Draws "
        "agreeing: per view and timestep, the fraction of draws favouring the variant most draws favour. Views agreeing: "
        "the fraction of views whose favoured variant (over all draws and timesteps) is the one most views favour.",
        "- mass on favoured variant: the exact prior's posterior at x_t (the conditional prompt; `ToyDenoiser.posterior`) "
        "summed over each variant's renders, the largest of the three (1 = one mode, 0.33 = an even blend). Mass on the "
        f"view's own renders: summed over the renders taken within {study['near_deg']:g} degrees (one step of the training "
        f"azimuth grid) of the view's camera, {study['near_renders']} renders per view here (1 = the prior reads x_t as "
        "this view, 0 = as other views).",
        "- variant = each view's nearest variant (for a truth, the variant itself: cos(u, variant − render) is then "
        "undefined); blend = the mean of the three variants; markings of a variant = variant − blend; favoured = the "
        "variant with the most posterior mass at that view over the draws and timesteps.",
        "",
    ]
    if "ism" in methods:
        lines += [
            "ISM's start estimate x0^s, and the term ISM's update leaves out: SDS's form of the update with ISM's own "
            "pseudo-ground-truths is c (x0^t − z) = u + c (x0^s − z), c ISM's factor in each call.",
            "",
            "| input | input sharpness | x0^s sharpness | cos(u, variant − render) | cos(u, markings of favoured) "
            "| with c (x0^s − z) kept: cos(·, variant − render) | cos(·, markings of favoured) |",
            "|---|---|---|---|---|---|---|",
        ]
        for inp in inputs:
            cells = [fmt(s.over("ism", inp, k), 3 if "sharpness" in k else 2)
                     for k in ("input_sharpness", "start_sharpness", "cos_variant", "cos_favoured", "cos_variant_render",
                               "cos_favoured_render")]
            lines.append(f"| {shown[inp]} | " + " | ".join(cells) + " |")
        lines.append("")
    grid = r0["oversmoothing"]["training"]
    lines += [
        "The same at the training cameras nearest the held-out views (azimuths "
        + ", ".join(f"{a:g}" for a in grid["views"]["azimuth"]) + " deg, elevation "
        + ", ".join(sorted({f"{e:g}" for e in grid["views"]["elevation"]})) + " deg), where the world has renders of "
        "exactly these views: whether a view lying between training cameras matters. The final renders are rendered "
        "from the runs' checkpoints there (sharpness on the benchmark's scale "
        + ", ".join(f"{label(m)} {v['sharpness']:.3f}" for m, v in grid["runs"].items()) + ").",
        "",
        "| method | input | pseudo-GT sharpness | spread over draws | mass on favoured variant | mass on the view's own "
        "renders | cos(u, markings of nearest) | cos(u, markings of favoured) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        for inp in inputs:
            cells = [fmt(s.over(method, inp, k, views="training"), 3 if "sharpness" in k else 2)
                     for k in ("target_sharpness", "spread", "share_max", "share_view", "cos_texture", "cos_favoured")]
            lines.append(f"| {label(method)} | {shown[inp]} | " + " | ".join(cells) + " |")
    lines.append("")
    for inp in ("truth", renders[0]):
        lines += [f"By timestep, held-out views, on {shown[inp] if inp == 'truth' else 'the ' + inp}:", "",
                  "| method | t | pseudo-GT sharpness | mass on favoured variant | mass on the view's own renders "
                  "| draws agreeing | cos(u, markings of favoured) | cos(u, blend − render) |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in methods:
            first_truth = next(k for k in study["methods"][method] if k.startswith("truth ("))
            for t in study["methods"][method][first_truth]["by_t"]:
                cells = [fmt(s.over(method, inp, "by_t", t, k), 3 if "sharpness" in k else 2)
                         for k in ("target_sharpness", "share_max", "share_view", "agreement", "cos_favoured", "cos_blend")]
                lines.append(f"| {label(method)} | {t} | " + " | ".join(cells) + " |")
        lines.append("")
    if meta.get("figure"):
        lines += [f"![pseudo-ground-truths]({os.path.basename(meta['figure'])})", "",
                  f"`{os.path.basename(meta['figure'])}`: the first held-out view, seed {seeds[0]}, draw seed "
                  f"{args.measure_seed}. Each row: the input, then the method's expected pseudo-ground-truth (the mean over "
                  "the draws) at each timestep of its grid, low to high t. Rows: " + "; ".join(meta["figure_rows"]) + ".", ""]
    lines += ["### Conclusion: LucidDreamer's claim", ""]
    lines += [f"- {c}" for c in oversmoothing_conclusions(s, renders)]
    lines.append("")

    # ---- study 2
    jm = r0["janus"]["methods"]
    name = lambda m: "SDS on the true back" if m == TRUE_BACK else label(m)  # noqa: E731
    lines += [
        "## 2. Janus (biased world): SDS, ISM, VSD, ESD",
        "",
        "Inputs: each run's final render at the held-out back views (azimuths "
        + ", ".join(f"{a:g}" for a in r0["janus"]["azimuths"]) + " deg, those the Janus score uses), and, for SDS, the "
        "true back. Directions: to the true back (back − render), to the mirrored front (front − render: what a Janus back "
        "shows), and the Janus axis (front − back; positive = toward a second front).",
        "",
        "| method | run's Janus | cos(u, back − render) | cos(u, front − render) | cos(u, front − back) |",
        "|---|---|---|---|---|",
    ]
    for m in jm:
        lines.append(f"| {name(m)} | {fmt(s.janus(m, 'janus'), 3) if m != TRUE_BACK else '(the truth: 0)'} | "
                     f"{fmt(s.janus(m, 'update', 'cos_back'))} | {fmt(s.janus(m, 'update', 'cos_front'))} | "
                     f"{fmt(s.janus(m, 'update', 'cos_axis'))} |")
    vsd_like = [m for m in jm if "pretrained" in jm[m]]
    if vsd_like:
        lines += [
            "",
            "VSD/ESD: the expected update split into the pretrained term P = −w (eps_pretrained − noise) and the estimator term "
            "L = w (eps_estimator − noise), u = P + L; L = L_cam + λ (L_free − L_cam) with L_cam, L_free the estimator's "
            "camera-conditioned and camera-free predictions (the run's own estimator, read through `lora_eps`), so what λ "
            "adds is λ (L_free − L_cam). Size: RMS of the expected term over that of P.",
            "",
            "| method | term | size (÷ P) | cos(·, P) | cos(·, back − render) | cos(·, front − render) | cos(·, front − back) |",
            "|---|---|---|---|---|---|---|",
        ]
        term_names = {"pretrained": "P", "estimator": "L", "estimator_camera": "L_cam", "estimator_free": "L_free",
                      "entropy": "L_free − L_cam", "update": "u = P + L"}
        for m in vsd_like:
            for term, tname in term_names.items():
                lines.append(f"| {label(m)} | {tname} | {fmt(s.janus(m, term, 'relative'))} | "
                             f"{fmt(s.janus(m, term, 'cos_pretrained'))} | {fmt(s.janus(m, term, 'cos_back'))} | "
                             f"{fmt(s.janus(m, term, 'cos_front'))} | {fmt(s.janus(m, term, 'cos_axis'))} |")
        lines += [
            "",
            "Per single draw (not the expectation): |L| / |P|, and the camera effect |L_free − L_cam| / |L_cam|:",
            "",
            "| method | \\|L\\| / \\|P\\| | \\|L_free − L_cam\\| / \\|L_cam\\| |",
            "|---|---|---|",
        ]
        for m in vsd_like:
            lines.append(f"| {label(m)} | {fmt(s.janus(m, 'step_ratio'))} | {fmt(s.janus(m, 'camera_effect'), 3)} |")
        lines.append("")
    t_methods = [m for m in (TRUE_BACK, "sds", "vsd", "esd-1") if m in jm]
    if t_methods:
        header, cols = [], []
        for m in t_methods:
            header.append(f"{name(m)}: u")
            cols.append((m, "update"))
            if m in vsd_like:
                header += [f"{name(m)}: P", f"{name(m)}: L"]
                cols += [(m, "pretrained"), (m, "estimator")]
        lines += ["By timestep, cosine of the expected term with the Janus axis (front − back):", "",
                  "| t | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for t in jm[t_methods[0]]["by_t"]:
            lines.append(f"| {t} | " + " | ".join(fmt(s.janus(m, "by_t", t, term, "cos_axis")) for m, term in cols) + " |")
        lines.append("")
    lines += ["### Conclusion: ESD's claim", ""] + [f"- {c}" for c in janus_conclusions(s)] + [""]
    return "\n".join(lines) + "\n"


def _counts(names: Sequence[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------
# figure


def figure_rows(study: Dict[str, Any], view: int = 0):
    """Rows of [input, expected pseudo-GT at each grid t] for one view: each method on the first variant's
    truth and on every final render. Returns (rows of uint8 images, their names)."""
    rows, names = [], []
    picks = [k for k in study["inputs"] if k.startswith("truth")][:1] + [k for k in study["inputs"] if not k.startswith("truth")]
    for inp in picks:
        for method, by_input in study["methods"].items():
            m = by_input[inp]
            images = [m["input_image"][view]] + [x[view] for x in m["expected_targets"].values()]
            rows.append(np.concatenate([(img.clamp(0, 1) * 255).round().to(torch.uint8).numpy() for img in images], axis=1))
            names.append(f"{setting_label(method)} on the {inp}")
    return rows, names


# ---------------------------------------------------------------------------------------------------
# main


def plain(obj):
    """A JSON-able copy of the results (images dropped, nan as null)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()
                if not torch.is_tensor(v) and k not in ("expected_targets", "input_image")}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def split_summary(result: Dict[str, Any]) -> Dict[str, Any]:
    """Median and largest split-half difference over the cosines of one seed's two main tables."""
    cells = []
    for method, by_input in result["oversmoothing"]["held-out"]["methods"].items():
        for inp, m in by_input.items():
            cells += [(v, f"{setting_label(method)} on the {inp}, {k}") for k, v in m["split"].items()]
    for method, m in result["janus"]["methods"].items():
        who = "SDS on the true back" if method == TRUE_BACK else setting_label(method)
        cells += [(v, f"{who}, {k}") for k, v in m["split"].items()]
    values = [v for v, _ in cells if math.isfinite(v)]
    worst = max(cells, key=lambda c: c[0] if math.isfinite(c[0]) else -1.0)
    return dict(split_median=float(np.median(values)), split_max=float(max(values)), split_worst=worst[1],
                split_count=len(values))


def views_of_first(results: Sequence[Dict]) -> List[Any]:
    study = results[0]["oversmoothing"]["held-out"]
    first = next(iter(study["methods"].values()))
    return list(next(iter(first.values()))["input_image"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS,
                        help=f"benchmark seeds to open (default {' '.join(map(str, DEFAULT_SEEDS))}; the benchmark made 0 1 2)")
    parser.add_argument("--timesteps", type=int, default=DEFAULT_TIMESTEPS, help="timesteps per method's range")
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="noise draws per timestep")
    parser.add_argument("--measure-seed", type=int, default=0, help="seed of the noise draws")
    parser.add_argument("--out", default="outputs/claims-benchmark", help="the benchmark's output folder (read)")
    parser.add_argument("--report", default="docs/claims_mechanism", help="writes <report>.md and <report>.png")
    parser.add_argument("--json", default=None, help="also write every measured number to this JSON file")
    args = parser.parse_args(argv)

    sys.path.insert(0, REPO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_root = os.path.abspath(args.out)
    wanted = {"multimodal": MULTIMODAL_SETTINGS, "biased": BIASED_SETTINGS}
    missing = missing_inputs(out_root, wanted, args.seeds)
    if missing:
        print(missing_message(missing, args.seeds), file=sys.stderr)
        return 2
    start, started = time.time(), datetime.datetime.now(datetime.timezone.utc)
    results, step = [], None
    for seed in args.seeds:
        r: Dict[str, Any] = {"seed": seed}
        for world, settings in wanted.items():
            runs = {}
            for name in settings:
                t0 = time.time()
                runs[name] = load_run(run_folder(out_root, world, name, seed), name, seed)
                step = runs[name].step
                print(f"{world} {name} seed {seed}: loaded in {time.time() - t0:.0f} s", flush=True)
            key = "oversmoothing" if world == "multimodal" else "janus"
            study = oversmoothing_study if world == "multimodal" else janus_study
            r[key] = study(runs, args.timesteps, args.draws, args.measure_seed)
            del runs
        results.append(r)

    report_path = os.path.abspath(args.report)
    os.makedirs(os.path.dirname(report_path), exist_ok=True)
    rows, row_names = figure_rows(results[0]["oversmoothing"]["held-out"])
    write_grid(report_path + ".png", [r.repeat(FIGURE_SCALE, 0).repeat(FIGURE_SCALE, 1) for r in rows])
    command = ("python scripts/claims_diagnostics.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    meta = dict(
        step=step, started=started.strftime("%Y-%m-%d %H:%M"), wall_minutes=(time.time() - start) / 60,
        n_views=len(views_of_first(results)), **split_summary(results[0]),
        machine=f"{os.cpu_count()} cores ({cpu_model()}), {platform.system()}, niceness {os.nice(0)}",
        out=os.path.relpath(out_root, REPO) if out_root.startswith(REPO) else out_root,
        figure=report_path + ".png", figure_rows=row_names,
    )
    seeds = Seeds(results)
    with open(report_path + ".md", "w") as f:
        f.write(report(report_path, seeds, args, command, meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "meta": {k: v for k, v in meta.items() if k != "figure"},
                       "results": plain(results)}, f, indent=1)
    print(f"wrote {args.report}.md and {args.report}.png ({meta['wall_minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
