"""Is the true render a point the guidance returns to? SDS and ISM at the truth and near it, term by term.

A guidance that trains an asset well has the true renders as a fixed point it returns to: perturb a true render
slightly, and the update the guidance sends (``-dL/dz`` on the render's latent) should push the perturbation back.
This script measures that with the real guidance classes (the settings of the toy configs the claims benchmark
runs: ``configs/lucid-{sds,ism}-toy.yaml``; ISM after its warm-up) on each world folder given, the world's exact
prior or its learned one, at the world's held-out views of its first object's first variant:

- inputs: the truth ``x``; ``x`` plus a smooth colour field (``colour``: an 8 x 8 Gaussian field, bilinearly
  upsampled, amplitude ``--amplitude``); ``x`` blurred by the positive controls' 3 x 3 binomial kernel (``blur``:
  what over-smoothing does);
- for each, the expected update over ``--timesteps`` timesteps spread over the method's range and ``--draws``
  noise draws each (the same draws for every input: ``claims_diagnostics.sweep`` with one seed);
- the update split into its two terms, ``update = k (eps_guided - eps_target)`` with
  ``eps_guided - eps_target = g (eps_cond - eps_uncond) + (eps_uncond - eps_target)``: the **classifier** term
  ``k g (eps_cond - eps_uncond)`` and the **rest**, which is SDS's denoising term (``eps_target`` = the noise)
  and ISM's trajectory term (``eps_target`` = ``e_s``, the unconditional prediction at the interval's start
  ``x_s``; it is zero wherever the prior's DDIM trajectory from s to t is consistent). ``k`` (``-w(t)`` times the
  method's scale) is fitted per item; the residual of the fit is reported (it must be ~0: the split is exact);
- **restore**: the cosine of (expected term at the perturbed input - expected term at the truth) with
  (truth latent - perturbed latent), averaged over the views; > 0 pushes the perturbation back, < 0 amplifies it.
  Its noise: the same cosine from the even and the odd draws (``half gap``); its floor for an unrelated direction
  is about ``1 / sqrt(3 h w)`` (0.018 at a 32 x 32 latent).

With ``--optimise N``, each guidance also optimises the held-out views' images directly for N Adam steps from
grey (no splats, no renderer: image logits, rate 0.03, the same guidance settings), so the picture shows where each
guidance takes an image by itself; rows: the truth, then each world and method (``<report>.png``).

    python scripts/guidance_stability.py                      # the claims benchmark's four priors (~8 min, 2 cores)
    python scripts/guidance_stability.py --optimise 300       # and the image each guidance makes by itself
    python scripts/guidance_stability.py load/toy-penguin     # any world folder (exact or learned prior)

Writes ``<report>.md`` (default ``docs/guidance_stability.md``) and, with ``--json``, every number.
"""
import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Any, Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see claims_diagnostics

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from claims_diagnostics import (  # noqa: E402
    cosine, expected, guidance_cameras, held_out_views, nanmean, rms, sweep, visible,
)
from toy_benchmark import REPO  # noqa: E402

DEFAULT_WORLDS = ("load/toy-claims-multimodal", "load/toy-claims-multimodal-learned", "load/toy-claims-biased",
                  "load/toy-claims-biased-learned")
METHODS = ("sds", "ism")
PERTURBATIONS = ("colour", "blur")
TERMS = ("update", "classifier", "rest")
REST_NAME = {"sds": "denoising", "ism": "trajectory"}
DEFAULT_TIMESTEPS, DEFAULT_DRAWS, DEFAULT_AMPLITUDE = 6, 8, 0.1
ISM_WARMUP = 300  # the claims benchmark's override (system.guidance.warmup_iter); measured after it


