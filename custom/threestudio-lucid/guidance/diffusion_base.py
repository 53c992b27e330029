"""The diffusion backbone every guidance shares: loading, VAE, timestep table, CFG, the loss trick.

One source of truth: each guidance file (SDS, ISM, VSD/ESD) holds only what makes it different.

- Loading: ``StableDiffusionPipeline.from_pretrained`` from a hub id or a local diffusers folder, or
  ``from_single_file`` from one fine-tuned checkpoint with ``base_model`` (fp16 on CUDA with
  ``half_precision_weights``, fp32 on the CPU: ``ACCELERATOR_DEVICE_TYPES``), then the personalisation
  of ``personalization.py`` (``textual_inversion_path``, ``lora_path`` at ``lora_scale``) on the same
  pipeline, before anything is encoded. A model that is neither a local folder, nor in the Hugging Face
  cache, nor reachable, fails at once with one line naming ``pretrained_model_name_or_path``. A folder may
  name its own component classes in ``model_index.json`` (diffusers' mechanism); those this plugin defines
  (the toy world's UNet and VAE) are found under its installed name (``import_plugin_components``): the
  loader has no branch for any particular kind of folder.
- Memory options (xformers attention, attention slicing, channels-last, sequential CPU offload) work
  with every guidance; the pairs that cannot (offload without a GPU, offload with VSD/ESD's trained
  UNet) are refused in ``validate_config``, before anything loads.
- Option ranges are checked in ``validate_config`` before anything is loaded (shared options here,
  the others in their guidance), each out-of-range value a one-line ConfigError naming its key; a
  folder whose text encoder width differs from its UNet's cross-attention width is one at load.
- The pretrained UNet and VAE are frozen and held outside the module tree (as threestudio does), so
  they are neither in the system's parameters nor in its checkpoints; only what a guidance trains
  (e.g. VSD's LoRA) is registered.
- Timesteps: ``t ~ U[min_step, max_step]`` with ``min/max_step_percent`` as ``C()`` schedules.
- CFG, in diffusers' convention: ``eps_u + s (eps_c - eps_u)``; with Perp-Neg the positive direction
  gets the perpendicular components of the negative view prompts (threestudio's formulation).
- The "gradient as loss" trick: ``0.5 * ||z - sg(z - g)||^2 / B`` has gradient ``g / B`` w.r.t. z.
"""
import importlib
import json
import os
import random
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from ..compat import BaseModule, C, info, warn
from ..errors import ConfigError
from ..personalization import (
    Personalization,
    PersonalizationOptions,
    check_personalized_prompt_lengths,
    dtype_argument,
    encode_prompts,
    is_single_file,
    load_single_file_pipeline,
    personalize,
)
from .controlnet_depth import control_image, controlnet_residuals, load_depth_controlnet
from .option_ranges import check_range, check_schedule_order, check_schedule_range, is_number

GUIDANCE_PREFIX = "system.guidance."
MODEL_KEY = GUIDANCE_PREFIX + "pretrained_model_name_or_path"
PROMPT_PROCESSOR_MODEL_KEY = "system.prompt_processor.pretrained_model_name_or_path"
SD_NUM_TRAIN_TIMESTEPS = 1000  # Stable Diffusion's (and diffusers' schedulers' default) training steps
MAX_GUIDANCE_SCALE = 1000.0
# Device types treated as accelerators: there ``half_precision_weights`` loads fp16 weights and
# ``enable_sequential_cpu_offload`` offloads to the CPU. The CPU is none on purpose (fp16 kernels are
# slow there and offloading from the CPU to itself saves nothing); tests add "cpu" (monkeypatch) to
# run the GPU's code path (fp16 weights, meta weights behind accelerate's hooks) without a GPU.
ACCELERATOR_DEVICE_TYPES = ("cuda",)


