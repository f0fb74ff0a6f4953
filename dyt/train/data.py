"""Data order and augmentation that are pure functions of (seed, epoch, position), so a resumed run sees the
batches a run never interrupted would have seen: on one process or many, with or without data workers.

Map-style data: `EpochSampler` deals each process its slice of every global batch and hands each sample a
seed from (seed, epoch, position in the epoch); `SeededSamples` draws the sample's augmentation (a generator the dataset
takes, or torch's and Python's RNGs) from that seed alone. So augmentation differs between ranks (their positions differ)
and does not depend on the number of workers or on where a run was resumed.

Iterable data (a stream too large to index): torchdata's `StatefulDataLoader` saves each worker's reader
position with the checkpoint, so a resumed stream goes on where it stopped instead of replaying.
"""
from __future__ import annotations

import hashlib
import random

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one sample: independent streams for every (seed, epoch, position)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler[tuple[int, int]]):
    """This process's (index, sample seed) pairs for one epoch of fixed-size batches, shuffled from (seed, epoch).

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
        order = torch.randperm(self.size, generator=generator).tolist()
        for k in range(self.skip, self.batches_per_epoch):
            start = (k * self.world + self.rank) * self.batch_size
            for position in range(start, start + self.batch_size):
                yield order[position], sample_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.batch_size


class SeededSamples(Dataset):
    """`dataset[index]` drawing its randomness from the sample's own seed. A dataset with `item(index,
    generator)` gets a torch.Generator seeded with it (cheap: the embedded digits); any other runs with torch's
    CPU RNG and Python's `random` seeded with it (torchvision's and timm's transforms draw from those; numpy's
    global RNG is left alone: seeding it costs ~0.2 ms a sample), restored afterwards in the main process so
    the training RNG goes on undisturbed."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.seeded_item = getattr(dataset, "item", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        if self.seeded_item is not None:
            return self.seeded_item(index, torch.Generator().manual_seed(seed))
        in_worker = torch.utils.data.get_worker_info() is not None  # a worker's RNG serves nothing else
        saved = None if in_worker else (torch.default_generator.get_state(), random.getstate())
        torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed also queues GPU seeds
        random.seed(seed)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                torch.default_generator.set_state(saved[0])
                random.setstate(saved[1])


def _loader_options(num_workers: int, seed: int) -> dict:
    # pinned host memory makes host-to-GPU copies asynchronous; workers kept alive between epochs; the loader's
    # own generator: making an iterator draws a worker base seed from it, never from the training RNG (whose
    # state a checkpoint restores, so a draw at resume would shift every random number after it)
    return {"num_workers": num_workers, "pin_memory": torch.cuda.is_available(),
            "persistent_workers": num_workers > 0, "generator": torch.Generator().manual_seed(seed)}


def train_loader(dataset: Dataset, batch_size: int, *, seed: int, rank: int, world: int, collate_fn=None,
                 num_workers: int = 0) -> DataLoader:
    """Map-style data goes through EpochSampler and SeededSamples. An IterableDataset yields this process's
    share itself (and each worker's), and is read through torchdata's StatefulDataLoader, whose
    `state_dict()` the trainer saves per process; a dataset with its own `state_dict` resumes in place,
    any other is fast-forwarded."""
    if isinstance(dataset, IterableDataset):
        import warnings

        from torchdata.stateful_dataloader import StatefulDataLoader

        warnings.filterwarnings("ignore", message="'set_vital' is deprecated")  # torchdata 0.11 on torch ≥ 2.10

        return StatefulDataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn, drop_last=True,
                                  **_loader_options(num_workers, seed))
    sampler = EpochSampler(len(dataset), batch_size, seed=seed, rank=rank, world=world)
    return DataLoader(SeededSamples(dataset), batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                      drop_last=True, **_loader_options(num_workers, seed))


def epoch_batches(loader: DataLoader, epoch: int, skip: int):
    """The batches of one epoch after the first `skip` (map-style data). A stream's loader resumes from
    the state the trainer restored (`load_state_dict`) and its epochs are the dataset's own."""
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_position(epoch, skip)
    return iter(loader)


def eval_loader(dataset: Dataset, batch_size: int, *, rank: int, world: int, collate_fn=None,
                num_workers: int = 0) -> DataLoader:
    """Every validation sample exactly once over all processes, in order."""
    indices = list(range(rank, len(dataset), world))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, collate_fn=collate_fn,
                      num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(0))
