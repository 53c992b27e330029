"""``lucid-import-luciddreamer``: LucidDreamer's configs become plugin configs key by key.

The nine released files are test data (``data_luciddreamer/released_configs.py``); converting each
must give the config shipped in ``configs/luciddreamer/``, every mapped key must reach the output, every
other key of a file gets one header line, and bad input is one error line.
"""
import ast
import copy
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from data_luciddreamer.released_configs import NAMES, released_config
from threestudio_lucid import luciddreamer_import as ldi
from threestudio_lucid.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "custom", "threestudio-lucid", "configs", "luciddreamer")
PP, GUI, GEO = "system.prompt_processor", "system.guidance", "system.geometry"


def get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def converted(data, **kwargs):
    return ldi.convert(data, source="test.yaml", **kwargs)


def with_options(base_name="axe", **sections):
    """A released config with some options changed: with_options(GuidanceParams={"perpneg": True})."""
    data = released_config(base_name)
    for section, values in sections.items():
        if section in ldi.SECTIONS:
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


# ---------------------------------------------------------------------------------------------------
# the nine released configs
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_converting_a_released_config_gives_the_shipped_config(name):
    conv = ldi.convert(released_config(name), source=f"configs/{name}.yaml")
    path = os.path.join(SHIPPED, f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        shipped_text = f.read()
    assert yaml.safe_load(shipped_text) == yaml.safe_load(ldi.render(conv, f"configs/{name}.yaml"))
    # byte for byte: the shipped file is the converter's output, not a hand edit of it
    assert ldi.render(conv, f"configs/{name}.yaml") == shipped_text


def test_the_shipped_configs_are_the_nine_released_ones():
    assert sorted(f[:-5] for f in os.listdir(SHIPPED) if f.endswith(".yaml")) == sorted(NAMES)


# ---------------------------------------------------------------------------------------------------
# every key: mapped (it reaches the output) or one header line
# ---------------------------------------------------------------------------------------------------
def _perturbed(key):
    """Another valid value of a mapped key."""
    explicit = {
        "model_key": "someone/another-model", "pretrained_model_path": "/data/start.ply",
        "textual_inversion_path": "/data/token.safetensors", "LoRA_path": "/data/lora.safetensors",
        "init_shape": "box", "init_num_pts": 200000, "t_range": [0.05, 0.4], "xs_inv_steps": 3,
        "base_model_key": "someone/base", "is_safe_tensor": True, "workspace": "elsewhere",
        "use_control_net_iter": 1000, "controlnet_model_key": "someone/other-depth",
    }
    if key.name in explicit:
        return explicit[key.name]
    d = key.default
    if isinstance(d, bool):
        return not d
    if isinstance(d, int):
        return d * 2 if d else 1
    if isinstance(d, float):
        return d * 0.5 if d else 0.25
    if isinstance(d, list):
        return [d[0] * 0.5 - 1, d[1] * 0.5 + 1]
    if isinstance(d, str):
        return d + " x"
    raise AssertionError(f"no perturbation for {key.where}")


MAPPED_KEYS = [k for k in ldi.KEYS if k.kind == ldi.MAPPED and k.name != "guidance"]


@pytest.mark.parametrize("key", MAPPED_KEYS, ids=lambda k: k.where)
def test_every_mapped_option_reaches_the_plugin_config(key):
    # a context in which every option matters: Perp-Neg on, Point-E init, a single-file model for base_model_key
    context = {"GuidanceParams": {"perpneg": True}}
    if key.name == "base_model_key":
        context = {"GuidanceParams": {"perpneg": True, "is_safe_tensor": True, "model_key": "/m/model.safetensors"}}
    if "control" in key.name:  # the ControlNet on from iteration 500
        context = {"GuidanceParams": {"perpneg": True, "controlnet_model_key": "someone/depth"},
                   "OptimizationParams": {"use_control_net_iter": 500}}
    base = with_options(**context)
    changed = copy.deepcopy(base)
    if key.section == ldi.TOP:
        changed[key.name] = _perturbed(key)
    else:
        changed.setdefault(key.section, {})[key.name] = _perturbed(key)
    assert converted(changed).config != converted(base).config, key.where


def test_the_guidance_must_be_stable_diffusion_as_in_luciddreamer():
    with pytest.raises(ConfigError, match=r"GuidanceParams\.guidance is 'IF'.*only 'SD'"):
        converted(with_options(GuidanceParams={"guidance": "IF"}))


NOT_MAPPED = [k for k in ldi.KEYS if k.kind != ldi.MAPPED]


@pytest.mark.parametrize("key", NOT_MAPPED, ids=lambda k: k.where)
def test_every_option_that_is_not_mapped_is_named_in_one_header_line(key):
    data = released_config("hamburger")
    value = {"num_train_timesteps": 500}.get(key.name, key.default if key.default is not None else "x")
    if key.section == ldi.TOP:
        data[key.name] = value
    else:
        data.setdefault(key.section, {})[key.name] = value
    conv = converted(data)
    lines = [n for n in conv.notes if n.startswith(f"{key.where}=")]
    assert len(lines) == 1, (key.where, conv.notes)
    assert "\n" not in lines[0]
    assert f"#   {lines[0]}\n" in ldi.render(conv, "test.yaml")


def test_a_default_the_plugin_does_not_reproduce_is_named_too():
    notes = converted({"GuidanceParams": {"model_key": "m/m"}}).notes
    for where in ("ModelParams.batch=10", "GuidanceParams.vis_interval=100", "GenerateCamParams.render_45=True",
                  "OptimizationParams.save_process=True"):
        (line,) = [n for n in notes if n.startswith(where)]
        assert "(LucidDreamer default)" in line and "not supported" in line
    # ... but not one the plugin does reproduce, nor one LucidDreamer never reads
    assert not [n for n in notes if n.startswith(("PipelineParams.", "GuidanceParams.accum", "GenerateCamParams.SSAA"))]


def test_a_value_that_changes_the_training_is_a_warning():
    conv = converted(with_options(GenerateCamParams={"SSAA": 2}, ModelParams={"shs_aug_ratio": 0.3}))
    assert any(w.startswith("GenerateCamParams.SSAA=2: not supported") for w in conv.warnings)
    assert any(w.startswith("ModelParams.shs_aug_ratio=0.3: not supported") for w in conv.warnings)
    # the released files warn about nothing: all they set is mapped, reproduced or output-only
    for name in NAMES:
        assert converted(released_config(name)).warnings == [], name


def test_controlnet_maps_to_the_plugins_depth_controlnet_once_a_run_would_reach_it():
    # LucidDreamer's default switch (iteration 10,000,000) is after the run: no ControlNet, nothing said
    quiet = converted(with_options(GuidanceParams={"controlnet_ratio": 0.3, "controlnet_model_key": "some/depth"}))
    assert "controlnet_model_name_or_path" not in quiet.config["system"]["guidance"]
    assert not [n for n in quiet.notes if "ControlNet" in n]
    # switched on at iteration 1000 for 30% of the steps: a C() step from 0 to 0.3 at 1000
    on = converted(with_options(GuidanceParams={"controlnet_ratio": 0.3, "controlnet_model_key": "some/depth"},
                                OptimizationParams={"use_control_net_iter": 1000}))
    guidance = on.config["system"]["guidance"]
    assert guidance["controlnet_model_name_or_path"] == "some/depth"
    assert guidance["controlnet_ratio"] == [1000, 0.0, 0.3, 1001]
    (line,) = [n for n in on.notes if "use_control_net_iter" in n]
    assert "never loads its ControlNet" in line and "applies it as intended" in line
    # on, but no ControlNet named: one line
    with pytest.raises(ldi.ConfigError, match=r"controlnet_model_key is not set but OptimizationParams.use_control_net_iter=1000"):
        converted(with_options(OptimizationParams={"use_control_net_iter": 1000}))


# ---------------------------------------------------------------------------------------------------
# mappings that are more than a rename
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("white", [True, False])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.66, 1.0])
def test_background_augmentation_gives_each_view_luciddreamers_probabilities(ratio, white):
    """LucidDreamer: with probability r a view's background is replaced, half by a random colour, half
    by black. Plugin: random colour with random_aug_prob, else the colour, inverted with bg_inversion_prob."""
    cfg = converted(with_options(ModelParams={"bg_aug_ratio": ratio, "white_background": white})).config
    bg, inv = cfg["system"]["background"], cfg["system"]["renderer"]["bg_inversion_prob"]
    p = bg["random_aug_prob"] if bg["random_aug"] else 0.0
    colour = "white" if white else "black"
    other = "black" if white else "white"
    ours = {"random": p, colour: (1 - p) * (1 - inv), other: (1 - p) * inv}
    theirs = {"random": ratio / 2, "black": ratio / 2 + (0 if white else 1 - ratio), "white": (1 - ratio) if white else 0.0}
    for outcome in ("random", "black", "white"):
        assert ours.get(outcome, 0.0) == pytest.approx(theirs[outcome], abs=1e-12), (outcome, ours, theirs)
    assert bg["color"] == ([1.0] * 3 if white else [0.0] * 3)


