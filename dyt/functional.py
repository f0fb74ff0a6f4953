"""Point-wise norm functions: `weight * f(alpha * x + shift) + bias` in either layout.

`pointwise_norm` is the reference (eager) formula every faster back end is tested against; `dynamic_tanh`
runs DyT by the fused kernels of `dyt.kernels` where they apply.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SQUASHERS = {
    "tanh": torch.tanh,
    "hardtanh": F.hardtanh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
}


def _per_channel(t: torch.Tensor | None, channels_last: bool, ndim: int) -> torch.Tensor | None:
    """Shape a per-channel vector so it broadcasts against x (channel dim last, or dim 1 for NCHW)."""
    if t is None or t.ndim == 0 or channels_last:
        return t
    return t.reshape(t.shape + (1,) * (ndim - 2))


def pointwise_norm(
    x: torch.Tensor,
    alpha: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    fn: str = "tanh",
    shift: torch.Tensor | None = None,
    channels_last: bool = True,
) -> torch.Tensor:
    """`weight * fn(alpha * x + shift) + bias`; alpha is a scalar or per-channel; None terms are skipped."""
    y = x
    if alpha is not None:
        y = y * _per_channel(alpha, channels_last, x.ndim)
    if shift is not None:
        y = y + shift
    y = SQUASHERS[fn](y)
    if weight is not None:
        y = y * _per_channel(weight, channels_last, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, channels_last, x.ndim)
    return y


def dynamic_tanh(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    channels_last: bool = True,
    kernel: str | None = None,
) -> torch.Tensor:
    """DyT: `weight * tanh(alpha * x) + bias`, alpha a scalar (or per channel).

    `kernel` picks the implementation: "auto" (the fused one-pass op where it applies: Triton on CUDA, C++ on
    CPU), "eager" (`pointwise_norm`, the reference), "compiled", "cpu" or "triton"; None takes the process
    default (`dyt.kernels.set_default_kernel`, or the DYT_KERNEL environment variable, else "auto").
    """
    from .kernels.dispatch import dynamic_tanh as dispatch  # dyt.kernels imports this module

    return dispatch(x, alpha, weight, bias, channels_last=channels_last, kernel=kernel)
