"""DataLoaders of a run: train (reseeded per epoch, so a resumed epoch replays exactly) and val/test.

The train loader reads its images with keys (index, seed): each image's augmentation draws from RNGs
seeded for (seed, epoch, image index) alone (`SeededSamples`), so it does not depend on num_workers, the
number of processes or where in the epoch a run resumed; `EpochBatches` yields an epoch's batches of
such keys from a given iteration on, so a run resumed mid-epoch reads exactly the batches it had left.
"""
import contextlib
import random
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from util import dist as dist_utils
from util.misc import collate_fn
from util.slconfig import ConfigError


class SeededSamples(Dataset):
    """`dataset` read with keys (index, seed): item (i, s) is dataset[i] drawn with the python, NumPy and
    torch RNGs seeded with s, and those RNGs restored afterwards (the model's draws are not touched)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, seed = key
        with seeded_rngs(seed):
            return self.dataset[index]


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """python/NumPy/torch (CPU) RNGs seeded with `seed` inside the block, as they were after it."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_all(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochBatches(Sampler):
    """The batches of `batch_sampler` as lists of (index, sample_seed) keys for SeededSamples, for the
    epoch set by `set_epoch`, from batch `start` on (the batches before it are drawn, not read).
    len() is the whole epoch's batch count."""

    def __init__(self, batch_sampler: BatchSampler):
        self.batch_sampler = batch_sampler
        self.seed = self.epoch = self.start = 0

    @property
    def sampler(self):
        return self.batch_sampler.sampler

    def set_epoch(self, seed: int, epoch: int, start: int = 0) -> None:
        self.seed, self.epoch, self.start = seed, epoch, start

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for n, batch in enumerate(self.batch_sampler):
            if n >= self.start:
                yield [(int(i), sample_seed(self.seed, self.epoch, int(i))) for i in batch]


@dataclass
class Loaders:
    """train/train_sampler/train_batches are None for --eval / --test. sampler_gen and loader_gen are
    reseeded each epoch (see `seed_epoch`)."""
    val: DataLoader
    dataset_val: Dataset
    train: Optional[DataLoader]
    train_sampler: Optional[torch.utils.data.Sampler]
    sampler_gen: torch.Generator
    loader_gen: torch.Generator
    train_batches: Optional[EpochBatches] = None

    @property
    def dataset_train(self) -> Optional[Dataset]:
        return self.train.dataset.dataset if self.train is not None else None


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive python/numpy from it
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def build_loaders(args, build_dataset) -> Loaders:
    """Datasets and loaders of `args` (eval/test: the val or test split only).

    Each node's local rank 0 builds (and, for the synthetic data, generates) the datasets before
    the other ranks of that node, so concurrent processes never race on one dataset folder."""
    first = args.local_rank in (0, None)
    if args.distributed and not first:
        dist_utils.barrier()
    dataset_val = build_dataset("test" if args.test else "val", args)
    dataset_train = None if args.eval else build_dataset("train", args)
    if args.distributed and first:
        dist_utils.barrier()
    sampler_gen, loader_gen = torch.Generator(), torch.Generator()
    common = dict(collate_fn=collate_fn, num_workers=args.num_workers, worker_init_fn=_worker_init)
    val_sampler = (DistributedSampler(dataset_val, shuffle=False) if args.distributed
                   else SequentialSampler(dataset_val))
    loader_val = DataLoader(dataset_val, batch_size=args.val_batch_size, sampler=val_sampler, drop_last=False,
                            **common)
    loader_train = train_sampler = batches = None
    if dataset_train is not None:
        train_sampler = (DistributedSampler(dataset_train, shuffle=True, seed=args.seed) if args.distributed
                         else RandomSampler(dataset_train, generator=sampler_gen))
        batch_sampler = BatchSampler(train_sampler, args.batch_size, drop_last=True)
        if len(batch_sampler) == 0:
            raise ConfigError(f"the train set has {len(dataset_train)} images per process, fewer than "
                              f"batch_size={args.batch_size}; lower batch_size")
        batches = EpochBatches(batch_sampler)
        loader_train = DataLoader(SeededSamples(dataset_train), batch_sampler=batches, generator=loader_gen, **common)
    return Loaders(loader_val, dataset_val, loader_train, train_sampler, sampler_gen, loader_gen, batches)


def seed_epoch(loaders: Loaders, seed: int, rank: int, epoch: int, start: int = 0) -> None:
    """Seed python/numpy/torch (the model's draws) and the loaders for (seed, rank, epoch), so a resumed
    epoch replays exactly; the train loader starts at batch `start` (a run resumed mid-epoch). The
    sampler's order is rank-independent (rank 0's seed); each image's augmentation is seeded by
    (seed, epoch, image index) (see SeededSamples)."""
    s = epoch_seed(seed, rank, epoch)
    seed_all(s)
    loaders.sampler_gen.manual_seed(epoch_seed(seed, 0, epoch))
    loaders.loader_gen.manual_seed(s)
    if isinstance(loaders.train_sampler, DistributedSampler):
        loaders.train_sampler.set_epoch(epoch)
    if loaders.train_batches is not None:
        loaders.train_batches.set_epoch(seed, epoch, start)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Deterministic per-(seed, rank, epoch) seed."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101) % 2**31


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image `index`'s augmentation in `epoch` (the same on every rank and worker)."""
    return (epoch_seed(seed, 0, epoch) + (index + 1) * 7_919_993) % 2**31
