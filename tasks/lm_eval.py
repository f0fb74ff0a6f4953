"""Zero-shot accuracy with lm-evaluation-harness (the `lm-eval` package, its HFLM wrapper around a model and
tokenizer already loaded), offline: the paper's 15-task selection (Table 4's second number), the suite's
held-out cloze, or any harness task, with their datasets from a local folder or the local datasets cache."""
from __future__ import annotations

import os
import random
import statistics
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .data import cloze
from .data.text import _key

# Table 4's second number is the mean zero-shot accuracy over 15 lm-eval tasks, the OpenLLaMA selection: the
# rows of the evaluation table in openlm-research/open_llama README.md ("We removed the task CB and WSC"), with
# its truthfulqa_mc split into the harness's truthfulqa_mc1 and truthfulqa_mc2 (its tasks since 0.4).
PAPER15 = ("anli_r1", "anli_r2", "anli_r3", "arc_challenge", "arc_easy", "boolq", "hellaswag", "openbookqa", "piqa",
           "record", "rte", "truthfulqa_mc1", "truthfulqa_mc2", "wic", "winogrande")
SELECTIONS = {"paper15": PAPER15, "cloze": (cloze.TASK_NAME,)}
# the number each task adds to the mean: its accuracy (`acc`, the harness's first metric for all the others);
# ReCoRD has none, its exact match stands in (OpenLLaMA's table lists record/em beside record/f1)
MEAN_METRIC = {"record": "em"}
REPORTED = ("acc", "acc_norm", "em", "f1")  # the metrics copied into summaries and logs (the json has all)


class LmEvalError(Exception):
    """A selection or task dataset that cannot be had offline: one line naming the task and where it was sought."""


def lm_eval_names(selection) -> list[str]:
    """Harness task names from a selection: `paper15`, `cloze`, a comma-separated string or a list of those."""
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    names = []
    for item in (str(i).strip() for i in items):
        for name in SELECTIONS.get(item, (item,)):
            if name and name not in names:
                names.append(name)
    if not names:
        raise LmEvalError(f"the lm-eval selection {selection!r} names no task; use paper15, cloze or task names")
    return names


def selection_label(selection) -> str:
    """The name results are filed under: the selection's own name, or its task names joined by `+`."""
    items = [s.strip() for s in (selection.split(",") if isinstance(selection, str) else selection)]
    return items[0] if len(items) == 1 else "+".join(items)


@contextmanager
def offline():
    """Nothing downloads inside: datasets and huggingface_hub read their offline switches when imported (the
    variables) and when they fetch (the module constants), so both are set for the duration."""
    import datasets
    import huggingface_hub.constants as hub

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def preserved_rng():
    """The harness seeds python, numpy and torch; a run evaluated mid-training goes on as if it had not."""
    import numpy as np

    state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        yield
    random.setstate(state[0])
    np.random.set_state(state[1])


