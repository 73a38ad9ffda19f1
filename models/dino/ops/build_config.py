"""What the msda kernels are built from and with; shared by setup.py (ahead of time) and
_build.py (just in time). Imports nothing from torch, so setup.py can read it first."""
import hashlib
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parent / "src"
CPU_SOURCES = [SRC_DIR / "msda_cpu.cpp"]
CUDA_SOURCES = [SRC_DIR / "msda_cuda.cu"]
CXX_FLAGS = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP in the pip wheels: without it, one thread
NVCC_FLAGS = ["-O3", "--use_fast_math"]
LD_FLAGS = ["-fopenmp"]


def source_hash() -> str:
    """Hash of every kernel source; an installed msda_ext built from other sources is stale."""
    h = hashlib.sha256()
    for path in sorted(SRC_DIR.iterdir()):
        if path.suffix in (".cpp", ".cu", ".h", ".cuh"):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]
