"""LucidDreamer's nine released configs (EnVision-Research/LucidDreamer, configs/*.yaml at 2ecf093), as
data: every key and value each file sets, as LucidDreamer's train.py reads it (PyYAML). The tests cannot
download LucidDreamer, so they convert these. ``axe`` is written out in full; each other file is given
by what it changes (``set``: section -> {key: value}) and which of axe's keys it does not have
(``drop``). ``tests/test_luciddreamer_import.py`` checks that converting each gives the shipped config.
"""
import copy

AXE = {
    "port": 2355,
    "save_video": True,
    "seed": 0,
    "PipelineParams": {"convert_SHs_python": False},
    "ModelParams": {"workspace": "viking_axe", "sh_degree": 0, "bg_aug_ratio": 0.66},
    "GuidanceParams": {
        "model_key": "stabilityai/stable-diffusion-2-1-base",
        "text": "Viking axe, fantasy, weapon, blender, 8k, HDR.",
        "negative": "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, low-resolution, oversaturation.",
        "inverse_text": "",
        "perpneg": False,
        "C_batch_size": 4,
        "t_range": [0.02, 0.5],
        "max_t_range": 0.98,
        "lambda_guidance": 0.1,
        "guidance_scale": 7.5,
        "denoise_guidance_scale": 1.0,
        "noise_seed": 0,
        "ddim_inv": True,
        "accum": False,
        "annealing_intervals": True,
        "xs_delta_t": 200,
        "xs_inv_steps": 5,
        "xs_eta": 0.0,
        "delta_t": 25,
        "delta_t_start": 100,
    },
    "GenerateCamParams": {
        "init_shape": "pointe",
        "init_prompt": "A flag.",
        "use_pointe_rgb": False,
        "init_num_pts": 100000,
        "phi_range": [-180, 180],
        "max_phi_range": [-180, 180],
        "rand_cam_gamma": 1.0,
        "theta_range": [45, 105],
        "max_theta_range": [45, 105],
        "radius_range": [5.2, 5.5],
        "max_radius_range": [3.5, 5.0],
        "default_radius": 3.5,
        "default_fovy": 0.55,
        "fovy_range": [0.32, 0.60],
        "max_fovy_range": [0.16, 0.60],
    },
    "OptimizationParams": {
        "iterations": 5000,
        "save_process": True,
        "pro_frames_num": 600,
        "pro_render_45": False,
        "warmup_iter": 1500,
        "as_latent_ratio": 0.2,
        "geo_iter": 0,
        "densify_from_iter": 100,
        "densify_until_iter": 3000,
        "percent_dense": 0.003,
        "densify_grad_threshold": 0.00075,
        "progressive_view_iter": 500,
        "opacity_reset_interval": 300,
        "scale_up_cameras_iter": 500,
        "fovy_scale_up_factor": [0.75, 1.1],
        "phi_scale_up_factor": 1.5,
    },
}

NEGATIVE_DARK = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, "
                 "oversaturation.")
HEAD_CAMERAS = {"phi_range": [-80, 80], "rand_cam_gamma": 1.5}
NO_ACCUM = {"GuidanceParams": ["accum"]}

CHANGES = {
    "axe": {},
    "bagel": {
        "set": {"ModelParams": {"workspace": "bagel"},
                "GuidanceParams": {"text": "a DSLR photo of a bagel filled with cream cheese and lox.",
                                   "negative": NEGATIVE_DARK, "delta_t": 80},
                "GenerateCamParams": {"init_prompt": "a bagel."}},
        "drop": NO_ACCUM,
    },
    "cat_armor": {
        "set": {"ModelParams": {"workspace": "cat_armor"},
                "GuidanceParams": {"text": "a DSLR photo of a cat wearing armor.", "perpneg": True, "delta_t": 80},
                "GenerateCamParams": {"init_prompt": "a cat.", "rand_cam_gamma": 1.5,
                                      "theta_range": [60, 90], "max_theta_range": [60, 90]}},
        "drop": NO_ACCUM,
    },
    "crown": {
        "set": {"ModelParams": {"workspace": "crown"},
                "GuidanceParams": {"text": "a DSLR photo of the Imperial State Crown of England.",
                                   "negative": "unrealistic, blurry, low quality.", "delta_t": 80},
                "GenerateCamParams": {"init_prompt": "the Imperial State Crown of England."}},
        "drop": NO_ACCUM,
    },
    "football_helmet": {
        "set": {"ModelParams": {"workspace": "football_helmet"},
                "GuidanceParams": {"text": "a DSLR photo of a football helmet.", "delta_t": 50},
                "GenerateCamParams": {"init_prompt": "a football helmet.",
                                      "theta_range": [45, 90], "max_theta_range": [45, 90]}},
        "drop": {"GenerateCamParams": ["rand_cam_gamma"]},
    },
    "hamburger": {
        "set": {"ModelParams": {"workspace": "hamburger"},
                "GuidanceParams": {"text": "A delicious hamburger.", "negative": NEGATIVE_DARK, "delta_t": 50},
                "GenerateCamParams": {"init_shape": "sphere", "init_prompt": "."}},
        "drop": NO_ACCUM,
    },
    "white_hair_ironman": {
        "set": {"ModelParams": {"workspace": "white_hair_IRONMAN"},
                "GuidanceParams": {"text": "A portrait of IRONMAN, white hair, head, photorealistic, 8K, HDR.",
                                   "negative": "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, "
                                               "low-resolution.",
                                   "perpneg": True, "delta_t": 50},
                "GenerateCamParams": {"init_prompt": "a man head.", **HEAD_CAMERAS,
                                      "theta_range": [45, 90], "max_theta_range": [45, 90]}},
        "drop": {"GuidanceParams": ["accum", "t_range"]},
    },
    "zombie_joker": {
        "set": {"ModelParams": {"workspace": "zombie_joker"},
                "GuidanceParams": {"text": "Zombie JOKER, head, photorealistic, 8K, HDR.", "negative": NEGATIVE_DARK,
                                   "perpneg": True, "delta_t": 50},
                "GenerateCamParams": {"init_prompt": "a man head.", **HEAD_CAMERAS,
                                      "theta_range": [45, 90], "max_theta_range": [45, 90]}},
        "drop": NO_ACCUM,
    },
    "ts_lora": {
        "set": {"ModelParams": {"workspace": "TS_lora"},
                "GuidanceParams": {"text": "A <Taylor_Swift> wearing sunglasses.",
                                   "LoRA_path": "./custom_example/lora/Taylor_Swift/step_inv_1000.safetensors",
                                   "negative": NEGATIVE_DARK, "perpneg": True, "delta_t": 80},
                "GenerateCamParams": {"init_prompt": "a girl head.", **HEAD_CAMERAS,
                                      "theta_range": [60, 120], "max_theta_range": [60, 120]}},
        "drop": NO_ACCUM,
    },
}

NAMES = tuple(CHANGES)


def released_config(name: str) -> dict:
    """The LucidDreamer file ``configs/<name>.yaml`` as train.py reads it."""
    config = copy.deepcopy(AXE)
    change = CHANGES[name]
    for section, values in change.get("set", {}).items():
        config[section].update(copy.deepcopy(values))
    for section, keys in change.get("drop", {}).items():
        for key in keys:
            del config[section][key]
    return config
