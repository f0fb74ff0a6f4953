"""LLaMA pretraining (the paper's Table 4): transformers' LlamaForCausalLM built from a LlamaConfig (nothing is
downloaded), next-token loss on fixed-length windows of text.

RMSNorm → DyT without β (the converter keeps a layer's bias-ness) with α₀ per role: `input_layernorm` is the
attention-block norm, `post_attention_layernorm` the FFN-block norm, `model.norm` the final norm. With a
DyT-like norm the embedding output is multiplied by one learnable scalar initialised to √d, as in the paper's
LLaMA code; the RMSNorm baseline has none.

Initialisation (`task.model.init`): `fms_fsdp`, the paper's codebase (foundation-model-stack/fms-fsdp over
foundation-model-stack's modules): every matrix, the embedding and the head drawn from torch's truncated normal
with std 0.02 and its default bounds ±2 (absolute, so ±100σ: in effect an untruncated normal); or `scaled`,
std width^-½ (Meta's lingua), the CPU default's. The α₀ the paper tuned is relative to fms_fsdp's: with the √d
scale the embedding enters the first DyT at RMS 0.02·√d (1.28 at 7B, 1.43 at 13B, 1.81 at 34B / 70B).
"""
from __future__ import annotations

import logging
import math
import os
import random
import statistics
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dyt.layers import ScaledEmbedding  # noqa: F401 — the paper's scalar after the embedding, with DyT
from dyt.train.config import ConfigError
from dyt.train.task import Task

from .data import cloze
from .data.text import TextCorpus, _key

# LlamaConfig fields per size. Without vocab_size the model takes the tokenizer's vocabulary; the paper's
# sizes keep LLaMA 2's 32,000 (its tokenizer: task.data.tokenizer_path=/path/to/llama-tokenizer).
SIZES = {
    "debug": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "cpu": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
    "125M": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12),
    "350M": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16),
    "1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),  # TinyLlama-1.1B's shape
    "7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               vocab_size=32000),
    "13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                vocab_size=32000),
    "34B": dict(hidden_size=8192, intermediate_size=22016, num_hidden_layers=48, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=32000),
}
DYT_LIKE = ("dyt", "derf")
INITS = ("fms_fsdp", "scaled")
# foundation-model-stack fms/modules/{attention,feedforward,embedding}.py reset_parameters:
# nn.init.trunc_normal_(weight, mean=0.0, std=0.02), torch's default bounds a=-2, b=2
FMS_FSDP_STD = 0.02
FMS_FSDP_BOUNDS = (-2.0, 2.0)

# a run's config.yaml from before these keys (scripts rebuild models from it) meant the scaled init, HF's ε
LEGACY_INIT, LEGACY_RMS_NORM_EPS = "scaled", 1e-6

log = logging.getLogger(__name__)


def init_of(cfg) -> str:
    return cfg.model.get("init", LEGACY_INIT)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float beyond ~709; nan stays nan


