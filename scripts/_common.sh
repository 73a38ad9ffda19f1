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
  with_backbone
}

# BACKBONE=NAME (optional, e.g. BACKBONE=swin_L_384_22k): another backbone (the names: README's backbone
# table). A Swin or ConvNeXt switches CONFIG to its _swin.py twin (DINO_4scale_swin.py, DINO_5scale_swin.py),
# which reads the ImageNet file from backbone_dir: add --options backbone_dir=FOLDER.
with_backbone() {
  [[ -z "${BACKBONE:-}" ]] && return 0
  case "$BACKBONE" in
    swin_*|convnext_*) CONFIG="${CONFIG%.py}_swin.py" ;;
  esac
  DINO_OPTIONS+=(backbone="$BACKBONE")
}
