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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dyt.layers import ScaledEmbedding  # noqa: F401 — the paper's scalar after the embedding, with DyT
from dyt.train.config import ConfigError
from dyt.train.task import Task

from .data import cloze
from .data.text import TextCorpus
from .lm_eval import (LmEvalError, flat_metrics, lm_eval_names, lm_eval_tasks, preserved_rng, selection_label,
                      summarize, zero_shot)

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

    def describe_data(self, train_set, val_set) -> dict:
        windows = len(train_set) if hasattr(train_set, "__len__") else "streamed"
        return {**self.corpus.describe(), "train_windows": windows, "val_windows": len(val_set),
                "seq_len": self.seq_len}

    def artifacts(self) -> dict:
        """The tokenizer (its whole definition), and the token file or, streamed, the corpus's files by name,
        size and date."""
        from .data.text import tokenizer_id

        corpus = self.corpus
        found = {"tokenizer": tokenizer_id(corpus.tokenizer)}
        if corpus.cfg.streaming and not corpus.embedded:
            found["corpus"] = corpus.source_id
        else:
            found["tokens"] = corpus.token_path  # made by build_data; asked on the main process alone, so no barrier
        return found

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
