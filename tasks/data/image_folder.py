"""A user's ImageFolder tree (`task.data.root` with train/<class>/<image> and val/<class>/<image>) read as it is:
its classes from the folders, its image size from its first image, and one-line errors, before any work, where
the tree and the config disagree."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dyt.train.config import ConfigError

SPLITS = ("train", "val")


@lru_cache(maxsize=8)
def folder_classes(root: str) -> tuple[str, ...]:
    """The class folders of root/train, as torchvision's ImageFolder finds (and indexes) them."""
    from torchvision.datasets.folder import find_classes

    return tuple(find_classes(str(Path(root) / "train"))[0])


def check_image_folder(data, *, auto_size: bool = True) -> None:
    """`task.data` against its folder: both splits there, the same classes in each, `num_classes` (when set) equal
    to their count, `image_size` a size (or `auto`, where the task takes it)."""
    size = data.get("image_size")
    if size is not None and not (isinstance(size, int) and size > 0) and not (auto_size and size == "auto"):
        raise ConfigError(f"task.data.image_size={size} must be a number of pixels"
                          + (" or auto (the images' own size)" if auto_size else ""))
    if not data.root:
        return
    root = Path(data.root)
    for split in SPLITS:
        if not (root / split).is_dir():
            raise ConfigError(f"task.data.root={data.root} has no {split}/ folder; an ImageFolder tree needs "
                              f"train/<class>/<image> and val/<class>/<image>")
    try:
        train = folder_classes(str(root))
        from torchvision.datasets.folder import find_classes

        val = tuple(find_classes(str(root / "val"))[0])
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
                with Image.open(path) as image:
                    return image.size
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
