#!/usr/bin/env bash
# AugDETR Table 9: which encoder layers EMCA mixes (0-based indices in emca_enc_layers).
# The paper's exact subsets are unknown; these cover last-only, the last half, every other
# layer, and all. See scripts/ablation_common.sh for usage.
ABLATION_NAME=table9
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_parse_args "$@"
if [[ "$MODE" == synthetic ]]; then  # the tiny model has 3 encoder layers
  SUBSETS=("2" "1,2" "0,2" "0,1,2")
else
  SUBSETS=("5" "3,4,5" "1,3,5" "0,1,2,3,4,5")
fi
NAMES=()
for s in "${SUBSETS[@]}"; do
  run_variant "emca_layers_${s//,/-}" --use_emca --options "emca_enc_layers=[$s]"
  NAMES+=("E{${s}}")
done
collect "${NAMES[@]}"