def fms_fsdp_init_(model: nn.Module) -> None:
    """fms-fsdp's LLaMA init in place: every Linear (attention, MLP, head) and Embedding weight from a truncated
    normal of std 0.02 with bounds ±2, biases (LLaMA has none) zero; norm weights stay as built (ones)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=FMS_FSDP_STD, a=FMS_FSDP_BOUNDS[0], b=FMS_FSDP_BOUNDS[1])
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class Llama(Task):
    loss_is_nll = True
    # the paper's roles, said explicitly rather than left to dyt.convert's name patterns
    norm_roles = {r"input_layernorm$": "attn", r"post_attention_layernorm$": "ffn", r"^model\.norm$": "final"}
    shard_units = r"model\.layers\.\d+"  # the decoder layers

    @classmethod
    def check_config(cls, cfg) -> None:
        lm_eval_cfg = cfg.get("eval") or {}
        data_dir = lm_eval_cfg.get("lm_eval_data_dir")
        if data_dir and not Path(data_dir).expanduser().is_dir():
            raise ConfigError(f"task.eval.lm_eval_data_dir={data_dir} is not a folder; give the folder of the "
                              "harness datasets' local copies (scripts/eval_lm.py --help)")
        if lm_eval_cfg.get("lm_eval_tasks"):
            try:
                lm_eval_names(list(lm_eval_cfg.lm_eval_tasks))
            except LmEvalError as err:
                raise ConfigError(f"task.eval.lm_eval_tasks: {err}") from None
        if cfg.size not in SIZES:
            raise ConfigError(f"task.size={cfg.size} is unknown; known: {', '.join(SIZES)}")
        if init_of(cfg) not in INITS:
            raise ConfigError(f"task.model.init={init_of(cfg)} is unknown; use {' or '.join(INITS)}")
        if cfg.data.seq_len < 2:
            raise ConfigError(f"task.data.seq_len={cfg.data.seq_len} must be at least 2 (a token and its next)")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.check_config(cfg)
        self.corpus = TextCorpus(cfg.data)
        self.seq_len = cfg.data.seq_len
        self._step: int | None = None
        self._max_steps: int | None = None
        self._lm_eval_tasks: dict | None = None  # the harness tasks of task.eval.lm_eval_tasks, built at start

    def model_config(self):
        from transformers import LlamaConfig

        fields = {**SIZES[self.cfg.size], **(self.cfg.model.get("overrides") or {})}
        # `scaled`: every matrix and the embedding drawn with std width^-½ (Meta's lingua) rather than 0.02: the √d
        # scale then starts DyT's input at unit variance at any width (0.02 ≈ width^-½ only near the paper's 7B
        # width of 4096); with 0.02 the CPU default's DyT ends at val loss 6.56 against 5.17 (RMSNorm 5.59 against
        # 5.43; README's LLaMA section). `fms_fsdp`: 0.02, the paper's, drawn truncated in build_model (HF's own
        # init draws an untruncated normal).
        scaled = init_of(self.cfg) == "scaled"
        fields = {"initializer_range": fields["hidden_size"] ** -0.5 if scaled else FMS_FSDP_STD,
                  "rms_norm_eps": self.cfg.model.get("rms_norm_eps", LEGACY_RMS_NORM_EPS), **fields}
        if "vocab_size" not in fields:
            fields["vocab_size"] = len(self.corpus.tokenizer)
        return LlamaConfig(max_position_embeddings=self.seq_len, tie_word_embeddings=False, **fields)

    def build_model(self) -> nn.Module:
        """Built on the current default device, so `with torch.device("meta")` builds any size for free."""
        from transformers import LlamaForCausalLM

        config = self.model_config()
        self.vocab_size = config.vocab_size
        model = LlamaForCausalLM(config)
        if init_of(self.cfg) == "fms_fsdp":
            fms_fsdp_init_(model)
        self.flops_per_sample = self.flops_per_token(model) * self.seq_len
        return model

    def flops_per_token(self, model: nn.Module) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight that multiplies (all but the input
        embedding, a lookup) plus attention's 12·layers·width·context (PaLM, appendix B; nanoGPT's MFU)."""
        config = model.config
        weights = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        return 6 * weights + 12 * config.num_hidden_layers * config.hidden_size * self.seq_len

    def adapt_to_norm(self, model: nn.Module, norm) -> None:
        if norm.type in DYT_LIKE and self.cfg.model.embedding_scale:
            embedding = model.get_input_embeddings()
            model.set_input_embeddings(ScaledEmbedding.wrap(embedding, math.sqrt(embedding.embedding_dim)))

    def build_data(self):
        from accelerate import PartialState

        if self.cfg.data.streaming and not self.cfg.data.path:
            log.warning("task.data.streaming=true streams a local corpus (task.data.path); the embedded text is "
                        "small and is tokenized to a file instead")
        tokens = len(self.corpus.tokenizer)
        if tokens > self.vocab_size:
            raise ValueError(f"the tokenizer has {tokens} tokens but task.size={self.cfg.size} has a vocabulary "
                             f"of {self.vocab_size}; set task.model.overrides.vocab_size={tokens}")
        state = PartialState()
        windows = self.corpus.windows(self.seq_len, seed=self.cfg.data.shuffle_seed, rank=state.process_index,
                                      world=state.num_processes)
        lm_eval_cfg = self.cfg.get("eval") or {}
        if lm_eval_cfg.get("lm_eval_tasks"):  # their datasets are loaded now: a missing one fails before training
            try:
                self._lm_eval_tasks = self.lm_eval_selection(list(lm_eval_cfg.lm_eval_tasks),
                                                             data_dir=lm_eval_cfg.get("lm_eval_data_dir"))
            except LmEvalError as err:
                raise LmEvalError(f"task.eval.lm_eval_tasks: {err}") from None
        return windows

    def _token_losses(self, model, batch: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=batch[:, :-1]).logits
        return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")

    def loss(self, model, batch):
        return self._token_losses(model, batch).mean(), {}

    def eval_step(self, model, batch):
        losses = self._token_losses(model, batch)
        return {"loss_sum": losses.sum(), "tokens": torch.tensor(losses.numel())}

    def eval_metrics(self, totals):
        loss = totals["loss_sum"] / totals["tokens"]
        return {"loss": loss, "ppl": perplexity(loss)}

    def count(self, batch):
        return batch.shape[0], batch.shape[0] * (batch.shape[1] - 1)

    # ------------------------------------------------------------ zero-shot accuracy (lm-evaluation-harness)

    def set_step(self, step: int, max_steps: int) -> None:
        self._step, self._max_steps = step, max_steps

    def evaluate(self, model, batches, reduce):
        """The validation loss and, when `task.eval.lm_eval_tasks` names a selection, its zero-shot accuracy
        (`lm_eval/<selection>/mean_acc`, per task `lm_eval/<task>/acc`, …) after the last step, or at every
        evaluation with `task.eval.lm_eval_at_every_eval`. Every process scores the whole selection, so the metrics
        agree everywhere (a sharded model's forwards are collectives, and every process makes the same ones:
        tested on one process only); the training RNG is left as it was."""
        metrics = super().evaluate(model, batches, reduce)
        lm_eval_cfg = self.cfg.get("eval") or {}
        last = self._step is not None and self._step + 1 >= self._max_steps
        if self._lm_eval_tasks and (last or lm_eval_cfg.get("lm_eval_at_every_eval")):
            from accelerate.utils import extract_model_from_parallel

            with preserved_rng():
                results = zero_shot(extract_model_from_parallel(model), self.corpus.tokenizer, self._lm_eval_tasks,
                                    batch_size=lm_eval_cfg.get("lm_eval_batch_size", 16),
                                    limit=lm_eval_cfg.get("lm_eval_limit"))
            label = selection_label(list(lm_eval_cfg.lm_eval_tasks))
            metrics.update(flat_metrics(summarize(results), label))
        return metrics

    def lm_eval_selection(self, selection, *, data_dir: str | None = None, include_path: str | None = None) -> dict:
        """The harness tasks a selection names (`cloze`, `paper15`, harness names, tasks under `include_path`),
        built with their datasets loaded, offline; the cloze is made from this run's held-out text."""
        names = lm_eval_names(selection)
        includes = [Path(include_path).expanduser()] if include_path else []
        if cloze.TASK_NAME in names:
            includes.append(cloze.cloze_task(self.corpus))
        return lm_eval_tasks(names, include_paths=includes, data_dir=data_dir, work_dir=self.corpus.cache / "lm_eval")


# ---------------------------------------------------------------- zero-shot accuracy (lm-evaluation-harness)

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
