#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the CPU: Interval Score Matching text-to-3D with
# Gaussian splats against the toy world, an exact prior built from analytic renders of known objects
# (no downloads). It builds the penguin world into load/toy-penguin once, runs the positive control first
# (the oracle fit: the same splats, cameras and budget trained against the world's true renders,
# lucid-oracle-toy.yaml), then trains with custom/threestudio-lucid/configs/lucid-ism-toy.yaml and prints the
# scores against held-out views, also as fractions of the oracle fit's.
# Outputs: outputs/lucid-ism-toy/a_penguin@<timestamp>/ (save/point_cloud.ply, save/it400-test.mp4,
# save/toy_world_scores.json, save/toy_world_eval.png, ckpts/last.ckpt); the oracle fit's run under
# outputs/lucid-oracle-toy/<object>_oracle_<pid>@<timestamp>/.
# PROMPT="a red cube" OBJECT=cube bash scripts/demo.sh   runs another object; extra args are overrides
# (the oracle fit gets those of the budget and cameras: trainer.max_steps=, seed=, data.*=).
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
MODEL=(system.prompt_processor.prompt="$PROMPT" system.prompt_processor.pretrained_model_name_or_path="$WORLD"
       system.guidance.pretrained_model_name_or_path="$WORLD")
BUDGET=()  # the overrides that change the budget or the cameras apply to the oracle fit too
for arg in "$@"; do case "$arg" in trainer.max_steps=*|seed=*|data.*=*) BUDGET+=("$arg") ;; esac; done
ORACLE_TAG="${OBJECT}_oracle_$$"  # this invocation's own folder, whatever else runs beside it
echo "positive control: the oracle fit on $WORLD (outputs/lucid-oracle-toy/$ORACLE_TAG@<timestamp>)"
"$VENV/bin/lucid-launch" --config custom/threestudio-lucid/configs/lucid-oracle-toy.yaml --train --gpu 0 \
  "${MODEL[@]}" tag="$ORACLE_TAG" \
  ${BUDGET[@]+"${BUDGET[@]}"} 2>&1 | grep -E "^(INFO toy-world scores|error)" || true
ORACLE_SCORES=$(ls -d outputs/lucid-oracle-toy/"$ORACLE_TAG"@*/save/toy_world_scores.json 2>/dev/null | tail -n 1)
if [ -z "$ORACLE_SCORES" ]; then
  echo "error: the oracle fit wrote no scores (see outputs/lucid-oracle-toy/$ORACLE_TAG@*/); run it alone with" \
       "$VENV/bin/lucid-launch --config custom/threestudio-lucid/configs/lucid-oracle-toy.yaml --train ${MODEL[*]}" >&2
  exit 1
fi
exec "$VENV/bin/lucid-launch" --config custom/threestudio-lucid/configs/lucid-ism-toy.yaml --train --gpu 0 \
  "${MODEL[@]}" system.evaluator.oracle_scores="$ORACLE_SCORES" "$@"
