"""A learned prior of a toy world (issue 27 (b)): a small diffusers UNet trained on the world's renders and captions,
so that every claim can also be judged on a prior that generalises between views and makes errors as Stable
Diffusion does, next to the world's exact prior, which memorises its stored views.

``build_learned_prior(WORLD, OUT)`` (console entry ``lucid-train-toy-prior WORLD OUT``) trains a text-conditioned
``UNet2DConditionModel`` (no class embedding: VSD adds its camera embedding and LoRA as on Stable Diffusion) with
``denoiser_training``'s loop on the world's training renders (its ``ToyAutoencoder`` latents, its caption table
and tiny CLIP text encoder, its noise schedule), then writes OUT, a plain Stable Diffusion folder:

- ``unet/``: the trained UNet (safetensors); ``vae/``, ``tokenizer/``, ``text_encoder/``, ``scheduler/``: the
  world's, copied (the autoencoder is the weight-free average pool, named from this package in model_index.json);
- ``toy_world.json``: the world's settings and ground truth, copied, and ``"_lucid_evaluator"`` in
  ``model_index.json``, so ``system.toy_world_eval`` scores a run on it against the same truth, and the oracle
  (``lucid-toy-world-oracle``) accepts it (``pipeline.is_toy_world``: it has a toy world's ground truth;
  ``pipeline.is_exact_toy_world`` and ``load_toy_world_pipeline`` stay for the exact prior's world);
- ``learned_prior.json``: the record (world, steps, batch, seed, channels, wall seconds, the loss curve, the
  command) and the generalisation measurement: the training objective's error ``E || eps - eps_hat(x_t, t, y) ||^2``
  at a few timesteps on the held-out views (azimuths between the training ones) and on the training views at
  the same elevation and distance, for the learned UNet, the same UNet untrained, and the exact ``ToyDenoiser``.
  The exact prior is near zero on training views and several times worse between them (it snaps to the nearest
  stored view); a learned prior that generalises is about as good on both.

The guidance loads OUT through its generic loader like any Stable Diffusion folder: SDS and ISM as they are;
VSD/ESD with a LoRA on its UNet (``pretrained_model_name_or_path_lora`` = OUT, ``lora_unet_subfolder: unet``,
``train_full_estimator: false``).

OUT is written atomically: built in a hidden sibling folder (``.lucid-tmp-...~learned-prior``), fsynced, then
renamed to OUT, so an interrupted or failed build leaves no OUT (one killed with -9 leaves the hidden folder,
removed by the next build beside it). OUT must not exist, or be an empty folder, or (with ``overwrite``) a learned
prior; anything else is refused, as is a WORLD that is not a toy world. Training is seeded and repeatable; it is
sized by ``steps``, ``batch_size`` and ``channels`` (defaults: about 20 minutes for the default 64 px world on
2 CPU cores, docs/toy_worlds.md). The folder is built into ``load/``, never committed.
"""
import argparse
import hashlib
import json
import os
import secrets
import shlex
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from ..atomic_files import TEMPORARY_PREFIX, as_storage_error
from ..errors import ConfigError, StorageError, error_line
from .pipeline import (
    AUTOENCODER_CLASS,
    COMPONENT_LIBRARY,
    LEARNED_PRIOR_FILE,
    LEARNED_PRIOR_KEY,
    SETTINGS_FILE,
    is_exact_toy_world,
    is_learned_prior,
    stable_diffusion_index,
)

COMMAND = "lucid-train-toy-prior"
DEFAULT_CHANNELS = (32, 64, 128)
DEFAULT_LAYERS_PER_BLOCK = 1
DEFAULT_STEPS = 1500
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 2e-3
GENERALISATION_TIMESTEPS = (20, 100, 250, 500)
NOISE_DRAWS = 2
COPIED_FOLDERS = ("tokenizer", "text_encoder", "scheduler", "vae")
CURVE_POINTS = 50
_HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
STAGING_SUFFIX = "~learned-prior"


