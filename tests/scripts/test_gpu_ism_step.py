"""scripts/gpu_ism_step.py's memory probe and fp16 projection (fast: the probe's bookkeeping on known
allocations, and one probed tiny step), and the real-size rehearsal on the CPU (slow: Stable Diffusion
2.1-base's models with random weights, one ISM step at 512x512, 4 views, 100k Gaussians, fp32;
18.4 GiB peak RSS, 3-10 min on 2 cores)."""
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "gpu_ism_step.py")
MIB = 2**20


@pytest.fixture(scope="module")
def step_script():
    spec = importlib.util.spec_from_file_location("gpu_ism_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mib_floats(n):
    return torch.empty(n * MIB // 4)


def test_probe_follows_each_storage_from_its_op_to_its_free(step_script):
    probe = step_script.StepMemoryProbe(half_models=False)
    with probe:
        a, b = mib_floats(1), mib_floats(2)
        del a
        c = mib_floats(4)
        # views and in-place ops make no storage
        b.add_(1)
        b.view(-1, 2)[0].mul_(2)
        assert probe.live["measured"] == 6 * MIB
        del b, c
    assert probe.live["measured"] == 0
    assert probe.peak["measured"] == 6 * MIB


def test_a_probe_that_fails_stops_counting_and_leaves_the_step_alone(step_script, monkeypatch):
    probe = step_script.StepMemoryProbe(half_models=False)

    def broken(*args):
        raise RuntimeError("no storage here")

    monkeypatch.setattr(probe, "_allocated", broken)
    with probe:
        x = torch.ones(3, requires_grad=True)
        y = (x * 2).sum()  # ops still run and give their results
        with torch.autograd.graph.saved_tensors_hooks(probe.pack, probe.unpack):
            z = (x * x).sum()
        z.backward()
    assert y.item() == 6.0 and torch.equal(x.grad, 2 * torch.ones(3))
    assert probe.failed == "RuntimeError: no storage here"


def test_fp32_made_inside_the_models_counts_half_in_the_projection(step_script):
    probe = step_script.StepMemoryProbe(half_models=True)
    with probe:
        probe.push("unet")
        in_unet = [mib_floats(4), torch.zeros(MIB // 8, dtype=torch.int64)]  # 4 MiB fp32, 1 MiB int64
        probe.pop("unet")
        probe.push("vae-backward")
        in_vae_backward = mib_floats(2)
        probe.pop("vae-backward")
        probe.push("render")
        in_render = mib_floats(8)
        probe.pop("render")
    assert probe.live["measured"] == 15 * MIB
    assert probe.live["projected"] == (2 + 1 + 1 + 8) * MIB
    assert probe.live_by_phase["projected"] == {"unet": 3 * MIB, "vae-backward": MIB, "render": 8 * MIB}
    assert probe.unet_calls == [{"measured": 5 * MIB, "projected": 3 * MIB}]
    del in_unet, in_vae_backward, in_render

    already_half = step_script.StepMemoryProbe(half_models=False)  # bf16/fp16 weights: nothing is halved
    with already_half:
        already_half.push("vae")
        kept = mib_floats(4)
    assert already_half.live == {"measured": 4 * MIB, "projected": 4 * MIB}
    del kept


def test_unet_call_peak_is_the_calls_own_transient(step_script):
    probe = step_script.StepMemoryProbe(half_models=False)
    with probe:
        before = mib_floats(8)  # alive through the call, not the call's
        probe.push("unet")
        h = mib_floats(3)
        h2 = mib_floats(2)
        del h
        out = mib_floats(1)
        probe.pop("unet")
        del h2
    assert probe.unet_calls == [{"measured": 5 * MIB, "projected": 5 * MIB}]
    del before, out


def test_saved_activations_count_each_storage_once_and_no_parameters(step_script):
    linear = torch.nn.Linear(256, 256, bias=False)
    probe = step_script.StepMemoryProbe(half_models=False)
    probe.skip_saved = {step_script.storage_key(linear.weight)}
    with torch.autograd.graph.saved_tensors_hooks(probe.pack, probe.unpack), probe:
        x = torch.randn(1024, 256, requires_grad=True)
        y = linear(x)  # saves x and the weight
        z = x.sin() + y.exp()  # sin saves x again, exp its result
        # torch.tensor from Python data is made by no op the mode sees: adopted when it is saved
        w = torch.tensor([0.5] * 4096, requires_grad=True)
        s = w.cos().sum()
    saved = probe.saved_alive()["measured"]
    assert sum(saved.values()) == x.nbytes + y.nbytes + w.nbytes  # exp's result is y-sized
    (z.sum() + s).backward()
    # backward freed exp's result; x and w are still referenced here
    assert sum(probe.saved_alive()["measured"].values()) == x.nbytes + w.nbytes


def test_projection_is_static_plus_the_peak_of_the_steps_tensors(step_script):
    probe = SimpleNamespace(
        unet_calls=[{"measured": 2 * MIB, "projected": MIB}, {"measured": 6 * MIB, "projected": 3 * MIB}],
        saved_at_backward={"measured": {"vae": 40 * MIB, "render": 10 * MIB},
                           "projected": {"vae": 20 * MIB, "render": 10 * MIB}},
        peak={"measured": 60 * MIB, "projected": 35 * MIB},
        peak_phase={"measured": "backward", "projected": "unet"},
        peak_by_phase={"measured": {"vae": 40 * MIB}, "projected": {"vae": 20 * MIB}},
    )
    static = {"unet": (100 * MIB, 50 * MIB), "gaussians": (7 * MIB, 7 * MIB)}
    p = step_script.summarise_probe(probe, static, True, 1, ("rss", 64 * MIB))
    gib = step_script.gib
    assert p["projected_gib"] == gib((50 + 7 + 35) * MIB)
    assert p["probe_peak_gib"] == gib((100 + 7 + 60) * MIB)
    # the short form: static + saved + the largest UNet call
    assert p["projection_additive_gib"] == gib((50 + 7 + 30 + 3) * MIB)
    assert p["check"]["probe_over_measured"] == round(60 / 64, 3)


def run_step_script(tmp_path, pipeline, *args):
    out = tmp_path / "step.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--pipeline", str(pipeline), *args,
                           "--json", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_probed_step_reports_gradients_phases_and_the_projection(tiny_sd_path, tmp_path):
    s, stdout = run_step_script(tmp_path, tiny_sd_path, "--architecture", "tiny", "--resolution", "64",
                                "--views", "2", "--gaussians", "1500", "--steps", "1", "--warmup", "0")
    (step,) = s["steps"]
    assert s["peak_memory"].startswith("peak RSS") and step["peak_gib"] > 0
    assert s["all_gradients_finite"] is True
    assert {"xyz", "f_dc", "opacity", "scaling", "rotation"} <= {n for n, g in step["gradients"].items() if g["finite"]}
    p = s["memory_probe"]
    assert {"render", "vae", "unet", "backward", "vae-backward", "optimizer"} <= set(p["phases"])
    assert len(p["unet_calls_gib"]) == step["unet_calls"]
    # fp32 here: what the VAE saved counts half in the projection, the renderer's does not
    vae, render = p["saved_activations_gib"]["by_phase"]["vae"], p["saved_activations_gib"]["by_phase"]["render"]
    assert vae["projected"] == pytest.approx(vae["measured"] / 2, abs=2e-4)
    assert render["projected"] == render["measured"] > 0
    assert p["static_gib"]["unet"]["projected"] == pytest.approx(p["static_gib"]["unet"]["measured"] / 2, abs=2e-4)
    assert s["projected_fp16_gpu_gib"] == p["projected_gib"] < p["probe_peak_gib"]
    assert "PROJECTED fp16 GPU memory" in stdout and "assumes:" in stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 3-10 min on 2 shared cores, with the 4.9 GB pipeline built first
def test_real_size_ism_step_on_the_cpu_has_finite_gradients_and_a_sane_projection(tmp_path):
    """One ISM step of LucidDreamer's real size, fp32 on the CPU: it finishes, every gradient of the
    Gaussians and the loss are finite, the UNet runs 2+ times, and the fp16 projection lies between
    the fp16 parameters and what the fp32 step measured."""
    s, _ = run_step_script(tmp_path, tmp_path / "sd21-base", "--architecture", "sd21-base", "--resolution", "512",
                           "--views", "4", "--gaussians", "100000", "--steps", "1", "--warmup", "0")
    (step,) = s["steps"]
    assert s["device"] == "cpu" and s["unet_dtype"] == "torch.float32"
    assert (s["resolution"], s["views"], step["gaussians"]) == (512, 4, 100_000)
    assert step["loss_finite"] and s["all_losses_finite"]
    for name in ("xyz", "f_dc", "opacity", "scaling", "rotation"):
        grad = step["gradients"][name]
        assert grad["finite"] is True and grad["norm"] is not None and grad["norm"] > 0, (name, grad)
    assert s["all_gradients_finite"] is True
    assert step["unet_calls"] >= 2  # ISM: eps at s (plus any inversion steps before it), then the guided one at t

    p = s["memory_probe"]
    fp16_parameters = p["static_gib"]["unet"]["projected"] + p["static_gib"]["vae"]["projected"]
    assert fp16_parameters == pytest.approx((865_910_724 + 83_653_863) * 2 / 2**30, rel=0.01)
    assert fp16_parameters < s["projected_fp16_gpu_gib"] < s["peak_gib"]
    # the fp32 step's tensors as the probe saw them, against the OS's count of the same step
    assert 0.8 < p["check"]["probe_over_measured"] < 1.1, p["check"]