def luciddreamer_perpneg_weights(azimuth, negative_w=-2.0, front_decay=2.0, side_decay=10.0):
    """train.py's get_pos_neg_text_embeddings weights for the two negatives (test data, from its code):
    front half (front, side); back half (side, front)."""
    if -90 <= azimuth < 90:
        r = 1 - abs(azimuth) / 90
        front = 0.0 if r > 0.8 else math.exp(-r * front_decay) * negative_w
        side = 0.0 if r < 0.2 else math.exp(-(1 - r) * side_decay) * negative_w
        return r, (front, side)
    r = 2 - abs(azimuth) / 90
    side = 0.0 if r > 0.8 else math.exp(-r * side_decay) * negative_w / 2
    return r, (side, negative_w)


@pytest.mark.parametrize("options", [{}, {"negative_w": -3.0, "front_decay_factor": 1.0, "side_decay_factor": 5.0}])
def test_perp_neg_weights_follow_luciddreamers_curves(options):
    from threestudio_lucid.host.models.prompt_processors.base import shifted_exponential_decay

    pp = converted(with_options(GuidanceParams={"perpneg": True, **options})).config["system"]["prompt_processor"]
    ld_options = {"negative_w": options.get("negative_w", -2.0), "front_decay": options.get("front_decay_factor", 2.0),
                  "side_decay": options.get("side_decay_factor", 10.0)}

    def f(name, r):
        return float(shifted_exponential_decay(*pp[name], torch.tensor(r)))

    compared = 0
    for azimuth in range(-179, 180, 7):
        r, theirs = luciddreamer_perpneg_weights(azimuth, **ld_options)
        if not 0.2 <= r <= 0.8:
            continue  # LucidDreamer's cut-offs, which threestudio's curves do not have (documented)
        ours = (-f("perp_neg_f_fs", r), -f("perp_neg_f_sf", 1 - r)) if abs(azimuth) < 90 else \
            (-f("perp_neg_f_sb", r), -f("perp_neg_f_fsb", r))
        assert ours == pytest.approx(theirs, rel=1e-6), azimuth
        compared += 1
    assert compared > 20


