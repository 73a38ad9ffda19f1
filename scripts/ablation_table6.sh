#!/usr/bin/env bash
# AugDETR Table 6: DINO + HAE with 1..6 hybrid encoder layers. See scripts/ablation_common.sh.
# In --synthetic mode the tiny model has 3 encoder layers, so N runs 1..3.
ABLATION_NAME=table6
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_parse_args "$@"
MAX_LAYERS=6; [[ "$MODE" == synthetic ]] && MAX_LAYERS=3
NAMES=()
for n in $(seq 1 "$MAX_LAYERS"); do
  run_variant "hae_layers_$n" --use_hae --num_hae_layers "$n"
  NAMES+=("HAE-$n")
done
collect "${NAMES[@]}"
