"""The fault matrix of scripts/chaos.py on every task's debug model: each (task, fault) cell must survive —
the same per-step losses as an uninterrupted run after SIGKILL or SIGTERM and the same command again, a
corrupt newest checkpoint skipped for the one before, a failed checkpoint write counted while training goes
on, a second process on the folder refused naming the first's PID, a failing tracker switched off.

chaos.py runs in a process of its own: its fork launcher (one import of torch and the tasks, then a fork per
run) is safe only from a process that has not run torch's thread pools yet, which this test process has."""
from __future__ import annotations

import subprocess
import sys

import pytest

from scripts import chaos
from tests.helpers import ROOT, train_env


def test_every_task_survives_every_fault(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), "--launcher", "fork", "--out",
                             str(tmp_path)], cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=1500)
    rows = [line.strip("|").split("|") for line in (tmp_path / "chaos.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| task")]
    cells = {(row[0].strip(), fault): cell.strip() for row in rows for fault, cell in zip(chaos.FAULTS, row[1:])}
    assert {task for task, _ in cells} == set(chaos.TASKS), result.stdout[-3000:]
    lost = {key: cell for key, cell in cells.items() if cell != "survived"}
    assert not lost and result.returncode == 0, (lost, result.stdout[-4000:])


def test_the_table_names_what_was_lost():
    cells = [chaos.Cell("vit", "sigkill", True), chaos.Cell("vit", "corrupt", False, "resume crashed (exit 1)"),
             chaos.Cell("llama", "sigkill", False, "losses differ from step 4")]
    lines = chaos.table(cells).splitlines()
    assert lines[0] == "| task | sigkill | corrupt |"
    assert lines[2] == "| vit | survived | resume crashed (exit 1) |"
    assert lines[3] == "| llama | losses differ from step 4 |  |"


def test_a_differing_loss_is_reported_with_its_step_and_values(tmp_path):
    import json

    for name, losses in (("a", [2.5, 2.4, 2.3]), ("b", [2.5, 2.4, 2.2999])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(
            json.dumps({"step": i + 1, "train/loss": v, "grad_norm": 1.0}) + "\n" for i, v in enumerate(losses)))
    with pytest.raises(chaos.Lost) as lost:
        chaos.same_losses(tmp_path / "b", tmp_path / "a")
    assert lost.value.short == "losses differ from step 3"
    assert "(3, 2.2999, 1.0)" in lost.value.detail and "(3, 2.3, 1.0)" in lost.value.detail
