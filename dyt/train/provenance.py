"""What a run's numbers depend on besides its config: the content of every first-use artifact the task made or
read (tokenizer, token file, synthesised speech, gene predictions, latent caches, metric networks, the user's
data by manifest), the code, the libraries and the machine. Written to summary.json and the tracker's
config, so two runs whose metric networks or data differ are never averaged as if they were alike
(scripts/compare.py refuses to pool them)."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

LIBRARIES = ("torch", "timm", "transformers", "diffusers", "accelerate", "datasets", "tokenizers", "dyt-suite")
WHOLE_FILE_LIMIT = 256 * 2**20  # bytes hashed whole; above it, size + the first and last 16 MiB
EDGE = 16 * 2**20


def _file_digest(path: Path, digest) -> None:
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        else:  # a corpus-sized file: its size and both ends stand for it
            digest.update(f.read(EDGE))
            f.seek(size - EDGE)
            digest.update(f.read(EDGE))


def fingerprint(artifact) -> str:
    """A short content hash: of a file; of a folder (each file's relative path and content, in order; a folder
    of more than 10,000 files — a dataset — by its manifest: paths and sizes); of bytes, text or an array."""
    digest = hashlib.sha256()
    if isinstance(artifact, Path):
        if artifact.is_file():
            _file_digest(artifact, digest)
        else:
            files = sorted(p for p in artifact.rglob("*") if p.is_file() and not p.name.startswith("."))
            manifest = len(files) > 10_000
            for path in files:
                digest.update(str(path.relative_to(artifact)).encode())
                if manifest:
                    digest.update(str(path.stat().st_size).encode())
                else:
                    _file_digest(path, digest)
    elif isinstance(artifact, np.ndarray):
        digest.update(str((artifact.dtype, artifact.shape)).encode())
        digest.update(np.ascontiguousarray(artifact).tobytes())
    elif isinstance(artifact, bytes):
        digest.update(artifact)
    else:
        digest.update(str(artifact).encode())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """The code (commit, and whether the tree had changes), the libraries, the device and the threads."""
    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    status = _git("status", "--porcelain", "--untracked-files=no")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name()
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None,
            "versions": versions, "python": platform.python_version(), "device": device,
            "devices": torch.cuda.device_count() if torch.cuda.is_available() else 1,
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def provenance(task) -> dict:
    """{"artifacts": name → content hash, **environment()} for a task whose data are built."""
    return {"artifacts": {name: fingerprint(value) for name, value in task.artifacts().items()}, **environment()}
