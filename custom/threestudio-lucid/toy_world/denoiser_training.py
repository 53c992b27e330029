"""One training loop for the toy world's learned diffusers UNets (issue 27): the VSD/ESD estimator that
``build_toy_world`` pretrains into ``estimator_unet/`` (camera-conditioned) and the learned prior of
``learned_prior.py`` (text only). Both train here, with the same data, objective and sampling.

Data (:func:`denoiser_data`): the world's renders encoded by its ``ToyAutoencoder`` (``pipeline.encode_renders``,
as the exact prior's mixture means are), the caption table of ``dataset.caption_table`` with its captions encoded
by the world's text encoder (``pipeline.encode_captions``), and each render's camera as VSD sees it
(:func:`vsd_camera_condition`).

Objective (DDPM's simple loss, epsilon prediction; Ho et al. 2020, eq. 14) under the world's noise schedule
(``alphas_cumprod`` of its scheduler, ``abar_t``):

    ``x0`` a training render, uniform over the training set (a biased world repeats its front views in the set,
    so they weigh as in the exact prior's mixture), ``t ~ U{0, ..., T - 1}``, ``eps ~ N(0, I)``,
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``,  ``L = mean || eps - eps_theta(x_t, t, y, c) ||^2``;

``y``: the embedding of one caption of the render, uniform over the non-empty captions of the caption table
that select it (the object's name, its view captions), and with probability ``caption_drop_prob`` (0.1) the
empty caption ``""`` (classifier-free guidance). ``c``: for a UNet with a 16-input projection class embedding
(the estimator), the render's camera as 16 numbers, zeroed with probability ``camera_drop_prob`` (0.1, VSD's
``lora_cfg_training`` rate), so the camera-free prediction that ESD mixes in is trained too.

AdamW in fp32, a linear warm-up over the first 5% of the steps (at most 100) then a cosine decay to a tenth of
the rate (so a short run ends at a settled loss without an EMA copy), gradient norm clipped at 1 (diffusers'
training scripts); every random number comes from one generator seeded by ``seed``, so a run is repeatable.
:func:`epsilon_mse` is the matching evaluation: the objective's error at fixed timesteps and noise, for any
UNet-like model (a learned one or the exact ``ToyDenoiser``).
"""
import math
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CAPTION_DROP_PROB = 0.1  # the empty caption, for classifier-free guidance
CAMERA_DROP_PROB = 0.1  # the zero camera, VSD's lora_cfg_training rate (vsd_guidance.CAMERA_DROP_PROB)
CAMERA_DIM = 16  # VSD's camera condition: a 4x4 matrix, flattened


def vsd_camera_condition(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """[N,16]: the numbers VSD's ``camera_condition`` (``camera_condition_type: extrinsics``) reads for the camera
    ``lucid-progressive-camera-datamodule`` makes at this elevation, azimuth (degrees) and distance without jitter
    (the toy configs'): its ``c2w`` (``look_at_c2w`` of ``spherical``, azimuth wrapped to [-180, 180) as the data
    module wraps it), flattened. The data module's own functions, so the numbers are the ones a run feeds."""
    from ..data.progressive_camera import look_at_c2w, spherical

    elevation = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1)
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)
    distance = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand_as(elevation)
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    centers = spherical(distance, elevation, azimuth)
    return look_at_c2w(centers, torch.zeros_like(centers)).reshape(-1, CAMERA_DIM)


def conditions_on_camera(unet) -> bool:
    """Whether ``unet`` takes VSD's camera: a ``projection`` class embedding of 16 inputs."""
    config = unet.config
    return (getattr(config, "class_embed_type", None) == "projection"
            and getattr(config, "projection_class_embeddings_input_dim", None) == CAMERA_DIM)


