"""A user's data that is partly broken: each case is either skipped and counted (a log line naming the first bad file,
the count in summary.json's `data`) or one `error: …` line naming the file (and line), never a traceback from a
data worker. Real small files, made here; tiny runs."""
from __future__ import annotations

import json
import wave

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_train, summary

FAST = ["trainer.max_steps=2", "trainer.batch_size=4", "trainer.max_eval_batches=1", "trainer.eval_every=2"]


def _one_error_line(result, *needles) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- images


def _image_folder(root, per_class: int, size: int = 24):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(("ant", "bee", "wasp")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // (label + 1)).save(
                    folder / f"{i}.png")
    return root


@pytest.mark.parametrize("break_image", [
    lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),  # truncated
    lambda path: path.write_bytes(b"<html>not found</html>" * 20),  # not an image at all
], ids=["truncated", "garbage"])
def test_a_broken_image_stops_the_run_with_one_line_naming_it_from_a_worker_too(tmp_path, break_image):
    root = _image_folder(tmp_path / "images", per_class=1)
    broken = root / "train" / "bee" / "0.png"
    break_image(broken)
    run_dir = tmp_path / "run"
    # 3 training images, a batch of 3: the first step reads every one, in a DataLoader worker
    result = run_train(run_dir, "task=vit", "task.size=debug", f"task.data.root={root}", "task.data.image_size=24",
                       "trainer.max_steps=1", "trainer.batch_size=3", "trainer.num_workers=1", check=False)
    line = _one_error_line(result, f"{broken} is not a readable image", "remove or replace it")
    assert "Traceback" not in result.stdout + result.stderr and "DataLoader worker" not in line
    assert summary(run_dir)["status"] == "failed" and str(broken) in summary(run_dir)["error"]


def test_an_unreadable_first_image_is_one_line_before_any_work(tmp_path):
    root = _image_folder(tmp_path / "images", per_class=1)
    (root / "train" / "ant" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = run_train(tmp_path / "run", "task=vit", "task.size=debug", f"task.data.root={root}",
                       "task.data.image_size=auto", *FAST, check=False)
    _one_error_line(result, f"{root / 'train' / 'ant' / '0.png'} is not a readable image")
