#!/usr/bin/env bash
# SLURM batch job: one task per GPU started by srun; util/dist.py reads SLURM_PROCID/NTASKS/LOCALID.
#   sbatch --nodes=2 --gres=gpu:8 --ntasks-per-node=8 --cpus-per-task=10 scripts/train_slurm.sh augdetr4 /data/coco logs/run
#SBATCH --job-name=augdetr
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=10
#SBATCH --time=72:00:00
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: sbatch [sbatch options] $0 dino4|dino5|augdetr4|augdetr5 COCO_PATH OUTPUT_DIR [main.py args...]" >&2; exit 2; fi
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_common.sh"; variant_flags "$1"
COCO=$2; OUT=$3; shift 3
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-29500}
cd "$REPO_ROOT"
srun python main.py -c "$CONFIG" --coco_path "$COCO" --output_dir "$OUT" "${FLAGS[@]}" \
  --options "${DINO_OPTIONS[@]}" "$@"
