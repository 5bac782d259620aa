#!/usr/bin/env bash
# Stage 0 of the shipped models (scripts/train_shipped_models.sh): the general promptable model, a tiny
# SAM-style model trained from scratch on MNI152 pseudo-subjects (T1 and second-sequence contrast) and
# CT/MR phantoms, on a 2-core CPU (6000 steps: about 85 min). Writes WORK_DIR/data and WORK_DIR/general.
# Usage: scripts/train_general_model.sh WORK_DIR [STEPS]   (resumes if WORK_DIR/general has a checkpoint)
set -euo pipefail
work=$1
steps=${2:-6000}
[ -d "$work/data/Dataset001_MNIT1" ] || ka2er data --out "$work/data" --train 16 --test 2
ka2er train --out "$work/general" --steps "$steps" --batch-size 2 --size tiny \
  --base-spacing 1.5 --max-spacing 4.0 --seed 0 \
  --dataset "$work/data/Dataset001_MNIT1" --dataset "$work/data/Dataset002_MNIT2like" \
  --dataset "$work/data/Dataset003_CTPhantom" --dataset "$work/data/Dataset004_MRPhantom"
