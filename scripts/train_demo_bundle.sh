#!/usr/bin/env bash
# Recipe of the shipped demo bundle (ka2er_core/bundles/demo): a tiny promptable model trained on
# MNI152 pseudo-subjects (T1 and second-sequence contrast) and CT/MR phantoms, on a 2-core CPU.
# Usage: scripts/train_demo_bundle.sh [WORK_DIR] [STEPS]   (resumes if WORK_DIR has a checkpoint)
set -euo pipefail
work=${1:-ka2er-train-demo}
steps=${2:-6000}
ka2er data --out "$work/data" --train 16 --test 2
ka2er train --out "$work/bundle" --steps "$steps" --batch-size 2 --size tiny \
  --base-spacing 1.5 --max-spacing 4.0 --seed 0 \
  --dataset "$work/data/Dataset001_MNIT1" --dataset "$work/data/Dataset002_MNIT2like" \
  --dataset "$work/data/Dataset003_CTPhantom" --dataset "$work/data/Dataset004_MRPhantom"
dest=$(dirname "$0")/../ka2er_core/bundles/demo
mkdir -p "$dest"
cp "$work/bundle/bundle.json" "$work/bundle/"*.safetensors "$dest/"
echo "bundle copied to $dest"
