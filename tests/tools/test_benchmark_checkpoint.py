"""tools/benchmark_checkpoint.py runs on the tiny model and reports what a mid-epoch checkpoint adds."""
from tools import benchmark_checkpoint

from tiny_configs import RUN, options


def test_mid_epoch_checkpoint_cost_on_the_tiny_model(tmp_path, capsys):
    result = benchmark_checkpoint.run(["-c", "config/DINO/DINO_synthetic.py", "--options", *options(RUN),
                                       "--repeats", "1", "--ranks", "2", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| mid-epoch |" in out and "mid-epoch / epoch: size 1.0" in out and "a preemption signal none" in out
    assert 0 < result["size_mid"] - result["size_epoch"] < 200_000  # the position: RNG states and sums
    assert list(tmp_path.iterdir()) == []  # its temp folder removed