def test_point_e_keeps_luciddreamers_point_count_and_other_shapes_their_radius():
    geo = converted(released_config("axe")).config["system"]["geometry"]
    assert (geo["init_type"], geo["init_num_pts"], geo["init_prompt"]) == ("point_e", 4096 * 20, "A flag.")
    geo = converted(with_options(GenerateCamParams={"init_num_pts": 3000000})).config["system"]["geometry"]
    assert geo["init_num_pts"] == 4096 * 600 and geo["max_num"] == 4096 * 600
    for shape, ours in (("sphere", "sphere_solid"), ("box", "box")):
        geo = converted(with_options(GenerateCamParams={"init_shape": shape})).config["system"]["geometry"]
        assert (geo["init_type"], geo["init_radius"], geo["init_num_pts"]) == (ours, 0.5, 100000)
    with pytest.raises(ConfigError, match=r"GenerateCamParams\.init_shape='scene' is not supported: use sphere, box or pointe"):
        converted(with_options(GenerateCamParams={"init_shape": "scene"}))


def test_learning_rates_become_log_linear_schedules_over_the_run():
    geo = converted(with_options(OptimizationParams={"iterations": 3000, "position_lr_init": 0.0002})).config
    assert geo["trainer"]["max_steps"] == 3000
    g = geo["system"]["geometry"]
    assert g["position_lr"] == [0, 0.0002, 0.0000016, 3000] and g["scaling_lr"] == [0, 0.005, 0.001, 3000]
    assert g["scene_extent"] == 3.5  # LucidDreamer's spatial_lr_scale = default_radius


def test_null_inversion_steps_reach_t_zero_as_in_luciddreamer():
    for xs_delta_t, steps in ((200, 5), (100, 10), (300, 4)):
        gui = converted(with_options(GuidanceParams={"xs_inv_steps": None, "xs_delta_t": xs_delta_t})).config["system"]["guidance"]
        assert gui["xs_inv_steps"] == steps and steps * xs_delta_t >= 999


def test_an_empty_prompt_is_left_for_the_command_line():
    conv = converted(with_options(GuidanceParams={"text": ""}))
    assert get(conv.config, f"{PP}.prompt") == "???"
    assert any(n.startswith(f"{PP}.prompt is required") for n in conv.notes)


