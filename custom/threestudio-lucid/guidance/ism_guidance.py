"""``lucid-ism-guidance``: Interval Score Matching (LucidDreamer, Liang et al., CVPR 2024).

SDS pulls every render towards the prediction from a freshly noised x_t, whose target (the sampled
noise) is inconsistent with the render and over-smooths. ISM instead builds x_t deterministically
from the render by DDIM inversion and matches the score over an interval [s, t]:

1. index table: DDIM timesteps at full resolution, ascending (``ddim_timestep_table``);
2. warm-up: with r = 1 - min(step / warmup_iter, 1), the interval is
   ``dT = int(delta_t + r (delta_t_start - delta_t))`` (annealing_intervals; with Perp-Neg the annealed
   part is rounded up, ``int(delta_t + ceil(r (delta_t_start - delta_t)))``, as in LucidDreamer's
   ``train_step_perpneg``) and the upper index
   bound grows by ``int(warmup_step * r)``, ``warmup_step = N (max_t_range - max_step_percent)``;
3. one index i_t ~ U[min_step, max_step + int(warmup_step r)) for the whole batch,
   i_s = max(i_t - dT, 0); t = T[i_t], s = T[i_s];
4. noise eps (the guidance's own generator) + 0.1 * randn(1,4,1,1) (offset noise shared by the batch);
5. x_s: from z0 noised to T[max(i_s - xs_delta_t * xs_inv_steps, 0)] (about t = 1 with the defaults),
   up to ``xs_inv_steps`` DDIM inversion steps of ``xs_delta_t`` indices towards i_s;
6. x_t: one DDIM inversion step from s to t with e_s = eps(x_s, s, c_inv);
7. target = e_s (the paper's eps(x_s, s, null)); prediction at x_t:
   ``eps_neg + guidance_scale (eps(x_t, t, y_view) - eps_neg)`` (Perp-Neg optional);
8. ``grad = lambda_guidance * w(t) (pred - target)``, ``w(t) = sqrt((1 - abar_t) / abar_t)``, injected
   through the VAE encoder with the shared loss trick (no 1/B: LucidDreamer's SpecifyGradient).

Inversion CFG: ``denoise_guidance_scale <= 1`` runs the UNet on the inversion prompt only; ``> 1``
uses ``eps(c_inv) + g (eps(neg) - eps(c_inv))`` ("reverse" CFG). ``sds: true`` replaces steps 5-7's
target by plain SDS (x_t = forward-noised z0, target = eps) with the same weighting.

Differences from the official code, each on purpose: a zero-length inversion step (reached when
i_s equals the start index) is skipped instead of spending a UNet call on an identity move; the offset
noise also comes from the guidance's generator (the original uses the global one), so ``noise_seed``
fixes the whole noise.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ..compat import register
from .diffusion_base import GUIDANCE_PREFIX, StableDiffusionGuidanceBase, num_train_timesteps_of
from .option_ranges import check_range, schedule_values


@register("lucid-ism-guidance")
class ISMGuidance(StableDiffusionGuidanceBase):
    @dataclass
    class Config(StableDiffusionGuidanceBase.Config):
        guidance_scale: float = 7.5
        min_step_percent: float = 0.02  # LucidDreamer t_range[0]
        max_step_percent: float = 0.5  # t_range[1], the bound after warm-up
        max_t_range: float = 0.98  # upper bound at the start of warm-up
        warmup_iter: int = 1500
        delta_t: int = 80
        delta_t_start: int = 100
        annealing_intervals: bool = True
        xs_delta_t: int = 200
        xs_inv_steps: int = 5
        xs_eta: float = 0.0
        denoise_guidance_scale: float = 1.0
        inverse_text: str = ""  # prompt used inside the inversion ("" = the null prompt)
        lambda_guidance: float = 1.0  # gradient scale (the official configs use 0.1)
        offset_noise_scale: float = 0.1
        sds: bool = False
        fix_noise: bool = False
        noise_seed: int = 0

    cfg: Config

    def validate_config(self) -> None:
        super().validate_config()
        cfg, key, defaults = self.cfg, GUIDANCE_PREFIX, self.Config
        # intervals are counted in indices of the N-entry DDIM table (N = the model's training
        # timesteps, 1000 for SD): an interval of 0 makes s = t, one of N or more spans the whole table
        n = num_train_timesteps_of(cfg.pretrained_model_name_or_path)
        for name, why in (
            ("delta_t", "the ISM interval t - s, in timestep indices"),
            ("delta_t_start", "the interval at the start of warm-up, annealed to delta_t"),
            ("xs_delta_t", "the DDIM inversion step from 0 towards s, in timestep indices"),
        ):
            check_range(key + name, getattr(cfg, name), 1, n - 1, integer=True,
                        why=f"{why}; the model has {n} timesteps", example=getattr(defaults, name))
        # ISM reaches x_s by DDIM inversion from ~t = 1 (LucidDreamer's xs_inv_steps, 5); LucidDreamer
        # also takes 0 (x_s is then the noised latent at s)
        check_range(key + "xs_inv_steps", cfg.xs_inv_steps, 0, integer=True,
                    why="DDIM inversion steps towards s", example=defaults.xs_inv_steps)
        # DDIM's eta: 0 deterministic, 1 DDPM-like
        check_range(key + "xs_eta", cfg.xs_eta, 0.0, 1.0, why="DDIM eta inside the inversion", example=defaults.xs_eta)
        # a CFG scale inside the inversion (<= 1: the inversion prompt alone, > 1: reverse CFG)
        check_range(key + "denoise_guidance_scale", cfg.denoise_guidance_scale, 0.0,
                    why="CFG scale inside the inversion", example=defaults.denoise_guidance_scale)
        # the gradient's scale: negative ascends the score, 0 trains nothing (system.loss.lambda_ism=0 turns ISM off)
        check_range(key + "lambda_guidance", cfg.lambda_guidance, 0.0, low_open=True,
                    why="scale of the ISM gradient; LucidDreamer's configs use 0.1", example=0.1)
        # a standard deviation
        check_range(key + "offset_noise_scale", cfg.offset_noise_scale, 0.0,
                    why="std of the offset noise shared by the batch", example=defaults.offset_noise_scale)
        check_range(key + "warmup_iter", cfg.warmup_iter, 0, integer=True,
                    why="warm-up length in steps; 0 = no warm-up", example=defaults.warmup_iter)
        # the upper timestep bound at the start of warm-up, shrinking to max_step_percent
        # (LucidDreamer: max_t_range 0.98 >= t_range[1] 0.5)
        top = max(schedule_values(key + "max_step_percent", cfg.max_step_percent))
        check_range(key + "max_t_range", cfg.max_t_range, top, 1.0,
                    why=f"the upper bound at the start of warm-up, shrinking to max_step_percent={top:g}",
                    example=defaults.max_t_range)

    def configure(self) -> None:
        super().configure()
        self.timestep_table = self.ddim_timestep_table()
        # the same table as host ints: DDIM steps index alphas_cumprod by int, and int() of a device
        # tensor would synchronise host and device at every inversion step
        self.timestep_values = [int(t) for t in self.timestep_table.tolist()]
        self.noise_generator = torch.Generator(device=self.device)
        self.noise_generator.manual_seed(self.cfg.noise_seed)
        self._fixed_noise: Optional[torch.Tensor] = None
        self.warmup_rate = 1.0
        self.update_step(0, 0)

    def extra_prompts(self) -> Dict[str, str]:
        return {"inverse_text": self.cfg.inverse_text}

    # ---- schedule ----
    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        super().update_step(epoch, global_step, on_load_weights)
        self.warmup_rate = 1.0 - min(global_step / max(self.cfg.warmup_iter, 1), 1.0)

    @property
    def warmup_step(self) -> int:
        return int(self.num_train_timesteps * (self.cfg.max_t_range - self.max_step / self.num_train_timesteps))

    @property
    def current_delta_t(self) -> int:
        return self.annealed_delta_t(perp_neg=False)

    def annealed_delta_t(self, perp_neg: bool) -> int:
        """The interval length at the current step. LucidDreamer rounds the annealed part down in
        ``train_step`` and up in ``train_step_perpneg``; each path is kept as the original has it."""
        if not self.cfg.annealing_intervals:
            return self.cfg.delta_t
        annealed = self.warmup_rate * (self.cfg.delta_t_start - self.cfg.delta_t)
        return int(self.cfg.delta_t + (math.ceil(annealed) if perp_neg else annealed))

    @property
    def index_bounds(self) -> Tuple[int, int]:
        """[low, high) of the timestep index i_t at the current step."""
        high = self.max_step + int(self.warmup_step * self.warmup_rate)
        return self.min_step, min(max(high, self.min_step + 1), len(self.timestep_table) - 1)

    def sample_index(self) -> int:
        # the one host-device synchronisation of an ISM step (on a GPU): the index decides how many
        # inversion steps the Python loop runs; drawn on the noise generator's device to keep its stream
        low, high = self.index_bounds
        return int(torch.randint(low, high, (1,), generator=self.noise_generator, device=self.device).item())

    # ---- noise ----
    def sample_noise(self, shape) -> torch.Tensor:
        if self.cfg.fix_noise and self._fixed_noise is not None and self._fixed_noise.shape == torch.Size(shape):
            return self._fixed_noise
        g = self.noise_generator
        noise = torch.randn(shape, generator=g, device=self.device)
        noise = noise + self.cfg.offset_noise_scale * torch.randn((1, shape[1], 1, 1), generator=g, device=self.device)
        if self.cfg.fix_noise:
            self._fixed_noise = noise
        return noise

    # ---- inversion ----
    def inversion_eps(self, x: torch.Tensor, t: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """UNet prediction used inside the inversion: the inversion prompt, or "reverse" CFG with the
        negative prompt when ``denoise_guidance_scale > 1``."""
        batch_size = x.shape[0]
        inverse = self.extra_text_embeddings["inverse_text"].expand(batch_size, -1, -1)
        tt = t.reshape(1).expand(batch_size)
        g = self.cfg.denoise_guidance_scale
        if g <= 1.0:
            return self.unet_eps(x, tt, inverse)
        eps_neg, eps_inv = self.unet_eps(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, inverse])).chunk(2)
        return eps_inv + g * (eps_neg - eps_inv)

    def invert(
        self, x: torch.Tensor, i_from: int, i_to: int, step: int, max_steps: int, uncond: torch.Tensor
    ) -> Tuple[torch.Tensor, List[Tuple[int, torch.Tensor]]]:
        """Up to ``max_steps`` DDIM inversion steps of ``step`` indices from index ``i_from`` towards
        ``i_to``. Returns the final latent and the (index, eps) predictions that drove each step."""
        preds = []
        cur = i_from
        for _ in range(max_steps):
            if cur >= i_to:
                break
            nxt = min(cur + step, i_to)
            eps = self.inversion_eps(x, self.timestep_table[cur], uncond)
            preds.append((cur, eps))
            x = self.ddim_step(x, eps, self.timestep_values[cur], self.timestep_values[nxt], eta=self.cfg.xs_eta,
                               generator=self.noise_generator)
            cur = nxt
        return x, preds

    def forward(
        self,
        rgb: torch.Tensor,
        prompt_utils,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        rgb_as_latents: bool = False,
        noise: Optional[torch.Tensor] = None,
        t_index: Optional[int] = None,
        **kwargs,
    ):
        """``rgb`` [B,H,W,3] in [0,1] (the system passes depth maps here on depth-as-latent steps).
        ``noise`` and ``t_index`` (the index i_t into the timestep table) may be given for tests."""
        batch_size = rgb.shape[0]
        latents = self.prepare_latents(rgb, rgb_as_latents)
        i_t = self.sample_index() if t_index is None else int(t_index)
        delta = self.annealed_delta_t(perp_neg=bool(prompt_utils.use_perp_neg))
        i_s = max(i_t - delta, 0)
        t, s = self.timestep_table[i_t], self.timestep_table[i_s]
        if noise is None:
            noise = self.sample_noise(latents.shape).to(latents)

        with torch.no_grad():
            uncond = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, False)[batch_size:]
            if self.cfg.sds:
                latents_noisy = self.scheduler.add_noise(latents, noise, t.reshape(1).expand(batch_size))
                target = noise
                n_inversion_steps = 0
            else:
                start = max(i_s - self.cfg.xs_delta_t * self.cfg.xs_inv_steps, 0)
                x_start = self.scheduler.add_noise(latents, noise, self.timestep_table[start].reshape(1).expand(batch_size))
                x_s, _ = self.invert(x_start, start, i_s, self.cfg.xs_delta_t, self.cfg.xs_inv_steps, uncond)
                e_s = self.inversion_eps(x_s, s, uncond)
                latents_noisy = self.ddim_step(x_s, e_s, self.timestep_values[i_s], self.timestep_values[i_t], eta=0.0)
                target = e_s
                n_inversion_steps = math.ceil((i_s - start) / self.cfg.xs_delta_t) if i_s > start else 0
            pred = self.predict_noise(
                latents_noisy,
                t.reshape(1).expand(batch_size),
                prompt_utils,
                elevation,
                azimuth,
                camera_distances,
                guidance_scale=self.cfg.guidance_scale,
                control_depth=kwargs.get("control_depth"),  # the ControlNet acts at x_t only, as LucidDreamer's
            )["eps"]
            abar_t = self.alphas_cumprod[t]
            w = ((1 - abar_t) / abar_t).sqrt()
        grad = self.clean_gradient(self.cfg.lambda_guidance * w * (pred - target))
        low, high = self.index_bounds
        return {
            "loss_ism": self.gradient_as_loss(latents, grad, batch_mean=False),
            "grad_norm": grad.norm(),
            "timestep": self.timestep_values[i_t],
            "timestep_s": self.timestep_values[i_s],
            "delta_t": delta,
            "min_step": low,
            "max_step": high,
            "inversion_steps": n_inversion_steps,
        }
