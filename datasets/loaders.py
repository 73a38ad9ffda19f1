"""DataLoaders of a run: train (reseeded per epoch, so a resumed epoch replays exactly) and val/test."""
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from util import dist as dist_utils
from util.misc import collate_fn
from util.slconfig import ConfigError


@dataclass
class Loaders:
    """train/train_sampler are None for --eval / --test. sampler_gen and loader_gen are reseeded
    each epoch (see `seed_epoch`)."""
    val: DataLoader
    dataset_val: Dataset
    train: Optional[DataLoader]
    train_sampler: Optional[torch.utils.data.Sampler]
    sampler_gen: torch.Generator
    loader_gen: torch.Generator


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
    loader_train = train_sampler = None
    if dataset_train is not None:
        train_sampler = (DistributedSampler(dataset_train, shuffle=True, seed=args.seed) if args.distributed
                         else RandomSampler(dataset_train, generator=sampler_gen))
        batch_sampler = BatchSampler(train_sampler, args.batch_size, drop_last=True)
        if len(batch_sampler) == 0:
            raise ConfigError(f"the train set has {len(dataset_train)} images per process, fewer than "
                              f"batch_size={args.batch_size}; lower batch_size")
        loader_train = DataLoader(dataset_train, batch_sampler=batch_sampler, generator=loader_gen, **common)
    return Loaders(loader_val, dataset_val, loader_train, train_sampler, sampler_gen, loader_gen)


def seed_epoch(loaders: Loaders, seed: int, rank: int, epoch: int) -> None:
    """Seed python/numpy/torch and the loaders for (seed, rank, epoch), so a resumed epoch replays exactly.
    The sampler's order is rank-independent (rank 0's seed); augmentation draws are per rank."""
    s = epoch_seed(seed, rank, epoch)
    seed_all(s)
    loaders.sampler_gen.manual_seed(epoch_seed(seed, 0, epoch))
    loaders.loader_gen.manual_seed(s)
    if isinstance(loaders.train_sampler, DistributedSampler):
        loaders.train_sampler.set_epoch(epoch)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Deterministic per-(seed, rank, epoch) seed."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101) % 2**31
