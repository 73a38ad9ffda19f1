"""main.py --tensorboard writes event files with per-iteration loss/lr and per-epoch AP; plot_logs reads its log."""
import os

import main
from tools import plot_logs

from tiny_configs import RUN, options

TINY = options(RUN, epochs=1, synthetic_num_train=4, synthetic_num_val=2, batch_size=2)


def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    main.main(main.build_args(["--output_dir", str(out), "--num_workers", "0", "--device", "cpu", "--tensorboard",
                               "--options", *TINY, f"synthetic_dir={tmp_path / 'data'}"]))
    tb = out / "tensorboard"
    assert [n for n in os.listdir(tb) if n.startswith("events.out.tfevents")]
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "test/AP", "test/AP50"} <= tags
    assert len(acc.Scalars("train/loss")) == 2  # 4 images / batch 2 = 2 iterations
    plot_logs.main([str(out / "log.txt"), "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").stat().st_size > 0
