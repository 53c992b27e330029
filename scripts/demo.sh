#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the CPU: Interval Score Matching text-to-3D with
# Gaussian splats against the toy world, an exact prior built from analytic renders of known objects
# (no downloads). It builds the penguin world into load/toy-penguin once, trains with
# custom/threestudio-lucid/configs/lucid-ism-toy.yaml, and prints the scores against held-out views.
# Outputs: outputs/lucid-ism-toy/a_penguin@<timestamp>/ (save/point_cloud.ply, save/it400-test.mp4,
# save/toy_world_scores.json, save/toy_world_eval.png, ckpts/last.ckpt).
# PROMPT="a red cube" OBJECT=cube bash scripts/demo.sh   runs another object; extra args are overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# OpenMP threads that spin-wait slow every CPU op 10-20x when another process shares the cores
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OBJECT=${OBJECT:-penguin}
PROMPT=${PROMPT:-a penguin}
WORLD=load/toy-$OBJECT
# (re)built when missing or made before the world named its own components (no "_lucid_evaluator")
grep -qs '"_lucid_evaluator"' "$WORLD/model_index.json" \
  || "$VENV/bin/lucid-build-toy-world" "$WORLD" --objects "$OBJECT" --bandwidth 0.2
exec "$VENV/bin/lucid-launch" --config custom/threestudio-lucid/configs/lucid-ism-toy.yaml --train --gpu 0 \
  system.prompt_processor.prompt="$PROMPT" \
  system.prompt_processor.pretrained_model_name_or_path="$WORLD" \
  system.guidance.pretrained_model_name_or_path="$WORLD" "$@"
