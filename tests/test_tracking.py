"""The comparison on the dashboard: a 2 × 2 × 2 ViT sweep (norm × α₀ × seed) logged offline to wandb and to
TensorBoard, read back from the files each library wrote; a TensorBoard server on the sweep; a wandb workspace
grouped by norm label; compare.py's bands; resume bookkeeping; a tracker that fails; first-use notices."""
import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dyt.train.checkpoint import MARKER
from tests.helpers import ROOT, metrics, run_train, summary, train_env

TINY_VIT = ["task=vit", "task.size=debug", "trainer.batch_size=32", "trainer.max_eval_batches=1"]
GRID = ["norm=dyt,layernorm", "norm.alpha_init=0.5,1.0", "seed=0,1"]


def wandb_records(path: Path) -> list:
    """The records of a wandb transaction log (run-<id>.wandb): LevelDB's log format (32 KiB blocks of records
    with a 7-byte header: crc32, length, type FULL/FIRST/MIDDLE/LAST — google/leveldb doc/log_format.md) after
    wandb's 7-byte file header, each record a `wandb_internal_pb2.Record`. wandb 0.31 no longer ships the
    Python reader (wandb/sdk/internal/datastore.py in github.com/wandb/wandb, which this follows)."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0)
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left_in_block = block - pos % block
        if left_in_block < 7:  # a block's tail too short for a header is padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding at the end of a block
            pos += left_in_block
            continue
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_run(run_dir: Path) -> dict:
    """What the run's offline wandb files say: run record (group, job type, config), defined metrics, the last
    summary, over every segment."""
    found = {"config": {}, "summary": {}, "metrics": {}, "segments": 0}
    for log_file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        found["segments"] += 1
        for record in wandb_records(log_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found.update(group=record.run.run_group, job_type=record.run.job_type, name=record.run.display_name)
                found["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
            elif kind == "config":
                found["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
            elif kind == "metric":
                found["metrics"][record.metric.name] = record.metric.summary
            elif kind == "summary":
                found["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                                         for u in record.summary.update})
    return found


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("dashboard")
    command = [sys.executable, str(ROOT / "train.py"), "-m", *TINY_VIT, *GRID, "logger=[wandb,tensorboard]",
               "trainer.max_steps=4", "trainer.log_every=1", "trainer.eval_every=2", "trainer.progress=log",
               f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(command, cwd=ROOT, env=train_env(WANDB_MODE="offline"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def _trained(sweep_dir: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep_dir.glob("*/summary.json")
            if summary(p.parent)["status"] == "completed"}


def test_wandb_run_files_carry_what_the_dashboard_groups_by(sweep):
    runs = _trained(sweep)
    assert len(runs) == 6  # layernorm's second α₀ repeats its first: 2 skipped
    for folder in runs.values():
        run, own = wandb_run(folder), summary(folder)
        config = run["config"]
        assert run["group"] == f"vit-debug-{sweep.name}" == own["group"]  # <sweep name>-<sweep folder>
        assert run["job_type"] == "train" and run["name"] == f"{own['norm']}-s{own['seed']}"
        assert config["norm_label"] == own["norm"] and config["params"] == own["params"] > 0
        if config["norm_type"] == "layernorm":
            assert config["alpha_init"] is None and config["norm"]["alpha_init"] is None
            assert config["swept"] == {"norm": "layernorm", "norm.alpha_init": None, "seed": own["seed"]}
        else:
            alpha = config["alpha_init"]
            assert isinstance(alpha, float) and alpha in (0.5, 1.0)
            assert config["alpha_per_role"] == {"attn": alpha, "ffn": alpha, "final": alpha}
            # only what varies, typed: a number, not the string the command line had
            assert config["swept"] == {"norm": "dyt", "norm.alpha_init": alpha, "seed": own["seed"]}
        # summaries in the headline's direction (val/acc: the best is the highest), beside the last value
        assert run["metrics"]["val/acc"].max and run["metrics"]["val/acc"].last
        best_in_file = run["summary"]["val/acc"]["max"]
        assert best_in_file == pytest.approx(max(r["val/acc"] for r in metrics(folder) if "val/acc" in r))
        assert run["summary"]["headline_best"] == pytest.approx(own["headline"]["best"])
        assert run["summary"]["samples_seen"]["max"] == own["samples_seen"] == 4 * 32
        assert run["summary"]["wall_seconds"] == own["wall_seconds"]


def test_workspace_groups_panels_by_norm_label(sweep):
    sys.path.insert(0, str(ROOT / "scripts"))
    from wandb_workspace import build_workspace, from_runs

    known = from_runs([sweep])
    assert known == {"headline": "val/acc", "higher_is_better": True, "group": f"vit-debug-{sweep.name}"}
    workspace = build_workspace("team", "dyt-suite", group=known["group"], headline=known["headline"])
    curves = workspace.sections[0].panels
    assert [p.y for p in curves] == [["train/loss"], ["val/loss"], ["val/acc"]]
    assert all(p.groupby.name == "norm_label" and p.groupby_rangefunc == "stddev" for p in curves)
    assert workspace.sections[2].panels[0].metric_regex == "^alpha/.*"
    assert {"config:alpha_init", "summary:val/acc"} <= set(workspace.runset_settings.pinned_columns)
    view = json.dumps(workspace._to_model().model_dump(mode="json", by_alias=True))  # what would be sent, offline
    assert view.count('"groupBy": "norm_label.value"') == len(curves) + 2  # and the two per-sample panels


def test_tensorboard_scalars_equal_metrics_jsonl(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for folder in _trained(sweep).values():
        own = summary(folder)
        events = EventAccumulator(str(folder / "tensorboard" / f"{own['norm']}-s{own['seed']}"))
        events.Reload()
        for key in ("train/loss", "val/acc", "samples_seen"):
            logged = [(r["step"], r[key]) for r in metrics(folder) if key in r]
            read = [(e.step, e.value) for e in events.Scalars(key)]
            assert [s for s, _ in read] == [s for s, _ in logged]
            assert [v for _, v in read] == pytest.approx([v for _, v in logged], rel=1e-6)  # float32 in the file


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tensorboard_server_shows_both_norms_of_the_sweep(sweep):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast=false", "--reload_interval=1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    try:
        deadline, runs = time.time() + 60, {}
        while time.time() < deadline:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/tags", timeout=5) as reply:
                    runs = json.load(reply)
                if sum("train/loss" in tags for tags in runs.values()) == 6:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        with_loss = sorted(run for run, tags in runs.items() if "train/loss" in tags)
        assert len(with_loss) == 6 and {run.rsplit("/", 1)[1].rsplit("-s", 1)[0] for run in with_loss} == \
            {"layernorm", "dyt-a0.5", "dyt-a1"}
        for norm in ("layernorm", "dyt-a0.5"):
            run = next(r for r in with_loss if r.endswith(f"/{norm}-s0"))
            query = urllib.parse.urlencode({"run": run, "tag": "train/loss"})
            with urllib.request.urlopen(f"{base}/scalars?{query}", timeout=10) as reply:
                points = json.load(reply)  # [wall time, step, value]
            folder = sweep / run.split("/tensorboard/")[0]
            logged = [(r["step"], r["train/loss"]) for r in metrics(folder) if "train/loss" in r]
            assert [(s, pytest.approx(v, rel=1e-6)) for _, s, v in points] == logged
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_compare_draws_one_band_per_norm_and_a_delta_to_layernorm(sweep, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    from compare import compare, curves_figure, group_runs
    from matplotlib.collections import PolyCollection

    from dyt.train.results import find_runs

    groups, _, _ = group_runs(find_runs([sweep]))
    assert sorted(groups) == ["dyt-a0.5", "dyt-a1", "layernorm"] and all(len(g) == 2 for g in groups.values())
    figure = curves_figure(groups)
    for ax in figure.axes:
        bands = [c.get_gid() for c in ax.collections if isinstance(c, PolyCollection)]
        assert sorted(bands) == ["band:dyt-a0.5", "band:dyt-a1", "band:layernorm"]
        colors = {line.get_label().split(" (")[0]: line.get_color() for line in ax.get_lines()}
        assert len(set(colors.values())) == 3
    assert "diverged" not in " ".join(t.get_text() for t in figure.legends + figure.axes[-1].get_legend().texts)
    assert "vit (debug)" in figure._suptitle.get_text()

    table = compare(find_runs([sweep]), tmp_path, [str(sweep)])[0].read_text()
    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    lines = table.splitlines()
    header = cells(next(line for line in lines if line.startswith("| configuration")))
    rows = {cells(line)[0]: dict(zip(header, cells(line))) for line in lines
            if line.startswith("| dyt") or line.startswith("| layernorm")}
    delta, minutes = "Δ to baseline (95% CI)", "wall time (min)"
    assert rows["dyt-a0.5"]["α₀"] == "0.5" and rows["dyt-a1"]["α₀"] == "1" and rows["layernorm"]["α₀"] == "–"
    assert rows["dyt-a1"][delta].endswith("(2 seeds) vs layernorm") and rows["layernorm"][delta] == "baseline"
    for row in rows.values():  # rounded: two significant digits, the std to the same place
        mean, std = row[minutes].split(" ± ")
        assert len(mean.replace(".", "").lstrip("0")) == 2 and len(mean.split(".")[-1]) == len(std.split(".")[-1])


def test_killed_and_resumed_run_adds_up_its_segments_and_syncs_both(tmp_path):
    args = [*TINY_VIT, "trainer.max_steps=80", "trainer.ckpt_every=20", "trainer.log_every=1",
            "trainer.eval_every=40", "logger=wandb"]
    command = [sys.executable, str(ROOT / "train.py"), *args, "trainer.progress=log", f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=ROOT, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ((tmp_path / "checkpoints" / "step_00000020" / MARKER).exists()
               and any(r["step"] >= 24 for r in _rows(tmp_path))):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = _rows(tmp_path)
    first_span = first[-1]["time"] - first[0]["time"]

    result = run_train(tmp_path, *args)
    second = metrics(tmp_path)
    done = summary(tmp_path)
    resumed_rows = [r for r in second if r["step"] > 20]
    second_span = resumed_rows[-1]["time"] - resumed_rows[0]["time"]
    assert done["status"] == "completed" and len(done["segments"]) == 2
    assert done["segments"][0]["from_step"] == 0 and done["segments"][0]["to_step"] >= 24
    assert done["wall_seconds"] >= first_span + second_span
    assert done["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in done["segments"]), abs=0.02)
    assert done["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in done["segments"]), abs=0.02)
    assert done["segments"][0]["train_seconds"] > 0 and done["segments"][1]["train_seconds"] > 0

    # the printed command uploads the run whole: both offline segments
    hint = next(line for line in (result.stderr + result.stdout).splitlines() if "uploads this run whole" in line)
    folder = hint.split("wandb sync ", 1)[1].split("  #")[0]
    assert Path(folder) == tmp_path / "wandb"
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", folder], env=train_env(),
                         capture_output=True, text=True, timeout=120)
    assert "Would sync 2 run(s)" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    assert wandb_run(tmp_path)["segments"] == 2


def _rows(run_dir: Path) -> list[dict]:
    from dyt.train.results import read_metrics

    return read_metrics(run_dir)


def test_a_tracker_that_fails_is_switched_off_and_training_goes_on(tmp_path, caplog):
    from dyt.train.tracking import Tracker

    tracker = Tracker(tmp_path, {"tensorboard": {}}, config={"a": 1}, name="run", group=None, tags=[], resume_step=None)
    writer = tracker.get("tensorboard")
    writer.add_scalar = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))  # a tracker's write fails
    with caplog.at_level(logging.WARNING):
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.log({"train/loss": 0.5}, step=2)
    tracker.finish()
    warnings = [r.getMessage() for r in caplog.records if "tensorboard failed" in r.getMessage()]
    assert len(warnings) == 1 and "disk full" in warnings[0]  # reported once
    assert [r["train/loss"] for r in metrics(tmp_path)] == [1.0, 0.5]  # the source of truth has everything


def test_an_uninstalled_tracker_is_one_clear_line_before_any_work(tmp_path):
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    result = run_train(tmp_path / "run", *TINY_VIT, "logger=[tensorboard,mlflow]", check=False, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    assert result.stderr.strip().splitlines()[-1] == "error: logger=mlflow needs the mlflow package: pip install mlflow"


def test_train_log_keeps_step_lines_under_the_progress_bar(tmp_path):
    run_train(tmp_path, *TINY_VIT, "trainer.max_steps=4", "trainer.log_every=2", "trainer.eval_every=4",
              "trainer.progress=bar")
    lines = (tmp_path / "train.log").read_text()
    assert "step 2/4  loss" in lines and "step 4/4  loss" in lines and "step 4  val/acc" in lines


def test_first_kernel_build_is_announced_before_it_starts(tmp_path, monkeypatch, caplog):
    """A machine with no kernel cache (TORCH_EXTENSIONS_DIR empty): the notice comes before the compiler is
    called. The compiler itself is stubbed at torch's boundary (`load_inline`): the real build takes a minute
    or two on 2 cores; tests/test_kernels.py builds it for real."""
    import torch.utils.cpp_extension

    from dyt.kernels import cpu

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []

    def compile_stub(name, **kwargs):
        calls.append([r.getMessage() for r in caplog.records])
        return object()

    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", compile_stub)
    cpu.extension.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="dyt.kernels"):
            assert cpu.extension() is not None
        assert len(calls) == 1 and any("compiling the fused CPU kernel" in m and str(tmp_path) in m for m in calls[0])
        # built once: the next process finds it in the cache and says nothing
        name = next(p.name for p in tmp_path.iterdir())
        (tmp_path / name / f"{name}.so").touch()
        cpu.extension.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dyt.kernels"):
            cpu.extension()
        assert not [r for r in caplog.records if "compiling" in r.getMessage()]
    finally:
        cpu.extension.cache_clear()
