"""The fault matrix of scripts/chaos.py on every task's debug model: each (task, fault) cell must survive —
the same per-step losses as an uninterrupted run after SIGKILL or SIGTERM and the same command again, a
corrupt newest checkpoint skipped for the one before, a failed checkpoint write counted while training goes
on, a second process on the folder refused naming the first's PID, a failing tracker switched off.

The runs are forked from this process after one import of torch and the tasks (chaos.py --launcher fork), a
few seconds less each than a fresh `python train.py`; each task's runs are made once, when its first cell is
asked for (`-k vit` runs only ViT's)."""
from __future__ import annotations

import pytest

from scripts import chaos

_cells: dict[tuple[str, str], chaos.Cell] = {}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    chaos.use_launcher("fork")
    yield tmp_path_factory.mktemp("chaos")
    chaos.use_launcher("exec")


def cell(work, task: str, fault: str) -> chaos.Cell:
    if (task, fault) not in _cells:
        for made in chaos.run_matrix([task], list(chaos.FAULTS), work):
            _cells[made.task, made.fault] = made
    return _cells[task, fault]


@pytest.mark.parametrize("fault", list(chaos.FAULTS))
@pytest.mark.parametrize("task", list(chaos.TASKS))
def test_every_task_survives_every_fault(work, task, fault):
    found = cell(work, task, fault)
    assert found.survived, f"{task} × {fault}: {found.lost} — {found.detail}"


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
