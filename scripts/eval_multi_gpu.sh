#!/usr/bin/env bash
# Evaluate a checkpoint on GPUS (default 8) GPUs of one node; detections are gathered on rank 0.
set -euo pipefail
if [ $# -lt 4 ]; then echo "usage: [GPUS=8] $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH CHECKPOINT OUTPUT_DIR [main.py args...]" >&2; exit 2; fi
source "$(dirname "$0")/_common.sh"; variant_flags "$1"
COCO=$2; CKPT=$3; OUT=$4; shift 4
cd "$REPO_ROOT"
torchrun --standalone --nproc_per_node="${GPUS:-8}" main.py -c "$CONFIG" --coco_path "$COCO" --output_dir "$OUT" \
  --eval --resume "$CKPT" "${FLAGS[@]}" --options "${DINO_OPTIONS[@]}" "$@"
