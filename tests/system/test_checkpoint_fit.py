"""A checkpoint of another guidance, geometry or system: ``resume=`` (the system's on_load_checkpoint,
which Lightning calls before its strict load) and ``system.weights=`` (the system's load_weights)
end in one ConfigError line naming what the checkpoint holds, what the config expects and the way to
take the Gaussians alone; what fits still loads (another number of Gaussians, checkpoints written
before the component record, a VSD checkpoint into ESD)."""
import os

import pytest
import torch

from threestudio_lucid import compat
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.system import checkpoint_fit

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs"))


@pytest.fixture(scope="module")
def build(tmp_path_factory, tiny_sd_path):
    """``build(kind, *overrides)``: a lucid-gaussian-system of ``lucid-<kind>-cpu.yaml`` on the tiny pipeline."""
    work = tmp_path_factory.mktemp("checkpoint-fit")
    old = os.getcwd()
    os.chdir(work)

    def build(kind, *extra):
        cfg = compat.load_config(os.path.join(CONFIGS, f"lucid-{kind}-cpu.yaml"), cli_args=[
            "system.prompt_processor.prompt=a small cube",
            f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
            f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
            "system.geometry.init_num_pts=64", f"exp_root_dir={work / 'outputs'}", *extra,
        ])
        return compat.find(cfg.system_type)(cfg.system)

    yield build
    os.chdir(old)


@pytest.fixture(scope="module")
def systems(build):
    return {kind: build(kind) for kind in ("ism", "vsd")}


def checkpoint_of(system, record=True, rng=True, gaussians=None):
    """What Lightning's save_checkpoint writes for ``system`` (the parts these checks read)."""
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in system.state_dict().items()}
    if gaussians is not None:  # another number of Gaussians, as after densification
        for key in checkpoint_fit.GAUSSIAN_ROW_KEYS:
            state[key] = torch.randn(gaussians, *state[key].shape[1:])
    checkpoint = {"state_dict": state, "epoch": 0, "global_step": 7}
    system.on_save_checkpoint(checkpoint)
    if not rng:
        del checkpoint[checkpoint_fit.RNG_KEY]
    if not record:
        del checkpoint[checkpoint_fit.COMPONENTS_KEY]
    return checkpoint


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("source, target", [("vsd", "ism"), ("ism", "vsd")])
def test_resume_of_another_guidance_names_both_and_the_weights_way(systems, source, target):
    with pytest.raises(ConfigError) as error:
        checkpoint_fit.check_resume(systems[target], checkpoint_of(systems[source]), "/runs/x/ckpts/last.ckpt")
    line = one_line(error)
    assert f"holds a lucid-gaussian-system run with lucid-{source}-guidance" in line
    assert f"the config expects lucid-{target}-guidance" in line
    assert "guidance.lora_layers.*" in line
    assert "drop resume= and add system.weights=/runs/x/ckpts/last.ckpt system.weights_ignore_modules=[guidance]" in line


def test_the_system_hook_refuses_before_the_strict_load(systems):
    """on_load_checkpoint is what Lightning calls first, under either host."""
    with pytest.raises(ConfigError, match="does not fit this config"):
        systems["ism"].on_load_checkpoint(checkpoint_of(systems["vsd"]))


def test_checkpoints_without_the_record_are_named_from_their_keys(systems):
    with pytest.raises(ConfigError) as error:
        checkpoint_fit.check_resume(systems["ism"], checkpoint_of(systems["vsd"], record=False), None)
    line = one_line(error)
    assert "written before checkpoints named their components" in line
    assert "trained LoRA" in line and "VSD or ESD" in line


def test_a_nerf_checkpoint_of_threestudio_is_named_and_cannot_give_gaussians(systems):
    nerf = {"state_dict": {
        "geometry.encoding.encoding.params": torch.zeros(64),
        "geometry.density_network.layers.0.weight": torch.zeros(4, 4),
        "material.network.layers.0.weight": torch.zeros(4, 4),
        "background.env_color": torch.zeros(3),
        "renderer.estimator.occs": torch.zeros(8),
    }, "epoch": 0, "global_step": 100}
    with pytest.raises(ConfigError) as error:
        checkpoint_fit.check_resume(systems["ism"], nerf, "nerf.ckpt")
    line = one_line(error)
    assert "a checkpoint not written by threestudio-lucid" in line
    assert "not Gaussians (geometry.encoding.*, geometry.density_network.*" in line
    assert "init_type=ply" in line
    with pytest.raises(ConfigError, match="holds no state_dict"):
        checkpoint_fit.check_resume(systems["ism"], {"epoch": 0}, "other.pt")


