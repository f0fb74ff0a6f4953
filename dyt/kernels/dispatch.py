"""Which implementation a DyT (or other fused point-wise norm) call runs: the `kernel` switch and its
process-wide default.

    auto      the fused op where it applies (Triton on CUDA, the C++ kernel on CPU; without a compiler the
              formula in torch ops, said once in the log); the eager formula elsewhere (float64, other devices)
    eager     the reference formula in torch ops, autograd through each op
    compiled  the reference formula through torch.compile
    cpu       the fused C++ kernel (CPU tensors)
    triton    the fused Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)

The default is "auto", or the DYT_KERNEL environment variable, or what `set_default_kernel` set.
"""
from __future__ import annotations

import functools
import os

import torch

from ..functional import pointwise_norm
from . import ops

KERNELS = ("auto", "eager", "compiled", "triton", "cpu")


def check_kernel(kernel: str | None) -> str | None:
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    return kernel


_default = os.environ.get("DYT_KERNEL") or "auto"
if _default not in KERNELS:
    raise ValueError(f"DYT_KERNEL={_default!r} is unknown; use one of {', '.join(KERNELS)}")


def set_default_kernel(kernel: str) -> None:
    """The kernel every DyT layer and call without its own `kernel` uses, from now on in this process."""
    global _default
    _default = check_kernel(kernel)


def get_default_kernel() -> str:
    return _default


@functools.cache
def compiled(fn: str, channels_last: bool):
    """The reference formula compiled by inductor, one compiled function per point-wise function and layout."""
    return torch.compile(functools.partial(pointwise_norm, fn=fn, channels_last=channels_last))


def fusable(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """The fused op covers fp32/bf16/fp16 on CPU and CUDA with parameters of those dtypes."""
    return (x.device.type in ("cpu", "cuda") and x.dtype in ops.FUSED_DTYPES and x.dim() >= 1
            and all(p is None or p.dtype in ops.FUSED_DTYPES for p in params))


def dynamic_tanh(x, alpha, weight=None, bias=None, *, channels_last: bool = True, kernel: str | None = None):
    """DyT `weight * tanh(alpha * x) + bias` by the chosen kernel (None: the process default)."""
    kernel = check_kernel(kernel) or _default
    if kernel == "compiled":
        return compiled("tanh", channels_last)(x, alpha, weight, bias)
    if kernel == "eager" or not fusable(x, alpha, weight, bias) or (not channels_last and x.dim() < 2):
        return pointwise_norm(x, alpha, weight, bias, fn="tanh", channels_last=channels_last)
    if torch.compiler.is_compiling():  # an opaque custom op in the graph
        return ops.dynamic_tanh(x, alpha, weight, bias, channels_last, kernel)
    return ops.fused(x, alpha, weight, bias, channels_last, kernel)


def pointwise(x, alpha, weight=None, bias=None, *, fn: str, width: int, channels_last: bool = True,
              kernel: str | None = None):
    """`weight * f(alpha * x) + bias` for a point-wise function f of `dyt.functional.POINTWISE` by the chosen kernel:
    the fused kernels for the functions they know (`ops.FUSED_FUNCTIONS`), the formula for the others. `width` is
    the layer's normalised width C (DyISRU's f depends on it)."""
    kernel = check_kernel(kernel) or _default
    if fn == "tanh":
        return dynamic_tanh(x, alpha, weight, bias, channels_last=channels_last, kernel=kernel)
    if kernel == "compiled":
        return compiled(fn, channels_last)(x, alpha, weight, bias, width=width)
    if (kernel == "eager" or fn not in ops.FUSED_FUNCTIONS or not fusable(x, alpha, weight, bias)
            or (not channels_last and x.dim() < 2)):
        return pointwise_norm(x, alpha, weight, bias, fn=fn, channels_last=channels_last, width=width)
    k = ops.kernel_constant(fn, width)
    if torch.compiler.is_compiling():
        return ops.pointwise(x, alpha, weight, bias, channels_last, kernel, fn, k)
    return ops.fused(x, alpha, weight, bias, channels_last, kernel, fn, k)
