#!/usr/bin/env bash
# Recipe of the shipped models (ka2er_core/bundles/student and ka2er_core/bundles/moe), on a 2-core CPU:
#  1. the KA2ER ablation (scripts/ablation.sh): task experts, plain multi-task fine-tuning and the
#     KA2ER student, all from the first general model (ka2er_core/bundles/demo), same budget;
#  2. SAM-Med3D-MoE on top of the KA2ER student: task members fine-tuned on MNI T1 and on the CT
#     phantom, a gate over student + members (all frozen) trained on all four tasks;
#  3. held-out evaluation of the student, each member alone and the moe at 1/3/5 prompts.
# Usage: scripts/train_shipped_models.sh [WORK_DIR] [EXPERT_STEPS] [STUDENT_STEPS] [MEMBER_STEPS] [GATE_STEPS]
set -euo pipefail
work=${1:-ka2er-shipped}
expert_steps=${2:-600}
student_steps=${3:-500}
member_steps=${4:-250}
gate_steps=${5:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
tasks=(Dataset001_MNIT1 Dataset002_MNIT2like Dataset003_CTPhantom Dataset004_MRPhantom)

"$root/scripts/ablation.sh" "$work" "$expert_steps" "$student_steps" 0.1
datasets=()
for task in "${tasks[@]}"; do datasets+=(--dataset "$work/data/$task"); done
student="$work/ka2er"
ka2er finetune --bundle "$student" --dataset "$work/data/Dataset001_MNIT1" --out "$work/members/mni-t1" \
  --steps "$member_steps" --batch-size 2 --lr 3e-4 --seed 0
ka2er finetune --bundle "$student" --dataset "$work/data/Dataset003_CTPhantom" --out "$work/members/ct-phantom" \
  --steps "$member_steps" --batch-size 2 --lr 3e-4 --seed 0
ka2er train-gate --general "$student" --member "$work/members/mni-t1" --member "$work/members/ct-phantom" \
  "${datasets[@]}" --out "$work/moe" --steps "$gate_steps" --batch-size 2 --seed 0
ka2er evaluate --bundle "$student" --bundle "$work/members/mni-t1" --bundle "$work/members/ct-phantom" \
  --bundle "$work/moe" "${datasets[@]}" --prompts 5 --first auto --out "$work/evaluation-moe"
echo "KA2ER table: $work/evaluation/comparison.md; MoE table: $work/evaluation-moe/comparison.md"