# ---------------------------------------------------------------------------------------------------
# personalisation and paths
# ---------------------------------------------------------------------------------------------------
def test_ts_lora_leaves_the_token_file_to_the_user_once_for_both_components():
    conv = converted(released_config("ts_lora"))
    cfg = conv.config
    assert cfg["system"]["prompt_processor_type"] == "lucid-stable-diffusion-prompt-processor"
    assert get(cfg, f"{GUI}.lora_path") == "???" and get(cfg, f"{GUI}.lora_scale") == 1.0
    assert get(cfg, f"{PP}.lora_path") == "${system.guidance.lora_path}" and get(cfg, f"{PP}.lora_scale") == 1.0
    assert conv.required == [f"{GUI}.lora_path"]
    (note,) = [n for n in conv.notes if n.startswith(f"{GUI}.lora_path is required")]
    assert "./custom_example/lora/Taylor_Swift/step_inv_1000.safetensors" in note and "--luciddreamer-root" in note


def test_luciddreamer_root_makes_its_relative_paths_absolute(tmp_path):
    token = tmp_path / "custom_example" / "lora" / "Taylor_Swift" / "step_inv_1000.safetensors"
    token.parent.mkdir(parents=True)
    token.write_bytes(b"")
    conv = converted(released_config("ts_lora"), luciddreamer_root=str(tmp_path))
    assert get(conv.config, f"{PP}.lora_path") == get(conv.config, f"{GUI}.lora_path") == str(token)
    assert conv.required == [] and conv.warnings == []


def test_textual_inversion_and_single_file_checkpoints_use_the_personalisation_keys():
    conv = converted(with_options(GuidanceParams={
        "textual_inversion_path": ["/t/a.safetensors", "/t/b.bin"], "is_safe_tensor": True,
        "model_key": "/ckpt/dreamshaper.safetensors", "base_model_key": "stabilityai/stable-diffusion-2-1-base"}))
    cfg = conv.config
    assert cfg["system"]["prompt_processor_type"] == "lucid-stable-diffusion-prompt-processor"
    for component in (PP, GUI):
        assert get(cfg, f"{component}.textual_inversion_path") == ["/t/a.safetensors", "/t/b.bin"]
        assert get(cfg, f"{component}.pretrained_model_name_or_path") == "/ckpt/dreamshaper.safetensors"
        assert get(cfg, f"{component}.base_model") == "stabilityai/stable-diffusion-2-1-base"


def test_a_single_file_checkpoint_without_base_model_gets_luciddreamers_fallback_and_a_warning():
    conv = converted(with_options(GuidanceParams={"is_safe_tensor": True, "model_key": "/ckpt/x.safetensors"}))
    assert get(conv.config, f"{PP}.base_model") == "stabilityai/stable-diffusion-v1-5"
    assert any("base_model_key is not set" in w for w in conv.warnings)


