#!/usr/bin/env bash
# What a lent GPU machine should prove, in one run (under 10 minutes on one GPU):
#   env        python/torch/GPU, the wheels of ./.whl (or $WHEEL_DIR) installed, imports main.py needs
#   build      JIT build of the msda op; FAILS when the loaded library has no CUDA kernel
#   check      `python -m models.dino.ops --check` (compiled CUDA vs PyTorch), when that mode exists
#   ops-tests  python -m pytest -q tests/ops; a skipped CUDA test counts as a failure
#   opcheck    torch.library.opcheck of msda forward and backward on CUDA (fp32, fp64)
#   bench-fp32 / bench-bf16   tools/benchmark_msda.py --device cuda --dtype ...
#   side-by-side  the msda CUDA kernel vs the one before issue 24 (built from git, or $MSDA_PREV_SRC) vs the
#              PyTorch reference: fwd and fwd+bwd, fp32 and bf16, issue 24's anchor shape and DINO's encoder at
#              800x1333, times and ratios in one table (python -m models.dino.ops.side_by_side)
#   nccl       util/dist's collectives in a 1-process NCCL group, fed CPU tensors as the code does
#   train      2 epochs of the synthetic default config on CUDA with --amp
# Prints one line per part, `gpu_check: PART PASS|FAIL|SKIP figure [seconds]`, then a total;
# exits 1 when a part failed, 2 without a CUDA device. Each part's full output goes to
# $GPU_CHECK_LOGS (default: a temporary folder, named at the end).
#
# The GPU machines have no network and lack pycocotools, addict, termcolor and yapf: carry them
# as wheels. Where pip has network (Python 3.12 x86-64 wheels):  bash scripts/gpu_check.sh --fetch-wheels
# then carry .whl (git-ignored) to the GPU machine and run  bash scripts/gpu_check.sh  there.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
WHEELS="${WHEEL_DIR:-$repo/.whl}"
NEEDED="pycocotools faster-coco-eval addict termcolor yapf platformdirs"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHEELS"
  plat=""
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    plat="$plat --platform $p"
  done
  # shellcheck disable=SC2086
  exec "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $plat -d "$WHEELS" $NEEDED
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False for $PY): run this on a GPU machine" >&2
  exit 2
fi

LOGS="${GPU_CHECK_LOGS:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$LOGS"
WORK="$(mktemp -d /tmp/gpu_check_work.XXXXXX)"  # build cache, wheels' site, synthetic data, training run
trap 'rm -rf "$WORK"' EXIT
# a fresh JIT build (an installed msda_ext is not used), shared by every part; carried wheels go to $WORK/site
export PYTHONUNBUFFERED=1 MSDA_NO_INSTALLED=1 MSDA_CACHE_DIR="${MSDA_CACHE_DIR:-$WORK/msda_cache}"
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}" PY WHEELS WORK
start_all=$(date +%s)
failed=()

# run_part NAME LIMIT_S FIGURE_FN CMD...: run CMD with a time limit into $LOGS/NAME.log; FIGURE_FN LOG RC
# prints the key figure and returns non-zero when the part failed although CMD exited 0.
run_part() {
  local name=$1 limit=$2 figure_fn=$3 t0 rc fig status
  shift 3
  t0=$(date +%s)
  # bash -c: the parts below are shell functions (exported), which `timeout` cannot run directly
  timeout "$limit" bash -c '"$@"' _ "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  fig="$($figure_fn "$LOGS/$name.log" "$rc")"
  local fig_rc=$?
  if [ "$rc" -eq 0 ] && [ "$fig_rc" -eq 0 ]; then status=PASS; else status=FAIL; failed+=("$name"); fi
  [ "$rc" -eq 124 ] && fig="timed out after ${limit} s; $fig"
  echo "gpu_check: $name $status $fig [$(( $(date +%s) - t0 )) s]"
  if [ "$status" = FAIL ]; then tail -n 15 "$LOGS/$name.log" | sed "s/^/    $name| /"; fi
}

last_line() { grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-160; }

# ---- env ------------------------------------------------------------------------------------
env_part() {
  if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl || return 1
  fi
  "$PY" - <<'EOF'
import importlib, sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.get_device_name(0)}")
missing = []
for name in ("numpy", "scipy", "PIL", "addict", "termcolor", "yapf", "pycocotools"):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"missing modules: {' '.join(missing)} (carry their wheels: bash scripts/gpu_check.sh --fetch-wheels)")
EOF
}
export -f env_part
run_part env 120 last_line env_part

# ---- build ----------------------------------------------------------------------------------
build_part() {
  "$PY" - <<'EOF'
import sys, time
t = time.time()
from models.dino.ops import _build
source = _build.load()
if source is None or not _build.has_kernel("cuda"):
    why = _build.load_error() or "built without CUDA: is nvcc on PATH or CUDA_HOME set?"
    sys.exit(f"the msda library has no CUDA kernel (loaded: {source}): {why}")
print(f"CUDA kernel loaded: {source} in {time.time() - t:.0f} s")
EOF
  [ $? -eq 0 ] || return 1
  "$PY" -m models.dino.ops
}
build_figure() {
  if grep -q "^CUDA kernel loaded" "$1"; then grep -m1 "^CUDA kernel loaded" "$1" | cut -c1-160; else last_line "$1"; fi
}
export -f build_part
run_part build 360 build_figure build_part

# ---- check (another part of the project adds `--check` to python -m models.dino.ops) ----------
if grep -q -- "--check" models/dino/ops/__main__.py 2>/dev/null; then
  run_part check 120 last_line "$PY" -m models.dino.ops --check
