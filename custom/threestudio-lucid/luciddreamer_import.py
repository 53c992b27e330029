"""``lucid-import-luciddreamer CONFIG.yaml [-o OUT.yaml]``: a LucidDreamer config as a plugin config.

LucidDreamer (EnVision-Research/LucidDreamer) reads a YAML file with five parameter groups
(``ModelParams``, ``PipelineParams``, ``GuidanceParams``, ``GenerateCamParams``,
``OptimizationParams``) plus ``port``, ``save_video``, ``seed`` and ``device`` at the top level; a key a
file leaves out takes the default of its ``arguments/__init__.py``. The converter takes every key of
the five groups with those defaults, maps each onto the plugin (``lucid-ism-guidance``, the Gaussian
system, the progressive camera data module) over the base recipe ``configs/lucid-ism.yaml``, and writes
one complete config that threestudio's ``launch.py`` and ``lucid-launch`` run as it is (threestudio's
loader has no ``extends:``, so a config cannot be a diff of another).

What it does with each key (the table in docs/luciddreamer.md is :func:`mapping_table`):

- mapped: written to its plugin key (some keys set several, e.g. ``densify_from_iter`` opens both the
  densify and the prune window, as LucidDreamer's ``densify_and_prune`` does both);
- no effect: LucidDreamer itself never reads it (``accum``, ``ddim_inv``, ``hf_key``, ...);
- not needed: it configures LucidDreamer's process (device, viewer port, output folder), which
  threestudio's launcher does its own way;
- not supported: LucidDreamer does something the plugin does not. A value at which LucidDreamer
  behaves as the plugin does (e.g. ``SSAA: 1``) converts silently; any other value gives a warning.

A key of the file that is not mapped gets one line in the output's header saying which case it is and
why; so does a LucidDreamer default the plugin does not reproduce. A key LucidDreamer does not know is
an error (LucidDreamer stores any key without complaint, so a typo there silently trains with the
default; here it is caught): one line with the closest known key, or a warning with
``--allow-unknown``. Every error is one line naming the file, the key and the fix.

Paths: LucidDreamer resolves relative paths (``LoRA_path``, ``textual_inversion_path``, a single-file
``model_key``, ``pretrained_model_path``) against the folder its ``train.py`` runs in, its checkout.
``--luciddreamer-root DIR`` makes them absolute; without it such a key becomes ``???`` on the guidance (a
value the run must be given on the command line; the prompt processor reads the guidance's) and the
header says which file LucidDreamer meant.
"""
import argparse
import copy
import difflib
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .atomic_files import write_text
from .errors import ConfigError, StorageError

BASE_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "lucid-ism.yaml")
TOP = "top level"
SECTIONS = ("ModelParams", "PipelineParams", "GuidanceParams", "GenerateCamParams", "OptimizationParams")

MAPPED, NO_EFFECT, NOT_NEEDED, NOT_SUPPORTED = "mapped", "no effect", "not needed", "not supported"

# LucidDreamer's init_shape -> the plugin's initialiser (point-e: see _map_init)
INIT_SHAPES = {"sphere": "sphere_solid", "box": "box", "pointe": "point_e"}
POINT_E_INSTALL = "pip install git+https://github.com/openai/point-e.git"
# Point-E's text pipeline returns 4096 points; LucidDreamer spreads each into init_num_pts // 5000 copies
POINT_E_POINTS = 4096
# the largest index of the 1000-entry timestep table LucidDreamer and Stable Diffusion use
LAST_TIMESTEP_INDEX = 999


@dataclass(frozen=True)
class LDKey:
    """One LucidDreamer option: where it lives, its default (``arguments/__init__.py``; ``train.py`` for
    the top level), what the converter does with it (``kind``), the plugin key(s) it becomes (``target``,
    for the table) and why (``note``). ``neutral``: for a not-supported key, the values at which
    LucidDreamer behaves as the plugin does."""

    section: str
    name: str
    default: Any
    kind: str
    target: str = ""
    note: str = ""
    neutral: Tuple = ()
    affects_training: bool = False

    @property
    def value_type(self) -> str:
        if self.name in VALUE_TYPES:
            return VALUE_TYPES[self.name]
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "int"
        if isinstance(d, float):
            return "float"
        if isinstance(d, list):
            return "pair"
        return "str" if isinstance(d, str) else "any"

    @property
    def where(self) -> str:
        return self.name if self.section == TOP else f"{self.section}.{self.name}"


def _k(section, name, default, kind, target="", note="", neutral=(), affects_training=False):
    return LDKey(section, name, default, kind, target, note, tuple(neutral), affects_training)


# value types that the default alone does not tell (int? / str?: or null)
VALUE_TYPES = {
    "model_key": "str?", "base_model_key": "str?", "controlnet_model_key": "str?", "LoRA_path": "str?",
    "pretrained_model_path": "str?", "textual_inversion_path": "paths?", "num_train_timesteps": "int?",
    "xs_delta_t": "int?", "xs_inv_steps": "int?", "hf_key": "any", "opt_path": "any",
    "default_polar": "number", "default_azimuth": "number", "angle_overhead": "number", "angle_front": "number",
    "uniform_sphere_rate": "number",
}


G, M, P, C, O = SECTIONS[2], SECTIONS[0], SECTIONS[1], SECTIONS[3], SECTIONS[4]
GEO, DATA, GUI, PP, REN, BG = ("system.geometry", "data", "system.guidance", "system.prompt_processor",
                               "system.renderer", "system.background")
CONTROLNET_NOTE = ("LucidDreamer never loads its ControlNet (train.py builds StableDiffusion with "
                   "use_control_net=False), so its run would stop at use_control_net_iter; the plugin applies it "
                   "as intended there, on the prompted UNet call of the steps it draws")

