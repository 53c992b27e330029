"""The toy prior: a VAE-like autoencoder and the exact optimal denoiser of a text-conditioned
Gaussian mixture built from the captioned render set, behind diffusers' VAE / UNet interfaces.

Latent space (``ToyAutoencoder``): the image in [-1, 1], average-pooled by ``downsample`` (1, 2, 4
or 8), as channels 0-2, and a constant-zero channel 3, so latents have SD's 4 channels. The
posterior is deterministic (std ``posterior_std``, 0 by default); decoding repeats each latent pixel
``downsample`` x ``downsample`` times (nearest), so ``encode(decode(z)) = z`` on channels 0-2 and
``decode(encode(x))`` is the block average of ``x``. ``scaling_factor`` is 1: latents are in image
units, and so is the bandwidth.

The prior (``ToyDenoiser``): for a text embedding ``c``, the data distribution is

    ``x0 ~ sum_i pi_i(c) N(m_i, b^2 I)``,

``m_i`` the encoded (scaled) renders, ``b`` the BANDWIDTH. The forward process
``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` (``a`` = ``alphas_cumprod[t]``) keeps a Gaussian mixture,
so the optimal (MMSE) predictions are closed-form:

    ``w_i ∝ pi_i N(x_t; sqrt(a) m_i, v I)``, ``v = a b^2 + 1 - a``  (posterior responsibilities),
    ``E[x0 | x_t] = sum_i w_i [m_i + sqrt(a) b^2 / v (x_t - sqrt(a) m_i)]``,
    ``eps_hat = (x_t - sqrt(a) E[x0 | x_t]) / sqrt(1 - a)``,

computed in float64 with a log-sum-exp softmax. Why ``b > 0``: with ``b = 0`` (Dirac masses on the
renders) ``eps_hat = (x_t - sqrt(a) m_bar) / sqrt(1 - a)`` grows like ``1 / sigma_t`` for an image
off the data as ``t -> 0``, and the DDIM inversion ISM starts near ``t = 1`` blows up; with
``b > 0`` it is ``sqrt(1 - a) / v (x_t - sqrt(a) m_bar)``, bounded. In D = 4 h w dimensions the
responsibilities are still sharp: two renders whose latents differ by an RMS ``delta`` per entry
are told apart once ``D delta^2 / (2 b^2)`` is a few nats, so at small t the prediction is that of
the nearest matching render even with b = 0.1.

Text conditioning: ``pi(c) = sum_k lambda_k(c) u_k``, ``u_k`` uniform over the renders of caption
``k`` (``""`` = all renders, ``"a red cube"`` = the cube's renders, ``"a red cube, front view"`` = its
front views, ...). ``lambda(c)`` is the projection of ``c`` (flattened [77 D]) onto the convex hull
of the known caption embeddings ``E_k`` (computed with the pipeline's own text encoder):

    ``lambda = argmin_{lambda >= 0, sum lambda = 1} || c - sum_k lambda_k E_k ||``,

solved as a non-negative least-squares problem on the QR-reduced embeddings with the sum-to-one
constraint as a heavily weighted extra row. An exact caption embedding gives a one-hot ``lambda``
(the caption's renders, uniformly); a convex combination of caption embeddings (threestudio's
prompt interpolation, Perp-Neg's ``r front + (1 - r) side``) gives exactly its coefficients (the
caption embeddings are affinely independent), so the render sets mix in those proportions. An
embedding farther than ``text_tolerance`` (relative to its norm; default 0.02, while distinct
captions of the tiny CLIP are >= 0.2 apart and fp16 rounding is ~1e-3) from the hull is text the
prior does not know (e.g. a negative prompt such as "blurry"): it is treated as the empty prompt,
i.e. unconditional (all renders). Weights below ``1e-3`` are dropped and the rest renormalised.

Loading: both are diffusers ``ModelMixin`` components that a world folder's ``model_index.json`` names
(``"unet": ["threestudio_lucid.toy_world.prior", "ToyDenoiser"]``, ``"vae": [..., "ToyAutoencoder"]``), so
``StableDiffusionPipeline.from_pretrained(world)`` loads them through diffusers' own component loader, which
calls their ``from_pretrained(<world>/unet)`` / ``(<world>/vae)``. Neither has weights: the autoencoder reads
its sizes from ``vae/config.json``, the denoiser is built from the world's settings, renders, text encoder
and scheduler (``pipeline.denoiser_from_folder``).
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # the base through which diffusers' loader finds the components' from_pretrained
from torch import Tensor

from ..compat import info


class _Config(dict):
    """A read-only dict with attribute access, like diffusers' ``FrozenDict`` model configs."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key, value):
        raise TypeError("model configs are read-only")


