"""An ImageFolder encoded once to VAE latents, cached on disk, as DiT trains: images centre-cropped to
`image_size`, encoded by a diffusers AutoencoderKL from a local path, a sample of the posterior times the
VAE's scaling factor, for the image and its horizontal flip (DiT's only augmentation).

The cache is `<cache_dir>/<split>-<hash of root, VAE, size, count>/` with latents.npy [N, 2, C, h, w]
(float16, memory-mapped), labels.npy and a COMPLETE marker written last. Under `accelerate launch` every
process encodes its share into the same file.
"""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .cache import cache_lock

log = logging.getLogger(__name__)


def vae_geometry(vae_path: str) -> tuple[int, int]:
    """(latent channels, spatial downsampling factor) from the VAE's config, without loading weights."""
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(vae_path)
    return config["latent_channels"], 2 ** (len(config["block_out_channels"]) - 1)


def load_vae(vae_path: str, device) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(vae_path, local_files_only=True).to(device).eval().requires_grad_(False)


def image_transform(image_size: int):
    """[-1, 1] tensors, the shorter side resized to `image_size` and centre-cropped (DiT's preprocessing up
    to its box-filter pre-shrink)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC,
                                                   antialias=True),
                       v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])


class LatentDataset(Dataset):
    """(latent [C, h, w] float32, label). With `flips`, index 2i is image i and 2i+1 its mirror image."""

    def __init__(self, folder: Path, flips: bool):
        self.latents = np.load(folder / "latents.npy", mmap_mode="r")
        self.labels = torch.from_numpy(np.load(folder / "labels.npy"))
        self.flips = flips

    def __len__(self) -> int:
        return len(self.labels) * (2 if self.flips else 1)

    def __getitem__(self, index: int):
        row, flip = divmod(index, 2) if self.flips else (index, 0)
        return torch.from_numpy(np.array(self.latents[row, flip], dtype=np.float32)), self.labels[row]


@torch.no_grad()
def cached_latents(root: Path, split: str, vae_path: str, image_size: int, cache_root: Path, *,
                   max_images: int | None = None, batch_size: int = 64, num_workers: int = 4) -> Path:
    """The cache folder of `root/split` encoded by the VAE at `vae_path`; encodes it first if needed."""
    from accelerate import PartialState

    key = f"{Path(root).resolve() / split}|{Path(vae_path).resolve()}|{image_size}|{max_images}"
    folder = cache_root / f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if (folder / "COMPLETE").exists():
        return folder
    state = PartialState()
    # the main processes of runs started together take turns; the first encodes, the others find it done
    with cache_lock(folder) if state.is_main_process else nullcontext():
        state.wait_for_everyone()
        if not (folder / "COMPLETE").exists():
            _encode(root, split, vae_path, image_size, folder, state, max_images, batch_size, num_workers)
    return folder


def _encode(root, split, vae_path, image_size, folder, state, max_images, batch_size, num_workers) -> None:
    from torchvision.datasets import ImageFolder

    images = ImageFolder(str(Path(root) / split), image_transform(image_size))
    rows = np.arange(len(images))
    if max_images and max_images < len(rows):  # evenly spaced, so every class keeps its share
        rows = np.linspace(0, len(rows) - 1, max_images).round().astype(int)
    channels, factor = vae_geometry(vae_path)
    shape = (len(rows), 2, channels, image_size // factor, image_size // factor)
    if state.is_main_process:
        log.info("encoding %d images of %s to latents %s in %s", len(rows), Path(root) / split, shape[1:], folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(folder / "latents.npy", mode="w+", dtype=np.float16, shape=shape).flush()
        np.save(folder / "labels.npy", np.asarray(images.targets, dtype=np.int64)[rows])
    state.wait_for_everyone()
    latents = np.load(folder / "latents.npy", mmap_mode="r+")
    vae = load_vae(vae_path, state.device)
    scale = vae.config.scaling_factor
    mine = np.arange(state.process_index, len(rows), state.num_processes)
    loader = DataLoader(Subset(images, rows[mine].tolist()), batch_size=batch_size, num_workers=num_workers)
    done = 0
    for x, _ in loader:
        x = x.to(state.device)
        generator = torch.Generator(state.device).manual_seed(int(mine[done]))
        z = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist.sample(generator) * scale
        latents[mine[done:done + len(x)]] = torch.stack(z.chunk(2), 1).cpu().numpy().astype(np.float16)
        done += len(x)
    latents.flush()
    state.wait_for_everyone()
    if state.is_main_process:
        meta = {"root": str(Path(root) / split), "vae": str(vae_path), "image_size": image_size,
                "scaling_factor": scale, "shape": list(shape)}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        (folder / "COMPLETE").touch()
    state.wait_for_everyone()
