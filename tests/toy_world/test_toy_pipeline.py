"""Toy-world folders: layout, the prompt processor and the guidance load them unchanged (through
``load_stable_diffusion``, which is diffusers' ``StableDiffusionPipeline.from_pretrained`` with the prior's
components named in ``model_index.json``), the processor's view prompts select the right renders, ISM's DDIM
inversion stays finite, and the console entry."""
import json
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance.diffusion_base import load_stable_diffusion
from threestudio_lucid.toy_world.pipeline import is_toy_world, load_toy_world_pipeline, main
from threestudio_lucid.toy_world.prior import ToyAutoencoder, ToyDenoiser


@pytest.fixture(scope="module")
def prompt_utils(toy_world_path, tmp_path_factory):
    """Processor outputs for "a penguin": plain, "front view of X" templates, and Perp-Neg."""
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("toy-cwd"))
    try:
        make = compat.find("stable-diffusion-prompt-processor")
        base = {"prompt": "a penguin", "negative_prompt": "blurry", "pretrained_model_name_or_path": toy_world_path}
        yield {
            "plain": make(base)(),
            "front_first": make({**base, "view_dependent_prompt_front": True})(),
            "perp_neg": make({**base, "use_perp_neg": True})(),
        }
    finally:
        os.chdir(cwd)


def views(b):
    return torch.zeros(b), torch.linspace(-180, 150, b), torch.full((b,), 4.0)


def test_folder_is_a_stable_diffusion_folder_naming_the_toy_prior_as_its_unet_and_vae(toy_world_path, tiny_sd_path):
    with open(os.path.join(toy_world_path, "model_index.json")) as f:
        index = json.load(f)
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["threestudio_lucid.toy_world.prior", "ToyDenoiser"]
    assert index["vae"] == ["threestudio_lucid.toy_world.prior", "ToyAutoencoder"]
    assert index["_lucid_evaluator"] == "lucid-toy-world-evaluator"
    for sub in ("tokenizer", "text_encoder", "scheduler", "unet", "vae"):
        assert os.path.isdir(os.path.join(toy_world_path, sub))
    assert os.path.exists(os.path.join(toy_world_path, "tokenizer", "vocab.json"))
    with open(os.path.join(toy_world_path, "toy_world.json")) as f:
        described = json.load(f)
    assert described["settings"]["objects"] == ["cube", "penguin"] and described["latent_size"] == 16
    assert described["captions"]["a penguin, back view"] == 2 and described["num_renders"] == 48
    assert is_toy_world(toy_world_path) and not is_toy_world(tiny_sd_path) and not is_toy_world("/no/such/dir")
    with open(os.path.join(toy_world_path, "scheduler", "scheduler_config.json")) as f:
        sched = json.load(f)
    assert sched["_class_name"] == "DDIMScheduler" and sched["steps_offset"] == 1
    assert sched["beta_schedule"] == "scaled_linear"


def test_load_stable_diffusion_loads_the_toy_prior_through_diffusers(toy_world_path, toy_pipe):
    from diffusers import StableDiffusionPipeline

    pipe = load_stable_diffusion(toy_world_path, torch.float32)
    assert type(pipe) is StableDiffusionPipeline
    assert isinstance(pipe.unet, ToyDenoiser) and isinstance(pipe.vae, ToyAutoencoder)
    assert pipe.unet.world_path == os.path.abspath(toy_world_path) and pipe.unet.settings.objects == ["cube", "penguin"]
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 4
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 2
    assert torch.equal(pipe.unet.means, toy_pipe.unet.means)
    assert pipe.to(torch.device("cpu")) is pipe
    pipe.enable_attention_slicing(1)
    with pytest.raises(FileNotFoundError, match="lucid-build-toy-world"):
        load_toy_world_pipeline(os.path.dirname(toy_world_path))


