#!/usr/bin/env bash
# AugDETR's main result on two base detectors: DINO, DINO+AugDETR, AlignDETR, AlignDETR+AugDETR
# (R50 4-scale 12 epochs on COCO), ending with the per-run table and the paper's base / +AugDETR /
# gain table. See scripts/ablation_common.sh for usage (COCO_PATH NUM_GPUS, or --synthetic).
# AlignDETR runs pass their own config with -c after the DINO one: main.py takes the last -c.
ABLATION_NAME=main_table
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_parse_args "$@"
if [[ "$MODE" == synthetic ]]; then
  ALIGN_CONFIG=config/AlignDETR/AlignDETR_synthetic.py
else
  ALIGN_CONFIG=config/AlignDETR/AlignDETR_4scale.py
fi
run_variant dino
run_variant dino_augdetr --use_hae --use_emca
run_variant aligndetr -c "$ALIGN_CONFIG"
run_variant aligndetr_augdetr -c "$ALIGN_CONFIG" --use_hae --use_emca
collect DINO DINO+AugDETR AlignDETR AlignDETR+AugDETR --pairs
