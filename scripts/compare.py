"""Compare runs: LayerNorm beside DyT, α₀ against α₀. Curves (per configuration, the mean over seeds with a
±std band, one fixed colour per norm), a markdown table (mean ± std over seeds, α₀, the difference to the
baseline with a 95% interval over paired seeds, diverged runs marked, never dropped) and, for a 2-D grid, a
heatmap, written to results/<name>/.

    python scripts/compare.py multirun/2026-11-27_10-00-00-ab12cd            # a sweep folder
    python scripts/compare.py outputs/vit/norm:dyt outputs/vit/norm:layernorm # run folders
    python scripts/compare.py --wandb my-team/dyt-suite --group vit-cpu       # runs from the wandb API
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dyt.train.results import Run, configuration_label, find_runs, flatten, varying_keys  # noqa: E402


# what dyt.train.run.run_metadata adds to a run's wandb config, beside the resolved config
RUN_METADATA = ("norm_label", "norm_type", "alpha_init", "alpha_per_role", "task_name", "size", "stage", "job_type",
                "seed", "params", "sweep")


def load_wandb_runs(path: str, group: str | None) -> list[Run]:
    """Runs of a wandb project (online): their config, summary and logged history."""
    import wandb

    runs = []
    for remote in wandb.Api().runs(path, filters={"group": group} if group else None):
        summary = {k: v for k, v in remote.summary.items() if not k.startswith("_")}
        summary.setdefault("status", {"finished": "completed", "crashed": "failed"}.get(remote.state, remote.state))
        meta = {k: remote.config.get(k) for k in RUN_METADATA if k in remote.config}
        summary.setdefault("norm", meta.get("norm_label") or remote.name.rsplit("-s", 1)[0])
        for key, source in (("alpha_init", "alpha_init"), ("task", "task_name"), ("size", "size"), ("seed", "seed")):
            if key not in summary and source in meta:
                summary[key] = meta[source]
        summary.setdefault("group", remote.group)
        # the run's config as config.yaml has it: the dashboard's metadata beside it would count as compared keys
        config = {k: v for k, v in remote.config.items() if k not in RUN_METADATA and k not in ("swept", "provenance")}
        name = summary.get("headline_name")
        if name:
            value = summary.get(name)
            summary["headline"] = {"name": name, "value": value.get("last") if isinstance(value, dict) else value,
                                   "best": summary.get("headline_best"),
                                   "higher_is_better": summary.get("headline_higher_is_better", True)}
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


def _rounded_mean_std(values: list[float]) -> str:
    """Times: the mean to two significant digits and the std to the same decimal place (12 ± 1, 0.024 ± 0.003)."""
    if not values:
        return "–"
    mean = statistics.mean(values)
    decimals = min(max(0, 1 - math.floor(math.log10(mean))), 4) if mean > 0 else 1
    text = f"{mean:.{decimals}f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.{decimals}f}"


# norms without α₀: the baselines, in the order one is picked when several are compared
BASELINES = ("layernorm", "rmsnorm", "native", "identity")
# one colour per baseline norm and one colour map per α-norm family (shaded by α₀ on a log scale), so a norm
# keeps its colour from one report to the next whatever else is compared
BASELINE_COLORS = {"layernorm": "#222222", "rmsnorm": "#6b6b6b", "native": "#222222", "identity": "#a0a0a0"}
FAMILY_COLORMAPS = {"dyt": "Blues", "derf": "Greens", "dyt_hardtanh": "Purples", "dyt_sigmoid": "Oranges",
                    "dyt_fixed": "PuBu", "dyt_hardtanh_fixed": "RdPu", "dyt_sigmoid_fixed": "YlOrBr"}
LINESTYLES = ("-", "--", ":", "-.")


def norm_of(label: str) -> tuple[str, str | None]:
    """(family, α₀ text) of a configuration label: `dyt-a0.5 lr=0.002` → ("dyt", "0.5")."""
    norm = label.split(" ", 1)[0]
    family, _, alpha = norm.partition("-a")
    return family, alpha or None


def norm_color(label: str):
    family, alpha = norm_of(label)
    if alpha is None:
        if family in BASELINE_COLORS:
            return BASELINE_COLORS[family]
        return plt.get_cmap("Dark2")(zlib.crc32(family.encode()) % 8)  # stable, whatever else is plotted
    values = [float(a) for a in alpha.split("/") if _number(a) is not None] or [1.0]
    # α₀ 0.03 … 10 on a log scale → the light-to-dark middle of the family's colour map
    position = (statistics.mean(math.log10(v) for v in values) + 1.5) / 2.5
    cmap = plt.get_cmap(FAMILY_COLORMAPS.get(family, "Blues" if family.startswith("dyt") else "Greens"))
    return cmap(0.4 + 0.55 * min(max(position, 0.0), 1.0))


def alpha_text(runs: list[Run]) -> str:
    """The configuration's α₀ as its runs recorded it: a number, attn/ffn/final, or – for a norm without α₀."""
    values = {json.dumps(_alpha_of(r), sort_keys=True) for r in runs}
    if len(values) != 1:
        return "mixed"
    value = _alpha_of(runs[0])
    if value is None:
        return "–"
    if isinstance(value, dict):
        return "/".join(f"{value[k]:g}" if isinstance(value[k], (int, float)) else str(value[k])
                        for k in ("attn", "ffn", "final"))
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _alpha_of(run: Run):
    if "alpha_init" in run.summary:
        return run.summary["alpha_init"]
    if run.config.get("norm.type") in ("dyt", "derf"):  # a run from before summary.json carried α₀
        return run.config.get("norm.alpha_init")
    return None


