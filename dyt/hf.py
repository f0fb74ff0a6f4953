"""transformers folders for models with DyT: a LLaMA trained with DyT saved with `save_pretrained` loads back,
norms and embedding scale included, with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`
(so lm-evaluation-harness, vLLM-free HF tooling and `pipeline` take it as a path). The folder's config.json
holds the conversion (`dyt`: the norm spec, the roles, the embedding scale) and `auto_map` names this module's
class through a one-line `modeling_dyt_llama.py`, which needs dyt installed where the folder is loaded."""
from __future__ import annotations

import math
from pathlib import Path

from transformers import LlamaForCausalLM

from .convert import convert
from .layers import ScaledEmbedding

MODELING_FILE = "modeling_dyt_llama.py"


class DyTLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM whose norms are converted as `config.dyt` says: {"norm": a `convert` spec, "roles":
    regex → role, "embedding_scale": bool}. Without `config.dyt` it is LlamaForCausalLM."""

    def __init__(self, config):
        super().__init__(config)
        spec = getattr(config, "dyt", None)
        if spec:
            convert(self, spec["norm"], roles=spec.get("roles"))
            if spec.get("embedding_scale"):
                embedding = self.get_input_embeddings()
                self.set_input_embeddings(ScaledEmbedding.wrap(embedding, math.sqrt(embedding.embedding_dim)))


def save_llama(model: LlamaForCausalLM, folder: Path, *, norm: dict | None, roles: dict | None,
               embedding_scale: bool, tokenizer=None) -> None:
    """`save_pretrained` (and the tokenizer's) into `folder`; a converted model also gets its `dyt` entry, the
    auto_map and the modeling file, so it loads back as it was trained."""
    folder = Path(folder)
    config = model.config
    if norm is not None:
        config.dyt = {"norm": norm, "roles": roles, "embedding_scale": embedding_scale}
        config.auto_map = {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.DyTLlamaForCausalLM"}
        config.architectures = ["DyTLlamaForCausalLM"]
    model.save_pretrained(folder)
    if norm is not None:
        (folder / MODELING_FILE).write_text(
            '"""A LLaMA trained with DyT by dyt-suite: its norms and embedding scale as config.json\'s `dyt` says.\n'
            'Needs dyt installed (pip install -e <dyt-suite>)."""\n'
            "from dyt.hf import DyTLlamaForCausalLM  # noqa: F401\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