KEYS: Tuple[LDKey, ...] = (
    # ---- top level (train.py) ----
    _k(TOP, "port", 6009, NOT_NEEDED, note="the socket of LucidDreamer's desktop viewer (network_gui); threestudio has no viewer server"),
    _k(TOP, "save_video", True, NOT_SUPPORTED, "-",
       "LucidDreamer renders 120-view orbit videos at each test iteration (1, 20%, ..., 100% of the run); the plugin writes "
       "its test orbit video (data.n_test_views views) once, after training", neutral=(False,)),
    _k(TOP, "seed", 0, MAPPED, "`seed`"),
    _k(TOP, "device", "cuda", NOT_NEEDED, note="threestudio's launch.py picks the device (--gpu)"),
    # ---- ModelParams ----
    _k(M, "sh_degree", 0, MAPPED, f"`{GEO}.sh_degree`; `{GEO}.sh_degree_increase_interval: 500`",
       "LucidDreamer raises the active SH degree by one every 500 iterations"),
    _k(M, "source_path", "", NO_EFFECT, note="3DGS's scene folder: LucidDreamer makes its own cameras and never reads it"),
    _k(M, "model_path", "", NOT_SUPPORTED, "-",
       "LucidDreamer's output folder (default output/<workspace>); threestudio writes to exp_root_dir/name/tag@timestamp: "
       "set exp_root_dir", neutral=("",)),
    _k(M, "pretrained_model_path", None, MAPPED, f"`{GEO}.init_type: ply`, `{GEO}.init_ply_path`",
       "a 3DGS PLY to start from (relative to LucidDreamer's checkout)"),
    _k(M, "images", "images", NO_EFFECT, note="3DGS's image folder: never read by LucidDreamer"),
    _k(M, "workspace", "debug", MAPPED, "`name`", "LucidDreamer's run folder output/<workspace>; threestudio's is exp_root_dir/name/tag@timestamp"),
    _k(M, "batch", 10, NOT_SUPPORTED, "-",
       "LucidDreamer draws `batch` random cameras at a time that share one fovy and pops them in random order; the plugin "
       "draws every view's fovy on its own (the same distribution per view)", neutral=(1,), affects_training=True),
    _k(M, "resolution", -1, NO_EFFECT, note="3DGS's image downscale: LucidDreamer renders at image_w x image_h"),
    _k(M, "white_background", True, MAPPED, f"`{BG}.color`: [1, 1, 1] or [0, 0, 0]",
       "LucidDreamer reads only the spelling _white_background from a file; both spellings are mapped"),
    _k(M, "data_device", "cuda", NOT_NEEDED, note="threestudio's launch.py picks the device (--gpu)"),
    _k(M, "eval", False, NO_EFFECT, note="3DGS's train/test split: never read by LucidDreamer"),
    _k(M, "opt_path", None, NOT_NEEDED, note="train.py sets it to --opt and copies that file; threestudio keeps configs/raw.yaml and parsed.yaml"),
    _k(M, "sh_deg_aug_ratio", 0.1, MAPPED, f"`{REN}.sh_degree_zero_prob`"),
    _k(M, "bg_aug_ratio", 0.5, MAPPED,
       f"`{BG}.random_aug: r > 0`, `{BG}.random_aug_prob: r/2`, `{REN}.bg_inversion_prob: (r/2)/(1-r/2)` (white background; 0 on black)",
       "LucidDreamer replaces a view's background with probability r, half the time by a random colour and half by black; "
       "the mapping gives each view the same probabilities (random r/2, black r/2, white 1-r), though the random-colour "
       "draw is made once per batch"),
    _k(M, "shs_aug_ratio", 0.0, NOT_SUPPORTED, "-",
       "LucidDreamer's multiplicative noise on the SH coefficients; the plugin has no such augmentation", neutral=(0, 0.0),
       affects_training=True),
    _k(M, "scale_aug_ratio", 1.0, MAPPED, f"`{REN}.scale_noise_prob`", "the same noise: N(0, (sqrt(0.2)/4 scale)^2), clamped at 0"),
    # ---- PipelineParams ----
    _k(P, "convert_SHs_python", False, NOT_SUPPORTED, "-",
       "true colours each Gaussian by a sigmoid of its raw SH coefficients; the plugin always evaluates the SH (as false does)",
       neutral=(False,), affects_training=True),
    _k(P, "compute_cov3D_python", False, NO_EFFECT, note="the covariance is the same computed in Python or in CUDA"),
    _k(P, "debug", False, NOT_SUPPORTED, "-", "a debugging switch of the CUDA rasterizer (dumps its state on an error)", neutral=(False,)),
    # ---- GuidanceParams ----
    _k(G, "guidance", "SD", MAPPED, "`system.guidance_type: lucid-ism-guidance`", "LucidDreamer accepts only SD too"),
    _k(G, "g_device", "cuda", NOT_NEEDED, note="threestudio's launch.py picks the device (--gpu)"),
    _k(G, "model_key", None, MAPPED, f"`{GUI}.pretrained_model_name_or_path`, `{PP}.pretrained_model_name_or_path`",
       "a hub id or folder; with is_safe_tensor a single checkpoint file"),
    _k(G, "is_safe_tensor", False, MAPPED,
       f"true: `{PP}` type `lucid-stable-diffusion-prompt-processor`, model_key as `pretrained_model_name_or_path` plus `base_model` on both",
       "a whole fine-tuned SD in one .safetensors file"),
    _k(G, "base_model_key", None, MAPPED, f"`{GUI}.base_model`, `{PP}.base_model` (with is_safe_tensor)",
       "LucidDreamer falls back to 'stabilityai/stable-diffusion-v1-5'; no effect without is_safe_tensor"),
    _k(G, "controlnet_model_key", None, MAPPED,
       f"`{GUI}.controlnet_model_name_or_path` (when use_control_net_iter < iterations)", CONTROLNET_NOTE),
    _k(G, "perpneg", True, MAPPED, f"`{PP}.use_perp_neg`"),
    _k(G, "negative_w", -2.0, MAPPED, f"`{PP}.perp_neg_f_fs: [-w, front_decay, 0]`, `perp_neg_f_sf: [-w, side_decay, 0]`, "
       "`perp_neg_f_sb: [-w/2, side_decay, 0]`, `perp_neg_f_fsb: [0, 0, -w]` (with perpneg)",
       "LucidDreamer's Perp-Neg weights as threestudio's a*exp(-b*r)+c curves; LucidDreamer also zeroes the front weight "
       "for r > 0.8 and the side weights for r < 0.2 (front half) and r > 0.8 (back half), which the curves do not"),
    _k(G, "front_decay_factor", 2.0, MAPPED, f"`{PP}.perp_neg_f_fs[1]` (with perpneg)", "see negative_w"),
    _k(G, "side_decay_factor", 10.0, MAPPED, f"`{PP}.perp_neg_f_sf[1]`, `{PP}.perp_neg_f_sb[1]` (with perpneg)", "see negative_w"),
    _k(G, "vram_O", False, MAPPED,
       f"`{GUI}.enable_sequential_cpu_offload`, `enable_attention_slicing`, `enable_channels_last_format`",
       "LucidDreamer's vram_O also slices the VAE, which the plugin does not"),
    _k(G, "fp16", True, MAPPED, f"`{GUI}.half_precision_weights`", "fp16 weights on a GPU (the CPU always runs fp32)"),
    _k(G, "hf_key", None, NO_EFFECT, note="never read by LucidDreamer"),
    _k(G, "t_range", [0.02, 0.5], MAPPED, f"`{GUI}.min_step_percent`, `{GUI}.max_step_percent`"),
    _k(G, "max_t_range", 0.98, MAPPED, f"`{GUI}.max_t_range`"),
    _k(G, "scheduler_type", "DDIM", NO_EFFECT, note="never read: LucidDreamer always uses DDIM, as the plugin's ISM does"),
    _k(G, "num_train_timesteps", None, NOT_SUPPORTED, "-",
       "the size of LucidDreamer's timestep table; the plugin always uses the model's scheduler's (1000 for SD)",
       neutral=(None, 1000), affects_training=True),
    _k(G, "sds", False, MAPPED, f"`{GUI}.sds`"),
    _k(G, "fix_noise", False, MAPPED, f"`{GUI}.fix_noise`"),
    _k(G, "noise_seed", 0, MAPPED, f"`{GUI}.noise_seed`"),
    _k(G, "ddim_inv", False, NO_EFFECT, note="passed to StableDiffusion but never read: ISM's inversion runs whenever sds is false"),
    _k(G, "delta_t", 80, MAPPED, f"`{GUI}.delta_t`"),
    _k(G, "delta_t_start", 100, MAPPED, f"`{GUI}.delta_t_start`"),
    _k(G, "annealing_intervals", True, MAPPED, f"`{GUI}.annealing_intervals`"),
    _k(G, "text", "", MAPPED, f"`{PP}.prompt` (empty: `???`); `{PP}.overhead_threshold: 90`",
       "LucidDreamer has no overhead prompt; without Perp-Neg it interpolates front/side/back prompts where threestudio's "
       "prompt processor picks one"),
    _k(G, "inverse_text", "", MAPPED, f"`{GUI}.inverse_text`"),
    _k(G, "textual_inversion_path", None, MAPPED,
       f"`{PP}.textual_inversion_path` (type `lucid-stable-diffusion-prompt-processor`), `{GUI}.textual_inversion_path`",
       "a path or a list of paths"),
    _k(G, "LoRA_path", None, MAPPED,
       f"`{PP}.lora_path` (type `lucid-stable-diffusion-prompt-processor`), `{GUI}.lora_path`, `lora_scale: 1.0` on both",
       "lora_diffusion's patch_pipe on UNet, text encoder and tokens at scale 1.0"),
    _k(G, "controlnet_ratio", 0.5, MAPPED,
       f"`{GUI}.controlnet_ratio: [use_control_net_iter, 0.0, controlnet_ratio, use_control_net_iter + 1]`",
       "a C() schedule: the probability that a step uses the ControlNet, 0 before use_control_net_iter"),
    _k(G, "negative", "", MAPPED, f"`{PP}.negative_prompt`"),
    _k(G, "guidance_scale", 7.5, MAPPED, f"`{GUI}.guidance_scale`"),
    _k(G, "denoise_guidance_scale", 1.0, MAPPED, f"`{GUI}.denoise_guidance_scale`"),
    _k(G, "lambda_guidance", 1.0, MAPPED, f"`{GUI}.lambda_guidance`"),
    _k(G, "xs_delta_t", 200, MAPPED, f"`{GUI}.xs_delta_t`",
       "null (LucidDreamer: the annealed interval) is not supported: it becomes delta_t, the interval after warm-up"),
    _k(G, "xs_inv_steps", 5, MAPPED, f"`{GUI}.xs_inv_steps`", "null (invert from t = 0) becomes ceil(999 / xs_delta_t), the same steps"),
    _k(G, "xs_eta", 0.0, MAPPED, f"`{GUI}.xs_eta`"),
    _k(G, "C_batch_size", 1, MAPPED, f"`{DATA}.batch_size`"),
    _k(G, "vis_interval", 100, NOT_SUPPORTED, "-",
       "LucidDreamer saves a debug grid (render, depth, alpha, x0, gradient) every vis_interval steps; the plugin saves "
       "validation renders every trainer.val_check_interval steps"),
    _k(G, "accum", False, NO_EFFECT, note="not a LucidDreamer option: train.py stores it and no code reads it"),
    # ---- GenerateCamParams ----
    _k(C, "init_shape", "sphere", MAPPED, f"`{GEO}.init_type`: sphere -> sphere_solid, box -> box (both `init_radius: 0.5`), pointe -> point_e",
       f"point_e needs point-e ({POINT_E_INSTALL}); rectangle_x, rectangle_z and scene are not supported"),
    _k(C, "init_prompt", "", MAPPED, f"`{GEO}.init_prompt` (with pointe)"),
    _k(C, "use_pointe_rgb", False, MAPPED, f"`{GEO}.init_use_source_colors` (with pointe)"),
    _k(C, "radius_range", [5.2, 5.5], MAPPED, f"`{DATA}.radius_range`"),
    _k(C, "max_radius_range", [3.5, 5.0], MAPPED, f"`{DATA}.max_radius_range`"),
    _k(C, "default_radius", 3.5, MAPPED, f"`{DATA}.default_radius`, `{GEO}.scene_extent`",
       "LucidDreamer's cameras_extent: scales the position learning rate and the densify/prune sizes"),
    _k(C, "theta_range", [45, 105], MAPPED, f"`{DATA}.polar_range`"),
    _k(C, "max_theta_range", [45, 105], MAPPED, f"`{DATA}.max_polar_range`"),
    _k(C, "phi_range", [-180, 180], MAPPED, f"`{DATA}.azimuth_range`"),
    _k(C, "max_phi_range", [-180, 180], MAPPED, f"`{DATA}.max_azimuth_range`"),
    _k(C, "fovy_range", [0.32, 0.60], MAPPED, f"`{DATA}.fovy_range`"),
    _k(C, "max_fovy_range", [0.16, 0.60], MAPPED, f"`{DATA}.max_fovy_range`"),
    _k(C, "rand_cam_gamma", 1.0, MAPPED, f"`{DATA}.rand_cam_gamma`"),
    _k(C, "angle_overhead", 30, NO_EFFECT, note="converted to radians and never used"),
    _k(C, "angle_front", 60, NO_EFFECT, note="converted to radians and never used"),
    _k(C, "render_45", True, NOT_SUPPORTED, "-",
       "LucidDreamer's 8 (16 with render_45) test views at default_polar (and 2/3 of it); the plugin's test orbit is "
       "data.n_test_views views at default_polar"),
    _k(C, "uniform_sphere_rate", 0, NOT_SUPPORTED, "-",
       "a share of cameras drawn uniformly over the upper hemisphere; the plugin has no such option", neutral=(0, 0.0),
       affects_training=True),
    _k(C, "image_w", 512, MAPPED, f"`{DATA}.width`, `{DATA}.eval_width`"),
    _k(C, "image_h", 512, MAPPED, f"`{DATA}.height`, `{DATA}.eval_height`"),
    _k(C, "SSAA", 1, NOT_SUPPORTED, "-", "supersampled training renders; the plugin renders at data.width x data.height", neutral=(1,),
       affects_training=True),
    _k(C, "init_num_pts", 100000, MAPPED, f"`{GEO}.init_num_pts` (pointe: 4096 * (n // 5000)); `{GEO}.max_num` raised to fit",
       "with pointe LucidDreamer makes n // 5000 copies of each of Point-E's 4096 points"),
    _k(C, "default_polar", 90, MAPPED, f"`{DATA}.default_polar`"),
    _k(C, "default_azimuth", 0, NOT_SUPPORTED, "-",
       "LucidDreamer measures view-dependent prompts from default_azimuth; the plugin's front is azimuth 0", neutral=(0, 0.0),
       affects_training=True),
    _k(C, "default_fovy", 0.55, MAPPED, f"`{DATA}.default_fovy`"),
    _k(C, "jitter_pose", True, MAPPED, f"`{DATA}.jitter_pose`"),
    _k(C, "jitter_center", 0.05, MAPPED, f"`{DATA}.jitter_center`"),
    _k(C, "jitter_target", 0.05, MAPPED, f"`{DATA}.jitter_target`"),
    _k(C, "jitter_up", 0.01, MAPPED, f"`{DATA}.jitter_up`"),
    _k(C, "device", "cuda", NOT_NEEDED, note="threestudio's launch.py picks the device (--gpu)"),
    # ---- OptimizationParams ----
    _k(O, "iterations", 5000, MAPPED, "`trainer.max_steps`; the last step of every learning-rate schedule"),
    _k(O, "position_lr_init", 0.00016, MAPPED, f"`{GEO}.position_lr: [0, init, final, iterations]`",
       "times scene_extent (default_radius), as LucidDreamer's spatial_lr_scale; log-linear"),
    _k(O, "position_lr_final", 0.0000016, MAPPED, f"`{GEO}.position_lr[2]`"),
    _k(O, "position_lr_delay_mult", 0.01, NO_EFFECT, note="LucidDreamer's schedules have no delay steps (lr_delay_steps 0), so it never applies"),
    _k(O, "position_lr_max_steps", 30000, NO_EFFECT, note="never read: LucidDreamer's schedules end at iterations"),
    _k(O, "feature_lr", 0.005, MAPPED, f"`{GEO}.feature_lr: [0, feature_lr, feature_lr_final, iterations]`", "f_rest at 1/20"),
    _k(O, "feature_lr_final", 0.003, MAPPED, f"`{GEO}.feature_lr[2]`"),
    _k(O, "opacity_lr", 0.05, MAPPED, f"`{GEO}.opacity_lr`"),
    _k(O, "scaling_lr", 0.005, MAPPED, f"`{GEO}.scaling_lr: [0, scaling_lr, scaling_lr_final, iterations]`"),
    _k(O, "rotation_lr", 0.001, MAPPED, f"`{GEO}.rotation_lr: [0, rotation_lr, rotation_lr_final, iterations]`"),
    _k(O, "geo_iter", 0, NOT_SUPPORTED, "-",
       "LucidDreamer guides the depth map on every iteration below geo_iter; the plugin only by depth_as_latent_prob",
       neutral=(0, 1), affects_training=True),
    _k(O, "as_latent_ratio", 0.2, MAPPED, "`system.depth_as_latent_prob`"),
    _k(O, "resnet_lr", 1e-4, NO_EFFECT, note="never read by LucidDreamer"),
    _k(O, "resnet_lr_init", 2e-3, NO_EFFECT, note="never read by LucidDreamer"),
    _k(O, "resnet_lr_final", 5e-5, NO_EFFECT, note="never read by LucidDreamer"),
    _k(O, "scaling_lr_final", 0.001, MAPPED, f"`{GEO}.scaling_lr[2]`"),
    _k(O, "rotation_lr_final", 0.0002, MAPPED, f"`{GEO}.rotation_lr[2]`"),
    _k(O, "percent_dense", 0.003, MAPPED, f"`{GEO}.percent_dense`"),
    _k(O, "densify_grad_threshold", 0.00075, MAPPED, f"`{GEO}.densify_grad_threshold`"),
    _k(O, "lambda_tv", 1.0, MAPPED, "`system.loss.lambda_tv`, `system.loss.lambda_depth_tv`", "LucidDreamer weighs TV(rgb) + TV(depth) by it"),
    _k(O, "lambda_bin", 10.0, NO_EFFECT, note="never read: its loss is commented out in train.py"),
    _k(O, "lambda_scale", 1.0, MAPPED, "`system.loss.lambda_scales`"),
    _k(O, "lambda_sat", 1.0, NO_EFFECT, note="never read by LucidDreamer"),
    _k(O, "lambda_radius", 1.0, NO_EFFECT, note="never read by LucidDreamer"),
    _k(O, "densification_interval", 100, MAPPED, f"`{GEO}.densification_interval`, `{GEO}.prune_interval`"),
    _k(O, "opacity_reset_interval", 300, MAPPED, f"`{GEO}.opacity_reset_interval`, `{GEO}.prune_big_points_from_iter`",
       "LucidDreamer prunes large Gaussians only after the first reset"),
    _k(O, "densify_from_iter", 100, MAPPED, f"`{GEO}.densify_from_iter`, `{GEO}.prune_from_iter`"),
    _k(O, "densify_until_iter", 3000, MAPPED, f"`{GEO}.densify_until_iter`, `{GEO}.prune_until_iter`"),
    _k(O, "use_control_net_iter", 10000000, MAPPED, f"the switch step of `{GUI}.controlnet_ratio`",
       "at or after iterations (LucidDreamer's default) there is no ControlNet"),
    _k(O, "warmup_iter", 1500, MAPPED, f"`{GUI}.warmup_iter`"),
    _k(O, "use_progressive", False, MAPPED, f"`{DATA}.progressive_view: not use_progressive`",
       "LucidDreamer widens the camera ranges when use_progressive is false"),
    _k(O, "save_process", True, NOT_SUPPORTED, "-",
       "LucidDreamer renders one orbit view every iterations // pro_frames_num steps into a training-progress video; "
       "the plugin has none", neutral=(False,)),
    _k(O, "pro_frames_num", 600, NOT_SUPPORTED, "-", "frames of the training-progress video (see save_process)"),
    _k(O, "pro_render_45", False, NOT_SUPPORTED, "-", "elevation of the training-progress video (see save_process)"),
    _k(O, "progressive_view_iter", 500, MAPPED, f"`{DATA}.progressive_view_iter`"),
    _k(O, "progressive_view_init_ratio", 0.2, NO_EFFECT, note="never read by LucidDreamer"),
    _k(O, "scale_up_cameras_iter", 500, MAPPED, f"`{DATA}.scale_up_cameras_iter`"),
    _k(O, "scale_up_factor", 0.95, MAPPED, f"`{DATA}.scale_up_factor`"),
    _k(O, "fovy_scale_up_factor", [0.75, 1.1], MAPPED, f"`{DATA}.fovy_scale_up_factor`"),
    _k(O, "phi_scale_up_factor", 1.5, MAPPED, f"`{DATA}.phi_scale_up_factor`"),
)

