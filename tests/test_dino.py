"""DINO (task=dino): the teacher gets no gradients and follows the student by the momentum schedule, the centre
moves, the schedules are main_dino.py's, every norm of student and teacher is converted, the k-NN probe."""
import math

import pytest
import torch
from torch import nn

from dyt import DynamicTanh
from tasks.dino import dino_loss
from tasks.ssl import knn_predict
from tests.test_trainer import compose_cfg

TINY = ["task=dino", "task.size=debug", "task.dino.out_dim=64", "task.dino.head.hidden_dim=32",
        "task.dino.head.bottleneck_dim=16", "task.dino.global_crop_size=28", "task.dino.local_crop_size=14",
        "task.dino.local_crops_number=2", "task.dino.steps_per_epoch=4", "task.dino.freeze_last_layer_epochs=1",
        "task.dino.warmup_teacher_temp_epochs=3"]


def _build(*overrides):
    from dyt.train.run import build

    return build(compose_cfg(*TINY, *overrides))


def _crops(batch=4):
    return [torch.randn(batch, 1, 28, 28), torch.randn(batch, 1, 28, 28),
            torch.randn(batch, 1, 14, 14), torch.randn(batch, 1, 14, 14)]


def _step(task, model, optimizer, step, max_steps=40):
    task.set_step(step, max_steps)
    loss, metrics = task.loss(model, (_crops(), torch.zeros(4, dtype=torch.long)))
    loss.backward()
    return loss, metrics


def test_the_teacher_gets_no_gradients_and_follows_the_momentum_schedule():
    task, model, _ = _build("norm=dyt", "task.dino.momentum_teacher=0.996")  # main_dino.py's (the CPU default: 0.99)
    model.train()
    teacher, student = model.teacher_pairs()
    assert teacher and not any(p.requires_grad for p in teacher)  # converted DyT parameters included
    assert all(torch.equal(t, s) for t, s in zip(teacher, student))  # main_dino.py: they start equal
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _step(task, model, optimizer, 0)
    assert all(p.grad is None for p in teacher)
    assert model.student.backbone.blocks[0].norm1.alpha.grad is not None
    # the first epoch: the head's last layer is frozen (no gradient, so AdamW leaves it alone)
    assert model.student.head.last_layer.weight_v.grad is None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    before = [t.detach().clone() for t in teacher]
    _step(task, model, optimizer, 1)  # the update the first optimizer step owes the teacher, with momentum(0)
    m = task.momentum(0)
    assert m == pytest.approx(0.996)  # utils.cosine_scheduler(momentum_teacher, 1, …)[0]
    for t, old, s in zip(teacher, before, student):
        assert torch.allclose(t, m * old + (1 - m) * s.detach(), atol=1e-6)
    assert int(model.teacher_steps) == 1
    task.loss(model, (_crops(), torch.zeros(4, dtype=torch.long)))  # another micro-step: no second update
    assert int(model.teacher_steps) == 1


