"""Loading the compiled msda kernels: the installed `msda_ext`, else a just-in-time build.

The JIT build goes to ~/.cache/augdetr_msda/<torch>-<cuda>/<source hash>/<cpu|cuda>/ (or
$MSDA_CACHE_DIR/<source hash>/<cpu|cuda>/), guarded by a file lock so that two processes starting
together build it once. The sources are compiled from a copy in that folder, so two checkouts of the
same sources share one build, and checkouts with other sources get their own folder instead of
rebuilding each other's (torch's build key includes the source paths). A build says so on stderr in
one line, with how long it took. CUDA sources are compiled only when a GPU is visible and CUDA_HOME is set.
"""
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from .build_config import CPU_SOURCES, CUDA_SOURCES, CXX_FLAGS, LD_FLAGS, NVCC_FLAGS, SRC_DIR, source_hash

BUILD_HINT = ("build it with `pip install --no-build-isolation ./models/dino/ops` "
              "or make a C++ compiler and ninja available for the just-in-time build")

_lock = threading.Lock()
_state: dict = {"tried": False, "source": None, "error": None, "cuda_note": None, "library": None}


def ops_registered() -> bool:
    """True once the msda operators exist in this process (from any library)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("msda::ms_deform_attn_forward", "CPU")
    except RuntimeError:  # "operator ... does not exist"
        return False


def has_kernel(device_type: str) -> bool:
    """True when the loaded library has a kernel for `device_type` ("cpu" or "cuda")."""
    if not ops_registered():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("msda::ms_deform_attn_forward", device_type.upper())


def cache_dir(with_cuda: bool) -> Path:
    """<root>/<source hash>/<cpu|cuda>, root = $MSDA_CACHE_DIR or ~/.cache/augdetr_msda/<torch>-<cuda>."""
    root = os.environ.get("MSDA_CACHE_DIR")
    if root is None:
        tag = f"{torch.__version__}-{torch.version.cuda or 'nocuda'}".replace("+", "_")
        root = Path.home() / ".cache" / "augdetr_msda" / tag
    return Path(root) / source_hash() / ("cuda" if with_cuda else "cpu")


@contextlib.contextmanager
def _file_lock(path: Path, on_wait=None):
    """Exclusive lock on `path`; on_wait() is called once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(text: str, end: str = "\n") -> None:
    """Build progress on stderr (the only output of a first run before its first iteration)."""
    print(text, end=end, file=sys.stderr, flush=True)


def _copy_sources(build_dir: Path, paths) -> list:
    """The sources and their headers copied into build_dir/src (once: the folder is keyed by their hash);
    returns the copied source paths."""
    src = build_dir / "src"
    if not src.is_dir():
        tmp = build_dir / f".src-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for path in SRC_DIR.iterdir():
            if path.is_file() and path.suffix in (".cpp", ".cu", ".h", ".cuh"):
                shutil.copy2(path, tmp / path.name)
        os.replace(tmp, src)
    return [str(src / Path(p).name) for p in paths]


