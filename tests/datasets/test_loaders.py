"""The train loader's keys (datasets/loaders.py): each image's augmentation is seeded by (seed, epoch, index),
not by the global RNGs or the worker, and an epoch can start at any batch with the same batches after it."""
import random

import torch
from torch.utils.data import BatchSampler, Dataset, RandomSampler

from datasets.loaders import EpochBatches, SeededSamples, sample_seed


class Draws(Dataset):
    """Item i: its index and one draw from each RNG an augmentation uses."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return i, random.random(), torch.rand(1).item()


def test_an_image_draws_the_same_whatever_the_global_rngs_and_leaves_them_alone():
    data = SeededSamples(Draws())
    torch.manual_seed(0)
    random.seed(0)
    first = data[(3, 1234)]
    after = (random.random(), torch.rand(1).item())
    torch.manual_seed(99)
    random.seed(99)
    assert data[(3, 1234)] == first and data[(3, 4321)] != first
    torch.manual_seed(0)
    random.seed(0)
    assert (random.random(), torch.rand(1).item()) == after  # the item's seeding did not move the global RNGs


def test_epoch_batches_start_anywhere_with_the_same_batches_after():
    gen = torch.Generator()
    batches = EpochBatches(BatchSampler(RandomSampler(range(10), generator=gen), 3, drop_last=True))
    gen.manual_seed(5)
    batches.set_epoch(seed=42, epoch=2)
    whole = list(batches)
    gen.manual_seed(5)
    batches.set_epoch(seed=42, epoch=2, start=2)
    assert list(batches) == whole[2:] and len(batches) == 3
    assert whole[0][0] == (whole[0][0][0], sample_seed(42, 2, whole[0][0][0]))
    assert sample_seed(42, 3, 1) != sample_seed(42, 2, 1) != sample_seed(42, 2, 2)


def test_workers_read_the_same_draws_as_the_main_process():
    from torch.utils.data import DataLoader

    def epoch(workers):
        gen = torch.Generator().manual_seed(5)
        batches = EpochBatches(BatchSampler(RandomSampler(range(10), generator=gen), 2, drop_last=True))
        batches.set_epoch(seed=42, epoch=1, start=1)
        return [b for b in DataLoader(SeededSamples(Draws()), batch_sampler=batches, num_workers=workers,
                                      collate_fn=lambda items: items)]

    assert epoch(0) == epoch(2)  # so --num_workers does not change a run, and a resume may change it