# --------------------------------------------------------------------------------------------------
# checks (one line each, naming the argument as the command spells it)
# --------------------------------------------------------------------------------------------------
def check_world(world: str) -> str:
    world = str(world)
    if not os.path.isdir(world):
        raise ConfigError(f"WORLD='{world}' is not a folder: build a toy world first, e.g. "
                          f"`lucid-build-toy-world {world}`.")
    if is_learned_prior(world):
        raise ConfigError(f"WORLD='{world}' is a learned prior, not a toy world: give the world it was trained on "
                          "('world' in its learned_prior.json).")
    if not is_exact_toy_world(world):
        raise ConfigError(f"WORLD='{world}' is not a toy world (its model_index.json does not name "
                          f"{COMPONENT_LIBRARY}.ToyDenoiser): build one with `lucid-build-toy-world {world}`.")
    return world


def check_out(out: str, world: str, overwrite: bool) -> str:
    out = str(out)
    if os.path.realpath(out) == os.path.realpath(world):
        raise ConfigError(f"OUT='{out}' is WORLD itself: give another folder, e.g. {out.rstrip('/')}-learned.")
    if os.path.realpath(out).startswith(os.path.realpath(world) + os.sep):
        raise ConfigError(f"OUT='{out}' is inside WORLD: give a folder beside it, e.g. load/<name>-learned.")
    if not os.path.lexists(out):
        return out
    if not os.path.isdir(out):
        raise ConfigError(f"OUT='{out}' exists and is not a folder: give a new folder.")
    if not os.listdir(out):
        return out
    if is_learned_prior(out):
        if overwrite:
            return out
        raise ConfigError(f"OUT='{out}' already holds a learned prior: pass --overwrite to replace it, or give a "
                          "new folder.")
    raise ConfigError(f"OUT='{out}' is a folder that is not a learned prior and not empty: give a new folder "
                      "(nothing a user made is overwritten).")


def check_options(steps: int, batch_size: int, channels: Sequence[int], layers_per_block: int, lr: float) -> None:
    def whole(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r}: use a whole number >= {low}.")

    whole("--steps", steps, 1)
    whole("--batch-size", batch_size, 1)
    whole("--layers-per-block", layers_per_block, 1)
    if len(channels) < 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 8 or c % 8 for c in channels):
        raise ConfigError(f"--channels={list(channels)}: give two or more levels, each a multiple of 8 "
                          f"(e.g. --channels {' '.join(str(c) for c in DEFAULT_CHANNELS)}).")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < 1:
        raise ConfigError(f"--lr={lr!r}: use a learning rate in (0, 1), e.g. {DEFAULT_LR}.")


# --------------------------------------------------------------------------------------------------
# the generalisation measurement
# --------------------------------------------------------------------------------------------------
def comparable_training_views(train, held_out) -> torch.Tensor:
    """Indices of the distinct training renders (a biased world's repeats once) at the held-out views' elevation
    and distance, so that the two sets differ only in azimuth (on the training grid or between it); all distinct
    training renders where none is at that elevation."""
    keys = torch.stack([train.object_index.double(), train.variant_index.double(), train.elevation.double(),
                        train.azimuth.double(), train.distance.double()], 1)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(train), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(train)), reduce="amin")
    distinct = torch.sort(first).values
    same = (train.elevation[distinct] == held_out.elevation[0]) & (train.distance[distinct] == held_out.distance[0])
    return distinct[same] if bool(same.any()) else distinct