def method_config(method: str, world: str) -> Dict[str, Any]:
    """The guidance settings of ``configs/lucid-<method>-toy.yaml`` on ``world``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(REPO, "custom", "threestudio-lucid", "configs", f"lucid-{method}-toy.yaml"))
    guidance = OmegaConf.to_container(cfg.system.guidance, resolve=True)
    guidance["pretrained_model_name_or_path"] = world
    if method == "ism":
        guidance["warmup_iter"] = ISM_WARMUP
    return {"type": cfg.system.guidance_type, "guidance": guidance}


def build_guidance(method: str, world: str):
    from threestudio_lucid import compat

    cfg = method_config(method, world)
    guidance = compat.find(cfg["type"])(cfg["guidance"])
    if method == "ism":
        guidance.update_step(0, ISM_WARMUP)  # the interval and range after warm-up (most of a run)
    return guidance


def perturbed(truth: torch.Tensor, kind: str, amplitude: float, seed: int) -> torch.Tensor:
    """``truth`` [V,H,W,3] with a smooth colour field added (``colour``) or blurred (``blur``: the 3x3 binomial blur of
    the positive controls)."""
    if kind == "colour":
        g = torch.Generator().manual_seed(seed)
        field = torch.randn(truth.shape[0], 3, 8, 8, generator=g)
        field = F.interpolate(field, size=truth.shape[1:3], mode="bilinear", align_corners=False)
        return (truth + amplitude * field.permute(0, 2, 3, 1)).clamp(0, 1)
    if kind == "blur":
        from threestudio_lucid.toy_world.positive_controls import binomial_blur

        return binomial_blur(truth, 3)  # the blurred positive control's kernel
    raise ValueError(f"unknown perturbation {kind!r}; one of {PERTURBATIONS}")


def split_terms(probe: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """``update`` split into ``classifier`` and ``rest`` (module docstring), and the fit's relative ``residual``
    per item; ``g`` is the scale the guidance call used."""
    guidance_scale = probe["guidance_scale"]
    diff = guidance_scale * (probe["eps_cond"] - probe["eps_uncond"]) + (probe["eps_uncond"] - probe["eps_target"])
    update = probe["update"]
    dims = tuple(range(1, update.dim()))
    k = (update * diff).sum(dims, keepdim=True) / (diff * diff).sum(dims, keepdim=True).clamp_min(1e-30)
    residual = (update - k * diff).flatten(1).norm(dim=1) / update.flatten(1).norm(dim=1).clamp_min(1e-30)
    classifier = k * guidance_scale * (probe["eps_cond"] - probe["eps_uncond"])
    return {"update": update, "classifier": classifier, "rest": update - classifier, "residual": residual}


def with_terms(probes: Dict[int, List[Dict]]) -> Dict[int, List[Dict]]:
    return {v: [{**p, **split_terms(p)} for p in draws] for v, draws in probes.items()}


def restore_cosine(at_truth: Dict, at_input: Dict, towards: torch.Tensor, term: str, half=None) -> float:
    """Mean over views of cos(E[term](input) - E[term](truth), ``towards``)."""
    response = expected(at_input, term, half=half) - expected(at_truth, term, half=half)
    return nanmean(cosine(response, towards))


def measure(guidance, truth: torch.Tensor, prompt_utils, cams, n_timesteps: int, n_draws: int, seed: int,
            amplitude: float) -> Dict[str, Any]:
    """Every number of one (world, method): each term's RMS at the truth, and its restore cosine (with the
    half gap) for each perturbation; the split's largest residual."""
    at_truth = with_terms(sweep(guidance, truth, prompt_utils, cams, n_timesteps, n_draws, seed))
    z_truth = at_truth[next(iter(at_truth))][0]["z"]
    residual = max(float(p["residual"].max()) for draws in at_truth.values() for p in draws)
    out: Dict[str, Any] = {"rms_at_truth": {t: float(rms(expected(at_truth, t)).mean()) for t in TERMS},
                           "restore": {}, "half_gap": {}}
    for kind in PERTURBATIONS:
        x = perturbed(truth, kind, amplitude, seed)
        at_x = with_terms(sweep(guidance, x, prompt_utils, cams, n_timesteps, n_draws, seed))
        residual = max(residual, max(float(p["residual"].max()) for draws in at_x.values() for p in draws))
        towards = z_truth - at_x[next(iter(at_x))][0]["z"]
        out["restore"][kind] = {t: restore_cosine(at_truth, at_x, towards, t) for t in TERMS}
        out["half_gap"][kind] = {t: abs(restore_cosine(at_truth, at_x, towards, t, 0)
                                        - restore_cosine(at_truth, at_x, towards, t, 1)) for t in TERMS}
        out.setdefault("perturbation_rms", {})[kind] = float(rms(towards).mean())
    out["residual"] = residual
    out["floor"] = 1.0 / math.sqrt(visible(z_truth).shape[1])
    return out


