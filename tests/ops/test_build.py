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
