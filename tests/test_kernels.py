"""The fused DyT kernels against the eager formula: forward and every gradient, both layouts, fp32/bf16/fp16.

The C++ kernel is built once per machine into torch's extension cache (about a minute the first time) and
shared by every test and process afterwards. The Triton kernels run on the CPU through Triton's interpreter
in a subprocess (TRITON_INTERPRET=1 must be set before triton is imported).
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import dyt
from dyt import DynamicTanh, convert
from dyt.functional import pointwise_norm
from dyt.kernels import cpu, ops
from tests.models import tiny_vit

ROOT = Path(__file__).resolve().parents[1]
RTOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
# (shape, channels_last): C = 6 and 40 are not multiples of the vector width, 300 is past the period limit;
# the last layout case is NCHW with a small plane
CASES = [((3, 5, 6), True), ((2, 7, 40), True), ((4, 300), True), ((2, 6, 3, 5), False), ((2, 4, 9, 7), False)]
VARIANTS = {"affine": (True, True, False), "no-bias": (True, False, False), "no-affine": (False, False, False),
            "alpha-per-channel": (True, True, True)}


@pytest.fixture(scope="module")
def built():
    """The C++ kernel, built (or loaded from the cache); skip only when this machine has no compiler."""
    if cpu.available():
        return cpu.extension()
    if shutil.which(os.environ.get("CXX", "c++")):
        pytest.fail("a C++ compiler is here but the dyt CPU kernel did not build (see the log)")
    pytest.skip("no C++ compiler: the CPU kernel cannot be built here")


def make_inputs(shape, channels_last, variant, dtype, param_dtype=None, seed=0):
    """x and (α, γ, β), the parameters in x's dtype unless said otherwise (a model cast to bf16)."""
    affine, bias, per_channel = VARIANTS[variant]
    gen = torch.Generator().manual_seed(seed)
    C = shape[-1] if channels_last else shape[1]
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    alpha = torch.rand(C if per_channel else 1, generator=gen) + 0.3
    weight = torch.randn(C, generator=gen) if affine else None
    beta = torch.randn(C, generator=gen) if bias else None
    return x, *(None if p is None else p.to(param_dtype or dtype) for p in (alpha, weight, beta))


def run(x, params, channels_last, kernel, dy_seed=1):
    """Output and the gradients of (x, α, γ, β) for one call, dy random."""
    leaves = [x.detach().clone().requires_grad_()] + [
        None if p is None else p.detach().clone().requires_grad_() for p in params]
    y = dyt.dynamic_tanh(*leaves, channels_last=channels_last, kernel=kernel)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.dtype)
    y.backward(dy)
    return [y] + [None if t is None else t.grad for t in leaves]


def reference(x, params, channels_last, dy_seed=1):
    """The eager formula in float64 on the same (rounded) inputs, and the magnitude of the terms behind each
    result, which sets the scale of fp32 rounding (1 − t² loses digits near saturation; a sum, in cancelling)."""
    leaves = [t if t is None else t.detach().double().requires_grad_() for t in (x, *params)]
    y = pointwise_norm(*leaves, fn="tanh", channels_last=channels_last)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(x.dtype).double()
    y.backward(dy)
    values = [y.detach()] + [None if t is None else t.grad for t in leaves]

    x, alpha, weight, bias = [None if t is None else t.detach().abs() for t in leaves]
    view = (lambda t: t) if channels_last else (lambda t: t.reshape(t.shape + (1,) * (x.dim() - 2)))
    dims = [d for d in range(x.dim()) if d != (x.dim() - 1 if channels_last else 1)]
    gamma = view(weight) if weight is not None else 1.0
    t = torch.tanh(view(alpha) * x)
    d_alpha = (dy.abs() * gamma * x).sum(dims)
    magnitudes = [gamma * t + (view(bias) if bias is not None else 0), dy.abs() * gamma * view(alpha),
                  d_alpha.sum().reshape(alpha.shape) if alpha.numel() == 1 else d_alpha,
                  (dy.abs() * t).sum(dims), dy.abs().sum(dims)]
    return values, magnitudes


def assert_matches(got, values, magnitudes, rtol, names=("y", "dx", "dα", "dγ", "dβ")):
    for name, a, v, m in zip(names, got, values, magnitudes):
        assert (a is None) == (v is None), name
        if a is None:
            continue
        assert a.shape == v.shape, name
        err = (a.double() - v).abs()
        # + half of fp16's subnormal spacing: a tiny gradient rounds to it whatever the precision before
        bound = rtol * (m + 1e-6) + (2.0 ** -25 if a.dtype == torch.float16 else 0.0)
        assert (err <= bound).all(), f"{name}: error {err.max():.3g} over tolerance (worst ratio {(err / bound).max():.3g})"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape,channels_last", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_kernel_matches_eager_formula(built, shape, channels_last, variant, dtype):
    x, *params = make_inputs(shape, channels_last, variant, dtype)
    got = run(x, params, channels_last, "cpu")
    values, magnitudes = reference(x, params, channels_last)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    assert_matches(got, values, magnitudes, RTOL[dtype])


