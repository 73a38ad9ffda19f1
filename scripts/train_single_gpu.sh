#!/usr/bin/env bash
# Train on one GPU (or CPU with --device cpu). Extra arguments pass through to main.py.
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH OUTPUT_DIR [main.py args...]" >&2; exit 2; fi
source "$(dirname "$0")/_common.sh"; variant_flags "$1"
COCO=$2; OUT=$3; shift 3
cd "$REPO_ROOT"
python main.py -c "$CONFIG" --coco_path "$COCO" --output_dir "$OUT" "${FLAGS[@]}" --options "${DINO_OPTIONS[@]}" "$@"
