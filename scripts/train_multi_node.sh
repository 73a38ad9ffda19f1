#!/usr/bin/env bash
# Train on NNODES nodes x GPUS (default 8) GPUs; run this on every node with its NODE_RANK (0..NNODES-1).
# HOST:PORT is a reachable address of node 0 (c10d rendezvous). Extra arguments pass through to main.py.
set -euo pipefail
if [ $# -lt 6 ]; then
  echo "usage: [GPUS=8] $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH OUTPUT_DIR NNODES NODE_RANK HOST:PORT [main.py args...]" >&2
  exit 2
fi
source "$(dirname "$0")/_common.sh"; variant_flags "$1"
COCO=$2; OUT=$3; NNODES=$4; NODE_RANK=$5; ENDPOINT=$6; shift 6
cd "$REPO_ROOT"
torchrun --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="${GPUS:-8}" --rdzv_backend=c10d \
  --rdzv_endpoint="$ENDPOINT" --rdzv_id="${RDZV_ID:-augdetr}" main.py -c "$CONFIG" --coco_path "$COCO" \
  --output_dir "$OUT" "${FLAGS[@]}" --options "${DINO_OPTIONS[@]}" "$@"