# ModelParams' argparse "shorthand" attributes are stored with a leading underscore
UNDERSCORED = {"source_path", "model_path", "images", "resolution", "white_background"}
# keys that only matter through another (their not-supported note is said once, by that key)
DEPENDS_ON = {"pro_frames_num": "save_process", "pro_render_45": "save_process"}


class Conversion:
    """What a conversion produced: the config (a plain nested dict), the header lines, the warnings."""

    def __init__(self) -> None:
        self.config: Dict[str, Any] = {}
        self.notes: List[str] = []  # one line each, in the output's header
        self.warnings: List[str] = []  # also printed to stderr
        self.required: List[str] = []  # keys left ??? for the command line


def _fail(source: str, where: str, message: str) -> None:
    raise ConfigError(f"{source}: {where}{'' if message.startswith('=') else ' '}{message}")


# ---------------------------------------------------------------------------------------------------
# reading a LucidDreamer file
# ---------------------------------------------------------------------------------------------------
def read_luciddreamer_file(path: str) -> Dict[str, Any]:
    """The file as LucidDreamer's train.py reads it (PyYAML, YAML 1.1: ``100_000`` is an int and ``1e-4``
    without a dot is a string, which the type check below then names)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such LucidDreamer config file: pass a file such as LucidDreamer/configs/axe.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if data is None or data == {}:
        raise ConfigError(f"{path}: the file is empty (only blank lines or comments): pass a LucidDreamer config with "
                          f"sections {', '.join(SECTIONS)}, such as LucidDreamer/configs/axe.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a LucidDreamer config is a mapping with sections {', '.join(SECTIONS)}; got {type(data).__name__}")
    return data


def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _split_sections(data: Dict[str, Any], source: str, allow_unknown: bool, out: Conversion) -> Dict[Tuple[str, str], Any]:
    """{(section, name): value} for the keys the file sets, with the layout checked."""
    given: Dict[Tuple[str, str], Any] = {}
    top_names = sorted(k.name for k in KEYS if k.section == TOP)
    for key, value in data.items():
        key = str(key)
        if key in SECTIONS:
            if value is None:  # LucidDreamer skips an empty section
                continue
            if not isinstance(value, dict):
                _fail(source, key, f"must be a mapping of options, got {type(value).__name__}: "
                      f"write '{key}:' followed by indented 'option: value' lines")
            names = [k.name for k in KEYS if k.section == key]
            for name, v in value.items():
                name = str(name)
                plain = name[1:] if key == M and name.startswith("_") and name[1:] in UNDERSCORED else name
                if plain not in names:
                    _unknown(source, f"{key}.{name}", _closest(name, names), allow_unknown, out)
                    continue
                if (key, plain) in given:
                    _fail(source, f"{key}.{name}", f"is set twice (as {plain} and _{plain}): keep one")
                given[(key, plain)] = v
                if plain == "white_background" and name == plain:
                    out.notes.append(f"{key}.white_background: LucidDreamer reads only _white_background from a file "
                                     "(this spelling has no effect there); mapped as meant")
        elif key in top_names:
            given[(TOP, key)] = value
        else:
            _unknown(source, key, _closest(key, list(SECTIONS) + top_names), allow_unknown, out)
    return given


def _unknown(source: str, where: str, hint: str, allow_unknown: bool, out: Conversion) -> None:
    if not allow_unknown:
        _fail(source, where, f"is not a LucidDreamer option{hint}: fix or remove it, or pass --allow-unknown to convert without it")
    line = f"{where}: not a LucidDreamer option{hint}; left out (--allow-unknown)"
    out.notes.append(line)
    out.warnings.append(line)


# ---------------------------------------------------------------------------------------------------
# value checks: LucidDreamer's types, named before they reach a run
# ---------------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _string_hint(value) -> str:
    """PyYAML (YAML 1.1) reads 1e-4 as a string: LucidDreamer then fails on arithmetic with it."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (PyYAML reads a number without a dot, such as 1e-4, as a string and LucidDreamer fails on it: write 1.0e-4)"
    return ""


