"""LLaMA pretraining (the paper's Table 4): transformers' LlamaForCausalLM built from a LlamaConfig (nothing is
downloaded), next-token loss on fixed-length windows of text.

RMSNorm → DyT without β (the converter keeps a layer's bias-ness) with α₀ per role: `input_layernorm` is the
attention-block norm, `post_attention_layernorm` the FFN-block norm, `model.norm` the final norm. With a
DyT-like norm the embedding output is multiplied by one learnable scalar initialised to √d, as in the paper's
LLaMA code; the RMSNorm baseline has none.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dyt.train.config import ConfigError
from dyt.train.task import Task

from .data.text import TextCorpus

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


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float beyond ~709; nan stays nan


class ScaledEmbedding(nn.Embedding):
    """`embed(x)·s` with one learnable scalar s: without it DyT's early activations are too small."""

    @classmethod
    def wrap(cls, embedding: nn.Embedding, scale: float) -> "ScaledEmbedding":
        # built on the meta device and handed the existing weight: no memory, and no draw from the RNG,
        # so a DyT run keeps the non-norm weights of the RMSNorm run with the same seed
        with torch.device("meta"):
            scaled = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        scaled.weight = embedding.weight
        scaled.scale = nn.Parameter(torch.full((), scale, device=embedding.weight.device, dtype=embedding.weight.dtype))
        return scaled

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learnable scale"


class Llama(Task):
    loss_is_nll = True
    # the paper's roles, said explicitly rather than left to dyt.convert's name patterns
    norm_roles = {r"input_layernorm$": "attn", r"post_attention_layernorm$": "ffn", r"^model\.norm$": "final"}
    shard_units = r"model\.layers\.\d+"  # the decoder layers

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.size not in SIZES:
            raise ConfigError(f"task.size={cfg.size} is unknown; known: {', '.join(SIZES)}")
        if cfg.data.streaming and not cfg.data.path:
            raise ConfigError("task.data.streaming=true streams local files: give task.data.path=<file or folder>")
        if cfg.data.seq_len < 2:
            raise ConfigError(f"task.data.seq_len={cfg.data.seq_len} must be at least 2 (a token and its next)")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.check_config(cfg)
        self.corpus = TextCorpus(cfg.data)
        self.seq_len = cfg.data.seq_len

    def model_config(self):
        from transformers import LlamaConfig

        size = SIZES[self.cfg.size]
        # every matrix and the embedding drawn with std width^-½ (Meta's lingua) rather than HF's fixed 0.02:
        # the √d scale then starts DyT's input at unit variance at any width; with 0.02 a CPU-width DyT
        # stalls at the unigram loss (0.02 ≈ width^-½ only near the paper's 7B width of 4096)
        fields = {"initializer_range": size["hidden_size"] ** -0.5, **size, **(self.cfg.model.get("overrides") or {})}
        if "vocab_size" not in fields:
            fields["vocab_size"] = len(self.corpus.tokenizer)
        return LlamaConfig(max_position_embeddings=self.seq_len, tie_word_embeddings=False, **fields)

    def build_model(self) -> nn.Module:
        """Built on the current default device, so `with torch.device("meta")` builds any size for free."""
        from transformers import LlamaForCausalLM

        config = self.model_config()
        self.vocab_size = config.vocab_size
        model = LlamaForCausalLM(config)
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

        tokens = len(self.corpus.tokenizer)
        if tokens > self.vocab_size:
            raise ValueError(f"the tokenizer has {tokens} tokens but task.size={self.cfg.size} has a vocabulary "
                             f"of {self.vocab_size}; set task.model.overrides.vocab_size={tokens}")
        state = PartialState()
        return self.corpus.windows(self.seq_len, seed=self.cfg.data.shuffle_seed, rank=state.process_index,
                                   world=state.num_processes)

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
