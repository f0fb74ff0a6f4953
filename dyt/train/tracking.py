"""Where metrics go: metrics.jsonl in the run folder always (the source of truth), wandb when asked.

A wandb failure never stops training: it is reported once and wandb is switched off for the run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan" / "inf": JSON has no literal for them
    return value


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return rows


class Tracker:
    def __init__(self, run_dir: Path, logger_cfg, *, config: dict, name: str, group: str, tags: list[str],
                 resume_step: int | None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # only the main process writes
        self.path = self.run_dir / "metrics.jsonl"
        self.wandb_run = None
        if not enabled:
            return
        self._truncate_after(resume_step)
        self._file = self.path.open("a")
        if logger_cfg.name == "wandb":
            self._start_wandb(logger_cfg, config, name, group, tags)

    def _truncate_after(self, step: int | None) -> None:
        """A resumed run repeats the steps after its checkpoint: drop what the killed run logged for them."""
        rows = read_metrics(self.run_dir)
        keep = rows if step is None else [r for r in rows if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def _start_wandb(self, logger_cfg, config, name, group, tags) -> None:
        try:
            import wandb

            if not os.environ.get("WANDB_MODE"):
                os.environ.pop("WANDB_MODE", None)  # wandb rejects an empty value
            mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key_configured() else "offline")
            id_file = self.run_dir / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
            id_file.write_text(run_id)
            self.wandb_run = wandb.init(
                project=logger_cfg.project, entity=logger_cfg.get("entity"), group=group, name=name,
                tags=tags, config=config, dir=str(self.run_dir), id=run_id, resume="allow", mode=mode,
            )
            if mode == "offline":
                log.info("wandb is offline (no API key configured); sync later with: wandb sync %s",
                         Path(self.wandb_run.dir).parent)
        except Exception as err:  # noqa: BLE001 — tracking must never stop training
            self._wandb_failed(err)

    def _wandb_failed(self, err: Exception) -> None:
        log.warning("wandb failed (%s: %s); continuing with metrics.jsonl only", type(err).__name__, err)
        self.wandb_run = None

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(metrics, step=step)
            except Exception as err:  # noqa: BLE001
                self._wandb_failed(err)

    def log_image(self, key: str, path: Path, step: int) -> None:
        if self.wandb_run is not None:
            try:
                import wandb

                self.wandb_run.log({key: wandb.Image(str(path))}, step=step)
            except Exception as err:  # noqa: BLE001
                self._wandb_failed(err)

    def summary(self, values: dict) -> None:
        if self.wandb_run is not None:
            try:
                self.wandb_run.summary.update(values)
            except Exception as err:  # noqa: BLE001
                self._wandb_failed(err)

    def finish(self, exit_code: int = 0) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.wandb_run is not None:
            try:
                self.wandb_run.finish(exit_code=exit_code)
            except Exception as err:  # noqa: BLE001
                self._wandb_failed(err)
            self.wandb_run = None


def _wandb_key_configured() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` writes it), checked offline."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
