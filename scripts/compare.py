"""Compare runs: LayerNorm beside DyT, α₀ against α₀. Curves, a markdown table (mean ± std over seeds,
diverged runs marked, never dropped) and, for a 2-D grid, a heatmap, written to results/<name>/.

    python scripts/compare.py multirun/2026-11-27_10-00-00-ab12cd            # a sweep folder
    python scripts/compare.py outputs/vit/norm:dyt outputs/vit/norm:layernorm # run folders
    python scripts/compare.py --wandb my-team/dyt-suite --group vit-cpu       # runs from the wandb API
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.train.results import Run, configuration_label, find_runs, flatten, varying_keys  # noqa: E402


def load_wandb_runs(path: str, group: str | None) -> list[Run]:
    """Runs of a wandb project (online): their config, summary and logged history."""
    import wandb

    runs = []
    for remote in wandb.Api().runs(path, filters={"group": group} if group else None):
        summary = {k: v for k, v in remote.summary.items() if not k.startswith("_")}
        summary.setdefault("status", {"finished": "completed", "crashed": "failed"}.get(remote.state, remote.state))
        summary.setdefault("norm", remote.name.rsplit("-s", 1)[0])
        config = {k: v for k, v in remote.config.items() if k != "swept"}
        headline = summary.get("headline")
        name = headline.get("name") if isinstance(headline, dict) else None
        keys = ["train/loss", *([name] if name else [])]
        history = [{"step": int(row["_step"]), **{k: row[k] for k in keys if row.get(k) is not None}}
                   for row in remote.scan_history(keys=["_step", *keys])]
        runs.append(Run(Path(remote.path[-1]), summary, history, flatten(config)))
    return runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def group_runs(runs: list[Run]) -> tuple[dict[str, list[Run]], list[str], list[str]]:
    """Runs by configuration, seeds pooled — unless their artifacts differ (another tokenizer, other data,
    another metric network: numbers that do not measure the same thing), which split a configuration into rows
    of their own. Returns (groups, compared keys, notes saying what differs)."""
    keys = varying_keys(runs)
    by_label: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_label[configuration_label(run, keys)].append(run)
    groups, notes = {}, []
    for label, members in sorted(by_label.items()):
        kinds: dict[tuple, list[Run]] = defaultdict(list)
        for run in members:
            kinds[tuple(sorted(run.artifacts.items()))].append(run)
        if len(kinds) == 1:
            groups[label] = members
            continue
        differing = _differing([r.artifacts for r in members])
        notes.append(f"`{label}`: not pooled, its runs differ in {', '.join(differing)}")
        for signature, rs in kinds.items():
            mark = ", ".join(f"{name} {dict(signature).get(name, '–')[:8]}" for name in differing)
            groups[f"{label} [{mark}]"] = rs
    across = [n for n in _differing([r.artifacts for r in runs]) if not any(n in note for note in notes)]
    if across:
        notes.append(f"the configurations differ in {', '.join(across)}: their numbers are not comparable")
    return groups, keys, notes


def _differing(artifacts: list[dict]) -> list[str]:
    """Artifact names whose hash is not the same in every run that records it."""
    names = sorted({name for a in artifacts for name in a})
    return [n for n in names if len({a[n] for a in artifacts if n in a}) > 1]


def zero_shot(run: Run, selection: str) -> float | None:
    """A LLaMA run's mean zero-shot accuracy on an lm-eval selection: scripts/eval_lm.py's (summary `lm_eval`),
    else the one task.eval.lm_eval_tasks measured after the last step."""
    value = (run.summary.get("lm_eval") or {}).get(selection, {}).get("mean_acc")
    return value if value is not None else (run.summary.get("final") or {}).get(f"val/lm_eval/{selection}/mean_acc")


def zero_shot_selections(runs: list[Run]) -> list[str]:
    found = {*(k for r in runs for k in r.summary.get("lm_eval") or {}),
             *(k.split("/")[2] for r in runs for k in r.summary.get("final") or {}
               if k.startswith("val/lm_eval/") and k.endswith("/mean_acc"))}
    return sorted(found)


def table(groups: dict[str, list[Run]]) -> str:
    headline = next((r.headline for rs in groups.values() for r in rs if r.headline.get("name")), {})
    name = headline.get("name", "headline")
    arrow = "↑" if headline.get("higher_is_better", True) else "↓"
    selections = zero_shot_selections([r for rs in groups.values() for r in rs])
    lines = [f"| configuration | seeds | status | final {name} {arrow} | best {name} {arrow} | wall time (min) |"
             + "".join(f" zero-shot {s} acc ↑ |" for s in selections),
             "|---|---|---|---|---|---|" + "---|" * len(selections)]
    for label, runs in groups.items():
        finished = [r for r in runs if r.status == "completed"]
        finals = [r.headline["value"] for r in finished if isinstance(r.headline.get("value"), (int, float))]
        bests = [r.headline["best"] for r in finished if isinstance(r.headline.get("best"), (int, float))]
        statuses = defaultdict(list)
        for r in runs:
            statuses[r.status].append(r)
        status = ", ".join(
            f"{len(rs)} {s}" + (f" (step {', '.join(str(r.summary.get('steps')) for r in rs)})" if s == "diverged" else "")
            for s, rs in sorted(statuses.items()))
        final = _mean_std(finals) if finals else ("**diverged**" if "diverged" in statuses else "–")
        minutes = [r.summary["wall_seconds"] / 60 for r in finished if r.summary.get("wall_seconds")]
        accuracies = [_mean_std([v for r in finished if (v := zero_shot(r, s)) is not None]) for s in selections]
        lines.append(f"| {label} | {len(runs)} | {status} | {final} | {_mean_std(bests)} | {_mean_std(minutes)} |"
                     + "".join(f" {a} |" for a in accuracies))
    return "\n".join(lines)


def plot_curves(groups: dict[str, list[Run]], out: Path) -> Path:
    headline = next((r.headline for rs in groups.values() for r in rs if r.headline.get("name")), {})
    keys = ["train/loss", *([headline["name"]] if headline.get("name") else [])]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2), squeeze=False)
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    for i, (label, runs) in enumerate(groups.items()):
        for ax, key in zip(axes[0], keys):
            for j, run in enumerate(runs):
                steps, values = run.series(key)
                finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
                if not finite:
                    continue
                xs, ys = zip(*finite)
                ax.plot(xs, ys, color=colors(i % colors.N), alpha=0.85, lw=1.4, label=label if j == 0 else None)
                if run.status == "diverged":
                    ax.plot(xs[-1], ys[-1], "x", color=colors(i % colors.N), ms=9, mew=2)
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_yscale("log")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("× marks a diverged run")
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot_heatmap(runs: list[Run], keys: list[str], out: Path) -> Path | None:
    """For a grid over exactly two numeric keys (attention α₀ × other α₀, α₀ × lr, …): the final headline
    averaged over seeds in each cell, diverged cells marked."""
    numeric, seen = [], set()
    for key in keys:  # a key that mirrors another (the LLaMA grid's final α₀ follows ffn) adds no axis
        values = tuple(_number(r.config.get(key)) for r in runs)
        if None not in values and values not in seen:
            numeric.append(key)
            seen.add(values)
    rest = [k for k in keys if _number(runs[0].config.get(k)) is None]
    if len(numeric) != 2 or rest:
        return None
    ky, kx = numeric
    xs = sorted({_number(r.config[kx]) for r in runs})
    ys = sorted({_number(r.config[ky]) for r in runs})
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        cells[(_number(r.config[ky]), _number(r.config[kx]))].append(r)
    grid = [[float("nan")] * len(xs) for _ in ys]
    fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 3, 1.0 * len(ys) + 2.5))
    for (y, x), members in cells.items():
        values = [m.headline["value"] for m in members if m.status == "completed"
                  and isinstance(m.headline.get("value"), (int, float))]
        i, j = ys.index(y), xs.index(x)
        if values:
            grid[i][j] = statistics.mean(values)
            ax.text(j, i, f"{grid[i][j]:.3g}", ha="center", va="center", fontsize=9)
        if any(m.status == "diverged" for m in members):
            ax.text(j, i, "diverged" if not values else "\n\n(some diverged)", ha="center", va="center",
                    fontsize=8, color="red")
    headline = next((r.headline for r in runs if r.headline.get("name")), {})
    image = ax.imshow(grid, cmap="viridis" if headline.get("higher_is_better") else "viridis_r", origin="lower")
    ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    ax.set_xlabel(kx)
    ax.set_ylabel(ky)
    fig.colorbar(image, label=f"final {headline.get('name', 'headline')}")
    fig.tight_layout()
    path = out / "heatmap.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(runs: list[Run], out: Path, sources: list[str]) -> list[Path]:
    if not runs:
        raise SystemExit("error: no runs found (a run folder holds metrics.jsonl or summary.json)")
    out.mkdir(parents=True, exist_ok=True)
    groups, keys, notes = group_runs(runs)
    written = [plot_curves(groups, out)]
    heatmap = plot_heatmap(runs, keys, out)
    if heatmap:
        written.append(heatmap)
    text = "\n".join([
        f"# {out.name}", "", f"Runs from: {', '.join(sources)}",
        f"Compared: {', '.join(keys) or 'nothing varies'}; seeds pooled as mean ± std.", "",
        table(groups), "", *[f"**Not alike:** {note}." for note in notes], *([""] if notes else []),
        *[f"![{p.stem}]({p.name})" for p in written], ""])
    (out / "table.md").write_text(text)
    written.insert(0, out / "table.md")
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="run or sweep folders")
    parser.add_argument("--name", help="results/<name>/ (default: the first folder's name)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="parent of the output folder")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read runs from the wandb API (online)")
    parser.add_argument("--group", help="with --wandb: only this wandb group")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:  # a mistyped folder would otherwise drop its runs from the comparison without a word
        parser.error(f"no such run or sweep folder: {', '.join(missing)}")
    runs = find_runs(args.paths)
    if args.wandb:
        runs += load_wandb_runs(args.wandb, args.group)
    name = args.name or (args.paths[0].resolve().name if args.paths else (args.group or "wandb"))
    sources = [str(p) for p in args.paths] + ([f"wandb:{args.wandb}"] if args.wandb else [])
    for path in compare(runs, args.out / name, sources):
        print(path)


if __name__ == "__main__":
    main()
