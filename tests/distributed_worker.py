"""Run under `torchrun --nproc_per_node 2` by tests/test_parallel.py: checks that need several processes in one
process group, done in one launch to pay the start-up once.

    every_task OUT_DIR   — every task's debug model trains 2 steps with trainer.strategy=fsdp
    dropout OUT_FILE     — after the trainer's seeding, two ranks draw different dropout masks in one step
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_trainer import compose_cfg  # noqa: E402

TASKS = {
    "vit": ["task=vit"],
    "convnext": ["task=convnext"],
    "llama": ["task=llama", "task.data.seq_len=32"],
    "dit": ["task=dit", "task.sample.steps=2", "task.eval.num_samples=8", "task.eval.final_num_samples=8",
            "task.grid.per_class=1", "task.grid.classes=[0,1]"],
    "wav2vec2": ["task=wav2vec2", "task.data.train_sentences=8", "task.data.val_sentences=8", "trainer.batch_size=1"],
    "hyenadna": ["task=hyenadna", "task.data.seq_len=128"],
    "caduceus": ["task=caduceus", "task.data.seq_len=64"],
    "resnet": ["task=resnet"],
    "mae": ["task=mae", "task.knn.bank_size=64"],
    "dino": ["task=dino", "task.knn.bank_size=64", "task.dino.out_dim=64", "task.dino.local_crops_number=2",
             "task.dino.local_crop_size=14"],
}
COMMON = ["task.size=debug", "trainer.strategy=fsdp", "trainer.max_steps=2", "trainer.batch_size=4",
          "trainer.log_every=1", "trainer.eval_every=2", "trainer.max_eval_batches=1", "logger=none",
          "trainer.progress=log"]


def every_task(out: Path) -> None:
    from dyt.train.run import train

    results = {}
    for name, overrides in TASKS.items():
        cfg = compose_cfg(*COMMON, *overrides, run_dir=str(out / name))
        summary = train(cfg)
        results[name] = {"status": summary["status"], "steps": summary["steps"]}
    if dist.get_rank() == 0:
        (out / "results.json").write_text(json.dumps(results))


def dropout(out: Path) -> None:
    """The trainer's own sequence: identical weights from the model build, then `seed_process` per rank."""
    from accelerate import Accelerator

    from dyt.train.parallel import prepare_model, seed_process
    from dyt.train.run import build_task

    cfg = compose_cfg("task=vit", "task.size=debug", "+task.model.kwargs.drop_rate=0.5", "trainer.strategy=fsdp")
    accelerator = Accelerator(cpu=True)
    built = prepare_model(cfg, build_task(cfg), accelerator)
    seed_process(cfg.seed, accelerator.process_index)
    built.model.train()
    images = torch.ones(2, 1, 28, 28)
    logits = built.model(images).detach()
    gathered = [torch.empty_like(logits) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, logits)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"same_output": bool(torch.equal(gathered[0], gathered[1]))}))


if __name__ == "__main__":
    import dyt.train  # noqa: F401 — schemas and resolvers

    command, target = sys.argv[1], Path(sys.argv[2])
    {"every_task": every_task, "dropout": dropout}[command](target)
    if dist.is_initialized():
        dist.destroy_process_group()
