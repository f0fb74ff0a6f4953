"""A fault matrix: every task's debug model trained by `train.py` under each fault a long run meets, and whether
it survived (the same per-step losses as an uninterrupted run, or what was lost).

    python scripts/chaos.py [--tasks vit convnext ...] [--faults sigkill sigterm ...] [--out results/chaos]

Faults (each against a clean reference run of the same command, per task):
    sigkill           SIGKILL at a random step after the first checkpoint, then the same command again
    sigterm           SIGTERM (preemption: the trainer checkpoints and exits 128+15), then the same command again
    corrupt           the preempted folder's newest checkpoint gets garbage over the start of its weight file
                      (its size unchanged, so its COMPLETE marker still matches): the resume skips it in one log
                      line for the one before
    checkpoint_write  the 2nd checkpoint write fails (OSError ENOSPC, injected by scripts/chaos_faults.py):
                      the earlier checkpoint intact, training goes on, summary.json counts failed_checkpoints
    second_process    the same command on the same folder while the first holds it (the first is paused with
                      SIGSTOP while the second starts, so they overlap on any machine): refused in one line
                      naming the first's PID, and the first completes
    tracker           logger=tensorboard whose every write raises OSError (scripts/chaos_faults.py): one warning,
                      training completes, metrics.jsonl has every row
    bitrot            (not in the default set) bytes flipped inside a tensor of the newest checkpoint, size
                      unchanged: shows whether a silent corruption of the weights is noticed at resume

Every run is a `train.py` subprocess on the CPU (`accelerate`'s single process, trainer.strategy=ddp), in a
scratch folder (--work, default a temporary one, removed unless --keep). The table (task × fault →
`survived` or what was lost) is printed and written to OUT/chaos.md with each cell's detail.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "scripts" / "chaos_faults.py"

# each task's debug model made tiny and fast (as tests/distributed_worker.py TASKS and tests/test_experiments.py
# TASK_TINY make them): short sequences, few evaluation samples, DiT's sampler at 2 steps
TASKS = {
    "vit": ["task=vit"],
    "convnext": ["task=convnext"],
    "resnet": ["task=resnet"],
    "llama": ["task=llama", "task.data.seq_len=32"],
    "dit": ["task=dit", "task.sample.steps=2", "task.eval.num_samples=8", "task.eval.final_num_samples=8",
            "task.grid.per_class=1", "task.grid.classes=[0,1]"],
    "wav2vec2": ["task=wav2vec2", "task.data.train_sentences=8", "task.data.val_sentences=8"],
    "hyenadna": ["task=hyenadna", "task.data.seq_len=64"],
    "caduceus": ["task=caduceus", "task.data.seq_len=64"],
    "mae": ["task=mae", "task.knn.bank_size=64"],
    "dino": ["task=dino", "task.knn.bank_size=64", "task.dino.out_dim=64", "task.dino.local_crops_number=2",
             "task.dino.local_crop_size=14"],
}
MAX_STEPS = 6
# a checkpoint every step, all kept: every fault lands after one, and the one before the newest is there to fall
# back on; one evaluation batch at the end
COMMON = ["task.size=debug", f"trainer.max_steps={MAX_STEPS}", "trainer.batch_size=2", "trainer.ckpt_every=1",
          f"trainer.keep_last={MAX_STEPS}", "trainer.log_every=1", f"trainer.eval_every={MAX_STEPS}",
          "trainer.max_eval_batches=1", "trainer.progress=log"]
FAULTS = ("sigkill", "sigterm", "corrupt", "checkpoint_write", "second_process", "tracker")
EXTRA_FAULTS = ("bitrot",)
# the interrupted runs sleep this long before each optimizer step and inside each checkpoint write
# (scripts/chaos_faults.py slow:…): a debug step takes milliseconds, and a signal must land inside the run
SLOW_SECONDS = 0.1
SLOW = f"slow:{SLOW_SECONDS}"
TIMEOUT = 600.0  # seconds for one run; a hang is a loss, not a wait forever
POLL = 0.005


@dataclass
class Cell:
    task: str
    fault: str
    survived: bool
    lost: str = ""  # in a few words, for the table
    detail: str = ""  # what was checked or what differed, for the notes under it

    @property
    def label(self) -> str:
        return "survived" if self.survived else self.lost


class Lost(Exception):
    """A fault's promise broken: `short` goes in the table, `detail` below it."""

    def __init__(self, short: str, detail: str = ""):
        super().__init__(short)
        self.short, self.detail = short, detail