def test_momentum_and_temperature_schedules_are_main_dinos():
    # the ViT-B rows' schedules (the CPU default keeps the temperature at 0.04)
    task, _, _ = _build("norm=layernorm", "task.dino.momentum_teacher=0.996", "task.dino.teacher_temp=0.07",
                        "task.dino.warmup_teacher_temp_epochs=3")
    task.set_step(0, 40)
    moments = [task.momentum(s) for s in range(40)]
    assert moments[0] == pytest.approx(0.996) and all(a < b for a, b in zip(moments, moments[1:]))
    assert moments[20] == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi / 2)))  # half way
    assert moments[-1] == pytest.approx(1 - 0.004 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    # np.linspace(0.04, 0.07, 3) per epoch (4 steps here), then 0.07
    temps = [task.teacher_temp(s) for s in (0, 3, 4, 8, 11, 12, 100)]
    assert temps == pytest.approx([0.04, 0.04, 0.055, 0.07, 0.07, 0.07, 0.07])
    assert [task.last_layer_frozen(s) for s in (0, 3, 4)] == [True, True, False]


def test_a_resumed_task_owes_the_teacher_exactly_the_missed_update():
    """The count of followed steps is a buffer: a new task object (a resumed run) makes the one update the
    checkpoint was saved without, and never one twice."""
    from tasks.dino import DinoTask

    task, model, _ = _build("norm=layernorm")
    model.train()
    model.teacher_steps.fill_(5)
    fresh = DinoTask(task.cfg)
    fresh.set_step(5, 40)
    teacher = [t.detach().clone() for t in model.teacher_pairs()[0]]
    fresh.follow_student(model, 5)
    assert all(torch.equal(a, b) for a, b in zip(teacher, model.teacher_pairs()[0]))  # nothing owed
    fresh.follow_student(model, 6)
    assert int(model.teacher_steps) == 6 and not all(
        torch.equal(a, b) for a, b in zip(teacher, model.teacher_pairs()[0]))


def test_the_centre_updates_and_the_loss_skips_same_view_pairs():
    task, model, _ = _build("norm=layernorm")
    model.train()
    assert torch.count_nonzero(model.center) == 0
    crops = _crops()
    task.set_step(0, 40)
    with torch.no_grad():
        _, teacher_out = model(crops)
    torch.manual_seed(0)
    task.loss(model, (crops, torch.zeros(4, dtype=torch.long)))
    # DINOLoss.update_center: center·0.9 + batch mean·0.1, from zeros (the teacher is deterministic here)
    assert torch.allclose(model.center, 0.1 * teacher_out.mean(dim=0, keepdim=True), atol=1e-6)
    # the loss: every (teacher view i, student view v ≠ i) pair; a student equal to the teacher on its own view
    # scores nothing for that view
    student = torch.randn(8, 5)
    teacher = torch.randn(4, 5)
    loss, probs = dino_loss(student, teacher, torch.zeros(1, 5), crops=4, global_crops=2, teacher_temp=0.1,
                            student_temp=0.1)
    q = probs.chunk(2)
    s = (student / 0.1).chunk(4)
    pairs = [(i, v) for i in range(2) for v in range(4) if v != i]
    expected = sum((-q[i] * torch.log_softmax(s[v], -1)).sum(-1).mean() for i, v in pairs) / len(pairs)
    assert loss == pytest.approx(float(expected), rel=1e-6) and len(pairs) == 6


def test_every_norm_of_student_and_teacher_is_converted():
    _, model, swaps = _build("norm=dyt")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    paths = {s.path for s in swaps.replaced}
    assert {"student.backbone.norm", "teacher.backbone.norm", "teacher.backbone.blocks.1.norm2"} <= paths
    assert len(paths) == 2 * (2 * 2 + 1)
    assert isinstance(model.teacher.backbone.norm, DynamicTanh)
    # multi-crop: global and local crops through the same backbone, one head pass
    student_out, teacher_out = model(_crops())
    assert student_out.shape == (16, 64) and teacher_out.shape == (8, 64)


def test_fine_tuning_starts_from_the_teacher(tmp_path):
    from dyt.train.checkpoint import latest_checkpoint, model_weights
    from dyt.train.run import build, train

    run = tmp_path / "pretrain"
    summary = train(compose_cfg(*TINY, "norm=dyt", "trainer.max_steps=2", "trainer.eval_every=2",
                                "trainer.batch_size=8", "task.knn.bank_size=100", "trainer.max_eval_batches=1",
                                "logger=none", run_dir=str(run)))
    assert summary["status"] == "completed" and summary["headline"]["name"] == "val/knn_acc"
    assert (run / "knn_curve.png").exists()
    weights = model_weights(latest_checkpoint(run / "checkpoints"))
    assert weights["teacher_steps"].item() == 2  # the last step's update, made before the final evaluation
    _, classifier, _ = build(compose_cfg(*TINY, "norm=dyt", "task.stage=finetune", f"init_from={run}"))
    own = classifier.state_dict()
    for name in ("teacher.backbone.blocks.0.attn.qkv.weight", "teacher.backbone.blocks.1.norm1.alpha"):
        assert torch.equal(own[name], weights[name])
        assert not torch.equal(weights[name], weights[name.replace("teacher", "student")])


def test_knn_votes_by_similarity():
    """eval_knn.py knn_classifier: the k nearest by cosine similarity vote with weight exp(sim / T)."""
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[2.0, 0.1], [0.1, 3.0], [1.0, 0.6]])
    assert knn_predict(queries, bank, labels, 2, k=2).tolist() == [0, 1, 0]
    # with every neighbour voting, three class-1 points outvote two closer class-0 ones at a high temperature
    assert knn_predict(queries[2:], bank, labels, 2, k=5, temperature=100.0).tolist() == [1]
