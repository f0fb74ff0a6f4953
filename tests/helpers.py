"""Run train.py as a user would, in a subprocess, into a given run folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.update(extra)
    return env


def run_train(run_dir: Path | None, *overrides: str, timeout: float = 600, check: bool = True, launcher=None,
              **env) -> subprocess.CompletedProcess:
    """`python train.py <overrides>` with logger=none and plain log lines unless overridden; `run_dir` becomes
    hydra.run.dir. `launcher` replaces `python` (e.g. an `accelerate launch` prefix)."""
    args = list(overrides)
    if not any(a.startswith("logger=") for a in args):
        args.append("logger=none")
    if not any(a.startswith("trainer.progress=") for a in args):
        args.append("trainer.progress=log")
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    command = (launcher or [sys.executable]) + [str(ROOT / "train.py"), *args]
    result = subprocess.run(command, cwd=ROOT, env=train_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 36, val_classes=None) -> Path:
    """An ImageFolder tree of random RGB PNGs, train/<class>/ and val/<class>/ (`val_classes` where val/ differs),
    each class darker than the one before it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for label, name in enumerate(names):
            folder = Path(root) / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // (label + 1)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return Path(root)
