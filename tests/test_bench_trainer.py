"""scripts/bench_trainer.py runs each kind of task (a supervised one, a self-supervised one with its teacher) and
writes its table; the ratios it measures are for the benchmark, not asserted here."""
from __future__ import annotations

import json

import pytest
import torch

from scripts.bench_trainer import main


@pytest.mark.parametrize("task, tiny", [
    ("vit", []),
    ("dino", ["task.dino.local_crop_size=14", "task.dino.local_crops_number=2", "task.knn.bank_size=64"]),
])
def test_bench_trainer_measures_the_three_loops_and_writes_its_table(tmp_path, task, tiny):
    earlier = {"task": "resnet", "seconds": dict.fromkeys(["bare", "data", "trainer_off", "trainer_default"], 0.1),
               "ratios": dict.fromkeys(["bare", "data", "trainer_off", "trainer_default"], 1.0)}
    (tmp_path / f"trainer_{torch.get_num_threads()}threads.json").write_text(json.dumps([earlier]))
    main(["--tasks", task, "--rounds", "1", "--windows", "1", "--out", str(tmp_path), "task.size=debug",
          "trainer.log_every=2", "trainer.batch_size=4", "trainer.max_eval_batches=1", *tiny])
    rows = {r["task"]: r for r in json.loads(next(tmp_path.glob("trainer_*threads.json")).read_text())}
    assert rows["resnet"] == earlier  # another task's row, measured before, stays
    result = rows[task]
    assert result["task"] == task and set(result["seconds"]) == {"bare", "data", "trainer_off", "trainer_default"}
    assert result["steps"] == 2  # (a) and (b) time --windows × the task's log_every steps
    assert all(seconds > 0 for seconds in result["seconds"].values()) and result["ratios"]["bare"] == 1.0
    # the trainer's own clock: an evaluation and a checkpoint were timed, and the default cadence adds their share
    assert result["eval_seconds"] > 0 and result["ckpt_seconds"] > 0
    assert result["seconds"]["trainer_default"] > result["seconds"]["trainer_off"]
    assert f"| {task} |" in next(tmp_path.glob("trainer_*threads.md")).read_text()
