"""Ahead-of-time build of the msda kernels as the `msda_ext` module.

    cd models/dino/ops && python setup.py build install
    pip install --no-build-isolation ./models/dino/ops

The CPU kernel is always built; the CUDA kernel whenever CUDA_HOME (nvcc) is found and
torch has CUDA, no GPU needed. Without a visible GPU and TORCH_CUDA_ARCH_LIST unset,
the architectures default to "8.0;9.0". MSDA_NO_CUDA=1 skips the CUDA kernel;
MSDA_EXTRA_NVCC_FLAGS (space-separated) adds nvcc flags, e.g. "-Xptxas -v" for
scripts/check_cuda_build.sh's register and spill report.
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup

try:
    import torch
except ImportError:
    # pip's build isolation hides the environment's torch; find it with a plain interpreter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    where = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"
    site = subprocess.run([sys.executable, "-c", where],
                          capture_output=True, text=True, env=env).stdout.strip()
    if not site:
        sys.exit("msda setup.py: torch is needed to build; install it first, then "
                 "`pip install --no-build-isolation ./models/dino/ops`")
    sys.path.append(site)
    import torch

# torch guesses CUDA_HOME from `which nvcc`, which can be a symlink outside the toolkit
# (e.g. /usr/local/bin/nvcc -> CUDA_HOME=/usr/local, where libcudart is missing)
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_config import CXX_FLAGS, LD_FLAGS, NVCC_FLAGS, source_hash  # noqa: E402  (same flags as the JIT build)

# the module records which sources it was built from, so a stale install is noticed at load time
CXX_ARGS = CXX_FLAGS + [f"-DMSDA_SOURCE_HASH={source_hash()}"]
NVCC_ARGS = NVCC_FLAGS + os.environ.get("MSDA_EXTRA_NVCC_FLAGS", "").split()


def extension():
    sources = ["src/msda_cpu.cpp"]
    with_cuda = (CUDA_HOME is not None and torch.version.cuda is not None
                 and (Path(CUDA_HOME) / "bin" / "nvcc").exists() and os.environ.get("MSDA_NO_CUDA") != "1")
    if not with_cuda:
        print(f"msda setup.py: building the CPU kernel only (CUDA_HOME={CUDA_HOME}, torch CUDA={torch.version.cuda})")
        return CppExtension("msda_ext", sources, include_dirs=[str(HERE / "src")],
                            extra_compile_args={"cxx": CXX_ARGS}, extra_link_args=LD_FLAGS)
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    print(f"msda setup.py: building CPU + CUDA kernels (CUDA_HOME={CUDA_HOME}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'visible GPUs')})")
    return CUDAExtension("msda_ext", sources + ["src/msda_cuda.cu"], include_dirs=[str(HERE / "src")],
                         extra_compile_args={"cxx": CXX_ARGS, "nvcc": NVCC_ARGS}, extra_link_args=LD_FLAGS)


os.chdir(HERE)  # sources are relative to this folder, whoever calls us
setup(
    name="msda_ext",
    version="0.1.0",
    description="Multi-scale deformable attention kernels (CPU + CUDA) for torch.ops.msda",
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