def _others(label: str) -> str:
    return label.split(" ", 1)[1] if " " in label else ""


def baselines(groups: dict[str, list[Run]], chosen: str | None = None) -> dict[str, str]:
    """For each configuration, the baseline it is compared with: the norm without α₀ (`chosen`, else LayerNorm,
    RMSNorm, the native norm …) among the configurations that share every other compared value."""
    found = {}
    for label in groups:
        peers = [p for p in groups if _others(p) == _others(label) and p != label]
        if chosen:
            match = [p for p in peers if p.split(" ", 1)[0] == chosen]
        else:
            plain = [p for p in peers if norm_of(p)[1] is None and norm_of(label)[1] is not None]
            match = sorted(plain, key=lambda p: (BASELINES.index(norm_of(p)[0]) if norm_of(p)[0] in BASELINES
                                                 else len(BASELINES), p))
        if match:
            found[label] = match[0]
    return found


@dataclass(frozen=True)
class Paired:
    """A paired difference over seeds: its mean, the std of the differences, n, and the 95% t-interval
    (mean ± t(0.975, n−1)·std/√n; None with fewer than two pairs)."""
    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_statistics(differences: list[float]) -> Paired | None:
    """Mean, std and 95% t-interval of paired differences (one per seed): what compare's Δ column and
    scripts/reproduce.py's page both report."""
    if not differences:
        return None
    mean = statistics.mean(differences)
    if len(differences) == 1:
        return Paired(mean, None, 1, None, None)
    from scipy import stats

    std = statistics.stdev(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * std / math.sqrt(len(differences))
    return Paired(mean, std, len(differences), mean - half, mean + half)


def seed_of(run: Run):
    return run.summary.get("seed", run.config.get("seed"))


def final_by_seed(runs: list[Run]) -> dict:
    """{seed: final headline} of the completed runs."""
    return {seed_of(r): r.headline["value"] for r in runs
            if r.status == "completed" and isinstance(r.headline.get("value"), (int, float))}


def paired_differences(runs: list[Run], baseline: list[Run]) -> list[float]:
    """Final headline minus the baseline's, seed by seed (seeds both completed), in seed order."""
    mine, theirs = final_by_seed(runs), final_by_seed(baseline)
    return [mine[s] - theirs[s] for s in sorted(mine, key=str) if s in theirs]


def paired_difference(runs: list[Run], baseline: list[Run]) -> str:
    """Final headline minus the baseline's, seed by seed: mean and a 95% t-interval over the paired seeds."""
    paired = paired_statistics(paired_differences(runs, baseline))
    if paired is None:
        return "–"
    if paired.n == 1:
        return f"{paired.mean:+.3g} (1 seed)"
    return f"{paired.mean:+.3g} [{paired.low:+.3g}, {paired.high:+.3g}] ({paired.n} seeds)"


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


def table(groups: dict[str, list[Run]], baseline: str | None = None) -> str:
    headline = next((r.headline for rs in groups.values() for r in rs if r.headline.get("name")), {})
    name = headline.get("name", "headline")
    arrow = "↑" if headline.get("higher_is_better", True) else "↓"
    selections = zero_shot_selections([r for rs in groups.values() for r in rs])
    against = baselines(groups, baseline)
    lines = [f"| configuration | α₀ | seeds | status | final {name} {arrow} | Δ to baseline (95% CI) | "
             f"best {name} {arrow} | wall time (min) |" + "".join(f" zero-shot {s} acc ↑ |" for s in selections),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(selections)]
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
        delta = (f"{paired_difference(runs, groups[against[label]])} vs {against[label].split(' ', 1)[0]}"
                 if label in against else "baseline" if label in against.values() else "–")
        lines.append(f"| {label} | {alpha_text(runs)} | {len(runs)} | {status} | {final} | {delta} | "
                     f"{_mean_std(bests)} | {_rounded_mean_std(minutes)} |" + "".join(f" {a} |" for a in accuracies))
    return "\n".join(lines)


def _smoothed(values: list[float], window: int) -> list[float]:
    """A trailing mean over `window` logged points (1: as logged)."""
    if window <= 1:
        return values
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def title_of(runs: list[Run]) -> str:
    tasks = sorted({f"{r.summary['task']}" + (f" ({r.summary['size']})" if r.summary.get("size") else "")
                    for r in runs if r.summary.get("task")})
    sweeps = sorted({r.summary.get("group") for r in runs if r.summary.get("group")})
    return " · ".join([", ".join(tasks) or "runs", *([", ".join(sweeps)] if sweeps else [])])


def curves_figure(groups: dict[str, list[Run]], *, smooth: int = 1, band: str = "std"):
    """Per configuration and metric, the mean over seeds as a line and a ±std (or min–max) band around it;
    a diverged run is drawn alone up to where it stopped, ending in ×. Colours follow the norm (norm_color),
    line styles the other compared values."""
    from matplotlib.lines import Line2D

    headline = next((r.headline for rs in groups.values() for r in rs if r.headline.get("name")), {})
    keys = ["train/loss", *([headline["name"]] if headline.get("name") else [])]
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.4), squeeze=False)
    styles = {o: LINESTYLES[i % len(LINESTYLES)] for i, o in enumerate(sorted({_others(g) for g in groups}))}
    any_diverged = False
    for label, runs in groups.items():
        color, style = norm_color(label), styles[_others(label)]
        for ax, key in zip(axes[0], keys):
            by_step: dict[int, list[float]] = defaultdict(list)
            kept = 0
            for run in runs:
                steps, values = run.series(key)
                finite = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
                if not finite:
                    continue
                xs, ys = zip(*finite)
                ys = _smoothed(list(ys), smooth)
                if run.status == "diverged":
                    any_diverged = True
                    ax.plot(xs, ys, color=color, ls=style, lw=0.9, alpha=0.6)
                    ax.plot(xs[-1], ys[-1], "x", color=color, ms=9, mew=2)
                    continue
                kept += 1
                for x, y in zip(xs, ys):
                    by_step[x].append(y)
            if not by_step:
                continue
            xs = sorted(by_step)
            mean = [statistics.mean(by_step[x]) for x in xs]
            ax.plot(xs, mean, color=color, ls=style, lw=1.6, label=f"{label} ({kept} seed{'s' * (kept != 1)})")
            if kept > 1:
                if band == "minmax":
                    low, high = [min(by_step[x]) for x in xs], [max(by_step[x]) for x in xs]
                else:
                    spread = [statistics.stdev(by_step[x]) if len(by_step[x]) > 1 else 0.0 for x in xs]
                    low, high = [m - d for m, d in zip(mean, spread)], [m + d for m, d in zip(mean, spread)]
                ax.fill_between(xs, low, high, color=color, alpha=0.2, lw=0, gid=f"band:{label}")
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel("step")
        ax.set_ylabel(key + (f" (mean of {smooth} points)" if smooth > 1 else ""))
        ax.grid(alpha=0.3)
    axes[0][0].set_yscale("log")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if any_diverged:
        handles.append(Line2D([], [], color="0.3", marker="x", ls="", ms=8, mew=2))
        labels.append("diverged run (where it stopped)")
    axes[0][-1].legend(handles, labels, fontsize=8)
    runs = [r for rs in groups.values() for r in rs]
    spread = "min–max" if band == "minmax" else "±std"
    fig.suptitle(f"{title_of(runs)} — mean over seeds, {spread} band")
    fig.tight_layout()
    return fig


