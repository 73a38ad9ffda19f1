# Shared by scripts/ablation_table*.sh; not run directly.
# Usage of every ablation script: `scripts/ablation_tableN.sh --help` (ablation_usage below): COCO mode,
# --synthetic, and the quick mode SYNTHETIC_EPOCHS=N.
# A script for another base detector sets, after sourcing this file, CONFIG (its COCO config),
# SYNTHETIC_CONFIG (its synthetic config, passed with -c first) and DINO_OPTIONS=() (no DINO options).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"  # DINO_OPTIONS (the seed README's), REPO_ROOT
CONFIG=config/DINO/DINO_4scale.py; with_backbone  # COCO mode; BACKBONE=NAME as in _common.sh

ablation_usage() {
  cat <<EOF
usage: $0 COCO_PATH NUM_GPUS [OUTPUT_ROOT] [main.py args...]
       $0 --synthetic [OUTPUT_ROOT] [main.py args...]
       SYNTHETIC_EPOCHS=N $0 --synthetic [OUTPUT_ROOT] [main.py args...]   (quick mode)

COCO mode: config/DINO/DINO_4scale.py with the seed README's options (12 epochs) on NUM_GPUS GPUs of this
machine (torchrun when NUM_GPUS > 1); OUTPUT_ROOT defaults to logs/$ABLATION_NAME.
--synthetic: every variant on the generated dataset with the default config's budget (config/DINO/DINO_synthetic.py,
14 epochs, about 9 minutes per variant on 2 CPU cores); OUTPUT_ROOT defaults to logs/$ABLATION_NAME-synthetic.
quick mode: SYNTHETIC_EPOCHS=N with --synthetic trains each variant N epochs (lr drop in the last one), e.g.
SYNTHETIC_EPOCHS=2 checks the whole table end to end in a few minutes; toy numbers, not the paper's.
Each mode ends with the table of tools/collect_results.py.
EOF
}

ablation_parse_args() {
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    ablation_usage
    exit 0
  fi
  if [[ $# -lt 1 ]]; then
    ablation_usage >&2
    exit 2
  fi
  if [[ "$1" == "--synthetic" ]]; then
    MODE=synthetic; shift
    OUT_ROOT="${1:-logs/$ABLATION_NAME-synthetic}"; shift || true
  else
    if [[ $# -lt 2 ]]; then
      echo "usage: $0 COCO_PATH NUM_GPUS [OUTPUT_ROOT] [main.py args...]" >&2; exit 2
    fi
    MODE=coco; COCO_PATH="$1"; NUM_GPUS="$2"; shift 2
    OUT_ROOT="${1:-logs/$ABLATION_NAME}"; shift || true
    [[ -d "$COCO_PATH" ]] || { echo "error: COCO_PATH $COCO_PATH is not a folder" >&2; exit 2; }
    [[ "$NUM_GPUS" =~ ^[0-9]+$ && "$NUM_GPUS" -ge 1 ]] || { echo "error: NUM_GPUS must be a positive integer, got $NUM_GPUS" >&2; exit 2; }
  fi
  OUT_ROOT="$(realpath -m "$OUT_ROOT")"  # the runs cd to the repository root
  EXTRA_ARGS=("$@")
}

# run_variant NAME [main.py flags...] [--options k=v ...]: one training run into OUT_ROOT/NAME
run_variant() {
  local name="$1"; shift
  local out="$OUT_ROOT/$name"
  local flags=() opts=()
  while [[ $# -gt 0 ]]; do
    if [[ "$1" == "--options" ]]; then shift; while [[ $# -gt 0 && "$1" != --* ]]; do opts+=("$1"); shift; done
    else flags+=("$1"); shift; fi
  done
  echo "== $name -> $out"
  cd "$REPO_ROOT"
  local start=$SECONDS
  if [[ "$MODE" == synthetic ]]; then
    if [[ -n "${SYNTHETIC_EPOCHS:-}" ]]; then
      opts=(epochs="$SYNTHETIC_EPOCHS" lr_drop="$(( SYNTHETIC_EPOCHS - 1 ))" "${opts[@]}")
    fi
    python main.py ${SYNTHETIC_CONFIG:+-c "$SYNTHETIC_CONFIG"} --output_dir "$out" "${flags[@]}" \
      ${opts[@]:+--options "${opts[@]}"} "${EXTRA_ARGS[@]}"
  else
    opts=("${DINO_OPTIONS[@]}" "${opts[@]}")
    local launch=(python)
    [[ "$NUM_GPUS" -gt 1 ]] && launch=(torchrun --nproc_per_node="$NUM_GPUS")
    "${launch[@]}" main.py -c "$CONFIG" --coco_path "$COCO_PATH" \
      --output_dir "$out" "${flags[@]}" ${opts[@]:+--options "${opts[@]}"} "${EXTRA_ARGS[@]}"
  fi
  echo "== $name finished in $(( SECONDS - start )) s"
  RUNS+=("$out")
}

collect() {
  cd "$REPO_ROOT"
  python tools/collect_results.py "${RUNS[@]}" --names "$@"
}
RUNS=()