# ------------------------------------------------------------------ running train.py


def train_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONUNBUFFERED": "1"}


def train_args(task: str, run_dir: Path, logger: str = "none") -> list[str]:
    return [*TASKS[task], *COMMON, f"logger={logger}", f"hydra.run.dir={run_dir}"]


@dataclass
class Command:
    """`python train.py <args>`, or with `faults` through scripts/chaos_faults.py (the same arguments)."""
    args: list[str]
    faults: str = ""

    def argv(self) -> list[str]:
        prefix = [sys.executable] + ([str(WRAPPER), self.faults] if self.faults else [])
        return [*prefix, str(ROOT / "train.py"), *self.args]


def command(task: str, run_dir: Path, *, logger: str = "none", fault: str = "") -> Command:
    return Command(train_args(task, run_dir, logger), fault)


class Forked:
    """train.py in a child forked from this process, which imported torch and the tasks once (`--launcher
    fork`): the child is a process of its own (its PID, its signals, its lock, killed as any other), without
    the seconds of imports each `python train.py` pays. The interface of subprocess.Popen that chaos uses."""

    def __init__(self, cmd: Command, stdout: int, stderr: int):
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns
            self._child(cmd, stdout, stderr)

    @staticmethod
    def _child(cmd: Command, stdout: int, stderr: int) -> None:
        import logging
        import traceback

        code = 1
        try:
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):  # as a fresh interpreter has them
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.environ.update(train_env())
            os.chdir(ROOT)
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            import chaos_faults

            chaos_faults.apply(cmd.faults)
            chaos_faults.run_script(str(ROOT / "train.py"), cmd.args)
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            if not isinstance(done.code, (int, type(None))):
                print(done.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 — as the interpreter would: the traceback, exit 1
            traceback.print_exc()
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(f"train.py (pid {self.pid})", timeout)
            time.sleep(POLL)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


LAUNCHERS = ("exec", "fork")
_launcher = {"name": "exec"}


def use_launcher(name: str) -> None:
    """`exec`: each run a fresh `python train.py` (as a user runs it); `fork`: forked from this process after
    importing what train.py imports (each run a few seconds shorter; what the test suite uses)."""
    if name not in LAUNCHERS:
        raise ValueError(f"launcher {name!r} is unknown; known: {', '.join(LAUNCHERS)}")
    if name == "fork":
        os.environ.update(train_env())  # before huggingface_hub reads its offline switches at import
        import importlib
        import pkgutil

        sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "scripts")) if p not in sys.path]
        import tasks

        for module in pkgutil.iter_modules(tasks.__path__):
            importlib.import_module(f"tasks.{module.name}")
        for name_ in ("dyt.train.run", "dyt.train.trainer", "accelerate.tracking", "torch.utils.tensorboard",
                      "hydra.main", "chaos_faults"):
            importlib.import_module(name_)
    _launcher["name"] = name


def start(cmd: Command, log_file: Path, err_file: Path | None = None):
    """Start a run, its output appended to `log_file` (its stderr to `err_file` when given)."""
    out = open(log_file, "ab")
    err = open(err_file, "ab") if err_file else out
    try:
        if _launcher["name"] == "fork":
            sys.stdout.flush()
            sys.stderr.flush()
            return Forked(cmd, out.fileno(), err.fileno())
        return subprocess.Popen(cmd.argv(), cwd=ROOT, env=train_env(), stdout=out, stderr=err)
    finally:  # the child holds its own copies
        out.close()
        err.close()


def finish(process, what: str) -> int:
    try:
        return process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise Lost("hung", f"{what} did not end within {TIMEOUT:.0f} s") from None


