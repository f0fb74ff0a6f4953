"""DINO's multi-crop augmentation of the embedded digits, a batch at a time.

Each sample draws its crops' parameters with torchvision v2's own transforms (`make_params` of
RandomResizedCrop, ColorJitter and GaussianBlur, the coin flips of RandomApply and RandomSolarize, at main_dino.py
DataAugmentationDINO's probabilities), so the distribution is theirs; the collate function then applies them to
the whole batch as tensor operations: the antialiased bicubic resize as batched matrix products, the jitter, a
grouped 3×3 blur and the solarisation, with uint8 rounding where torchvision rounds. The crops are the per-sample
v2 pipeline's within two uint8 levels, 0.002 on average (torch's uint8 resize works in fixed point;
tests/test_multicrop_digits.py); that pipeline cost DINO's CPU default a third of its step (bench_trainer.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

# one row of parameters per crop
FIELDS = ("top", "left", "height", "width", "jitter", "contrast_first", "brightness", "contrast", "blur", "sigma",
          "solarize")
COLUMN = {name: k for k, name in enumerate(FIELDS)}
# main_dino.py DataAugmentationDINO: jitter p 0.8 on every crop; blur p 1.0, 0.1, 0.5 (first global, second global,
# local crops); solarisation p 0.2 on the second global crop only
JITTER_P, BLUR_P, SOLARIZE_P = 0.8, (1.0, 0.1, 0.5), 0.2


class DigitCropRecipe:
    """Draws every crop's parameters of one sample from torch's RNG, as the v2 transforms of the per-sample
    pipeline this replaces drew them."""

    def __init__(self, cfg):
        from torchvision.transforms import v2

        scale = cfg.global_crop_size / 224  # DINO's blur radii are in pixels of 224-pixel crops
        self.global_size, self.local_size = cfg.global_crop_size, cfg.local_crop_size
        self.local_crops = cfg.local_crops_number
        self.global_crop = v2.RandomResizedCrop(cfg.global_crop_size, scale=tuple(cfg.global_crops_scale))
        self.local_crop = v2.RandomResizedCrop(cfg.local_crop_size, scale=tuple(cfg.local_crops_scale))
        self.jitter = v2.ColorJitter(brightness=0.4, contrast=0.4)
        self.blur = v2.GaussianBlur(3, sigma=(0.1 * scale, 2.0 * scale))

    @property
    def crops(self) -> int:
        return 2 + self.local_crops

    def draw(self, image: torch.Tensor) -> torch.Tensor:
        """[crops, len(FIELDS)] float64 parameters for `image` ([1, S, S])."""
        rows = []
        for k in range(self.crops):
            box = (self.global_crop if k < 2 else self.local_crop).make_params([image])
            jitter = self.jitter.make_params([image])
            order = jitter["fn_idx"].tolist()  # 0 brightness, 1 contrast (2, 3: saturation, hue are off)
            rows.append([box["top"], box["left"], box["height"], box["width"],
                         float(torch.rand(1).item() < JITTER_P), float(order.index(1) < order.index(0)),
                         jitter["brightness_factor"], jitter["contrast_factor"],
                         float(torch.rand(1).item() < BLUR_P[min(k, 2)]), self.blur.make_params([image])["sigma"][0],
                         float(k == 1 and torch.rand(1).item() < SOLARIZE_P)])
        return torch.tensor(rows, dtype=torch.float64)


class MultiCropDigits(Dataset):
    """(uint8 digit [1, S, S] padded to `pad_to`, label, crop parameters [crops, len(FIELDS)])."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, recipe: DigitCropRecipe, pad_to: int):
        pad = (pad_to - images.shape[-1]) // 2
        self.images = F.pad(images, (pad,) * 4)[:, None]  # padded once
        self.labels, self.recipe = labels, recipe

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        return image, self.labels[index], self.recipe.draw(image)


def cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel; a = −0.5 is PIL's and torch's antialiased bicubic."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resize_weights(start: torch.Tensor, length: torch.Tensor, size: int, out: int) -> torch.Tensor:
    """[N, out, size] matrices that resize each sample's span [start, start + length) of a `size`-long axis to
    `out` pixels as antialiased bicubic interpolation does (torch's `_upsample_bicubic2d_aa`, PIL's resample):
    each output pixel's taps lie inside the span, stretched by the shrink factor, normalised to sum 1."""
    scale = (length / out).view(-1, 1, 1)
    stretch = scale.clamp(min=1.0)
    centre = start.view(-1, 1, 1) + (torch.arange(out, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    taps = torch.arange(size, dtype=torch.float64).view(1, 1, -1)
    inside = (taps >= start.view(-1, 1, 1)) & (taps < (start + length).view(-1, 1, 1))
    weights = torch.where(inside, cubic((taps + 0.5 - centre) / stretch), torch.zeros(()))
    return weights / weights.sum(dim=-1, keepdim=True)


def resized_crops(images: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized to size × size, bicubic with antialiasing, rounded
    to uint8 levels after each pass: v2's `resized_crop` of a uint8 image, as two batched matrix products.
    Float in [0, 255]."""
    _, _, height, width = images.shape
    top, left, h, w = (params[:, COLUMN[k]] for k in ("top", "left", "height", "width"))
    rows = resize_weights(top, h, height, size).float()  # [N, size, H]
    cols = resize_weights(left, w, width, size).float()  # [N, size, W]
    # torch's uint8 kernel resizes along the width first and stores that pass as uint8, then along the height
    wide = (images[:, 0].float() @ cols.transpose(1, 2)).round().clamp(0, 255)
    return (rows @ wide).round().clamp(0, 255).unsqueeze(1)


def color_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """v2 ColorJitter's brightness and contrast on uint8 levels (each blend truncated to uint8), in the drawn
    order, where the crop drew it."""
    def column(name):
        return params[:, COLUMN[name]].float().view(-1, 1, 1, 1)

    def brightness(y):
        return (y * column("brightness")).clamp(0, 255).floor()

    def contrast(y):
        factor = column("contrast")
        return (y * factor + y.mean(dim=(1, 2, 3), keepdim=True) * (1 - factor)).clamp(0, 255).floor()

    jittered = torch.where(column("contrast_first").bool(), brightness(contrast(x)), contrast(brightness(x)))
    return torch.where(column("jitter").bool(), jittered, x)


def gaussian_blur(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """v2 GaussianBlur (3 × 3, reflect padding, rounded to uint8 levels) with each crop's σ, where drawn."""
    n = x.shape[0]
    sigma = params[:, COLUMN["sigma"]].float().view(n, 1)
    taps = torch.exp(-0.5 * (torch.tensor([-1.0, 0.0, 1.0]) / sigma) ** 2)
    taps = taps / taps.sum(dim=1, keepdim=True)
    kernels = (taps[:, :, None] * taps[:, None, :]).view(n, 1, 3, 3)
    padded = F.pad(x.view(1, n, *x.shape[2:]), (1, 1, 1, 1), mode="reflect")
    blurred = F.conv2d(padded, kernels, groups=n).view_as(x).round()
    return torch.where(params[:, COLUMN["blur"]].bool().view(-1, 1, 1, 1), blurred, x)


def solarize(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    flip = params[:, COLUMN["solarize"]].bool().view(-1, 1, 1, 1) & (x >= 128)
    return torch.where(flip, 255 - x, x)


def augment(images: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images [N, 1, S, S] and their crops' parameters [N, len(FIELDS)] → crops [N, 1, size, size] on
    uint8 levels (float)."""
    x = resized_crops(images, params, size)
    return solarize(gaussian_blur(color_jitter(x, params), params), params)


class MultiCropCollate:
    """A batch of MultiCropDigits samples → ([crops × [B, 1, size, size]], labels), normalised: the structure
    torch's default collation gives the per-sample pipeline's lists of crops. The two global crops go through
    `augment` as one batch, the local crops as another. The unaugmented evaluation digits (tasks.data.mnist
    DigitImages) go to `collate_digits`."""

    def __init__(self, recipe: DigitCropRecipe):
        self.recipe = recipe

    def __call__(self, items: list):
        from .mnist import MEAN, STD, collate_digits

        if items[0][2].dim() != 2:
            return collate_digits(items)
        images = torch.stack([image for image, _, _ in items])
        labels = torch.stack([label for _, label, _ in items])
        params = torch.stack([p for _, _, p in items])  # [B, crops, fields]
        batch, crops = params.shape[:2]
        out = []
        for first, last, size in ((0, 2, self.recipe.global_size), (2, crops, self.recipe.local_size)):
            if last <= first:
                continue
            count = last - first
            # crop-major: crop k of every sample, then crop k + 1, so each crop's batch is one slice
            grouped = params[:, first:last].transpose(0, 1).reshape(count * batch, -1)
            crops_out = augment(images.repeat(count, 1, 1, 1), grouped, size)
            out.extend(((crops_out / 255 - MEAN) / STD).split(batch))
        return out, labels

