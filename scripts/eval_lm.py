"""Zero-shot accuracy of a LLaMA run with lm-evaluation-harness (`lm-eval`): Table 4's second number.

    python scripts/eval_lm.py RUN_DIR                                   # the held-out cloze: chance 25%
    python scripts/eval_lm.py RUN_DIR --tasks paper15 --data-dir /data/lm_eval   # the paper's 15 tasks
    python scripts/eval_lm.py RUN_DIR --tasks arc_easy,piqa --limit 200          # some, quickly
    python scripts/eval_lm.py RUN_DIR --tasks my_task --include-path my_tasks/   # task YAMLs of your own

The model is the run's (RMSNorm or DyT, the √d embedding scale included) from its latest checkpoint or
--checkpoint, in either format the trainer writes, with the run's own tokenizer, wrapped in the harness's HFLM;
every task is zero-shot and scored as the harness scores it (acc, acc_norm, ReCoRD's em / f1, with standard
errors). The mean is over the selection, one number per task: its accuracy (ReCoRD: exact match), and also
acc_norm where a task has it (`mean_acc_norm`). Writes RUN_DIR/eval/lm_eval.json (the harness's results, per
selection), adds the means to RUN_DIR/summary.json under `lm_eval`, and logs them to the run's metrics.jsonl
and wandb run; scripts/compare.py shows them beside the loss.

Selections: `cloze` (default): a cloze over sentences of the run's validation text, which it never trained
on (tasks/data/cloze.py), built from the run's own corpus and cached, chance 25%. `paper15`: anli_r1, anli_r2,
anli_r3, arc_challenge, arc_easy, boolq, hellaswag, openbookqa, piqa, record, rte, truthfulqa_mc1,
truthfulqa_mc2, wic, winogrande (the OpenLLaMA selection the paper uses; tasks/lm_eval.py PAPER15). Or harness
task names, comma-separated.

Offline by design: nothing downloads. --data-dir DIR holds a copy of each dataset's hub repository at
DIR/<the dataset path the harness names> (DIR/allenai/ai2_arc, DIR/aps/super_glue, DIR/Rowan/hellaswag, …),
made once on a machine online, e.g. `hf download --repo-type dataset allenai/ai2_arc --local-dir
DIR/allenai/ai2_arc`. Without --data-dir the datasets come from the local datasets / hub cache (HF_HOME). Every
dataset is loaded before the model: a missing one stops the script with one line naming the task and where it
was looked for.

Several GPUs (7B and up): the harness's data-parallel path. Each process holds a whole copy of the model and
scores its share of the requests; the harness loads the model itself, so it is handed the run's transformers
export (a model object cannot be split among processes):

    python scripts/export_checkpoint.py RUN_DIR              # RUN_DIR/export/hf, once per checkpoint
    accelerate launch --num_processes 8 scripts/eval_lm.py RUN_DIR --tasks paper15 --data-dir DIR --dtype bfloat16

A model too large for one GPU (70B in bf16 is 140 GB): one process with --parallelize, and the harness spreads
its layers over the visible GPUs (transformers' device_map=auto). The harness's own command line does the same
with the export (`accelerate launch -m lm_eval --model hf --model_args
pretrained=RUN_DIR/export/hf,trust_remote_code=True,dtype=bfloat16 --tasks ...`), without the local datasets,
summary and tracker of this script.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def fail(message: str):
    raise SystemExit(f"error: {message}")


def load_run(run_dir: Path, checkpoint: Path | None):
    """(resolved config, checkpoint folder) of a run folder that train.py wrote."""
    from omegaconf import OmegaConf

    import dyt.train  # noqa: F401 — schemas and resolvers
    from dyt.train.checkpoint import latest_checkpoint

    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        fail(f"{run_dir} has no config.yaml; give a run folder that train.py wrote")
    cfg = OmegaConf.load(config_file)
    if cfg.task.name != "llama":
        fail(f"{run_dir} is a {cfg.task.name} run; scripts/eval_lm.py evaluates LLaMA runs")
    return cfg, checkpoint or latest_checkpoint(run_dir / "checkpoints")


def load_model(cfg, task, checkpoint: Path, device: str, dtype: str):
    """The run's model as it trained (norm, embedding scale), built on `device`, with the checkpoint's weights."""
    import torch

    from dyt.train.checkpoint import model_weights
    from dyt.train.run import build_model

    cfg.init_from = None  # the checkpoint's weights replace any start the run took them from
    with torch.device(device):  # real, for the non-persistent buffers (rotary frequencies) the weights lack
        model, _ = build_model(cfg, task)
    weights = model_weights(checkpoint)
    own = model.state_dict()  # a scalar saved 0-dim before FSDP2 needed it 1-element still fits
    model.load_state_dict({k: v.reshape(own[k].shape) if k in own and v.numel() == own[k].numel() == 1 else v
                           for k, v in weights.items()})
    return model.to(getattr(torch, dtype)).eval()


def exported_folder(run_dir: Path, checkpoint: Path) -> Path:
    """RUN_DIR/export/hf when it was exported from `checkpoint` (scripts/export_checkpoint.py)."""
    from safetensors import safe_open

    weights, folder = run_dir / "export" / "model.safetensors", run_dir / "export" / "hf"
    made_from = None
    if weights.exists() and folder.is_dir():
        with safe_open(str(weights), "pt") as exported:
            made_from = (exported.metadata() or {}).get("checkpoint")
    if made_from != checkpoint.name:
        fail(f"the harness's data- and model-parallel modes load the model from a transformers folder: run "
             f"`python scripts/export_checkpoint.py {run_dir} --checkpoint {checkpoint}` first"
             + (f" (RUN_DIR/export is of {made_from})" if made_from else ""))
    return folder


def write_results(run_dir: Path, label: str, checkpoint: Path, results: dict, summary: dict, args) -> dict:
    """eval/lm_eval.json (the harness's results, per selection), summary.json's `lm_eval`, the tracker."""
    from omegaconf import OmegaConf

    from dyt.train.tracking import Tracker
    from tasks.lm_eval import flat_metrics

    step = int(checkpoint.name.rsplit("_", 1)[-1]) if checkpoint.name.rsplit("_", 1)[-1].isdigit() else None
    record = {"checkpoint": checkpoint.name, "step": step, "limit": args.limit, "tasks": list(summary["tasks"]),
              "mean_acc": summary["mean_acc"], "mean_acc_norm": summary["mean_acc_norm"],
              "acc": {name: m.get(summary["mean_metric"][name]) for name, m in summary["tasks"].items()},
              "chance": summary["chance"], "file": "eval/lm_eval.json"}
    out = run_dir / "eval" / "lm_eval.json"
    out.parent.mkdir(exist_ok=True)
    everything = json.loads(out.read_text()) if out.exists() else {}
    harness = {k: v for k, v in results.items() if k not in ("samples",)}
    everything[label] = {**record, "summary": summary, "harness": harness}
    out.write_text(json.dumps(everything, indent=2, default=str) + "\n")

    summary_file = run_dir / "summary.json"
    run_summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    run_summary.setdefault("lm_eval", {})[label] = record
    summary_file.write_text(json.dumps(run_summary, indent=2, default=str) + "\n")

    # the run's tracker: a metrics.jsonl row at the checkpoint's step and, for a wandb run, its summary (resumed
    # by the id in the run folder; wandb keeps history steps increasing, so the summary carries the numbers)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    metrics = {f"val/{k}": v for k, v in flat_metrics(summary, label).items()}
    tracker = Tracker(run_dir, cfg.logger, config=OmegaConf.to_container(cfg, resolve=True),
                      name=f"{run_summary.get('norm', cfg.norm.type)}-s{cfg.seed}", group=cfg.get("group"),
                      tags=[cfg.task.name, cfg.norm.type], resume_step=None)
    tracker.log(metrics, step if step is not None else 0)
    tracker.summary(metrics)
    tracker.finish()
    return record


def print_table(label: str, summary: dict) -> None:
    print(f"\n{label}: zero-shot, lm-evaluation-harness")
    print(f"{'task':<22}{'acc':>8}{'± se':>8}{'acc_norm':>10}{'chance':>8}")
    for name, m in summary["tasks"].items():
        metric = summary["mean_metric"][name]
        norm = f"{m['acc_norm']:.4f}" if "acc_norm" in m else "–"
        chance = f"{summary['chance'][name]:.2f}" if name in summary["chance"] else "–"
        print(f"{name:<22}{m[metric]:>8.4f}{m.get(metric + '_stderr', float('nan')):>8.4f}{norm:>10}{chance:>8}"
              + ("  (em)" if metric != "acc" else ""))
    print(f"{'mean':<22}{summary['mean_acc']:>8.4f}{'':>8}{summary['mean_acc_norm']:>10.4f}")


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tasks", default="cloze", help="cloze (default) | paper15 | harness task names a,b,c")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder (default: the run's latest)")
    parser.add_argument("--data-dir", help="local copies of the harness's datasets: DIR/<dataset path>")
    parser.add_argument("--include-path", help="a folder of task YAMLs in the harness's format")
    parser.add_argument("--limit", type=int, help="documents per task (a quick look; the mean is then partial)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", help="default: cuda when there is one, else cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--parallelize", action="store_true",
                        help="one process, the model spread over the visible GPUs (needs the run's export)")
    parser.add_argument("--bootstrap-iters", type=int, default=100000,
                        help="the harness's bootstrap for non-mean metrics' standard errors (ReCoRD's)")
    args = parser.parse_args(argv)

    import torch

    from dyt.train.run import build_task
    from tasks.lm_eval import LmEvalError, selection_label, summarize, zero_shot

    run_dir = args.run_dir
    cfg, checkpoint = load_run(run_dir, args.checkpoint)
    task = build_task(cfg)
    started = time.time()
    try:  # every dataset, before any model: a missing one is one line, and nothing was loaded for nothing
        tasks = task.lm_eval_selection(args.tasks, data_dir=args.data_dir, include_path=args.include_path)
    except LmEvalError as err:
        fail(str(err))
    if checkpoint is None:
        fail(f"{run_dir / 'checkpoints'} holds no complete checkpoint")
    if not (checkpoint / "COMPLETE").exists():
        fail(f"--checkpoint {checkpoint} is not a complete checkpoint (a folder under RUN_DIR/checkpoints with COMPLETE)")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed or args.parallelize:
        from lm_eval.models.huggingface import HFLM

        folder = exported_folder(run_dir, checkpoint)
        model = HFLM(pretrained=str(folder), trust_remote_code=True, dtype=args.dtype, batch_size=args.batch_size,
                     parallelize=args.parallelize, **({"device": args.device} if args.device else {}))
    else:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(cfg, task, checkpoint, device, args.dtype)
    results = zero_shot(model, task.corpus.tokenizer, tasks, batch_size=args.batch_size, limit=args.limit,
                        bootstrap_iters=args.bootstrap_iters)
    if results is None:  # not the first process of a data-parallel run: it wrote nothing
        return None
    label = selection_label(args.tasks)
    summary = summarize(results)
    record = write_results(run_dir, label, checkpoint, results, summary, args)
    print_table(label, summary)
    print(f"\n{checkpoint} → {run_dir / record['file']} ({time.time() - started:.0f} s)")
    return record


if __name__ == "__main__":
    main()
