"""Toy-world model folders: ``build_toy_world`` writes one, ``load_toy_world_pipeline`` loads it.

A toy-world folder is a diffusers Stable Diffusion folder whose UNet and VAE are the toy prior's:

- ``model_index.json``: ``"_class_name": "StableDiffusionPipeline"``, the usual tokenizer, text encoder and
  scheduler entries, and ``"unet": ["threestudio_lucid.toy_world.prior", "ToyDenoiser"]``, ``"vae":
  [..., "ToyAutoencoder"]``: diffusers' own component loader (``StableDiffusionPipeline.from_pretrained``, as
  the guidance's generic ``load_stable_diffusion`` calls it for any folder) calls their ``from_pretrained``.
  Nothing outside this package branches on the folder being a toy world. ``"_lucid_evaluator":
  "lucid-toy-world-evaluator"`` names the registered evaluator that ``system.toy_world_eval`` runs at test
  (``evaluator.py``); diffusers ignores keys that start with ``_``;
- ``tokenizer/`` and ``text_encoder/``: a real tiny CLIP (``tiny_pipeline``'s), so the prompt
  processors (the bundled one and threestudio's) load the folder unchanged;
- ``scheduler/``: a ``DDIMScheduler`` with SD 2.1-base's configuration (scaled-linear betas,
  ``steps_offset`` 1);
- ``unet/config.json`` and ``vae/config.json``: the components' settings (no weights: the denoiser is
  built from the renders, the autoencoder is an average pool);
- ``toy_world.json``: the :class:`~.dataset.ToyWorldSettings` (objects, bandwidth, image and
  latent sizes, camera grid, thresholds, seed) and, for reference, the caption list;
- ``estimator_unet/``: a small diffusers UNet (32/64 channels) that VSD/ESD train in full as their estimator of
  the particles' score (``lora_unet_subfolder: estimator_unet``, ``train_full_estimator: true``), since a LoRA
  needs a pretrained UNet to adapt. ``lucid-build-toy-world`` pretrains it (``--estimator-steps``, default
  :data:`DEFAULT_ESTIMATOR_STEPS`; ``build_toy_world(estimator_steps=...)``, default 0) on the world's training renders with
  ``denoiser_training``'s loop, conditioned on the captions and on the camera as VSD reads it (the data module's
  ``c2w``, 16 numbers, dropped with probability 0.1), and saves it with ``class_embed_type="projection"`` and
  ``projection_class_embeddings_input_dim=16``: that class embedding is VSD's camera embedding, which VSD then
  uses and trains as it is. The record (steps, batch, rate, losses, seconds) is ``"estimator"`` in
  ``toy_world.json``. With ``estimator_steps=0`` it is the randomly initialised UNet without a class embedding of
  worlds built before (VSD adds a fresh camera embedding). The default is sized to keep a default 64 px world's
  build to under a minute on 2 cores; that is enough to learn the world's denoising, not yet to read the camera
  on the default world (``docs/toy_worlds.md``, measured).

A learned prior of a world (``learned_prior.py``, ``lucid-train-toy-prior``) is a plain Stable Diffusion folder
with the world's ``toy_world.json``: :func:`is_toy_world` is true for it too (it has the ground truth the
evaluator and the oracle read), :func:`is_exact_toy_world` only for a folder whose UNet is the ``ToyDenoiser``,
which is what :func:`load_toy_world_pipeline` loads.

The renders are not in the folder: :func:`denoiser_from_folder` (``ToyDenoiser.from_pretrained``)
regenerates them from the settings (or reads them from the render cache, ``.threestudio_cache/toy_world/``
under the working directory, or ``$LUCID_TOY_WORLD_CACHE``), encodes them with the ``ToyAutoencoder`` and
the captions with the folder's text encoder, and builds the ``ToyDenoiser``, which keeps the world's
``settings``, ``train_set``, ``eval_set`` and ``captions``.

Prompts must be the world's captions (``"a penguin"``; the prompt processor adds the view suffixes);
other text is treated as the empty prompt (see ``prior``). The bundled prompt processor's cache
entries carry a fingerprint of the text encoder's files, so a world rebuilt at the same path with
another ``--seed`` (another text encoder) gets its embeddings recomputed; inside threestudio, whose
processor keys its cache by the path alone, delete ``.threestudio_cache/text_embeddings`` after such
a rebuild. A folder written before the components were named in ``model_index.json`` (its
``_class_name`` was ``LucidToyWorldPipeline``) is not a toy world to :func:`is_toy_world`: rebuild it.

Console entry: ``lucid-build-toy-world PATH [--objects cube penguin] [--bandwidth 0.1] ...``; the
multi-modal and biased worlds of ``docs/toy_worlds.md`` with ``--variants``, ``--view-distribution``,
``--front-repeats`` and ``--no-view-captions``; ``--estimator-steps N`` (0: no pretraining).
"""
import argparse
import json
import os
import time
from typing import Any, Dict, Optional, Sequence