else
  echo "gpu_check: check SKIP python -m models.dino.ops has no --check mode in this checkout"
fi

# ---- ops-tests ------------------------------------------------------------------------------
ops_figure() {
  local summary skipped
  summary="$(grep -E " in [0-9.]+s" "$1" | tail -n 1 | tr -d '=' | xargs)"
  skipped="$(grep -E "^SKIPPED .*test_cuda" "$1" | grep -v "_emu" | head -n 1 | cut -c1-100)"
  echo "${summary:-no pytest summary}${skipped:+; a CUDA test was skipped on a GPU machine: $skipped}"
  [ -z "$skipped" ]
}
run_part ops-tests 300 ops_figure "$PY" -m pytest -q -rs -p no:cacheprovider tests/ops

# ---- opcheck --------------------------------------------------------------------------------
opcheck_part() {
  "$PY" - <<'EOF'
import sys
import torch
from models.dino.ops import _build, _library
from tests.ops.conftest import make_inputs

if _build.load() is None or not _build.has_kernel("cuda"):
    sys.exit(f"no CUDA kernel: {_build.load_error()}")
_library.register()
ops = torch.ops.msda
for dtype in (torch.float32, torch.float64):
    value, shapes, starts, loc, attn = [t.cuda() for t in make_inputs(n=2, lq=5, m=2, d=8, dtype=dtype)]
    args = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    torch.library.opcheck(ops.ms_deform_attn_forward.default, args)
    grad_out = torch.randn(2, 5, 16, device="cuda", dtype=dtype)
    torch.library.opcheck(ops.ms_deform_attn_backward.default, tuple(a.detach() for a in args) + (grad_out,))
    print(f"opcheck forward+backward {str(dtype).split('.')[-1]} on {value.device}: ok")
print("opcheck: all checks passed (schema, autograd registration, fake tensor, aot dispatch)")
EOF
}
export -f opcheck_part
run_part opcheck 180 last_line opcheck_part

# ---- benchmarks -----------------------------------------------------------------------------
bench_figure() {
  if grep -q "compiled backend unavailable" "$1"; then grep -m1 "compiled backend unavailable" "$1"; return 1; fi
  grep -m1 "forward+backward speedup" "$1" || { last_line "$1"; return 1; }
}
run_part bench-fp32 150 bench_figure "$PY" tools/benchmark_msda.py --device cuda --dtype fp32
run_part bench-bf16 150 bench_figure "$PY" tools/benchmark_msda.py --device cuda --dtype bf16

# ---- side-by-side ----------------------------------------------------------------------------
# Without .git in the checkout, export the previous kernel where git is and carry the folder:
#   python -m models.dino.ops.side_by_side --export-prev .msda_prev   then   MSDA_PREV_SRC=.msda_prev
sbs_figure() {
  if [ "$2" -ne 0 ]; then last_line "$1"; return 1; fi
  grep -m1 "^side-by-side:" "$1" | cut -c1-160 || { last_line "$1"; return 1; }
}
run_part side-by-side 420 sbs_figure "$PY" -m models.dino.ops.side_by_side

# ---- nccl -----------------------------------------------------------------------------------
nccl_part() {
  PG_FILE="$WORK/pg" "$PY" - <<'EOF'
import os
import torch
import torch.distributed as td
from util import dist as d

torch.cuda.set_device(0)
td.init_process_group("nccl", init_method="file://" + os.environ["PG_FILE"], rank=0, world_size=1)
try:
    assert d.collective_device() == torch.device("cuda", 0), d.collective_device()
    totals = d.all_reduce_sum(torch.tensor([1.0, 2.0], dtype=torch.float64))  # what the EMCA summary sends
    assert totals.device.type == "cpu" and totals.tolist() == [1.0, 2.0]
    means = d.all_reduce_mean({"loss": torch.tensor(3.0, device="cuda"), "n": torch.tensor(1.0)})
    assert means["loss"].device.type == "cuda" and means["n"].device.type == "cpu"
    assert d.all_gather_object({"rank": 0}) == [{"rank": 0}]
    d.barrier()
finally:
    td.destroy_process_group()
print("util/dist under NCCL: CPU and CUDA inputs reduced on cuda:0, results back on their devices")
EOF
}
export -f nccl_part
run_part nccl 90 last_line nccl_part

# ---- train ----------------------------------------------------------------------------------
train_figure() {
  "$PY" - "$WORK/train/log.txt" <<'EOF'
import json, math, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError as err:
    sys.exit(print(f"no log.txt ({err.strerror})") or 1)
epochs = [r for r in rows if "train_loss" in r]
loss, ap = epochs[-1]["train_loss"] if epochs else float("nan"), (rows[-1].get("test_coco_eval_bbox") or [-1])[0]
print(f"{len(epochs)} epochs, last train_loss {loss:.3f}, AP {ap:.3f}")
sys.exit(0 if len(epochs) == 2 and math.isfinite(loss) else 1)
EOF
}
run_part train 300 train_figure "$PY" main.py --device cuda --amp --num_workers 4 --output_dir "$WORK/train" \
  --options epochs=2 synthetic_dir="$WORK/synthetic"

total=$(( $(date +%s) - start_all ))
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_check: ALL PASS in $total s (logs: $LOGS)"
  exit 0
fi
echo "gpu_check: FAILED ${failed[*]} in $total s (logs: $LOGS)"
exit 1
