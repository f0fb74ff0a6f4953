"""Fréchet distances for generated images, never downloading anything.

- `val/fid`: FID as ADM's evaluator computes it (openai/guided-diffusion, evaluations/evaluator.py), the
  protocol behind DiT's numbers and the DyT paper's Table 3. Samples are uint8 images, as DiT's
  sample_ddp.py saves them (`to_uint8`); features are InceptionV3's 2048-d pool_3 activations of those uint8
  images (`inception_features`); statistics are the mean and the unbiased covariance of the features
  (`FeatureMoments`, ADM's `compute_statistics`); the reference statistics are the `mu` and `sigma` stored
  in ADM's reference batch (`npz_statistics`, ADM's `read_statistics`: the images' own statistics only when
  the npz has none); and the distance is ADM's `frechet_distance` (`frechet_distance`, scipy's sqrtm).
  Weights from a local path only (`task.eval.inception_path`, or torch-fidelity's usual place under
  torch.hub's cache if a file is already there).
- `val/fd_mnist_classifier`: the same Fréchet distance in the 128-d penultimate features of a small CNN
  trained on the embedded MNIST digits, so CPU runs still rank samples. The network is trained once, by
  scripts/make_digit_classifier.py, and ships with the suite (tasks/data/fd_mnist_classifier.safetensors,
  checked against its SHA-256 at every load): every machine scores in the same features. It is not FID and
  is not comparable with FID numbers.
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's InceptionV3 (FID) weights
INCEPTION_FEATURES = "2048"  # pool_3, ADM's FID_POOL_NAME "pool_3:0"
CLASSIFIER_PATH = Path(__file__).resolve().parent / "data" / "fd_mnist_classifier.safetensors"
# the metric's identity: a network with another checksum is another metric (scripts/make_digit_classifier.py)
CLASSIFIER_SHA256 = "f0dd1112b28c707737e697aef84b2560e2b4c0dc7d7308d6814935d404ec1218"

Features = Callable[[torch.Tensor], torch.Tensor]  # images as the network takes them → [N, D] features
Reduce = Callable[[dict], dict]  # sums a dict of tensors over processes (the trainer's `reduce`)


def cache_dir(configured: str | None) -> Path:
    return Path(configured or os.environ.get("DYT_CACHE_DIR") or "~/.cache/dyt-suite").expanduser()


def find_inception(path: str | None) -> Path | None:
    """The configured weights file, else torch-fidelity's download location if a file is already there."""
    if path:
        return Path(path).expanduser()
    default = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return default if default.exists() else None


# ------------------------------------------------------------------ FID as ADM's evaluator computes it


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → uint8 as DiT's sample_ddp.py saves samples (facebookresearch/DiT): 127.5·x + 128
    clamped to [0, 255], then a truncating cast. Grey images get three equal channels (Inception reads RGB)."""
    images = (127.5 * images.float() + 128.0).clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 (`FeatureExtractorInceptionV3`, weights converted from the TF graph
    `classify_image_graph_def.pb`): uint8 images [N, 3, H, W] → [N, 2048] pool_3 features. ADM's evaluator
    runs the TensorFlow graph of this same network; torch-fidelity resizes to 299 with TF1's bilinear
    resize and normalises as the graph does, so the features agree with the graph's up to float rounding."""

    def __init__(self, weights: Path, layer: str | None = None):
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        layer = layer or INCEPTION_FEATURES

        if not Path(weights).is_file():  # never torch-fidelity's download
            raise FileNotFoundError(f"task.eval.inception_path={weights} is not a file; give torch-fidelity's "
                                    f"{INCEPTION_FILE} at a local path")
        self.network = FeatureExtractorInceptionV3("inception-v3-compat", [layer],
                                                   feature_extractor_weights_path=str(weights))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:  # ADM scores the uint8 images a sampler saved, never floats
            raise TypeError(f"Inception features take uint8 images, got {images.dtype}; convert with to_uint8")
        return self.network(images)[0]


class FeatureMoments:
    """Count, Σx and Σxxᵀ of features in float64: the mean and the unbiased covariance ADM's
    `compute_statistics` takes (np.mean, np.cov(rowvar=False)), as sums that add up across processes."""

    def __init__(self):
        self.count, self.total, self.outer = 0, None, None

    def add(self, features: torch.Tensor) -> FeatureMoments:
        x = features.detach().double().flatten(1)
        if self.total is None:
            self.total = x.new_zeros(x.shape[1])
            self.outer = x.new_zeros(x.shape[1], x.shape[1])
        self.count += len(x)
        self.total += x.sum(0)
        self.outer += x.T @ x
        return self

    def reduced(self, reduce: Reduce | None) -> FeatureMoments:
        """The sums over every process (`reduce` sums a dict of tensors; one key per call, their shapes differ)."""
        if reduce is None:
            return self
        out = FeatureMoments()
        out.count = int(round(float(reduce({"count": torch.tensor(float(self.count), dtype=torch.float64)})["count"])))
        out.total = reduce({"total": self.total})["total"]
        out.outer = reduce({"outer": self.outer})["outer"]
        return out

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) as float64 numpy arrays."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        n = self.count
        mu = self.total / n
        sigma = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()