def perpendicular_component(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Component of ``x`` perpendicular to ``y``, per batch item (Perp-Neg)."""
    dims = tuple(range(1, x.ndim))
    coeff = (x * y).sum(dim=dims, keepdim=True) / (y * y).sum(dim=dims, keepdim=True).clamp_min(1e-12)
    return x - coeff * y


def _model_available_locally(name_or_path: str, marker: str = "model_index.json") -> bool:
    if os.path.isdir(name_or_path):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name_or_path, marker)
        return isinstance(hit, str)
    except Exception:
        return False


def check_model_reachable(name_or_path: str, key: str = MODEL_KEY, marker: str = "model_index.json") -> None:
    """Fail in seconds, with one line, when the model can be neither loaded locally nor downloaded
    (``marker``: the file a local folder of it must hold, e.g. ``config.json`` for a single model)."""
    fix = (
        f"point {key} at a local diffusers folder (e.g. {key}=/path/to/stable-diffusion-2-1-base, "
        "a tiny test model made with `lucid-build-tiny-sd load/tiny-sd`, or a toy world made with "
        "`lucid-build-toy-world load/toy-world`)"
    )
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, marker)):
            raise ConfigError(f"{key}='{name_or_path}' is a folder without {marker}: {fix}.")
        return
    if _model_available_locally(name_or_path, marker):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or name_or_path.startswith((".", "/", "~")):
        raise ConfigError(f"{key}='{name_or_path}' is not a local folder nor in the Hugging Face cache: {fix}.")
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(name_or_path, timeout=10)
    except Exception as e:
        reason = type(e).__name__
        raise ConfigError(
            f"{key}='{name_or_path}' could not be found locally or on the Hugging Face hub ({reason}): {fix}."
        ) from None


PLUGIN_IMPORT_NAME = "threestudio_lucid"  # the package name setup.py installs; model folders name our classes under it


def model_json(name_or_path: str, relative: str) -> Optional[Dict[str, Any]]:
    """A JSON file of the model (``relative`` inside a local folder, or of a hub id in the local cache),
    read without loading any weights; None when it is missing or not a JSON object."""
    path = os.path.join(name_or_path, relative)
    if not os.path.isfile(path):
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(name_or_path, relative)
            path = hit if isinstance(hit, str) else None
        except Exception:
            path = None
    try:
        with open(path, "r", encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, TypeError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def model_index_of(name_or_path: str) -> Optional[Dict[str, Any]]:
    """The model's ``model_index.json``, or None."""
    return model_json(name_or_path, "model_index.json")


def import_plugin_components(name_or_path: str) -> None:
    """Make the component classes that the model's ``model_index.json`` names from this plugin (``["threestudio_lucid.x.y",
    "Class"]``) findable by diffusers, which looks such a class up in a module already imported (0.42; older
    releases import it themselves): import those modules of this package and, where the host imported the package
    under another name (threestudio's ``custom/`` loader: ``threestudio-lucid``), make them known under the installed
    name too, so that the package is not imported (and its components registered) a second time. Only modules of
    this package are imported; what a folder names elsewhere is left to diffusers."""
    index = model_index_of(name_or_path) or {}
    root = __name__.rsplit(".", 2)[0]  # this package, as imported
    for value in index.values():
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)):
            continue
        library = value[0]
        if library != PLUGIN_IMPORT_NAME and not library.startswith(PLUGIN_IMPORT_NAME + "."):
            continue
        try:
            module = importlib.import_module(root + library[len(PLUGIN_IMPORT_NAME):])
        except ImportError:
            continue  # diffusers names what it cannot find
        sys.modules.setdefault(library, module)


