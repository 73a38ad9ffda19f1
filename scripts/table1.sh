#!/usr/bin/env bash
# AugDETR's Table 1 in one command: evaluate the released DETR R50 (500 epochs) and Deformable DETR
# multi-scale (50 epochs) checkpoints and, when their files are there, this project's DINO and AugDETR
# ones, then print AP / APs / APm / APl beside the paper's numbers (tools/collect_results.py --table1).
#
#   scripts/table1.sh COCO_PATH WEIGHTS_DIR [GPUS] [OUTPUT_ROOT] [main.py args...]
#   scripts/table1.sh --synthetic WEIGHTS_DIR [OUTPUT_ROOT] [main.py args...]
#
# WEIGHTS_DIR holds the files under the names below (a row whose file or config is absent prints n/a
# and says why). COCO: detr-r50-e632da11.pth and r50_deformable_detr-checkpoint.pth as released,
# dino_r50_4scale.pth and augdetr_r50_4scale.pth (this project's, R50 4-scale 12 epochs).
# --synthetic: checkpoints of the synthetic configs (detr_synthetic.pth, deformable_detr_synthetic.pth,
# dino_synthetic.pth, augdetr_synthetic.pth), evaluated on the generated dataset on the CPU; the
# evaluation batch sizes are the configs' (DETR R50: 2 images per GPU, as trained and reported).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"  # DINO_OPTIONS (the seed README's), REPO_ROOT

usage="usage: $0 COCO_PATH WEIGHTS_DIR [GPUS] [OUTPUT_ROOT] [main.py args...] | $0 --synthetic WEIGHTS_DIR [OUTPUT_ROOT] [main.py args...]"
[[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
if [[ "$1" == "--synthetic" ]]; then
  MODE=synthetic; WEIGHTS_DIR="$2"; GPUS=1; shift 2
  OUT_ROOT="${1:-logs/table1-synthetic}"; shift || true
else
  MODE=coco; COCO_PATH="$1"; WEIGHTS_DIR="$2"; shift 2
  GPUS="${1:-1}"; shift || true
  OUT_ROOT="${1:-logs/table1}"; shift || true
  [[ -d "$COCO_PATH" ]] || { echo "error: COCO_PATH $COCO_PATH is not a folder" >&2; exit 2; }
  [[ "$GPUS" =~ ^[0-9]+$ && "$GPUS" -ge 1 ]] || { echo "error: GPUS must be a positive integer, got $GPUS" >&2; exit 2; }
fi
[[ -d "$WEIGHTS_DIR" ]] || { echo "error: WEIGHTS_DIR $WEIGHTS_DIR is not a folder" >&2; exit 2; }
WEIGHTS_DIR="$(realpath "$WEIGHTS_DIR")"; OUT_ROOT="$(realpath -m "$OUT_ROOT")"  # the runs cd to the repository
EXTRA_ARGS=("$@")
RUNS=(); NAMES=()

# evaluate NAME FOLDER CONFIG FILE [main.py args...]: one --eval run into OUT_ROOT/FOLDER
evaluate() {
  local name="$1" folder="$2" config="$3" file="$WEIGHTS_DIR/$4"; shift 4
  RUNS+=("$OUT_ROOT/$folder"); NAMES+=("$name")
  cd "$REPO_ROOT"
  if [[ ! -f "$config" ]]; then echo "== $name: skipped ($config is not in this checkout)"; return 0; fi
  if [[ ! -f "$file" ]]; then echo "== $name: skipped (no $file)"; return 0; fi
  echo "== $name: $file with $config -> $OUT_ROOT/$folder"
  local launch=(python) data=()
  [[ "$GPUS" -gt 1 ]] && launch=(torchrun --nproc_per_node="$GPUS")
  [[ "$MODE" == coco ]] && data=(--coco_path "$COCO_PATH")
  # --options may repeat (its values accumulate): the row's, then any the caller adds
  "${launch[@]}" main.py -c "$config" --eval --resume "$file" --output_dir "$OUT_ROOT/$folder" "${data[@]}" \
    ${1:+--options "$@"} "${EXTRA_ARGS[@]}"
}

if [[ "$MODE" == coco ]]; then
  evaluate DETR detr config/DETR/detr_r50.py detr-r50-e632da11.pth
  evaluate "Deformable DETR" deformable_detr config/DeformableDETR/deformable_detr.py r50_deformable_detr-checkpoint.pth
  evaluate DINO dino config/DINO/DINO_4scale.py dino_r50_4scale.pth "${DINO_OPTIONS[@]}"
  evaluate AugDETR augdetr config/AugDETR/AugDETR_4scale.py augdetr_r50_4scale.pth
else
  evaluate DETR detr config/DETR/detr_synthetic.py detr_synthetic.pth
  evaluate "Deformable DETR" deformable_detr config/DeformableDETR/deformable_detr_synthetic.py deformable_detr_synthetic.pth
  evaluate DINO dino config/DINO/DINO_synthetic.py dino_synthetic.pth
  evaluate AugDETR augdetr config/AugDETR/AugDETR_synthetic.py augdetr_synthetic.pth
fi
cd "$REPO_ROOT"
python tools/collect_results.py "${RUNS[@]}" --names "${NAMES[@]}" --table1