def _checked(source: str, key: LDKey, value) -> Any:
    """``value`` in the type LucidDreamer's code uses it as (ints stay ints, a 1 for a float option is 1.0),
    or one error line."""
    kind, where = key.value_type, key.where
    if value is None and kind.endswith("?") or kind == "any":
        return value
    base = kind.rstrip("?")
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and _is_number(value) and float(value).is_integer():
        return int(value)
    if base == "float" and _is_number(value):
        return float(value)
    if base == "number" and _is_number(value):
        return value
    if base == "str" and isinstance(value, str):
        return value
    if base == "pair" and isinstance(value, list) and len(value) == 2 and all(_is_number(x) for x in value):
        return [float(x) if isinstance(key.default[i], float) else x for i, x in enumerate(value)]
    if base == "paths" and (isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(x, str) for x in value))):
        return value
    wanted = {"bool": "true or false", "int": "a whole number", "float": "a number", "number": "a number",
              "str": "a string", "pair": "two numbers [low, high]", "paths": "a path or a list of paths"}[base]
    if kind.endswith("?"):
        wanted += " or null"
    _fail(source, where, f"must be {wanted}, got {value!r}" + _string_hint(value))


# ---------------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------------
def _looks_like_file(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or value.lower().endswith(
        (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".ply"))


class _Paths:
    """Resolves LucidDreamer's paths (relative to its checkout) for the plugin run."""

    def __init__(self, root: Optional[str], out: Conversion) -> None:
        self.root, self.out = root, out

    def resolve(self, where: str, target: str, value: str, force_path: bool = False) -> str:
        """``value`` as the run should get it: absolute, unchanged (a hub id), or ``???`` with a header line
        saying which file LucidDreamer meant and how to give it."""
        if not (force_path or _looks_like_file(value)):
            if self.root and os.path.exists(os.path.join(self.root, value)):
                return os.path.abspath(os.path.join(self.root, value))
            return value  # a hub id (or a folder relative to where the run starts)
        if value.startswith("~"):
            return os.path.expanduser(value)
        if os.path.isabs(value):
            return value
        if self.root:
            full = os.path.abspath(os.path.join(self.root, value))
            if not os.path.exists(full):
                self.out.warnings.append(f"{where}: '{value}' resolves to {full}, which does not exist (yet)")
            return full
        if target not in self.out.required:
            self.out.required.append(target)
        self.out.notes.append(
            f"{target} is required: {where} '{value}' is relative to LucidDreamer's checkout; give the file on the command "
            f"line ({target}=/path/to/{os.path.basename(value)}) or convert with --luciddreamer-root /path/to/LucidDreamer"
        )
        return "???"


# ---------------------------------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------------------------------
def load_base_recipe(path: str = BASE_RECIPE) -> Dict[str, Any]:
    """The plugin's LucidDreamer recipe (lucid-ism.yaml) as a plain dict, interpolations kept."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _set(config: Dict[str, Any], dotted: str, value: Any) -> None:
    node = config
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def convert(data: Dict[str, Any], source: str = "config.yaml", luciddreamer_root: Optional[str] = None,
            allow_unknown: bool = False, base: Optional[Dict[str, Any]] = None) -> Conversion:
    """Convert a LucidDreamer config (``data``: the file as LucidDreamer reads it) into a plugin config.

    ``source`` names the file in messages and the header; ``base`` is the recipe the mapped keys are
    written over (default: configs/lucid-ism.yaml)."""
    out = Conversion()
    out.config = copy.deepcopy(base if base is not None else load_base_recipe())
    given = _split_sections(data, source, allow_unknown, out)
    values = {(k.section, k.name): _checked(source, k, given[(k.section, k.name)]) if (k.section, k.name) in given
              else k.default for k in KEYS}
    _note_unmapped(given, values, out)
    # the mapping reads options by name (the only name two groups share, device, is not mapped)
    _map({name: value for (section, name), value in values.items()}, source, _Paths(luciddreamer_root, out), out)
    # what the run is first: name and description lead, the rest keeps the recipe's order
    out.config = {key: out.config[key] for key in ("name", "description")} | {
        key: value for key, value in out.config.items() if key not in ("name", "description")}
    return out


def _reproduced(key: LDKey, values) -> bool:
    """Whether LucidDreamer, with these values, does here what the plugin does (a not-supported key)."""
    value = values[(key.section, key.name)]
    if key.name in ("pro_frames_num", "pro_render_45"):
        return values[(O, "save_process")] is False
    return bool(key.neutral) and value in key.neutral


def _note_unmapped(given, values, out: Conversion) -> None:
    """One header line per key of the file that is not mapped, and per LucidDreamer default that the
    plugin does not reproduce; a warning where a value the file sets changes what is trained."""
    for key in KEYS:
        if key.kind == MAPPED:
            continue
        present = (key.section, key.name) in given
        value = values[(key.section, key.name)]
        if key.kind != NOT_SUPPORTED:
            if present:
                out.notes.append(f"{key.where}={value!r}: {key.kind}: {key.note}")
            continue
        if _reproduced(key, values):
            if present:
                out.notes.append(f"{key.where}={value!r}: nothing to convert (LucidDreamer does what the plugin does at this value)")
            continue
        parent = DEPENDS_ON.get(key.name)
        if parent is not None:  # said once, by the key it depends on
            if present:
                out.notes.append(f"{key.where}={value!r}: not supported (see {parent})")
            continue
        line = f"{key.where}={value!r}{'' if present else ' (LucidDreamer default)'}: not supported: {key.note}"
        out.notes.append(line)
        if present and key.affects_training:
            out.warnings.append(line)


def _map(v: Dict[str, Any], source: str, paths: _Paths, out: Conversion) -> None:
    cfg = out.config
    s = lambda dotted, value: _set(cfg, dotted, value)  # noqa: E731

    # ---- the run ----
    s("name", v["workspace"])
    s("description", f"LucidDreamer's {os.path.basename(source)}, converted by lucid-import-luciddreamer")
    s("seed", v["seed"])
    iterations = v["iterations"]
    if iterations < 1:
        _fail(source, f"{O}.iterations", f"must be >= 1, got {iterations}")
    s("trainer.max_steps", iterations)

    # ---- the prompt processor and the model ----
    if v["guidance"] != "SD":
        _fail(source, f"{G}.guidance", f"is '{v['guidance']}': LucidDreamer (and the converter) support only 'SD'")
    s("system.guidance_type", "lucid-ism-guidance")
    personalised = v["is_safe_tensor"] or v["textual_inversion_path"] is not None or v["LoRA_path"] is not None
    if personalised:
        s("system.prompt_processor_type", "lucid-stable-diffusion-prompt-processor")
    if v["model_key"] is None:
        _fail(source, f"{G}.model_key", "is not set (LucidDreamer stops on it too): set it, e.g. model_key: stabilityai/stable-diffusion-2-1-base")
    _both_models(s, "pretrained_model_name_or_path",
                 paths.resolve(f"{G}.model_key", f"{GUI}.pretrained_model_name_or_path", v["model_key"], force_path=v["is_safe_tensor"]))
    if v["is_safe_tensor"]:
        base_model = v["base_model_key"]
        if base_model is None:
            base_model = "stabilityai/stable-diffusion-v1-5"
            line = (f"{G}.base_model_key is not set: LucidDreamer falls back to '{base_model}' for a single-file checkpoint's "
                    f"scheduler; set {GUI}.base_model to the diffusers folder or hub id of your checkpoint's base model")
            out.notes.append(line)
            out.warnings.append(line)
        _both_models(s, "base_model", paths.resolve(f"{G}.base_model_key", f"{GUI}.base_model", base_model))
    if v["use_control_net_iter"] < iterations:  # LucidDreamer's depth ControlNet, switched on at that step
        switch = int(v["use_control_net_iter"])
        if not v["controlnet_model_key"]:
            _fail(source, f"{G}.controlnet_model_key", f"is not set but {O}.use_control_net_iter={switch} is before the "
                  f"last iteration: give the depth ControlNet (a diffusers folder or hub id), or raise use_control_net_iter")
        s(f"{GUI}.controlnet_model_name_or_path", paths.resolve(f"{G}.controlnet_model_key",
                                                                f"{GUI}.controlnet_model_name_or_path", v["controlnet_model_key"]))
        s(f"{GUI}.controlnet_ratio", [switch, 0.0, float(v["controlnet_ratio"]), switch + 1])
        out.notes.append(f"{O}.use_control_net_iter={switch}: {CONTROLNET_NOTE}")
    for ld_name, name in (("textual_inversion_path", "textual_inversion_path"), ("LoRA_path", "lora_path")):
        value = v[ld_name]
        if value is None:
            continue
        target = f"{GUI}.{name}"
        if isinstance(value, list):
            value = [paths.resolve(f"{G}.{ld_name}[{i}]", target, x, force_path=True) for i, x in enumerate(value)]
            if "???" in value:
                value = "???"  # the list is given as a whole on the command line
        else:
            value = paths.resolve(f"{G}.{ld_name}", target, value, force_path=True)
        _both_models(s, name, value)
        if name == "lora_path":
            _both_models(s, "lora_scale", 1.0)
    if v["text"]:
        s(f"{PP}.prompt", v["text"])
    else:
        s(f"{PP}.prompt", "???")
        out.notes.append(f"{PP}.prompt is required: {G}.text is empty; give the prompt ({PP}.prompt=\"...\")")
    s(f"{PP}.negative_prompt", v["negative"])
    s(f"{PP}.use_perp_neg", v["perpneg"])
    s(f"{PP}.overhead_threshold", 90.0)
    if v["perpneg"]:
        w = -float(v["negative_w"])
        s(f"{PP}.perp_neg_f_fs", [w, float(v["front_decay_factor"]), 0.0])
        s(f"{PP}.perp_neg_f_sf", [w, float(v["side_decay_factor"]), 0.0])
        s(f"{PP}.perp_neg_f_sb", [w / 2, float(v["side_decay_factor"]), 0.0])
        s(f"{PP}.perp_neg_f_fsb", [0.0, 0.0, w])

    # ---- the guidance (ISM) ----
    s(f"{GUI}.half_precision_weights", v["fp16"])
    for name in ("enable_sequential_cpu_offload", "enable_attention_slicing", "enable_channels_last_format"):
        s(f"{GUI}.{name}", v["vram_O"])
    t_low, t_high = v["t_range"]
    s(f"{GUI}.min_step_percent", t_low)
    s(f"{GUI}.max_step_percent", t_high)
    s(f"{GUI}.max_t_range", v["max_t_range"])
    s(f"{GUI}.warmup_iter", v["warmup_iter"])
    for name in ("delta_t", "delta_t_start", "annealing_intervals", "xs_eta", "denoise_guidance_scale", "guidance_scale",
                 "inverse_text", "lambda_guidance", "sds", "fix_noise", "noise_seed"):
        s(f"{GUI}.{name}", v[name])
    xs_delta_t = v["xs_delta_t"]
    if xs_delta_t is None:
        xs_delta_t = v["delta_t"]
        line = (f"{G}.xs_delta_t=None: not supported (LucidDreamer then inverts in steps of the annealed interval); "
                f"converted to delta_t={xs_delta_t}, the interval after warm-up")
        out.notes.append(line)
        out.warnings.append(line)
    s(f"{GUI}.xs_delta_t", xs_delta_t)
    xs_inv_steps = v["xs_inv_steps"]
    if xs_inv_steps is None:  # LucidDreamer: ceil(i_s / xs_delta_t) steps from index 0 = enough to start at 0
        xs_inv_steps = math.ceil(LAST_TIMESTEP_INDEX / xs_delta_t)
    s(f"{GUI}.xs_inv_steps", xs_inv_steps)

    # ---- the system's recipe ----
    s("system.depth_as_latent_prob", v["as_latent_ratio"])
    s("system.loss.lambda_tv", v["lambda_tv"])
    s("system.loss.lambda_depth_tv", v["lambda_tv"])
    s("system.loss.lambda_scales", v["lambda_scale"])

    # ---- the renderer's augmentations and the background ----
    s(f"{REN}.sh_degree_zero_prob", v["sh_deg_aug_ratio"])
    s(f"{REN}.scale_noise_prob", v["scale_aug_ratio"])
    r = v["bg_aug_ratio"]
    for name in ("sh_deg_aug_ratio", "bg_aug_ratio", "scale_aug_ratio"):
        if not 0.0 <= v[name] <= 1.0:
            _fail(source, f"{M}.{name}", f"={v[name]} must be a probability in [0, 1]")
    white = v["white_background"]
    s(f"{BG}.color", [1.0, 1.0, 1.0] if white else [0.0, 0.0, 0.0])
    s(f"{BG}.random_aug", r > 0)
    s(f"{BG}.random_aug_prob", r / 2)
    # white: black is the inverted white (probability r/2 of all views); black: LucidDreamer's black
    # replacement is the background itself, so nothing is inverted
    s(f"{REN}.bg_inversion_prob", (r / 2) / (1 - r / 2) if white else 0.0)

    # ---- the geometry ----
    _map_init(v, source, paths, out, s)
    s(f"{GEO}.sh_degree", v["sh_degree"])
    s(f"{GEO}.sh_degree_increase_interval", 500)
    s(f"{GEO}.position_lr", [0, v["position_lr_init"], v["position_lr_final"], iterations])
    s(f"{GEO}.feature_lr", [0, v["feature_lr"], v["feature_lr_final"], iterations])
    s(f"{GEO}.opacity_lr", v["opacity_lr"])
    s(f"{GEO}.scaling_lr", [0, v["scaling_lr"], v["scaling_lr_final"], iterations])
    s(f"{GEO}.rotation_lr", [0, v["rotation_lr"], v["rotation_lr_final"], iterations])
    s(f"{GEO}.scene_extent", v["default_radius"])
    s(f"{GEO}.densification_interval", v["densification_interval"])
    s(f"{GEO}.prune_interval", v["densification_interval"])
    s(f"{GEO}.densify_from_iter", v["densify_from_iter"])
    s(f"{GEO}.prune_from_iter", v["densify_from_iter"])
    s(f"{GEO}.densify_until_iter", v["densify_until_iter"])
    s(f"{GEO}.prune_until_iter", v["densify_until_iter"])
    s(f"{GEO}.densify_grad_threshold", v["densify_grad_threshold"])
    s(f"{GEO}.percent_dense", v["percent_dense"])
    s(f"{GEO}.opacity_reset_interval", v["opacity_reset_interval"])
    s(f"{GEO}.prune_big_points_from_iter", v["opacity_reset_interval"])

    # ---- the cameras ----
    s(f"{DATA}.batch_size", v["C_batch_size"])
    s(f"{DATA}.width", v["image_w"])
    s(f"{DATA}.height", v["image_h"])
    s(f"{DATA}.eval_width", v["image_w"])
    s(f"{DATA}.eval_height", v["image_h"])
    for ld, ours in (("radius_range", "radius_range"), ("max_radius_range", "max_radius_range"),
                     ("theta_range", "polar_range"), ("max_theta_range", "max_polar_range"),
                     ("phi_range", "azimuth_range"), ("max_phi_range", "max_azimuth_range"),
                     ("fovy_range", "fovy_range"), ("max_fovy_range", "max_fovy_range"),
                     ("fovy_scale_up_factor", "fovy_scale_up_factor")):
        s(f"{DATA}.{ours}", v[ld])
    for name in ("rand_cam_gamma", "jitter_pose", "jitter_center", "jitter_target", "jitter_up", "progressive_view_iter",
                 "scale_up_cameras_iter", "scale_up_factor", "phi_scale_up_factor", "default_radius", "default_polar",
                 "default_fovy"):
        s(f"{DATA}.{name}", v[name])
    s(f"{DATA}.progressive_view", not v["use_progressive"])


def _both_models(s, name: str, value) -> None:
    """A model or personalisation key of both the prompt processor and the guidance. A value the run
    must be given (``???``) is given once, to the guidance, which sorts first among the missing keys
    that a loader names (the prompt processor reads it from there)."""
    s(f"{PP}.{name}", f"${{{GUI}.{name}}}" if value == "???" else value)
    s(f"{GUI}.{name}", value)


def _map_init(v, source, paths: _Paths, out: Conversion, s) -> None:
    n = v["init_num_pts"]
    if v["pretrained_model_path"] is not None:
        s(f"{GEO}.init_type", "ply")
        s(f"{GEO}.init_ply_path", paths.resolve(f"{M}.pretrained_model_path", f"{GEO}.init_ply_path",
                                                v["pretrained_model_path"], force_path=True))
        return
    shape = v["init_shape"]
    if shape not in INIT_SHAPES:
        _fail(source, f"{C}.init_shape", f"='{shape}' is not supported: use sphere, box or pointe "
              "(rectangle_x, rectangle_z and scene have no initialiser in the plugin)")
    s(f"{GEO}.init_type", INIT_SHAPES[shape])
    if shape == "pointe":
        copies = n // 5000
        if copies < 1:
            copies = 1
            line = (f"{C}.init_num_pts={n}: with init_shape pointe LucidDreamer keeps init_num_pts // 5000 = 0 copies of "
                    f"each Point-E point; converted to 1 copy ({POINT_E_POINTS} points)")
            out.notes.append(line)
            out.warnings.append(line)
        n = POINT_E_POINTS * copies
        if not v["init_prompt"]:
            _fail(source, f"{C}.init_prompt", "is empty but init_shape is pointe: give Point-E a prompt, e.g. init_prompt: 'a cat.'")
        s(f"{GEO}.init_prompt", v["init_prompt"])
        s(f"{GEO}.init_point_e_jitter", 0.05)
        s(f"{GEO}.init_use_source_colors", v["use_pointe_rgb"])
    else:
        s(f"{GEO}.init_radius", 0.5)
    if n < 1:
        _fail(source, f"{C}.init_num_pts", f"={n} must be >= 1")
    s(f"{GEO}.init_num_pts", n)
    if n > out.config.get("system", {}).get("geometry", {}).get("max_num", 500000):
        s(f"{GEO}.max_num", n)


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper, data):
    flow = all(_is_number(x) or isinstance(x, bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def render(conv: Conversion, source: str) -> str:
    """The config file: a header (what it is, how to run it, what was not carried over) and the body."""
    name = os.path.basename(source)
    lines = [
        f"# LucidDreamer's {name} as a threestudio config: written by lucid-import-luciddreamer "
        "(python -m threestudio_lucid.luciddreamer_import); convert again rather than edit by hand.",
        "# The plugin's recipe is configs/lucid-ism.yaml; every LucidDreamer option (the file's, else its default) is set "
        "below (key by key: docs/luciddreamer.md).",
        "#   python launch.py --config <this file> --train --gpu 0      (inside threestudio)",
        "#   lucid-launch --config <this file> --train",
    ]
    geometry = conv.config.get("system", {}).get("geometry", {})
    if geometry.get("init_type") == "point_e":
        lines.append(f"# Point-E initialisation: needs point-e ({POINT_E_INSTALL}); without it add "
                     "system.geometry.init_type=sphere_solid (LucidDreamer's 'sphere').")
    if conv.notes:
        lines.append("# Not carried over, or to give on the command line (one line each):")
        lines += [f"#   {note}" for note in conv.notes]
    body = yaml.dump(conv.config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=4096)
    return "\n".join(lines) + "\n" + body


def write_atomically(path: str, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` atomically (``atomic_files.py``: a crash leaves the old file or none,
    never half of one). An existing file is kept unless ``force``."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"-o {path}: the folder {folder} does not exist: create it first")
    if os.path.exists(path) and not force:
        raise ConfigError(f"-o {path}: the file exists: pass --force to replace it or choose another -o")
    write_text(path, text, hint="free space there or give -o a path on a disk with room")


def mapping_table() -> str:
    """The Markdown table of every LucidDreamer option: default, what it becomes, and why."""
    rows = ["| LucidDreamer key | default | plugin key and value | notes |", "|---|---|---|---|"]
    for key in KEYS:
        default = "null" if key.default is None else repr(key.default)
        if key.kind == MAPPED:
            target = key.target
        elif key.kind == NOT_SUPPORTED and key.neutral:
            shown = ", ".join("null" if x is None else repr(x) for x in key.neutral)
            target = f"not supported (converts silently at {shown})"
        else:
            target = key.kind
        rows.append(f"| `{key.where}` | `{default}` | {target} | {key.note} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="lucid-import-luciddreamer",
        description="Convert a LucidDreamer config (ModelParams, PipelineParams, GuidanceParams, GenerateCamParams, "
                    "OptimizationParams) into a threestudio-lucid config for threestudio's launch.py and lucid-launch.",
    )
    parser.add_argument("config", nargs="?", help="a LucidDreamer YAML file, e.g. LucidDreamer/configs/axe.yaml")
    parser.add_argument("-o", "--output", help="where to write the plugin config (default: standard output)")
    parser.add_argument("--force", action="store_true", help="replace an existing -o file")
    parser.add_argument("--luciddreamer-root", metavar="DIR",
                        help="LucidDreamer's checkout: its relative paths (LoRA_path, ...) are resolved against it; "
                             "without it such a key is left for the command line (???)")
    parser.add_argument("--allow-unknown", action="store_true",
                        help="warn about keys LucidDreamer does not know instead of stopping")
    parser.add_argument("--mapping-table", action="store_true", help="print the key-by-key table (Markdown) and exit")
    args = parser.parse_args(argv)
    if args.mapping_table:
        sys.stdout.write(mapping_table())
        return 0
    if not args.config:
        parser.print_usage(sys.stderr)
        print("error: give a LucidDreamer config file, e.g. lucid-import-luciddreamer LucidDreamer/configs/axe.yaml -o axe.yaml",
              file=sys.stderr)
        return 2
    try:
        conv = convert(read_luciddreamer_file(args.config), source=args.config,
                       luciddreamer_root=args.luciddreamer_root, allow_unknown=args.allow_unknown)
        text = render(conv, args.config)
        if args.output:
            write_atomically(args.output, text, args.force)
        else:
            sys.stdout.write(text)
    except (ConfigError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in conv.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.output:
        print(f"{args.config} -> {args.output}: {len(conv.notes)} header line(s) on what was not carried over"
              + (f"; give {', '.join(conv.required)} on the command line" if conv.required else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
