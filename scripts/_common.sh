# Sourced by the launch scripts: the README's DINO options and the variant flags.
# usage in a script: source "$(dirname "$0")/_common.sh"; variant_flags VARIANT
DINO_OPTIONS=(dn_scalar=100 embed_init_tgt=TRUE dn_label_coef=1.0 dn_bbox_coef=1.0 use_ema=False dn_box_noise_scale=1.0)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# VARIANT -> config file and AugDETR flags in CONFIG and FLAGS
variant_flags() {
  case "$1" in
    dino4) CONFIG=config/DINO/DINO_4scale.py; FLAGS=() ;;
    dino5) CONFIG=config/DINO/DINO_5scale.py; FLAGS=() ;;
    augdetr4) CONFIG=config/DINO/DINO_4scale.py; FLAGS=(--use_hae --use_emca) ;;
    augdetr5) CONFIG=config/DINO/DINO_5scale.py; FLAGS=(--use_hae --use_emca) ;;
    *) echo "unknown variant '$1': use dino4, dino5, augdetr4 or augdetr5" >&2; exit 2 ;;
  esac
}
