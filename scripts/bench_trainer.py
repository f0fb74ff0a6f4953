"""The trainer's and the data pipeline's cost, per task: the time per optimizer step of each task's CPU default

    (a) bare     a bare PyTorch loop — forward and loss (the task's), backward, clipping, the optimizer step —
                 over batches made before the clock starts, on the same model and optimizer the trainer builds;
    (b) data     the same loop drawing its batches from the task's training loader as the trainer makes it;
    (c) trainer  `dyt.train.run.train`, the code path of `train.py`: with evaluation and checkpoints only at the
                 end (`off`), and at the task's default cadence (`default`, their cost spread over the steps),

printed as ratios to (a) and written to results/trainer/. Measured side by side: every round runs each variant
once, each keeps its fastest round. Each variant times the same steps: `--windows` (3) × the task's `log_every`.
The trainer is timed by its own clock inside one run: the metrics rows' timestamps over its log windows after
the first (warmed up, one log line each, no evaluation or checkpoint), and the evaluation and checkpoint seconds
its summary.json counts, spread over the task's `eval_every` and `ckpt_every` for the default cadence.
Re-running some tasks replaces their rows in the table and keeps the others'. The process keeps freed memory
as the trainer's does (`dyt.train.hardware.keep_freed_host_memory`), for every variant.

    python scripts/bench_trainer.py                              # every task, this machine's threads
    python scripts/bench_trainer.py --tasks vit llama --threads 1 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS = ("vit", "convnext", "resnet", "llama", "dit", "wav2vec2", "hyenadna", "caduceus", "mae", "dino")


def compose(task: str, *overrides: str, run_dir: str = "unused"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import dyt.train  # noqa: F401 — schemas and resolvers

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train", overrides=[f"task={task}", "logger=none", "trainer.progress=log", *overrides,
                                                 f"run_dir={run_dir}"])


class Loop:
    """The trainer's model, optimizer and loader, stepped by a bare loop."""

    def __init__(self, cfg):
        from dyt.train.data import epoch_batches, train_loader
        from dyt.train.run import build
        from dyt.train.trainer import build_optimizer

        self.task, self.model, _ = build(cfg)
        train_set, _ = self.task.build_data()
        tcfg = cfg.trainer
        self.optimizer = build_optimizer(self.model, tcfg.optim, self.task, torch.device("cpu"))
        self.clip = tcfg.optim.clip_grad or math.inf
        self.loader = train_loader(train_set, tcfg.batch_size, seed=cfg.seed, rank=0, world=1,
                                   collate_fn=self.task.collate_fn, num_workers=tcfg.num_workers)
        self.batches = self._batches(epoch_batches)
        self.model.train()

    def _batches(self, epoch_batches):
        epoch = 0
        while True:
            yield from epoch_batches(self.loader, epoch, 0)
            epoch += 1

    def step(self, batch) -> None:
        loss, _ = self.task.loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def bare(self, batches: list) -> float:
        start = time.perf_counter()
        for batch in batches:
            self.step(batch)
        return (time.perf_counter() - start) / len(batches)

    def with_data(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step(next(self.batches))
        return (time.perf_counter() - start) / steps


def trainer_run(task: str, every: int, windows: int, overrides: list[str]) -> dict:
    """One run of (windows + 2) × `every` steps through `dyt.train.run.train`, logging every `every` steps (the
    task's own log cadence) with one evaluation and checkpoint at step (windows + 1) × `every` and the final ones
    at the end. Its own clock gives: the step time over steps every + 1 … (windows + 1) × every (warmed up, one
    log line per window, no evaluation or checkpoint: the metrics rows' timestamps) and the mean evaluation and
    checkpoint (summary.json)."""
    from dyt.train.results import read_metrics
    from dyt.train.run import train

    first, last = every, (windows + 1) * every
    with tempfile.TemporaryDirectory() as folder:
        cfg = compose(task, f"trainer.max_steps={last + every}", f"trainer.log_every={every}",
                      f"trainer.eval_every={last}", f"trainer.ckpt_every={last}", *overrides, run_dir=folder)
        summary = train(cfg)
        rows = read_metrics(Path(folder))
    if summary["status"] != "completed":
        raise RuntimeError(f"{task}: the trainer's run ended {summary['status']}: {summary.get('error')}")
    logged = {r["step"]: r["time"] for r in rows if "train/loss" in r}
    return {"step": (logged[last] - logged[first]) / (last - first),
            "eval": summary["eval_seconds"] / 2, "ckpt": summary["checkpoint_seconds"] / 2}


def bench_task(task: str, windows: int, rounds: int, overrides: list[str]) -> dict:
    cfg = compose(task, *overrides)
    tcfg = cfg.trainer
    steps = windows * tcfg.log_every
    loop = Loop(cfg)
    premade = [next(loop.batches) for _ in range(steps)]
    loop.bare(premade[:2])  # warm-up: first calls build kernels and caches
    best = {"bare": math.inf, "data": math.inf, "trainer_off": math.inf, "eval": math.inf, "ckpt": math.inf}
    for _ in range(rounds):
        best["bare"] = min(best["bare"], loop.bare(premade))
        best["data"] = min(best["data"], loop.with_data(steps))
        run = trainer_run(task, tcfg.log_every, windows, overrides)
        best["trainer_off"] = min(best["trainer_off"], run["step"])
        best["eval"], best["ckpt"] = min(best["eval"], run["eval"]), min(best["ckpt"], run["ckpt"])
    # evaluation and checkpoints at the default cadence, each one's cost spread over the steps between them
    spread = best["eval"] / tcfg.eval_every + best["ckpt"] / tcfg.ckpt_every
    result = {"task": task, "steps": steps, "rounds": rounds, "batch_size": tcfg.batch_size,
              "num_workers": tcfg.num_workers, "log_every": tcfg.log_every, "eval_every": tcfg.eval_every,
              "ckpt_every": tcfg.ckpt_every,
              "seconds": {"bare": best["bare"], "data": best["data"], "trainer_off": best["trainer_off"],
                          "trainer_default": best["trainer_off"] + spread},
              "eval_seconds": best["eval"], "ckpt_seconds": best["ckpt"]}
    result["ratios"] = {k: v / best["bare"] for k, v in result["seconds"].items()}
    return result


def table(results: list[dict], threads: int) -> str:
    lines = [f"Time per optimizer step of each task's CPU default, {threads} thread(s), as a multiple of a bare loop "
             "over pre-made batches (`python scripts/bench_trainer.py`):", "",
             "| task | bare loop (ms) | + data pipeline | trainer, eval/ckpt off | trainer, default cadence | "
             "trainer off ÷ data |",
             "|---|---|---|---|---|---|"]
    for r in results:
        s, q = r["seconds"], r["ratios"]
        lines.append(f"| {r['task']} | {1000 * s['bare']:.1f} | {q['data']:.3f} | {q['trainer_off']:.3f} | "
                     f"{q['trainer_default']:.3f} | {s['trainer_off'] / s['data']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--windows", type=int, default=3,
                        help="log windows (the task's log_every steps each) per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "trainer")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every task (e.g. task.size=debug)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    from dyt.train.hardware import keep_freed_host_memory

    # the trainer's process setting (train() applies it), for every variant alike: without it whether steps
    # page-fault their activations depends on what the process ran before, 25% of a ResNet step
    keep_freed_host_memory()

    logging.getLogger("dyt.train").setLevel(logging.WARNING)
    results = []
    for task in args.tasks:
        results.append(bench_task(task, args.windows, args.rounds, args.overrides))
        print(json.dumps({k: results[-1][k] for k in ("task", "ratios")}), flush=True)
    threads = torch.get_num_threads()
    record = args.out / f"trainer_{threads}threads.json"
    kept = {r["task"]: r for r in json.loads(record.read_text())} if record.exists() else {}
    kept.update({r["task"]: r for r in results})
    results = [kept[task] for task in TASKS if task in kept]
    text = table(results, threads)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(results, indent=1))
    (args.out / f"trainer_{threads}threads.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
