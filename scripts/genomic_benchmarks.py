"""The paper's Table 6 protocol: fine-tune a pretrained HyenaDNA or Caduceus run on the 8 GenomicBenchmarks
datasets, 5 split seeds each, 10 epochs, and report the average test accuracy.

    python scripts/genomic_benchmarks.py outputs/hyenadna/<pretraining run> --root ~/.genomic_benchmarks
    python scripts/genomic_benchmarks.py RUN --root DIR --seeds 5 --epochs 10 --datasets human_nontata_promoters \\
        --lr 6e-4 --batch-size 128 --rc-aug false --out results/gb -- trainer.num_workers=4

The protocol is the one the DyT paper's DNA code runs (jiachenzhu/DyT other_tasks/DNA/README.md →
kuleshov-group/caduceus slurm_scripts/wrapper_run_genomics.sh and run_genomics_benchmark.sh):

- datasets: the 8 of the wrapper's loop, read from `--root` in the published genomic-benchmarks layout
  (<dataset>/train/<class>/*.txt, <dataset>/test/<class>/*.txt), each cropped to its max_length of
  configs/dataset/genomic_benchmark.yaml;
- split seeds 1 … 5: each holds out 10 % of train/ as validation (`dataset.train_val_split_seed`, torch's
  random_split in src/dataloaders/genomics.py); the training seed stays 2222 for all (train.seed);
- 10 epochs (`trainer.max_epochs=10`), validated every epoch; the test accuracy reported for a run is the one
  at its best validation accuracy (the checkpoint callback keeps the best `val/accuracy`, then `trainer.validate`
  runs the test set on it: train.py, `cross_validation: true`);
- the wrapper's grid per model (learning rates × batch sizes 128, 256 × reverse-complement augmentation); for
  each dataset the setting with the highest mean validation accuracy over the seeds is reported, as the test
  accuracy's mean ± std over the seeds (sample std). The selection rule is this script's (the official code
  stops at the runs); every setting's numbers are kept in the JSON.

Each run is `python train.py experiment=<task>_genomic_benchmarks init_from=RUN_DIR …` with the pretraining
run's model (`task.size`, `task.model`, `task.embedding_scale`) and norm; a run folder that already holds a
completed summary is not run again. Overrides after `--` go to every run (and replace the script's own).
Results: <out>/genomic_benchmarks.json and .md (default out: RUN_DIR/genomic_benchmarks).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the wrapper's loop (kuleshov-group/caduceus slurm_scripts/wrapper_run_genomics.sh) and each dataset's
# max_length (configs/dataset/genomic_benchmark.yaml)
MAX_LENGTH = {
    "dummy_mouse_enhancers_ensembl": 1024,
    "demo_coding_vs_intergenomic_seqs": 200,
    "demo_human_or_worm": 200,
    "human_enhancers_cohn": 500,
    "human_enhancers_ensembl": 512,
    "human_ensembl_regulatory": 512,
    "human_nontata_promoters": 251,
    "human_ocr_ensembl": 512,
}
DATASETS = tuple(MAX_LENGTH)
# the wrapper's grids: learning rates, batch sizes, RC augmentation of the training sequences
GRIDS = {
    ("hyenadna", None): {"lr": [6e-4], "batch_size": [128, 256], "rc_aug": [False, True]},  # "Hyena"
    ("caduceus", "ps"): {"lr": [1e-3, 2e-3], "batch_size": [128, 256], "rc_aug": [False]},  # "Caduceus Parameter Sharing"
    # "Caduceus Post-Hoc": RC_AUG false, but CONJOIN_TEST=true makes GenomicBenchmarkDataset flip training
    # sequences at random (`self.conjoin_test and self.split == "train"`), which is RC augmentation
    ("caduceus", "ph"): {"lr": [1e-3, 2e-3], "batch_size": [128, 256], "rc_aug": [True]},
    ("caduceus", "none"): {"lr": [2e-3], "batch_size": [128, 256], "rc_aug": [True]},  # "Caduceus NO POST HOC"
}
EPOCHS, SEEDS = 10, 5  # trainer.max_epochs=10; `for seed in $(seq 1 5)`
WARMUP_FRACTION = 0.01  # genomic_benchmark.yaml scheduler.warmup_t = 1 % of t_initial
PAPER = {"hyenadna": {"layernorm": 85.2, "dyt": 85.2}, "caduceus": {"rmsnorm": 86.9, "dyt": 86.9}}  # Table 6


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def hydra_value(value) -> str:
    """A config value as a Hydra command-line override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    return text if re.fullmatch(r"[\w.\-/]+", text) else "'" + text.replace("'", "\\'") + "'"


