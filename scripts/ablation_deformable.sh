#!/usr/bin/env bash
# AugDETR's parts on Deformable DETR (multi-scale R50, the official 50-epoch recipe, total batch 32):
# Deformable DETR, +HAE, +EMCA, +AugDETR (HAE + EMCA), ending with the per-run table. Usage as every
# ablation script (scripts/ablation_common.sh): COCO_PATH NUM_GPUS, or --synthetic for the CPU run of
# config/DeformableDETR/deformable_detr_synthetic.py. The official recipe's batch is 32 images: on
# NUM_GPUS GPUs add --options batch_size=$((32 / NUM_GPUS)) (the config's 4 fits 8 GPUs).
ABLATION_NAME=deformable
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
CONFIG=config/DeformableDETR/deformable_detr.py
SYNTHETIC_CONFIG=config/DeformableDETR/deformable_detr_synthetic.py
DINO_OPTIONS=()  # the DINO README's options are not Deformable DETR keys
ablation_parse_args "$@"
run_variant deformable_detr
run_variant hae --use_hae
run_variant emca --use_emca
run_variant augdetr --use_hae --use_emca
collect Deformable-DETR +HAE +EMCA +AugDETR
