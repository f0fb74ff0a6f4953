"""One training loop for every task: accelerate, AdamW with the DyT decay rule, warm-up + cosine, clipping,
evaluation, atomic checkpoints with exact resume, preemption and divergence handling."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from omegaconf import DictConfig

from dyt.analysis import alpha_values, record_input_std

from ..optim import param_groups
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .data import epoch_batches, eval_loader, train_loader
from .hardware import peak_flops
from .schedule import learning_rate
from .task import Task
from .tracking import Tracker

log = logging.getLogger("dyt.train")


class Diverged(Exception):
    pass


class Preempted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class PreemptionFlag:
    """SIGTERM, SIGUSR1 and SIGUSR2 (Slurm's warning before preemption or the time limit; submitit asks for
    USR2) only set a flag; the loop saves a checkpoint at the next step boundary. Then `hand_over` passes the
    signal to whoever handled it before (submitit requeues the job); with nobody, the trainer requeues itself
    under Slurm and exits with 128 + the signal number."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def hand_over(self, signum: int) -> bool:
        """Call the handler that was installed before ours; True if there was one."""
        handler = self.previous.get(signum)
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(signum, None)
            return True
        return False


def gradient_accumulation(tcfg, processes: int) -> int:
    """Micro-steps per optimizer step: `grad_accum`, or what makes `global_batch_size` with this many processes."""
    if not tcfg.global_batch_size:
        return tcfg.grad_accum
    per_step = tcfg.batch_size * processes
    if tcfg.global_batch_size % per_step:
        raise ValueError(f"trainer.global_batch_size={tcfg.global_batch_size} is not a multiple of "
                         f"trainer.batch_size × processes = {per_step}; change trainer.batch_size")
    return tcfg.global_batch_size // per_step


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


