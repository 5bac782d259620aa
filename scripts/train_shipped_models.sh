#!/usr/bin/env bash
# Recipe of the shipped models, ka2er_core/bundles/demo (the KA2ER student) and
# ka2er_core/bundles/moe (SAM-Med3D-MoE over it, the default), on a 2-core CPU:
#  0. the general promptable model (scripts/train_general_model.sh), unless WORK_DIR/general exists;
#  1. the KA2ER ablation (scripts/ablation.sh): task experts, plain multi-task fine-tuning and the
#     KA2ER student, both students from the general model with the same budget;
#  2. task members fine-tuned from the KA2ER student on one target each (the task's other targets
#     weighted 0): white matter on MNI T1 and on MNI T2-like (800 steps), the brain on MNI T1 and
#     other brain on MNI T1 and on MNI T2-like (400 steps); and a gate over student + members (all
#     frozen) trained on the first prompts of all four tasks (soft targets softmax(Dice / 0.02),
#     train-gate's default; threshold: the best mean Dice on held-out crops that lowers no target;
#     each member answers only on its training images' modality, here MR): the moe bundle, the
#     default;
#  3. held-out evaluation of the student, each member alone and the moe at 1/3/5 prompts;
#  4. the two bundles copied into the package (bundle.json and weights; the model cards stay).
# Usage: scripts/train_shipped_models.sh WORK_DIR [EXPERT_STEPS] [STUDENT_STEPS] [MEMBER_STEPS] [GATE_STEPS]
# (MEMBER_STEPS: the white-matter members'; the others take half)
set -euo pipefail
work=$1
expert_steps=${2:-400}
student_steps=${3:-400}
member_steps=${4:-800}
gate_steps=${5:-4000}
root=$(cd "$(dirname "$0")/.." && pwd)
tasks=(Dataset001_MNIT1 Dataset002_MNIT2like Dataset003_CTPhantom Dataset004_MRPhantom)

[ -f "$work/general/bundle.json" ] || "$root/scripts/train_general_model.sh" "$work"
"$root/scripts/ablation.sh" "$work" "$work/general" "$expert_steps" "$student_steps" 0.1
datasets=()
for task in "${tasks[@]}"; do datasets+=(--dataset "$work/data/$task"); done
student="$work/ka2er"
brain_targets=(brain "grey matter" "white matter" "other brain")
members=()
for spec in "Dataset001_MNIT1:mni-t1-wm:white matter:1" "Dataset002_MNIT2like:mni-t2-wm:white matter:1" \
            "Dataset001_MNIT1:mni-t1-brain:brain:2" "Dataset001_MNIT1:mni-t1-other:other brain:2" \
            "Dataset002_MNIT2like:mni-t2-other:other brain:2"; do
  IFS=: read -r task name kept divisor <<< "$spec"
  only=()
  for target in "${brain_targets[@]}"; do [ "$target" = "$kept" ] || only+=(--target-weight "$target=0"); done
  ka2er finetune --bundle "$student" --dataset "$work/data/$task" --out "$work/members/$name" \
    --steps $((member_steps / divisor)) --batch-size 2 --lr 3e-4 --seed 1 "${only[@]}"
  members+=(--member "$work/members/$name")
done
ka2er train-gate --general "$student" "${members[@]}" "${datasets[@]}" --out "$work/moe" \
  --steps "$gate_steps" --reuse 10 --batch-size 2 --validation-crops 128 --seed 0 --prompts first \
  --half-members
ka2er evaluate --bundle "$student" --bundle "$work/moe" "${datasets[@]}" --prompts 5 --first auto \
  --out "$work/evaluation-moe"
for pair in "ka2er:demo" "moe:moe"; do
  mkdir -p "$root/ka2er_core/bundles/${pair#*:}"
  cp "$work/${pair%%:*}/bundle.json" "$work/${pair%%:*}/"*.safetensors "$root/ka2er_core/bundles/${pair#*:}/"
done
echo "KA2ER table: $work/evaluation/comparison.md; MoE table: $work/evaluation-moe/comparison.md"