import torch

from ..atomic_files import write_text
from .dataset import DEFAULT_CACHE_DIR, VIEW_DISTRIBUTIONS, ToyWorldSettings, caption_table, load_render_sets
from .objects import OBJECTS, VARIANTS
from .prior import ToyAutoencoder, ToyDenoiser

SETTINGS_FILE = "toy_world.json"
COMPONENT_LIBRARY = "threestudio_lucid.toy_world.prior"  # where model_index.json says the unet and vae classes are
DENOISER_CLASS, AUTOENCODER_CLASS = "ToyDenoiser", "ToyAutoencoder"
EVALUATOR = "lucid-toy-world-evaluator"  # the registered evaluator named in model_index.json (evaluator.py)
EVALUATOR_KEY = "_lucid_evaluator"
FOLDER_HINT = "free space there or build the toy world into a folder on a disk with room"
CACHE_ENV = "LUCID_TOY_WORLD_CACHE"


ESTIMATOR_SUBFOLDER = "estimator_unet"
ESTIMATOR_CHANNELS = (32, 64)  # small: VSD/ESD run (and train) it at every step of a run
# pretraining of estimator_unet/: a default 64 px world builds in about a minute on 2 cores (docs/toy_worlds.md)
DEFAULT_ESTIMATOR_STEPS = 120
ESTIMATOR_BATCH_SIZE = 8  # on 2 cores a step of 8 costs little more than half a step of 16: more steps per second
ESTIMATOR_LR = 3e-3  # with the loop's warm-up and cosine decay (to 3e-4); the run then trains it at its own rate
# a learned prior of a world (learned_prior.py) names its record here in model_index.json
LEARNED_PRIOR_KEY = "_lucid_learned_prior"
LEARNED_PRIOR_FILE = "learned_prior.json"


def build_estimator_unet(latent_size: int, text_dim: int, seed: int = 0, camera: bool = True):
    """The small diffusers UNet (32/64 channels, cross-attention only at the lower resolution) that VSD/ESD train
    as the particles' score estimator. ``camera``: with a ``projection`` class embedding of 16 inputs, VSD's camera
    embedding, saved with it (what ``build_toy_world`` pretrains); without, the UNet of worlds built before the
    pretraining (VSD adds a fresh camera embedding)."""
    from .denoiser_training import build_denoiser_unet

    return build_denoiser_unet(latent_size, text_dim, ESTIMATOR_CHANNELS, layers_per_block=1, camera=camera,
                               seed=seed + 3)


