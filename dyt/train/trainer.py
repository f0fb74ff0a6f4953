"""One training loop for every task: DDP (accelerate) or FSDP2 (dyt.train.parallel), AdamW with an explicit
decay rule, the official lr schedules, clipping, evaluation of the weights and of their EMA, atomic
checkpoints with exact resume, preemption and divergence handling.

On the device the loop never waits for the host between checks: the loss, metrics and gradient norm stay
tensors, and divergence and preemption are agreed on every `trainer.check_every` steps and at every log,
evaluation and checkpoint, where the host reads them anyway."""
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
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from omegaconf import DictConfig

from dyt.analysis import alpha_values, record_input_std

from ..optim import param_groups

from .checkpoint import CheckpointWriteError, load_latest, save_checkpoint
from .data import epoch_batches, eval_loader, train_loader
from .ema import WeightEma
from .hardware import peak_flops
from .parallel import Built, full_state_dict, full_tensor
from .schedule import learning_rate
from .task import Task
from .results import read_metrics
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


def build_optimizer(model: torch.nn.Module, optim: DictConfig, task, device: torch.device) -> torch.optim.Optimizer:
    """trainer.optim's optimizer over the model's parameter groups (weight decay, α decay, layer-wise lr scales);
    fused (one kernel) on CUDA."""
    lr_scale = None
    if optim.layer_decay != 1.0:  # layer-wise lr decay: the task knows the order of its layers (checked in validate)
        lr_scale = partial(task.lr_scale, layer_decay=optim.layer_decay)
    groups = param_groups(model, optim.weight_decay, decay_alpha=optim.decay_alpha, no_decay=optim.no_decay,
                          lr_scale=lr_scale)
    fused = True if device.type == "cuda" else None
    if optim.name == "sgd":  # torchvision's: momentum, weight decay as L2 added to the gradient
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov, fused=fused)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused)


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


