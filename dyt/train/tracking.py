"""Where metrics go: metrics.jsonl in the run folder always (the source of truth), and the trackers that
`logger=` names — wandb, tensorboard, mlflow, aim, trackio, several at once (`logger=[wandb,tensorboard]`) —
through accelerate's tracker API: `Accelerator(log_with=…)`, `init_trackers`, `log`, each tracker's `finish`
(not `end_training`, which also destroys the process group: the trainer does not own it).

metrics.jsonl is an accelerate tracker of its own (`MetricsFile`). Every other tracker is wrapped in `Guarded`:
its first exception is reported once and that tracker is switched off; training goes on with the others.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from accelerate.tracking import (AimTracker, GeneralTracker, MLflowTracker, TensorBoardTracker, TrackioTracker,
                                 WandBTracker, on_main_process)

from .results import read_metrics

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"
MLFLOW_ID_FILE = "mlflow_id.txt"
AIM_ID_FILE = "aim_id.txt"
TENSORBOARD_DIR = "tensorboard"
# logger name → the package it needs (wandb and tensorboard come with the suite; the others are extras of the
# same name: pip install -e ".[mlflow]")
TRACKER_PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow", "aim": "aim",
                    "trackio": "trackio"}


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan" / "inf": JSON has no literal for them
    return value


def logger_names(logger_cfg) -> list[str]:
    """The trackers a `logger` section asks for, in order: its keys (`logger=[wandb,tensorboard]` composes
    `{wandb: {...}, tensorboard: {...}}`), or the single `name:` of run folders written before several were
    allowed (scripts/eval_lm.py reopens those)."""
    if not logger_cfg:
        return []
    if "name" in logger_cfg and not isinstance(logger_cfg.get("name"), dict):
        return [] if logger_cfg["name"] in (None, "none") else [str(logger_cfg["name"])]
    return [str(k) for k in logger_cfg.keys()]


def _settings(logger_cfg, name: str) -> dict:
    """One tracker's settings (project, entity, repo …) in either shape of the logger section."""
    section = logger_cfg.get(name) if name in logger_cfg else logger_cfg
    if section is None:
        return {}
    if hasattr(section, "items"):
        return {str(k): v for k, v in section.items() if k != "name"}
    return {}


def missing_logger(logger_cfg) -> str | None:
    """One line naming a requested tracker that cannot run here (unknown, or its package not installed)."""
    for name in logger_names(logger_cfg):
        if name not in TRACKER_PACKAGES:
            return f"logger={name} is unknown; use one or several of {', '.join(TRACKER_PACKAGES)}, or none"
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            return f"logger={name} needs the {package} package: pip install {package}"
    return None


def flat_config(tree: dict, prefix: str = "") -> dict:
    """Nested config → `a.b.c` keys with plain values, for trackers whose hyperparameters are flat (TensorBoard's
    HParams, MLflow's params, Aim); lists become JSON text and nulls are left out (TensorBoard rejects them)."""
    flat = {}
    for key, value in tree.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flat_config(value, full))
        elif isinstance(value, (list, tuple)):
            flat[full] = json.dumps(value, default=str)
        elif value is not None:
            flat[full] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


@dataclass
class RunIdentity:
    """What every dashboard groups and filters by, given to the trackers before they start."""

    name: str
    group: str | None
    tags: list[str]
    config: dict  # nested: the resolved config, the run's metadata beside it
    job_type: str | None = None
    headline: str | None = None  # the task's paper metric (`val/acc`) and its direction
    higher_is_better: bool = True
    resume_step: int | None = None
    extra_best: list[str] = field(default_factory=list)  # more metrics summarised in the headline's direction


