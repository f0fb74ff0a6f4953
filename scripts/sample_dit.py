"""Write a grid of DiT samples (one row per class) from a checkpoint.

    python scripts/sample_dit.py outputs/dit/norm:dyt                       # a run folder: its latest checkpoint
    python scripts/sample_dit.py outputs/dit/norm:dyt/checkpoints/step_00001200 --out grid.png \
        --classes 3 5 8 --per-class 16 --scheduler ddpm --steps 250 --cfg-scale 4

The model is rebuilt from the run's config.yaml (task, size, norm) and loaded with the EMA weights when the
run kept an EMA (`--no-ema` for the raw weights). Sampling settings default to the run's task.sample/grid.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def checkpoint_and_config(path: Path) -> tuple[Path, Path]:
    """(checkpoint folder, the run's config.yaml) from a run folder or a checkpoint folder."""
    from dyt.train.checkpoint import MARKER, latest_checkpoint

    if (path / MARKER).exists():
        return path, path.parent.parent / "config.yaml"
    checkpoint = latest_checkpoint(path / "checkpoints")
    if checkpoint is None:
        raise SystemExit(f"error: {path} is neither a checkpoint folder nor a run folder with complete checkpoints")
    return checkpoint, path / "config.yaml"


def load_model(checkpoint: Path, cfg, use_ema: bool = True):
    """The run's task and its model with the run's norm, weights from `checkpoint` (EMA if there is one)."""
    from hydra.utils import get_class

    from dyt.convert import convert
    from dyt.train.checkpoint import model_weights
    from dyt.train.config import norm_spec

    cfg.task.eval.fid = False  # a grid needs no Inception weights
    task = get_class(cfg.task._target_)(cfg.task)
    model = task.build_model()
    if cfg.norm.type != "native":  # the run kept the model's own norms
        convert(model, norm_spec(cfg.norm), roles=task.norm_roles, exclude=task.norm_exclude)
    weights = model_weights(checkpoint)
    ema = checkpoint / "custom_checkpoint_0.pkl"  # accelerate's file for the trainer's registered EMA
    if use_ema and cfg.trainer.get("ema_decay") and ema.exists():
        state = torch.load(ema, map_location="cpu", weights_only=True)
        weights = {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}
    model.load_state_dict(weights)
    return task, model.eval()


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a run folder or one of its checkpoints/step_* folders")
    parser.add_argument("--out", type=Path, help="PNG to write (default: <run>/samples_step<N>.png)")
    parser.add_argument("--classes", type=int, nargs="+", help="class ids, one row each")
    parser.add_argument("--per-class", type=int)
    parser.add_argument("--scheduler", choices=("ddim", "ddpm"))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg-scale", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-ema", action="store_true", help="the raw weights even if the run kept an EMA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf

    checkpoint, config = checkpoint_and_config(args.path)
    cfg = OmegaConf.load(config)
    overrides = {"task.grid.classes": args.classes, "task.grid.per_class": args.per_class,
                 "task.sample.scheduler": args.scheduler, "task.sample.steps": args.steps,
                 "task.grid.cfg_scale": args.cfg_scale, "task.eval.seed": args.seed}
    for key, value in overrides.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    task, model = load_model(checkpoint, cfg, use_ema=not args.no_ema)
    step = int(checkpoint.name.split("_")[-1])
    out = args.out or config.parent / f"samples_step{step}.png"
    task.write_grid(model.to(args.device), out, device=torch.device(args.device))
    print(out)
    return out


if __name__ == "__main__":
    main()