def run(cmd: Command, log_file: Path, what: str) -> tuple[int, str]:
    """Run to the end; (exit code, this run's output)."""
    before = log_file.stat().st_size if log_file.exists() else 0
    code = finish(start(cmd, log_file), what)
    return code, log_file.read_bytes()[before:].decode(errors="replace")


def wait_for(condition, process, what: str) -> None:
    deadline = time.time() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise Lost(f"ended before {what}", f"the run exited {process.returncode} before {what}: the fault "
                       "was not exercised (too few steps for this machine?)")
        if time.time() > deadline:
            process.kill()
            raise Lost("hung", f"no {what} within {TIMEOUT:.0f} s")
        time.sleep(POLL)


# ------------------------------------------------------------------ what a run left


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    # complete lines only: a run still writing may be read in the middle of a row
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def train_losses(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, train/loss, grad_norm) of every training row, in order."""
    return [(r["step"], r["train/loss"], r.get("grad_norm")) for r in rows(run_dir) if "train/loss" in r]


def last_step(run_dir: Path) -> int:
    return max([0, *(r["step"] for r in rows(run_dir) if "train/loss" in r)])


def summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def checkpoints(run_dir: Path) -> list[Path]:
    from dyt.train.checkpoint import valid_checkpoints

    return valid_checkpoints(run_dir / "checkpoints")


def weight_file(checkpoint: Path) -> Path:
    """The file with the model's weights: model.safetensors (ddp) or rank 0's DCP shard (fsdp)."""
    for name in ("model.safetensors", "pytorch_model.bin", "__0_0.distcp"):
        if (checkpoint / name).exists():
            return checkpoint / name
    raise Lost("no weight file", f"{checkpoint} has no model weights: {sorted(p.name for p in checkpoint.iterdir())}")


def same_losses(run_dir: Path, reference: Path) -> None:
    """Per-step losses identical to the uninterrupted run's, and its final evaluation too."""
    got, want = train_losses(run_dir), train_losses(reference)
    for have, expected in zip(got, want):
        if have != expected:
            raise Lost(f"losses differ from step {expected[0]}",
                       f"first differing row: step {expected[0]} (step, train/loss, grad_norm) = {have} against "
                       f"the uninterrupted run's {expected}")
    if len(got) != len(want):
        raise Lost("steps missing" if len(got) < len(want) else "steps repeated",
                   f"{len(got)} training rows against the uninterrupted run's {len(want)} "
                   f"(steps {[g[0] for g in got]})")
    final, expected = summary(run_dir).get("final"), summary(reference).get("final")
    if final != expected:
        raise Lost("final eval differs", f"final evaluation {final} against the uninterrupted run's {expected}")


def completed(run_dir: Path, output: str, code: int) -> dict:
    done = summary(run_dir)
    if code != 0 or done.get("status") != "completed" or done.get("steps") != MAX_STEPS:
        tail = " | ".join(output.strip().splitlines()[-3:])[-400:]
        raise Lost(f"exit {code}, {done.get('status', 'no summary')}",
                   f"the run ended with exit {code}, status {done.get('status')}, steps {done.get('steps')}: {tail}")
    return done


# ------------------------------------------------------------------ the faults


