"""A form and a config text become the launcher's argument list: the form's options that differ from
the config as dotlist overrides, values read back by OmegaConf exactly as typed."""
import os

import pytest
from omegaconf import OmegaConf

from threestudio_lucid.app import catalog
from threestudio_lucid.app.commands import (FormError, dotlist_value, form_overrides, launch_argv,
                                            live_view_overrides, override)

from .conftest import CONFIGS


def text_of(name):
    with open(os.path.join(CONFIGS, name), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("prompt", [
    "a penguin", "a cat: sitting", "1984", "#1 fan", "it's", "${oc.env:HOME}", "a, b", "[a]", "{x: 1}", "yes", "null",
    "a \\ b", "a \\${x}", "'quoted'", '"double"', "- dash", "@home", "a=b", "~", "",
])
def test_a_value_reads_back_exactly_as_typed(prompt):
    cfg = OmegaConf.from_dotlist([override("system.prompt_processor.prompt", prompt)])
    assert OmegaConf.to_container(cfg, resolve=True)["system"]["prompt_processor"]["prompt"] == prompt
    assert dotlist_value("a penguin") == "a penguin"  # plain text stays as a person writes it


def test_only_the_options_that_differ_from_the_config_become_overrides(tmp_path):
    text = text_of("lucid-sds-toy.yaml")
    fields = catalog.fields_of(catalog.read_yaml_text(text))
    assert set(fields) == {"init_prompt", "negative_prompt", "model", "guidance_scale", "max_steps", "seed", "resolution"}
    form = {name: f["value"] for name, f in fields.items()}
    form.update(prompt="a penguin", guidance_scale="6.5", max_steps="20", model="/worlds/toy", resolution="32")
    out = form_overrides(text, form, str(tmp_path))
    assert out == [
        "system.prompt_processor.prompt=a penguin",
        "system.prompt_processor.pretrained_model_name_or_path=/worlds/toy",
        "system.guidance.pretrained_model_name_or_path=/worlds/toy",
        "trainer.max_steps=20",
        "data.width=32", "data.height=32", "data.eval_width=32", "data.eval_height=32",
        f"exp_root_dir={tmp_path}",
    ]
    argv = launch_argv(None, "cfg.yaml", "train", "cpu", out)
    assert argv[0].endswith("lucid-launch") and argv[1:6] == ["--config", "cfg.yaml", "--train", "--gpu", "0"]
    assert "system.prompt_processor.prompt=a penguin" in argv  # one argument, no shell


def test_each_method_shows_its_own_options():
    def names(config):
        return set(catalog.fields_of(catalog.read_yaml_text(text_of(config))))

    assert {"delta_t", "xs_delta_t"} <= names("lucid-ism-toy.yaml") and "lambda_coeff" not in names("lucid-ism-toy.yaml")
    assert "lambda_coeff" in names("lucid-esd-toy.yaml") and "guidance_scale_lora" not in names("lucid-esd-toy.yaml")
    assert "guidance_scale_lora" in names("lucid-vsd-toy.yaml") and "delta_t" not in names("lucid-vsd-toy.yaml")
    ism = catalog.fields_of(catalog.read_yaml_text(text_of("lucid-ism.yaml")))
    assert ism["delta_t"]["value"] == 80 and ism["xs_delta_t"]["value"] == 200 and ism["resolution"]["value"] == 512
    assert ism["model"]["value"] == "stabilityai/stable-diffusion-2-1-base"


def test_bad_form_values_are_one_line_errors(tmp_path):
    text = text_of("lucid-sds-toy.yaml")
    cases = [
        ({"prompt": ""}, "prompt: give the text to generate from"),
        ({"prompt": "a\npenguin"}, "prompt: one line only"),
        ({"prompt": "a penguin", "max_steps": "abc"}, "steps 'abc' is not a number"),
        ({"prompt": "a penguin", "max_steps": "1.5"}, "steps '1.5' must be a whole number"),
        ({"prompt": "a penguin", "guidance_scale": "nan"}, "guidance scale 'nan' is not a finite number"),
        ({"prompt": "a penguin", "resolution": "0"}, "resolution 0 must be >= 1"),
    ]
    for form, message in cases:
        with pytest.raises(FormError) as info:
            form_overrides(text, form, str(tmp_path))
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FormError, match="not valid YAML"):
        form_overrides("a: [", {"prompt": "x"}, str(tmp_path))
    with pytest.raises(FormError, match="use Resume on a stopped run"):
        form_overrides(text + "\nresume: /some/other.ckpt\n", {"prompt": "x"}, str(tmp_path))


def test_the_plugins_runs_write_live_splats_unless_the_config_says_otherwise():
    for name in ("lucid-ism-toy.yaml", "lucid-sds.yaml", os.path.join("luciddreamer", "axe.yaml")):
        assert live_view_overrides(text_of(name)) == ["system.live_ply_every_n_steps=1"]
    off = text_of("lucid-sds-toy.yaml").replace("system:\n", "system:\n  live_ply_every_n_steps: 0\n", 1)
    assert live_view_overrides(off) == []  # the config's own choice stands
    baseline = "name: dreamfusion-sd\nsystem_type: dreamfusion-system\nsystem: {}\n"
    assert live_view_overrides(baseline) == []  # threestudio's systems have no such option