# ---------------------------------------------------------------------------------------------------
# bad input: one line naming the file, the key and the fix
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, pattern", [
    ({"GuidanceParams": {"model_key": "m/m", "delta_T": 50}},
     r"^test\.yaml: GuidanceParams\.delta_T is not a LucidDreamer option \(did you mean 'delta_t'\?\): fix or remove it, or pass --allow-unknown"),
    ({"GuidanceParams": {"model_key": "m/m"}, "OptimisationParams": {}},
     r"^test\.yaml: OptimisationParams is not a LucidDreamer option \(did you mean 'OptimizationParams'\?\)"),
    ({"GuidanceParams": {"model_key": "m/m"}, "OptimizationParams": {"position_lr_init": "1e-4"}},
     r"OptimizationParams\.position_lr_init must be a number, got '1e-4' \(PyYAML reads .* write 1\.0e-4\)"),
    ({"GuidanceParams": {"model_key": "m/m", "t_range": [0.02]}}, r"GuidanceParams\.t_range must be two numbers \[low, high\]"),
    ({"GuidanceParams": {"model_key": "m/m", "perpneg": "yes"}}, r"GuidanceParams\.perpneg must be true or false, got 'yes'"),
    ({"GuidanceParams": {"text": "a cat"}}, r"GuidanceParams\.model_key is not set .*: set it, e\.g\. model_key: "),
    ({"GuidanceParams": ["model_key"]}, r"GuidanceParams must be a mapping of options"),
    ({"GuidanceParams": {"model_key": "m/m"}, "GenerateCamParams": {"init_shape": "pointe"}},
     r"GenerateCamParams\.init_prompt is empty but init_shape is pointe"),
])
def test_bad_input_is_one_error_line(data, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        converted(data)
    assert "\n" not in str(info.value)


def test_allow_unknown_turns_an_unknown_key_into_a_warning_and_a_header_line():
    conv = converted({"GuidanceParams": {"model_key": "m/m", "delta_T": 50}}, allow_unknown=True)
    line = "GuidanceParams.delta_T: not a LucidDreamer option (did you mean 'delta_t'?); left out (--allow-unknown)"
    assert line in conv.warnings and line in conv.notes


# ---------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------
def test_the_command_writes_the_config_and_never_overwrites_without_force(tmp_path, capsys):
    source = tmp_path / "ts_lora.yaml"
    source.write_text(yaml.safe_dump(released_config("ts_lora")))
    out = tmp_path / "out.yaml"
    assert ldi.main([str(source), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"give {GUI}.lora_path on the command line" in err and "error" not in err
    assert out.read_text() == open(os.path.join(SHIPPED, "ts_lora.yaml"), encoding="utf-8").read()
    out.write_text("mine")
    assert ldi.main([str(source), "-o", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: -o ") and "--force" in line and out.read_text() == "mine"
    assert ldi.main([str(source), "-o", str(out), "--force"]) == 0
    assert out.read_text().startswith("# LucidDreamer's ts_lora.yaml")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_the_command_reports_bad_input_in_one_line(tmp_path, capsys):
    source = tmp_path / "bad.yaml"
    source.write_text("GuidanceParams:\n  model_key: m/m\n  xs_delta: 100\n")
    assert ldi.main([str(source)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line == (f"error: {source}: GuidanceParams.xs_delta is not a LucidDreamer option (did you mean 'xs_delta_t'?): "
                    "fix or remove it, or pass --allow-unknown to convert without it")
    assert ldi.main([str(tmp_path / "missing.yaml")]) == 2
    assert "no such LucidDreamer config file" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy: this test imported it already
def test_the_module_runs_as_a_script(tmp_path, monkeypatch, capsys):
    """``python -m threestudio_lucid.luciddreamer_import`` (its __main__ path, run in this process)."""
    import runpy

    source = tmp_path / "crown.yaml"
    source.write_text(yaml.safe_dump(released_config("crown")))
    monkeypatch.setattr(sys, "argv", ["luciddreamer_import", str(source)])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("threestudio_lucid.luciddreamer_import", run_name="__main__", alter_sys=False)
    assert info.value.code == 0
    assert capsys.readouterr().out == open(os.path.join(SHIPPED, "crown.yaml"), encoding="utf-8").read()


@pytest.mark.slow
def test_python_dash_m_runs_the_converter(tmp_path):
    source = tmp_path / "crown.yaml"
    source.write_text(yaml.safe_dump(released_config("crown")))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "threestudio_lucid.luciddreamer_import", str(source)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == open(os.path.join(SHIPPED, "crown.yaml"), encoding="utf-8").read()


def test_setup_py_installs_the_console_script():
    tree = ast.parse(open(os.path.join(REPO, "setup.py"), encoding="utf-8").read())
    (scripts,) = [ast.literal_eval(node.value)["console_scripts"] for node in ast.walk(tree)
                  if isinstance(node, ast.keyword) and node.arg == "entry_points"]
    (entry,) = [s for s in scripts if s.startswith("lucid-import-luciddreamer=")]
    module, function = entry.split("=", 1)[1].split(":")
    assert module == "threestudio_lucid.luciddreamer_import" and getattr(ldi, function) is ldi.main


def test_the_docs_table_is_the_converters_table():
    with open(os.path.join(REPO, "docs", "luciddreamer.md"), encoding="utf-8") as f:
        docs = f.read()
    assert ldi.mapping_table() in docs
    assert len(ldi.KEYS) == len({(k.section, k.name) for k in ldi.KEYS})


def test_the_point_e_install_line_is_the_geometrys():
    from threestudio_lucid.geometry import initializers

    assert ldi.POINT_E_INSTALL == initializers.POINT_E_INSTALL


def test_a_list_of_relative_token_files_is_required_once_and_each_file_named():
    conv = converted(with_options(GuidanceParams={"textual_inversion_path": ["./a.safetensors", "/abs/b.bin"]}))
    assert get(conv.config, f"{GUI}.textual_inversion_path") == "???"
    assert get(conv.config, f"{PP}.textual_inversion_path") == "${system.guidance.textual_inversion_path}"
    assert conv.required == [f"{GUI}.textual_inversion_path"]
    assert [n for n in conv.notes if "is required" in n and "'./a.safetensors'" in n]


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_luciddreamer_file_is_one_line_naming_it(tmp_path, text, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert ldi.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: the file is empty") and err.count("\n") == 1, err
