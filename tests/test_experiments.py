"""Every experiment config (a paper table row) composes and trains one step at a tiny override: the real-data
paths it requires are dropped so the task's embedded default stands in."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT
from tests.test_trainer import compose_cfg

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
TINY = ["task.size=debug", "trainer.max_steps=1", "trainer.global_batch_size=null", "trainer.grad_accum=1",
        "trainer.batch_size=4", "trainer.mixed_precision=no", "trainer.num_workers=0", "trainer.eval_every=1",
        "trainer.max_eval_batches=1", "logger=none"]
# per task: switches that demand local files at start (DiT: ImageNet, Inception weights) off, sampling tiny
TASK_TINY = {"llama": ["trainer.compile=false", "trainer.strategy=ddp"],
             "dit": ["task.data.require_root=false", "task.eval.fid=false", "task.grid.classes=null",
                     "task.grid.per_class=1", "task.sample.steps=2"],
             # the paper's windows (1,024 and 131,072 bp) at the debug model's 256-position context
             "hyenadna": ["task.data.require_real_data=false", "task.data.seq_len=64"],
             "caduceus": ["task.data.require_real_data=false", "task.data.seq_len=64"],
             # the digits stand in for ImageNet: a small k-NN bank, DINO's crops at the digits' size, a small head
             "mae": ["task.knn.bank_size=64"],
             "dino": ["task.knn.bank_size=64", "task.dino.global_crop_size=28", "task.dino.local_crop_size=14",
                      "task.dino.local_crops_number=2", "task.dino.out_dim=256"]}


def _missing_keys(cfg) -> list[str]:
    """Dotted keys whose value is `???` (the real data an experiment needs)."""
    found = []

    def walk(node, prefix):
        for key in node.keys():
            full = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_missing(node, key):
                found.append(full)
            elif OmegaConf.is_dict(node._get_node(key)):
                walk(node[key], full)

    walk(cfg, "")
    return found


def test_there_are_experiments_for_the_paper_tables():
    assert {"vit_b", "vit_l", "convnext_b", "convnext_l"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_trains_one_step(experiment, tmp_path):
    from dyt.train.config import validate
    from dyt.train.run import train

    cfg = compose_cfg(f"experiment={experiment}", *TINY)
    missing = _missing_keys(cfg)
    assert all(k.startswith("task.") for k in missing), missing
    cfg = compose_cfg(f"experiment={experiment}", *TINY, "required=[]", *(f"{k}=null" for k in missing),
                      *TASK_TINY.get(cfg.task.name, []), run_dir=str(tmp_path))
    validate(cfg)
    result = train(cfg)
    assert result["status"] == "completed" and result["steps"] == 1, result
    assert result["group"] == cfg.group
    assert Path(tmp_path, "summary.json").exists()
