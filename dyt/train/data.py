"""Data order that is a pure function of (seed, epoch, position), so a resumed run sees the batches a run
never interrupted would have seen, on one process or many."""
from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class EpochSampler(Sampler[int]):
    """This process's indices for one epoch of fixed-size batches, shuffled from (seed, epoch).

    Global batch k of an epoch is split over processes; process r takes slice r of it. `set_position`
    chooses the epoch and how many of this process's batches to skip (resuming mid-epoch).
    """

    def __init__(self, size: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world = rank, world
        self.batches_per_epoch = size // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {size} samples, fewer than one global batch "
                f"({batch_size} × {world} processes); lower trainer.batch_size"
            )
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        for k in range(self.skip, self.batches_per_epoch):
            start = (k * self.world + self.rank) * self.batch_size
            yield from order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.batch_size


def train_loader(dataset: Dataset, batch_size: int, *, seed: int, rank: int, world: int, collate_fn=None,
                 num_workers: int = 0) -> DataLoader:
    """Map-style data goes through EpochSampler. An IterableDataset (a stream too large to index) yields
    this process's share itself (e.g. `datasets.distributed.split_dataset_by_node`) and may take
    `set_epoch`; a resumed run skips the batches already consumed in the epoch by reading past them."""
    # the loader's own generator: making an iterator draws worker seeds from it, not from the global RNG
    # (whose state a checkpoint restores), and it is reseeded from (seed, epoch) in `epoch_batches`
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, IterableDataset):
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers,
                          drop_last=True, generator=generator)
    sampler = EpochSampler(len(dataset), batch_size, seed=seed, rank=rank, world=world)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=num_workers, drop_last=True, generator=generator)


def epoch_batches(loader: DataLoader, epoch: int, skip: int, seed: int):
    """The batches of one epoch after the first `skip`."""
    loader.generator.manual_seed(seed * 1_000_003 + epoch)
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_position(epoch, skip)
        return iter(loader)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    return islice(iter(loader), skip, None)


def eval_loader(dataset: Dataset, batch_size: int, *, rank: int, world: int, collate_fn=None,
                num_workers: int = 0) -> DataLoader:
    """Every validation sample exactly once over all processes, in order."""
    indices = list(range(rank, len(dataset), world))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, collate_fn=collate_fn,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))
