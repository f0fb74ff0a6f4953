"""python train.py task=vit norm=dyt — see README.md. Every run goes through dyt.train.run."""
from pathlib import Path

import hydra

from dyt.train import preflight, run

CONFIGS = Path(__file__).resolve().parent / "configs"


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg):
    return run(cfg)


if __name__ == "__main__":
    preflight(CONFIGS)
    main()
