"""A user's ImageFolder tree (`task.data.root` with train/<class>/<image> and val/<class>/<image>) read as it is:
its classes from the folders, its image size from its first image, and one-line errors, before any work, where
the tree and the config disagree.

A broken image (truncated, garbage, not an image at all) is found when it is read: the run stops with one line
naming the file (`UnreadableImage`, a `ConfigError`), from a DataLoader worker too. Why not skip and count it: a
sample dropped inside a worker cannot be counted for the run (each worker has its own copy of the dataset) and
would silently change the epoch's data; and why not check every file up front: only a full decode finds a truncated
file (a header check, `Image.verify()` included, passes most of them), which is ~1 h of CPU for ImageNet's 1.28 M
images before the first step. A run stopped this way resumes from its last checkpoint once the file is removed or
replaced."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dyt.train.config import ConfigError

from .errors import UnreadableFile

SPLITS = ("train", "val")


class UnreadableImage(UnreadableFile):
    """An image of the folder that PIL cannot read (one line, from a DataLoader worker too)."""


def read_image(path: str):
    """torchvision's default ImageFolder loader (PIL, converted to RGB), with a one-line error naming the file when
    the image is broken."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # PIL's errors for broken files
        raise UnreadableImage(f"{path} is not a readable image ({type(err).__name__}: {err}); remove or replace it "
                              f"and run again (a run with a checkpoint resumes from it)") from None


def image_folder(folder, transform):
    """torchvision's ImageFolder of `folder` whose broken images stop the run with one line (`read_image`)."""
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(folder), transform, loader=read_image)


@lru_cache(maxsize=8)
def folder_classes(root: str) -> tuple[str, ...]:
    """The class folders of root/train, as torchvision's ImageFolder finds (and indexes) them."""
    from torchvision.datasets.folder import find_classes

    return tuple(find_classes(str(Path(root) / "train"))[0])


def check_image_folder(data, *, auto_size: bool = True, needs_val: bool = False) -> None:
    """`task.data` against its folder: train/ there (and val/ where the task cannot split train/), the same classes
    in both, `num_classes` (when set) equal to their count, `image_size` a size (or `auto`, where the task takes
    it)."""
    size = data.get("image_size")
    if size is not None and not (isinstance(size, int) and size > 0) and not (auto_size and size == "auto"):
        raise ConfigError(f"task.data.image_size={size} must be a number of pixels"
                          + (" or auto (the images' own size)" if auto_size else ""))
    if not data.root:
        return
    root = Path(data.root)
    for split in SPLITS if needs_val else SPLITS[:1]:
        if not (root / split).is_dir():
            raise ConfigError(f"task.data.root={data.root} has no {split}/ folder; an ImageFolder tree needs "
                              f"train/<class>/<image> and val/<class>/<image>")
    from torchvision.datasets.folder import find_classes

    try:
        train = folder_classes(str(root))
        val = tuple(find_classes(str(root / "val"))[0]) if (root / "val").is_dir() else train
    except FileNotFoundError:
        raise ConfigError(f"task.data.root={data.root}: train/ or val/ holds no class folder; an ImageFolder tree "
                          f"needs train/<class>/<image> and val/<class>/<image>") from None
    if train != val:
        only = sorted(set(train) ^ set(val))[0]
        where = "train/" if only in train else "val/"
        raise ConfigError(f"task.data.root={data.root}: train/ has {len(train)} class folders and val/ {len(val)}, "
                          f"not the same ('{only}' only in {where}); both splits need every class")
    wanted = data.get("num_classes")
    if wanted is not None and wanted != len(train):
        raise ConfigError(f"task.data.num_classes={wanted} contradicts task.data.root={data.root}, whose train/ has "
                          f"{len(train)} class folders; leave task.data.num_classes=null to read it from the folder")


@lru_cache(maxsize=8)
def first_image_size(root: str) -> tuple[int, int]:
    """(width, height) of the first image of root/train in ImageFolder's order (read from its header)."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS

    train = Path(root) / "train"
    for name in folder_classes(root):
        for path in sorted((train / name).rglob("*")):
            if path.suffix.lower() in IMG_EXTENSIONS:
                try:
                    with Image.open(path) as image:
                        return image.size
                except (OSError, SyntaxError, ValueError) as err:  # UnidentifiedImageError is an OSError
                    raise UnreadableImage(f"{path} is not a readable image ({type(err).__name__}: {err}); remove or "
                                          f"replace it and run again") from None
    raise ConfigError(f"task.data.root={root}: train/ holds no image ({', '.join(IMG_EXTENSIONS)})")


def resolved_image_size(data) -> int:
    """`task.data.image_size`, or with `auto` the longer side of the first training image."""
    return max(first_image_size(str(data.root))) if data.image_size == "auto" else int(data.image_size)


def upscale_notice(data) -> str | None:
    """One line when the images are at most half the size the model reads: they are all resized up."""
    width, height = first_image_size(str(data.root))
    size = resolved_image_size(data)
    if max(width, height) * 2 <= size:
        return (f"the images of {data.root} are {width}×{height} (the first of train/) and are resized to "
                f"{size}×{size}; task.data.image_size=auto (or ={max(width, height)}) trains at their own size")
    return None


def has_val(root) -> bool:
    return (Path(root) / "val").is_dir()


def folder_splits(root, train_transform, val_transform, val_fraction: float):
    """(train, val) ImageFolders of root/train and root/val; without val/, a fixed stratified `val_fraction` of
    each class of train/ validates (the embedded digits' split, `split_indices`), with the validation transform,
    and trains on the rest: disjoint, the same on every run and machine."""
    from torch.utils.data import Subset

    root = Path(root)
    if has_val(root):
        return image_folder(root / "train", train_transform), image_folder(root / "val", val_transform)
    import torch

    from .mnist import split_indices

    train = image_folder(root / "train", train_transform)
    train_idx, val_idx = split_indices(torch.tensor(train.targets), val_fraction)
    val = Subset(image_folder(root / "train", val_transform), val_idx.tolist())
    return Subset(train, train_idx.tolist()), val


def split_note(data) -> str | None:
    """How validation was made, where the folder has no val/."""
    if has_val(data.root):
        return None
    return f"no val/: a fixed {data.val_fraction:.0%} of each class of train/ validates, the rest trains"
