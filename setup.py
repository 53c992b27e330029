"""Installs the plugin folder ``custom/threestudio-lucid`` as the package ``threestudio_lucid``.

The same folder is also importable by threestudio's own ``custom/`` loader (module name
``threestudio-lucid``), which is why every import inside it is relative.
"""
import os

from setuptools import setup

PLUGIN_DIR = os.path.join("custom", "threestudio-lucid")


def plugin_packages():
    packages = {}
    for root, dirs, files in os.walk(PLUGIN_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        if "__init__.py" not in files:
            continue
        rel = os.path.relpath(root, PLUGIN_DIR)
        name = "threestudio_lucid" if rel == "." else "threestudio_lucid." + rel.replace(os.sep, ".")
        packages[name] = root
    return packages


PACKAGES = plugin_packages()

setup(
    name="threestudio-lucid",
    version="0.1.0",
    description="threestudio extension: text-to-3D with Gaussian splats and ISM / ESD / VSD / SDS guidance",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=sorted(PACKAGES),
    package_dir=PACKAGES,
    package_data={"threestudio_lucid": ["configs/*.yaml", "configs/luciddreamer/*.yaml", "renderer/cpu_kernel/*.cpp"],
                  "threestudio_lucid.app": ["static/*"]},
    include_package_data=True,
    install_requires=[
        # torch is pinned by scripts/setup.sh (a CPU wheel); here any 2.x satisfies the import
        "torch>=2.1",
        "numpy",
        "scipy",
        # lower bounds measured by scripts/test_lowest_versions.sh (pins in scripts/lowest-versions.txt)
        "pytorch-lightning>=2.0",  # 2.0 hook signatures, e.g. on_before_optimizer_step(optimizer)
        "omegaconf>=2.2.3",  # structured configs with bare `dict` fields (ExperimentConfig)
        "diffusers>=0.26",  # diffusers.training_utils.cast_training_params (VSD/ESD LoRA)
        "transformers>=4.27",  # diffusers 0.26 imports transformers.is_torchvision_available
        "peft>=0.7",  # LoraConfig(init_lora_weights="gaussian"); passes diffusers' LoRA scale arg through
        "safetensors",
        "jaxtyping",
        "beartype",
        "packaging",
        "plyfile",
        "imageio>=2.28",
        "imageio-ffmpeg",
        "matplotlib",
        "tqdm",
        "ninja",  # builds the fast CPU rasterizer kernel on first use
        # --export: lucid-gaussian-mesh-exporter (marching cubes, topology-preserving decimation, UV charts)
        "trimesh",
        "PyMCubes",
        "pymeshlab",
        "xatlas",
    ],
    extras_require={
        # gsplat: its pure-torch reference code checks the gsplat adapter on the CPU (it needs no CUDA
        # to import; pinned because the tests call its torch implementation's private functions)
        # playwright drives the installed Chromium (scripts/setup.sh) in lucid-app's browser tests
        "test": ["pytest>=7", "pytest-timeout", "pytest-xdist>=3", "gsplat==1.5.3", "ray>=2.9", "aiohttp>=3.9", "playwright>=1.40"],
        # lucid-sweep runs its runs as Ray tasks
        "sweep": ["ray>=2.9"],
        # lucid-app: the web page (an aiohttp server)
        "app": ["aiohttp>=3.9"],
        # CUDA rasterizers; diff-gaussian-rasterization is installed from the user's own checkout
        "gpu": ["gsplat>=1.5"],
    },
    entry_points={
        "console_scripts": [
            "lucid-launch=threestudio_lucid.host.launch:main",
            "lucid-build-tiny-sd=threestudio_lucid.tiny_pipeline:main",
            "lucid-build-toy-world=threestudio_lucid.toy_world.pipeline:main",
            "lucid-train-toy-prior=threestudio_lucid.toy_world.learned_prior:main",
            "lucid-sweep=threestudio_lucid.sweep:main",
            "lucid-report=threestudio_lucid.report:main",
            "lucid-app=threestudio_lucid.app.cli:main",
            "lucid-import-luciddreamer=threestudio_lucid.luciddreamer_import:main",
        ]
    },
)
