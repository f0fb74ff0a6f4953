"""What the on-disk caches (tokenizers, token files, latents) share."""
from __future__ import annotations

from pathlib import Path


def cache_lock(path: Path):
    """An inter-process lock beside a cache entry: runs started together (a sweep) build it once."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")
