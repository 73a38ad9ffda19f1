"""Mid-epoch positions (engine/resume_state.py): when a checkpoint is due, where another process layout
starts, RNG states that survive a checkpoint file, and the epoch's running sums (engine.loops.EpochTally)."""
import random

import numpy as np
import pytest
import torch

from engine.loops import EpochTally
from engine.resume_state import CheckpointClock, Position, rng_state, set_rng_state
from util.checkpoint import load_checkpoint, save_checkpoint
from util.dist import any_rank
from util.logger import SmoothedValue


def test_clock_by_iterations_and_by_minutes():
    now = [0.0]
    clock = CheckpointClock(every_iters=3, every_minutes=0, clock=lambda: now[0])
    assert [d for d in range(1, 10) if clock.due(d)] == [3, 6, 9]
    clock = CheckpointClock(every_iters=0, every_minutes=2, clock=lambda: now[0])
    now[0] = 119.0
    assert not clock.due(1)
    now[0] = 120.0
    assert clock.due(2)
    clock.restart()
    assert not clock.due(3)
    assert not CheckpointClock(0, 0).due(1000)  # off


def test_other_process_layout_starts_after_the_same_number_of_images():
    position = Position(epoch=2, iteration=10, world_size=2, batch_size=4, ranks=[{}, {}])
    assert position.start_for(2, 4) == (10, True)  # the same layout replays exactly
    assert position.start_for(4, 4) == (5, False)  # 80 images done = 5 iterations of 16
    assert position.start_for(1, 3) == (26, False)  # rounded down: 78 of the 80 images
    assert Position.from_dict(position.to_dict()) == position


def test_rng_states_survive_a_checkpoint_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    state = rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    save_checkpoint({"model": {}, "position": {"rng": state}}, str(tmp_path / "c.pth"))
    loaded = load_checkpoint(str(tmp_path / "c.pth"))["position"]["rng"]  # weights_only: tensors and plain values
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(loaded)
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_epoch_tally_round_trip_keeps_averages_and_window():
    meter = SmoothedValue()
    for v in (1.5, 2.25, 3.0):
        meter.update(v)
    tally = EpochTally({"loss": meter}, nonfinite=1, skipped={7, 3})
    back = EpochTally.from_state(tally.state())
    assert back.meters["loss"].global_avg == meter.global_avg and list(back.meters["loss"].values) == [1.5, 2.25, 3.0]
    assert back.nonfinite == 1 and back.skipped == {3, 7}


def test_any_rank_without_a_process_group_is_the_flags():
    assert any_rank([True, False, 1]) == [True, False, True]


def test_verify_names_a_mid_epoch_checkpoint(tmp_path, capsys):
    from util.checkpoint import verify_files
    path = str(tmp_path / "checkpoint.pth")
    save_checkpoint({"model": {"w": torch.ones(1)}, "epoch": 1, "position": {"epoch": 2, "iteration": 5}}, path)
    assert verify_files([path]) == 0
    assert capsys.readouterr().out.strip().endswith("epoch 1, mid-epoch: epoch 2 after 5 iterations")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_of_the_current_device_is_restored():
    torch.cuda.manual_seed(4)
    torch.rand(1, device="cuda")
    state = rng_state()
    assert len(state["cuda"]) == 1
    expected = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(5)
    set_rng_state(state)
    assert torch.equal(torch.rand(3, device="cuda"), expected)
