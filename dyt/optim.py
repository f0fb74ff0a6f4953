"""Weight-decay parameter groups with the DyT rule made explicit."""
from __future__ import annotations

from torch import nn

from .layers import PointwiseNorm


def param_groups(model: nn.Module, weight_decay: float, *, decay_alpha: bool = False) -> list[dict]:
    """Two AdamW groups: `decay` (matrices) and `no_decay` (every tensor of ≤ 1 dim: α, γ, β, biases, and
    what the model lists in `no_weight_decay()`, as timm models do for position embeddings).

    `decay_alpha=True` puts each DyT-like layer's α back into decay: the paper's vision code exempted it,
    its LLaMA code decayed every parameter at 0.1.
    """
    alphas = {id(m.alpha) for m in model.modules() if isinstance(m, PointwiseNorm) and m.learn_alpha}
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if decay_alpha and id(param) in alphas:
            decay.append(param)
        elif param.ndim <= 1 or name in listed:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "group": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "group": "no_decay"},
    ]
