#!/usr/bin/env bash
# Compile-and-link check of the msda CUDA kernel (no GPU needed): builds the extension
# into a temporary folder with setup.py build_ext and checks the CUDA object got linked.
# ptxas runs verbose (-Xptxas -v): every msda kernel's registers are printed per
# architecture, and a register spill or a nonzero local-memory stack frame fails the check.
# Then the static SASS report (models/dino/ops/sass_report.py) disassembles the library and
# fails on an instruction count per (point, channel) above models/dino/ops/sass_ceilings.json.
# Exits non-zero on failure; prints its duration.
set -euo pipefail
start=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export PATH="$CUDA_HOME/bin:$PATH"
export MSDA_EXTRA_NVCC_FLAGS="-Xptxas -v"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "check_cuda_build: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi
cp -r "$repo/models/dino/ops/src" "$repo/models/dino/ops/setup.py" "$repo/models/dino/ops/build_config.py" "$tmp/"
cd "$tmp"
if ! python setup.py build_ext --build-lib "$tmp/lib" --build-temp "$tmp/build" >"$tmp/log" 2>&1; then
  grep -B2 -A6 -m5 "error" "$tmp/log" >&2 || tail -n 40 "$tmp/log" >&2
  echo "check_cuda_build: FAILED after $(( $(date +%s) - start )) s" >&2
  exit 1
fi
so="$(ls "$tmp"/lib/msda_ext*.so)"
grep -q "building CPU + CUDA kernels" "$tmp/log" || { echo "check_cuda_build: CUDA kernel was not built" >&2; exit 1; }
# the linked library must carry device code (a fatbin) for the kernels. The section list goes
# through a file: `readelf | grep -q` under pipefail fails at random when grep exits early and
# readelf's next write gets SIGPIPE.
readelf -S "$so" >"$tmp/sections"
if ! grep -q "nv_fatbin" "$tmp/sections"; then
  echo "check_cuda_build: $so has no .nv_fatbin section (no device code linked)" >&2
  exit 1
fi
# ptxas -v prints, per kernel and architecture:
#   ptxas info    : Compiling entry function '<mangled>' for 'sm_80'
#   ptxas info    : Function properties for <mangled>
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 40 registers, used 0 barriers, 416 bytes cmem[0]
if ! python "$repo/models/dino/ops/ptxas_report.py" "$tmp/log"; then
  echo "check_cuda_build: FAILED (register spills or local-memory stack frames, see above)" >&2
  exit 1
fi
if ! python "$repo/models/dino/ops/sass_report.py" --binary "$so" --ptxas-log "$tmp/log" --check; then
  echo "check_cuda_build: FAILED (SASS report: spills, stack frames or counts above the ceilings, see above)" >&2
  exit 1
fi
if [ -x "$CUDA_HOME/bin/cuobjdump" ]; then
  echo "check_cuda_build: device code: $("$CUDA_HOME/bin/cuobjdump" --list-elf "$so" | grep -o 'sm_[0-9a-z]*' | sort -u | tr '\n' ' ')"
fi
echo "check_cuda_build: OK ($so, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST) in $(( $(date +%s) - start )) s"
