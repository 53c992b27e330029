"""scripts/guidance_stability.py on the tiny world of conftest.py (32 px, its striped ball; exact prior) with the
real SDS and ISM guidances: the update splits exactly into its classifier and denoising/trajectory terms, the
perturbations are what they say, SDS's denoising term (which pulls towards the prior's renders, here the truth) is
measured restoring, the words follow the numbers, and a folder that is not a world is named with the command that
builds one."""
import json
import os

import pytest
import torch
from repo_scripts import load_repo_script


@pytest.fixture(scope="module")
def gs():
    return load_repo_script("scripts/guidance_stability.py")


@pytest.fixture(scope="module")
def inputs(gs, world, tmp_path_factory):
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("prompt-cwd"))  # the prompt processor's cache is relative to it
    try:
        return gs.world_inputs(str(world))
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("method", ["sds", "ism"])
def test_update_splits_exactly_into_classifier_and_rest(gs, world, inputs, method):
    from claims_diagnostics import sweep

    truth, cams, prompt_utils, caption, _ = inputs
    assert caption == "a blue ball"
    guidance = gs.build_guidance(method, str(world))
    probes = gs.with_terms(sweep(guidance, truth, prompt_utils, cams, 2, 2, seed=0))
    for draws in probes.values():
        for p in draws:
            assert float(p["residual"].max()) < 1e-3
            torch.testing.assert_close(p["classifier"] + p["rest"], p["update"])
            # the classifier term is g (eps_cond - eps_uncond) scaled by the same k as the whole update
            assert p["guidance_scale"] == (guidance.cfg.guidance_scale + (1.0 if method == "sds" else 0.0))


def test_perturbations(gs):
    flat = torch.full((2, 16, 16, 3), 0.5)
    torch.testing.assert_close(gs.perturbed(flat, "blur", 0.1, 0), flat)  # a blur leaves a flat image
    edge = torch.zeros(1, 16, 16, 3)
    edge[:, :, 8:] = 1.0
    blurred = gs.perturbed(edge, "blur", 0.1, 0)
    assert 0.0 < float(blurred[0, 0, 7, 0]) < 1.0 and float(blurred[0, 0, 0, 0]) == 0.0
    flat64 = torch.full((2, 64, 64, 3), 0.5)
    coloured = gs.perturbed(flat64, "colour", 0.1, 0)
    change = coloured - flat64
    assert 0.02 < float(change.std()) < 0.1  # an amplitude-0.1 field, bilinearly smoothed
    # smooth: neighbouring pixels differ far less than the field does
    assert float((change[:, 1:] - change[:, :-1]).abs().mean()) < 0.2 * float(change.abs().mean())
    torch.testing.assert_close(gs.perturbed(flat64, "colour", 0.1, 0), coloured)  # seeded
    with pytest.raises(ValueError, match="unknown perturbation 'noise'"):
        gs.perturbed(flat, "noise", 0.1, 0)


def test_sds_denoising_term_restores_on_the_exact_prior(gs, world, inputs):
    truth, cams, prompt_utils, _, _ = inputs
    m = gs.measure(gs.build_guidance("sds", str(world)), truth, prompt_utils, cams, n_timesteps=2, n_draws=2, seed=0,
                   amplitude=0.1)
    # the exact prior's x0 estimate is (near) its stored renders, the truth: the denoising term points back to it
    for kind in gs.PERTURBATIONS:
        assert m["restore"][kind]["rest"] > 0.5, m["restore"]
        assert gs.verdict_word(m["restore"][kind]["rest"], m["half_gap"][kind]["rest"], m["floor"]) == "restores"
    assert m["residual"] < 1e-3
    assert m["floor"] == pytest.approx(1 / (3 * 16 * 16) ** 0.5)


def test_verdict_words_follow_the_numbers(gs):
    assert gs.verdict_word(0.5, 0.01, 0.02) == "restores"
    assert gs.verdict_word(-0.5, 0.01, 0.02) == "amplifies"
    assert gs.verdict_word(0.05, 0.01, 0.02) == "neutral"  # inside 3 floors
    assert gs.verdict_word(0.3, 0.4, 0.02) == "neutral"  # inside its half gap
    assert gs.verdict_word(-0.07, 0.01, 0.02) == "amplifies"


def test_main_writes_the_report_and_names_a_missing_world(gs, world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    report, numbers = tmp_path / "stability.md", tmp_path / "stability.json"
    assert gs.main([str(world), "--methods", "ism", "--timesteps", "1", "--draws", "2", "--report", str(report),
                    "--json", str(numbers), "--optimise", "2"]) == 0
    text = report.read_text()
    import imageio.v2 as imageio

    figure = imageio.imread(tmp_path / "stability.png")
    assert figure.shape == (2 * 32 + 2, 3 * 32, 3)  # the truth and ISM's image, 3 held-out views each
    assert "penguins: ISM from grey, 2 steps" in text
    assert "## penguins (exact prior; 'a blue ball', variant striped)" in text
    for term in ("update", "classifier", "trajectory"):
        assert f"| ISM | {term} |" in text
    saved = json.loads(numbers.read_text())
    assert set(saved["results"][0]["methods"]["ism"]["restore"]) == {"colour", "blur"}
    assert gs.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "scripts/claims_benchmark.py" in err
