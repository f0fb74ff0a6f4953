"""DINO's multi-crop of the embedded digits, a batch at a time (tasks/data/multicrop_digits.py): the parameters
are drawn by torchvision v2's own transforms at main_dino.py DataAugmentationDINO's probabilities, and the batch
operations give what torchvision's per-sample functions give for those parameters."""
from __future__ import annotations

import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from tasks.data.mnist import MEAN, STD, mnist_digits
from tasks.data.multicrop_digits import COLUMN, DigitCropRecipe, MultiCropCollate, MultiCropDigits

CFG = OmegaConf.create({"global_crop_size": 28, "local_crop_size": 12, "global_crops_scale": [0.5, 1.0],
                        "local_crops_scale": [0.2, 0.5], "local_crops_number": 6})  # configs/task/dino.yaml


def per_sample(image: torch.Tensor, row: torch.Tensor, size: int) -> torch.Tensor:
    """The per-sample v2 pipeline (tasks.dino's before the batch one) for one crop's parameters."""
    p = {name: row[k].item() for name, k in COLUMN.items()}
    x = TF.resized_crop(image, int(p["top"]), int(p["left"]), int(p["height"]), int(p["width"]), [size, size],
                        interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    if p["jitter"]:
        steps = [(TF.adjust_brightness, p["brightness"]), (TF.adjust_contrast, p["contrast"])]
        for fn, factor in steps[::-1] if p["contrast_first"] else steps:
            x = fn(x, factor)
    if p["blur"]:
        x = TF.gaussian_blur(x, [3, 3], [p["sigma"], p["sigma"]])
    if p["solarize"]:
        x = TF.solarize(x, 128)
    return (x.float() / 255 - MEAN) / STD


def test_the_batch_gives_the_per_sample_pipelines_crops():
    images, labels = mnist_digits()
    recipe = DigitCropRecipe(CFG)
    data = MultiCropDigits(images[:16], labels[:16], recipe, pad_to=28)
    torch.manual_seed(0)
    items = [data[i] for i in range(16)]
    crops, batch_labels = MultiCropCollate(recipe)(items)
    assert len(crops) == 8 and torch.equal(batch_labels, labels[:16])
    assert [tuple(c.shape) for c in crops] == [(16, 1, 28, 28)] * 2 + [(16, 1, 12, 12)] * 6
    levels = torch.cat([((crop[i] - per_sample(image, params[k], 28 if k < 2 else 12)) * STD * 255).abs().flatten()
                        for k, crop in enumerate(crops) for i, (image, _, params) in enumerate(items)])
    # torch's uint8 resize computes in fixed point: a level apart here and there, and a blend truncated on the
    # other side of an integer can carry it one level further
    assert levels.max() <= 2 + 1e-3 and levels.mean() < 0.02, (levels.max(), levels.mean())


def test_the_parameters_are_drawn_as_the_v2_transforms_draw_them():
    recipe, image = DigitCropRecipe(CFG), torch.zeros(1, 28, 28, dtype=torch.uint8)
    torch.manual_seed(1)
    rows = torch.stack([recipe.draw(image) for _ in range(2000)])  # [samples, crops, fields]
    col = lambda name: rows[..., COLUMN[name]]  # noqa: E731
    area = col("height") * col("width") / 28**2
    assert area[:, :2].min() >= 0.5 - 0.05 and area[:, 2:].max() <= 0.5 + 0.05  # global 0.5–1, local 0.2–0.5
    # the same RNG state gives RandomResizedCrop's own box first
    torch.manual_seed(2)
    box = v2.RandomResizedCrop(28, scale=(0.5, 1.0)).make_params([image])
    torch.manual_seed(2)
    first = recipe.draw(image)[0]
    assert [first[COLUMN[k]].item() for k in ("top", "left", "height", "width")] == \
        [box["top"], box["left"], box["height"], box["width"]]
    # DataAugmentationDINO's probabilities: jitter 0.8; blur 1.0, 0.1, 0.5; solarise 0.2 on the second global crop
    assert abs(col("jitter").mean() - 0.8) < 0.02
    assert col("blur")[:, 0].min() == 1 and abs(col("blur")[:, 1].mean() - 0.1) < 0.02
    assert abs(col("blur")[:, 2:].mean() - 0.5) < 0.02
    assert abs(col("solarize")[:, 1].mean() - 0.2) < 0.02 and col("solarize")[:, [0, *range(2, 8)]].max() == 0
    assert abs(col("contrast_first").mean() - 0.5) < 0.03
    assert col("brightness").min() >= 0.6 and col("brightness").max() <= 1.4
    sigma = col("sigma")  # 0.1–2.0 pixels of a 224-pixel crop, scaled to 28
    assert sigma.min() >= 0.1 / 8 and sigma.max() <= 2.0 / 8
