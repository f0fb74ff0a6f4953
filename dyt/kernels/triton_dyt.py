"""The GPU back end: Triton kernels for the fused forward and backward of `γ·f(α·x) + β`, f = tanh (DyT) or
isru (DyISRU: f(z) = z/√(1 + k·z²), k = 1/C), chosen at compile time (`FN`: 0 tanh, 1 isru).

Both layouts are a matrix [R, K] walked in tiles: channels-last is [rows, C] with the parameters indexed by
column; channels-first NCHW is [B·C planes, H·W] with the parameters indexed by plane (plane % C). The
backward writes per-program partial sums of dγ, dβ and dα that one `sum` over programs finishes: no atomics,
so the gradients are deterministic on a given GPU. Runs on CPU tensors under `TRITON_INTERPRET=1` (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE = 2048  # elements per tile: enough bytes in flight per program, accumulators still fit in registers


@triton.jit
def _tanh(z):
    # the rational fit of dyt_cpu.cpp (a few fp32 ulp); libdevice's tanh has no interpreter version
    z = tl.minimum(tl.maximum(z, -9.1), 9.1)
    s = z * z
    p = s * -8.228851899e-14 + 5.177840448e-11
    p = p * s - 2.001945809e-08
    p = p * s + 1.110400535e-05
    p = p * s + 3.099169582e-03
    p = p * s + 1.307973117e-01
    p = p * s + 1.0
    q = s * 2.539161651e-04 + 2.447613515e-02
    q = q * s + 4.641305804e-01
    q = q * s + 1.0
    return tl.minimum(tl.maximum(z * p / q, -1.0), 1.0)


FUNCTIONS = {"tanh": 0, "isru": 1}


@triton.jit
def _value(z, KF, FN: tl.constexpr):
    if FN == 0:
        t = _tanh(z)
    else:
        t = z / tl.sqrt(1.0 + KF * z * z)
    return t


@triton.jit
def _value_slope(z, KF, FN: tl.constexpr):
    """f(z) and f'(z): tanh, 1 − tanh²; or isru z·r, r³ with r = 1/√(1 + k·z²)."""
    if FN == 0:
        t = _tanh(z)
        s = 1.0 - t * t
    else:
        r = 1.0 / tl.sqrt(1.0 + KF * z * z)
        t = z * r
        s = r * r * r
    return t, s


