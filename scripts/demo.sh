#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the CPU: SDS text-to-3D with Gaussian splats,
# driven by the tiny Stable Diffusion pipeline (built once into load/tiny-sd; no downloads).
# Outputs land in outputs/lucid-sds-cpu/<prompt>@<timestamp>/ (save/point_cloud.ply, save/it200-test.mp4,
# ckpts/last.ckpt). Extra arguments are config overrides, e.g. `bash scripts/demo.sh trainer.max_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -f load/tiny-sd/model_index.json ] || "$VENV/bin/lucid-build-tiny-sd" load/tiny-sd
exec "$VENV/bin/lucid-launch" --config custom/threestudio-lucid/configs/lucid-sds-cpu.yaml --train --gpu 0 \
  system.prompt_processor.prompt="${PROMPT:-a DSLR photo of a corgi}" "$@"
