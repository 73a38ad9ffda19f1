#!/usr/bin/env bash
# Evaluate a checkpoint on one GPU (or CPU with --device cpu). Extra arguments pass through to main.py.
set -euo pipefail
if [ $# -lt 4 ]; then echo "usage: $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH CHECKPOINT OUTPUT_DIR [main.py args...]" >&2; exit 2; fi
source "$(dirname "$0")/_common.sh"; variant_flags "$1"
COCO=$2; CKPT=$3; OUT=$4; shift 4
cd "$REPO_ROOT"
python main.py -c "$CONFIG" --coco_path "$COCO" --output_dir "$OUT" --eval --resume "$CKPT" "${FLAGS[@]}" \
  --options "${DINO_OPTIONS[@]}" "$@"
