"""The small CPU training runs the reliability tests launch: a config of the plugin on the tiny
pipeline at 16x16 with a few hundred Gaussians; later ``key=value`` overrides win."""
import os

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid", "configs"))


def cpu_run_args(config, tiny_sd_path, steps, *extra, gaussians=200):
    return [
        "--config", os.path.join(CONFIGS, config), "--train",
        "system.prompt_processor.prompt=a small cube",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
        "data.n_val_views=1", "data.n_test_views=2", f"system.geometry.init_num_pts={gaussians}",
        f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1",
        *extra,
    ]


def the_error(code, stderr):
    """The one ``error:`` line of a failed launch, after checking how it failed (exit 2, no traceback)."""
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]
