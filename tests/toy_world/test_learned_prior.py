"""The learned prior of a toy world (issue 27 (b)): a far smaller UNet than the command's default, trained for a few
dozen steps on a 16 px world, so the whole file runs in seconds. The folder is a plain Stable Diffusion folder that
diffusers and the plugin's guidance load unchanged, scored against the world's ground truth."""
import json
import os
import subprocess
import sys

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.toy_world import learned_prior as lp
from threestudio_lucid.toy_world.pipeline import (
    build_toy_world,
    is_exact_toy_world,
    is_learned_prior,
    is_toy_world,
    load_toy_world_pipeline,
)

WORLD = dict(objects=["cube", "penguin"], image_size=16, n_azimuths=8, elevations_deg=[15.0], n_eval_views=4,
             bandwidth=0.1, estimator_steps=0)
SMALL = dict(steps=40, batch_size=8, channels=(16, 32), lr=2e-3, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory, toy_cache_dir):
    return build_toy_world(tmp_path_factory.mktemp("prior-world") / "world", cache_dir=toy_cache_dir, **WORLD)


@pytest.fixture(scope="module")
def learned(world, tmp_path_factory):
    return lp.build_learned_prior(world, str(tmp_path_factory.mktemp("learned") / "prior"), **SMALL)


@pytest.fixture(scope="module")
def record(learned):
    return lp.read_record(learned)


def test_training_lowers_the_loss_and_the_record_says_how_it_was_made(learned, record, world):
    assert record["loss"]["last"] < 0.6 * record["loss"]["first"]
    assert record["world"] == os.path.abspath(world) and record["steps"] == 40 and record["batch_size"] == 8
    assert record["channels"] == [16, 32] and record["seed"] == 0 and record["seconds"]["training"] > 0
    assert record["command"].startswith(f"lucid-train-toy-prior {world} {learned} --steps 40 --batch-size 8 "
                                        "--channels 16 32")
    assert len(record["loss"]["curve"]) <= 50 and record["loss"]["min"] <= record["loss"]["last"]


def test_training_is_repeatable_from_its_seed(world, toy_cache_dir):
    from threestudio_lucid.toy_world.denoiser_training import train_denoiser, world_denoiser_data

    data = world_denoiser_data(world, cache_dir=toy_cache_dir)
    abar = torch.linspace(0.999, 0.01, 1000)
    runs = []
    for seed in (0, 0, 1):
        unet = lp.build_learned_prior_unet(8, 32, (8, 16), seed=0)
        runs.append((train_denoiser(unet, data, abar, 3, batch_size=4, seed=seed), unet))
    (first, a), (again, b), (other, _) = runs
    assert first == again and first != other
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_record_measures_generalisation_and_training_beats_no_training(record):
    g = record["generalisation"]
    assert g["timesteps"] == list(lp.GENERALISATION_TIMESTEPS)
    # per object: the 8 training azimuths at the held-out elevation, and the 4 held-out views
    assert (g["views"]["train"], g["views"]["held_out"]) == (16, 8)
    errors = g["epsilon_mse"]
    assert set(errors) == {"learned", "untrained", "exact_prior"}
    for name in errors:
        assert set(errors[name]) == {"train", "held_out"} and len(errors[name]["held_out"]) == len(g["timesteps"])
        assert g["held_out_over_train"][name] == pytest.approx(
            [h / t for h, t in zip(errors[name]["held_out"], errors[name]["train"])])
    assert all(a < 0.7 * b for a, b in zip(errors["learned"]["held_out"], errors["untrained"]["held_out"]))
    # the exact prior is near perfect on its stored views and worse between them
    assert g["held_out_over_train"]["exact_prior"][1] > 1.2


def test_the_folder_loads_with_diffusers_and_samples(learned):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from threestudio_lucid.toy_world.prior import ToyAutoencoder

    assert os.path.isfile(os.path.join(learned, "unet", "diffusion_pytorch_model.safetensors"))
    pipe = StableDiffusionPipeline.from_pretrained(learned, safety_checker=None, requires_safety_checker=False)
    assert type(pipe.unet) is UNet2DConditionModel and pipe.unet.config.class_embed_type is None
    assert isinstance(pipe.vae, ToyAutoencoder) and pipe.unet.config.sample_size == 8
    images = lp.sample_images(learned, "a penguin", n=2, steps=3)
    assert images.shape == (2, 16, 16, 3) and torch.isfinite(images).all()
    assert is_toy_world(learned) and is_learned_prior(learned) and not is_exact_toy_world(learned)
    with pytest.raises(FileNotFoundError, match="learned prior"):
        load_toy_world_pipeline(learned)


def views(b):
    from threestudio_lucid.toy_world.denoiser_training import vsd_camera_condition

    elevation, azimuth, distance = torch.full((b,), 15.0), torch.linspace(0, 180, b), torch.full((b,), 4.0)
    return elevation, azimuth, distance, vsd_camera_condition(elevation, azimuth, distance).reshape(b, 4, 4)


