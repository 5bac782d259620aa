#!/usr/bin/env bash
# KA2ER ablation (issue 5): task experts (automatic), plain multi-task fine-tuning and the KA2ER
# student, on the sample tasks split by modality and sequence, evaluated on held-out seeds.
# Both students start from the general model GENERAL (a bundle from scripts/train_general_model.sh) and
# get the same budget (steps, batch, lr).
# Usage: scripts/ablation.sh WORK_DIR GENERAL [EXPERT_STEPS] [STUDENT_STEPS] [DISTILL_WEIGHT]
#   (each stage resumes from its checkpoint if WORK_DIR already has one)
set -euo pipefail
work=$1
general=$2
expert_steps=${3:-400}
student_steps=${4:-500}
distill_weight=${5:-1}
tasks=(Dataset001_MNIT1 Dataset002_MNIT2like Dataset003_CTPhantom Dataset004_MRPhantom)

[ -d "$work/data/${tasks[0]}" ] || ka2er data --out "$work/data" --train 16 --test 2
datasets=() experts=()
for task in "${tasks[@]}"; do
  datasets+=(--dataset "$work/data/$task")
  ka2er train-expert --dataset "$work/data/$task" --out "$work/experts/$task" \
    --steps "$expert_steps" --batch-size 2 --size tiny --seed 0
  experts+=(--expert "$work/experts/$task")
done
common=(--init "$general" --steps "$student_steps" --batch-size 2 --lr 3e-4
        --base-spacing 1.5 --max-spacing 4.0 --seed 0)
ka2er train "${datasets[@]}" --out "$work/multitask" "${common[@]}"
ka2er amalgamate "${datasets[@]}" "${experts[@]}" --out "$work/ka2er" "${common[@]}" \
  --distill-weight "$distill_weight"

bundles=()
for task in "${tasks[@]}"; do bundles+=(--bundle "$work/experts/$task"); done
ka2er evaluate "${bundles[@]}" --bundle "$general" \
  --bundle "$work/multitask" --bundle "$work/ka2er" "${datasets[@]}" \
  --prompts 5 --first auto --out "$work/evaluation"
echo "table: $work/evaluation/comparison.md; plot: $work/evaluation/comparison.png"
