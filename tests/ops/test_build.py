"""JIT build location and locking."""
import threading

from models.dino.ops import _build


def test_cache_dir_keyed_by_torch_and_cuda(monkeypatch, tmp_path):
    monkeypatch.delenv("MSDA_CACHE_DIR", raising=False)
    path = _build.cache_dir(with_cuda=False)
    assert path.name == "cpu" and "augdetr_msda" in str(path)
    assert path.parent.name.startswith(_build.torch.__version__.replace("+", "_"))
    monkeypatch.setenv("MSDA_CACHE_DIR", str(tmp_path))
    assert _build.cache_dir(with_cuda=True) == tmp_path / "cuda"


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
