"""Small end-to-end runs of the tiny pipeline for the system's tests: 16 px, 300 Gaussians, a few steps (in the
working folder of the ``run_dir`` fixture, conftest.py)."""
import os

CPU_CONFIG = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "custom", "threestudio-lucid",
                                          "configs", "lucid-sds-cpu.yaml"))


def small_run_args(tiny_sd_path, steps, *extra):
    return [
        "--config", CPU_CONFIG, "--train",
        "system.prompt_processor.prompt=a small cube",
        f"system.prompt_processor.pretrained_model_name_or_path={tiny_sd_path}",
        f"system.guidance.pretrained_model_name_or_path={tiny_sd_path}",
        "data.width=16", "data.height=16", "data.eval_width=16", "data.eval_height=16",
        "data.n_val_views=1", "data.n_test_views=4",
        "system.geometry.init_num_pts=300",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.log_every_n_steps=1",
        f"checkpoint.every_n_train_steps={steps}",
        *extra,
    ]


def trial_dirs(root):
    base = os.path.join(root, "outputs", "lucid-sds-cpu")
    return sorted(os.path.join(base, d) for d in os.listdir(base))
