#!/usr/bin/env bash
# Side-by-side runs: threestudio-lucid's guidance vs threestudio's built-in baselines on the same prompts.
# Run from a threestudio checkout with this plugin in custom/threestudio-lucid (GPU), or replace
# `python launch.py` by `lucid-launch` to use the bundled host (the lucid configs only).
# Without network access, add system.prompt_processor.pretrained_model_name_or_path=... and
# system.guidance.pretrained_model_name_or_path=... pointing at local diffusers folders.
# Rasterizer: the lucid configs use system.renderer.backend=auto (gsplat, then inria, on CUDA where
# installed); append e.g. system.renderer.backend=inria to render with the original 3DGS rasterizer.
set -euo pipefail
LAUNCH=${LAUNCH:-python launch.py}
GPU=${GPU:-0}
PROMPTS=(
  "a DSLR photo of a corgi wearing a beret"
  "a zoomed out DSLR photo of a baby bunny sitting on top of a stack of pancakes"
)
for prompt in "${PROMPTS[@]}"; do
  # threestudio baselines (need a threestudio checkout)
  $LAUNCH --config configs/dreamfusion-sd.yaml --train --gpu "$GPU" system.prompt_processor.prompt="$prompt"
  $LAUNCH --config configs/prolificdreamer.yaml --train --gpu "$GPU" system.prompt_processor.prompt="$prompt"
  # threestudio's own SDS on the plugin's Gaussian system (same system, threestudio's guidance)
  $LAUNCH --config configs/gaussian-threestudio-sds.yaml --train --gpu "$GPU" system.prompt_processor.prompt="$prompt"
  # threestudio-lucid
  for cfg in lucid-sds lucid-ism lucid-vsd lucid-esd; do
    $LAUNCH --config "custom/threestudio-lucid/configs/$cfg.yaml" --train --gpu "$GPU" \
      system.prompt_processor.prompt="$prompt"
  done
done
