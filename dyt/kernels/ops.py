"""The fused point-wise norms as torch custom ops — `dyt::dynamic_tanh` (DyT) and `dyt::pointwise` (any function
the kernels know: `FUSED_FUNCTIONS`), each with its backward op — with a fake (shape-only) version and autograd
registered, so torch.compile traces a model through them as opaque calls; and `fused`, the eager path to the
same kernels with less per-call overhead than a custom op (the C++ extension's own autograd on CPU, an
autograd.Function elsewhere).

Every back end computes `y = γ·f(α·x) + β` and, in one backward pass, dx and the per-channel sums behind dγ, dβ,
dα; only f and f' differ: tanh (DyT) and isru (DyISRU, `f(z) = z/√(1 + k·z²)`, k = 1/C).

`backend` names the implementation: "cpu" (the C++ extension), "triton", "torch" (the formula in plain torch
ops: the fallback when no compiler is there, and a second reference in tests), or "auto" (by device).
"""
from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from . import cpu

log = logging.getLogger("dyt.kernels")
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FUSED_FUNCTIONS = ("tanh", "isru")  # the point-wise functions with a fused kernel (cpu.FUNCTIONS, triton_dyt)


def kernel_constant(fn: str, width: int) -> float:
    """The constant k the kernels' f takes: isru's 1/C (`dyt.functional.isru`); none for tanh."""
    return 1.0 / width if fn == "isru" else 0.0