def read_model_index(path: str) -> Optional[Dict[str, Any]]:
    """``<path>/model_index.json`` as a dict (None when there is none or it does not parse)."""
    index = os.path.join(str(path), "model_index.json")
    try:
        with open(index, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_exact_toy_world(path: str) -> bool:
    """Whether ``path`` is a folder whose ``model_index.json`` names the exact prior (``ToyDenoiser``) as its UNet:
    a world ``build_toy_world`` wrote, which :func:`load_toy_world_pipeline` loads."""
    index = read_model_index(path)
    return index is not None and list(index.get("unet") or []) == [COMPONENT_LIBRARY, DENOISER_CLASS]


def is_learned_prior(path: str) -> bool:
    """Whether ``path`` is a learned prior of a toy world (``learned_prior.py``): a Stable Diffusion folder with a
    diffusers UNet, the world's ``toy_world.json`` and its record (``"_lucid_learned_prior"`` in model_index.json)."""
    index = read_model_index(path)
    return (index is not None and index.get(LEARNED_PRIOR_KEY) == LEARNED_PRIOR_FILE
            and os.path.isfile(os.path.join(str(path), SETTINGS_FILE))
            and os.path.isfile(os.path.join(str(path), LEARNED_PRIOR_FILE)))


def is_toy_world(path: str) -> bool:
    """Whether ``path`` is a model folder with a toy world's ground truth (``toy_world.json``, what the evaluator
    and the oracle read): the exact prior's world (:func:`is_exact_toy_world`) or a learned prior of one
    (:func:`is_learned_prior`). Loading the exact prior's renders and denoiser needs the former."""
    return is_exact_toy_world(path) or is_learned_prior(path)


def render_cache_dir(cache_dir: Optional[str] = None) -> str:
    return cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR


def _scheduler_config() -> Dict[str, Any]:
    from ..tiny_pipeline import SD21_BASE_SCHEDULER_CONFIG

    return dict(SD21_BASE_SCHEDULER_CONFIG)


def stable_diffusion_index(unet: Sequence[str], vae: Sequence[str], **extra: Any) -> Dict[str, Any]:
    """A Stable Diffusion pipeline's ``model_index.json`` with the tiny CLIP and DDIM scheduler of a world and the
    given ``unet`` and ``vae`` entries (``[library, class]``), plus ``extra`` keys (diffusers ignores keys that
    start with ``_``): the world's evaluator and settings file."""
    import diffusers
    import transformers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": list(unet),
        "vae": list(vae),
        EVALUATOR_KEY: EVALUATOR,
        "_toy_world": SETTINGS_FILE,
        **extra,
        "_transformers_version": transformers.__version__,
    }