def load_stable_diffusion(
    name_or_path: str, torch_dtype: torch.dtype, key: str = MODEL_KEY, personalization: Optional[Personalization] = None
):
    """``StableDiffusionPipeline.from_pretrained`` without the safety checker, after a fast check, or
    ``from_single_file`` for a checkpoint file; then ``personalization`` (tokens, LoRA) on it."""
    from diffusers import StableDiffusionPipeline

    if personalization is not None and is_single_file(name_or_path):
        pipe = load_single_file_pipeline(personalization, torch_dtype)
        personalize(pipe, personalization)
        check_text_encoder_width(pipe, name_or_path, key)
        return pipe
    check_model_reachable(name_or_path, key)
    import_plugin_components(name_or_path)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            name_or_path,
            **dtype_argument(torch_dtype),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{key}='{name_or_path}' is not a loadable Stable Diffusion pipeline: {' '.join(str(e).split())[:300]}"
        ) from None
    if personalization is not None:
        personalize(pipe, personalization)
    check_text_encoder_width(pipe, name_or_path, key)
    return pipe


def text_width(text_encoder) -> Optional[int]:
    """Width of a text encoder's last hidden state (what the UNet cross-attends to)."""
    config = getattr(text_encoder, "config", None)
    width = getattr(config, "hidden_size", None)
    return int(width) if width is not None else None


def cross_attention_width(unet) -> Optional[int]:
    """Width of the text embeddings ``unet`` cross-attends to."""
    config = getattr(unet, "config", None)
    width = config.get("cross_attention_dim") if isinstance(config, dict) else getattr(config, "cross_attention_dim", None)
    return int(width) if isinstance(width, int) else None


def check_text_encoder_width(pipe, name_or_path: str, key: str = MODEL_KEY) -> None:
    """The folder's text encoder must produce the width its UNet cross-attends to; otherwise the first
    UNet call fails deep inside attention (a folder mixing models of two families)."""
    width, cross = text_width(getattr(pipe, "text_encoder", None)), cross_attention_width(pipe.unet)
    if width is not None and cross is not None and width != cross:
        folder = name_or_path.rstrip("/\\")
        raise ConfigError(
            f"{key}='{name_or_path}' does not fit together: {folder}/text_encoder gives {width}-d text "
            f"embeddings (hidden_size={width}) but {folder}/unet cross-attends to {cross}-d ones "
            f"(cross_attention_dim={cross}): point {key} at a complete Stable Diffusion folder whose "
            "text_encoder/ and unet/ come from the same model (or rebuild it, e.g. `lucid-build-tiny-sd PATH`)."
        )


def num_train_timesteps_of(name_or_path: str) -> int:
    """The model's number of training timesteps, read from its scheduler config without loading any
    weights (a local folder, or a hub id in the local cache); Stable Diffusion's 1000 otherwise."""
    n = (model_json(name_or_path, "scheduler/scheduler_config.json") or {}).get("num_train_timesteps")
    return int(n) if is_number(n) and n >= 1 else SD_NUM_TRAIN_TIMESTEPS


def execution_device(pipe) -> torch.device:
    """Where ``pipe``'s models run: after sequential CPU offload their weights are on ``meta`` and
    only accelerate's hooks know the device (diffusers' pipelines read ``_execution_device`` too)."""
    device = getattr(pipe, "_execution_device", None)
    return device if device is not None else pipe.text_encoder.device


@dataclass
class FrozenDiffusionModels:
    """The pretrained pipeline parts, kept out of the nn.Module tree (not trained, not checkpointed)."""

    pipe: Any
    unet: Any
    vae: Any
    controlnet: Any = None  # a depth ControlNet on the prompted UNet call (controlnet_depth.py)