def test_the_generic_loader_has_no_toy_world_branch():
    """The toy world reaches the loader as a diffusers folder only (issue 27, part 6): the guidance's loading code
    and the system name nothing of it."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid")
    for part in ("guidance", "prompt_processor", "system"):
        for dirpath, _, files in os.walk(os.path.join(root, part)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                        code = f.read()
                    assert "toy_world" not in code.replace("toy_world_eval", ""), os.path.join(dirpath, name)


def test_an_old_world_folder_is_not_a_toy_world_and_says_so_when_loaded(tmp_path, toy_world_path):
    import shutil

    old = tmp_path / "old-world"
    shutil.copytree(toy_world_path, old)
    with open(old / "model_index.json") as f:
        index = json.load(f)
    index = {k: v for k, v in index.items() if k not in ("unet", "vae")}
    index["_class_name"] = "LucidToyWorldPipeline"
    with open(old / "model_index.json", "w") as f:
        json.dump(index, f)
    assert not is_toy_world(str(old))
    with pytest.raises(ConfigError, match="is not a loadable Stable Diffusion pipeline"):
        load_stable_diffusion(str(old), torch.float32)


def test_a_missing_model_folder_error_names_the_toy_world_builder(tmp_path):
    with pytest.raises(ConfigError, match="lucid-build-toy-world"):
        load_stable_diffusion(str(tmp_path / "toy-world"), torch.float32)


def test_prompt_processor_embeddings_select_the_world_captions(toy_pipe, prompt_utils):
    unet, captions = toy_pipe.unet, toy_pipe.unet.captions
    for key in ("plain", "front_first"):
        pu = prompt_utils[key]
        lam = unet.caption_weights(torch.cat([pu.text_embeddings, pu.text_embeddings_vd, pu.uncond_text_embeddings]))
        expected = ["a penguin"] + list(pu.prompts_vd) + [""]  # the negative prompt is unknown text
        assert torch.equal(lam, torch.eye(len(captions), dtype=torch.float64)[[captions.index(c) for c in expected]])
    assert prompt_utils["front_first"].prompts_vd[2] == "backside view of a penguin"


def test_perp_neg_interpolated_prompts_mix_front_and_side(toy_pipe, prompt_utils):
    unet, captions = toy_pipe.unet, toy_pipe.unet.captions
    emb, _ = prompt_utils["perp_neg"].get_text_embeddings_perp_neg(
        torch.zeros(2), torch.tensor([30.0, 120.0]), torch.full((2,), 4.0)
    )
    lam = unet.caption_weights(emb[:2])
    front, side, back = (captions.index(f"a penguin, {d} view") for d in ("front", "side", "back"))
    assert lam[0, front] == pytest.approx(2 / 3, abs=1e-4) and lam[0, side] == pytest.approx(1 / 3, abs=1e-4)
    assert lam[1, side] == pytest.approx(2 / 3, abs=1e-4) and lam[1, back] == pytest.approx(1 / 3, abs=1e-4)


@pytest.mark.parametrize("name,loss_key", [("lucid-ism-guidance", "loss_ism"), ("lucid-sds-guidance", "loss_sds")])
def test_guidance_runs_unchanged_on_the_toy_world(toy_world_path, prompt_utils, name, loss_key):
    guidance = compat.find(name)({"pretrained_model_name_or_path": toy_world_path})
    assert guidance.latent_size == 16 and guidance.image_size == 32
    rgb = torch.rand(3, 24, 24, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = guidance(rgb, prompt_utils["plain"], *views(3))
    assert torch.isfinite(out[loss_key]) and torch.isfinite(out["grad_norm"]) and out["grad_norm"] > 0
    out[loss_key].backward()
    assert rgb.grad.shape == rgb.shape and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_ism_inversion_stays_finite_at_the_configured_bandwidth(toy_world_path, toy_pipe, prompt_utils):
    ism = compat.find("lucid-ism-guidance")({"pretrained_model_name_or_path": toy_world_path})
    assert ism.unet.bandwidth == 0.1
    uncond = prompt_utils["plain"].uncond_text_embeddings.expand(2, -1, -1)
    render = toy_pipe.unet.train_set.rgb_float()[:1]
    noise_image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    latents = ism.prepare_latents(torch.cat([render, noise_image]))
    for i_s in (100, 400, 800):
        start = max(i_s - ism.cfg.xs_delta_t * ism.cfg.xs_inv_steps, 0)  # as the guidance does: from ~t = 1
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(i_s))
        x = ism.scheduler.add_noise(latents, noise, ism.timestep_table[start].reshape(1).expand(2))
        x_s, preds = ism.invert(x, start, i_s, ism.cfg.xs_delta_t, ism.cfg.xs_inv_steps, uncond)
        assert len(preds) >= 1 and torch.isfinite(x_s).all()
        assert all(float(eps.abs().max()) < 20 for _, eps in preds)
        # x_s has the scale of a noised latent, not of a blown-up one
        assert float(x_s.std()) < 3


def test_console_entry_builds_a_world(tmp_path, toy_cache_dir, capsys):
    path = tmp_path / "tw"
    args = [str(path), "--objects", "ball", "--image-size", "16", "--n-azimuths", "4", "--elevations", "0", "20"]
    assert main(args + ["--n-eval-views", "2", "--bandwidth", "0.05", "--downsample", "4"]) == 0
    assert "Toy world written" in capsys.readouterr().out
    pipe = load_toy_world_pipeline(str(path))
    assert pipe.unet.bandwidth == 0.05 and pipe.unet.config.sample_size == 4 and pipe.unet.means.shape[0] == 8
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "setup.py")) as f:
        assert "lucid-build-toy-world=threestudio_lucid.toy_world.pipeline:main" in f.read()


def test_sequential_offload_of_a_toy_world_gives_the_same_step(toy_world_path, prompt_utils, monkeypatch):
    """The GPU path of ``enable_sequential_cpu_offload`` (accelerate's hooks on every model, diffusers' own
    pipeline method now that the toy world loads as a diffusers pipeline), with the CPU as the execution device
    (as ``tests/guidance/test_memory_options.py`` runs it)."""
    from accelerate import cpu_offload
    from diffusers import StableDiffusionPipeline

    from threestudio_lucid.guidance import diffusion_base

    def step(**options):
        guidance = compat.find("lucid-sds-guidance")({"pretrained_model_name_or_path": toy_world_path,
                                                      "half_precision_weights": False, **options})
        rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
        noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        return guidance(rgb, prompt_utils["plain"], *views(2), noise=noise, t=torch.tensor([300, 700]))["loss_sds"]

    plain = step()

    def offload(self, gpu_id=None, device=None):
        for model in self.components.values():
            if isinstance(model, torch.nn.Module):
                cpu_offload(model, torch.device("cpu"), offload_buffers=len(model._parameters) > 0)

    monkeypatch.setattr(diffusion_base, "ACCELERATOR_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(StableDiffusionPipeline, "enable_sequential_cpu_offload", offload)
    assert torch.allclose(step(enable_sequential_cpu_offload=True), plain, rtol=1e-5)


def test_a_world_is_a_world_only_once_its_build_is_complete(tmp_path, toy_cache_dir, monkeypatch):
    """model_index.json is written last and removed first when a folder is rebuilt: a build that stops half-way
    (killed, a full disk, an error in the estimator's pretraining) leaves a folder nothing takes for a world."""
    from threestudio_lucid.toy_world import pipeline

    small = dict(objects=["cube"], image_size=32, n_azimuths=8, elevations_deg=[0.0, 30.0, 70.0], n_eval_views=4)
    path = pipeline.build_toy_world(tmp_path / "world", cache_dir=toy_cache_dir, **small)
    assert is_toy_world(path)

    def fails(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "pretrain_estimator", fails)
    with pytest.raises(OSError, match="disk full"):
        pipeline.build_toy_world(path, cache_dir=toy_cache_dir, estimator_steps=1, **small)
    assert not is_toy_world(path) and not os.path.exists(os.path.join(path, "model_index.json"))
    with pytest.raises(FileNotFoundError, match="lucid-build-toy-world"):
        load_toy_world_pipeline(path)