def jit_build(with_cuda: Optional[bool] = None, verbose: bool = False) -> Path:
    """Compile (or reuse) the kernels with torch.utils.cpp_extension.load and load them into this process."""
    # importing cpp_extension on a machine without a GPU logs "No CUDA runtime is found": noise
    # for a CPU build, and it would break main.py's one-line error messages
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    if with_cuda is None:
        with_cuda = torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
        if torch.cuda.is_available() and not with_cuda:
            _state["cuda_note"] = ("a CUDA device is visible but the just-in-time build found no CUDA toolkit "
                                   "(CUDA_HOME unset and no nvcc on PATH), so it built the CPU kernel only")
    build_dir = cache_dir(with_cuda)
    name = "msda_ext_jit_cuda" if with_cuda else "msda_ext_jit_cpu"
    library = build_dir / f"{name}.so"
    _state["library"] = str(library)
    what = "CPU and CUDA kernels" if with_cuda else "CPU kernel"

    def waiting():
        _say(f"msda: another process is compiling the deformable-attention {what} into {build_dir}; waiting")

    with _file_lock(build_dir / ".msda.lock", on_wait=waiting):
        before = library.stat().st_mtime_ns if library.is_file() else None
        if before is None:
            _say(f"msda: compiling the deformable-attention {what} (first use of these sources with torch "
                 f"{torch.__version__}; cached in {build_dir}) ...", end="")
        start = time.perf_counter()
        try:
            cpp_extension.load(
                name=name,
                sources=_copy_sources(build_dir, CPU_SOURCES + (CUDA_SOURCES if with_cuda else [])),
                # the hash changes the build flags whenever any source or header changes, so
                # torch rebuilds instead of reusing a library built from older headers
                extra_cflags=CXX_FLAGS + [f"-DMSDA_SOURCE_HASH={source_hash()}"],
                extra_cuda_cflags=NVCC_FLAGS,
                extra_ldflags=LD_FLAGS,
                extra_include_paths=[str(build_dir / "src")],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
        except Exception:
            if before is None:
                _say(f" failed after {time.perf_counter() - start:.1f} s")
            raise
        took = time.perf_counter() - start
        if before is None:
            _say(f" done in {took:.1f} s")
        elif library.stat().st_mtime_ns != before:  # torch or its flags changed under the same sources
            _say(f"msda: recompiled the deformable-attention {what} in {took:.1f} s (cached in {build_dir})")
    return build_dir


def installed_source_hash() -> Optional[str]:
    """The source hash an installed msda_ext was built from (read from the library file,
    without loading it), "unknown" for a build without one, None when none is installed."""
    spec = importlib.util.find_spec("msda_ext")
    if spec is None or not spec.origin:
        return None
    found = re.search(rb"msda-source-hash:([0-9a-f]{16})", Path(spec.origin).read_bytes())
    return found.group(1).decode() if found else "unknown"


def load() -> Optional[str]:
    """Make the msda operators available; returns how ("installed msda_ext", "JIT build in ...") or None.

    Tried once per process; the error of a failed attempt is kept in `load_error()`.
    """
    with _lock:
        if _state["tried"]:
            return _state["source"]
        _state["tried"] = True
        if ops_registered():
            _state["source"] = "already loaded"
            return _state["source"]
        errors = []
        if os.environ.get("MSDA_NO_INSTALLED") != "1":
            try:
                built_from = installed_source_hash()
                if built_from in (None, source_hash()):  # None: nothing installed, the import says so
                    import msda_ext  # noqa: F401  (importing registers torch.ops.msda)

                    _state["source"] = f"installed msda_ext ({msda_ext.__file__})"
                    _state["library"] = msda_ext.__file__
                    return _state["source"]
                # not imported: its operator namespace would clash with the JIT build's
                errors.append(f"installed msda_ext was built from other sources ({built_from}, these are "
                              f"{source_hash()}): reinstall it; using a just-in-time build meanwhile")
            except ImportError as exc:
                errors.append(f"no installed msda_ext ({exc})")
            except OSError as exc:  # e.g. built against another torch
                errors.append(f"installed msda_ext does not load ({exc})")
        try:
            build_dir = jit_build()
            _state["source"] = f"JIT build in {build_dir}"
            return _state["source"]
        except Exception as exc:  # compiler missing, compile error, ...
            msg = str(exc).strip().splitlines()
            errors.append(f"JIT build failed ({msg[-1] if msg else type(exc).__name__})")
        _state["error"] = "; ".join(errors)
        return None


def load_error() -> Optional[str]:
    return _state["error"]


def build_id() -> str:
    """Identifies the loaded kernels: a hash of the library file, else (unknown file) of the sources."""
    path = _state["library"]
    if path and Path(path).is_file():
        return "lib-" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return "src-" + source_hash()


def missing_kernel_reason(device_type: str) -> Optional[str]:
    """None when the loaded library has a `device_type` kernel, else why not (loading it if needed)."""
    source = load()
    if source is None:
        return f"compiled kernels unavailable: {load_error()}"
    if has_kernel(device_type):
        return None
    why = _state["cuda_note"] if device_type == "cuda" and _state["cuda_note"] else "built without CUDA?"
    return f"the loaded msda library ({source}) has no {device_type.upper()} kernel ({why})"