class StableDiffusionGuidanceBase(BaseModule):
    """Base of every lucid guidance. Subclasses implement ``forward`` (called as ``guidance(...)``)."""

    @dataclass
    class Config(BaseModule.Config, PersonalizationOptions):
        # a diffusers folder or hub id, or one .safetensors/.ckpt of a whole SD (then set base_model); the
        # personalisation options (textual_inversion_path, lora_path, lora_scale, base_model) are
        # PersonalizationOptions' (personalization.py)
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        half_precision_weights: bool = True  # fp16 weights on CUDA (ACCELERATOR_DEVICE_TYPES); fp32 on the CPU
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False

        guidance_scale: float = 7.5
        grad_clip: Optional[Any] = None  # number or C() schedule; clamps the latent gradient
        min_step_percent: Any = 0.02  # number or C() schedule
        max_step_percent: Any = 0.98  # number or C() schedule
        weighting_strategy: str = "sds"  # sds: 1 - abar_t | uniform: 1 | fantasia3d: sqrt(abar_t)(1 - abar_t)
        view_dependent_prompting: bool = True
        # a depth ControlNet on the prompted UNet call (LucidDreamer's use_control_net; controlnet_depth.py):
        # a diffusers ControlNetModel folder or hub id, applied on a step with probability controlnet_ratio
        # (a number or C() schedule: LucidDreamer's switch at iteration K is [K, 0.0, ratio, K + 1])
        controlnet_model_name_or_path: Optional[str] = None
        controlnet_ratio: Any = 0.5  # LucidDreamer's controlnet_ratio
        controlnet_conditioning_scale: float = 1.0

    cfg: Config

    WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")

    def validate_config(self) -> None:
        """Every option's range, checked before any model is loaded (subclasses add theirs, after
        calling this). One place per option: the shared ones here, the others in their guidance."""
        cfg, key = self.cfg, GUIDANCE_PREFIX
        if cfg.weighting_strategy not in self.WEIGHTING_STRATEGIES:
            raise ConfigError(
                f"{key}weighting_strategy='{cfg.weighting_strategy}' is not one of "
                f"{', '.join(self.WEIGHTING_STRATEGIES)}."
            )
        # a CFG scale: 0 is the unconditional (SDS: conditional) score, negative guides away from the prompt
        # above: the largest scale in use is DreamFusion's 100; far beyond it the guided prediction is the
        # prompt direction times the scale, the loss explodes (1e6 gave a loss of 3e11) and nothing is learnt
        check_range(key + "guidance_scale", cfg.guidance_scale, 0.0, MAX_GUIDANCE_SCALE,
                    why="classifier-free guidance scale", example=self.Config.guidance_scale)
        if cfg.grad_clip is not None:
            # clamp(-c, c) with c < 0 returns c everywhere instead of clipping
            check_schedule_range(key + "grad_clip", cfg.grad_clip, 0.0,
                                 why="the gradient is clamped to [-grad_clip, grad_clip]", example=1.0)
        # t = int(N * p) indexes the N-entry noise schedule and is drawn from [min_step, max_step]
        # inclusive: p = 1 would draw t = N, an IndexError at a random step
        for name in ("min_step_percent", "max_step_percent"):
            check_schedule_range(key + name, getattr(cfg, name), 0.0, 1.0, high_open=True,
                                 why="a fraction of the training timesteps; 1 would draw t = N, past the schedule",
                                 example=getattr(self.Config, name))
        check_schedule_order(key + "min_step_percent", cfg.min_step_percent, key + "max_step_percent", cfg.max_step_percent)
        if cfg.enable_sequential_cpu_offload and self.device.type not in ACCELERATOR_DEVICE_TYPES:
            raise ConfigError(f"{key}enable_sequential_cpu_offload=true needs a CUDA device (this run is on "
                              f"{self.device.type}): set it to false.")
        if cfg.controlnet_model_name_or_path is not None:
            check_schedule_range(key + "controlnet_ratio", cfg.controlnet_ratio, 0.0, 1.0,
                                 why="the probability that a step uses the ControlNet", example=0.5)
            check_range(key + "controlnet_conditioning_scale", cfg.controlnet_conditioning_scale, 0.0,
                        why="the weight of the ControlNet's residuals (diffusers' conditioning_scale)", example=1.0)
        # the personalisation files exist and the options have their types (formats are read at load)
        self.personalization = Personalization.from_config(cfg, key)
        if cfg.base_model and not self.personalization.single_file:
            warn(f"{key}base_model='{cfg.base_model}' is only used with a single-file {key}pretrained_model_name_or_path: ignored.")

    def weights_dtype_for(self, device: torch.device) -> torch.dtype:
        """fp16 with ``half_precision_weights`` on an accelerator, fp32 otherwise."""
        on_accelerator = torch.device(device).type in ACCELERATOR_DEVICE_TYPES
        return torch.float16 if self.cfg.half_precision_weights and on_accelerator else torch.float32

    def configure(self) -> None:
        self.validate_config()
        self.weights_dtype = self.weights_dtype_for(self.device)
        info(f"Loading Stable Diffusion from {self.cfg.pretrained_model_name_or_path} ({self.weights_dtype}) ...")
        pipe = load_stable_diffusion(
            self.cfg.pretrained_model_name_or_path, self.weights_dtype, personalization=self.personalization
        )
        self._apply_memory_options(pipe)
        for part in (pipe.unet, pipe.vae, pipe.text_encoder):
            if part is not None:
                part.eval()
                part.requires_grad_(False)
        # view-dependent prompts are the prompt processor's job; a guidance that needs other prompts
        # (ISM's inversion prompt) names them in extra_prompts() and gets them encoded once here
        self.extra_text_embeddings = self._encode_prompts(pipe, self.extra_prompts())
        pipe.text_encoder = None
        controlnet = None
        if self.cfg.controlnet_model_name_or_path is not None:
            controlnet = load_depth_controlnet(self.cfg.controlnet_model_name_or_path, self.weights_dtype, self.device,
                                               cross_attention_width(pipe.unet))
        self.controlnet_ratio = C(self.cfg.controlnet_ratio, 0, 0) if controlnet is not None else 0.0
        self.models = FrozenDiffusionModels(pipe=pipe, unet=pipe.unet, vae=pipe.vae, controlnet=controlnet)
        from diffusers import DDIMScheduler

        # DDIM over the model's own noise schedule (same alphas as its DDPM scheduler; ISM needs DDIM)
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.num_train_timesteps = self.scheduler.config.num_train_timesteps
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        self.register_buffer(
            "alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False
        )
        self.vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.latent_size = int(pipe.unet.config.sample_size)
        self.image_size = self.latent_size * self.vae_scale_factor
        self.set_min_max_steps()
        self.grad_clip_val: Optional[float] = None
        info(f"Loaded Stable Diffusion ({self.image_size}x{self.image_size} images, {self.num_train_timesteps} timesteps).")

    def extra_prompts(self) -> Dict[str, str]:
        """Prompts this guidance encodes itself (its config field -> text);
        ``self.extra_text_embeddings[field]`` is then a [1,77,D] tensor."""
        return {}

    @torch.no_grad()
    def _encode_prompts(self, pipe, prompts: Dict[str, str]) -> Dict[str, torch.Tensor]:
        """Padded to ``model_max_length`` and never truncated: a longer prompt is a ConfigError
        naming its key, ``system.guidance.<name>`` (names are the config fields that hold them). Loaded
        tokens count as the text encoder sees them (an n-vector token is n tokens)."""
        check_personalized_prompt_lengths(pipe.tokenizer, {f"system.guidance.{name}": text for name, text in prompts.items()})
        out = {}
        for name, text in prompts.items():
            out[name] = encode_prompts(pipe.tokenizer, pipe.text_encoder, [text], execution_device(pipe)).to(self.device)
        return out

    def _apply_memory_options(self, pipe) -> None:
        """Every option works with every guidance except sequential offload with a trained UNet (VSD
        refuses it in ``validate_config``). Layout and attention are set while the weights are still
        real tensors: sequential offload then keeps them (its CPU copies are the weights as they are)."""
        self.apply_unet_memory_options(pipe.unet, pipe)
        if self.cfg.enable_sequential_cpu_offload:
            # on the guidance's device (cuda:N), not diffusers' default accelerator 0
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)

    def apply_unet_memory_options(self, unet, pipe=None) -> None:
        """Attention (xformers or slicing) and memory layout of ``unet`` (through ``pipe`` when given,
        which sets them on each of its models)."""
        owner = unet if pipe is None else pipe
        if self.cfg.enable_memory_efficient_attention:
            try:
                owner.enable_xformers_memory_efficient_attention()
            except Exception:
                info("xformers is not available: torch's scaled-dot-product attention is used (already memory-efficient).")
        if self.cfg.enable_attention_slicing:
            if pipe is None:
                unet.set_attention_slice(1)
            else:
                pipe.enable_attention_slicing(1)
        if self.cfg.enable_channels_last_format:
            unet.to(memory_format=torch.channels_last)

    # ---- the frozen models (not registered: see module docstring) ----
    @property
    def unet(self):
        return self.models.unet

    @property
    def vae(self):
        return self.models.vae

    # ---- timesteps ----
    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        self.min_step = int(self.num_train_timesteps * min_step_percent)
        self.max_step = int(self.num_train_timesteps * max_step_percent)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        # idempotent: the system may reach this module along several attribute paths
        self.set_min_max_steps(
            min_step_percent=C(self.cfg.min_step_percent, epoch, global_step),
            max_step_percent=C(self.cfg.max_step_percent, epoch, global_step),
        )
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = C(self.cfg.grad_clip, epoch, global_step)
        if self.cfg.controlnet_model_name_or_path is not None:
            self.controlnet_ratio = C(self.cfg.controlnet_ratio, epoch, global_step)

    def sample_timesteps(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``t ~ U[min_step, max_step]`` (both ends included), one per batch item, as threestudio."""
        return torch.randint(
            self.min_step, self.max_step + 1, [batch_size], dtype=torch.long, device=self.device, generator=generator
        )

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``w(t)`` of the chosen weighting strategy, shaped [B,1,1,1]."""
        abar = self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1)
        if self.cfg.weighting_strategy == "sds":
            return 1 - abar
        if self.cfg.weighting_strategy == "uniform":
            return torch.ones_like(abar)
        return abar**0.5 * (1 - abar)

    # ---- DDIM ----
    def ddim_timestep_table(self) -> torch.Tensor:
        """Ascending DDIM timesteps at full resolution (``num_train_timesteps`` steps), as LucidDreamer
        indexes them: ``steps_offset`` is respected, so with SD 2.1-base (offset 1) index i is t = i + 1."""
        from diffusers import DDIMScheduler

        table = DDIMScheduler.from_config(self.scheduler.config)
        table.set_timesteps(self.num_train_timesteps)
        return torch.flip(table.timesteps, dims=(0,)).to(self.device)

    def _abar(self, t: int) -> torch.Tensor:
        # DDIM's convention: alpha_bar of a negative timestep is the final alpha (1 with set_alpha_to_one)
        return self.alphas_cumprod[t] if t >= 0 else self.scheduler.final_alpha_cumprod.to(self.alphas_cumprod)

    def ddim_step(
        self,
        x: torch.Tensor,
        eps: torch.Tensor,
        t_from: int,
        t_to: int,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """One deterministic (eta=0) DDIM move of ``x`` from timestep ``t_from`` to ``t_to`` (either
        direction; ``t_to > t_from`` is an inversion step) with the noise prediction ``eps``:

        ``x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from)``,
        ``x' = sqrt(a_to) x0 + sqrt(1 - a_to - sigma^2) eps + sigma n``,
        ``sigma^2 = min((1 - a_to) / 2, eta |var(t_from, t_to)|)`` (LucidDreamer's DDIM step; diffusers'
        DDIM variance ``(1 - a_to)/(1 - a_from) (1 - a_from / a_to)``).
        """
        a_from, a_to = self._abar(int(t_from)), self._abar(int(t_to))
        x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        sigma2 = torch.zeros_like(a_to)
        if eta > 0:
            var = ((1 - a_to) / (1 - a_from) * (1 - a_from / a_to)).abs()
            sigma2 = torch.minimum((1 - a_to) / 2, eta * var)
        out = a_to.sqrt() * x0 + (1 - a_to - sigma2).clamp_min(0).sqrt() * eps
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out = out + sigma2.sqrt() * noise
        return torch.nan_to_num(out)

    # ---- VAE ----
    def encode_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> latents [B,4,h,w] (a posterior sample times the scaling factor)."""
        imgs = F.interpolate(imgs, (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        posterior = self.vae.encode((imgs * 2.0 - 1.0).to(self.weights_dtype)).latent_dist
        return (posterior.sample() * self.vae.config.scaling_factor).to(imgs.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> [B,3,H,W] images in [0,1]."""
        out = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.weights_dtype)).sample
        return ((out.float() + 1) / 2).clamp(0, 1)

    def prepare_latents(self, rgb: torch.Tensor, rgb_as_latents: bool = False) -> torch.Tensor:
        """Renders [B,H,W,C] -> latents (encoded, or resized when the render already is a latent)."""
        rgb_bchw = rgb.permute(0, 3, 1, 2)
        if rgb_as_latents:
            return F.interpolate(rgb_bchw, (self.latent_size, self.latent_size), mode="bilinear", align_corners=False)
        return self.encode_images(rgb_bchw)

    # ---- UNet and CFG ----
    def unet_eps(self, latents: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, unet=None, **kwargs):
        """The UNet's noise prediction (v-prediction models are converted to epsilon)."""
        unet = self.unet if unet is None else unet
        self.check_text_embeddings(encoder_hidden_states, unet)
        out = unet(
            latents.to(self.weights_dtype),
            t.to(latents.device),
            encoder_hidden_states=encoder_hidden_states.to(self.weights_dtype),
            **kwargs,
        ).sample.to(latents.dtype)
        if self.prediction_type == "v_prediction":
            abar = self.alphas_cumprod.to(t.device)[t].view(-1, 1, 1, 1).to(latents.dtype)
            out = (1 - abar) ** 0.5 * latents + abar**0.5 * out
        return out

    def check_text_embeddings(self, embeddings: torch.Tensor, unet) -> None:
        """The prompt processor's embeddings must have the width the UNet cross-attends to (its own
        folder's text encoder is checked at load; a prompt processor on another model is not)."""
        cross = cross_attention_width(unet)
        if cross is not None and embeddings.shape[-1] != cross:
            raise ConfigError(
                f"{PROMPT_PROCESSOR_MODEL_KEY} gives {embeddings.shape[-1]}-d text embeddings but the UNet of "
                f"{MODEL_KEY}='{self.cfg.pretrained_model_name_or_path}' cross-attends to {cross}-d ones "
                f"(cross_attention_dim={cross}): point both keys at models of the same family (usually the same folder)."
            )

    # ---- ControlNet ----
    @property
    def uses_control_depth(self) -> bool:
        """Whether the system should pass the render's depth map as ``control_depth``."""
        return self.models.controlnet is not None

    def control_image_for_step(self, control_depth: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The ControlNet's conditioning image for this step, or None: LucidDreamer draws
        ``random.random() < controlnet_ratio`` once per step (Python's generator, in the checkpoint)."""
        if self.models.controlnet is None or control_depth is None or self.controlnet_ratio <= 0:
            return None
        if random.random() >= self.controlnet_ratio:
            return None
        return control_image(control_depth.to(self.device), self.image_size, self.weights_dtype)

    def unet_eps_controlled(self, latents: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                            image: Optional[torch.Tensor]) -> torch.Tensor:
        """``unet_eps`` with the ControlNet's residuals for conditioning ``image`` (one row per latent)."""
        if image is None:
            return self.unet_eps(latents, t, encoder_hidden_states)
        residuals = controlnet_residuals(self.models.controlnet, latents.to(self.weights_dtype), t,
                                         encoder_hidden_states, image, self.cfg.controlnet_conditioning_scale)
        return self.unet_eps(latents, t, encoder_hidden_states, **residuals)

    @staticmethod
    def classifier_free_guidance(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """diffusers' CFG: ``eps_u + s (eps_c - eps_u)``."""
        return eps_uncond + scale * (eps_cond - eps_uncond)

    def predict_noise(
        self,
        latents_noisy: torch.Tensor,
        t: torch.Tensor,
        prompt_utils,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        guidance_scale: float,
        control_depth: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Guided noise for the view-dependent prompts, batched in one UNet call.

        Returns ``eps`` (guided), ``eps_cond``, ``eps_uncond``. With Perp-Neg
        (``prompt_utils.use_perp_neg``) the guided direction is ``e_pos + sum_i w_i perp(e_neg_i, e_pos)``.
        ``control_depth`` [B,H,W,1]: the render's depth for the ControlNet, when one is configured (it
        conditions every prompt of the batch, as LucidDreamer's).
        """
        image = self.control_image_for_step(control_depth)
        batch_size = latents_noisy.shape[0]
        vdp = self.cfg.view_dependent_prompting
        if prompt_utils.use_perp_neg:
            text_embeddings, neg_weights = prompt_utils.get_text_embeddings_perp_neg(
                elevation, azimuth, camera_distances, vdp
            )
            # [cond (B), uncond (B), negatives (B x n_neg, item-major: item 0's n_neg first)]; the
            # negatives' latents must be item-major too (threestudio repeats them copy-major, which
            # pairs view i's negative prompts with view j's latents when B > 1: its issue 456)
            n_neg = neg_weights.shape[-1]
            latents_in = torch.cat([latents_noisy, latents_noisy, latents_noisy.repeat_interleave(n_neg, dim=0)])
            t_in = torch.cat([t, t, t.repeat_interleave(n_neg, dim=0)])
            image_in = None if image is None else torch.cat([image, image, image.repeat_interleave(n_neg, dim=0)])
            eps = self.unet_eps_controlled(latents_in, t_in, text_embeddings, image_in)
            eps_cond, eps_uncond, eps_negs = eps[:batch_size], eps[batch_size : 2 * batch_size], eps[2 * batch_size :]
            e_pos = eps_cond - eps_uncond
            direction = e_pos
            for i in range(n_neg):
                e_neg = eps_negs[i::n_neg] - eps_uncond
                direction = direction + neg_weights[:, i].view(-1, 1, 1, 1).to(e_pos) * perpendicular_component(e_neg, e_pos)
            guided = eps_uncond + guidance_scale * direction
        else:
            text_embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, vdp)
            image_in = None if image is None else torch.cat([image] * 2)
            eps = self.unet_eps_controlled(torch.cat([latents_noisy] * 2), torch.cat([t] * 2), text_embeddings, image_in)
            eps_cond, eps_uncond = eps.chunk(2)
            guided = self.classifier_free_guidance(eps_cond, eps_uncond, guidance_scale)
        return {"eps": guided, "eps_cond": eps_cond, "eps_uncond": eps_uncond}

    # ---- gradient -> loss ----
    def clean_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        # non-finite entries (e.g. an fp16 UNet overflow) are replaced as threestudio does, but counted:
        # the system logs the count (train/nonfinite_grad_entries) instead of hiding them
        self.nonfinite_grad_entries = (~torch.isfinite(grad)).sum()  # a tensor: no host sync here
        grad = torch.nan_to_num(grad)
        if self.grad_clip_val is not None:
            grad = grad.clamp(-self.grad_clip_val, self.grad_clip_val)
        return grad

    @staticmethod
    def gradient_as_loss(latents: torch.Tensor, grad: torch.Tensor, batch_mean: bool = True) -> torch.Tensor:
        """A loss whose gradient w.r.t. ``latents`` is ``grad / B`` (threestudio's SDS reparametrisation),
        or ``grad`` itself with ``batch_mean=False`` (LucidDreamer's SpecifyGradient)."""
        target = (latents - grad).detach()
        loss = 0.5 * F.mse_loss(latents, target, reduction="sum")
        return loss / latents.shape[0] if batch_mean else loss