class Trainer:
    def __init__(self, cfg: DictConfig, built: Built, train_set, val_set, *, accelerator: Accelerator,
                 run_dir: Path, run_info: dict, tracker_args: dict):
        self.cfg, self.tcfg, self.task = cfg, cfg.trainer, built.task
        task, model = built.task, built.model
        self.accelerator, self.run_dir, self.run_info = accelerator, run_dir, run_info
        self.sharded = cfg.trainer.strategy in ("fsdp", "hsdp")
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
        self.eval_padding = self._eval_padding()
        # built after sharding, over the parameters each process holds
        optimizer = build_optimizer(model, tcfg.optim, task, acc.device)
        optim = tcfg.optim  # what the loop reads every step, as plain values: an OmegaConf read costs microseconds
        self.lr_at = partial(learning_rate, optim.schedule, peak=optim.lr, total=tcfg.max_steps,
                             warmup=optim.warmup_steps, min_ratio=optim.min_lr_ratio, step_size=optim.step_size,
                             gamma=optim.gamma)
        self.clip = optim.clip_grad or math.inf
        if self.sharded:  # never through acc.prepare, which would wrap the sharded model in DDP
            self.model, self.optimizer = model, optimizer
        else:
            self.model, self.optimizer = acc.prepare(model, optimizer)
        # the torch optimizer is stepped and zeroed, and its gradients clipped, directly unless fp16's loss scaler
        # needs accelerate's wrapper: the wrapper looks up optional packages and the optimizer's signature at every
        # step, and its clipping goes through a DTensor-aware path, ~5% of a 29 ms ViT step (bench_trainer.py)
        self.loss_scaled = getattr(self.optimizer, "scaler", None) is not None
        self.torch_optimizer = optimizer
        self.ema = WeightEma(self.raw_model, tcfg.ema_decay) if tcfg.ema_decay else None
        if self.ema is not None and not self.sharded:
            acc.register_for_checkpointing(self.ema)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._train_before = 0.0  # train seconds at the start of this segment
        self.best: dict[str, float] = {}  # the evaluation with the best headline value (trained weights)
        self.best_ema: dict[str, float] = {}  # … with the best headline value of the EMA weights
        self.last_eval: dict[str, float] = {}
        self.train_seconds = 0.0
        # where the rest of the wall time goes: evaluations (with their logging) and checkpoint writes
        self.eval_seconds, self.checkpoint_seconds = 0.0, 0.0
        self.failed_checkpoints = 0
        # bookkeeping over every segment of a run (each start of the same command): seconds of wall time before
        # this segment, what each earlier segment took, and samples / tokens seen (an x-axis that compares runs
        # with different batch sizes)
        self.started = time.time()  # this segment
        self.wall_before, self.segments, self.start_step = 0.0, [], 0
        self.samples_seen, self.tokens_seen = 0, 0
        self.streamed = hasattr(self.train_dl, "state_dict")  # torchdata's StatefulDataLoader: an iterable stream
        self.first_bad_step = torch.full((), -1, device=acc.device)  # the first step whose loss was not finite
        loaded = load_latest(acc, self.ckpt_root, model=self.model, optimizer=self.optimizer, ema=self.ema,
                             sharded=self.sharded)
        resume_from = loaded[0] if loaded else None
        if loaded is not None:
            _, state, data_state = loaded
            self._restore(state)
            if data_state is not None and self.streamed:
                self.train_dl.load_state_dict(data_state)
            log.info("resumed from %s at step %d", resume_from, self.step)
        self.peak_flops = peak_flops(tcfg.peak_tflops)
        self.tracker = Tracker(run_dir, cfg.logger, resume_step=self.step if resume_from else None,
                               enabled=acc.is_main_process, accelerator=acc,
                               extra_best=[self._ema_headline] if self.ema is not None else [], **tracker_args)

    # ------------------------------------------------------------ state

    def _state(self) -> dict:
        now = time.time()
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
                "best_ema": self.best_ema, "last_eval": self.last_eval, "train_seconds": self.train_seconds,
                "eval_seconds": self.eval_seconds, "checkpoint_seconds": self.checkpoint_seconds,
                "samples_seen": self.samples_seen, "tokens_seen": self.tokens_seen, "saved_at": now,
                "wall_seconds": self.wall_before + now - self.started, "segments": self.segments,
                "segment": {"started": self.started, "from_step": self.start_step,
                            "train_seconds_before": self._train_before}}

    def _restore(self, state: dict) -> None:
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best, self.best_ema, self.last_eval = state["best"], state.get("best_ema", {}), state["last_eval"]
        self.train_seconds = state["train_seconds"]
        self.eval_seconds = state.get("eval_seconds", 0.0)
        self.checkpoint_seconds = state.get("checkpoint_seconds", 0.0)
        self.samples_seen, self.tokens_seen = state.get("samples_seen", 0), state.get("tokens_seen", 0)
        self.start_step, self._train_before = self.step, self.train_seconds
        if "segment" not in state:  # a checkpoint from before segments were counted
            self.wall_before = state.get("wall_seconds", 0.0)
            return
        # the segment that wrote this checkpoint ran on after it until it stopped (killed: its last metrics row;
        # ended cleanly: the checkpoint is its last act); that time was spent, though its steps are repeated
        rows = read_metrics(self.run_dir)
        ended = max([state["saved_at"], *(r["time"] for r in rows if isinstance(r.get("time"), (int, float)))])
        previous = state["segment"]
        self.segments = [*state["segments"], {
            "from_step": previous["from_step"], "to_step": max([self.step, *(r.get("step", 0) for r in rows)]),
            "wall_seconds": round(ended - previous["started"], 2),
            "train_seconds": round(self.train_seconds - previous["train_seconds_before"], 2)}]
        self.wall_before = sum(s["wall_seconds"] for s in self.segments)

    def _micro_batches(self):
        """Batches from the saved position onwards; the position advances as they are consumed."""
        from accelerate.utils import send_to_device

        while True:
            empty = True
            for batch in epoch_batches(self.train_dl, self.epoch, self.batch_in_epoch):
                empty = False
                self.batch_in_epoch += 1
                yield send_to_device(batch, self.accelerator.device, non_blocking=True)
            if empty and self.batch_in_epoch == 0:
                raise RuntimeError("the training data yielded no batch in a whole epoch")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # ------------------------------------------------------------ the loop

    def fit(self) -> dict:
        acc, tcfg = self.accelerator, self.tcfg
        status, error, exit_code = "completed", None, 0
        preemption = PreemptionFlag()
        try:
            with preemption:
                self._loop(preemption)
            self._on_run_end()
        except Diverged as err:
            status, error = "diverged", str(err)
            log.warning("diverged: %s", err)
            exit_code = 1 if tcfg.fail_on_divergence else 0
        except Preempted as err:
            status, error, exit_code = "preempted", f"{err} at step {self.step}", 128 + err.signum
            if not self._checkpoint():  # nothing to resume from: the preemption loses the steps since the last one
                status, error = "failed", f"{err} at step {self.step}, and its checkpoint could not be written"
        except BaseException as err:
            status, error, exit_code = "failed", f"{type(err).__name__}: {err}", 1
            self._write_summary(status, error)
            self.tracker.finish(exit_code=1)
            raise
        summary = self._write_summary(status, error)
        self.tracker.finish(exit_code=exit_code)
        if status == "preempted" and not preemption.hand_over(preemption.signum):
            self._requeue()
        summary["exit_code"] = exit_code
        return summary

    def _loop(self, preemption: PreemptionFlag) -> None:
        bar = self._progress_bar()
        if bar is None:
            return self._steps(preemption, None)
        from tqdm.contrib.logging import logging_redirect_tqdm

        # log lines reach train.log (a file handler) as always, and the console through the bar, above it
        with logging_redirect_tqdm():
            self._steps(preemption, bar)

    def _steps(self, preemption: PreemptionFlag, bar) -> None:
        acc, tcfg, task = self.accelerator, self.tcfg, self.task
        max_steps, log_every, eval_every, ckpt_every, check_every = (
            tcfg.max_steps, tcfg.log_every, tcfg.eval_every, tcfg.ckpt_every, tcfg.check_every)
        check_grad_norm = tcfg.mixed_precision != "fp16"  # fp16's loss scaler skips steps with non-finite gradients
        batches = self._micro_batches()
        window = _Window()
        self.model.train()
        while self.step < max_steps:
            tick = time.time()
            next_step = self.step + 1
            log_now = next_step % log_every == 0 or next_step == max_steps
            eval_now = next_step % eval_every == 0 or next_step == max_steps
            ckpt_now = next_step % ckpt_every == 0 or next_step == max_steps
            step_loss, step_metrics, stds = 0.0, {}, {}
            task.set_step(self.step, max_steps)
            for micro in range(self.grad_accum):
                batch = next(batches)
                sync = micro == self.grad_accum - 1
                record = record_input_std(self.raw_model) if log_now and micro == 0 else nullcontext({})
                with self._gradient_sync(sync), record as recorded:
                    loss, metrics = task.loss(self.model, batch)
                    acc.backward(loss / self.grad_accum)
                stds.update(recorded)
                step_loss = step_loss + loss.detach().float() / self.grad_accum
                for k, v in metrics.items():
                    value = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                    step_metrics[k] = step_metrics.get(k, 0.0) + value / self.grad_accum
                samples, tokens = task.count(batch)
                window.add_data(samples * acc.num_processes, None if tokens is None else tokens * acc.num_processes)
                self.samples_seen += samples * acc.num_processes
                self.tokens_seen += (tokens or 0) * acc.num_processes
            grad_norm = self._clip_gradients()
            finite = torch.isfinite(step_loss)
            if check_grad_norm:
                finite = finite & torch.isfinite(grad_norm)
            self.first_bad_step = torch.where(finite | (self.first_bad_step >= 0), self.first_bad_step,
                                              torch.full_like(self.first_bad_step, next_step))
            if log_now or eval_now or ckpt_now or next_step % check_every == 0:
                self._check(step_loss, grad_norm, preemption)
            lr = self._set_lr()
            stepped = self.optimizer if self.loss_scaled else self.torch_optimizer
            stepped.step()
            stepped.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            self.step += 1
            self.train_seconds += time.time() - tick
            window.add_step(step_loss, step_metrics, grad_norm, time.time() - tick)
            if log_now:
                self._log_train(window, lr, stds, bar)
                window = _Window()
            if eval_now:
                tick = time.time()
                self._evaluate(bar)
                self.eval_seconds += time.time() - tick
            if ckpt_now:
                tick = time.time()
                self._checkpoint()
                self.checkpoint_seconds += time.time() - tick
            if bar is not None:
                bar.update(1)
            if preemption.signum:
                raise Preempted(preemption.signum)
        if bar is not None:
            bar.close()

    def _gradient_sync(self, sync: bool):
        """Inner micro-steps of gradient accumulation skip the gradient reduction."""
        if self.sharded:
            self.model.set_requires_gradient_sync(sync)
            return nullcontext()
        return nullcontext() if sync else self.accelerator.no_sync(self.model)

    def _clip_gradients(self) -> torch.Tensor:
        """The total gradient norm (clipped to `clip_grad` when set), as a tensor on the device."""
        if self.sharded:  # sharded gradients: torch's clip reduces their norms across ranks into a DTensor
            norm = full_tensor(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip))
        elif self.loss_scaled:  # accelerate unscales the gradients first
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.clip)
        else:  # DDP's gradients are reduced by now
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        return norm.detach().float() if norm is not None else torch.full((), math.nan, device=self.accelerator.device)

    def _check(self, loss: torch.Tensor, grad_norm: torch.Tensor, preemption: PreemptionFlag) -> None:
        """Divergence (a non-finite loss, or grad norm outside fp16 loss scaling, at any step since the last
        check) and preemption, agreed on by every process; the one place the loop waits for the device."""
        flags = torch.stack([(self.first_bad_step >= 0).float(), torch.tensor(float(preemption.signum),
                                                                              device=self.first_bad_step.device)])
        flags = self.accelerator.reduce(flags, "sum") if self.accelerator.num_processes > 1 else flags
        bad, signalled = flags.tolist()
        if bad > 0:
            first = int(self.first_bad_step.item())
            where = f"at step {first}" if first >= 0 else "on another process"
            raise Diverged(f"non-finite loss or grad norm {where} (loss {float(loss):.4g}, "
                           f"grad norm {float(grad_norm):.4g})")
        if signalled > 0 and not preemption.signum:
            preemption.signum = int(signal.SIGTERM)

    def _set_lr(self) -> float:
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # layer-wise lr decay (trainer.optim.layer_decay)
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
        stats = torch.stack([torch.as_tensor(window.loss_sum, device=acc.device, dtype=torch.float64),
                             torch.tensor(float(window.steps), device=acc.device, dtype=torch.float64)])
        if acc.num_processes > 1:
            stats = acc.reduce(stats, "sum")
        metrics = {"train/loss": float(stats[0] / stats[1]), "lr": lr, "grad_norm": float(window.grad_norm),
                   "samples_per_s": window.samples / window.seconds, "epoch": self.epoch, **self._seen()}
        if window.tokens:
            metrics["tokens_per_s"] = window.tokens / window.seconds
        if self.task.flops_per_sample and self.peak_flops:
            achieved = self.task.flops_per_sample * metrics["samples_per_s"]
            metrics["mfu"] = achieved / (self.peak_flops * acc.num_processes)
        metrics.update({f"train/{k}": float(v) / window.steps for k, v in window.metrics.items()})
        if self.task.loss_is_nll:  # of the window's mean loss: a mean of per-step exp(loss) would be biased up
            metrics["train/ppl"] = math.exp(min(metrics["train/loss"], 700))
        metrics.update({f"alpha/{k}": v for k, v in alpha_values(self.raw_model).items()})
        metrics.update({f"input_std/{k}": v for k, v in stds.items()})
        if torch.cuda.is_available():
            metrics["memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.tracker.log(metrics, self.step)
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", lr=f"{lr:.2e}")
        if acc.is_main_process:  # with the bar too: train.log keeps every step line
            rate = f"{metrics['tokens_per_s']:.0f} tok/s" if window.tokens else f"{metrics['samples_per_s']:.1f} samples/s"
            log.info("step %d/%d  loss %.4f  lr %.2e  grad norm %.3g  %s", self.step, self.tcfg.max_steps,
                     metrics["train/loss"], lr, metrics["grad_norm"], rate)

    @torch.no_grad()
    def _evaluate(self, bar) -> None:
        """The task's metrics for the trained weights (`val/…`) and, with an EMA, for the averaged ones
        (`val_ema/…`): the official vision code evaluates and reports both."""
        metrics = self._evaluate_weights("val")
        if self.ema is not None:
            with self.ema.swapped_in():
                metrics.update(self._evaluate_weights("val_ema"))
        self.model.train()
        self.last_eval = metrics
        if self._better(metrics, self.best, self.task.headline.name):
            self.best = {**metrics, "step": self.step}
        if self.ema is not None and self._better(metrics, self.best_ema, self._ema_headline):
            self.best_ema = {**metrics, "step": self.step}
        self.tracker.log({**metrics, **self._seen()}, self.step)
        if self.accelerator.is_main_process:
            log.info("step %d  %s", self.step, "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _seen(self) -> dict:
        """Samples (and tokens, where the task counts them) trained on so far, over every process."""
        return {"samples_seen": self.samples_seen, **({"tokens_seen": self.tokens_seen} if self.tokens_seen else {})}

    @property
    def _ema_headline(self) -> str:
        return "val_ema/" + self.task.headline.name.split("/", 1)[1]

    def _better(self, metrics: dict, best: dict, name: str) -> bool:
        value, previous = metrics.get(name), best.get(name)
        if value is None or not math.isfinite(value):
            return False
        return previous is None or (value > previous if self.task.headline.higher_is_better else value < previous)

    def _evaluate_weights(self, prefix: str) -> dict[str, float]:
        acc = self.accelerator
        self.model.eval()
        limit = self.tcfg.max_eval_batches

        def batches():
            from accelerate.utils import send_to_device

            batch = None
            for i, batch in enumerate(self.val_dl):
                if limit is not None and i >= limit:
                    break
                batch = send_to_device(batch, acc.device, non_blocking=True)
                yield batch
            # a sharded forward is a collective: a process with fewer batches runs uncounted forwards on its last
            # one until every process has done as many, leaving the training RNG as it was
            with torch.random.fork_rng(devices=[acc.device] if acc.device.type == "cuda" else []):
                for _ in range(self.eval_padding):
                    self.task.loss(self.model, batch)

        def reduce(totals: dict) -> dict:
            if acc.num_processes == 1:
                return totals
            keys = sorted(set().union(*gather_object([sorted(totals)])))  # a process may have seen no batch
            stacked = torch.stack([torch.as_tensor(totals.get(k, 0.0), device=acc.device, dtype=torch.float64)
                                   for k in keys])
            return dict(zip(keys, acc.reduce(stacked, "sum")))

        return {f"{prefix}/{k}": v for k, v in self.task.evaluate(self.model, batches(), reduce).items()}

    def _eval_padding(self) -> int:
        """Under sharding, how many evaluation batches this process has fewer than the busiest one."""
        acc = self.accelerator
        if not self.sharded or acc.num_processes == 1:
            return 0
        mine = len(self.val_dl) if self.tcfg.max_eval_batches is None else min(len(self.val_dl), self.tcfg.max_eval_batches)
        if mine == 0:
            raise ValueError(f"the validation set has fewer samples than the {acc.num_processes} processes: a sharded "
                             "evaluation needs at least one sample on each")
        most = torch.tensor(mine, device=acc.device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        return int(most) - mine

    def _on_run_end(self) -> None:
        """The task's artifacts (sample grids, …), made on the main process from the EMA weights where there
        are some, else the trained ones. A sharded model is gathered into an unsharded copy first (only for
        tasks that make artifacts)."""
        if type(self.task).on_run_end is Task.on_run_end:
            return
        with self.ema.swapped_in() if self.ema is not None else nullcontext():
            if self.sharded:
                weights = full_state_dict(self.model)  # every rank takes part
            elif self.accelerator.is_main_process:
                self.task.on_run_end(self.accelerator.unwrap_model(self.model).eval(), self.run_dir, self.tracker)
        if self.sharded and self.accelerator.is_main_process:
            from .run import build_model

            model, _ = build_model(self.cfg, self.task)  # real, for its non-persistent buffers
            model.load_state_dict(weights)
            self.task.on_run_end(model.to(self.accelerator.device).eval(), self.run_dir, self.tracker)

    def _checkpoint(self) -> bool:
        """Write a checkpoint; True if it was. One that fails (a full disk) leaves the earlier ones as they were
        and the run goes on: the next interval tries again, and a resume starts from the last good one."""
        data_state = self.train_dl.state_dict() if self.streamed else None
        try:
            save_checkpoint(self.accelerator, self.ckpt_root, self.step, self._state(), self.tcfg.keep_last,
                            model=self.model, optimizer=self.optimizer, ema=self.ema, sharded=self.sharded,
                            data_state=data_state)
        except CheckpointWriteError as err:
            log.warning("%s; the earlier checkpoints are kept and training goes on (the next interval retries)", err)
            self.failed_checkpoints += 1
            return False
        return True

    def _requeue(self) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if job and self.tcfg.requeue_on_preempt and self.accelerator.is_main_process:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            log.info("scontrol requeue %s: %s", job, (result.stdout + result.stderr).strip() or "ok")

    def _write_summary(self, status: str, error: str | None) -> dict:
        """summary.json and the trackers' run summaries. Wall and train seconds add up over every segment of the
        run (`segments`: each start of the same command, killed or not)."""
        headline = self.task.headline
        final = self.last_eval.get(headline.name)
        segment = {"from_step": self.start_step, "to_step": self.step,
                   "wall_seconds": round(time.time() - self.started, 2),
                   "train_seconds": round(self.train_seconds - self._train_before, 2)}
        segments = [*self.segments, segment]
        summary = {
            **self.run_info, "status": status, "error": error, "steps": self.step,
            "max_steps": self.tcfg.max_steps, "wall_seconds": round(self.wall_before + segment["wall_seconds"], 2),
            "train_seconds": round(self.train_seconds, 2), "eval_seconds": round(self.eval_seconds, 3),
            "checkpoint_seconds": round(self.checkpoint_seconds, 3), "failed_checkpoints": self.failed_checkpoints,
            "segments": segments, **self._seen(),
            "final": self.last_eval, "best": self.best,
            "headline": {"name": headline.name, "value": final, "best": self.best.get(headline.name),
                         "higher_is_better": headline.higher_is_better},
        }
        if self.ema is not None:  # the official vision code reports the best of each
            summary["best_ema"] = self.best_ema
            summary["headline"].update(ema_value=self.last_eval.get(self._ema_headline),
                                       ema_best=self.best_ema.get(self._ema_headline))
        if self.accelerator.is_main_process:
            write_json(self.run_dir / "summary.json", summary)
            self.tracker.summary({
                "status": status, "steps": self.step, "headline": final, "headline_best": self.best.get(headline.name),
                "headline_name": headline.name, "headline_higher_is_better": headline.higher_is_better,
                "params": self.run_info.get("params"),
                "wall_seconds": summary["wall_seconds"], "train_seconds": summary["train_seconds"],
                "segments": len(segments)})  # samples / tokens seen: their maxima, by define_metric
        return summary


class _Window:
    """Sums over the steps between two log lines."""

    def __init__(self):
        self.steps, self.loss_sum, self.seconds, self.samples, self.tokens = 0, 0.0, 0.0, 0, 0
        self.grad_norm, self.metrics = float("nan"), {}  # tensors on the device once steps are added

    def add_data(self, samples: int, tokens: int | None) -> None:
        self.samples += samples
        self.tokens += tokens or 0

    def add_step(self, loss, metrics: dict, grad_norm, seconds: float) -> None:
        self.steps += 1
        self.loss_sum += loss
        self.grad_norm, self.seconds = grad_norm, self.seconds + seconds
        for k, v in metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v
