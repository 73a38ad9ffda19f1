"""JIT build location, its one-line message and locking."""
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from models.dino.ops import _build
from models.dino.ops.build_config import source_hash

ROOT = str(Path(__file__).resolve().parents[2])


def test_cache_dir_keyed_by_torch_cuda_and_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("MSDA_CACHE_DIR", raising=False)
    path = _build.cache_dir(with_cuda=False)
    assert path.name == "cpu" and "augdetr_msda" in str(path) and path.parent.name == source_hash()
    assert path.parent.parent.name.startswith(_build.torch.__version__.replace("+", "_"))
    monkeypatch.setenv("MSDA_CACHE_DIR", str(tmp_path))
    assert _build.cache_dir(with_cuda=True) == tmp_path / source_hash() / "cuda"


# a JIT build of a one-function library standing in for the kernel sources (a second each), in a fresh
# process as main.py's first use would be: argv = source folder
BUILD = """
import sys
from pathlib import Path
from models.dino.ops import _build, build_config
src = Path(sys.argv[1])
build_config.SRC_DIR = _build.SRC_DIR = src
_build.CPU_SOURCES = [src / "tiny.cpp"]
print(_build.jit_build(with_cuda=False))
"""


def _checkout(root, body: str) -> str:
    src = root / "models" / "dino" / "ops" / "src"
    src.mkdir(parents=True)
    (src / "tiny.cpp").write_text('#include "tiny.h"\nint tiny() { return TINY; }\n')
    (src / "tiny.h").write_text(body)
    return str(src)


def test_first_build_says_so_and_checkouts_of_the_same_sources_share_it(tmp_path):
    """Two checkouts with the same sources: one build (with its one line), the second reuses it; other
    sources build into their own folder and leave the first one's library alone."""
    env = dict(os.environ, MSDA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT)

    def build(src):
        proc = subprocess.run([sys.executable, "-c", BUILD, src], capture_output=True, text=True, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return Path(proc.stdout.strip().splitlines()[-1]), proc.stderr.strip()

    first, said = build(_checkout(tmp_path / "a", "#define TINY 1\n"))
    assert re.fullmatch(rf"msda: compiling the deformable-attention CPU kernel \(first use of these sources with torch "
                        rf"\S+; cached in {re.escape(str(first))}\) \.\.\. done in \d+\.\d s", said), said
    library = first / "msda_ext_jit_cpu.so"
    built_at = library.stat().st_mtime_ns
    again, said = build(_checkout(tmp_path / "b", "#define TINY 1\n"))
    assert (again, said, library.stat().st_mtime_ns) == (first, "", built_at)
    other, said = build(_checkout(tmp_path / "c", "#define TINY 2\n"))
    assert other != first and said.startswith("msda: compiling") and library.stat().st_mtime_ns == built_at


def test_file_lock_serialises(tmp_path):
    order = []

    def worker(tag):
        with _build._file_lock(tmp_path / "x.lock"):
            order.append(f"{tag}-in")
            order.append(f"{tag}-out")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(0, 6, 2):  # no interleaving
        assert order[i].split("-")[0] == order[i + 1].split("-")[0]


def test_stale_install_is_recognised_from_the_library_file(monkeypatch, tmp_path):
    import importlib.util
    import types

    from models.dino.ops import _build, build_config

    lib = tmp_path / "msda_ext.so"
    lib.write_bytes(b"\x7fELF...msda-source-hash:0123456789abcdef\x00...")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: types.SimpleNamespace(origin=str(lib)))
    assert _build.installed_source_hash() == "0123456789abcdef"
    lib.write_bytes(b"\x7fELF... built before the tag existed")
    assert _build.installed_source_hash() == "unknown"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _build.installed_source_hash() is None

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.cpp").write_text("int a;")
    monkeypatch.setattr(build_config, "SRC_DIR", src)
    before = build_config.source_hash()
    (src / "a.cpp").write_text("int b;")
    assert build_config.source_hash() != before and len(before) == 16