def test_output_dtype_follows_eager_promotion(built):
    """bf16 activations with fp32 parameters (autocast-style training) give fp32, as the formula does."""
    x, *params = make_inputs((4, 8, 48), True, "affine", torch.bfloat16, param_dtype=torch.float32)
    got = run(x, params, True, "cpu")
    eager = run(x, params, True, "eager")
    assert got[0].dtype == eager[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16
    values, magnitudes = reference(x, params, True)
    assert_matches(got, values, magnitudes, 1e-5, names=("y",))  # fp32 output: no bf16 rounding
    assert_matches(got[1:], values[1:], magnitudes[1:], RTOL[torch.bfloat16], names=("dx", "dα", "dγ", "dβ"))


def test_layouts_in_memory(built):
    """NCHW stored channels-last (NHWC) stays so, without a copy; a transposed view works too."""
    x, *params = make_inputs((2, 6, 3, 5), False, "affine", torch.float32)
    x = x.contiguous(memory_format=torch.channels_last)
    got = run(x, params, False, "cpu")
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert_matches(got, *reference(x, params, False), 1e-5)

    x, *params = make_inputs((5, 4, 40), True, "affine", torch.float32)
    x = x.transpose(0, 1)
    assert_matches(run(x, params, True, "cpu"), *reference(x, params, True), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,order", [((3, 40, 37), (0, 2, 1)), ((2, 19, 5, 4), (0, 2, 3, 1))])
def test_channels_last_tensors_stored_channels_first(built, shape, order, dtype):
    """[B, S, C] stored as [B, C, S] (timm ViT's residual stream, ConvNeXt's permuted blocks) is read as it
    lies: the same values as from a contiguous copy, a contiguous output."""
    stored, *params = make_inputs(shape, False, "affine", dtype)
    x = stored.permute(*order)
    assert not x.is_contiguous()
    got = run(x, params, True, "cpu")
    assert got[0].is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(got[:2], run(x.contiguous(), params, True, "cpu")[:2]))
    assert_matches(got, *reference(x, params, True), RTOL[dtype])


def test_gradients_are_deterministic_across_thread_counts(built):
    x, *params = make_inputs((64, 33, 40), True, "affine", torch.float32)  # many partial-sum blocks
    planes = make_inputs((8, 24, 12, 12), False, "affine", torch.float32)
    stored = make_inputs((64, 40, 33), False, "affine", torch.float32)  # [B, S, C] stored as [B, C, S]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, max(2, threads), 1):
            torch.set_num_threads(n)
            results.append(run(x, params, True, "cpu") + run(planes[0], planes[1:], False, "cpu")
                           + run(stored[0].transpose(1, 2), stored[1:], True, "cpu"))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other) if a is not None)


def test_formula_backend_matches_eager():
    """The fallback used where no kernel can be built computes the same results."""
    for shape, channels_last in CASES[:1] + CASES[3:4]:
        x, *params = make_inputs(shape, channels_last, "affine", torch.float32)
        leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
        y = ops.fused(*leaves, channels_last, "torch")
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
        got = [y] + [t.grad for t in leaves]
        assert_matches(got, *reference(x.detach(), params, channels_last), 1e-5)


def test_custom_op_registration(built):
    """Schema, fake (meta) version and autograd of the op that torch.compile sees."""
    for channels_last, shape in ((True, (3, 4, 40)), (False, (2, 6, 3, 5))):
        x, alpha, weight, bias = make_inputs(shape, channels_last, "affine", torch.float32)
        args = (x.requires_grad_(), alpha.requires_grad_(), weight.requires_grad_(), bias, channels_last, "cpu")
        torch.library.opcheck(ops.dynamic_tanh, args, test_utils=("test_schema", "test_autograd_registration",
                                                                  "test_faketensor"))


