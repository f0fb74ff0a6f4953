"""The paper's Fig. 2 and 4: what a trained LayerNorm does. Hooks a few norm layers of an LN (or RMSNorm) run's
checkpoint, runs one validation batch and scatters each layer's input against its output before the affine:
early layers nearly linear, deeper ones S-shaped. Coloured by token (each token a line of slope 1/std) and
by channel (a few channels carry the extremes).

    python scripts/plot_ln_mapping.py outputs/vit/norm:layernorm     # → results/<run name>/ln_mapping_*.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.analysis import capture_norm_io, normalized, statistic_norms  # noqa: E402
from dyt.train.checkpoint import latest_checkpoint, model_weights  # noqa: E402
from dyt.train.run import build  # noqa: E402


def trained_model(run_dir: Path):
    cfg = OmegaConf.load(run_dir / "config.yaml")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise SystemExit(f"error: {run_dir} has no complete checkpoint")
    task, model, _ = build(cfg)
    model.load_state_dict(model_weights(checkpoint))
    return task, model.eval()



@torch.no_grad()
def capture(run_dir: Path, n_layers: int, batch_size: int):
    task, model = trained_model(run_dir)
    norms = statistic_norms(model)
    if not norms:
        raise SystemExit(f"error: {run_dir} has no LayerNorm or RMSNorm layers (plot a norm=layernorm run)")
    chosen = [norms[int(i)] for i in np.linspace(0, len(norms) - 1, min(n_layers, len(norms)))]
    _, val_set = task.build_data()
    batch = next(iter(torch.utils.data.DataLoader(val_set, batch_size=batch_size, collate_fn=task.collate_fn)))
    with capture_norm_io(model, [p for p, _ in chosen]) as captured:
        task.eval_step(model, batch)
    layers = []
    for path, info in chosen:
        x, _ = captured[path]
        x_last = x if info.channels_last else x.movedim(1, -1)
        layers.append((path, x_last.reshape(-1, x_last.shape[-1]), normalized(x, info).reshape(-1, x_last.shape[-1])))
    return layers


def plot(run_dir: Path, out: Path, n_layers: int = 4, batch_size: int = 16, seed: int = 0) -> list[Path]:
    layers = capture(run_dir, n_layers, batch_size)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for colouring in ("tokens", "channels"):
        fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 4), squeeze=False)
        for ax, (path, x, y) in zip(axes[0], layers):
            x, y = x.numpy(), y.numpy()
            sample = rng.choice(x.size, size=min(x.size, 30000), replace=False)
            ax.scatter(x.flat[sample], y.flat[sample], s=1, c="lightgrey", rasterized=True)
            if colouring == "tokens":
                for k, token in enumerate(rng.choice(len(x), size=min(8, len(x)), replace=False)):
                    ax.scatter(x[token], y[token], s=3, color=plt.get_cmap("tab10")(k))
            else:
                extreme = np.argsort(-np.abs(x).max(0))[:3]
                for k, channel in enumerate(extreme):
                    ax.scatter(x[:, channel], y[:, channel], s=3, color=plt.get_cmap("Set1")(k),
                               label=f"channel {channel}")
                ax.legend(fontsize=7, markerscale=3)
            ax.set_title(path, fontsize=9)
            ax.set_xlabel("input")
        axes[0][0].set_ylabel("output before the affine")
        fig.suptitle(f"{run_dir}  (coloured by {'token' if colouring == 'tokens' else 'channel'})")
        fig.tight_layout()
        path = out / f"ln_mapping_{colouring}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a LayerNorm / RMSNorm run folder with a checkpoint")
    parser.add_argument("--out", type=Path, help="output folder (default results/<run folder name>)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    for path in plot(args.run, args.out or ROOT / "results" / args.run.resolve().name, args.layers, args.batch_size):
        print(path)


if __name__ == "__main__":
    main()