def out_dtype(x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None) -> torch.dtype:
    """The dtype the eager formula returns (bf16 x with fp32 parameters gives fp32, as `α·x` promotes)."""
    dtype = torch.promote_types(x.dtype, alpha.dtype)
    for p in (weight, bias):
        if p is not None:
            dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _stored_nhwc(x: Tensor, channels_last: bool) -> bool:
    return (not channels_last and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def _empty_like_output(x: Tensor, channels_last: bool, dtype: torch.dtype) -> Tensor:
    # what every back end returns: contiguous, or NHWC kept as NHWC
    fmt = torch.channels_last if _stored_nhwc(x, channels_last) else torch.contiguous_format
    return torch.empty(x.shape, dtype=dtype, device=x.device).contiguous(memory_format=fmt)


@functools.cache
def _triton():
    try:
        from . import triton_dyt
    except Exception as error:  # no triton, or one that does not import
        log.warning("dyt: Triton is not usable (%s); using the unfused formula on CUDA", error)
        return None
    return triton_dyt


def _value_slope(z: Tensor, fn: str, k: float) -> tuple[Tensor, Tensor]:
    """f(z) and f'(z) for the fused functions, in torch ops."""
    if fn == "tanh":
        t = torch.tanh(z)
        return t, 1 - t * t
    if fn == "isru":
        r = torch.rsqrt(1 + k * z * z)
        return z * r, r * r * r
    raise ValueError(f"no fused kernel for {fn!r}; fused: {', '.join(FUSED_FUNCTIONS)}")


class _Formula:
    """The forward and backward written with torch ops: any device and dtype, fp32 arithmetic."""

    @staticmethod
    def forward(x, alpha, weight, bias, channels_last, dtype, fn="tanh", k=0.0):
        view = (lambda t: t) if channels_last else (lambda t: t.reshape(t.shape + (1,) * (x.dim() - 2)))
        y, _ = _value_slope(view(alpha.float().reshape(-1)) * x.float(), fn, k)
        if weight is not None:
            y = y * view(weight.float())
        if bias is not None:
            y = y + view(bias.float())
        return _empty_like_output(x, channels_last, dtype).copy_(y)

    @staticmethod
    def backward(dy, x, alpha, weight, channels_last, fn="tanh", k=0.0):
        dims = [d for d in range(x.dim()) if d != (x.dim() - 1 if channels_last else 1)]
        view = (lambda t: t) if channels_last else (lambda t: t.reshape(t.shape + (1,) * (x.dim() - 2)))
        xf, dyf = x.float(), dy.float()
        a = view(alpha.float().reshape(-1))
        g = view(weight.float()) if weight is not None else 1.0
        t, s = _value_slope(a * xf, fn, k)
        dx = (dyf * g * a * s).to(x.dtype)
        d_alpha = (dyf * xf * s).sum(dims) * (weight.float() if weight is not None else 1.0)
        sums = torch.stack([(dyf * t).sum(dims), dyf.sum(dims), d_alpha])
        return _empty_like_output(x, channels_last, x.dtype).copy_(dx), sums


def resolve(name: str, x: Tensor):
    """The back end module for a kernel name ("auto", "cpu", "triton", "torch") and a tensor."""
    if name == "auto":
        if x.device.type == "cuda":
            name = "triton" if _triton() is not None else "torch"
        else:
            name = "cpu" if x.device.type == "cpu" and cpu.available() else "torch"
    if name == "cpu":
        if x.device.type != "cpu":
            raise ValueError(f"kernel='cpu' (norm.kernel=cpu) runs CPU tensors, got one on {x.device}; use kernel='auto'")
        if not cpu.available():
            raise RuntimeError("kernel='cpu': the C++ extension could not be built (see the log); use kernel='auto'")
        return cpu
    if name == "triton":
        if _triton() is None:
            raise RuntimeError("kernel='triton': Triton is not usable here; use kernel='auto'")
        return _triton()
    if name == "torch":
        return _Formula
    raise ValueError(f"unknown backend {name!r}")


def _fake_backward(x, channels_last):
    C = x.shape[-1] if channels_last else x.shape[1]
    return _empty_like_output(x, channels_last, x.dtype), x.new_empty((3, C), dtype=torch.float32)


@torch.library.custom_op("dyt::dynamic_tanh", mutates_args=())
def dynamic_tanh(x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None, channels_last: bool,
                 backend: str) -> Tensor:
    """γ·tanh(α·x) + β in one pass; the output has the eager formula's dtype."""
    return resolve(backend, x).forward(x, alpha, weight, bias, channels_last, out_dtype(x, alpha, weight, bias))


@dynamic_tanh.register_fake
def _(x, alpha, weight, bias, channels_last, backend):
    return _empty_like_output(x, channels_last, out_dtype(x, alpha, weight, bias))


@torch.library.custom_op("dyt::dynamic_tanh_backward", mutates_args=())
def dynamic_tanh_backward(dy: Tensor, x: Tensor, alpha: Tensor, weight: Tensor | None, channels_last: bool,
                          backend: str) -> tuple[Tensor, Tensor]:
    """dx, and the fp32 per-channel sums [3, C] (dγ, dβ, dα), from one pass over x and dy."""
    return resolve(backend, x).backward(dy, x, alpha, weight, channels_last)


@dynamic_tanh_backward.register_fake
def _(dy, x, alpha, weight, channels_last, backend):
    return _fake_backward(x, channels_last)


@torch.library.custom_op("dyt::pointwise", mutates_args=())
def pointwise(x: Tensor, alpha: Tensor, weight: Tensor | None, bias: Tensor | None, channels_last: bool,
              backend: str, fn: str, k: float) -> Tensor:
    """γ·f(α·x) + β in one pass for a function of FUSED_FUNCTIONS (k: its constant, isru's 1/C)."""
    dtype = out_dtype(x, alpha, weight, bias)
    return resolve(backend, x).forward(x, alpha, weight, bias, channels_last, dtype, fn, k)


@pointwise.register_fake
def _(x, alpha, weight, bias, channels_last, backend, fn, k):
    return _empty_like_output(x, channels_last, out_dtype(x, alpha, weight, bias))


@torch.library.custom_op("dyt::pointwise_backward", mutates_args=())
def pointwise_backward(dy: Tensor, x: Tensor, alpha: Tensor, weight: Tensor | None, channels_last: bool,
                       backend: str, fn: str, k: float) -> tuple[Tensor, Tensor]:
    """dx, and the fp32 per-channel sums [3, C] (dγ, dβ, dα), from one pass over x and dy."""
    return resolve(backend, x).backward(dy, x, alpha, weight, channels_last, fn, k)


@pointwise_backward.register_fake
def _(dy, x, alpha, weight, channels_last, backend, fn, k):
    return _fake_backward(x, channels_last)


def _setup_context(ctx, inputs, output):
    x, alpha, weight, bias, channels_last, backend, *function = inputs
    ctx.save_for_backward(x, alpha, weight)
    ctx.channels_last, ctx.backend = channels_last, backend
    ctx.function = tuple(function)  # (fn, k) of dyt::pointwise; () for dyt::dynamic_tanh
    ctx.bias_dtype = None if bias is None else bias.dtype


def _param_grads(ctx, dx, sums, alpha, weight):
    """(dx, dα, dγ, dβ, None) from dx and the per-channel sums, in the parameters' shapes and dtypes."""
    d_gamma, d_beta, d_alpha = sums
    d_alpha = d_alpha.sum() if alpha.numel() == 1 else d_alpha
    need = ctx.needs_input_grad
    return (dx if need[0] else None,
            d_alpha.reshape(alpha.shape).to(alpha.dtype) if need[1] else None,
            d_gamma.to(weight.dtype) if weight is not None and need[2] else None,
            d_beta.to(ctx.bias_dtype) if ctx.bias_dtype is not None and need[3] else None,
            None)


def _backward(ctx, dy):
    x, alpha, weight = ctx.saved_tensors
    if ctx.function:
        dx, sums = pointwise_backward(dy, x, alpha, weight, ctx.channels_last, ctx.backend, *ctx.function)
    else:
        dx, sums = dynamic_tanh_backward(dy, x, alpha, weight, ctx.channels_last, ctx.backend)
    return *_param_grads(ctx, dx, sums, alpha, weight), *(None,) * (1 + len(ctx.function))


dynamic_tanh.register_autograd(_backward, setup_context=_setup_context)
pointwise.register_autograd(_backward, setup_context=_setup_context)


class _Fused(torch.autograd.Function):
    """The eager path for the Triton and formula back ends."""

    @staticmethod
    def forward(ctx, x, alpha, weight, bias, channels_last, backend, fn, k):
        ctx.save_for_backward(x, alpha, weight)
        ctx.channels_last, ctx.backend, ctx.function = channels_last, backend, (fn, k)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return backend.forward(x, alpha, weight, bias, channels_last, out_dtype(x, alpha, weight, bias), fn, k)

    @staticmethod
    def backward(ctx, dy):
        x, alpha, weight = ctx.saved_tensors
        dx, sums = ctx.backend.backward(dy, x, alpha, weight, ctx.channels_last, *ctx.function)
        return *_param_grads(ctx, dx, sums, alpha, weight), None, None, None


def fused(x, alpha, weight, bias, channels_last: bool, backend: str, fn: str = "tanh", k: float = 0.0) -> Tensor:
    """The fused op outside torch.compile: γ·f(α·x) + β, f one of FUSED_FUNCTIONS (k: its constant)."""
    impl = resolve(backend, x)
    if impl is cpu:
        return cpu.pointwise(x, alpha, weight, bias, channels_last,
                             out_dtype(x, alpha, weight, bias) == torch.float32 != x.dtype, fn, k)
    return _Fused.apply(x, alpha, weight, bias, channels_last, impl, fn, k)