class Matrix:
    """One task's reference run and its faults, in `work/<task>/`."""

    def __init__(self, task: str, work: Path, seed: int = 0):
        self.task, self.work = task, work / task
        self.rng = random.Random(f"{seed}-{task}")
        self.work.mkdir(parents=True, exist_ok=True)
        self._reference: Path | None = None
        self._preempted: Path | None = None  # the sigterm fault's folder as the preemption left it

    def folder(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    @property
    def reference(self) -> Path:
        """The uninterrupted run every fault is compared with."""
        if self._reference is None:
            path = self.folder("reference")
            code, output = run(command(self.task, path), self.log("reference"), "the reference run")
            completed(path, output, code)
            self._reference = path
        return self._reference

    def run_fault(self, fault: str) -> Cell:
        try:
            detail = getattr(self, fault)()
            return Cell(self.task, fault, True, detail=detail)
        except Lost as lost:
            return Cell(self.task, fault, False, lost.short, lost.detail)
        except Exception as err:  # noqa: BLE001 — the harness's own failure is a red cell, not the end of the matrix
            return Cell(self.task, fault, False, "harness error", f"{type(err).__name__}: {err}")

    def _resume(self, run_dir: Path, name: str) -> str:
        code, output = run(command(self.task, run_dir), self.log(name), f"the {name} resume")
        completed(run_dir, output, code)
        if "resumed from" not in output:
            raise Lost("started over", "the second start did not resume from a checkpoint")
        same_losses(run_dir, self.reference)
        return output

    def sigkill(self) -> str:
        reference, run_dir = self.reference, self.folder("sigkill")
        target = self.rng.randint(1, MAX_STEPS - 2)  # the step after which it dies, with steps left to run
        process = start(command(self.task, run_dir, fault=SLOW), self.log("sigkill"))
        wait_for(lambda: checkpoints(run_dir) and last_step(run_dir) >= target, process,
                 f"step {target} after the first checkpoint")
        time.sleep(self.rng.uniform(0, 2 * SLOW_SECONDS))  # somewhere in the next step or its checkpoint write
        process.send_signal(signal.SIGKILL)
        process.wait()
        if summary(run_dir).get("status") == "completed":
            raise Lost("ended before the kill", "the run completed before SIGKILL reached it")
        killed_at = last_step(run_dir)
        torn = [p.name for p in (run_dir / "checkpoints").glob(".tmp-*")]
        self._resume(run_dir, "sigkill")
        during = f", during the write of {torn[0][5:]}" if torn else ""
        return f"killed after step {killed_at} of {MAX_STEPS}{during}; resumed; losses identical to the {reference.name}'s"

    def _preempt(self) -> tuple[Path, int]:
        """A run stopped by SIGTERM at a random step ≥ 2 (so a checkpoint before its last one exists)."""
        run_dir = self.folder("sigterm")
        target = self.rng.randint(2, MAX_STEPS - 2)
        process = start(command(self.task, run_dir, fault=SLOW), self.log("sigterm"))
        wait_for(lambda: last_step(run_dir) >= target, process, f"step {target}")
        process.send_signal(signal.SIGTERM)
        code = finish(process, "the preempted run")
        state = summary(run_dir)
        if code != 128 + signal.SIGTERM or state.get("status") != "preempted":
            raise Lost(f"exit {code}, {state.get('status', 'no summary')}",
                       f"SIGTERM after step {target}: exit {code} (expected {128 + signal.SIGTERM}), status "
                       f"{state.get('status')}, error {state.get('error')}")
        latest = checkpoints(run_dir)[-1]
        if latest.name != f"step_{state['steps']:08d}":
            raise Lost("no checkpoint at preemption", f"preempted at step {state['steps']}, newest checkpoint {latest}")
        return run_dir, state["steps"]

    def sigterm(self) -> str:
        self.reference
        run_dir, steps = self._preempt()
        self._preempted = self.work / "sigterm-preempted"
        shutil.rmtree(self._preempted, ignore_errors=True)
        shutil.copytree(run_dir, self._preempted)  # for the corrupt and bitrot faults
        self._resume(run_dir, "sigterm")
        return f"preempted at step {steps} (exit 143, checkpoint written); resumed; losses identical"

    def _from_preempted(self, name: str) -> tuple[Path, Path, Path]:
        """A copy of a preempted folder: (run folder, its newest checkpoint, the one before)."""
        if self._preempted is None:
            self._preempted = self.work / "sigterm-preempted"
            shutil.rmtree(self._preempted, ignore_errors=True)
            shutil.copytree(self._preempt()[0], self._preempted)
        run_dir = self.folder(name)
        shutil.copytree(self._preempted, run_dir)
        found = checkpoints(run_dir)
        if len(found) < 2:
            raise Lost("one checkpoint only", f"{[p.name for p in found]}: nothing before the newest to fall back on")
        return run_dir, found[-1], found[-2]

    def corrupt(self) -> str:
        run_dir, newest, previous = self._from_preempted("corrupt")
        weights = weight_file(newest)
        with open(weights, "r+b") as f:  # garbage over the start (a safetensors header); the size is unchanged
            f.write(bytes(self.rng.randrange(256) for _ in range(64)))
        code, output = run(command(self.task, run_dir), self.log("corrupt"), "the resume after corruption")
        mentions = [line for line in output.splitlines() if newest.name in line and "checkpoint" in line
                    and ("could not be loaded" in line or "does not match" in line)]
        if code != 0 and not mentions:
            tail = next((line for line in reversed(output.strip().splitlines()) if "Error" in line
                         and "HYDRA_FULL_ERROR" not in line), output.strip()[-200:])[-300:]
            raise Lost(f"resume crashed (exit {code})", f"{weights.name} of {newest.name} with 64 garbage bytes at "
                       f"its start: the resume exits {code} instead of falling back to {previous.name}: {tail}")
        completed(run_dir, output, code)
        if len(mentions) != 1:
            raise Lost("not one log line", f"{len(mentions)} lines name the corrupt {newest.name}: {mentions}")
        if f"resumed from {previous}" not in output:
            raise Lost(f"not resumed from {previous.name}", "no 'resumed from' line naming the one before")
        same_losses(run_dir, self.reference)
        return f"{newest.name} skipped in one line ({mentions[0].split(' - ')[-1][:120]}); resumed from {previous.name}"

    def bitrot(self) -> str:
        """Bytes flipped inside the last tensor of the newest checkpoint, its size unchanged."""
        run_dir, newest, previous = self._from_preempted("bitrot")
        weights = weight_file(newest)
        size = weights.stat().st_size
        with open(weights, "r+b") as f:
            f.seek(size - 64)
            tail = f.read(64)
            f.seek(size - 64)
            f.write(bytes(b ^ 0xFF for b in tail))
        code, output = run(command(self.task, run_dir), self.log("bitrot"), "the resume after bit rot")
        completed(run_dir, output, code)
        if f"resumed from {newest}" in output:
            raise Lost("loaded unnoticed", f"the last 64 bytes of {newest.name}/{weights.name} inverted: the resume "
                       f"loaded it without a word (the COMPLETE marker holds sizes, no checksum); " +
                       _difference(run_dir, self.reference))
        same_losses(run_dir, self.reference)
        return f"{newest.name} skipped; resumed from {previous.name}"

    def checkpoint_write(self) -> str:
        from dyt.train.checkpoint import intact, model_weights

        run_dir = self.folder("checkpoint_write")
        code, output = run(command(self.task, run_dir, fault="checkpoint_write:2"), self.log("checkpoint_write"),
                           "the run whose 2nd checkpoint write fails")
        done = completed(run_dir, output, code)
        if done.get("failed_checkpoints") != 1:
            raise Lost(f"failed_checkpoints={done.get('failed_checkpoints')}",
                       "summary.json does not count the one failed write")
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        expected = [f"step_{s:08d}" for s in range(1, MAX_STEPS + 1) if s != 2]
        if names != expected:
            raise Lost("checkpoint folders wrong", f"{names}, expected {expected} (step 2's failed, nothing half-written)")
        before = run_dir / "checkpoints" / "step_00000001"
        if not intact(before) or not model_weights(before):
            raise Lost("earlier checkpoint damaged", f"{before} no longer matches its marker or loads")
        if "not written" not in output:
            raise Lost("failure not logged", "no log line says the checkpoint was not written")
        same_losses(run_dir, self.reference)
        return "step 2's write failed (ENOSPC): step 1 intact, steps 3… written, failed_checkpoints=1, losses identical"

    def second_process(self) -> str:
        self.reference
        run_dir = self.folder("second_process")
        cmd = command(self.task, run_dir)
        first = start(cmd, self.log("second_process-first"))
        lock = run_dir / ".lock"
        wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), first, "the folder's lock")
        first.send_signal(signal.SIGSTOP)  # holds the folder while the second starts, however slow this machine
        errors = self.log("second_process-second.err")
        errors.unlink(missing_ok=True)
        try:
            second = finish(start(cmd, self.log("second_process-second"), errors), "the second run")
        finally:
            first.send_signal(signal.SIGCONT)
        lines = errors.read_text(errors="replace").strip().splitlines()
        if second != 2 or len(lines) != 1 or f"pid {first.pid}" not in lines[0]:
            finish(first, "the first run")
            raise Lost(f"second not refused (exit {second})",
                       f"the second run exited {second} with {len(lines)} stderr lines: "
                       f"{' | '.join(lines[-3:])[-300:]}")
        code = finish(first, "the first run")
        output = self.log("second_process-first").read_text(errors="replace")
        completed(run_dir, output, code)
        same_losses(run_dir, self.reference)
        return f"refused: {lines[0][:160]}; the first completed with identical losses"

    def tracker(self) -> str:
        run_dir = self.folder("tracker")
        code, output = run(command(self.task, run_dir, logger="tensorboard", fault="tracker"), self.log("tracker"),
                           "the run with a failing tracker")
        completed(run_dir, output, code)
        warnings = [line for line in output.splitlines() if "tensorboard failed" in line]
        if len(warnings) != 1:
            raise Lost(f"{len(warnings)} tracker warnings", f"expected one line saying tensorboard failed: {warnings}")
        same_losses(run_dir, self.reference)
        return "tensorboard switched off after one warning; metrics.jsonl complete, losses identical"


