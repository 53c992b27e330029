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
    assert set(fields) == {"negative_prompt", "model", "guidance_scale", "max_steps", "seed", "resolution"}
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
