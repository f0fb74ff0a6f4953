"""Read what runs wrote (summary.json, metrics.jsonl, config.yaml) back, for comparisons and figures."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


# config keys that never tell configurations apart
_IGNORED = ("run_dir", "seed", "group", "logger.", "trainer.progress", "swept.")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl's rows, up to a line cut short by a kill."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, full))
        else:
            flat[full] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return flat


@dataclass
class Run:
    path: Path
    summary: dict
    metrics: list[dict]
    config: dict = field(default_factory=dict)  # flattened, resolved

    @property
    def status(self) -> str:
        return self.summary.get("status", "incomplete")

    @property
    def headline(self) -> dict:
        return self.summary.get("headline") or {}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.metrics if isinstance(r.get(key), (int, float))]
        return [r["step"] for r in rows], [float(r[key]) for r in rows]

    @property
    def artifacts(self) -> dict[str, str]:
        """Content hashes of what the run depended on (tokenizer, data, metric network; dyt.train.provenance)."""
        return (self.summary.get("provenance") or {}).get("artifacts") or {}

    @property
    def last_loss(self) -> float | None:
        _, losses = self.series("train/loss")
        return losses[-1] if losses else None


def load_run(path: Path) -> Run:
    summary_file, config_file = path / "summary.json", path / "config.yaml"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    config = flatten(yaml.safe_load(config_file.read_text())) if config_file.exists() else {}
    return Run(path, summary, read_metrics(path), config)


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run folder under the given folders (a run folder holds metrics.jsonl or summary.json);
    sweep points that repeated another point (status `duplicate`) are left out."""
    folders: list[Path] = []
    for path in map(Path, paths):
        marks = [p.parent for name in ("metrics.jsonl", "summary.json") for p in path.rglob(name)]
        folders += sorted({p for p in marks if "checkpoints" not in p.parts and "wandb" not in p.parts})
    runs = [load_run(p) for p in dict.fromkeys(folders)]
    return [r for r in runs if r.status != "duplicate"]


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between runs (seed and bookkeeping aside): what was compared."""
    keys = sorted({k for r in runs for k in r.config})
    varying = []
    for key in keys:
        if key.startswith(_IGNORED) or key in _IGNORED:
            continue
        if len({json.dumps(r.config.get(key), sort_keys=True, default=str) for r in runs}) > 1:
            varying.append(key)
    return varying


def configuration_label(run: Run, keys: list[str]) -> str:
    """The norm as the run named it (`dyt-a0.5`, `layernorm`) and any other compared values."""
    others = [f"{k.split('.')[-1] if k.count('.') else k}={run.config.get(k)}" for k in keys if not k.startswith("norm.")]
    return " ".join([run.summary.get("norm", run.config.get("norm.type", "?")), *others])
