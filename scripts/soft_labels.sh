#!/usr/bin/env bash
# KA2ER soft-label distillation on partially labelled data (issue 5; docs/ablation.md, run 3).
# The two MNI tasks with white matter left unannotated in FRACTION of the training cases; experts
# trained on the fully labelled rest; two KA2ER students from GENERAL with the same budget: one that
# never draws white matter on the partially labelled cases (--soft-label-weight 0), one that learns it
# there from the experts' soft labels (--soft-label-weight WEIGHT); then the soft labels' own Dice
# against the dropped annotations, and `ka2er evaluate` of all three on held-out seeds.
# Usage: scripts/soft_labels.sh WORK_DIR GENERAL [FRACTION] [EXPERT_STEPS] [STUDENT_STEPS] [WEIGHT]
#   (each stage resumes from its checkpoint if WORK_DIR already has one)
set -euo pipefail
work=$1
general=$2
fraction=${3:-0.75}
expert_steps=${4:-400}
student_steps=${5:-200}
weight=${6:-1}
tasks=(Dataset001_MNIT1 Dataset002_MNIT2like)

[ -d "$work/full/${tasks[0]}" ] || ka2er data --out "$work/full" --train 16 --test 2
datasets=() experts=()
for task in "${tasks[@]}"; do
  if [ ! -d "$work/data/$task" ]; then
    mkdir -p "$work/data" && cp -r "$work/full/$task" "$work/data/$task"
    python -c "import sys; from ka2er_core.data.partial import drop_annotations; \
print(len(drop_annotations(sys.argv[1], {'white matter': float(sys.argv[2])})), 'cases partial')" \
      "$work/data/$task" "$fraction"
  fi
  datasets+=(--dataset "$work/data/$task")
  ka2er train-expert --dataset "$work/data/$task" --out "$work/experts/$task" \
    --steps "$expert_steps" --batch-size 2 --size tiny --seed 0
  experts+=(--expert "$work/experts/$task")
done
common=(--init "$general" --steps "$student_steps" --batch-size 2 --lr 3e-4 --distill-weight 0.1
        --base-spacing 1.5 --max-spacing 4.0 --seed 0)
ka2er amalgamate "${datasets[@]}" "${experts[@]}" --out "$work/without-soft" "${common[@]}"
ka2er amalgamate "${datasets[@]}" "${experts[@]}" --out "$work/soft" "${common[@]}" \
  --soft-label-weight "$weight"
python "$(dirname "$0")/soft_label_dice.py" "$work/full" "$work/data" "$work/experts" "${tasks[@]}"
ka2er evaluate --bundle "$general" --bundle "$work/without-soft" --bundle "$work/soft" \
  "${datasets[@]}" --prompts 5 --first auto --out "$work/evaluation"
echo "table: $work/evaluation/comparison.md"
