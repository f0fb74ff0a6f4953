"""Compact, readable DNA models: HyenaDNA (hyena.py), Caduceus (caduceus.py) and the task they share (task.py)."""
import torch
from torch import nn

from ..data.genome import PAD


def mean_pool(hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the positions that are not padding: [B, L, D] → [B, D]."""
    keep = (tokens != PAD).unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)


def embed_scale_parameter(value: torch.Tensor) -> nn.Parameter:
    """The learnable scalar after the embedding, stored with shape (1,): torch's FSDP2 `fully_shard` rejects
    0-dim parameters."""
    return nn.Parameter(value.detach().reshape(1).clone())


def load_legacy_embed_scale(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """Load-state-dict pre-hook: checkpoints written before the scale had shape (1,) hold it as a 0-dim
    tensor; reshape it so they still load (strictly) into the current models."""
    key = prefix + "embed_scale"
    value = state_dict.get(key)
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        state_dict[key] = value.reshape(1)