def _difference(run_dir: Path, reference: Path) -> str:
    try:
        same_losses(run_dir, reference)
        return "its losses happen to match the uninterrupted run's"
    except Lost as lost:
        return lost.detail or lost.short


# ------------------------------------------------------------------ the matrix


def run_matrix(tasks, faults, work: Path, seed: int = 0, echo=None) -> list[Cell]:
    cells = []
    for task in tasks:
        matrix = Matrix(task, work, seed)
        try:
            matrix.reference
        except Lost as lost:
            cells += [Cell(task, f, False, "reference run failed", lost.detail) for f in faults]
            continue
        for fault in faults:
            begun = time.time()
            cell = matrix.run_fault(fault)
            cells.append(cell)
            if echo:
                echo(f"{task:9s} {fault:16s} {cell.label}  ({time.time() - begun:.0f} s)  {cell.detail}")
    return cells


def table(cells: list[Cell]) -> str:
    tasks = list(dict.fromkeys(c.task for c in cells))
    faults = list(dict.fromkeys(c.fault for c in cells))
    found = {(c.task, c.fault): c.label for c in cells}
    lines = ["| task | " + " | ".join(faults) + " |", "|---|" + "---|" * len(faults)]
    lines += [f"| {t} | " + " | ".join(found.get((t, f), "") for f in faults) + " |" for t in tasks]
    return "\n".join(lines)


