#!/usr/bin/env bash
# Recipe of the shipped models, ka2er_core/bundles/demo (the KA2ER student, the default) and
# ka2er_core/bundles/moe (SAM-Med3D-MoE over it), on a 2-core CPU:
#  0. the general promptable model (scripts/train_general_model.sh), unless WORK_DIR/general exists;
#  1. the KA2ER ablation (scripts/ablation.sh): task experts, plain multi-task fine-tuning and the
#     KA2ER student, both students from the general model with the same budget;
#  2. task members fine-tuned from the KA2ER student on white matter alone, one on MNI T1 and one on
#     MNI T2-like (the other targets weighted 0), and a gate over student + members (all frozen)
#     trained on all four tasks: the moe bundle;
#  3. held-out evaluation of the student, each member alone and the moe at 1/3/5 prompts;
#  4. the two bundles copied into the package (bundle.json and weights; the model cards stay).
# Usage: scripts/train_shipped_models.sh WORK_DIR [EXPERT_STEPS] [STUDENT_STEPS] [MEMBER_STEPS] [GATE_STEPS]
set -euo pipefail
work=$1
expert_steps=${2:-400}
student_steps=${3:-400}
member_steps=${4:-400}
gate_steps=${5:-6000}
root=$(cd "$(dirname "$0")/.." && pwd)
tasks=(Dataset001_MNIT1 Dataset002_MNIT2like Dataset003_CTPhantom Dataset004_MRPhantom)

[ -f "$work/general/bundle.json" ] || "$root/scripts/train_general_model.sh" "$work"
"$root/scripts/ablation.sh" "$work" "$work/general" "$expert_steps" "$student_steps" 0.1
datasets=()
for task in "${tasks[@]}"; do datasets+=(--dataset "$work/data/$task"); done
student="$work/ka2er"
white_matter_only=(--target-weight brain=0 --target-weight "grey matter=0" --target-weight "other brain=0")
for pair in "Dataset001_MNIT1:mni-t1-wm" "Dataset002_MNIT2like:mni-t2-wm"; do
  ka2er finetune --bundle "$student" --dataset "$work/data/${pair%%:*}" --out "$work/members/${pair#*:}" \
    --steps "$member_steps" --batch-size 2 --lr 3e-4 --seed 1 "${white_matter_only[@]}"
done
ka2er train-gate --general "$student" --member "$work/members/mni-t1-wm" --member "$work/members/mni-t2-wm" \
  "${datasets[@]}" --out "$work/moe" --steps "$gate_steps" --reuse 10 --batch-size 2 --validation-crops 128 \
  --seed 0 --target-weight "white matter=4"
ka2er evaluate --bundle "$student" --bundle "$work/members/mni-t1-wm" --bundle "$work/members/mni-t2-wm" \
  --bundle "$work/moe" "${datasets[@]}" --prompts 5 --first auto --out "$work/evaluation-moe"
for pair in "ka2er:demo" "moe:moe"; do
  mkdir -p "$root/ka2er_core/bundles/${pair#*:}"
  cp "$work/${pair%%:*}/bundle.json" "$work/${pair%%:*}/"*.safetensors "$root/ka2er_core/bundles/${pair#*:}/"
done
echo "KA2ER table: $work/evaluation/comparison.md; MoE table: $work/evaluation-moe/comparison.md"
