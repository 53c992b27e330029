"""The toy world's pretrained VSD/ESD estimator (issue 27 (a)): ``build_toy_world`` trains ``estimator_unet/`` on the
world's renders with VSD's camera condition (``denoiser_training``), saves its camera embedding with it, and VSD/ESD
train it further as it is. A one-object world at 16 px with 8 views keeps the pretraining to seconds."""
import json
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.toy_world.denoiser_training import (
    epsilon_mse,
    train_denoiser,
    vsd_camera_condition,
    world_denoiser_data,
)
from threestudio_lucid.toy_world.pipeline import (
    ESTIMATOR_BATCH_SIZE,
    ESTIMATOR_LR,
    ESTIMATOR_SUBFOLDER,
    build_estimator_unet,
    build_toy_world,
)

CAMERA_WORLD = dict(objects=["penguin"], image_size=16, n_azimuths=8, elevations_deg=[15.0], n_eval_views=4,
                    bandwidth=0.2)
STEPS = 250
MODERATE_T = (400, 500)
DRAWS = 32  # noise draws per render: the camera's effect at 250 steps is a few percent of the error


@pytest.fixture(scope="module")
def camera_world(tmp_path_factory, toy_cache_dir):
    return build_toy_world(tmp_path_factory.mktemp("camera-world") / "world", cache_dir=toy_cache_dir,
                           estimator_steps=STEPS, **CAMERA_WORLD)


@pytest.fixture(scope="module")
def camera_data(camera_world, toy_cache_dir):
    from diffusers import DDIMScheduler

    data = world_denoiser_data(camera_world, cache_dir=toy_cache_dir)
    return data, DDIMScheduler.from_pretrained(camera_world, subfolder="scheduler").alphas_cumprod


@pytest.fixture(scope="module")
def estimator(camera_world):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(camera_world, subfolder=ESTIMATOR_SUBFOLDER).eval()


def make(kind, world, **cfg):
    base = {"pretrained_model_name_or_path": world, "pretrained_model_name_or_path_lora": world,
            "lora_unet_subfolder": ESTIMATOR_SUBFOLDER, "train_full_estimator": True}
    return compat.find(kind)({**base, **cfg})