@pytest.mark.parametrize("kind,cfg", [
    ("lucid-sds-guidance", {}),
    ("lucid-ism-guidance", {}),
    ("lucid-vsd-guidance", {"lora_unet_subfolder": "unet", "train_full_estimator": False}),
])
def test_the_guidance_loads_it_as_any_stable_diffusion_folder(kind, cfg, learned, in_tmp_cwd):
    guidance = compat.find(kind)({"pretrained_model_name_or_path": learned,
                                  **({"pretrained_model_name_or_path_lora": learned} if "vsd" in kind else {}), **cfg})
    pp = compat.find("stable-diffusion-prompt-processor")({"prompt": "a penguin",
                                                           "pretrained_model_name_or_path": learned})()
    b = 2
    elevation, azimuth, distance, c2w = views(b)
    rgb = torch.rand(b, 16, 16, 3, requires_grad=True)
    out = guidance(rgb, pp, elevation, azimuth, distance, mvp_mtx=torch.eye(4).repeat(b, 1, 1), c2w=c2w)
    loss = sum(v for k, v in out.items() if k.startswith("loss_"))
    loss.backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_the_evaluator_and_the_oracle_read_the_same_ground_truth(learned, world):
    from threestudio_lucid.guidance.diffusion_base import model_index_of

    assert model_index_of(learned)["_lucid_evaluator"] == "lucid-toy-world-evaluator"
    evaluator = compat.find("lucid-toy-world-evaluator")({"model": learned, "prompt": "a penguin"})
    assert evaluator.object == "penguin"
    oracle = compat.find("lucid-toy-world-oracle")({"pretrained_model_name_or_path": learned, "prompt": "a penguin"})
    assert oracle.settings.to_dict() == compat.find("lucid-toy-world-oracle")(
        {"pretrained_model_name_or_path": world, "prompt": "a penguin"}).settings.to_dict()


def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("case,needle", [
    ("missing world", "WORLD="),
    ("stable diffusion world", "is not a toy world"),
    ("learned prior world", "is a learned prior, not a toy world"),
    ("out is world", "is WORLD itself"),
    ("foreign out", "not a learned prior and not empty"),
    ("existing prior", "pass --overwrite"),
    ("zero steps", "--steps=0"),
    ("bad channels", "--channels=[12, 24]"),
])
def test_the_command_names_a_bad_input_in_one_line(case, needle, world, learned, tiny_sd_path, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = {
        "missing world": [str(tmp_path / "nowhere"), out],
        "stable diffusion world": [tiny_sd_path, out],
        "learned prior world": [learned, out],
        "out is world": [world, world],
        "foreign out": [world, os.path.dirname(learned)],
        "existing prior": [world, learned],
        "zero steps": [world, out, "--steps", "0"],
        "bad channels": [world, out, "--channels", "12", "24"],
    }[case]
    assert lp.main(args) == 2
    assert needle in one_error_line(capsys)
    assert not os.path.exists(out)


def test_overwrite_replaces_only_a_learned_prior(world, tmp_path, capsys):
    out = str(tmp_path / "prior")
    small = ["--steps", "2", "--batch-size", "2", "--channels", "8", "16", "--quiet"]
    assert lp.main([world, out, *small]) == 0
    assert lp.main([world, out, "--seed", "1", "--overwrite", *small]) == 0
    assert lp.read_record(out)["seed"] == 1
    assert [n for n in os.listdir(tmp_path) if n != "prior"] == []  # no staging or old copy left beside it
    assert "Learned prior written to" in capsys.readouterr().out


def test_an_interrupted_build_leaves_no_folder(world, tmp_path, monkeypatch):
    out = str(tmp_path / "prior")

    def interrupt(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lp.build_learned_prior(world, out, steps=10, batch_size=2, channels=(8, 16), progress=interrupt)
    assert os.listdir(tmp_path) == []

    copied = []

    def failing_copy(src, dst, **kwargs):  # fails while the folder is being written
        if copied:
            raise OSError("disk on fire")
        copied.append(src)
        return real_copytree(src, dst, **kwargs)

    real_copytree = lp.shutil.copytree
    monkeypatch.setattr(lp.shutil, "copytree", failing_copy)
    with pytest.raises(OSError, match="disk on fire"):
        lp.build_learned_prior(world, out, steps=2, batch_size=2, channels=(8, 16))
    assert os.listdir(tmp_path) == []


def test_a_killed_build_is_cleaned_up_by_the_next_one(world, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{lp.TEMPORARY_PREFIX}{lp._HOST_ID}-{int(dead.stdout)}-0badc0de{lp.STAGING_SUFFIX}"
    (stale / "unet").mkdir(parents=True)
    out = str(tmp_path / "prior")
    lp.build_learned_prior(world, out, steps=2, batch_size=2, channels=(8, 16))
    assert os.listdir(tmp_path) == ["prior"] and is_learned_prior(out)
    with open(os.path.join(out, "model_index.json")) as f:
        assert json.load(f)["unet"] == ["diffusers", "UNet2DConditionModel"]