def bool_arg(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"{text!r}: use true or false")
    return text.lower() == "true"


def read_run(run_dir: Path) -> dict:
    """The pretraining run's config.yaml as a dict, after checking it has a complete checkpoint."""
    from omegaconf import OmegaConf

    from dyt.train.checkpoint import latest_checkpoint

    config = run_dir / "config.yaml"
    if not config.exists():
        fail(f"{run_dir} has no config.yaml; pass a pretraining run folder (outputs/<task>/<run>)")
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
    name = cfg.get("task", {}).get("name")
    if name not in ("hyenadna", "caduceus"):
        fail(f"{run_dir} is a {name} run; this protocol fine-tunes hyenadna or caduceus runs")
    if latest_checkpoint(run_dir / "checkpoints") is None:
        fail(f"{run_dir} holds no complete checkpoint (checkpoints/step_*/COMPLETE) to fine-tune from")
    return cfg


def run_overrides(cfg: dict, run_dir: Path) -> list[str]:
    """What a fine-tuning run takes from the pretraining run: its model, its norm, its weights."""
    task, norm = cfg["task"], cfg["norm"]
    overrides = [f"experiment={task['name']}_genomic_benchmarks", f"init_from={hydra_value(run_dir.resolve())}",
                 f"task.size={hydra_value(task['size'])}",
                 f"task.embedding_scale={hydra_value(bool(task.get('embedding_scale')))}",
                 f"norm={norm['type']}"]
    overrides += [f"++task.model.{k}={hydra_value(v)}" for k, v in (task.get("model") or {}).items()]
    overrides += [f"norm.{k}={hydra_value(v)}" for k, v in norm.items() if k != "type" and v is not None]
    return overrides