def build_toy_world(
    path: str,
    objects: Optional[Sequence[str]] = None,
    bandwidth: float = 0.1,
    image_size: int = 64,
    downsample: int = 2,
    n_azimuths: int = 24,
    seed: int = 0,
    render: bool = True,
    cache_dir: Optional[str] = None,
    estimator_steps: int = 0,
    **settings: Any,
) -> str:
    """Write a toy-world model folder at ``path`` and return ``path``.

    ``objects``: keys or captions from :data:`~.objects.OBJECTS` (default: all). Other keyword
    arguments are :class:`~.dataset.ToyWorldSettings` fields (``elevations_deg``,
    ``camera_distances``, ``fovy_deg``, ``n_eval_views``, ...). With ``render`` the renders are made
    now (and cached) so the first load does not pay for them.

    ``estimator_steps``: steps of pretraining ``estimator_unet/`` on the world's training renders with the camera
    condition (``denoiser_training``; the renders are made then whatever ``render`` says); 0 (the default of this
    function, which tests and scripts call for worlds that never run VSD/ESD) writes the randomly initialised
    estimator of worlds built before (no camera embedding of its own). ``lucid-build-toy-world`` pretrains
    :data:`DEFAULT_ESTIMATOR_STEPS` unless told otherwise, and so do the benchmarks that run VSD/ESD.
    """
    from diffusers import DDIMScheduler

    from ..tiny_pipeline import build_tiny_components, write_vocabulary_files

    if isinstance(estimator_steps, bool) or not isinstance(estimator_steps, int) or estimator_steps < 0:
        raise ValueError(f"estimator_steps: got {estimator_steps!r}; use a whole number >= 0 (0: no pretraining)")
    world = ToyWorldSettings(
        objects=list(objects) if objects else list(OBJECTS),
        bandwidth=bandwidth,
        image_size=image_size,
        downsample=downsample,
        n_azimuths=n_azimuths,
        seed=seed,
        **settings,
    )
    path = str(path)
    os.makedirs(path, exist_ok=True)
    # model_index.json is what makes the folder a world (is_toy_world): gone while it is (re)built, written last,
    # so a build killed half-way, or a reader during a rebuild, never takes the folder for a world
    index_file = os.path.join(path, "model_index.json")
    if os.path.exists(index_file):
        os.remove(index_file)
    parts = build_tiny_components(seed=seed)
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
    # transformers 5 writes only tokenizer.json; SD folders also carry vocab.json + merges.txt
    if not os.path.exists(os.path.join(path, "tokenizer", "vocab.json")):
        write_vocabulary_files(os.path.join(path, "tokenizer"))
    text_encoder.save_pretrained(os.path.join(path, "text_encoder"), safe_serialization=True)
    scheduler = DDIMScheduler(**_scheduler_config())
    scheduler.save_pretrained(os.path.join(path, "scheduler"))

    # the prior's components: settings only (diffusers' loader calls their from_pretrained on these folders)
    components = {
        "unet": {"_class_name": DENOISER_CLASS, "text_tolerance": 0.02},
        "vae": {"_class_name": AUTOENCODER_CLASS, "downsample": world.downsample, "image_size": world.image_size,
                "latent_channels": 4, "scaling_factor": 1.0, "posterior_std": 0.0},
    }
    for name, config in components.items():
        os.makedirs(os.path.join(path, name), exist_ok=True)
        write_text(os.path.join(path, name, "config.json"), json.dumps(config, indent=2), hint=FOLDER_HINT)
    described = {
        "settings": world.to_dict(),
        "latent_size": world.latent_size,
        "objects": {k: {"caption": OBJECTS[k].name, "shape": OBJECTS[k].description} for k in world.objects},
        "render_cache_key": world.render_key(),
    }
    if world.is_multimodal:
        for key, names in world.variant_table.items():
            described["objects"][key]["variants"] = {n: VARIANTS[key][n].description for n in names}
    if render or estimator_steps > 0:
        train, _ = load_render_sets(world, render_cache_dir(cache_dir))
        captions, members = caption_table(train)
        described["num_renders"] = len(train)
        described["captions"] = {c: int(m.sum()) for c, m in zip(captions, members)}

    # VSD/ESD need a trainable estimator of the particles' score: a small diffusers UNet (trained in full during
    # the run: train_full_estimator) in place of a LoRA on the exact prior, pretrained here on the world's renders
    # with VSD's camera condition so that it starts as a score of the world's views that reads the camera
    estimator = build_estimator_unet(world.latent_size, text_encoder.config.hidden_size, seed,
                                     camera=estimator_steps > 0)
    if estimator_steps > 0:
        described["estimator"] = pretrain_estimator(estimator, train, path, tokenizer, text_encoder, scheduler,
                                                    estimator_steps, seed)
    estimator.save_pretrained(os.path.join(path, ESTIMATOR_SUBFOLDER))
    write_text(os.path.join(path, SETTINGS_FILE), json.dumps(described, indent=2), hint=FOLDER_HINT)
    index = stable_diffusion_index([COMPONENT_LIBRARY, DENOISER_CLASS], [COMPONENT_LIBRARY, AUTOENCODER_CLASS])
    write_text(index_file, json.dumps(index, indent=2), hint=FOLDER_HINT)
    return path