def optimise_images(guidance, prompt_utils, cams, size: int, steps: int, seed: int, lr: float = 0.03) -> torch.Tensor:
    """Images [V,size,size,3] optimised from grey under ``guidance`` alone for ``steps`` Adam steps on their logits."""
    v = cams["elevation"].shape[0]
    torch.manual_seed(seed)
    if hasattr(guidance, "noise_generator"):
        guidance.noise_generator.manual_seed(seed)
    logits = torch.zeros(v, size, size, 3, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        out = guidance(torch.sigmoid(logits), prompt_utils, cams["elevation"], cams["azimuth"], cams["camera_distances"])
        loss = next(value for key, value in out.items() if key.startswith("loss_"))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return torch.sigmoid(logits).detach()


def world_inputs(world: str):
    """The truth at the world's held-out views of its first object's first variant, the guidance's cameras
    there, and the prompt utils of the object's caption."""
    from threestudio_lucid import compat
    from threestudio_lucid.toy_world.evaluate import ground_truth
    from threestudio_lucid.toy_world.pipeline import read_toy_world_settings

    settings = read_toy_world_settings(world)
    key = settings.objects[0]
    views = held_out_views(settings, key)
    variant = settings.variants_of(key)[0]
    truth = ground_truth(settings, key, views["elevation"], views["azimuth"], views["distance"], supersample=2)[variant]
    with open(os.path.join(world, "toy_world.json")) as f:
        caption = json.load(f)["objects"][key]["caption"]
    prompt_utils = compat.find("stable-diffusion-prompt-processor")(
        {"pretrained_model_name_or_path": world, "prompt": caption})()
    return truth["rgb"], guidance_cameras(settings, views), prompt_utils, caption, variant


def prior_name(world: str) -> str:
    from threestudio_lucid.toy_world.pipeline import is_exact_toy_world

    return "exact" if is_exact_toy_world(world) else "learned"


def verdict_word(value: float, gap: float, floor: float) -> str:
    """``restores`` / ``amplifies`` when the cosine is beyond both its half gap and 3 floors, else ``neutral``."""
    margin = max(gap, 3 * floor)
    return "restores" if value > margin else "amplifies" if value < -margin else "neutral"


def report(results: List[Dict], args, command: str, seconds: float) -> str:
    lines = [
        "# Is the true render a point the guidance returns to? (generated)",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} ({seconds / 60:.1f} min on this machine's "
        "CPU); how it measures: the docstring of `scripts/guidance_stability.py`. Each cell: the restore cosine "
        "(> 0: the term pushes the perturbation back; < 0: it amplifies it) and, in brackets, its half gap "
        "(the same cosine from the even and the odd draws). A word is given where the cosine is beyond both its "
        "half gap and three times the floor of an unrelated direction.",
        "",
        f"Settings: `{args.timesteps}` timesteps x `{args.draws}` draws per input, colour field amplitude "
        f"`{args.amplitude}`, seed `{args.seed}`; the guidance settings of `configs/lucid-sds-toy.yaml` and "
        f"`configs/lucid-ism-toy.yaml` (ISM after its {ISM_WARMUP}-step warm-up, as the claims benchmark runs it).",
        "",
    ]
    for r in results:
        lines += [f"## {r['world']} ({r['prior']} prior; '{r['caption']}', variant {r['variant']})", "",
                  "| method | term | RMS at the truth | colour: restore | blur: restore |",
                  "|---|---|---|---|---|"]
        for method, m in r["methods"].items():
            for term in TERMS:
                name = {"rest": REST_NAME[method]}.get(term, term)
                cells = []
                for kind in PERTURBATIONS:
                    value, gap = m["restore"][kind][term], m["half_gap"][kind][term]
                    cells.append(f"{value:+.3f} ({gap:.3f}) {verdict_word(value, gap, m['floor'])}")
                lines.append(f"| {method.upper()} | {name} | {m['rms_at_truth'][term]:.4f} | " + " | ".join(cells) + " |")
        worst = max(m["residual"] for m in r["methods"].values())
        lines += ["", f"The split's largest relative residual: {worst:.1e}; floor of an unrelated direction: "
                      f"{next(iter(r['methods'].values()))['floor']:.3f}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worlds", nargs="*", default=list(DEFAULT_WORLDS), help="world folders (exact or learned prior)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--timesteps", type=int, default=DEFAULT_TIMESTEPS)
    parser.add_argument("--draws", type=int, default=DEFAULT_DRAWS)
    parser.add_argument("--amplitude", type=float, default=DEFAULT_AMPLITUDE, help="the colour field's amplitude")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="docs/guidance_stability.md")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    parser.add_argument("--optimise", type=int, default=0, metavar="N",
                        help="also optimise images from grey under each guidance for N steps (<report>.png)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    missing = [w for w in args.worlds if not os.path.isfile(os.path.join(w, "toy_world.json"))]
    if missing:
        print(f"error: not a toy world or learned prior folder: {', '.join(missing)}; build the claims benchmark's "
              "worlds with `python scripts/claims_benchmark.py` (and `--prior learned` for the learned priors)",
              file=sys.stderr)
        return 2
    start = time.time()
    results, rows, labels = [], [], []
    for world in args.worlds:
        truth, cams, prompt_utils, caption, variant = world_inputs(world)
        r = {"world": os.path.basename(os.path.normpath(world)), "path": world, "prior": prior_name(world),
             "caption": caption, "variant": variant, "methods": {}}
        if args.optimise:
            rows.append(truth)
            labels.append(f"{r['world']}: the truth")
        for method in args.methods:
            t0 = time.time()
            guidance = build_guidance(method, world)
            r["methods"][method] = measure(guidance, truth, prompt_utils, cams,
                                           args.timesteps, args.draws, args.seed, args.amplitude)
            if args.optimise:
                rows.append(optimise_images(guidance, prompt_utils, cams, truth.shape[1], args.optimise, args.seed))
                labels.append(f"{r['world']}: {method.upper()} from grey, {args.optimise} steps")
            restore = r["methods"][method]["restore"]
            print(f"{r['world']} {method}: restore colour {restore['colour']} blur {restore['blur']} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        results.append(r)
    command = "python scripts/guidance_stability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, args, command.strip(), time.time() - start)
    if rows:
        from claims_benchmark import write_grid

        figure = os.path.splitext(args.report)[0] + ".png"
        write_grid(figure, [(torch.cat(list(r.clamp(0, 1)), dim=1).numpy() * 255).round().astype("uint8") for r in rows])
        text += "\n## Images each guidance makes by itself\n\n" + f"![]({os.path.basename(figure)})\n\nRows, top to bottom: " + \
            "; ".join(labels) + ".\n"
    from threestudio_lucid.atomic_files import write_text

    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    write_text(args.report, text + "\n")
    if args.json:
        write_text(args.json, json.dumps({"command": command.strip(), "results": results}, indent=1) + "\n")
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