class Trainer:
    def __init__(self, cfg: DictConfig, task: Task, model: torch.nn.Module, train_set, val_set, *,
                 accelerator: Accelerator, run_dir: Path, run_info: dict, tracker_args: dict):
        self.cfg, self.tcfg, self.task = cfg, cfg.trainer, task
        self.accelerator, self.run_dir, self.run_info = accelerator, run_dir, run_info
        self.raw_model = model
        self.ckpt_root = run_dir / "checkpoints"
        tcfg, acc = self.tcfg, accelerator
        self.grad_accum = gradient_accumulation(tcfg, acc.num_processes)
        if acc.is_main_process:
            log.info("global batch %d = %d per process × %d processes × %d accumulation; %d optimizer steps",
                     tcfg.batch_size * acc.num_processes * self.grad_accum, tcfg.batch_size, acc.num_processes,
                     self.grad_accum, tcfg.max_steps)
        self.train_dl = train_loader(train_set, tcfg.batch_size, seed=cfg.seed, rank=acc.process_index,
                                     world=acc.num_processes, collate_fn=task.collate_fn, num_workers=tcfg.num_workers)
        self.val_dl = eval_loader(val_set, tcfg.batch_size, rank=acc.process_index, world=acc.num_processes,
                                  collate_fn=task.collate_fn, num_workers=tcfg.num_workers)
        optim = tcfg.optim
        groups = param_groups(model, optim.weight_decay, decay_alpha=optim.decay_alpha, no_decay=optim.no_decay)
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
        if tcfg.compile:
            model = torch.compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema = None
        if tcfg.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.raw_model, decay=tcfg.ema_decay)
            acc.register_for_checkpointing(self.ema)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.train_seconds = 0.0
        resume_from = latest_checkpoint(self.ckpt_root)
        if resume_from is not None:
            self._restore(load_checkpoint(acc, resume_from))
            log.info("resumed from %s at step %d", resume_from, self.step)
        self.peak_flops = peak_flops(tcfg.peak_tflops)
        self.tracker = Tracker(run_dir, cfg.logger, resume_step=self.step if resume_from else None,
                               enabled=acc.is_main_process, **tracker_args)

    # ------------------------------------------------------------ state

    def _state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
                "last_eval": self.last_eval, "train_seconds": self.train_seconds}

    def _restore(self, state: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best, self.last_eval = state["best"], state["last_eval"]
        self.train_seconds = state["train_seconds"]

    def _micro_batches(self):
        """Batches from the saved position onwards; the position advances as they are consumed."""
        from accelerate.utils import send_to_device

        while True:
            empty = True
            for batch in epoch_batches(self.train_dl, self.epoch, self.batch_in_epoch, self.cfg.seed):
                empty = False
                self.batch_in_epoch += 1
                yield send_to_device(batch, self.accelerator.device)
            if empty and self.batch_in_epoch == 0:
                raise RuntimeError("the training data yielded no batch in a whole epoch")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # ------------------------------------------------------------ the loop

    def fit(self) -> dict:
        acc, tcfg = self.accelerator, self.tcfg
        status, error, exit_code = "completed", None, 0
        started = time.time()
        preemption = PreemptionFlag()
        try:
            with preemption:
                self._loop(preemption)
            if acc.is_main_process:
                self.task.on_run_end(acc.unwrap_model(self.model), self.run_dir, self.tracker)
        except Diverged as err:
            status, error = "diverged", str(err)
            log.warning("diverged: %s", err)
            exit_code = 1 if tcfg.fail_on_divergence else 0
        except Preempted as err:
            status, error, exit_code = "preempted", f"{err} at step {self.step}", 128 + err.signum
            self._checkpoint()
        except BaseException as err:
            status, error, exit_code = "failed", f"{type(err).__name__}: {err}", 1
            self._write_summary(status, error, time.time() - started)
            self.tracker.finish(exit_code=1)
            raise
        summary = self._write_summary(status, error, time.time() - started)
        self.tracker.finish(exit_code=exit_code)
        if status == "preempted" and not preemption.hand_over(preemption.signum):
            self._requeue()
        summary["exit_code"] = exit_code
        return summary

    def _loop(self, preemption: PreemptionFlag) -> None:
        acc, tcfg, task = self.accelerator, self.tcfg, self.task
        bar = self._progress_bar()
        batches = self._micro_batches()
        window = _Window()
        self.model.train()
        while self.step < tcfg.max_steps:
            tick = time.time()
            log_now = (self.step + 1) % tcfg.log_every == 0 or self.step + 1 == tcfg.max_steps
            step_loss, step_metrics, stds = 0.0, {}, {}
            task.set_step(self.step, tcfg.max_steps)
            for micro in range(self.grad_accum):
                batch = next(batches)
                sync = micro == self.grad_accum - 1
                record = record_input_std(self.raw_model) if log_now and micro == 0 else nullcontext({})
                with (nullcontext() if sync else acc.no_sync(self.model)), record as recorded:
                    loss, metrics = task.loss(self.model, batch)
                    acc.backward(loss / self.grad_accum)
                stds.update(recorded)
                step_loss += loss.detach().float() / self.grad_accum
                for k, v in metrics.items():
                    step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / self.grad_accum
                samples, tokens = task.count(batch)
                window.add_data(samples * acc.num_processes, None if tokens is None else tokens * acc.num_processes)
            clip = tcfg.optim.clip_grad if tcfg.optim.clip_grad else math.inf
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), clip)
            grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
            self._check(step_loss, grad_norm, preemption)
            lr = self._set_lr()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.raw_model, step=self.step)
            self.step += 1
            self.train_seconds += time.time() - tick
            window.add_step(float(step_loss), step_metrics, grad_norm, time.time() - tick)
            if log_now:
                self._log_train(window, lr, stds, bar)
                window = _Window()
            if self.step % tcfg.eval_every == 0 or self.step == tcfg.max_steps:
                self._evaluate(bar)
            if self.step % tcfg.ckpt_every == 0 or self.step == tcfg.max_steps:
                self._checkpoint()
            if bar is not None:
                bar.update(1)
            if preemption.signum:
                raise Preempted(preemption.signum)
        if bar is not None:
            bar.close()

    def _check(self, loss: torch.Tensor, grad_norm: float, preemption: PreemptionFlag) -> None:
        """Divergence (a non-finite loss, or grad norm outside fp16 loss scaling) and preemption, agreed on
        by every process before the optimizer step."""
        fp16 = self.tcfg.mixed_precision == "fp16"
        bad = not torch.isfinite(loss).item() or (not math.isfinite(grad_norm) and not fp16)
        flags = torch.tensor([float(bad), float(preemption.signum)], device=self.accelerator.device)
        flags = self.accelerator.reduce(flags, "sum") if self.accelerator.num_processes > 1 else flags
        if flags[0] > 0:
            raise Diverged(f"non-finite loss or grad norm at step {self.step + 1} (loss {loss.item():.4g}, "
                           f"grad norm {grad_norm:.4g})")
        if flags[1] > 0 and not preemption.signum:
            preemption.signum = int(signal.SIGTERM)

    def _set_lr(self) -> float:
        optim = self.tcfg.optim
        lr = learning_rate(optim.schedule, self.step, peak=optim.lr, total=self.tcfg.max_steps,
                           warmup=optim.warmup_steps, min_ratio=optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # ------------------------------------------------------------ logging, eval, checkpoints

    def _progress_bar(self):
        mode = self.tcfg.progress
        if not self.accelerator.is_main_process or mode == "log" or (mode == "auto" and not sys.stderr.isatty()):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.tcfg.max_steps, initial=self.step, desc=self.task.name, dynamic_ncols=True)

    def _log_train(self, window: "_Window", lr: float, stds: dict, bar) -> None:
        acc = self.accelerator
        stats = torch.tensor([window.loss_sum, window.steps], device=acc.device, dtype=torch.float64)
        if acc.num_processes > 1:
            stats = acc.reduce(stats, "sum")
        metrics = {"train/loss": float(stats[0] / stats[1]), "lr": lr, "grad_norm": window.grad_norm,
                   "samples_per_s": window.samples / window.seconds, "epoch": self.epoch}
        if window.tokens:
            metrics["tokens_per_s"] = window.tokens / window.seconds
        if self.task.flops_per_sample and self.peak_flops:
            achieved = self.task.flops_per_sample * metrics["samples_per_s"]
            metrics["mfu"] = achieved / (self.peak_flops * acc.num_processes)
        metrics.update({f"train/{k}": v / window.steps for k, v in window.metrics.items()})
        if self.task.loss_is_nll:  # of the window's mean loss: a mean of per-step exp(loss) would be biased up
            metrics["train/ppl"] = math.exp(min(metrics["train/loss"], 700))
        metrics.update({f"alpha/{k}": v for k, v in alpha_values(self.raw_model).items()})
        metrics.update({f"input_std/{k}": v for k, v in stds.items()})
        if torch.cuda.is_available():
            metrics["memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.tracker.log(metrics, self.step)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{lr:.2e}")
        elif acc.is_main_process:
            rate = f"{metrics['tokens_per_s']:.0f} tok/s" if window.tokens else f"{metrics['samples_per_s']:.1f} samples/s"
            log.info("step %d/%d  loss %.4f  lr %.2e  grad norm %.3g  %s", self.step, self.tcfg.max_steps,
                     metrics["train/loss"], lr, window.grad_norm, rate)

    @torch.no_grad()
    def _evaluate(self, bar) -> None:
        acc = self.accelerator
        model = self.ema.module if self.ema is not None else self.model
        model.eval()
        limit = self.tcfg.max_eval_batches

        def batches():
            from accelerate.utils import send_to_device

            for i, batch in enumerate(self.val_dl):
                if limit is not None and i >= limit:
                    return
                yield send_to_device(batch, acc.device)

        def reduce(totals: dict) -> dict:
            if acc.num_processes == 1:
                return totals
            keys = sorted(totals)
            stacked = torch.stack([torch.as_tensor(totals[k], device=acc.device, dtype=torch.float64) for k in keys])
            return dict(zip(keys, acc.reduce(stacked, "sum")))

        metrics = {f"val/{k}": v for k, v in self.task.evaluate(model, batches(), reduce).items()}
        self.model.train()
        self.last_eval = metrics
        headline = self.task.headline
        value = metrics.get(headline.name)
        if value is not None and math.isfinite(value):
            best = self.best.get(headline.name)
            better = best is None or (value > best if headline.higher_is_better else value < best)
            if better:
                self.best = {**metrics, "step": self.step}
        self.tracker.log(metrics, self.step)
        if acc.is_main_process:
            text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            (bar.write if bar is not None else log.info)(f"step {self.step}  {text}")

    def _checkpoint(self) -> None:
        save_checkpoint(self.accelerator, self.ckpt_root, self.step, self._state(), self.tcfg.keep_last)

    def _requeue(self) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if job and self.tcfg.requeue_on_preempt and self.accelerator.is_main_process:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.info("scontrol requeue %s: %s", job, (result.stdout + result.stderr).strip() or "ok")

    def _write_summary(self, status: str, error: str | None, wall: float) -> dict:
        headline = self.task.headline
        final = self.last_eval.get(headline.name)
        summary = {
            **self.run_info, "status": status, "error": error, "steps": self.step,
            "max_steps": self.tcfg.max_steps, "wall_seconds": round(wall, 2),
            "train_seconds": round(self.train_seconds, 2), "final": self.last_eval, "best": self.best,
            "headline": {"name": headline.name, "value": final, "best": self.best.get(headline.name),
                         "higher_is_better": headline.higher_is_better},
        }
        if self.accelerator.is_main_process:
            write_json(self.run_dir / "summary.json", summary)
            self.tracker.summary({"status": status, "steps": self.step, "headline": final})
        return summary


class _Window:
    """Sums over the steps between two log lines."""

    def __init__(self):
        self.steps, self.loss_sum, self.seconds, self.samples, self.tokens = 0, 0.0, 0.0, 0, 0
        self.grad_norm, self.metrics = float("nan"), {}

    def add_data(self, samples: int, tokens: int | None) -> None:
        self.samples += samples
        self.tokens += tokens or 0

    def add_step(self, loss: float, metrics: dict, grad_norm: float, seconds: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.grad_norm, self.seconds = grad_norm, self.seconds + seconds
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v