@triton.jit
def _params(A, G, B, idx, mask, A_PER_C: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    # a scalar α is read through idx * 0 so that every parameter is a vector of the same shape
    a = tl.load(A + (idx if A_PER_C else idx * 0), mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + idx, mask=mask, other=0.0).to(tl.float32) if HAS_W else a * 0.0 + 1.0
    b = tl.load(B + idx, mask=mask, other=0.0).to(tl.float32) if HAS_B else a * 0.0
    return a, g, b


@triton.jit
def _forward(X, Y, A, G, B, R, K, C, KF, ON_COLS: tl.constexpr, A_PER_C: tl.constexpr, HAS_W: tl.constexpr,
             HAS_B: tl.constexpr, FN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask, cmask = rows < R, cols < K
    if ON_COLS:
        a, g, b = _params(A, G, B, cols, cmask, A_PER_C, HAS_W, HAS_B)
        a, g, b = a[None, :], g[None, :], b[None, :]
    else:
        a, g, b = _params(A, G, B, rows % C, rmask, A_PER_C, HAS_W, HAS_B)
        a, g, b = a[:, None], g[:, None], b[:, None]
    offs = rows.to(tl.int64)[:, None] * K + cols[None, :]
    mask = rmask[:, None] & cmask[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, (g * _value(a * x, KF, FN) + b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_tile(DY, X, DX, offs, mask, a, g, KF, FN: tl.constexpr):
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    t, s = _value_slope(a * x, KF, FN)
    tl.store(DX + offs, (dy * g * a * s).to(DX.dtype.element_ty), mask=mask)
    return dy * t, dy, dy * x * s  # masked lanes have dy = 0: they add nothing


@triton.jit
def _backward_cols(DY, X, DX, A, G, PART, R, K, KF, rows_per_prog, n_prog, A_PER_C: tl.constexpr,
                   HAS_W: tl.constexpr, FN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Channels-last: program (i, j) sums rows [i·rows_per_prog, …) of columns block j into PART[:, i, cols]."""
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cmask = cols < K
    a, g, _ = _params(A, G, G, cols, cmask, A_PER_C, HAS_W, False)
    a, g = a[None, :], g[None, :]
    acc_t = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    acc_dy = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    acc_a = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    start = tl.program_id(0) * rows_per_prog
    for r in range(start, start + rows_per_prog, BLOCK_R):
        rows = r + tl.arange(0, BLOCK_R)
        offs = rows.to(tl.int64)[:, None] * K + cols[None, :]
        mask = (rows < R)[:, None] & cmask[None, :]
        d_t, d_dy, d_a = _backward_tile(DY, X, DX, offs, mask, a, g, KF, FN)
        acc_t += d_t
        acc_dy += d_dy
        acc_a += d_a
    out = PART + tl.program_id(0) * K + cols
    tl.store(out, tl.sum(acc_t, axis=0), mask=cmask)
    tl.store(out + n_prog * K, tl.sum(acc_dy, axis=0), mask=cmask)
    tl.store(out + 2 * n_prog * K, tl.sum(acc_a, axis=0), mask=cmask)


@triton.jit
def _backward_rows(DY, X, DX, A, G, PART, R, K, C, KF, cols_per_prog, n_prog, A_PER_C: tl.constexpr,
                   HAS_W: tl.constexpr, FN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Channels-first: program (i, j) sums columns [j·cols_per_prog, …) of planes block i into PART[:, j, rows]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    a, g, _ = _params(A, G, G, rows % C, rmask, A_PER_C, HAS_W, False)
    a, g = a[:, None], g[:, None]
    acc_t = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    acc_dy = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    acc_a = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    start = tl.program_id(1) * cols_per_prog
    for k in range(start, start + cols_per_prog, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        offs = rows.to(tl.int64)[:, None] * K + cols[None, :]
        mask = rmask[:, None] & (cols < K)[None, :]
        d_t, d_dy, d_a = _backward_tile(DY, X, DX, offs, mask, a, g, KF, FN)
        acc_t += d_t
        acc_dy += d_dy
        acc_a += d_a
    out = PART + tl.program_id(1) * R + rows
    tl.store(out, tl.sum(acc_t, axis=1), mask=rmask)
    tl.store(out + n_prog * R, tl.sum(acc_dy, axis=1), mask=rmask)
    tl.store(out + 2 * n_prog * R, tl.sum(acc_a, axis=1), mask=rmask)


def _matrix(x: torch.Tensor, channels_last: bool):
    """(x with a layout the kernels walk, R, K, C, parameters-on-columns)."""
    if not channels_last and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        C = x.shape[1]  # NCHW stored NHWC: run as channels-last rows without a copy
        return x, x.numel() // C, C, C, True
    x = x.contiguous()
    C = x.shape[-1] if channels_last else x.shape[1]
    if channels_last:
        return x, x.numel() // C, C, C, True
    R = x.shape[0] * C
    return x, R, x.numel() // max(R, 1), C, False


def _blocks(R: int, K: int, long_axis_cols: bool):
    BLOCK_K = min(triton.next_power_of_2(max(K, 1)), TILE if long_axis_cols else 512)
    return max(1, TILE // BLOCK_K), BLOCK_K


def _programs(device: torch.device) -> int:
    """Programs worth launching for a reduction: a few per streaming multiprocessor."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def forward(x, alpha, weight, bias, channels_last: bool, out_dtype: torch.dtype, fn: str = "tanh",
            k: float = 0.0) -> torch.Tensor:
    x, R, K, C, on_cols = _matrix(x, channels_last)
    y = torch.empty_like(x, dtype=out_dtype)
    if x.numel() == 0:
        return y
    BLOCK_R, BLOCK_K = _blocks(R, K, not on_cols)
    grid = (triton.cdiv(R, BLOCK_R), triton.cdiv(K, BLOCK_K))
    _forward[grid](x, y, alpha, weight if weight is not None else alpha, bias if bias is not None else alpha,
                   R, K, C, float(k), ON_COLS=on_cols, A_PER_C=alpha.numel() > 1, HAS_W=weight is not None,
                   HAS_B=bias is not None, FN=FUNCTIONS[fn], BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K)
    return y


def backward(dy, x, alpha, weight, channels_last: bool, fn: str = "tanh", k: float = 0.0):
    """dx and the fp32 per-channel sums [3, C]: dγ, dβ, dα."""
    x, R, K, C, on_cols = _matrix(x, channels_last)
    dy = dy.contiguous(memory_format=torch.channels_last if not x.is_contiguous() else torch.contiguous_format)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx, torch.zeros(3, C, device=x.device)
    BLOCK_R, BLOCK_K = _blocks(R, K, not on_cols)
    meta = dict(A_PER_C=alpha.numel() > 1, HAS_W=weight is not None, FN=FUNCTIONS[fn], BLOCK_R=BLOCK_R,
                BLOCK_K=BLOCK_K)
    w = weight if weight is not None else alpha
    if on_cols:
        col_blocks = triton.cdiv(K, BLOCK_K)
        n_prog = max(1, min(triton.cdiv(_programs(x.device), col_blocks), triton.cdiv(R, BLOCK_R)))
        per_prog = triton.cdiv(triton.cdiv(R, n_prog), BLOCK_R) * BLOCK_R
        n_prog = triton.cdiv(R, per_prog)
        part = torch.empty(3, n_prog, K, device=x.device, dtype=torch.float32)
        _backward_cols[(n_prog, col_blocks)](dy, x, dx, alpha, w, part, R, K, float(k), per_prog, n_prog, **meta)
        sums = part.sum(1)
    else:
        row_blocks = triton.cdiv(R, BLOCK_R)
        n_prog = max(1, min(triton.cdiv(_programs(x.device), row_blocks), triton.cdiv(K, BLOCK_K)))
        per_prog = triton.cdiv(triton.cdiv(K, n_prog), BLOCK_K) * BLOCK_K
        n_prog = triton.cdiv(K, per_prog)
        part = torch.empty(3, n_prog, R, device=x.device, dtype=torch.float32)
        _backward_rows[(row_blocks, n_prog)](dy, x, dx, alpha, w, part, R, K, C, float(k), per_prog, n_prog,
                                             **meta)
        sums = part.sum(1).view(3, R // C, C).sum(1)
    if weight is not None:
        sums[2] *= weight.float()  # Σ dy·γ·x·f'(αx) = γ · Σ dy·x·f'(αx)
    return dx, sums
