#!/usr/bin/env bash
# Train on GPUS (default 8) GPUs of one node with torchrun. Extra arguments pass through to main.py.
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: [GPUS=8] $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH OUTPUT_DIR [main.py args...]" >&2; exit 2; fi
source "$(dirname "$0")/_common.sh"; variant_flags "$1"
COCO=$2; OUT=$3; shift 3
cd "$REPO_ROOT"
torchrun --standalone --nproc_per_node="${GPUS:-8}" main.py -c "$CONFIG" --coco_path "$COCO" --output_dir "$OUT" \
  "${FLAGS[@]}" --options "${DINO_OPTIONS[@]}" "$@"
