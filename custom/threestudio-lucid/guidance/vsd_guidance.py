"""``lucid-vsd-guidance``: ProlificDreamer's Variational Score Distillation, threestudio's formulation
on modern diffusers + peft.

Two scores of the same noisy latent ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``:

- the pretrained one, with CFG over the (view-dependent) text prompt, diffusers' convention
  ``eps_pre = eps(x_t, y_vd, none) + s (eps(x_t, y_vd) - eps(x_t, y_vd, none))`` (Perp-Neg when the
  prompt processor asks for it; it only ever applies to this branch, threestudio #135);
- the particles' one, a LoRA of a Stable Diffusion UNet conditioned on the camera ``c`` through a
  learned class embedding, with CFG over the camera only (both halves see the conditional,
  view-independent prompt ``y``; threestudio after PR #261):
  ``eps_est = eps_phi(x_t, y, null) + s_lora (eps_phi(x_t, y, c) - eps_phi(x_t, y, null))``.
  The "null" camera is a zero 16-vector through the learned embedding, trained by dropping the camera
  with probability 0.1 (``lora_cfg_training``).

``grad = w(t) (eps_pre - eps_est)`` with ``w(t) = 1 - abar_t`` goes into the latents through the shared
loss trick (``loss_vsd``); ``loss_lora`` is the LoRA's denoising loss on the detached latents at
``t ~ U[0, T)`` (noise target for epsilon models, velocity for v-prediction ones).

Models. When ``pretrained_model_name_or_path_lora`` equals ``pretrained_model_name_or_path`` there is
one UNet: the LoRA adapter is added to it with peft (``unet.add_adapter``) and the pretrained score is
taken with the adapters disabled and the camera embedding detached (``pretrained_unet()``), so no
second copy of the weights exists. Otherwise the LoRA's base UNet (and its noise schedule and
prediction type) is loaded from that second model; a UNet saved with a 16-input ``projection`` class
embedding (a pretrained camera embedding) keeps it. Only the LoRA matrices and the camera embedding are
registered here, so they are what ``guidance.parameters()``, the ``optimizer.params.guidance`` group
and the checkpoint see; loading a state dict writes straight into the UNet's adapter weights.

Personalised models (``textual_inversion_path``, ``lora_path``, a single-file checkpoint; see
``personalization.py``). The estimator starts where the particles are pulled: at the personalised
prior. Single model: the personal LoRA is fused into the shared UNet's weights before VSD's adapter is
added, so the pretrained score (adapters disabled) is the personalised UNet and the estimator is that
UNet plus VSD's zero-initialised LoRA. Separate model: the personal LoRA's UNet half is fused into the
estimator's base UNet too, at the same ``lora_scale`` (a LoRA whose layers do not fit that model is a
ConfigError: use single-model mode); a single-file checkpoint's own fine-tuned weights cannot move to
another model, so there the estimator starts from ``pretrained_model_name_or_path_lora`` (plus the
LoRA). Learned tokens need nothing on the estimator's side: it reads the prompt processor's
embeddings, made by the personalised text encoder.

Precision. With fp16 weights (``half_precision_weights`` on a GPU) the LoRA matrices and the camera
embedding stay fp32 (diffusers' LoRA recipe) and the LoRA loss's backward runs under a dynamic loss
scale (``loss_scale.py``: GradScaler's rule inside the guidance, since the system trains in 32-true
precision without one); without it 10% of the LoRA's gradient entries underflow to zero at 512 px.
``loss_lora`` is the unscaled loss; S is logged as ``lora_loss_scale`` and kept in the checkpoint.

Departures from threestudio: peft adapters instead of ``LoRAAttnProcessor`` (gone since diffusers
0.30) with the same init (A ~ N(0, 1/r), B = 0) and the same targets (every attention's q, k, v and
out projections); the camera is dropped per item rather than for the whole batch (same rate, a less
noisy estimate); when only the camera-conditioned (s_lora = 1) or only the camera-free (s_lora = 0)
LoRA score is needed, the other half is not computed.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compat import register, warn
from ..errors import ConfigError
from ..personalization import fuse_unet_lora
from .diffusion_base import GUIDANCE_PREFIX, StableDiffusionGuidanceBase, check_model_reachable, dtype_argument
from .loss_scale import DynamicLossScale
from .option_ranges import check_range

LORA_MODEL_KEY = "system.guidance.pretrained_model_name_or_path_lora"
ADAPTER_NAME = "lucid_vsd"
CAMERA_CONDITION_TYPES = ("extrinsics", "mvp")
CAMERA_DROP_PROB = 0.1  # threestudio's rate of training the null camera
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class LoRADiffusionModel:
    """The UNet that carries the LoRA, its noise scheduler, and whether it is the pretrained UNet
    itself (kept out of the nn.Module tree, like the frozen models)."""

    unet: Any
    scheduler: Any
    single_model: bool


def _state_key(module_path: str) -> str:
    # nn.Module names cannot hold dots
    return module_path.replace(".", "__")


@register("lucid-vsd-guidance")
class VSDGuidance(StableDiffusionGuidanceBase):
    @dataclass
    class Config(StableDiffusionGuidanceBase.Config):
        # the LoRA's base model; equal to pretrained_model_name_or_path = one shared UNet
        pretrained_model_name_or_path_lora: str = "stabilityai/stable-diffusion-2-1"
        guidance_scale: float = 7.5  # diffusers' CFG convention
        # CFG over the camera in the LoRA score: 1 = camera-conditioned (VSD), 0 = camera-free
        guidance_scale_lora: float = 1.0
        lora_cfg_training: bool = True  # drop the camera with probability 0.1 when training the LoRA
        lora_n_timestamp_samples: int = 1
        camera_condition_type: str = "extrinsics"  # extrinsics: c2w | mvp: mvp_mtx (4x4 -> 16 numbers)
        lora_rank: int = 4
        lora_alpha: Optional[float] = None  # None: lora_rank (scale 1, as threestudio's LoRA layers)
        lora_target_modules: List[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
        # the estimator's UNet inside the LoRA model folder; with train_full_estimator every weight of
        # that (small) UNet is trained instead of a LoRA on it: the toy world's estimator_unet/, a
        # small diffusers UNet (pretrained on the world's renders with its camera embedding) standing in
        # for the LoRA of an exact prior
        lora_unet_subfolder: str = "unet"
        train_full_estimator: bool = False

    # the LoRA score is conditioned on the camera: renders must not be mirrored without it
    conditions_on_camera = True

    cfg: Config

    # ---- configuration ----
    def resolve_guidance_scale_lora(self) -> float:
        """The CFG scale of the LoRA score, checked (ESD derives it from ``lambda_coeff``)."""
        # a CFG scale over the camera: 0 = camera-free, 1 = camera-conditioned (VSD), > 1 extrapolates;
        # negative guides away from the camera (ESD's lambda > 1, outside its convex mix)
        check_range(GUIDANCE_PREFIX + "guidance_scale_lora", self.cfg.guidance_scale_lora, 0.0,
                    why="CFG scale over the camera in the LoRA score; 1 = VSD", example=self.Config.guidance_scale_lora)
        return float(self.cfg.guidance_scale_lora)

    def validate_config(self) -> None:
        super().validate_config()
        cfg, key = self.cfg, GUIDANCE_PREFIX
        if cfg.camera_condition_type not in CAMERA_CONDITION_TYPES:
            raise ConfigError(
                f"{key}camera_condition_type='{cfg.camera_condition_type}' is not one of "
                f"{', '.join(CAMERA_CONDITION_TYPES)}."
            )
        if cfg.enable_sequential_cpu_offload:
            raise ConfigError(
                f"{key}enable_sequential_cpu_offload=true is not supported by VSD/ESD "
                "(the LoRA UNet trains); use single-model mode to save memory instead."
            )
        check_range(key + "lora_n_timestamp_samples", cfg.lora_n_timestamp_samples, 1, integer=True,
                    why="LoRA training timesteps per view", example=self.Config.lora_n_timestamp_samples)
        check_range(key + "lora_rank", cfg.lora_rank, 1, integer=True, why="the LoRA's rank r",
                    example=self.Config.lora_rank)
        if cfg.lora_alpha is not None:
            # the LoRA output is scaled by alpha / r: 0 switches it off, negative flips it
            check_range(key + "lora_alpha", cfg.lora_alpha, 0.0, low_open=True,
                        why="LoRA scale alpha / r; null means alpha = lora_rank", example=cfg.lora_rank)
        if not cfg.lora_target_modules:
            raise ConfigError(f"{key}lora_target_modules must name at least one module (e.g. to_q).")
        self.guidance_scale_lora = self.resolve_guidance_scale_lora()
        if self.guidance_scale_lora != 1.0 and not cfg.lora_cfg_training:
            warn(
                f"{key}guidance_scale_lora={self.guidance_scale_lora} uses the camera-free LoRA "
                f"score, which is never trained with {key}lora_cfg_training=false."
            )

    def configure(self) -> None:
        super().configure()  # validate_config() first, then the pretrained model
        self.lora_models = self._lora_base_model()
        self.lora_prediction_type = self.lora_models.scheduler.config.get("prediction_type", "epsilon")
        self.num_train_timesteps_lora = self.lora_models.scheduler.config.num_train_timesteps
        self.register_buffer(
            "alphas_cumprod_lora", self.lora_models.scheduler.alphas_cumprod.clone().float(), persistent=False
        )
        if self.cfg.train_full_estimator:
            if self.single_model:
                raise ConfigError(
                    "system.guidance.train_full_estimator=true would train the pretrained UNet itself: point "
                    f"{LORA_MODEL_KEY} (or lora_unet_subfolder) at a separate small UNet."
                )
            unet = self.lora_models.unet
            unet.to(dtype=torch.float32).train().requires_grad_(True)
            self.lora_layers = nn.ModuleDict({"estimator_unet": unet})
        else:
            self._add_lora(self.lora_models.unet)
        self._add_camera_embedding(self.lora_models.unet)
        # what the LoRA loss trains, by name in the LoRA UNet (= guidance.parameters())
        self.lora_trainables = {n: p for n, p in self.lora_models.unet.named_parameters() if p.requires_grad}
        # fp32 LoRA on an fp16 UNet under 32-true precision: a loss scale keeps its gradient from
        # underflowing in the UNet's fp16 backward (see loss_scale.py; a full estimator is fp32)
        fp16_base = self.weights_dtype == torch.float16 and not self.cfg.train_full_estimator
        self.lora_loss_scale = DynamicLossScale(fp16_base, device=self.device)

    def _lora_base_model(self) -> LoRADiffusionModel:
        name = self.cfg.pretrained_model_name_or_path_lora
        if name == self.cfg.pretrained_model_name_or_path and self.cfg.lora_unet_subfolder == "unet":
            return LoRADiffusionModel(unet=self.unet, scheduler=self.scheduler, single_model=True)
        from diffusers import DDIMScheduler, UNet2DConditionModel

        check_model_reachable(name, LORA_MODEL_KEY)
        try:
            unet = UNet2DConditionModel.from_pretrained(
                name, subfolder=self.cfg.lora_unet_subfolder, **dtype_argument(self.weights_dtype)
            )
            scheduler = DDIMScheduler.from_pretrained(name, subfolder="scheduler")
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{LORA_MODEL_KEY}='{name}' is not a loadable Stable Diffusion pipeline: "
                f"{' '.join(str(e).split())[:300]}"
            ) from None
        self._check_compatible(unet, scheduler)
        fuse_unet_lora(unet, self.personalization, LORA_MODEL_KEY)  # the estimator starts personalised too
        unet.to(self.device).eval().requires_grad_(False)
        self.apply_unet_memory_options(unet)
        return LoRADiffusionModel(unet=unet, scheduler=scheduler, single_model=False)

    def _check_compatible(self, unet, scheduler) -> None:
        """Both scores are read at the same x_t and text embeddings: the models must share those."""
        name = self.cfg.pretrained_model_name_or_path_lora
        if unet.config.cross_attention_dim != self.unet.config.cross_attention_dim:
            raise ConfigError(
                f"{LORA_MODEL_KEY}='{name}' takes {unet.config.cross_attention_dim}-d text embeddings, the "
                f"pretrained model {self.unet.config.cross_attention_dim}-d: use models of the same family "
                "(e.g. stable-diffusion-2-1 with stable-diffusion-2-1-base)."
            )
        same_schedule = scheduler.config.num_train_timesteps == self.num_train_timesteps and torch.allclose(
            scheduler.alphas_cumprod.float(), self.scheduler.alphas_cumprod.float(), atol=1e-6
        )
        if not same_schedule:
            raise ConfigError(
                f"{LORA_MODEL_KEY}='{name}' has a different noise schedule from "
                "system.guidance.pretrained_model_name_or_path: VSD compares their scores at the same x_t."
            )
        if scheduler.config.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
            raise ConfigError(
                f"{LORA_MODEL_KEY}='{name}' predicts '{scheduler.config.prediction_type}'; "
                f"VSD supports {', '.join(PREDICTION_TYPES)}."
            )

    def _add_lora(self, unet) -> None:
        """A peft LoRA adapter on the attention projections; its A/B matrices (fp32) are registered."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig
        from peft.tuners.lora import LoraLayer

        rank = self.cfg.lora_rank
        alpha = rank if self.cfg.lora_alpha is None else self.cfg.lora_alpha
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights="gaussian",  # A ~ N(0, 1/r), B = 0: the old LoRALinearLayer's init
            target_modules=list(self.cfg.lora_target_modules),
        )
        try:
            unet.add_adapter(config, adapter_name=ADAPTER_NAME)
        except ValueError as e:
            raise ConfigError(
                f"system.guidance.lora_target_modules={list(self.cfg.lora_target_modules)} cannot take a LoRA: "
                f"{' '.join(str(e).split())[:300]}"
            ) from None
        cast_training_params(unet, torch.float32)  # fp16 weights, fp32 adapter (diffusers' LoRA recipe)
        layers = {
            _state_key(path): nn.ModuleDict({"lora_A": m.lora_A[ADAPTER_NAME], "lora_B": m.lora_B[ADAPTER_NAME]})
            for path, m in unet.named_modules()
            if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A
        }
        self.lora_layers = nn.ModuleDict(layers)

    def _add_camera_embedding(self, unet) -> None:
        """``TimestepEmbedding(16, time_embed_dim)`` (fp32, trained) as the LoRA UNet's class embedding:
        diffusers adds ``class_embedding(class_labels)`` to the time embedding. A separate estimator UNet that
        already has one of 16 inputs (saved with ``class_embed_type="projection"``, e.g. a toy world's pretrained
        ``estimator_unet/``) keeps it and trains it further; any other class embedding is refused."""
        from diffusers.models.embeddings import TimestepEmbedding

        existing = getattr(unet, "class_embedding", None)
        if existing is not None:
            takes_camera = isinstance(existing, TimestepEmbedding) and existing.linear_1.in_features == 16
            if not takes_camera or self.single_model:
                why = ("its camera embedding would be switched off for the pretrained score: load it as a separate "
                       "estimator (lora_unet_subfolder or another pretrained_model_name_or_path_lora)"
                       if takes_camera else "VSD needs a UNet without one, or with a 16-input camera embedding")
                raise ConfigError(
                    f"{LORA_MODEL_KEY}='{self.cfg.pretrained_model_name_or_path_lora}' already has a class "
                    f"embedding; {why}."
                )
            self.camera_embedding = existing.to(device=self.device, dtype=torch.float32).train().requires_grad_(True)
            return
        time_embed_dim = unet.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(16, time_embed_dim).to(self.device)
        unet.class_embedding = self.camera_embedding

    # ---- the two UNets ----
    @property
    def unet_lora(self):
        return self.lora_models.unet

    @property
    def single_model(self) -> bool:
        return self.lora_models.single_model

    @contextmanager
    def pretrained_unet(self):
        """The pretrained score's UNet. In single-model mode the shared UNet's adapters are disabled
        and its camera embedding detached for the duration (restored after, even on errors)."""
        unet = self.unet
        if not self.single_model:
            yield unet
            return
        unet.disable_adapters()
        unet.class_embedding = None
        try:
            yield unet
        finally:
            unet.class_embedding = self.camera_embedding
            unet.enable_adapters()

    def lora_model_output(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text_embeddings: torch.Tensor,
        camera: torch.Tensor,
        scale_loss: bool = False,
    ) -> torch.Tensor:
        """The LoRA UNet's raw output (noise or velocity, per its scheduler) under ``camera`` [B,16].
        ``scale_loss``: the LoRA loss's call, with the loss scale around the UNet (a no-op in fp32);
        the output's value is the same, only the trained parameters' gradients are protected."""
        # a fully trained estimator is kept in fp32; a LoRA runs in the base UNet's dtype
        dtype = torch.float32 if self.cfg.train_full_estimator else self.weights_dtype
        args = (latents.to(dtype), t.to(latents.device))
        kwargs = dict(
            encoder_hidden_states=text_embeddings.to(dtype),
            class_labels=camera.to(self.camera_embedding.linear_1.weight.dtype),
        )

        def output(result):
            return result.sample.to(latents.dtype)

        if scale_loss:
            return self.lora_loss_scale.call(self.unet_lora, self.lora_trainables, args, kwargs, output)
        return output(self.unet_lora(*args, **kwargs))

    def lora_eps(
        self, latents: torch.Tensor, t: torch.Tensor, text_embeddings: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        """The LoRA's noise prediction (v-prediction converted: ``eps = sigma_t x_t + alpha_t v``)."""
        out = self.lora_model_output(latents, t, text_embeddings, camera)
        if self.lora_prediction_type == "v_prediction":
            abar = self.alphas_cumprod_lora.to(t.device)[t].view(-1, 1, 1, 1).to(latents.dtype)
            out = (1 - abar) ** 0.5 * latents + abar**0.5 * out
        return out

    def lora_score(
        self, latents_noisy: torch.Tensor, t: torch.Tensor, text_cond: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        """``eps_free + s_lora (eps_cam - eps_free)``: CFG over the camera (the null camera is a zero
        vector through the learned embedding); the text is the conditional prompt in both halves."""
        s = self.guidance_scale_lora
        null = torch.zeros_like(camera)
        if s == 1.0:
            return self.lora_eps(latents_noisy, t, text_cond, camera)
        if s == 0.0:
            return self.lora_eps(latents_noisy, t, text_cond, null)
        eps = self.lora_eps(
            torch.cat([latents_noisy] * 2), torch.cat([t] * 2), torch.cat([text_cond] * 2), torch.cat([camera, null])
        )
        eps_cam, eps_free = eps.chunk(2)
        return self.classifier_free_guidance(eps_cam, eps_free, s)

    def camera_condition(self, mvp_mtx: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
        """The camera as 16 numbers per view: ``c2w`` (extrinsics) or ``mvp_mtx``, flattened."""
        camera = c2w if self.cfg.camera_condition_type == "extrinsics" else mvp_mtx
        return camera.reshape(camera.shape[0], -1).to(device=self.device, dtype=torch.float32)

    # ---- the LoRA's own training ----
    def lora_loss(
        self,
        latents: torch.Tensor,
        text_cond: torch.Tensor,
        camera: torch.Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Denoising loss of the LoRA on the detached latents: ``t ~ U[0, T)`` (``lora_n_timestamp_samples``
        per view), target = noise (epsilon) or velocity (v-prediction); with ``lora_cfg_training`` each
        view's camera is zeroed with probability 0.1 so the null camera is learned too."""
        n = self.cfg.lora_n_timestamp_samples
        latents = latents.detach().repeat(n, 1, 1, 1)
        text_cond = text_cond.repeat(n, 1, 1)
        camera = camera.repeat(n, 1)
        count = latents.shape[0]
        t = torch.randint(
            0, self.num_train_timesteps_lora, [count], dtype=torch.long, device=latents.device, generator=generator
        )
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        scheduler = self.lora_models.scheduler
        noisy = scheduler.add_noise(latents, noise, t)
        target = noise if self.lora_prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
        if self.cfg.lora_cfg_training:
            keep = torch.rand([count, 1], generator=generator, device=latents.device) >= CAMERA_DROP_PROB
            camera = camera * keep.to(camera.dtype)
        pred = self.lora_model_output(noisy, t, text_cond, camera, scale_loss=True)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")

    # ---- the guidance ----
    def forward(
        self,
        rgb: torch.Tensor,
        prompt_utils,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        mvp_mtx: torch.Tensor,
        c2w: torch.Tensor,
        rgb_as_latents: bool = False,
        noise: Optional[torch.Tensor] = None,
        t: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
        **kwargs,
    ):
        """``rgb`` [B,H,W,3] in [0,1]; ``mvp_mtx``, ``c2w`` [B,4,4]. ``noise`` and ``t`` fix the VSD
        sample; ``generator`` (on the guidance's device) draws everything else that is random here
        (t and noise when not given, and the LoRA loss's t, noise and camera drops)."""
        batch_size = rgb.shape[0]
        latents = self.prepare_latents(rgb, rgb_as_latents)
        camera = self.camera_condition(mvp_mtx, c2w)
        # the LoRA sees the conditional, view-independent prompt
        text_cond = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, view_dependent_prompting=False
        )[:batch_size]
        if t is None:
            t = self.sample_timesteps(batch_size, generator)
        with torch.no_grad():
            if noise is None:
                noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            latents_noisy = self.scheduler.add_noise(latents, noise, t)
            with self.pretrained_unet():
                eps_pretrained = self.predict_noise(
                    latents_noisy, t, prompt_utils, elevation, azimuth, camera_distances,
                    guidance_scale=self.cfg.guidance_scale, control_depth=kwargs.get("control_depth"),
                )["eps"]
            eps_estimate = self.lora_score(latents_noisy, t, text_cond, camera)
        grad = self.clean_gradient(self.weight(t) * (eps_pretrained - eps_estimate))
        out = {
            "loss_vsd": self.gradient_as_loss(latents, grad),
            "loss_lora": self.lora_loss(latents, text_cond, camera, generator),  # unscaled: the true loss
            "grad_norm": grad.norm(),
            "min_step": self.min_step,
            "max_step": self.max_step,
            "timesteps": t,
            # the knob in effect, logged so a command-line override shows in the run's metrics
            "guidance_scale_lora": self.guidance_scale_lora,
        }
        if self.lora_loss_scale.enabled:
            out["lora_loss_scale"] = self.lora_loss_scale.scale.clone()  # S before this step's backward
        return out