def count_train(dataset: Path) -> int:
    return sum(1 for folder in (dataset / "train").iterdir() if folder.is_dir() for _ in folder.glob("*.txt"))


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge(*groups: list[str]) -> list[str]:
    """Overrides in order, a later one replacing an earlier one of the same key."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged.pop(key_of(override), None)
            merged[key_of(override)] = override
    return list(merged.values())


def setting_name(setting: dict) -> str:
    return f"lr-{setting['lr']:g}_bs-{setting['batch_size']}_rc-{str(setting['rc_aug']).lower()}"


def schedule(dataset: Path, batch: int, epochs: int) -> dict:
    """Steps of one run: `epochs` epochs of the 90 % kept for training, evaluated every epoch, and the official
    warm-up, 1 % of t_initial = ceil(train_len / batch) × epochs with train_len the whole train/."""
    from tasks.data.genome import hold_out_indices

    full = count_train(dataset)
    kept = len(hold_out_indices(full, seed=0)[0])  # the sizes are the same for every seed
    per_epoch = kept // batch
    if per_epoch == 0:
        fail(f"{dataset} keeps {kept} training sequences after the 10 % hold-out, fewer than one batch of {batch}")
    return {"max_steps": epochs * per_epoch, "eval_every": per_epoch,
            "warmup": math.ceil(WARMUP_FRACTION * math.ceil(full / batch) * epochs)}


def finetune(base: list[str], extra: list[str], dataset: Path, setting: dict, seed: int, steps: dict,
             run_dir: Path) -> dict:
    """One run (or its summary, if it already completed): the best validation accuracy and the test
    accuracy at that evaluation."""
    summary_path = run_dir / "summary.json"
    done = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if done.get("status") != "completed":
        batch = setting["batch_size"]
        own = [f"task.data.root={hydra_value(dataset.resolve())}",
               f"task.data.max_len={hydra_value(MAX_LENGTH.get(dataset.name))}",
               f"task.data.split_seed={seed}", f"task.data.rc_prob={0.5 if setting['rc_aug'] else 0.0}",
               f"trainer.optim.lr={setting['lr']!r}", f"trainer.batch_size={batch}",
               f"trainer.global_batch_size={batch}", f"trainer.max_steps={steps['max_steps']}",
               f"trainer.eval_every={steps['eval_every']}", f"trainer.ckpt_every={steps['max_steps']}",
               f"trainer.optim.warmup_steps={steps['warmup']}", f"group=genomic_benchmarks-{dataset.name}",
               f"hydra.run.dir={hydra_value(run_dir)}"]
        command = [sys.executable, str(ROOT / "train.py"), *merge(base, own, extra)]
        print(f"→ {dataset.name} {setting_name(setting)} seed {seed}: {steps['max_steps']} steps", flush=True)
        result = subprocess.run(command, cwd=ROOT)
        done = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if result.returncode != 0 or done.get("status") != "completed":
            return {"seed": seed, "status": done.get("status", f"exit code {result.returncode}"), "run_dir": str(run_dir)}
    best = done.get("best") or {}
    return {"seed": seed, "status": "completed", "val_acc": best.get("val/acc"), "test_acc": best.get("val/test_acc"),
            "best_step": best.get("step"), "run_dir": str(run_dir)}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict, task: str, norm: str, args) -> dict:
    datasets = {}
    for name, settings in results.items():
        for setting in settings:
            runs = setting["runs"]
            complete = all(r["status"] == "completed" and r.get("test_acc") is not None for r in runs)
            setting["val_acc_mean"], _ = mean_std([r["val_acc"] for r in runs if r.get("val_acc") is not None])
            setting["test_acc_mean"], setting["test_acc_std"] = mean_std(
                [r["test_acc"] for r in runs if r.get("test_acc") is not None])
            setting["complete"] = complete
        candidates = [s for s in settings if s["complete"]]
        chosen = max(candidates, key=lambda s: s["val_acc_mean"]) if candidates else None
        datasets[name] = {
            "selected": {k: chosen[k] for k in ("lr", "batch_size", "rc_aug")} if chosen else None,
            "test_acc_mean": chosen["test_acc_mean"] if chosen else None,
            "test_acc_std": chosen["test_acc_std"] if chosen else None,
            "val_acc_mean": chosen["val_acc_mean"] if chosen else None,
            "settings": settings,
        }
    chosen_means = [d["test_acc_mean"] for d in datasets.values()]
    average = 100 * statistics.fmean(chosen_means) if chosen_means and None not in chosen_means else None
    return {"run_dir": str(args.run_dir), "task": task, "norm": norm, "root": str(args.root), "seeds": args.seeds,
            "epochs": args.epochs, "selection": "highest mean validation accuracy over the seeds",
            "average_accuracy": average, "paper_table6": PAPER[task], "datasets": datasets}


def markdown(report: dict) -> str:
    lines = [f"# GenomicBenchmarks: {report['task']}, {report['norm']}",
             "", f"Pretraining run `{report['run_dir']}`; {report['seeds']} split seeds, {report['epochs']} epochs; "
             "test accuracy at the best validation accuracy, mean ± std over the seeds, for the setting with the "
             "highest mean validation accuracy.", "",
             "| dataset | lr | batch | RC aug | val acc (%) | test acc (%) |", "|---|---|---|---|---|---|"]
    for name, d in report["datasets"].items():
        if d["selected"] is None:
            lines.append(f"| {name} | – | – | – | – | incomplete |")
            continue
        s = d["selected"]
        lines.append(f"| {name} | {s['lr']:g} | {s['batch_size']} | {str(s['rc_aug']).lower()} | "
                     f"{100 * d['val_acc_mean']:.1f} | {100 * d['test_acc_mean']:.1f} ± {100 * d['test_acc_std']:.1f} |")
    average = report["average_accuracy"]
    paper = ", ".join(f"{k} {v}" for k, v in report["paper_table6"].items())
    lines += ["", f"**Average accuracy: {'incomplete' if average is None else f'{average:.1f}'}** "
                  f"(paper's Table 6: {paper}).", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a pretraining run folder (outputs/hyenadna/… or outputs/caduceus/…)")
    parser.add_argument("--root", type=Path, required=True, help="the GenomicBenchmarks folder: <root>/<dataset>/{train,test}")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="split seeds 1 … N (default 5)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per run (default 10)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="default: the 8 of the paper")
    parser.add_argument("--lr", type=float, nargs="+", help="learning rates (default: the official grid)")
    parser.add_argument("--batch-size", type=int, nargs="+", help="batch sizes (default: 128 256)")
    parser.add_argument("--rc-aug", type=bool_arg, nargs="+", help="reverse-complement augmentation: true / false")
    parser.add_argument("--out", type=Path, help="results folder (default: RUN_DIR/genomic_benchmarks)")
    parser.epilog = "After --: train.py overrides for every run (e.g. -- trainer.num_workers=4 logger=none)."
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]

    missing = [name for name in args.datasets
               if not ((args.root / name / "train").is_dir() and (args.root / name / "test").is_dir())]
    if missing:
        fail(f"--root {args.root} has no dataset {missing[0]} with train/ and test/ (published layout: "
             f"<dataset>/train/<class>/*.txt, <dataset>/test/<class>/*.txt){f'; {len(missing) - 1} more missing' if len(missing) > 1 else ''}")
    cfg = read_run(args.run_dir)
    task = cfg["task"]["name"]
    grid = dict(GRIDS[(task, (cfg["task"].get("model") or {}).get("rc", "ps") if task == "caduceus" else None)])
    for key in ("lr", "batch_size", "rc_aug"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    settings = [dict(zip(("lr", "batch_size", "rc_aug"), values))
                for values in product(grid["lr"], grid["batch_size"], grid["rc_aug"])]
    out = args.out or args.run_dir / "genomic_benchmarks"
    base = run_overrides(cfg, args.run_dir)

    steps = {(name, batch): schedule(args.root / name, batch, args.epochs)  # every size checked before any run
             for name in args.datasets for batch in grid["batch_size"]}
    results: dict[str, list[dict]] = {}
    for name in args.datasets:
        results[name] = []
        for setting in settings:
            runs = [finetune(base, args.overrides, args.root / name, setting, seed, steps[name, setting["batch_size"]],
                             out / "runs" / name / setting_name(setting) / f"seed-{seed}")
                    for seed in range(1, args.seeds + 1)]
            results[name].append({**setting, "runs": runs})

    pretrain_summary = args.run_dir / "summary.json"  # the norm as the run logged it (dyt-a0.5, layernorm, …)
    norm = json.loads(pretrain_summary.read_text()).get("norm") if pretrain_summary.exists() else None
    report = summarise(results, task, norm or cfg["norm"]["type"], args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "genomic_benchmarks.json").write_text(json.dumps(report, indent=1))
    (out / "genomic_benchmarks.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written: {out / 'genomic_benchmarks.json'}, {out / 'genomic_benchmarks.md'}")
    if report["average_accuracy"] is None:
        sys.exit(1)
    return report


if __name__ == "__main__":
    main()