def test_the_catalog_offers_every_plugin_config_and_threestudios_with_a_checkout(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "launch.py").write_text("")
    (tmp_path / "configs" / "dreamfusion-sd.yaml").write_text(
        "name: dreamfusion-sd\nsystem_type: dreamfusion-system\nsystem:\n  guidance_type: stable-diffusion-guidance\n")
    found = catalog.build_catalog(str(tmp_path))
    ids = [e.id for e in found.entries]
    for method in ("sds", "ism", "vsd", "esd"):
        for suffix in ("", "-cpu", "-toy"):
            assert f"lucid/lucid-{method}{suffix}" in ids
    assert "lucid/luciddreamer/axe" in ids
    baseline = found.get("threestudio/dreamfusion-sd")
    assert baseline.method == "SDS (threestudio)" and not baseline.plugin and ids[-1] == baseline.id
    assert catalog.default_config_id(found, on_gpu=False) == "lucid/lucid-ism-toy"
    assert catalog.default_config_id(found, on_gpu=True) == "lucid/lucid-ism"


def test_an_init_prompt_starts_from_point_e_and_an_empty_one_keeps_the_configs_init(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "point_e_installed", lambda: True)
    text = text_of("lucid-ism.yaml")
    field = catalog.fields_of(catalog.read_yaml_text(text))["init_prompt"]
    assert field["value"] is None and "sphere_solid" in field["placeholder"] and "note" not in field
    tail = [f"exp_root_dir={tmp_path}"]
    assert form_overrides(text, {"prompt": "a cat", "init_prompt": "a cat: sitting"}, str(tmp_path)) == [
        "system.prompt_processor.prompt=a cat", "system.geometry.init_type=point_e",
        'system.geometry.init_prompt="a cat: sitting"', *tail]  # quoted as every value
    for empty in ("", "  ", None):
        assert form_overrides(text, {"prompt": "a cat", "init_prompt": empty}, str(tmp_path)) == [
            "system.prompt_processor.prompt=a cat", *tail]
    # LucidDreamer's configs start from Point-E themselves: their init prompt is filled in, and kept
    # as it is adds nothing; another text replaces it
    axe = text_of(os.path.join("luciddreamer", "axe.yaml"))
    assert catalog.fields_of(catalog.read_yaml_text(axe))["init_prompt"]["value"] == "A flag."
    assert "system.geometry.init_type=point_e" not in form_overrides(axe, {"prompt": "an axe", "init_prompt": "A flag."}, str(tmp_path))
    assert form_overrides(axe, {"prompt": "an axe", "init_prompt": "an axe"}, str(tmp_path))[1:3] == [
        "system.geometry.init_type=point_e", "system.geometry.init_prompt=an axe"]
    assert catalog.config_prompt(catalog.read_yaml_text(axe)) == "Viking axe, fantasy, weapon, blender, 8k, HDR."
    assert catalog.config_prompt(catalog.read_yaml_text(text)) is None  # the plugin's: ???


def test_without_point_e_the_option_says_so_and_a_point_e_start_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "point_e_installed", lambda: False)
    text = text_of("lucid-ism-toy.yaml")
    assert "needs point-e" in catalog.fields_of(catalog.read_yaml_text(text))["init_prompt"]["note"]
    assert form_overrides(text, {"prompt": "a cat", "init_prompt": ""}, str(tmp_path))[0] == "system.prompt_processor.prompt=a cat"
    with pytest.raises(FormError) as info:
        form_overrides(text, {"prompt": "a cat", "init_prompt": "a cat"}, str(tmp_path))
    assert str(info.value).startswith("init prompt (Point-E): Point-E is not installed here") and "\n" not in str(info.value)
    with pytest.raises(FormError, match="set init_type: sphere_solid in the config"):
        form_overrides(text_of(os.path.join("luciddreamer", "axe.yaml")), {"prompt": "an axe"}, str(tmp_path))


def test_the_init_prompt_is_shown_only_where_the_geometry_has_one():
    baseline = ("name: dreamfusion-sd\nsystem_type: dreamfusion-system\nsystem:\n  geometry_type: implicit-volume\n"
                "  geometry: {radius: 2.0}\n  guidance_type: stable-diffusion-guidance\n")
    assert "init_prompt" not in catalog.fields_of(catalog.read_yaml_text(baseline))
    # a config that sets the key itself has it, whatever its geometry
    assert "init_prompt" in catalog.fields_of(catalog.read_yaml_text(baseline.replace("radius: 2.0", "init_prompt: a cat")))
    for name in ("lucid-sds-toy.yaml", "lucid-vsd.yaml", os.path.join("luciddreamer", "bagel.yaml")):
        assert "init_prompt" in catalog.fields_of(catalog.read_yaml_text(text_of(name)))
