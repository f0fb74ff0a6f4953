"""Compact, readable DNA models: HyenaDNA (hyena.py), Caduceus (caduceus.py) and the task they share (task.py)."""
import torch

from ..data.genome import PAD


def mean_pool(hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the positions that are not padding: [B, L, D] → [B, D]."""
    keep = (tokens != PAD).unsqueeze(-1).to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)
