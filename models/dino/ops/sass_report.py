"""Static report of the msda CUDA kernels' machine code (SASS); nvcc only, no GPU.

    python -m models.dino.ops --sass [--src DIR] [--arch 80,90] [--check] [--json FILE]
    python models/dino/ops/sass_report.py --binary LIB.so --ptxas-log LOG --check   (scripts/check_cuda_build.sh)

Prints one row per kernel, dtype, index width, channels per access and architecture: registers,
stack frame and spills (ptxas -v), and the instructions of the point loop, per iteration and per
(sampling point, channel).

How it counts. The point loop is the innermost loop of the kernel's SASS (from a branch target to
the backward branch that returns there) that converts a coordinate with floor (FRND.*FLOOR or
F2I.*FLOOR): the loop that handles one sampling point. Its instructions are counted statically, from
the target to the backward branch inclusive; a loop nested inside it (the backward's channel-chunk
and shuffle loops) counts once. The kernels keep the point loop rolled (`#pragma unroll 1`), so one
iteration is one point; dividing by the channels a lane handles per iteration (the kernel's V, 1
for the kernels before issue 24) gives instructions per (point, channel). An unrolled loop would
only raise the figure (a false alarm, never a missed regression).

--check fails (exit 1) on a spill, a nonzero stack frame, a kernel without a point loop, or a
count above its ceiling in sass_ceilings.json (per kernel, dtype and path, over both architectures
and index widths). Compiled with the build's nvcc flags: build_config.NVCC_FLAGS and torch's
COMMON_NVCC_FLAGS, as setup.py and the just-in-time build use them.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from . import build_config, ptxas_report
except ImportError:  # run as a script (scripts/check_cuda_build.sh)
    import build_config
    import ptxas_report

CEILINGS = Path(__file__).resolve().parent / "sass_ceilings.json"
DEFAULT_ARCHS = ("80", "90")
INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
ARCH = re.compile(r"^\s*code for (sm_\w+)")
BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA(?:\.\S+)?\s+(?:`\()?(0x[0-9a-f]+)")
FLOOR = re.compile(r"^(?:@!?U?P\w+\s+)?(?:FRND|F2I)\S*\.FLOOR")
DTYPES = {"float": "fp32", "double": "fp64", "c10::Half": "fp16", "c10::BFloat16": "bf16"}


# ---- parsing ----

def parse_sass(text):
    """cuobjdump -sass text -> list of {arch, name, instrs: [(address, text)]}."""
    functions, arch, current = [], None, None
    for line in text.splitlines():
        if m := ARCH.match(line):
            arch = m.group(1)
        elif m := FUNCTION.match(line):
            current = {"arch": arch, "name": m.group(1), "instrs": []}
            functions.append(current)
        elif current is not None and (m := INSTR.match(line)):
            current["instrs"].append((int(m.group(1), 16), m.group(2)))
    return functions


def loops(instrs):
    """[(start, end)] address ranges of the loops: a backward branch to a target at or before it
    (the farthest such branch closes the loop)."""
    ends = {}
    for address, text in instrs:
        if (m := BRANCH.match(text)) and int(m.group(1), 16) < address:
            target = int(m.group(1), 16)
            ends[target] = max(ends.get(target, 0), address)
    return sorted(ends.items())


def point_loop(instrs):
    """(start, end, instructions) of the innermost loop holding a floor conversion; None without one."""
    floors = [a for a, text in instrs if FLOOR.match(text)]
    candidates = [(s, e) for s, e in loops(instrs) if any(s <= a <= e for a in floors)]
    inner = [(s, e) for s, e in candidates
             if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in candidates)]
    if not inner:
        return None
    s, e = max(inner, key=lambda r: r[1] - r[0])  # a versioned loop: the larger copy
    return s, e, sum(1 for a, _ in instrs if s <= a <= e)


def template_args(demangled):
    """'void msda::forward_kernel<float, float, int, 4>(...)' -> ('forward_kernel', ['float', ...])."""
    head = demangled.split("(")[0].replace("void ", "", 1).replace("msda::", "")
    name, _, rest = head.partition("<")
    args, depth, cur = [], 0, ""
    for ch in rest.rstrip(">"):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        args.append(cur.strip())
    return name.strip(), args


def describe(demangled):
    """Kernel kind, dtype, index width, channels per chunk and path from its template arguments
    <scalar_t, acc_t, index_t, V, kVec[, kArch]>: kVec true = 16-byte vector chunks, false = scalar
    chunks of V elements. Older kernels: <scalar_t, acc_t> (before issue 24: int64, one channel) and
    <scalar_t, acc_t, index_t, V[, kArch]> (its first version: vector exactly when V > 1)."""
    name, args = template_args(demangled)
    kind = name.replace("_kernel", "")
    dtype = DTYPES.get(args[0], args[0]) if args else "?"
    index = "int32" if len(args) > 2 and args[2] in ("int", "int32_t") else "int64"
    vec = int(args[3]) if len(args) > 3 and args[3].isdigit() else 1
    vector = args[4] == "true" if len(args) > 4 and args[4] in ("true", "false") else vec > 1
    return {"kernel": kind, "dtype": dtype, "index": index, "V": vec, "path": "vector" if vector else "scalar"}


def path_key(row):
    """The ceilings' key of a row's path: 'vector', or 'scalar' with its chunk width ('scalar4')."""
    return row["path"] if row["path"] == "vector" else f"scalar{row['V']}"


def demangle_all(names):
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return dict(zip(names, out.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


def report_rows(sass_text, ptxas_log):
    """One dict per msda kernel and architecture (ptxas figures joined by mangled name and arch)."""
    functions = [f for f in parse_sass(sass_text) if "msda" in f["name"]]
    usage = {(k["name"], k["arch"]): k for k in ptxas_report.parse(ptxas_log.splitlines())}
    names = demangle_all(sorted({f["name"] for f in functions}))
    rows = []
    for f in functions:
        row = {"arch": f["arch"], **describe(names[f["name"]])}
        res = usage.get((f["name"], f["arch"]), {})
        row.update(regs=res.get("regs"), stack=res.get("stack"), spills=(res.get("spill_stores") or 0)
                   + (res.get("spill_loads") or 0) if res else None)
        loop = point_loop(f["instrs"])
        row["loop"] = loop[2] if loop else None
        row["per_point_channel"] = round(loop[2] / row["V"], 2) if loop else None
        rows.append(row)
    order = {"forward": 0, "backward": 1}
    return sorted(rows, key=lambda r: (order.get(r["kernel"], 2), r["dtype"], r["path"] != "vector", -r["V"],
                                       r["index"], r["arch"]))


# ---- work per head size: the launch plan (msda_cuda_kernels.cuh's plan_launch) in Python ----

ELEMENT_SIZE = {"fp32": 4, "fp64": 8, "fp16": 2, "bf16": 2}


def plan_for(d, dtype, kernel):
    """(path, V, G, passes) the host picks for D channels per head, aligned tensors: the same rules as
    scalar_width and lanes_per_task in msda_cuda_kernels.cuh (tests/ops/test_cuda_emu.py compares
    them with the emulator's plan_of)."""
    size = ELEMENT_SIZE[dtype]
    width = 16 // size
    if d % width == 0:
        path, v = "vector", width
    elif kernel == "backward":
        path, v = "scalar", 4 if d >= 2 else 1
    else:
        path, v = "scalar", next((w for w in (8, 4, 2) if w <= d and (w < 8 or size == 2)), 1)
    chunks = max(-(-d // v), 1)
    if kernel == "backward":
        g = 1 << (min(chunks, 32) - 1).bit_length()
    else:
        g = -(-chunks // -(-chunks // 32))
    return path, v, g, -(-chunks // g)


def effective_rows(rows, head_sizes, index="int32"):
    """Per head size D, dtype and kernel: the variant the host picks and its instructions per
    (point, channel) as executed, i.e. the point loop times the group's lanes (idle ones included:
    they issue with the warp) times the passes, over D. A chunk moved back to end at the head's last
    channel (forward) or masked past it (backward) counts as full."""
    loops = {(r["kernel"], r["dtype"], path_key(r), r["index"], r["arch"]): r["loop"] for r in rows}
    archs = sorted({r["arch"] for r in rows})
    out = []
    for d in head_sizes:
        for dtype in ("fp32", "bf16", "fp16", "fp64"):
            for kernel in ("forward", "backward"):
                path, v, g, passes = plan_for(d, dtype, kernel)
                key = path if path == "vector" else f"scalar{v}"
                per = {a: (round(loops[(kernel, dtype, key, index, a)] * g * passes / d, 2)
                           if loops.get((kernel, dtype, key, index, a)) else None) for a in archs}
                out.append({"D": d, "dtype": dtype, "kernel": kernel, "path": path, "V": v, "G": g, "passes": passes,
                            "index": index, "per_point_channel": per})
    return out


def format_effective(eff):
    archs = sorted(eff[0]["per_point_channel"]) if eff else []
    cols = ["D", "dtype", "kernel", "path (V)", "lanes x passes"] + [f"executed per (point, channel) {a}"
                                                                     for a in archs]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for e in eff:
        per = " | ".join(str(e["per_point_channel"][a]) for a in archs)
        lines.append(f"| {e['D']} | {e['dtype']} | {e['kernel']} | {e['path']} ({e['V']}) | {e['G']} x {e['passes']} "
                     f"| {per} |")
    return "\n".join(lines)


# ---- output and checks ----

COLUMNS = ["kernel", "dtype", "path (V)", "index", "arch", "registers", "stack B", "spill B", "loop instr",
           "per (point, channel)"]


def format_table(rows):
    """A markdown table, one row per kernel variant and architecture."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['path']} ({r['V']}) | {r['index']} | {r['arch']} | "
                     f"{r['regs']} | {r['stack']} | {r['spills']} | {r['loop']} | {r['per_point_channel']} |")
    return "\n".join(lines)


def load_ceilings(path=CEILINGS):
    with open(path) as fh:
        return json.load(fh)["ceilings"]


def check(rows, ceilings):
    """Failure messages: spills, stack frames, missing point loops or kernels, counts above ceilings."""
    failures = []
    seen = set()
    for r in rows:
        tag = f"{r['arch']} {r['kernel']} {r['dtype']} {r['path']} {r['index']}"
        seen.add((r["kernel"], r["dtype"], path_key(r)))
        if r["regs"] is None:
            failures.append(f"{tag}: no ptxas -v figures")
        elif r["spills"] or r["stack"]:
            failures.append(f"{tag}: {r['spills']} B spilled, {r['stack']} B stack frame")
        if r["per_point_channel"] is None:
            failures.append(f"{tag}: no point loop found in the SASS")
            continue
        limit = ceilings.get(r["kernel"], {}).get(r["dtype"], {}).get(path_key(r))
        if limit is None:
            failures.append(f"{tag}: no ceiling recorded in {CEILINGS.name}")
        elif r["per_point_channel"] > limit:
            failures.append(f"{tag}: {r['per_point_channel']} instructions per (point, channel) > ceiling {limit}")
    for kernel, dtypes in ceilings.items():
        for dtype, paths in dtypes.items():
            for path in paths:
                if (kernel, dtype, path) not in seen:
                    failures.append(f"{kernel} {dtype} {path}: kernel not found in the SASS")
    return failures


# ---- compiling and disassembling ----

def cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return Path(home)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return Path("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parent.parent if nvcc else None


def find_tool(name):
    """cuobjdump from the CUDA toolkit, else the copy in the triton wheel, else PATH."""
    home = cuda_home()
    if home and (home / "bin" / name).exists():
        return str(home / "bin" / name)
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    return shutil.which(name)


def nvcc_command(src_dir, obj, archs):
    import logging

    # without a GPU, importing cpp_extension logs "No CUDA runtime is found": noise here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    try:
        includes = cpp_extension.include_paths(device_type="cuda")
    except TypeError:  # older torch: include_paths(cuda=True)
        includes = cpp_extension.include_paths(cuda=True)
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    # the C++ standard torch builds extensions with: C++20 where ATen requires it (torch 2.14), else C++17
    aten = next((Path(p) / "ATen" / "ATen.h" for p in includes if (Path(p) / "ATen" / "ATen.h").exists()), None)
    std = "-std=c++20" if aten and "C++20 or later" in aten.read_text() else "-std=c++17"
    return ([str(cuda_home() / "bin" / "nvcc"), "-c", str(Path(src_dir) / "msda_cuda.cu"), "-o", str(obj),
             f"-I{src_dir}"] + [f"-I{p}" for p in includes] + list(cpp_extension.COMMON_NVCC_FLAGS)
            + list(build_config.NVCC_FLAGS) + [std, "-Xcompiler", "-fPIC", "-Xptxas", "-v"] + gencode)


def compile_kernels(src_dir, archs, workdir):
    """Compile msda_cuda.cu to an object; returns (object path, ptxas -v log). Raises on failure."""
    if cuda_home() is None:
        raise RuntimeError("no CUDA toolkit: set CUDA_HOME (nvcc is needed, a GPU is not)")
    obj = Path(workdir) / "msda_cuda.o"
    done = subprocess.run(nvcc_command(src_dir, obj, archs), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("nvcc failed:\n" + (done.stderr or done.stdout)[-4000:])
    return obj, done.stdout + done.stderr


def disassemble(binary):
    tool = find_tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA_HOME/bin or the triton wheel)")
    return subprocess.run([tool, "-sass", str(binary)], capture_output=True, text=True, check=True).stdout


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m models.dino.ops --sass", description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(build_config.SRC_DIR), help="kernel sources (default: this checkout)")
    parser.add_argument("--arch", default=",".join(DEFAULT_ARCHS), help="compute capabilities, e.g. 80,90")
    parser.add_argument("--binary", help="disassemble this object / library instead of compiling")
    parser.add_argument("--ptxas-log", help="with --binary: the build log holding ptxas -v output")
    parser.add_argument("--check", action="store_true", help="exit 1 on spills, stack frames, counts above ceilings")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--heads", help="also print the work as executed for these head sizes D, e.g. 1,5,32 "
                                        "(int32 indices; the variant the host picks, idle lanes included)")
    args = parser.parse_args(argv)
    try:
        if args.binary:
            binary, log = args.binary, Path(args.ptxas_log).read_text(errors="replace") if args.ptxas_log else ""
            rows = report_rows(disassemble(binary), log)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                binary, log = compile_kernels(args.src, args.arch.split(","), tmp)
                rows = report_rows(disassemble(binary), log)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"sass_report: {exc}", file=sys.stderr)
        return 1
    if not rows:
        print("sass_report: no msda kernel in the SASS", file=sys.stderr)
        return 1
    print(format_table(rows))
    if args.heads:
        print()
        print(format_effective(effective_rows(rows, [int(d) for d in args.heads.split(",")])))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.check:
        return 0
    failures = check(rows, load_ceilings())
    for f in failures:
        print(f"sass_report: FAIL {f}", file=sys.stderr)
    print(f"sass_report: {'FAILED' if failures else 'OK'} ({len(rows)} kernels, ceilings in {CEILINGS.name})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
