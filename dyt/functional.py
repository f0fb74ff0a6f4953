"""Point-wise norm functions: `weight * f(alpha * x + shift) + bias` in either layout.

`pointwise_norm` is the reference (eager) formula every faster back end is tested against; `dynamic_tanh`
runs DyT by the fused kernels of `dyt.kernels` where they apply.

The functions f live in one registry, `POINTWISE`. A new one is one decorated function here and one config file
(`configs/norm/<name>.yaml` with `type: dyt` and `fn: <name>`); the layers, `dyt.convert`, the run configs and
`torch.compile` take it from the registry. A function of `(z, width)` also receives the layer's normalised
width C (DyISRU's depends on it).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

POINTWISE: dict[str, Callable] = {}
_TAKES_WIDTH: set[str] = set()


def pointwise_function(name: str):
    """Register `f(z)` or `f(z, width)` as the point-wise function `name` (`norm.fn=name`)."""

    def register(f: Callable) -> Callable:
        POINTWISE[name] = f
        try:
            takes_width = "width" in inspect.signature(f).parameters
        except ValueError:  # a builtin without a signature (torch.tanh): a function of z alone
            takes_width = False
        if takes_width:
            _TAKES_WIDTH.add(name)
        return f

    return register


pointwise_function("tanh")(torch.tanh)  # DyT
pointwise_function("hardtanh")(F.hardtanh)  # the paper's squashing ablation
pointwise_function("sigmoid")(torch.sigmoid)  # the paper's squashing ablation
pointwise_function("erf")(torch.erf)  # Derf (its shift s is the layer's: `Derf`)


@pointwise_function("isru")
def isru(z: torch.Tensor, width: int) -> torch.Tensor:
    """DyISRU (Stollenwerk, arXiv 2503.21708), the element-wise counterpart of RMSNorm: `√C·x/√(β + x²)`.

    Written as `z/√(1 + z²/C)` of `z = αx` with `α = √(C/β)`, the same function with its learnable scalar stored
    as DyT's is: α is the slope at 0 (α₀ = 0.5 ⇒ β₀ = 4C) and the output tends to ±√C, RMSNorm's bound."""
    return z * torch.rsqrt(1 + z * z / width)


SQUASHERS = POINTWISE  # the registry's earlier name


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
    width: int | None = None,
) -> torch.Tensor:
    """`weight * fn(alpha * x + shift) + bias`; alpha is a scalar or per-channel; None terms are skipped. `width`
    (default: x's channel count) goes to functions of `(z, width)`."""
    y = x
    if alpha is not None:
        y = y * _per_channel(alpha, channels_last, x.ndim)
    if shift is not None:
        y = y + shift
    if fn in _TAKES_WIDTH:
        y = POINTWISE[fn](y, width or (x.shape[-1] if channels_last else x.shape[1]))
    else:
        y = POINTWISE[fn](y)
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
