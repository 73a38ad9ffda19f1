"""Read `ptxas -v` output (a build log) and check the msda kernels: one line per kernel and
architecture with its registers, stack frame and spills; exit 1 when any msda kernel
spills registers or has a nonzero (local-memory) stack frame, or when none is found.

    python models/dino/ops/ptxas_report.py build.log   (scripts/check_cuda_build.sh runs it)
"""
import re
import subprocess
import sys

ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def parse(lines):
    """-> list of dicts {name, arch, regs, stack, spill_stores, spill_loads}, one per entry function."""
    kernels, current = [], None
    for line in lines:
        if m := ENTRY.search(line):
            current = {"name": m.group(1), "arch": m.group(2), "regs": None, "stack": None,
                       "spill_stores": None, "spill_loads": None}
            kernels.append(current)
        elif current is not None and (m := FRAME.search(line)):
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        elif current is not None and (m := REGS.search(line)):
            current["regs"] = int(m.group(1))
            current = None  # the register line closes an entry function's report
    return kernels


def demangle(name):
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return name
    # void msda::backward_kernel<float, float>(...) -> backward_kernel<float, float>
    return re.sub(r"^void msda::", "", out.split("(")[0])


def main(path):
    with open(path, errors="replace") as fh:
        kernels = [k for k in parse(fh) if "msda" in k["name"]]
    if not kernels:
        print(f"ptxas_report: no msda kernel in {path} (was the build run with -Xptxas -v?)", file=sys.stderr)
        return 1
    bad = 0
    for k in kernels:
        problem = (k["stack"] is None or k["regs"] is None or k["stack"] > 0
                   or k["spill_stores"] > 0 or k["spill_loads"] > 0)
        bad += problem
        print(f"ptxas {k['arch']} {demangle(k['name'])}: {k['regs']} registers, {k['stack']} B stack frame, "
              f"{k['spill_stores']}/{k['spill_loads']} B spill stores/loads" + ("  <-- FAIL" if problem else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
