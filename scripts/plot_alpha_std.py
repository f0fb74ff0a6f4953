"""The paper's Fig. 8: each DyT layer's α against 1/std of its input, through training (left) and at the
end across layers (right), from a DyT run's logged metrics (`alpha/<layer>`, `input_std/<layer>`).

    python scripts/plot_alpha_std.py outputs/vit/norm:dyt            # → results/<run name>/alpha_std.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.train.results import load_run  # noqa: E402


def plot(run_dir: Path, out: Path, max_layers: int = 6) -> Path:
    run = load_run(run_dir)
    # in model order, as the trainer logs them
    layers = list(dict.fromkeys(k[len("alpha/"):] for r in run.metrics for k in r if k.startswith("alpha/")))
    layers = [layer for layer in layers if run.series(f"input_std/{layer}")[0]]
    if not layers:
        raise SystemExit(f"error: {run_dir} logged no alpha/ and input_std/ metrics (is it a DyT run?)")
    shown = [layers[int(i)] for i in np.linspace(0, len(layers) - 1, min(max_layers, len(layers)))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("viridis")
    for i, layer in enumerate(shown):
        color = colors(i / max(1, len(shown) - 1))
        left.plot(*run.series(f"alpha/{layer}"), color=color, lw=1.8, label=f"α  {layer}")
        steps, stds = run.series(f"input_std/{layer}")
        left.plot(steps, [1 / s for s in stds], color=color, lw=1.0, ls="--")
    left.set_xlabel("step")
    left.set_ylabel("α (solid)   1/std of input (dashed)")
    left.set_yscale("log")
    left.legend(fontsize=7)
    final_alpha = [run.series(f"alpha/{layer}")[1][-1] for layer in layers]
    final_inv_std = [1 / run.series(f"input_std/{layer}")[1][-1] for layer in layers]
    right.scatter(final_inv_std, final_alpha, c=range(len(layers)), cmap="viridis")
    r = np.corrcoef(final_inv_std, final_alpha)[0, 1] if len(layers) > 2 else float("nan")
    right.set_xlabel("1/std of input (end of training)")
    right.set_ylabel("α (end of training)")
    right.set_title(f"{len(layers)} layers, Pearson r = {r:.2f}; colour: depth")
    fig.suptitle(f"{run.summary.get('norm', '')}  {run_dir}")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "alpha_std.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a DyT run folder")
    parser.add_argument("--out", type=Path, help="output folder (default results/<run folder name>)")
    args = parser.parse_args(argv)
    print(plot(args.run, args.out or ROOT / "results" / args.run.resolve().name))


if __name__ == "__main__":
    main()
