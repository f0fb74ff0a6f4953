"""Write a grid of DiT samples (one row per class) from a checkpoint, and with `--num-samples` the sample
batch ADM's evaluator reads (the npz of DiT's sample_ddp.py).

    python scripts/sample_dit.py outputs/dit/norm:dyt                       # a run folder: its latest checkpoint
    python scripts/sample_dit.py outputs/dit/norm:dyt/checkpoints/step_00001200 --out grid.png \
        --classes 3 5 8 --per-class 16 --scheduler ddpm --steps 250 --cfg-scale 4
    accelerate launch --num_processes 8 scripts/sample_dit.py outputs/dit_xl2/norm:dyt --num-samples 50000
    python evaluator.py VIRTUAL_imagenet256_labeled.npz outputs/dit_xl2/norm:dyt/samples_step400000_50000.npz

The model is rebuilt from the run's config.yaml (task, size, norm) and loaded with the EMA weights when the
run kept an EMA (`--no-ema` for the raw weights). Sampling settings default to the run's task.sample/grid.
The npz holds `arr_0`, uint8 [N, H, W, 3] as ADM's evaluator reads it, and the labels as `arr_1` (as
guided-diffusion's image_sample.py); its samples are those the run's FID scores: `task.sample` (the paper
rows: 250 DDPM steps, no guidance), labels by `task.eval.labels` (random), seeded by `task.eval.seed`.
`--fid-reference REF.npz` also prints their FID against REF as tasks/fid.py computes it.
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

    cfg.task.eval.fid = False  # sampling needs no Inception weights, nor the FID reference
    cfg.task.eval.reference = None
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


@torch.no_grad()
def write_sample_npz(task, model, path: Path, num_samples: int, device=None) -> Path:
    """The run's FID samples (`task.fid_samples`) as ADM's sample batch: uint8 NHWC `arr_0`, labels `arr_1`.
    Under `accelerate launch` each process samples its share (sample i from process i mod processes) into
    one memory-mapped array; the main process writes the npz."""
    import numpy as np
    from accelerate import PartialState

    from tasks.fid import to_uint8

    state = PartialState()
    device = torch.device(device) if device is not None else state.device
    path = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")  # np.savez would add it
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".arr_0.npy")
    labels_file = path.with_suffix(".arr_1.npy")
    size = task.image_size
    if state.is_main_process:
        np.lib.format.open_memmap(staging, mode="w+", dtype=np.uint8, shape=(num_samples, size, size, 3)).flush()
        np.lib.format.open_memmap(labels_file, mode="w+", dtype=np.int64, shape=(num_samples,)).flush()
    state.wait_for_everyone()
    images = np.load(staging, mmap_mode="r+")
    labels = np.load(labels_file, mmap_mode="r+")
    rows = np.arange(state.process_index, num_samples, state.num_processes)
    done = 0
    for batch, batch_labels in task.fid_samples(model, num_samples, rank=state.process_index,
                                                 world=state.num_processes, device=device):
        index = rows[done:done + len(batch)]
        images[index] = to_uint8(batch).permute(0, 2, 3, 1).cpu().numpy()
        labels[index] = batch_labels.cpu().numpy()
        done += len(batch)
    images.flush()
    labels.flush()
    state.wait_for_everyone()
    if state.is_main_process:
        np.savez(path, arr_0=images, arr_1=labels)  # numpy writes the memory-mapped arrays in chunks
        staging.unlink()
        labels_file.unlink()
    state.wait_for_everyone()
    return path


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
    parser.add_argument("--num-samples", type=int,
                        help="also write this many samples as an npz for ADM's evaluator (the paper: 50000)")
    parser.add_argument("--npz", type=Path, help="the npz to write (default: <run>/samples_step<N>_<num>.npz)")
    parser.add_argument("--labels", choices=("random", "balanced"), help="the npz's classes (default: task.eval.labels)")
    parser.add_argument("--sample-cfg-scale", type=float, help="the npz's guidance (default: task.sample.cfg_scale)")
    parser.add_argument("--fid-reference", type=Path,
                        help="an npz in ADM's layout: print the FID of the npz's samples against it")
    parser.add_argument("--inception-path", type=Path, help="Inception weights (default: task.eval.inception_path)")
    parser.add_argument("--device", help="default: the process's accelerator (cuda under accelerate launch) or cpu")
    args = parser.parse_args(argv)

    from omegaconf import OmegaConf

    checkpoint, config = checkpoint_and_config(args.path)
    cfg = OmegaConf.load(config)
    overrides = {"task.grid.classes": args.classes, "task.grid.per_class": args.per_class,
                 "task.sample.scheduler": args.scheduler, "task.sample.steps": args.steps,
                 "task.grid.cfg_scale": args.cfg_scale, "task.eval.seed": args.seed,
                 "task.eval.labels": args.labels, "task.sample.cfg_scale": args.sample_cfg_scale}
    for key, value in overrides.items():
        if value is not None:
            OmegaConf.update(cfg, key, value)
    task, model = load_model(checkpoint, cfg, use_ema=not args.no_ema)
    from accelerate import PartialState

    state = PartialState()
    device = torch.device(args.device) if args.device else state.device
    model = model.to(device)
    step = int(checkpoint.name.split("_")[-1])
    out = args.out or config.parent / f"samples_step{step}.png"
    if state.is_main_process:
        task.write_grid(model, out, device=device)
        print(out)
    if args.num_samples:
        npz = args.npz or config.parent / f"samples_step{step}_{args.num_samples}.npz"
        npz = write_sample_npz(task, model, npz, args.num_samples, device)
        if state.is_main_process:
            print(npz)
            if args.fid_reference:
                from tasks.fid import InceptionFeatures, find_inception, npz_fid

                weights = args.inception_path or find_inception(cfg.task.eval.inception_path)
                if weights is None:
                    raise SystemExit("error: --fid-reference needs Inception weights: --inception-path=/path/to/"
                                     "weights-inception-2015-12-05-6726825d.pth")
                print(f"FID {npz_fid(npz, args.fid_reference, InceptionFeatures(weights).to(device), device=device):.4f}")
    return out


if __name__ == "__main__":
    main()
