"""Fréchet distances for generated images, never downloading anything.

- `val/fid`: torchmetrics' FID with torch-fidelity's InceptionV3, only when its weights file is found at a
  local path (`task.eval.inception_path`, or torch-fidelity's usual place under torch.hub's cache).
- `val/fd_mnist_classifier`: the same Fréchet distance in the 128-d penultimate features of a small CNN
  trained on the embedded MNIST digits, trained at first use (seconds on a CPU) and cached, so CPU runs
  still rank samples. It is not FID and is not comparable with FID numbers.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's InceptionV3 (FID) weights
CLASSIFIER_FILE = "fd_mnist_classifier-v2.pt"


def cache_dir(configured: str | None) -> Path:
    return Path(configured or os.environ.get("DYT_CACHE_DIR") or "~/.cache/dyt-suite").expanduser()


def find_inception(path: str | None) -> Path | None:
    """The configured weights file, else torch-fidelity's download location if a file is already there."""
    if path:
        return Path(path).expanduser()
    default = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return default if default.exists() else None


class DigitFeatures(nn.Sequential):
    """A small CNN on [-1, 1] digits, 1×32×32 → 128 features (after ReLU); `num_features` for torchmetrics."""

    num_features = 128

    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),  # 16×16
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 8×8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),  # 4×4
            nn.Linear(64 * 16, self.num_features), nn.ReLU(),
        )


def digit_features(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   folder: Path, epochs: int = 4) -> DigitFeatures:
    """The feature network of a digit classifier trained on `train` ([-1, 1] images, labels), loaded from
    `folder` if it was trained before. Building and training are seeded and leave the global RNG untouched, so
    a run's training draws the same numbers whether the classifier was cached or not."""
    path = folder / CLASSIFIER_FILE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        features = DigitFeatures()
        head = nn.Linear(features.num_features, 10)
    if path.exists():
        features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["features"])
        return features.eval()
    images, labels = train
    model = nn.Sequential(features, head)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # evaluation runs under no_grad
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(epochs):
            for idx in torch.randperm(len(labels)).split(128):
                loss = F.cross_entropy(model(images[idx]), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(val[0]).argmax(-1) == val[1]).float().mean().item()
    log.info("fd_mnist_classifier: trained a digit classifier, val accuracy %.3f; cached in %s", acc, path)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"features": features.state_dict(), "val_acc": acc}, tmp)
    tmp.replace(path)  # atomic: runs started together may both train it
    return features


def frechet_metric(feature: int | nn.Module, inception_path: Path | None = None):
    """torchmetrics' FrechetInceptionDistance: Inception (feature = 2048, images in [0, 1]) or any feature
    network (images as that network takes them). Real statistics survive `reset()`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(feature, int):
        return FrechetInceptionDistance(feature=feature, normalize=True, reset_real_features=False,
                                        feature_extractor_weights_path=str(inception_path))
    return FrechetInceptionDistance(feature=feature, reset_real_features=False)