def build_denoiser_unet(latent_size: int, text_dim: int, channels: Sequence[int] = (32, 64),
                        layers_per_block: int = 1, camera: bool = False, seed: int = 0):
    """A diffusers ``UNet2DConditionModel`` for the world's latents: ``DownBlock2D`` at the full latent resolution
    (self-attention over 32x32 latents would dominate a CPU step), cross-attention blocks below it, 8 attention
    heads, GroupNorm with ``gcd(32, channels)`` groups. ``camera``: a ``projection`` class embedding of 16 inputs
    (``TimestepEmbedding(16, time_embed_dim)``, the module VSD adds for its camera), saved with the UNet.
    Initialised under ``seed`` without touching the global generator's state."""
    from diffusers import UNet2DConditionModel

    from ..tiny_pipeline import _seeded

    channels = tuple(int(c) for c in channels)
    if len(channels) < 2 or any(c < 8 or c % 8 for c in channels):
        raise ValueError(f"channels: got {list(channels)}; give two or more levels, each a multiple of 8 (e.g. 32 64)")
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM) if camera else {}
    levels = len(channels)
    with _seeded(seed):
        return UNet2DConditionModel(
            sample_size=int(latent_size),
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            block_out_channels=channels,
            layers_per_block=int(layers_per_block),
            norm_num_groups=math.gcd(32, *channels),
            cross_attention_dim=int(text_dim),
            attention_head_dim=8,
            **extra,
        )


@dataclass
class DenoiserData:
    """What the loop trains on, for one render set: ``latents`` [N,4,h,w] (encoded, scaled), ``captions`` (K, the
    caption table's, ``""`` first), ``caption_embeddings`` [K,77,D], ``members`` bool [K,N] (which renders each
    caption selects), ``cameras`` [N,16] (:func:`vsd_camera_condition`) and the ``render_set`` itself."""

    latents: Tensor
    captions: List[str]
    caption_embeddings: Tensor
    members: Tensor
    cameras: Tensor
    render_set: object

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def empty_index(self) -> int:
        return self.captions.index("")

    def name_caption_index(self) -> Tensor:
        """[N]: the index of each render's object-name caption (``"a penguin"``, the view-free prompt)."""
        return torch.tensor([self.captions.index(self.render_set.object_name(i)) for i in range(len(self))])

    def subset(self, index: Tensor) -> "DenoiserData":
        """The renders ``index`` (a bool mask or indices) selects, with the same caption table."""
        index = torch.as_tensor(index)
        return DenoiserData(self.latents[index], self.captions, self.caption_embeddings, self.members[:, index],
                            self.cameras[index], self.render_set.subset(index))

    def caption_options(self):
        """``(options [N,M], counts [N])``: the non-empty captions that select each render, padded."""
        chosen = self.members.clone()
        chosen[self.empty_index] = False
        counts = chosen.sum(0)
        options = torch.zeros(len(self), max(int(counts.max()), 1), dtype=torch.long)
        for n in range(len(self)):
            idx = chosen[:, n].nonzero().squeeze(-1)
            options[n, : idx.numel()] = idx
        return options, counts


@torch.no_grad()
def denoiser_data(render_set, vae, tokenizer, text_encoder) -> DenoiserData:
    """:class:`DenoiserData` of ``render_set`` with the world's autoencoder and text encoder."""
    from .dataset import caption_table
    from .pipeline import encode_captions, encode_renders

    captions, members = caption_table(render_set)
    return DenoiserData(
        latents=encode_renders(vae, render_set).float(),
        captions=captions,
        caption_embeddings=encode_captions(tokenizer, text_encoder, captions).float(),
        members=members,
        cameras=vsd_camera_condition(render_set.elevation, render_set.azimuth, render_set.distance),
        render_set=render_set,
    )


def world_denoiser_data(world_path: str, split: str = "train", cache_dir: Optional[str] = None) -> DenoiserData:
    """:class:`DenoiserData` of a world folder's training renders (``split="train"``) or held-out views
    (``"eval"``), with the folder's autoencoder, tokenizer and text encoder."""
    from .dataset import load_render_sets
    from .pipeline import load_text_components, read_toy_world_settings, render_cache_dir
    from .prior import ToyAutoencoder

    if split not in ("train", "eval"):
        raise ValueError(f"split: got {split!r}; use 'train' or 'eval'")
    settings = read_toy_world_settings(world_path)
    train, held_out = load_render_sets(settings, render_cache_dir(cache_dir))
    tokenizer, text_encoder = load_text_components(world_path)
    vae = ToyAutoencoder.from_pretrained(os.path.join(str(world_path), "vae"))
    return denoiser_data(train if split == "train" else held_out, vae, tokenizer, text_encoder)