def image_statistics(batches: Iterable[torch.Tensor], features: Features, *, device=None,
                     reduce: Reduce | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the features of every image in `batches` (this process's share; `reduce` sums over
    processes), ADM's `compute_activations` followed by `compute_statistics`."""
    moments = FeatureMoments()
    for batch in batches:
        moments.add(features(batch if device is None else batch.to(device)))
    return moments.reduced(reduce).statistics()


def npz_images(path: Path, *, rank: int = 0, world: int = 1, batch_size: int = 250):
    """This process's share (rows rank, rank + world, …) of `arr_0` of an npz in ADM's layout (uint8 NHWC), as
    uint8 NCHW batches, read from the archive in chunks as ADM's `open_npz_array` does: 50k samples at 256²
    are 9.8 GB."""
    import zipfile

    with zipfile.ZipFile(path) as archive, archive.open("arr_0.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(member)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or fortran_order:
            raise ValueError(f"{path}: arr_0 is {dtype} {shape}; ADM's evaluator reads uint8 [N, H, W, 3]")
        row_bytes = int(np.prod(shape[1:]))
        rows_per_read = batch_size * world
        for start in range(0, shape[0], rows_per_read):
            count = min(rows_per_read, shape[0] - start)
            chunk = np.frombuffer(member.read(count * row_bytes), dtype=np.uint8).reshape(count, *shape[1:])
            mine = chunk[rank::world]  # `start` is a multiple of `world`
            if len(mine):
                yield torch.from_numpy(mine.copy()).permute(0, 3, 1, 2)


def npz_statistics(path: Path, features: Features | None = None, *, device=None, rank: int = 0, world: int = 1,
                   reduce: Reduce | None = None, batch_size: int = 250) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a batch in ADM's layout, as ADM's `read_statistics` takes them: the precomputed `mu` and
    `sigma` the npz stores (ADM's reference batches, e.g. VIRTUAL_imagenet256_labeled.npz, store those of
    the whole set beside a 10k-image `arr_0`), else the statistics of `arr_0`'s features (a sample batch)."""
    path = Path(path).expanduser()
    with np.load(path) as npz:
        if "mu" in npz.files:
            mu, sigma = npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64)
            if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance")
            return mu, sigma
        if "arr_0" not in npz.files:
            raise ValueError(f"{path} has neither mu/sigma nor arr_0 (keys: {', '.join(npz.files)}); "
                             f"give an npz in ADM's layout")
    if features is None:
        raise ValueError(f"{path} stores no mu/sigma: its images need a feature network")
    log.info("%s stores no mu/sigma: statistics of its arr_0 images", path)
    return image_statistics(npz_images(path, rank=rank, world=world, batch_size=batch_size), features,
                            device=device, reduce=reduce)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2·tr √(Σ₁Σ₂), as ADM's `FIDStatistics.frechet_distance` (from TTUR's
    fid.py): scipy's sqrtm of the product; if that is not finite, ε on both diagonals; an imaginary part
    from rounding dropped unless the diagonal's exceeds 1e-3."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different features: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy ≥ 1.17 deprecates `disp`
        covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
        if not np.isfinite(covmean).all():
            log.warning("FID: the covariance product is singular; adding %g to both diagonals", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean, _ = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset), disp=False)
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(Σ₁Σ₂)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def npz_fid(sample_npz: Path, reference_npz: Path, features: Features, *, device=None) -> float:
    """ADM's evaluator's FID line for two npz batches (e.g. scripts/sample_dit.py's and ADM's reference)."""
    reference = npz_statistics(reference_npz, features, device=device)
    return frechet_distance(*npz_statistics(sample_npz, features, device=device), *reference)


# ------------------------------------------------------------------ the digits' stand-in


class DigitFeatures(nn.Sequential):
    """A small CNN on [-1, 1] digits, 1×32×32 → 128 features (after ReLU)."""

    num_features = 128

    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.ReLU(),  # 16×16
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),  # 8×8
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),  # 4×4
            nn.Linear(64 * 16, self.num_features), nn.ReLU(),
        )


def digit_features() -> DigitFeatures:
    """The pinned digit classifier's feature network (see the module docstring); a file whose checksum is not
    the pinned one is an error, never a silently different metric."""
    from safetensors.torch import load_file

    if not CLASSIFIER_PATH.exists():
        raise FileNotFoundError(f"{CLASSIFIER_PATH} is missing: reinstall the suite (it ships with it)")
    digest = hashlib.sha256(CLASSIFIER_PATH.read_bytes()).hexdigest()
    if digest != CLASSIFIER_SHA256:
        raise ValueError(f"{CLASSIFIER_PATH} has SHA-256 {digest[:12]}…, not the pinned {CLASSIFIER_SHA256[:12]}…: "
                         "restore it from the repository (git checkout -- tasks/data/)")
    with torch.device("cpu"):
        features = DigitFeatures()
    features.load_state_dict(load_file(str(CLASSIFIER_PATH)))
    return features.eval()
