#!/usr/bin/env bash
# Submit through submitit (pip install submitit). NODES (default 1), GPUS (default 8), PARTITION, TIMEOUT (minutes).
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: [NODES=1 GPUS=8 PARTITION=p TIMEOUT=4320] $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH OUTPUT_DIR [main.py args...]" >&2; exit 2; fi
source "$(dirname "$0")/_common.sh"; variant_flags "$1"
COCO=$2; OUT=$3; shift 3
cd "$REPO_ROOT"
PART=(); if [ -n "${PARTITION:-}" ]; then PART=(--partition "$PARTITION"); fi
python run_with_submitit.py --nodes "${NODES:-1}" --ngpus "${GPUS:-8}" --timeout "${TIMEOUT:-4320}" "${PART[@]}" \
  --job_dir "$OUT/submitit/%j" -c "$CONFIG" --coco_path "$COCO" --output_dir "$OUT" "${FLAGS[@]}" \
  --options "${DINO_OPTIONS[@]}" "$@"