@pytest.mark.parametrize("channels_last", [True, False])
def test_compiled_graph_runs_the_fused_op(built, channels_last):
    """fullgraph=True: dynamo traces the layer through the custom op (no graph break), forward and backward."""
    torch.manual_seed(0)
    layer = DynamicTanh(8, 0.7, channels_last, kernel="cpu")
    with torch.no_grad():
        layer.weight.normal_(), layer.bias.normal_()
    x = torch.randn((4, 5, 8) if channels_last else (2, 8, 3, 3), requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    compiled_grads = [x.grad] + [p.grad for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    expected = layer(x)
    expected.square().sum().backward()
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    for a, b in zip(compiled_grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_kernel_switch(built):
    x = torch.randn(2, 3, 8, requires_grad=True)

    def backward_node(layer):
        return type(layer(x).grad_fn).__name__

    eager, fused = DynamicTanh(8, kernel="eager"), DynamicTanh(8, kernel="cpu")
    assert backward_node(eager) == "AddBackward0"  # the formula's last op
    assert backward_node(fused) != "AddBackward0"
    assert backward_node(DynamicTanh(8)) == backward_node(fused)  # "auto" picks the fused kernel on CPU
    assert "kernel=eager" in repr(eager)
    try:
        dyt.set_default_kernel("eager")
        assert backward_node(DynamicTanh(8)) == "AddBackward0"
        assert backward_node(fused) != "AddBackward0"  # a layer's own kernel wins
    finally:
        dyt.set_default_kernel("auto")
    with pytest.raises(ValueError, match="kernel must be one of"):
        DynamicTanh(8, kernel="cuda")
    # float64 (gradcheck) has no fused kernel: it runs the formula
    x64 = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    assert type(DynamicTanh(8, kernel="cpu", dtype=torch.float64)(x64).grad_fn).__name__ == "AddBackward0"


def test_convert_passes_the_kernel_through():
    model = tiny_vit()
    convert(model, "dyt", kernel="eager")
    layers = [m for m in model.modules() if isinstance(m, DynamicTanh)]
    assert len(layers) == 5 and all(m.kernel == "eager" for m in layers)
    with pytest.raises(ValueError, match="kernel must be one of"):
        convert(tiny_vit(), "dyt", kernel="fast")


def _python(code: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("compiler", ["false", "no-such-compiler"])
def test_without_a_compiler_it_falls_back_with_one_log_line(tmp_path, compiler):
    """A toolchain that fails, or none at all: the formula runs instead, and the log says so once."""
    code = """
        import torch
        from dyt import DynamicTanh
        from dyt.functional import pointwise_norm
        layer = DynamicTanh(8, 0.7)
        x = torch.randn(3, 4, 8, requires_grad=True)
        for _ in range(3):
            y = layer(x)
        y.sum().backward()
        torch.testing.assert_close(y, pointwise_norm(x, layer.alpha, layer.weight, layer.bias))
        assert x.grad is not None and layer.alpha.grad is not None
        print("OK")
    """
    result = _python(code, {"CXX": compiler, "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "using the unfused formula" in line]
    assert len(lines) == 1, result.stderr[-3000:]


TRITON_CASES = [  # big enough that the backward reduction spans several programs
    ((600, 8), True, "affine", torch.float32),
    ((3, 7, 40), True, "alpha-per-channel", torch.float32),
    ((2, 3, 3000), False, "affine", torch.float32),
    ((2, 6, 3, 5), False, "no-bias", torch.float32),
    ((4, 5, 24), True, "no-affine", torch.bfloat16),
    ((2, 6, 4, 5), False, "affine", torch.float16),
]


def test_triton_kernels_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    inputs = [make_inputs(shape, cl, variant, dtype) for shape, cl, variant, dtype in TRITON_CASES]
    torch.save(inputs, tmp_path / "inputs.pt")
    code = f"""
        import torch
        from tests.test_kernels import TRITON_CASES, run
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        outputs = [run(x, params, cl, "triton") for (x, *params), (_, cl, _, _) in zip(inputs, TRITON_CASES)]
        torch.save(outputs, {str(tmp_path / 'outputs.pt')!r})
    """
    result = _python(code, {"TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    for (x, *params), (_, cl, _, dtype), got in zip(inputs, TRITON_CASES, outputs):
        assert got[0].dtype == dtype
        assert_matches(got, *reference(x, params, cl), RTOL[dtype])


# ---------------------------------------------------------------- DyISRU through the same kernels

ISRU_CASES = [((3, 5, 6), True), ((4, 300), True), ((2, 6, 3, 5), False), ((3, 40, 37), "stored-channels-first")]


def run_pointwise(x, params, channels_last, kernel, fn="isru", dy_seed=1):
    """Output and the gradients of (x, α, γ, β) for one call of `dispatch.pointwise`, dy random."""
    from dyt.kernels import dispatch

    leaves = [x.detach().clone().requires_grad_()] + [
        None if p is None else p.detach().clone().requires_grad_() for p in params]
    C = x.shape[-1] if channels_last else x.shape[1]
    y = dispatch.pointwise(*leaves, fn=fn, width=C, channels_last=channels_last, kernel=kernel)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(dy_seed)).to(y.dtype)
    y.backward(dy)
    return [y] + [None if t is None else t.grad for t in leaves]


def assert_close_to_float64(got, x, params, channels_last, tol, fn="isru"):
    """Each result against the float64 formula on the same rounded inputs, relative to its largest value."""
    reference = run_pointwise(x.double(), [None if p is None else p.double() for p in params], channels_last, "eager",
                              fn=fn)
    for name, a, b in zip(("y", "dx", "dα", "dγ", "dβ"), got, reference):
        assert (a is None) == (b is None), name
        if a is not None:
            err = (a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)
            assert err <= tol, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", ["affine", "no-affine", "alpha-per-channel"])
@pytest.mark.parametrize("shape,layout", ISRU_CASES)
def test_cpu_kernel_computes_dyisru(built, shape, layout, variant, dtype):
    """f(z) = z/√(1 + z²/C) and f'(z) = (1 + z²/C)^(-3/2) in the fused kernel: every layout and gradient."""
    channels_last = layout is not False
    x, *params = make_inputs(shape, False if layout == "stored-channels-first" else layout, variant, dtype)
    if layout == "stored-channels-first":
        x = x.transpose(1, 2)  # [B, S, C] stored as [B, C, S]
    x = x * 4  # well into the curved part at C = 6 … 300
    got = run_pointwise(x, params, channels_last, "cpu")
    eager = run_pointwise(x, params, channels_last, "eager")
    assert type(got[0].grad_fn).__name__ != type(eager[0].grad_fn).__name__  # the fused op ran, not the formula
    # bf16: dα, one sum of terms of both signs, rounded to bf16 (2^-8) after some cancellation
    assert_close_to_float64(got, x, params, channels_last, 2e-6 if dtype == torch.float32 else 3e-2)


def test_dyisru_custom_op_and_compiled_graph(built):
    from dyt import PointwiseNorm

    x, alpha, weight, bias = make_inputs((3, 4, 40), True, "affine", torch.float32)
    args = (x.requires_grad_(), alpha.requires_grad_(), weight.requires_grad_(), bias, True, "cpu", "isru", 1 / 40)
    torch.library.opcheck(ops.pointwise, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.manual_seed(0)
    layer = PointwiseNorm(8, 0.7, False, fn="isru", kernel="cpu")
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    y.sum().backward()
    assert x.grad is not None and layer.alpha.grad is not None


def test_dyisru_triton_kernels_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    cases = [((300, 8), True, "affine", torch.float32), ((2, 3, 700), False, "alpha-per-channel", torch.float32),
             ((2, 5, 24), True, "no-affine", torch.bfloat16)]  # several programs in each reduction
    inputs = [make_inputs(shape, cl, variant, dtype) for shape, cl, variant, dtype in cases]
    inputs = [(x * 4, *params) for x, *params in inputs]
    torch.save((inputs, [c[1] for c in cases]), tmp_path / "inputs.pt")
    code = f"""
        import torch
        from tests.test_kernels import run_pointwise
        inputs, layouts = torch.load({str(tmp_path / 'inputs.pt')!r})
        outputs = [run_pointwise(x, params, cl, "triton") for (x, *params), cl in zip(inputs, layouts)]
        torch.save(outputs, {str(tmp_path / 'outputs.pt')!r})
    """
    result = _python(code, {"TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for (x, *params), (_, cl, _, dtype), got in zip(inputs, cases, torch.load(tmp_path / "outputs.pt")):
        assert got[0].dtype == dtype
        assert_close_to_float64(got, x, params, cl, 2e-6 if dtype == torch.float32 else 3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the Triton kernels compiled for it)")
@pytest.mark.parametrize("fn", ["tanh", "isru"])
def test_triton_kernels_on_cuda(fn):
    """The compiled Triton kernels on a GPU, both functions, both layouts (NCHW stored NHWC too), fp32 and bf16."""
    cases = [((64, 197, 768), True, torch.float32), ((8, 128, 28, 28), False, torch.bfloat16),
             ((4, 4096, 40), True, torch.bfloat16)]
    for shape, channels_last, dtype in cases:
        x, *params = make_inputs(shape, channels_last, "affine", dtype)
        x = x * 4
        if not channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        got = run_pointwise(x.cuda(), [p.cuda() for p in params], channels_last, "triton", fn=fn)
        assert_close_to_float64([None if t is None else t.cpu() for t in got], x, params, channels_last,
                                2e-6 if dtype == torch.float32 else 3e-2, fn=fn)