@lru_cache(maxsize=4)
def task_manager(include_paths: tuple[str, ...], defaults: bool):
    """The harness's task index over its own tasks (`defaults`; ~15 s to build) and the given folders."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include_paths) or None, include_defaults=defaults)


def lm_eval_tasks(names: list[str], *, include_paths=(), data_dir: str | None = None,
                  work_dir: Path | None = None) -> dict:
    """{name: harness Task} with every dataset loaded, offline. Tasks found in `include_paths` come from there;
    the harness's own tasks read their datasets from `data_dir`/<dataset_path> when given (a copy of the
    dataset's hub repository), else from the local datasets / hub cache. A task or dataset that is not there
    raises LmEvalError, one line naming the task and where it was looked for."""
    import lm_eval

    include_paths = tuple(str(p) for p in include_paths)
    local = task_manager(include_paths, False) if include_paths else None
    missing = [n for n in names if local is None or n not in local.all_tasks]
    manager = task_manager(include_paths, True) if missing else local
    unknown = [n for n in missing if n not in manager.all_tasks]
    if unknown:
        where = f" nor under {', '.join(include_paths)}" if include_paths else ""
        raise LmEvalError(f"lm-eval task {unknown[0]} is not a task of lm-eval {lm_eval.__version__}{where}")
    overrides = {}
    if data_dir and missing:
        overrides = _local_copies(manager, missing, Path(data_dir).expanduser(), work_dir)
    built = {}
    with offline():
        for name in names:
            source = overrides.get(name, manager)
            try:
                built[name] = source.load([name])["tasks"][name]
            except Exception as err:  # noqa: BLE001 — the harness and datasets raise many kinds; all mean "not here"
                raise LmEvalError(_not_found(name, manager, data_dir, err)) from None
    return built


def _dataset_of(manager, name: str) -> tuple[str, str | None]:
    cfg = manager.task_index[name].cfg or {}
    return cfg.get("dataset_path"), cfg.get("dataset_name")


def _local_copies(manager, names: list[str], data_dir: Path, work_dir: Path | None) -> dict:
    """Per task, a task index holding that task with its dataset read from data_dir/<dataset_path>: a one-line
    YAML in the harness's format that includes the task's own and changes only `dataset_path`."""
    folder = (work_dir or data_dir) / "local_tasks" / _key(str(data_dir), names)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path, _ = _dataset_of(manager, name)
        copy = data_dir / path
        if not copy.is_dir():
            raise LmEvalError(f"lm-eval task {name}: its dataset {path} is not under --data-dir {data_dir} (looked "
                              f"for {copy}); copy it there on a machine online: hf download --repo-type dataset "
                              f"{path} --local-dir {copy}")
        entry = manager.task_index[name]
        (folder / f"{name}.yaml").write_text(f"include: {entry.yaml_path}\ntask: {name}\ndataset_path: {copy}\n")
    local = task_manager((str(folder),), False)
    return {name: local for name in names}


def _not_found(name: str, manager, data_dir, err: Exception) -> str:
    import datasets
    import huggingface_hub.constants as hub

    path, config = _dataset_of(manager, name)
    dataset = f"{path}{f' ({config})' if config else ''}"
    reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    if data_dir:
        where = f"its copy under --data-dir {data_dir}"
    elif path in (None, "json", "csv", "parquet", "text", "arrow"):
        where = "its local files"
    else:
        where = (f"the local datasets cache ({datasets.config.HF_DATASETS_CACHE}) or hub cache ({hub.HF_HUB_CACHE}), "
                 f"and nothing downloads here; give --data-dir DIR holding a copy in DIR/{path}")
    return f"lm-eval task {name}: its dataset {dataset} could not be read from {where} ({reason})"


def zero_shot(model, tokenizer, tasks: dict, *, batch_size: int = 16, limit: int | None = None,
              bootstrap_iters: int = 100000) -> dict:
    """lm-evaluation-harness's results on built `tasks`, zero-shot, for `model`: a transformers causal LM object
    (wrapped in the harness's HFLM with `tokenizer`), or an HFLM made by the caller (the harness's data- and
    model-parallel modes load the model themselves). None on the processes other than the first."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    with offline():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size) if isinstance(model, nn.Module) else model
        return simple_evaluate(model=lm, tasks=list(tasks.values()), num_fewshot=0, limit=limit,
                               batch_size=batch_size, log_samples=False, bootstrap_iters=bootstrap_iters)


def summarize(results: dict) -> dict:
    """Per task the harness's metrics (acc, acc_norm, … and their standard errors), the metric each adds to
    the mean (MEAN_METRIC) and the means: `mean_acc`, and `mean_acc_norm` (acc_norm where a task has it)."""
    tasks = {}
    for name, values in results["results"].items():
        tasks[name] = {key.split(",")[0]: value for key, value in values.items()
                       if "," in key and isinstance(value, (int, float))}
    headline = {name: metrics[MEAN_METRIC.get(name, "acc")] for name, metrics in tasks.items()}
    chance = {name: cfg["metadata"]["chance"] for name, cfg in results.get("configs", {}).items()
              if isinstance(cfg.get("metadata"), dict) and "chance" in cfg["metadata"]}
    return {
        "tasks": tasks,
        "mean_metric": {name: MEAN_METRIC.get(name, "acc") for name in tasks},
        "mean_acc": statistics.mean(headline.values()),
        "mean_acc_norm": statistics.mean(tasks[n].get("acc_norm", headline[n]) for n in tasks),
        "chance": chance,
        "n_samples": {name: n.get("effective") for name, n in results.get("n-samples", {}).items()},
    }


def flat_metrics(summary: dict, label: str) -> dict[str, float]:
    """Scalars for the tracker: lm_eval/<label>/mean_acc, lm_eval/<label>/mean_acc_norm, lm_eval/<task>/<metric>."""
    flat = {f"lm_eval/{label}/mean_acc": summary["mean_acc"], f"lm_eval/{label}/mean_acc_norm": summary["mean_acc_norm"]}
    for name, metrics in summary["tasks"].items():
        flat.update({f"lm_eval/{name}/{m}": metrics[m] for m in REPORTED if m in metrics})
    return flat
