"""Print the sbatch script that `python train.py -m hydra/launcher=slurm <overrides>` submits for one sweep
point, without submitting anything (and without Slurm): check partition, GPUs, time and the preemption
signal before a big sweep.

    python scripts/slurm_preview.py experiment=vit_b hydra.launcher.partition=gpu
"""
from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# launcher keys that configure the executor or the sweep, not the sbatch script
_NOT_SBATCH = {"_target_", "submitit_folder", "max_num_timeout"}


def sbatch_script(overrides: list[str], folder: str = "<sweep>/.submitit/%j") -> str:
    """The launcher config's parameters renamed as submitit's Slurm executor renames them, rendered by
    submitit's own sbatch template."""
    from submitit.slurm.slurm import SlurmExecutor, _convert_mem, _make_sbatch_string

    import dyt.train  # noqa: F401 — registers the config schemas and resolvers

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    launcher["tasks_per_node"] = cfg.hydra.launcher.tasks_per_node  # an interpolation of gpus_per_node
    launcher["name"] = "train"
    renames = SlurmExecutor._equivalence_dict()
    params = {renames.get(k, k): v for k, v in launcher.items() if k not in _NOT_SBATCH and v is not None}
    if "mem" in params:
        params["mem"] = _convert_mem(params["mem"])
    return _make_sbatch_string(command="python -u -m submitit.core._submit " + folder, folder=folder, **params)


if __name__ == "__main__":
    print(sbatch_script(sys.argv[1:]))
