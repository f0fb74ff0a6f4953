"""A saved wandb workspace that compares LayerNorm with DyT: train and validation loss and the task's headline
metric grouped by norm label (mean line, ±std band over seeds), α per DyT layer through training, and a runs
table with α₀, the norm and the best headline value. Prints the workspace's URL.

    python scripts/wandb_workspace.py my-team/dyt-suite --group alpha_init-2026-11-27_10-00-00-ab12cd
    python scripts/wandb_workspace.py my-team/dyt-suite --runs multirun/<sweep>   # headline and group from the runs

Needs `pip install wandb-workspaces` and an API key (it writes to the wandb server); `--dry-run` builds the
workspace and prints it without saving.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the run metadata dyt.train.run writes to every run's config (run_metadata)
GROUP_BY = "norm_label"
TABLE_CONFIG = ["norm_label", "norm_type", "alpha_init", "alpha_per_role.attn", "alpha_per_role.ffn", "seed",
                "task_name", "size", "params"]


def from_runs(paths: list[Path]) -> dict:
    """The headline metric, its direction and the wandb group, from runs' summary.json (a run or sweep folder)."""
    from dyt.train.results import find_runs

    runs = find_runs(paths)
    headline = next((r.headline for r in runs if r.headline.get("name")), {})
    groups = sorted({r.summary["group"] for r in runs if r.summary.get("group")})
    return {"headline": headline.get("name"), "higher_is_better": headline.get("higher_is_better", True),
            "group": groups[0] if len(groups) == 1 else None}


def build_workspace(entity: str, project: str, *, group: str | None = None, headline: str = "val/loss",
                    name: str | None = None):
    """The workspace object (nothing is sent): sections of panels grouped by norm label and a runs table."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def grouped(metric: str, *, log_y: bool = False) -> wr.LinePlot:
        return wr.LinePlot(title=f"{metric} by norm (mean ± std over seeds)", x="Step", y=[metric],
                           groupby=wr.Config(GROUP_BY), groupby_aggfunc="mean", groupby_rangefunc="stddev",
                           log_y=log_y or None, legend_template="${config:" + GROUP_BY + "}")

    curves = [grouped("train/loss", log_y=True), grouped("val/loss")]
    if headline != "val/loss":
        curves.append(grouped(headline))
    sections = [
        ws.Section(name="LayerNorm against DyT", panels=curves, is_open=True),
        ws.Section(name="Same, against samples seen", is_open=False,
                   panels=[wr.LinePlot(title=f"{m} by norm, per sample seen", x="samples_seen", y=[m],
                                       groupby=wr.Config(GROUP_BY), groupby_aggfunc="mean",
                                       groupby_rangefunc="stddev") for m in ("train/loss", headline)]),
        ws.Section(name="α per DyT layer", is_open=True,
                   panels=[wr.LinePlot(title="α through training, one line per layer", x="Step",
                                       metric_regex="^alpha/.*"),
                           wr.LinePlot(title="input std per layer", x="Step", metric_regex="^input_std/.*")]),
    ]
    filters = ws.And(ws.Metric("Group") == group) if group else ""
    return ws.Workspace(
        entity=entity, project=project, name=name or f"LN vs DyT{f' — {group}' if group else ''}",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis="Step", max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=filters, groupby=[ws.Config(GROUP_BY)],
            pinned_columns=[*(f"config:{k}" for k in TABLE_CONFIG), f"summary:{headline}", "summary:headline_best",
                            "summary:status", "summary:wall_seconds"]),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", metavar="ENTITY/PROJECT")
    parser.add_argument("--group", help="only the runs of this wandb group (a sweep: <sweep name>-<sweep folder>)")
    parser.add_argument("--headline", help="the task's paper metric (default: from --runs, else val/loss)")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="run or sweep folders to read the "
                        "headline and group from")
    parser.add_argument("--name", help="the workspace's name")
    parser.add_argument("--dry-run", action="store_true", help="build and print the workspace, save nothing")
    args = parser.parse_args(argv)
    if args.path.count("/") != 1:
        parser.error(f"ENTITY/PROJECT expected, got {args.path!r}")
    entity, project = args.path.split("/")
    known = from_runs(args.runs) if args.runs else {}
    workspace = build_workspace(entity, project, group=args.group or known.get("group"),
                                headline=args.headline or known.get("headline") or "val/loss", name=args.name)
    if args.dry_run:
        print(json.dumps(workspace.model_dump(mode="json"), indent=1, default=str))
        return
    workspace.save()
    print(workspace.url)


if __name__ == "__main__":
    main()
