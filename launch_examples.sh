#!/usr/bin/env bash
# Side-by-side runs: threestudio-lucid's guidance vs threestudio's built-in baselines on the same prompts.
# Run it from a threestudio checkout whose custom/threestudio-lucid is this plugin (see README, "Inside
# threestudio"):
#   bash custom/threestudio-lucid/../../launch_examples.sh        (or the path of this repo's copy)
#
# GPU (default): threestudio's NeRF baselines (dreamfusion-sd, prolificdreamer), threestudio's own SDS on
#   the plugin's Gaussian system, and the plugin's four guidances, full length, Stable Diffusion 2.1-base.
#   Without network access, add system.prompt_processor.pretrained_model_name_or_path=... and
#   system.guidance.pretrained_model_name_or_path=... pointing at local diffusers folders.
# DEVICE=cpu: the same comparison a reviewer can run on a CPU in a few minutes: threestudio's
#   stable-diffusion-guidance on lucid-gaussian-system next to lucid-{sds,ism,vsd,esd}, all on the tiny
#   pipeline (load/tiny-sd, built here if missing; random weights, so the images are noise: this checks
#   that both sides run through threestudio's own launch.py, not quality). threestudio's NeRF baselines
#   need tiny-cuda-nn and are GPU-only. scripts/threestudio_cpu/ stands in for threestudio's GPU-only
#   imports and patches launch.py's accelerator at run time; STEPS=... sets the length (default 20).
# LAUNCH="lucid-launch" runs the lucid configs on the bundled host instead (no threestudio needed).
# Rasterizer: the lucid configs use system.renderer.backend=auto (gsplat, then inria, on CUDA where
# installed); append e.g. system.renderer.backend=inria to render with the original 3DGS rasterizer.
set -euo pipefail
REPO=$(cd "$(dirname "$0")" && pwd)
LAUNCH=${LAUNCH:-python launch.py}
GPU=${GPU:-0}
DEVICE=${DEVICE:-gpu}
BASELINE="$REPO/configs/gaussian-threestudio-sds.yaml"

if [ "$DEVICE" = cpu ]; then
  STEPS=${STEPS:-20}
  export LUCID_THREESTUDIO_CPU=1 THREESTUDIO_DIR=${THREESTUDIO_DIR:-$PWD} HF_HUB_OFFLINE=1
  export PYTHONPATH="$REPO/scripts/threestudio_cpu${PYTHONPATH:+:$PYTHONPATH}"
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
  [ -f load/tiny-sd/model_index.json ] || lucid-build-tiny-sd load/tiny-sd
  prompt="a DSLR photo of a corgi wearing a beret"
  short=(trainer.max_steps="$STEPS" trainer.val_check_interval="$STEPS" data.n_test_views=8)
  $LAUNCH --config "$BASELINE" --train --gpu "$GPU" system.prompt_processor.prompt="$prompt" "${short[@]}" \
    system.prompt_processor.pretrained_model_name_or_path=load/tiny-sd \
    system.guidance.pretrained_model_name_or_path=load/tiny-sd system.guidance.half_precision_weights=false \
    data.batch_size=2 data.width=32 data.height=32 data.eval_width=64 data.eval_height=64 \
    system.geometry.init_num_pts=2000
  for cfg in lucid-sds-cpu lucid-ism-cpu lucid-vsd-cpu lucid-esd-cpu; do
    $LAUNCH --config "custom/threestudio-lucid/configs/$cfg.yaml" --train --gpu "$GPU" \
      system.prompt_processor.prompt="$prompt" "${short[@]}"
  done
  exit 0
fi

PROMPTS=(
  "a DSLR photo of a corgi wearing a beret"
  "a zoomed out DSLR photo of a baby bunny sitting on top of a stack of pancakes"
)
for prompt in "${PROMPTS[@]}"; do
  # threestudio baselines (need a threestudio checkout)
  $LAUNCH --config configs/dreamfusion-sd.yaml --train --gpu "$GPU" system.prompt_processor.prompt="$prompt"
  $LAUNCH --config configs/prolificdreamer.yaml --train --gpu "$GPU" system.prompt_processor.prompt="$prompt"
  # threestudio's own SDS on the plugin's Gaussian system (same system, threestudio's guidance)
  $LAUNCH --config "$BASELINE" --train --gpu "$GPU" system.prompt_processor.prompt="$prompt"
  # threestudio-lucid
  for cfg in lucid-sds lucid-ism lucid-vsd lucid-esd; do
    $LAUNCH --config "custom/threestudio-lucid/configs/$cfg.yaml" --train --gpu "$GPU" \
      system.prompt_processor.prompt="$prompt"
  done
done