def markdown(cells: list[Cell], argv: list[str], seconds: float) -> str:
    survived = sum(c.survived for c in cells)
    notes = "\n".join(f"- {c.task} / {c.fault}: {'survived' if c.survived else 'LOST'} — {c.detail}" for c in cells)
    return (f"# Fault matrix\n\n`python scripts/chaos.py {' '.join(argv)}`".rstrip() +
            f" — {survived}/{len(cells)} cells survived, {seconds:.0f} s, {time.strftime('%Y-%m-%d')}.\n\n"
            f"Each task's debug model, {MAX_STEPS} steps, a checkpoint every step; `survived` = the promise held "
            "(see scripts/chaos.py's docstring), losses identical to an uninterrupted run of the same command.\n\n"
            f"{table(cells)}\n\n## Each cell\n\n{notes}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=[*FAULTS, *EXTRA_FAULTS])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "chaos")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its logs, its run folders)")
    parser.add_argument("--seed", type=int, default=0, help="draws the steps the signals come after")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="exec",
                        help="exec: each run a fresh `python train.py`; fork: forked from this process, which "
                             "imported torch and the tasks once (seconds shorter per run)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # dyt from this checkout
    use_launcher(args.launcher)
    work = args.work or Path(tempfile.mkdtemp(prefix="chaos-"))
    began = time.time()
    try:
        cells = run_matrix(args.tasks, args.faults, work, args.seed, echo=lambda line: print(line, flush=True))
    finally:
        if args.keep or args.work:
            print(f"runs and their logs: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(cells))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.md").write_text(markdown(cells, argv, time.time() - began))
    print(f"\nwritten: {args.out / 'chaos.md'}")
    return 0 if all(c.survived for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