def plot_curves(groups: dict[str, list[Run]], out: Path, *, smooth: int = 1, band: str = "std") -> Path:
    fig = curves_figure(groups, smooth=smooth, band=band)
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


def compare(runs: list[Run], out: Path, sources: list[str], *, smooth: int = 1, band: str = "std",
            baseline: str | None = None) -> list[Path]:
    if not runs:
        raise SystemExit("error: no runs found (a run folder holds metrics.jsonl or summary.json)")
    out.mkdir(parents=True, exist_ok=True)
    groups, keys, notes = group_runs(runs)
    written = [plot_curves(groups, out, smooth=smooth, band=band)]
    heatmap = plot_heatmap(runs, keys, out)
    if heatmap:
        written.append(heatmap)
    text = "\n".join([
        f"# {title_of(runs)}", "", f"Runs from: {', '.join(sources)}",
        f"Compared: {', '.join(keys) or 'nothing varies'}; seeds pooled as mean ± std. Δ to baseline: the final "
        "value minus the baseline's, seed by seed (same seed, same initial weights but the norms), mean and 95% "
        "t-interval over the paired seeds.", "",
        table(groups, baseline), "", *[f"**Not alike:** {note}." for note in notes], *([""] if notes else []),
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
    parser.add_argument("--smooth", type=int, default=1, metavar="N", help="curves: mean of the last N logged points")
    parser.add_argument("--band", choices=("std", "minmax"), default="std", help="curves: ±std or min–max over seeds")
    parser.add_argument("--baseline", help="the norm label Δ is measured against (default: LayerNorm, RMSNorm, the "
                        "native norm …, whichever was run)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:  # a mistyped folder would otherwise drop its runs from the comparison without a word
        parser.error(f"no such run or sweep folder: {', '.join(missing)}")
    runs = find_runs(args.paths)
    if args.wandb:
        runs += load_wandb_runs(args.wandb, args.group)
    name = args.name or (args.paths[0].resolve().name if args.paths else (args.group or "wandb"))
    sources = [str(p) for p in args.paths] + ([f"wandb:{args.wandb}"] if args.wandb else [])
    for path in compare(runs, args.out / name, sources, smooth=args.smooth, band=args.band, baseline=args.baseline):
        print(path)


if __name__ == "__main__":
    main()
