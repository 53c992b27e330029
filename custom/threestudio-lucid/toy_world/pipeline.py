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
- ``estimator_unet/``: a small, randomly initialised diffusers UNet that VSD/ESD train in full as
  their estimator of the particles' score (``lora_unet_subfolder: estimator_unet``,
  ``train_full_estimator: true``), since a LoRA needs a pretrained UNet to adapt.

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
``--front-repeats`` and ``--no-view-captions``.
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


def build_estimator_unet(latent_size: int, text_dim: int, seed: int = 0):
    """A small diffusers UNet (32/64 channels) with cross-attention only at the lower resolution:
    self-attention over a 32x32 latent would dominate a CPU step, and the camera condition enters
    through the class embedding anyway."""
    from diffusers import UNet2DConditionModel

    from ..tiny_pipeline import _seeded

    with _seeded(seed + 3):
        return UNet2DConditionModel(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=32,
            cross_attention_dim=text_dim,
            attention_head_dim=8,
        )


def read_model_index(path: str) -> Optional[Dict[str, Any]]:
    """``<path>/model_index.json`` as a dict (None when there is none or it does not parse)."""
    index = os.path.join(str(path), "model_index.json")
    try:
        with open(index, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_toy_world(path: str) -> bool:
    """Whether ``path`` is a folder whose ``model_index.json`` names the toy prior as its UNet."""
    index = read_model_index(path)
    return index is not None and list(index.get("unet") or []) == [COMPONENT_LIBRARY, DENOISER_CLASS]


def render_cache_dir(cache_dir: Optional[str] = None) -> str:
    return cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR


def _scheduler_config() -> Dict[str, Any]:
    from ..tiny_pipeline import SD21_BASE_SCHEDULER_CONFIG

    return dict(SD21_BASE_SCHEDULER_CONFIG)


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
    **settings: Any,
) -> str:
    """Write a toy-world model folder at ``path`` and return ``path``.

    ``objects``: keys or captions from :data:`~.objects.OBJECTS` (default: all). Other keyword
    arguments are :class:`~.dataset.ToyWorldSettings` fields (``elevations_deg``,
    ``camera_distances``, ``fovy_deg``, ``n_eval_views``, ...). With ``render`` the renders are made
    now (and cached) so the first load does not pay for them.
    """
    from diffusers import DDIMScheduler

    from ..tiny_pipeline import build_tiny_components, write_vocabulary_files

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
    parts = build_tiny_components(seed=seed)
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
    # transformers 5 writes only tokenizer.json; SD folders also carry vocab.json + merges.txt
    if not os.path.exists(os.path.join(path, "tokenizer", "vocab.json")):
        write_vocabulary_files(os.path.join(path, "tokenizer"))
    text_encoder.save_pretrained(os.path.join(path, "text_encoder"), safe_serialization=True)
    DDIMScheduler(**_scheduler_config()).save_pretrained(os.path.join(path, "scheduler"))
    # VSD/ESD need a trainable estimator of the particles' score: a small diffusers UNet (random init,
    # trained in full during the run: train_full_estimator) in place of a LoRA on the exact prior
    build_estimator_unet(world.latent_size, parts["text_encoder"].config.hidden_size, seed).save_pretrained(
        os.path.join(path, ESTIMATOR_SUBFOLDER)
    )

    import diffusers
    import transformers

    # the prior's components: settings only (diffusers' loader calls their from_pretrained on these folders)
    components = {
        "unet": {"_class_name": DENOISER_CLASS, "text_tolerance": 0.02},
        "vae": {"_class_name": AUTOENCODER_CLASS, "downsample": world.downsample, "image_size": world.image_size,
                "latent_channels": 4, "scaling_factor": 1.0, "posterior_std": 0.0},
    }
    for name, config in components.items():
        os.makedirs(os.path.join(path, name), exist_ok=True)
        write_text(os.path.join(path, name, "config.json"), json.dumps(config, indent=2), hint=FOLDER_HINT)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": [COMPONENT_LIBRARY, DENOISER_CLASS],
        "vae": [COMPONENT_LIBRARY, AUTOENCODER_CLASS],
        EVALUATOR_KEY: EVALUATOR,
        "_toy_world": SETTINGS_FILE,
        "_transformers_version": transformers.__version__,
    }
    write_text(os.path.join(path, "model_index.json"), json.dumps(index, indent=2), hint=FOLDER_HINT)
    described = {
        "settings": world.to_dict(),
        "latent_size": world.latent_size,
        "objects": {k: {"caption": OBJECTS[k].name, "shape": OBJECTS[k].description} for k in world.objects},
        "render_cache_key": world.render_key(),
    }
    if world.is_multimodal:
        for key, names in world.variant_table.items():
            described["objects"][key]["variants"] = {n: VARIANTS[key][n].description for n in names}
    if render:
        train, _ = load_render_sets(world, render_cache_dir(cache_dir))
        captions, members = caption_table(train)
        described["num_renders"] = len(train)
        described["captions"] = {c: int(m.sum()) for c, m in zip(captions, members)}
    write_text(os.path.join(path, SETTINGS_FILE), json.dumps(described, indent=2), hint=FOLDER_HINT)
    return path


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


def denoiser_from_folder(path: str, torch_dtype: torch.dtype = torch.float32, cache_dir: Optional[str] = None,
                         text_tolerance: float = 0.02) -> ToyDenoiser:
    """The :class:`ToyDenoiser` of the world folder ``path`` (what ``ToyDenoiser.from_pretrained(<path>/unet)``
    returns): renders from the cache (or made now), encoded by the folder's autoencoder, captions by its text
    encoder, the noise schedule of its scheduler; with the world's ``settings``, ``train_set``, ``eval_set`` and
    ``world_path`` attached."""
    from diffusers import DDIMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    path = str(path)
    world = read_toy_world_settings(path)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval()
    scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")

    train, held_out = load_render_sets(world, render_cache_dir(cache_dir))
    captions, members = caption_table(train)
    caption_embeddings = encode_captions(tokenizer, text_encoder, captions).float()

    vae = ToyAutoencoder.from_pretrained(os.path.join(path, "vae"))
    images = train.rgb_float().permute(0, 3, 1, 2) * 2 - 1
    means = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    unet = ToyDenoiser(means, caption_embeddings, members, captions, scheduler.alphas_cumprod,
                       bandwidth=world.bandwidth, text_tolerance=text_tolerance, dtype=torch_dtype)
    unet.settings, unet.train_set, unet.eval_set, unet.world_path = world, train, held_out, path
    return unet


def load_toy_world_pipeline(path: str, torch_dtype: torch.dtype = torch.float32):
    """A folder written by :func:`build_toy_world`, loaded as any Stable Diffusion folder is
    (``StableDiffusionPipeline.from_pretrained``, no safety checker): ``pipe.unet`` is the
    :class:`ToyDenoiser` (with the world's ``settings``, ``train_set``, ``eval_set``, ``captions``),
    ``pipe.vae`` the :class:`ToyAutoencoder`."""
    from diffusers import StableDiffusionPipeline

    from ..guidance.diffusion_base import import_plugin_components
    from ..personalization import dtype_argument

    path = str(path)
    if not is_toy_world(path):
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
    parser.add_argument("--no-render", action="store_true", help="do not render (and cache) the views now")
    args = parser.parse_args(argv)
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
    path = build_toy_world(args.path, render=not args.no_render, **options)
    print(f"Toy world written to {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