class MetricsFile(GeneralTracker):
    """metrics.jsonl: one JSON row per `log` call, flushed at once. A resumed run repeats the steps after its
    checkpoint, so what the killed run logged for them is dropped at start. Not guarded: if it cannot be
    written, the run has no record, and that must stop it."""

    name = "metrics_jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_dir: Path):
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.resume_step: int | None = None
        self._file = None

    @property
    def tracker(self):
        return self._file

    @on_main_process
    def start(self):
        rows = read_metrics(self.path.parent)
        keep = rows if self.resume_step is None else [r for r in rows if r.get("step", 0) <= self.resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self._file = self.path.open("a")

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        row = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    @on_main_process
    def finish(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class Guarded(GeneralTracker):
    """One of accelerate's trackers, built at `start` from the run's identity, that never stops training: its
    first exception is logged once (which tracker, what failed) and the tracker is switched off."""

    requires_logging_directory = False
    main_process_only = True

    def __init__(self, name: str, settings: dict, run_dir: Path):
        self.name = name
        super().__init__()
        self.settings, self.run_dir = settings, Path(run_dir)
        self.identity: RunIdentity | None = None
        self.inner: GeneralTracker | None = None
        self.off = False
        self.exit_code = 0

    @property
    def tracker(self):
        """The library's own run object (wandb's Run, TensorBoard's SummaryWriter …), None once switched off."""
        return None if self.off or self.inner is None else self.inner.tracker

    def call(self, what: str, action, *args, **kwargs):
        if self.off:
            return None
        try:
            return action(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 — a tracker must never stop training
            self.off = True
            log.warning("%s failed at %s (%s: %s); switched off for this run, metrics.jsonl keeps everything",
                        self.name, what, type(err).__name__, " ".join(str(err).split())[:300])
            return None

    @on_main_process
    def start(self):
        self.call("start", self._start)

    def _start(self):
        self.inner = _BUILDERS[self.name](self)
        self.inner.start()
        if self.name == "wandb":
            _wandb_started(self)

    @on_main_process
    def store_init_configuration(self, values: dict):
        if self.name == "wandb" or getattr(self, "resumed", False):
            return  # wandb had the nested config at init (it shows nesting); MLflow refuses to reset a param
        self.call("store_init_configuration", lambda: self.inner.store_init_configuration(flat_config(values)))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        self.call("log", lambda: self.inner.log(values, step=step, **kwargs))

    @on_main_process
    def finish(self):
        self.call("finish", self._finish)

    def _finish(self):
        if self.inner is None:
            return
        if self.name == "wandb":
            self.inner.run.finish(exit_code=self.exit_code)  # a failed run shows as failed, not finished
            if self.wandb_mode == "offline":  # wandb's own hint names this segment only
                log.info("wandb sync %s  # uploads this run whole, every segment of it", self.run_dir / "wandb")
        else:
            self.inner.finish()


# ---------------------------------------------------------------- each library, from the run's identity


def _kept_id(run_dir: Path, file_name: str, new) -> str:
    """An id kept in the run folder, so that the same command resumes the same tracker run."""
    path = run_dir / file_name
    value = path.read_text().strip() if path.exists() else new()
    path.write_text(value)
    return value


def _wandb(guard: Guarded) -> GeneralTracker:
    import wandb  # noqa: F401 — fail here, at start, when it is missing

    ident, settings = guard.identity, guard.settings
    if not os.environ.get("WANDB_MODE"):
        os.environ.pop("WANDB_MODE", None)  # wandb rejects an empty value
    mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_key_configured() else "offline")
    run_id = _kept_id(guard.run_dir, WANDB_ID_FILE, lambda: uuid.uuid4().hex[:8])
    guard.wandb_mode = mode
    return WandBTracker(settings.get("project") or "dyt-suite", entity=settings.get("entity"), group=ident.group,
                        name=ident.name, tags=ident.tags, job_type=ident.job_type, config=ident.config,
                        dir=str(guard.run_dir), id=run_id, resume="allow", mode=mode)


def _wandb_started(guard: Guarded) -> None:
    """Summaries in the headline's direction (best and last), and samples / tokens seen as x-axes to pick."""
    run, ident = guard.inner.run, guard.identity
    for axis in ("samples_seen", "tokens_seen"):
        run.define_metric(axis, summary="max")
    direction = "max" if ident.higher_is_better else "min"
    for name in filter(None, [ident.headline, *ident.extra_best]):
        run.define_metric(name, summary=f"{direction},last")
    run.define_metric("train/loss", summary="min,last")
    if guard.wandb_mode == "offline":
        log.info("wandb is offline (no API key configured); sync later, every segment of the run: wandb sync %s",
                 guard.run_dir / "wandb")


def _tensorboard(guard: Guarded) -> GeneralTracker:
    # <run folder>/tensorboard/<norm label>-s<seed>: `tensorboard --logdir` on a sweep folder lists every run
    # by its folder and label
    return TensorBoardTracker(guard.identity.name, str(guard.run_dir / TENSORBOARD_DIR))


def _mlflow(guard: Guarded) -> GeneralTracker:
    ident, settings = guard.identity, guard.settings
    if settings.get("tracking_uri"):
        import mlflow

        mlflow.set_tracking_uri(settings["tracking_uri"])
    id_file = guard.run_dir / MLFLOW_ID_FILE
    guard.resumed = id_file.exists()
    tracker = MLflowTracker(experiment_name=settings.get("experiment") or "dyt-suite",
                            run_id=id_file.read_text().strip() if id_file.exists() else None,
                            tags={"group": ident.group or "", "job_type": ident.job_type or "",
                                  **{f"tag.{t}": "1" for t in ident.tags}},
                            run_name=ident.name)
    start = tracker.start

    def start_and_keep_id():
        start()
        id_file.write_text(tracker.active_run.info.run_id)

    tracker.start = start_and_keep_id
    return tracker


def _aim(guard: Guarded) -> GeneralTracker:
    ident = guard.identity
    id_file = guard.run_dir / AIM_ID_FILE
    kwargs = {"experiment": ident.group}
    if id_file.exists():
        kwargs["run_hash"] = id_file.read_text().strip()
    tracker = AimTracker(ident.name, guard.settings.get("repo") or ".", **kwargs)
    start = tracker.start

    def start_and_keep_id():
        start()
        id_file.write_text(tracker.writer.hash)

    tracker.start = start_and_keep_id
    return tracker


def _trackio(guard: Guarded) -> GeneralTracker:
    ident = guard.identity
    return TrackioTracker(guard.settings.get("project") or "dyt-suite", name=ident.name, group=ident.group,
                          resume="allow")


_BUILDERS = {"wandb": _wandb, "tensorboard": _tensorboard, "mlflow": _mlflow, "aim": _aim, "trackio": _trackio}


def log_with(logger_cfg, run_dir: Path) -> list[GeneralTracker]:
    """What `Accelerator(log_with=…)` takes for a `logger` section: metrics.jsonl, then each named tracker,
    guarded. They start at `Tracker` (accelerate's `init_trackers`), once the run's identity is known."""
    return [MetricsFile(run_dir), *(Guarded(name, _settings(logger_cfg, name), run_dir)
                                     for name in logger_names(logger_cfg))]


class Tracker:
    """The run's trackers behind one never-failing front: `log`, `log_image`, `summary`, `finish`.

    With an `accelerator` whose `log_with` came from `log_with(...)`, they go through accelerate's
    `init_trackers` / `log` / `end_training`; without one (scripts that reopen a finished run) the same trackers
    are driven directly."""

    def __init__(self, run_dir: Path, logger_cfg, *, config: dict, name: str, group: str | None, tags: list[str],
                 resume_step: int | None, enabled: bool = True, accelerator=None, job_type: str | None = None,
                 headline: str | None = None, higher_is_better: bool = True, extra_best: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled  # only the main process writes
        self.path = self.run_dir / "metrics.jsonl"
        self.accelerator = accelerator
        own = [t for t in (accelerator.log_with if accelerator is not None else [])
               if isinstance(t, (MetricsFile, Guarded))]
        self.trackers = own or log_with(logger_cfg, self.run_dir)
        if accelerator is not None and not own:
            accelerator.log_with = [*accelerator.log_with, *self.trackers]
        if not enabled:
            return
        identity = RunIdentity(name=name, group=group, tags=list(tags), config=config, job_type=job_type,
                               headline=headline, higher_is_better=higher_is_better, resume_step=resume_step,
                               extra_best=list(extra_best or []))
        for tracker in self.trackers:
            if isinstance(tracker, MetricsFile):
                tracker.resume_step = resume_step
            else:
                tracker.identity = identity
        if accelerator is not None:
            accelerator.init_trackers(identity.name, config=config)
        else:
            for tracker in self.trackers:
                tracker.start()
            for tracker in self.trackers:
                tracker.store_init_configuration(config)

    def get(self, name: str):
        """The library's run object of a tracker that is on (`wandb` → wandb's Run), else None."""
        found = next((t for t in self.trackers if t.name == name), None)
        return None if found is None else found.tracker

    @property
    def wandb_run(self):
        return self.get("wandb")

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        if self.accelerator is not None:
            self.accelerator.log(metrics, step=step)
        else:
            for tracker in self.trackers:
                tracker.log(metrics, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        """An image file (DiT's sample grid) to the trackers that show images."""
        for tracker in self.trackers:
            if isinstance(tracker, Guarded) and tracker.tracker is not None and tracker.name in ("wandb", "tensorboard"):
                tracker.call("log_image", _log_image, tracker, key, Path(path), step)

    def summary(self, values: dict) -> None:
        """Run-level values (status, best headline, parameters, wall time) where a tracker keeps them apart from
        the curves: wandb's summary, TensorBoard's text, MLflow's params."""
        if not self.enabled:
            return
        for tracker in self.trackers:
            if not isinstance(tracker, Guarded) or tracker.tracker is None:
                continue
            if tracker.name == "wandb":
                tracker.call("summary", tracker.tracker.summary.update, values)
            elif tracker.name == "tensorboard":
                text = "\n".join(f"    {k}: {v}" for k, v in values.items())  # markdown code block
                tracker.call("summary", tracker.tracker.add_text, "summary", text)
            elif tracker.name == "mlflow":
                import mlflow

                tracker.call("summary", mlflow.set_tags, {f"summary.{k}": str(v) for k, v in values.items()})

    def finish(self, exit_code: int = 0) -> None:
        for tracker in self.trackers:
            if isinstance(tracker, Guarded):
                tracker.exit_code = exit_code
        if self.accelerator is not None:
            if self.enabled:
                for tracker in self.accelerator.trackers:
                    tracker.finish()
                self.accelerator.trackers.clear()  # finished once, whatever calls come later
        elif self.enabled:
            for tracker in self.trackers:
                tracker.finish()


def _log_image(tracker: Guarded, key: str, path: Path, step: int) -> None:
    if tracker.name == "wandb":
        import wandb

        tracker.tracker.log({key: wandb.Image(str(path))}, step=step)
    else:
        import numpy as np
        from PIL import Image

        tracker.tracker.add_image(key, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")


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
