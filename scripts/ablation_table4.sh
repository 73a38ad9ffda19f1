#!/usr/bin/env bash
# AugDETR Table 4: DINO, +HAE, +EMCA, +HAE+EMCA (AugDETR). See scripts/ablation_common.sh for usage.
ABLATION_NAME=table4
source "$(dirname "${BASH_SOURCE[0]}")/ablation_common.sh"
ablation_parse_args "$@"
run_variant dino
run_variant hae --use_hae
run_variant emca --use_emca
run_variant augdetr --use_hae --use_emca
collect DINO +HAE +EMCA AugDETR