class _DeviceDtypeMixin:
    """``.device`` / ``.dtype`` from a scalar buffer, so they follow ``.to(...)`` like a model's weights."""

    def _init_anchor(self, dtype: torch.dtype) -> None:
        self.register_buffer("_anchor", torch.zeros((), dtype=dtype), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype


# --------------------------------------------------------------------------------------------------
# the autoencoder
# --------------------------------------------------------------------------------------------------
class DiagonalGaussian:
    """``N(mean, std^2)`` per entry, with the members of diffusers' ``DiagonalGaussianDistribution``."""

    def __init__(self, mean: Tensor, std: float = 0.0):
        self.mean = mean
        self.std = torch.full_like(mean, float(std))
        self.var = self.std**2
        self.logvar = torch.log(self.var.clamp_min(1e-30))

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        if not torch.any(self.std > 0):
            return self.mean
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean


@dataclass
class EncoderOutput:
    latent_dist: DiagonalGaussian


@dataclass
class DecoderOutput:
    sample: Tensor


def _read_component_config(path: str) -> Dict:
    file = os.path.join(str(path), "config.json")
    try:
        with open(file, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise OSError(f"{file}: cannot read the toy-world component's config ({type(e).__name__}); rebuild the "
                      "world with `lucid-build-toy-world`") from None


class ToyAutoencoder(_DeviceDtypeMixin, ModelMixin):
    """Average-pool encoder / nearest-upsampling decoder (see the module docstring)."""

    CONFIG_KEYS = ("downsample", "image_size", "latent_channels", "scaling_factor", "posterior_std")

    @classmethod
    def from_pretrained(cls, path, torch_dtype: Optional[torch.dtype] = None, **ignored):
        """From ``<path>/config.json`` (:data:`CONFIG_KEYS`); diffusers' other loading options (device map,
        variants, ...) do not apply to a model without weights and are ignored."""
        config = _read_component_config(path)
        dtype = torch_dtype or ignored.get("dtype") or torch.float32
        return cls(**{k: config[k] for k in cls.CONFIG_KEYS if k in config}, dtype=dtype)

    def __init__(
        self,
        downsample: int = 2,
        image_size: int = 64,
        latent_channels: int = 4,
        scaling_factor: float = 1.0,
        posterior_std: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if downsample not in (1, 2, 4, 8):
            raise ValueError(f"ToyAutoencoder downsample must be 1, 2, 4 or 8, got {downsample}")
        if latent_channels < 3:
            raise ValueError(f"ToyAutoencoder needs >= 3 latent channels, got {latent_channels}")
        self.downsample = int(downsample)
        self.posterior_std = float(posterior_std)
        # len(block_out_channels) - 1 = log2(downsample), which is how the guidance reads the factor
        n_blocks = int(round(math.log2(self.downsample))) + 1
        self.config = _Config(
            in_channels=3,
            out_channels=3,
            latent_channels=int(latent_channels),
            block_out_channels=[32] * n_blocks,
            scaling_factor=float(scaling_factor),
            sample_size=int(image_size),
            downsample=self.downsample,
        )
        self._init_anchor(dtype)

    def encode(self, x: Tensor, return_dict: bool = True):
        """``x`` [B,3,H,W] in [-1, 1] -> latent distribution of [B,C,H/f,W/f]."""
        pooled = F.avg_pool2d(x, self.downsample) if self.downsample > 1 else x
        extra = self.config.latent_channels - 3
        if extra:
            pooled = torch.cat([pooled, pooled.new_zeros(pooled.shape[0], extra, *pooled.shape[2:])], dim=1)
        dist = DiagonalGaussian(pooled, self.posterior_std)
        return EncoderOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True):
        """Latents [B,C,h,w] -> images [B,3,h f,w f] (channels 0-2, nearest upsampling)."""
        x = z[:, :3]
        if self.downsample > 1:
            x = F.interpolate(x, scale_factor=self.downsample, mode="nearest")
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: Tensor) -> DecoderOutput:
        return self.decode(self.encode(x).latent_dist.mode())


# --------------------------------------------------------------------------------------------------
# text conditioning
# --------------------------------------------------------------------------------------------------
class CaptionProjector:
    """``lambda(c)``: projection of a text embedding onto the convex hull of the caption embeddings
    (see the module docstring). Works on the CPU in float64; results are cached per embedding."""

    CONSTRAINT_WEIGHT = 1e3
    MIN_WEIGHT = 1e-3
    MAX_CACHE = 4096

    def __init__(self, caption_embeddings: Tensor, captions: Sequence[str], text_tolerance: float = 0.02):
        emb = caption_embeddings.detach().to("cpu", torch.float64).reshape(caption_embeddings.shape[0], -1).numpy()
        self.captions = list(captions)
        if "" not in self.captions:
            raise ValueError("the caption table must contain the empty caption ''")
        self.empty_index = self.captions.index("")
        self.q, self.r = np.linalg.qr(emb.T)  # emb.T = q r: q [LD, K], r [K, K]
        self.rho = self.CONSTRAINT_WEIGHT * float(np.linalg.norm(emb, axis=1).max())
        self.text_tolerance = float(text_tolerance)
        self.shape = tuple(caption_embeddings.shape[1:])
        self._cache: Dict[str, Tuple[np.ndarray, float]] = {}
        self._unknown_reported = 0

    def weights_and_distance(self, embedding: np.ndarray) -> Tuple[np.ndarray, float]:
        """``(lambda [K], relative distance to the hull)`` of one flattened float64 embedding, before
        the unknown-text rule."""
        from scipy.optimize import nnls

        c = self.q.T @ embedding
        perp2 = max(float(embedding @ embedding - c @ c), 0.0)
        k = self.r.shape[1]
        a = np.vstack([self.r, np.full((1, k), self.rho)])
        b = np.concatenate([c, [self.rho]])
        lam, _ = nnls(a, b)
        lam = lam / max(lam.sum(), 1e-300)
        resid2 = float(np.sum((self.r @ lam - c) ** 2)) + perp2
        return lam, math.sqrt(resid2) / max(float(np.linalg.norm(embedding)), 1e-300)

    def __call__(self, encoder_hidden_states: Tensor) -> Tensor:
        """[B,L,D] text embeddings -> [B,K] float64 caption weights (on the CPU)."""
        if tuple(encoder_hidden_states.shape[1:]) != self.shape:
            raise ValueError(
                f"toy world denoiser: encoder_hidden_states must be [B, {self.shape[0]}, {self.shape[1]}] "
                f"(the toy world's own text encoder), got {list(encoder_hidden_states.shape)}"
            )
        rows = encoder_hidden_states.detach().to("cpu")
        out = np.zeros((rows.shape[0], len(self.captions)))
        for i, row in enumerate(rows):
            raw = row.contiguous().numpy().tobytes()
            key = hashlib.sha1(raw).hexdigest() + str(row.dtype)
            hit = self._cache.get(key)
            if hit is None:
                lam, dist = self.weights_and_distance(row.to(torch.float64).reshape(-1).numpy())
                if dist > self.text_tolerance:
                    self._report_unknown(dist)
                    lam = np.zeros_like(lam)
                    lam[self.empty_index] = 1.0
                lam[lam < self.MIN_WEIGHT] = 0.0
                lam = lam / lam.sum()
                if len(self._cache) >= self.MAX_CACHE:
                    self._cache.clear()
                hit = self._cache[key] = (lam, dist)
            out[i] = hit[0]
        return torch.from_numpy(out)

    def _report_unknown(self, dist: float) -> None:
        if self._unknown_reported < 3:
            info(
                f"Toy world prior: a text embedding is no known caption nor a mix of them (relative distance "
                f"{dist:.3f} > {self.text_tolerance}); it is treated as the empty prompt (all renders). "
                "Expected for a negative prompt; for a positive prompt, use one of the world's captions."
            )
        self._unknown_reported += 1


# --------------------------------------------------------------------------------------------------
# the denoiser
# --------------------------------------------------------------------------------------------------
@dataclass
class DenoiserOutput:
    sample: Tensor


class ToyDenoiser(_DeviceDtypeMixin, ModelMixin):
    """UNet-like exact denoiser: ``denoiser(sample, timestep, encoder_hidden_states).sample`` is
    ``eps_hat`` of the text-conditioned Gaussian mixture (module docstring). No trainable weights.

    ``means`` [N,C,h,w]: the encoded, scaled renders; ``caption_members`` bool [K,N]: which renders
    each caption selects; ``caption_embeddings`` [K,L,D]; ``alphas_cumprod`` [T] (the scheduler's).
    """

    def __init__(
        self,
        means: Tensor,
        caption_embeddings: Tensor,
        caption_members: Tensor,
        captions: Sequence[str],
        alphas_cumprod: Tensor,
        bandwidth: float = 0.1,
        text_tolerance: float = 0.02,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        n, c, h, w = means.shape
        if caption_members.shape != (len(captions), n) or caption_embeddings.shape[0] != len(captions):
            raise ValueError("caption_members must be [K, N] and caption_embeddings [K, L, D] for K captions")
        if not bool(caption_members.any(dim=1).all()):
            raise ValueError("every caption must select at least one render")
        self.bandwidth = float(bandwidth)
        self.captions = list(captions)
        self.config = _Config(
            sample_size=int(h),
            in_channels=int(c),
            out_channels=int(c),
            cross_attention_dim=int(caption_embeddings.shape[-1]),
            bandwidth=self.bandwidth,
            num_components=int(n),
            num_captions=len(self.captions),
        )
        flat = means.detach().to(torch.float64).reshape(n, -1)
        self.register_buffer("means", flat, persistent=False)
        self.register_buffer("mean_sq_norms", (flat * flat).sum(-1), persistent=False)
        members = caption_members.to(torch.float64)
        self.register_buffer("caption_priors", members / members.sum(-1, keepdim=True), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().to(torch.float64), persistent=False)
        self.projector = CaptionProjector(caption_embeddings, self.captions, text_tolerance)
        self._init_anchor(dtype)

    # set when loaded from a world folder (pipeline.denoiser_from_folder): the world's settings, renders
    # (training and held-out) and folder
    settings = None
    train_set = None
    eval_set = None
    world_path = None

    @classmethod
    def from_pretrained(cls, path, torch_dtype: Optional[torch.dtype] = None, **ignored):
        """The exact prior of the world folder that holds ``path`` (``<world>/unet``): its settings, renders
        (from the render cache, or made now), text encoder and scheduler; ``text_tolerance`` from
        ``<path>/config.json``. diffusers' other loading options do not apply and are ignored."""
        from .pipeline import denoiser_from_folder

        config = _read_component_config(path)
        return denoiser_from_folder(os.path.dirname(os.path.abspath(str(path))),
                                    torch_dtype or ignored.get("dtype") or torch.float32,
                                    text_tolerance=float(config.get("text_tolerance", 0.02)))

    # float64 buffers stay float64 when the module is cast (``.half()``, ``.to(float16)``): only the
    # anchor, which reports ``dtype``, follows the cast
    def _apply(self, fn, recurse=True):
        keep = {name: buf for name, buf in self._buffers.items() if name != "_anchor" and buf is not None}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            moved = self._buffers[name]
            if moved.dtype != torch.float64:
                self._buffers[name] = old.to(device=moved.device)
        return self

    def caption_weights(self, encoder_hidden_states: Tensor) -> Tensor:
        """[B,L,D] -> lambda [B,K] (float64, on the denoiser's device)."""
        return self.projector(encoder_hidden_states).to(self.means.device)

    def component_log_priors(self, caption_weights: Tensor) -> Tensor:
        """lambda [B,K] -> log pi [B,N] (-inf for renders the text does not select)."""
        return torch.log(caption_weights @ self.caption_priors)

    def _abar(self, timestep, batch_size: int) -> Tensor:
        t = torch.as_tensor(timestep, device=self.means.device)
        t = t.round().long().reshape(-1) if t.is_floating_point() else t.long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch_size)
        if t.numel() != batch_size:
            raise ValueError(f"toy world denoiser: {t.numel()} timesteps for a batch of {batch_size}")
        return self.alphas_cumprod[t.clamp(0, self.alphas_cumprod.shape[0] - 1)]

    def posterior(self, sample: Tensor, timestep, log_priors: Tensor) -> Dict[str, Tensor]:
        """Closed-form posterior of x0 given ``sample`` = x_t [B,C,h,w] and log pi [B,N]:
        ``responsibilities`` [B,N], ``x0_mean`` (E[x0|x_t]) and ``eps`` [B,C,h,w], float64."""
        batch = sample.shape[0]
        x = sample.detach().to(self.means.device, torch.float64).reshape(batch, -1)
        a = self._abar(timestep, batch)[:, None]
        b2 = self.bandwidth**2
        v = a * b2 + 1 - a
        sq = a.sqrt()
        # ||x - sqrt(a) m_i||^2 without forming the [B,N,D] differences
        dist2 = (x * x).sum(-1, keepdim=True) - 2 * sq * (x @ self.means.T) + a * self.mean_sq_norms[None]
        resp = torch.softmax(log_priors - dist2 / (2 * v), dim=-1)
        m_bar = resp @ self.means
        x0 = (1 - a * b2 / v) * m_bar + (sq * b2 / v) * x
        eps = (x - sq * x0) / (1 - a).sqrt()
        shape = sample.shape
        return {"responsibilities": resp, "x0_mean": x0.reshape(shape), "eps": eps.reshape(shape)}

    def add_adapter(self, *args, **kwargs) -> None:
        raise NotImplementedError(
            "The toy world's denoiser is closed-form: it has no attention layers to put a LoRA on. VSD / ESD "
            "on a toy world need a separately trained estimator UNet (pretrained_model_name_or_path_lora)."
        )

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, return_dict: bool = True, **kwargs):
        """diffusers' UNet call: ``.sample`` is eps_hat [B,C,h,w] in ``sample``'s dtype. Extra keyword
        arguments (``cross_attention_kwargs``, ``class_labels``, ...) are accepted and ignored."""
        if encoder_hidden_states.shape[0] != sample.shape[0]:
            raise ValueError(
                f"toy world denoiser: {encoder_hidden_states.shape[0]} text embeddings for a batch of {sample.shape[0]}"
            )
        log_priors = self.component_log_priors(self.caption_weights(encoder_hidden_states))
        eps = self.posterior(sample, timestep, log_priors)["eps"].to(sample.device, sample.dtype)
        return DenoiserOutput(sample=eps) if return_dict else (eps,)
