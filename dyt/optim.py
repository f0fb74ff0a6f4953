"""Weight-decay parameter groups, with the rule each official codebase used made explicit."""
from __future__ import annotations

from torch import nn

from .layers import PointwiseNorm

# parameters a rule keeps out of weight decay
NO_DECAY_RULES = {
    "one_dim": "every tensor of ≤ 1 dimension: α, γ, β, biases, scalars (timm, the ConvNeXt codebase)",
    "bias": "parameters named *bias",
    "norm": "parameters of statistics norms (LayerNorm, RMSNorm, GroupNorm, BatchNorm), not of DyT",
    "embedding": "nn.Embedding weights",
    "listed": "what the model lists in `no_weight_decay()` (timm's position embeddings, Hyena's filters)",
}
_STATISTICS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def _exempt(model: nn.Module, rules) -> set[int]:
    """ids of the parameters the rules keep out of decay."""
    unknown = set(rules) - set(NO_DECAY_RULES)
    if unknown:
        raise ValueError(f"unknown no_decay rule {sorted(unknown)[0]!r}; known: {', '.join(NO_DECAY_RULES)}")
    exempt = set()
    listed = set(model.no_weight_decay()) if "listed" in rules and hasattr(model, "no_weight_decay") else set()
    for name, param in model.named_parameters():
        if ("one_dim" in rules and param.ndim <= 1) or ("bias" in rules and name.endswith("bias")) \
                or name in listed:
            exempt.add(id(param))
    for module in model.modules():
        if ("norm" in rules and isinstance(module, _STATISTICS)) or \
                ("embedding" in rules and isinstance(module, nn.Embedding)):
            exempt.update(id(p) for p in module.parameters(recurse=False))
    return exempt


def param_groups(model: nn.Module, weight_decay: float, *, decay_alpha: bool = False,
                 no_decay=("one_dim", "listed"), lr_scale=None) -> list[dict]:
    """Two AdamW groups, `decay` and `no_decay`. `no_decay` names the rules (NO_DECAY_RULES) that exempt a
    parameter: the default is timm's (every ≤ 1-D tensor, and `no_weight_decay()`); `()` decays everything
    (fms-fsdp's LLaMA, fairseq's wav2vec 2.0); `("bias", "norm", "embedding", "listed")` is the HyenaDNA /
    Caduceus codebases' (which decays DyT's α and γ, since DyT is not a LayerNorm).

    `decay_alpha=True` puts each DyT-like layer's α back into decay whatever the rules say: the paper's
    vision code exempted it, its LLaMA code decayed every parameter at 0.1.

    `lr_scale(name) -> float` (layer-wise lr decay, BEiT's and MAE's fine-tuning): the groups are split by
    (decay, scale), in the order the parameters first reach them; every group carries its `lr_scale`, which the
    trainer multiplies into the scheduled lr (1.0 without `lr_scale`).
    """
    alphas = {id(m.alpha) for m in model.modules() if isinstance(m, PointwiseNorm) and m.learn_alpha}
    exempt = _exempt(model, no_decay)
    groups = {("decay", 1.0): [], ("no_decay", 1.0): []} if lr_scale is None else {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        kind = "no_decay" if id(param) in exempt and not (decay_alpha and id(param) in alphas) else "decay"
        groups.setdefault((kind, 1.0 if lr_scale is None else float(lr_scale(name))), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if kind == "decay" else 0.0,
             "group": kind if lr_scale is None else f"{kind}_x{scale:.4g}", "lr_scale": scale}
            for (kind, scale), params in groups.items()]