def generalisation(models: Dict[str, Any], train_data, held_out_data, alphas_cumprod, seed: int = 0,
                   timesteps: Sequence[int] = GENERALISATION_TIMESTEPS) -> Dict[str, Any]:
    """``epsilon_mse`` of each model on the held-out views and the comparable training views (same noise for
    every model), with the caption each render's object name."""
    from .denoiser_training import epsilon_mse

    errors = {name: {split: epsilon_mse(model, data, alphas_cumprod, timesteps, draws=NOISE_DRAWS, seed=seed)
                     for split, data in (("train", train_data), ("held_out", held_out_data))}
              for name, model in models.items()}
    return {
        "timesteps": list(timesteps),
        "noise_draws": NOISE_DRAWS,
        "caption": "each render's object name (the view-free prompt)",
        "views": {"train": len(train_data), "held_out": len(held_out_data),
                  "train_is": "the distinct training renders at the held-out views' elevation and distance",
                  "held_out_is": "the world's held-out views (azimuths between the training ones)"},
        "epsilon_mse": errors,
        "held_out_over_train": {name: [h / max(t, 1e-12) for h, t in zip(e["held_out"], e["train"])]
                                for name, e in errors.items()},
    }


def loss_summary(losses: List[float]) -> Dict[str, Any]:
    window = max(1, min(50, len(losses) // 10))
    chunk = max(1, len(losses) // CURVE_POINTS)
    curve = [sum(losses[i:i + chunk]) / len(losses[i:i + chunk]) for i in range(0, len(losses), chunk)]
    return {"first": sum(losses[:window]) / window, "last": sum(losses[-window:]) / window, "min": min(losses),
            "window": window, "curve": curve, "curve_chunk_steps": chunk}


# --------------------------------------------------------------------------------------------------
# writing the folder
# --------------------------------------------------------------------------------------------------
def _staging_name() -> str:
    # the atomic_files temporary pattern (is_temporary() knows it), with a suffix saying what it is
    return f"{TEMPORARY_PREFIX}{_HOST_ID}-{os.getpid()}-{secrets.token_hex(4)}{STAGING_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_staging(parent: str) -> int:
    """Remove the hidden staging folders that builds on this host left in ``parent`` when killed (-9); those of
    live builds stay. Returns how many went."""
    removed = 0
    prefix = f"{TEMPORARY_PREFIX}{_HOST_ID}-"
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        if not (name.startswith(prefix) and name.endswith(STAGING_SUFFIX)):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
            removed += 1
    return removed


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def staged_folder(out: str) -> Iterator[str]:
    """Yield a new hidden folder beside ``out``; when the block ends without an exception its files are fsynced and
    it is renamed to ``out`` (an existing ``out``, checked by the caller, is moved aside first and removed after).
    On any failure or interruption the hidden folder is removed and ``out`` is as it was."""
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_staging(parent)
        stage = os.path.join(parent, _staging_name())
        os.mkdir(stage)
    except OSError as e:
        raise as_storage_error(e, path=out) or e
    old = None
    try:
        yield stage
        for root, _, files in os.walk(stage):
            for name in files:
                _fsync(os.path.join(root, name))
            _fsync(root, directory=True)
        if os.path.isdir(out):
            if os.listdir(out):
                old = os.path.join(parent, _staging_name())
                os.rename(out, old)
            else:
                os.rmdir(out)
        os.rename(stage, out)
        _fsync(parent, directory=True)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None and not os.path.exists(out):
            os.rename(old, out)  # put the previous learned prior back
            old = None
        error = as_storage_error(e, path=out) if isinstance(e, OSError) else None
        if error is not None:
            raise error from e
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def build_learned_prior_unet(latent_size: int, text_dim: int, channels: Sequence[int] = DEFAULT_CHANNELS,
                             layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK, seed: int = 0):
    """The learned prior's UNet: ``denoiser_training.build_denoiser_unet``, text-conditioned only."""
    from .denoiser_training import build_denoiser_unet

    return build_denoiser_unet(latent_size, text_dim, channels, layers_per_block, camera=False, seed=seed)


def command_line(world: str, out: str, steps: int, batch_size: int, channels: Sequence[int], layers_per_block: int,
                 lr: float, seed: int) -> str:
    parts = [COMMAND, world, out, "--steps", str(steps), "--batch-size", str(batch_size), "--channels",
             *[str(c) for c in channels], "--layers-per-block", str(layers_per_block), "--lr", repr(lr),
             "--seed", str(seed)]
    return " ".join(shlex.quote(p) for p in parts)


def build_learned_prior(
    world_folder: str,
    out_folder: str,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    layers_per_block: int = DEFAULT_LAYERS_PER_BLOCK,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    overwrite: bool = False,
    cache_dir: Optional[str] = None,
    progress: Optional[Callable[[int, float], None]] = None,
) -> str:
    """Train the learned prior of the toy world ``world_folder`` and write it to ``out_folder`` (module docstring);
    returns ``out_folder``. ``progress(step, loss)`` is called after every training step. Bad arguments raise one
    :class:`ConfigError` line naming them as the command does (WORLD, OUT, --steps, ...)."""
    from diffusers import DDIMScheduler

    from .denoiser_training import CAPTION_DROP_PROB, train_denoiser, world_denoiser_data
    from .pipeline import denoiser_from_folder

    start = time.perf_counter()
    channels = [int(c) if isinstance(c, str) and c.isdigit() else c for c in channels]
    check_options(steps, batch_size, channels, layers_per_block, lr)
    world = check_world(world_folder)
    out = check_out(out_folder, world, overwrite)
    train_data = world_denoiser_data(world, "train", cache_dir)
    held_out_data = world_denoiser_data(world, "eval", cache_dir)
    alphas_cumprod = DDIMScheduler.from_pretrained(world, subfolder="scheduler").alphas_cumprod
    exact = denoiser_from_folder(world, cache_dir=cache_dir)
    comparable = train_data.subset(comparable_training_views(train_data.render_set, held_out_data.render_set))

    unet = build_learned_prior_unet(train_data.latents.shape[-1], train_data.caption_embeddings.shape[-1], channels,
                                    layers_per_block, seed)
    untrained = generalisation({"untrained": unet}, comparable, held_out_data, alphas_cumprod, seed)
    train_start = time.perf_counter()
    losses = train_denoiser(unet, train_data, alphas_cumprod, steps, batch_size=batch_size, lr=lr, seed=seed,
                            progress=progress)
    train_seconds = time.perf_counter() - train_start
    measured = generalisation({"learned": unet, "exact_prior": exact}, comparable, held_out_data, alphas_cumprod, seed)
    for key in ("epsilon_mse", "held_out_over_train"):
        measured[key] = {**measured[key], **untrained[key]}

    record = {
        "world": os.path.abspath(world),
        "steps": steps,
        "batch_size": batch_size,
        "channels": list(channels),
        "layers_per_block": layers_per_block,
        "lr": lr,
        "seed": seed,
        "caption_drop_prob": CAPTION_DROP_PROB,
        "parameters": sum(p.numel() for p in unet.parameters()),
        "train_renders": len(train_data),
        "seconds": {"training": round(train_seconds, 1), "per_step": round(train_seconds / steps, 4)},
        "loss": loss_summary(losses),
        "command": command_line(world, out, steps, batch_size, channels, layers_per_block, lr, seed),
        "torch_threads": torch.get_num_threads(),
        "generalisation": measured,
    }
    index = stable_diffusion_index(["diffusers", "UNet2DConditionModel"], [COMPONENT_LIBRARY, AUTOENCODER_CLASS],
                                   **{LEARNED_PRIOR_KEY: LEARNED_PRIOR_FILE})
    with staged_folder(out) as stage:
        unet.save_pretrained(os.path.join(stage, "unet"), safe_serialization=True)
        for name in COPIED_FOLDERS:
            shutil.copytree(os.path.join(world, name), os.path.join(stage, name))
        shutil.copyfile(os.path.join(world, SETTINGS_FILE), os.path.join(stage, SETTINGS_FILE))
        with open(os.path.join(stage, "model_index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        record["seconds"]["total"] = round(time.perf_counter() - start, 1)
        with open(os.path.join(stage, LEARNED_PRIOR_FILE), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return out_folder


def read_record(path: str) -> Dict[str, Any]:
    """``learned_prior.json`` of a learned prior folder."""
    with open(os.path.join(str(path), LEARNED_PRIOR_FILE), "r", encoding="utf-8") as f:
        return json.load(f)


@torch.no_grad()
def sample_images(path: str, prompt: str, n: int = 4, steps: int = 20, guidance_scale: float = 7.5,
                  seed: int = 0) -> torch.Tensor:
    """[n,H,W,3] images in [0, 1] sampled from a learned prior folder with diffusers' pipeline (DDIM, the folder's
    scheduler); the latents are decoded here (the toy autoencoder's ``decode`` takes no generator)."""
    from diffusers import StableDiffusionPipeline

    from ..guidance.diffusion_base import import_plugin_components

    import_plugin_components(path)
    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latents = pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps, guidance_scale=guidance_scale,
                   height=size, width=size, output_type="latent",
                   generator=torch.Generator().manual_seed(seed)).images
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description=(
            "Train a learned prior of a toy world: a small diffusers UNet on the world's renders and captions, "
            "written to OUT as a Stable Diffusion folder with the world's autoencoder, text encoder, scheduler and "
            "ground truth (scored by the same evaluator). Point pretrained_model_name_or_path at OUT to judge a "
            "method on a prior that generalises between views, as Stable Diffusion does."
        ),
    )
    parser.add_argument("world", metavar="WORLD", help="a toy world folder (lucid-build-toy-world)")
    parser.add_argument("out", metavar="OUT", help="the folder to write (new, or empty; e.g. load/toy-world-learned)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default {DEFAULT_STEPS})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"renders per step (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--channels", type=int, nargs="+", default=list(DEFAULT_CHANNELS),
                        help="UNet channels per level, multiples of 8 (default: "
                        + " ".join(str(c) for c in DEFAULT_CHANNELS) + ")")
    parser.add_argument("--layers-per-block", type=int, default=DEFAULT_LAYERS_PER_BLOCK,
                        help=f"resnet layers per UNet block (default {DEFAULT_LAYERS_PER_BLOCK})")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help=f"AdamW learning rate (default {DEFAULT_LR})")
    parser.add_argument("--seed", type=int, default=0, help="seeds the UNet's init and every draw of training")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it already holds a learned prior")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    every = max(1, args.steps // 20)
    last = {"step": 0, "time": start}

    def progress(step: int, loss: float) -> None:
        now = time.perf_counter()
        if step == 0:  # time the steps from the end of the first (after loading and the untrained measurement)
            last.update(step=1, time=now)
        if args.quiet or step == 0 or ((step + 1) % every and step + 1 != args.steps):
            return
        per_step = (now - last["time"]) / max(1, step + 1 - last["step"])
        print(f"step {step + 1}/{args.steps}: loss {loss:.4f} ({per_step:.2f} s/step)", flush=True)
        last.update(step=step + 1, time=now)

    try:
        out = build_learned_prior(args.world, args.out, steps=args.steps, batch_size=args.batch_size,
                                  channels=args.channels, layers_per_block=args.layers_per_block, lr=args.lr,
                                  seed=args.seed, overwrite=args.overwrite, progress=progress)
    except (ConfigError, StorageError) as e:
        print(error_line(e), file=sys.stderr)
        return 2
    record = read_record(out)
    g = record["generalisation"]
    ratio = g["held_out_over_train"]
    t = g["timesteps"][1]
    print(f"Learned prior written to {out} in {time.perf_counter() - start:.0f} s: loss "
          f"{record['loss']['first']:.3f} -> {record['loss']['last']:.3f}; epsilon MSE held-out / training views at "
          f"t={t}: learned {ratio['learned'][1]:.2f}, exact prior {ratio['exact_prior'][1]:.2f} (learned_prior.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
