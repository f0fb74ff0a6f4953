"""An ImageFolder encoded once by a VAE and cached on disk as the VAE's posterior, so training can draw what
DiT's train.py draws every step (facebookresearch/DiT): `vae.encode(x).latent_dist.sample().mul_(0.18215)`
of the centre-cropped image (`center_crop_arr`, ADM's) or, with probability ½, of its horizontal mirror
(`RandomHorizontalFlip`, DiT's only augmentation).

Each image is encoded once with its mirror image; the cache keeps the posterior's mean and log-variance of
both, and the task draws the orientation and a fresh posterior sample at every step (`draw_latents`) from
the training RNG, which checkpoints restore, so a resumed run draws what an uninterrupted one would.

The cache is `<cache_dir>/<split>-<hash of format, root, VAE, size, count>/` with mean.npy [N, 2, C, h, w]
(float32: float16's rounding, 2⁻¹¹ of the value, can exceed the small posterior std of SD's VAE),
logvar.npy [N, 2, C, h, w] (float16: its rounding moves the std by under 0.4%), labels.npy and a COMPLETE
marker written last; index 1 on the second axis is the mirror image. Under `accelerate launch` every
process encodes its share into the same files.
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

CACHE_FORMAT = "posterior-v2"  # v1 (one posterior sample per image, resized) is never reused


def vae_geometry(vae_path: str) -> tuple[int, int, float]:
    """(latent channels, spatial downsampling factor, scaling factor) from the VAE's config, without loading
    weights. SD's VAE: (4, 8, 0.18215), DiT's constant."""
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(vae_path)
    return config["latent_channels"], 2 ** (len(config["block_out_channels"]) - 1), config["scaling_factor"]


def load_vae(vae_path: str, device) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(vae_path, local_files_only=True).to(device).eval().requires_grad_(False)


def center_crop_arr(pil_image, image_size: int):
    """ADM's centre crop (openai/guided-diffusion image_datasets.py, used by DiT's train.py): halve the image
    with a box filter while its shorter side is at least twice `image_size`, resize the shorter side to
    `image_size` with bicubic resampling (sides rounded), then cut the central square (offsets floored)."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(side * scale) for side in pil_image.size), resample=Image.BICUBIC)
    width, height = pil_image.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def uint8_transform(image_size: int):
    """RGB image → uint8 [3, S, S] centre-cropped as ADM/DiT (an FID reference from an image folder)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Lambda(lambda image: center_crop_arr(image.convert("RGB"), image_size)), v2.PILToTensor()])


def image_transform(image_size: int):
    """RGB image → float [3, S, S] in [-1, 1], centre-cropped as ADM/DiT (DiT: ToTensor, Normalize(0.5, 0.5))."""
    from torchvision.transforms import v2

    return v2.Compose([uint8_transform(image_size), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])


class LatentDataset(Dataset):
    """(posterior [2, 2, C, h, w] float32, label): axis 0 the image and its mirror image, axis 1 the mean and
    the log-variance. `tasks.dit.draw_latents` turns a batch of them into latents."""

    def __init__(self, folder: Path):
        self.mean = np.load(folder / "mean.npy", mmap_mode="r")
        self.logvar = np.load(folder / "logvar.npy", mmap_mode="r")
        self.labels = torch.from_numpy(np.load(folder / "labels.npy"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        moments = np.stack([self.mean[index], self.logvar[index].astype(np.float32)], 1)
        return torch.from_numpy(moments), self.labels[index]


@torch.no_grad()
def cached_latents(root: Path, split: str, vae_path: str, image_size: int, cache_root: Path, *,
                   max_images: int | None = None, batch_size: int = 64, num_workers: int = 4) -> Path:
    """The cache folder of `root/split` encoded by the VAE at `vae_path`; encodes it first if needed."""
    from accelerate import PartialState

    key = f"{CACHE_FORMAT}|{Path(root).resolve() / split}|{Path(vae_path).resolve()}|{image_size}|{max_images}"
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
    from .image_folder import image_folder

    images = image_folder(Path(root) / split, image_transform(image_size))
    rows = np.arange(len(images))
    if max_images and max_images < len(rows):  # evenly spaced, so every class keeps its share
        rows = np.linspace(0, len(rows) - 1, max_images).round().astype(int)
    channels, factor, scale = vae_geometry(vae_path)
    shape = (len(rows), 2, channels, image_size // factor, image_size // factor)
    if state.is_main_process:
        log.info("encoding %d images of %s (and their mirror images) to VAE posteriors %s in %s",
                 len(rows), Path(root) / split, shape[1:], folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(folder / "mean.npy", mode="w+", dtype=np.float32, shape=shape).flush()
        np.lib.format.open_memmap(folder / "logvar.npy", mode="w+", dtype=np.float16, shape=shape).flush()
        np.save(folder / "labels.npy", np.asarray(images.targets, dtype=np.int64)[rows])
    state.wait_for_everyone()
    mean = np.load(folder / "mean.npy", mmap_mode="r+")
    logvar = np.load(folder / "logvar.npy", mmap_mode="r+")
    vae = load_vae(vae_path, state.device)
    mine = np.arange(state.process_index, len(rows), state.num_processes)
    loader = DataLoader(Subset(images, rows[mine].tolist()), batch_size=batch_size, num_workers=num_workers)
    done = 0
    from tqdm.auto import tqdm

    # shown after a few seconds, on a terminal, by the main process (the others encode their share silently)
    for x, _ in tqdm(loader, desc="encoding latents", unit="batch", delay=3, disable=None if state.is_main_process else True):
        x = x.to(state.device)
        posterior = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist  # logvar clamped to [-30, 20] by diffusers
        index = mine[done:done + len(x)]
        mean[index] = torch.stack(posterior.mean.chunk(2), 1).cpu().numpy()
        logvar[index] = torch.stack(posterior.logvar.chunk(2), 1).cpu().numpy().astype(np.float16)
        done += len(x)
    mean.flush()
    logvar.flush()
    state.wait_for_everyone()
    if state.is_main_process:
        meta = {"format": CACHE_FORMAT, "root": str(Path(root) / split), "vae": str(vae_path),
                "image_size": image_size, "scaling_factor": scale, "shape": list(shape)}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        (folder / "COMPLETE").touch()
    state.wait_for_everyone()