def camera_effect(unet, data, abar, t=400):
    """``|eps(true camera) - eps(zero camera)| / |eps(zero camera)|`` on the renders noised at ``t``."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(data.latents.shape, generator=g)
    tt = torch.full((len(data),), t)
    a = abar[tt].view(-1, 1, 1, 1).float()
    x_t = a.sqrt() * data.latents + (1 - a).sqrt() * noise
    text = data.caption_embeddings[data.name_caption_index()]
    with torch.no_grad():
        cam = unet(x_t, tt, encoder_hidden_states=text, class_labels=data.cameras).sample
        free = unet(x_t, tt, encoder_hidden_states=text, class_labels=torch.zeros_like(data.cameras)).sample
    return float((cam - free).norm() / free.norm())


def test_the_estimator_is_saved_with_its_camera_embedding_and_a_record(camera_world):
    with open(os.path.join(camera_world, ESTIMATOR_SUBFOLDER, "config.json")) as f:
        config = json.load(f)
    assert config["class_embed_type"] == "projection" and config["projection_class_embeddings_input_dim"] == 16
    with open(os.path.join(camera_world, "toy_world.json")) as f:
        record = json.load(f)["estimator"]
    assert record["steps"] == STEPS and record["loss_last"] < 0.5 * record["loss_first"] and record["seconds"] > 0


def test_pretrained_estimator_uses_the_camera(camera_data, estimator):
    """At moderate t the render's own camera predicts the noise better than no camera and than the opposite one, and
    the camera moves the prediction clearly more than in the same net trained without ever seeing a camera."""
    data, abar = camera_data
    views = data.render_set
    opposite = vsd_camera_condition(views.elevation, views.azimuth + 180.0, views.distance)
    own = epsilon_mse(estimator, data, abar, MODERATE_T, cameras=data.cameras, draws=DRAWS)
    free = epsilon_mse(estimator, data, abar, MODERATE_T, cameras=torch.zeros_like(data.cameras), draws=DRAWS)
    wrong = epsilon_mse(estimator, data, abar, MODERATE_T, cameras=opposite, draws=DRAWS)
    for t, e_own, e_free, e_wrong in zip(MODERATE_T, own, free, wrong):
        # measured: the null camera 0.5-1.4% worse, the opposite one 2-5% worse (same noise for all three)
        assert e_own * 1.003 < e_free and e_own * 1.02 < e_wrong, (t, e_own, e_free, e_wrong)

    blind = build_estimator_unet(data.latents.shape[-1], data.caption_embeddings.shape[-1], seed=0)
    train_denoiser(blind, data, abar, STEPS, batch_size=ESTIMATOR_BATCH_SIZE, lr=ESTIMATOR_LR, seed=0,
                   camera_drop_prob=1.0)  # the same training with the camera always the null one
    assert camera_effect(estimator, data, abar) > 1.5 * camera_effect(blind, data, abar)


@pytest.mark.parametrize("kind", ["lucid-vsd-guidance", "lucid-esd-guidance"])
def test_vsd_and_esd_train_the_pretrained_estimator_as_it_is(kind, camera_world, camera_data, estimator, in_tmp_cwd):
    from threestudio_lucid.data.progressive_camera import ProgressiveCameraConfig, ProgressiveCameraIterableDataset

    guidance = make(kind, camera_world)
    unet = guidance.unet_lora
    assert guidance.camera_embedding is unet.class_embedding  # its own, not a fresh one
    for name, p in estimator.class_embedding.state_dict().items():
        assert torch.equal(guidance.camera_embedding.state_dict()[name], p)
    assert {id(p) for p in guidance.camera_embedding.parameters()} <= {id(p) for p in guidance.parameters()}
    assert all(p.dtype == torch.float32 and p.requires_grad for p in unet.parameters())

    # the cameras it was pretrained with are what VSD reads from the toy configs' data module for the same views
    data, _ = camera_data
    views = data.render_set
    c2w = []
    for e, a, d in zip(views.elevation.tolist(), views.azimuth.tolist(), views.distance.tolist()):
        cfg = ProgressiveCameraConfig(batch_size=1, height=16, width=16, radius_range=(d, d), max_radius_range=(d, d),
                                      polar_range=(90 - e, 90 - e), max_polar_range=(90 - e, 90 - e),
                                      azimuth_range=(a, a), max_azimuth_range=(a, a), fovy_range=(0.61, 0.61),
                                      max_fovy_range=(0.61, 0.61), jitter_pose=False, progressive_view=False)
        c2w.append(ProgressiveCameraIterableDataset(cfg).collate({})["c2w"])
    c2w = torch.cat(c2w)
    assert torch.equal(guidance.camera_condition(torch.eye(4).expand_as(c2w), c2w), data.cameras)

    pp = compat.find("stable-diffusion-prompt-processor")({"prompt": "a penguin",
                                                           "pretrained_model_name_or_path": camera_world})()
    b = 2
    out = guidance(torch.rand(b, 16, 16, 3), pp, views.elevation[:b], views.azimuth[:b], views.distance[:b],
                   mvp_mtx=torch.eye(4).repeat(b, 1, 1), c2w=c2w[:b])
    assert torch.isfinite(out["loss_vsd"]) and torch.isfinite(out["loss_lora"])
    out["loss_lora"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guidance.camera_embedding.parameters())


def test_a_world_built_without_pretraining_keeps_the_random_estimator(tmp_path, toy_cache_dir, in_tmp_cwd):
    world = build_toy_world(tmp_path / "world", cache_dir=toy_cache_dir, estimator_steps=0, **CAMERA_WORLD)
    with open(os.path.join(world, ESTIMATOR_SUBFOLDER, "config.json")) as f:
        assert json.load(f)["class_embed_type"] is None
    with open(os.path.join(world, "toy_world.json")) as f:
        assert "estimator" not in json.load(f)
    guidance = make("lucid-vsd-guidance", world)  # a fresh camera embedding, as before
    assert guidance.unet_lora.class_embedding is guidance.camera_embedding
    pp = compat.find("stable-diffusion-prompt-processor")({"prompt": "a penguin",
                                                           "pretrained_model_name_or_path": world})()
    c2w = vsd_camera_condition(torch.tensor([15.0]), torch.tensor([90.0]), torch.tensor([4.0])).reshape(1, 4, 4)
    out = guidance(torch.rand(1, 16, 16, 3), pp, torch.tensor([15.0]), torch.tensor([90.0]), torch.tensor([4.0]),
                   mvp_mtx=torch.eye(4)[None], c2w=c2w)
    assert torch.isfinite(out["loss_vsd"]) and torch.isfinite(out["loss_lora"])


def test_a_class_embedding_that_is_not_a_camera_is_refused(tmp_path, camera_world, in_tmp_cwd):
    import shutil

    from diffusers import UNet2DConditionModel

    world = tmp_path / "world"
    shutil.copytree(camera_world, world)
    config = UNet2DConditionModel.load_config(str(world / ESTIMATOR_SUBFOLDER))
    config.update(class_embed_type="projection", projection_class_embeddings_input_dim=12)
    shutil.rmtree(world / ESTIMATOR_SUBFOLDER)
    UNet2DConditionModel.from_config(config).save_pretrained(str(world / ESTIMATOR_SUBFOLDER))
    with pytest.raises(ConfigError, match="already has a class embedding"):
        make("lucid-vsd-guidance", str(world))
