#!/usr/bin/env bash
# AugDETR's main result on three base detectors: DINO, DINO+AugDETR, AlignDETR, AlignDETR+AugDETR,
# DDQ-DETR, DDQ-DETR+AugDETR (R50 4-scale 12 epochs on COCO), ending with the per-run table and the
# paper's base / +AugDETR / gain table. See scripts/ablation_common.sh for usage (COCO_PATH NUM_GPUS, or
# --synthetic). AlignDETR and DDQ-DETR runs pass their own config with -c after the DINO one: main.py
# takes the last -c. DDQ-DETR learns no content embedding, so its COCO runs set embed_init_tgt=False
# after the DINO options (DINO_OPTIONS sets it TRUE; the later value wins).
ABLATION_NAME=main_table
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_parse_args "$@"
if [[ "$MODE" == synthetic ]]; then
  ALIGN_CONFIG=config/AlignDETR/AlignDETR_synthetic.py
  DDQ_CONFIG=config/DDQ/DDQ_synthetic.py
  DDQ_OPTIONS=()
else
  ALIGN_CONFIG=config/AlignDETR/AlignDETR_4scale.py
  DDQ_CONFIG=config/DDQ/DDQ_4scale.py
  DDQ_OPTIONS=(--options embed_init_tgt=False)
fi
run_variant dino
run_variant dino_augdetr --use_hae --use_emca
run_variant aligndetr -c "$ALIGN_CONFIG"
run_variant aligndetr_augdetr -c "$ALIGN_CONFIG" --use_hae --use_emca
run_variant ddq_detr -c "$DDQ_CONFIG" ${DDQ_OPTIONS[@]+"${DDQ_OPTIONS[@]}"}
run_variant ddq_detr_augdetr -c "$DDQ_CONFIG" --use_hae --use_emca ${DDQ_OPTIONS[@]+"${DDQ_OPTIONS[@]}"}
collect DINO DINO+AugDETR AlignDETR AlignDETR+AugDETR DDQ-DETR DDQ-DETR+AugDETR --pairs