def pretrain_estimator(estimator, train_set, path: str, tokenizer, text_encoder, scheduler, steps: int,
                       seed: int) -> Dict[str, Any]:
    """Train ``estimator`` (camera-conditioned) on ``train_set`` for ``steps`` steps of ``denoiser_training``'s loop;
    returns the record kept under ``"estimator"`` in ``toy_world.json``."""
    from .denoiser_training import denoiser_data, train_denoiser

    start = time.perf_counter()
    vae = ToyAutoencoder.from_pretrained(os.path.join(path, "vae"))
    data = denoiser_data(train_set, vae, tokenizer, text_encoder.eval())
    losses = train_denoiser(estimator, data, scheduler.alphas_cumprod, steps, batch_size=ESTIMATOR_BATCH_SIZE,
                            lr=ESTIMATOR_LR, seed=seed)
    window = max(1, min(10, steps // 4))
    return {
        "steps": steps,
        "batch_size": ESTIMATOR_BATCH_SIZE,
        "lr": ESTIMATOR_LR,
        "seed": seed,
        "camera_condition": "extrinsics: c2w of lucid-progressive-camera-datamodule without jitter, 16 numbers",
        "loss_first": sum(losses[:window]) / window,
        "loss_last": sum(losses[-window:]) / window,
        "seconds": round(time.perf_counter() - start, 2),
    }


def read_toy_world_settings(path: str) -> ToyWorldSettings:
    with open(os.path.join(str(path), SETTINGS_FILE), "r", encoding="utf-8") as f:
        return ToyWorldSettings.from_dict(json.load(f)["settings"])


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: Sequence[str]) -> torch.Tensor:
    """[K,77,D] embeddings, encoded exactly as the prompt processor does (padding to
    ``model_max_length``, truncation, the last hidden state)."""
    tokens = tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return text_encoder(tokens.input_ids.to(text_encoder.device))[0]


@torch.no_grad()
def encode_renders(vae, render_set) -> torch.Tensor:
    """[N,C,h,w]: the renders' rgb in [-1, 1] encoded by the world's autoencoder (the posterior mode) and scaled by
    its ``scaling_factor``: the exact prior's mixture means, and what the learned UNets train on."""
    images = render_set.rgb_float().permute(0, 3, 1, 2) * 2 - 1
    return vae.encode(images).latent_dist.mode() * vae.config.scaling_factor


def load_text_components(path: str):
    """``(tokenizer, text_encoder)`` of a world folder (the text encoder in eval mode)."""
    from transformers import AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(str(path), subfolder="tokenizer")
    return tokenizer, CLIPTextModel.from_pretrained(str(path), subfolder="text_encoder").eval()


def denoiser_from_folder(path: str, torch_dtype: torch.dtype = torch.float32, cache_dir: Optional[str] = None,
                         text_tolerance: float = 0.02) -> ToyDenoiser:
    """The :class:`ToyDenoiser` of the world folder ``path`` (what ``ToyDenoiser.from_pretrained(<path>/unet)``
    returns): renders from the cache (or made now), encoded by the folder's autoencoder, captions by its text
    encoder, the noise schedule of its scheduler; with the world's ``settings``, ``train_set``, ``eval_set`` and
    ``world_path`` attached."""
    from diffusers import DDIMScheduler

    path = str(path)
    world = read_toy_world_settings(path)
    tokenizer, text_encoder = load_text_components(path)
    scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")

    train, held_out = load_render_sets(world, render_cache_dir(cache_dir))
    captions, members = caption_table(train)
    caption_embeddings = encode_captions(tokenizer, text_encoder, captions).float()

    means = encode_renders(ToyAutoencoder.from_pretrained(os.path.join(path, "vae")), train)
    unet = ToyDenoiser(means, caption_embeddings, members, captions, scheduler.alphas_cumprod,
                       bandwidth=world.bandwidth, text_tolerance=text_tolerance, dtype=torch_dtype)
    unet.settings, unet.train_set, unet.eval_set, unet.world_path = world, train, held_out, path
    return unet


def load_toy_world_pipeline(path: str, torch_dtype: torch.dtype = torch.float32):
    """A folder written by :func:`build_toy_world`, loaded as any Stable Diffusion folder is
    (``StableDiffusionPipeline.from_pretrained``, no safety checker): ``pipe.unet`` is the
    :class:`ToyDenoiser` (with the world's ``settings``, ``train_set``, ``eval_set``, ``captions``),
    ``pipe.vae`` the :class:`ToyAutoencoder`. A learned prior of a world is a plain Stable Diffusion folder:
    load it with diffusers (or the guidance's ``load_stable_diffusion``)."""
    from diffusers import StableDiffusionPipeline

    from ..guidance.diffusion_base import import_plugin_components
    from ..personalization import dtype_argument

    path = str(path)
    if is_learned_prior(path):
        raise FileNotFoundError(
            f"'{path}' is a learned prior of a toy world, not the exact prior: load it with "
            "StableDiffusionPipeline.from_pretrained, or load its world (the 'world' in learned_prior.json)."
        )
    if not is_exact_toy_world(path):
        raise FileNotFoundError(
            f"'{path}' is not a toy-world folder (no model_index.json naming {COMPONENT_LIBRARY}.{DENOISER_CLASS} as "
            f"its unet): make one with `lucid-build-toy-world {path}`."
        )
    import_plugin_components(path)
    return StableDiffusionPipeline.from_pretrained(path, **dtype_argument(torch_dtype), safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)


def main(argv=None) -> int:
    defaults = ToyWorldSettings()
    parser = argparse.ArgumentParser(
        prog="lucid-build-toy-world",
        description=(
            "Write a toy-world model folder to PATH: tiny CLIP text encoder, DDIM scheduler and the "
            "settings of an exact diffusion prior over analytic renders of procedural objects. Point "
            "pretrained_model_name_or_path (prompt processor and guidance) at it; prompt with an object's "
            "caption, e.g. system.prompt_processor.prompt='a penguin'."
        ),
    )
    parser.add_argument("path", help="output folder (created if missing)")
    parser.add_argument(
        "--objects",
        nargs="+",
        default=list(OBJECTS),
        help="objects by key: " + ", ".join(f"{k} ('{o.name}')" for k, o in OBJECTS.items()) + " (default: all)",
    )
    parser.add_argument("--bandwidth", type=float, default=defaults.bandwidth, help="std of each mixture component, [-1,1] image units")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="render / guidance image size")
    parser.add_argument("--downsample", type=int, default=defaults.downsample, choices=(1, 2, 4, 8), help="latent downsampling factor")
    parser.add_argument("--n-azimuths", type=int, default=defaults.n_azimuths, help="training azimuths per elevation")
    parser.add_argument("--elevations", type=float, nargs="+", default=defaults.elevations_deg, help="training elevations (deg)")
    parser.add_argument("--distances", type=float, nargs="+", default=defaults.camera_distances, help="camera distances")
    parser.add_argument("--fovy", type=float, default=defaults.fovy_deg, help="vertical field of view (deg)")
    parser.add_argument("--n-eval-views", type=int, default=defaults.n_eval_views, help="held-out azimuths")
    parser.add_argument("--eval-elevation", type=float, default=defaults.eval_elevation_deg, help="held-out elevation (deg)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the tiny text encoder")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[str(defaults.variants)],
        help=(
            "appearance variants per object, all under the same captions (a multi-modal world): a count N "
            "(each object's first N, plain first), 'all', or names ('striped' for every object, 'cube:striped' "
            "for one; objects no name covers stay plain). Variants: "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in VARIANTS.items())
            + " (default: 1, plain only)"
        ),
    )
    parser.add_argument(
        "--view-distribution",
        default=defaults.view_distribution,
        choices=VIEW_DISTRIBUTIONS,
        help="uniform (default), or front_heavy: the render at azimuth a appears floor(R^((1 + cos a) / 2) + 1/2) "
        "times (a biased world, as photos are)",
    )
    parser.add_argument(
        "--front-repeats", type=int, default=defaults.front_repeats, help="R of front_heavy: copies of the front view (default 8)"
    )
    parser.add_argument(
        "--no-view-captions",
        dest="caption_views",
        action="store_false",
        help="caption renders with the object's name only, no view words (train with "
        "system.guidance.view_dependent_prompting=false)",
    )
    parser.add_argument("--no-render", action="store_true",
                        help="do not render (and cache) the views now (they are made anyway to pretrain the estimator)")
    parser.add_argument(
        "--estimator-steps",
        type=int,
        default=DEFAULT_ESTIMATOR_STEPS,
        help=f"steps of pretraining the VSD/ESD estimator_unet/ on the renders, with the camera (default "
        f"{DEFAULT_ESTIMATOR_STEPS}, about 40 s for the default world on 2 cores; 0: random init, as before)",
    )
    args = parser.parse_args(argv)
    if args.estimator_steps < 0:
        parser.error(f"--estimator-steps={args.estimator_steps}: use a whole number >= 0 (0: no pretraining)")
    options = dict(
        objects=args.objects,
        bandwidth=args.bandwidth,
        image_size=args.image_size,
        downsample=args.downsample,
        n_azimuths=args.n_azimuths,
        seed=args.seed,
        elevations_deg=args.elevations,
        camera_distances=args.distances,
        fovy_deg=args.fovy,
        n_eval_views=args.n_eval_views,
        eval_elevation_deg=args.eval_elevation,
        variants=args.variants,
        view_distribution=args.view_distribution,
        front_repeats=args.front_repeats,
        caption_views=args.caption_views,
    )
    try:  # a bad value is a usage error that names it, not a traceback
        ToyWorldSettings(**options)
    except (ValueError, KeyError) as e:
        parser.error(str(e.args[0]))
    start = time.perf_counter()
    path = build_toy_world(args.path, render=not args.no_render, estimator_steps=args.estimator_steps, **options)
    print(f"Toy world written to {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