def test_another_sh_degree_says_which_to_set(build, systems):
    degree2 = build("ism", "system.geometry.sh_degree=2")
    with pytest.raises(ConfigError) as error:
        checkpoint_fit.check_resume(degree2, checkpoint_of(systems["ism"]), "a.ckpt")
    assert "holds Gaussians of sh_degree 0" in one_line(error) and "system.geometry.sh_degree=0" in one_line(error)
    with pytest.raises(ConfigError) as error:  # and another guidance besides
        checkpoint_fit.check_resume(degree2, checkpoint_of(systems["vsd"]), "a.ckpt")
    assert "system.geometry.sh_degree=0 system.weights_ignore_modules=[guidance]" in one_line(error)


def test_what_fits_still_resumes(build, systems):
    ism = systems["ism"]
    # another number of Gaussians, no record, no densification statistics: a checkpoint of an older version
    old = checkpoint_of(ism, record=False, gaussians=90)
    del old["state_dict"]["geometry._extra_state"]
    assert checkpoint_fit.check_resume(ism, old, "old.ckpt") is None
    fresh = build("ism")
    fresh.on_load_checkpoint(old)
    fresh.load_state_dict(old["state_dict"], strict=True)  # Lightning's own load, strict
    assert fresh.geometry.num_points == 90
    # VSD and ESD hold the same parameters: the resume goes on, with a note
    esd = build("esd")
    note = checkpoint_fit.check_resume(esd, checkpoint_of(systems["vsd"]), "v.ckpt")
    assert "guidance lucid-vsd-guidance -> lucid-esd-guidance" in note


def test_the_checkpoint_records_its_components(systems):
    checkpoint = {}
    systems["vsd"].on_save_checkpoint(checkpoint)
    assert checkpoint["lucid_rng_states"]["global"]  # the RNG record stays
    assert checkpoint[checkpoint_fit.COMPONENTS_KEY] == {
        "system": "lucid-gaussian-system", "geometry": "lucid-gaussian-splatting", "material": "no-material",
        "background": "solid-color-background", "renderer": "lucid-gaussian-rasterizer",
        "guidance": "lucid-vsd-guidance", "sh_degree": 0,
    }


# ---- system.weights ----
def test_weights_of_a_vsd_run_give_an_ism_config_its_gaussians_and_a_fresh_guidance(build, systems, tmp_path):
    vsd = checkpoint_of(systems["vsd"], gaussians=90)
    path = str(tmp_path / "vsd.ckpt")
    torch.save(vsd, path)
    ism = build("ism", f"system.weights={path}", "system.weights_ignore_modules=[guidance]")
    assert ism.geometry.num_points == 90
    for key in checkpoint_fit.GAUSSIAN_ROW_KEYS:
        assert torch.equal(ism.state_dict()[key], vsd["state_dict"][key]), key
    assert not any(k.startswith("guidance.") for k in ism.state_dict())
    # the same weights into a VSD config: the Gaussians arrive, its LoRA starts fresh
    fresh_lora = systems["vsd"].guidance.state_dict()
    vsd_config = build("vsd", f"system.weights={path}", "system.weights_ignore_modules=[guidance]")
    assert vsd_config.geometry.num_points == 90
    lora = vsd_config.guidance.state_dict()
    assert lora.keys() == fresh_lora.keys()
    assert all(torch.equal(lora[k], fresh_lora[k]) for k in lora if k.endswith("lora_B.weight"))  # peft: B = 0


def test_weights_that_do_not_fit_are_one_line_not_silently_skipped(build, systems, tmp_path):
    path = str(tmp_path / "vsd.ckpt")
    torch.save(checkpoint_of(systems["vsd"]), path)
    with pytest.raises(ConfigError) as error:
        build("ism", f"system.weights={path}")
    line = one_line(error)
    assert f"system.weights='{path}' does not fit this config" in line
    assert "add system.weights_ignore_modules=[guidance]" in line
    nerf = str(tmp_path / "nerf.ckpt")
    torch.save({"state_dict": {"geometry.encoding.encoding.params": torch.zeros(8)}, "epoch": 0, "global_step": 1}, nerf)
    with pytest.raises(ConfigError, match="not Gaussians"):
        build("ism", f"system.weights={nerf}", "system.weights_ignore_modules=[guidance]")


def test_missing_or_damaged_weights_are_one_line(build, tmp_path):
    with pytest.raises(ConfigError, match=r"system.weights='.*nope.ckpt' does not exist"):
        build("ism", f"system.weights={tmp_path / 'nope.ckpt'}")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(b"PK\x03\x04 not a whole archive")
    with pytest.raises(ConfigError, match=r"damaged.ckpt' is not a complete checkpoint"):
        build("ism", f"system.weights={damaged}")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        build("ism", f"system.weights={plain}")