def learning_rate_factor(step: int, steps: int) -> float:
    """The schedule of the module docstring: linear warm-up over ``min(100, 5% of steps)`` steps, then a cosine
    from 1 to 0.1."""
    warmup = max(1, min(100, steps // 20))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_denoiser(
    unet,
    data: DenoiserData,
    alphas_cumprod: Tensor,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    caption_drop_prob: float = CAPTION_DROP_PROB,
    camera_drop_prob: float = CAMERA_DROP_PROB,
    weight_decay: float = 1e-2,
    max_grad_norm: float = 1.0,
    progress: Optional[Callable[[int, float], None]] = None,
) -> List[float]:
    """Train ``unet`` (in place, fp32, on the CPU) for ``steps`` AdamW steps of the module docstring's objective
    and return the loss of every step. The camera enters only when the UNet takes it
    (:func:`conditions_on_camera`). ``progress(step, loss)`` is called after each step."""
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    use_camera = conditions_on_camera(unet)
    if any(p.dtype != torch.float32 for p in unet.parameters()):
        unet.to(dtype=torch.float32)
    unet.train().requires_grad_(True)
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    n_timesteps = abar.shape[0]
    options, counts = data.caption_options()
    empty = data.empty_index
    generator = torch.Generator().manual_seed(int(seed))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, steps))
    history: List[float] = []
    for step in range(steps):
        index = torch.randint(len(data), (batch_size,), generator=generator)
        x0 = data.latents[index]
        t = torch.randint(n_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        pick = (torch.rand(batch_size, generator=generator) * counts[index]).long()
        caption = options[index, pick]
        caption = torch.where(torch.rand(batch_size, generator=generator) < caption_drop_prob,
                              torch.full_like(caption, empty), caption)
        keep_camera = torch.rand(batch_size, 1, generator=generator) >= camera_drop_prob
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        kwargs = {"class_labels": data.cameras[index] * keep_camera} if use_camera else {}
        pred = unet(x_t, t, encoder_hidden_states=data.caption_embeddings[caption], **kwargs).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        schedule.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress(step, history[-1])
    unet.eval().requires_grad_(False)
    return history


@torch.no_grad()
def epsilon_mse(
    unet,
    data: DenoiserData,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    caption_index: Optional[Tensor] = None,
    cameras: Optional[Tensor] = None,
    draws: int = 2,
    seed: int = 0,
    chunk: int = 64,
) -> List[float]:
    """The objective's error ``mean || eps - eps_theta(x_t, t, y, c) ||^2`` at each of ``timesteps``, over every
    render of ``data`` and ``draws`` noise draws (the same noise for every model given the same ``seed``).
    ``caption_index`` [N]: each render's caption (default: its object name, the view-free prompt); ``cameras``
    [N,16] the class labels (None: none are passed, as for a text-only UNet or the exact prior)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
    caption_index = data.name_caption_index() if caption_index is None else caption_index
    generator = torch.Generator().manual_seed(int(seed))
    errors = []
    for t_value in timesteps:
        total, count = 0.0, 0
        for _ in range(draws):
            noise = torch.randn(data.latents.shape, generator=generator)
            for start in range(0, len(data), chunk):
                sl = slice(start, start + chunk)
                x0, eps = data.latents[sl], noise[sl]
                t = torch.full((x0.shape[0],), int(t_value), dtype=torch.long)
                a = abar[t].view(-1, 1, 1, 1)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                kwargs = {} if cameras is None else {"class_labels": cameras[sl].float()}
                pred = unet(x_t, t, encoder_hidden_states=data.caption_embeddings[caption_index[sl]], **kwargs).sample
                total += float(((pred.float() - eps) ** 2).sum())
                count += eps.numel()
        errors.append(total / count)
    return errors
