import math

import pytest
import torch
import torch.nn.functional as F

from dyt import Derf, DynamicHardTanh, DynamicSigmoid, DynamicTanh

SQUASH = {DynamicTanh: torch.tanh, DynamicHardTanh: F.hardtanh, DynamicSigmoid: torch.sigmoid, Derf: torch.erf}
LAYOUTS = [True, False]
VARIANTS = [  # (elementwise_affine, bias, learn_alpha, alpha_per_channel)
    (True, True, True, False),
    (True, False, True, False),
    (False, False, True, False),
    (True, True, False, False),
    (True, True, True, True),
]


def _input(channels_last, dtype=torch.float32):
    shape = (2, 5, 6) if channels_last else (2, 6, 3, 4)
    return torch.randn(shape, dtype=dtype) * 3


def _randomise(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + 0.7)


def _formula(layer, cls, x, channels_last):
    """The layer's definition written out independently of dyt.functional."""
    view = (lambda t: t) if channels_last else (lambda t: t.reshape(-1, 1, 1))
    alpha = layer.alpha if layer.alpha.numel() == 1 else view(layer.alpha)
    z = alpha * x + (layer.shift if cls is Derf else 0)
    y = SQUASH[cls](z)
    if layer.weight is not None:
        y = y * view(layer.weight)
    if layer.bias is not None:
        y = y + view(layer.bias)
    return y


@pytest.mark.parametrize("cls", list(SQUASH))
@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_equals_formula(cls, channels_last, variant):
    affine, bias, learn_alpha, per_channel = variant
    torch.manual_seed(0)
    layer = cls(6, 0.7, channels_last, affine, bias, learn_alpha=learn_alpha, alpha_per_channel=per_channel)
    _randomise(layer)
    x = _input(channels_last)
    torch.testing.assert_close(layer(x), _formula(layer, cls, x, channels_last), rtol=1e-6, atol=1e-6)
    assert (layer.weight is None) == (not affine)
    assert (layer.bias is None) == (not (affine and bias))
    assert layer.alpha.numel() == (6 if per_channel else 1)
    assert layer.alpha.requires_grad == learn_alpha


def _gradcheck(layer, channels_last) -> None:
    """torch's gradcheck of the layer's output against its input and every parameter (randomised, float64)."""
    _randomise(layer)
    names = [name for name, _ in layer.named_parameters()]
    x = _input(channels_last, torch.float64).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def through_layer(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(through_layer, (x, *params))


@pytest.mark.parametrize("cls", list(SQUASH))
@pytest.mark.parametrize("channels_last", LAYOUTS)
def test_gradients_pass_gradcheck(cls, channels_last):
    torch.manual_seed(1)
    layer = cls(6, 0.6, channels_last, dtype=torch.float64)
    _gradcheck(layer, channels_last)


def test_layer_gradients_reach_every_parameter():
    layer = Derf(6, channels_last=False)
    layer(_input(False)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_defaults_and_repr():
    layer = DynamicTanh(8)
    assert layer.alpha.item() == 0.5 and layer.weight.eq(1).all() and layer.bias.eq(0).all()
    text = repr(DynamicTanh(8, alpha_init=0.8, channels_last=False))
    assert "8" in text and "alpha_init=0.8" in text and "channels_first" in text
    assert "elementwise_affine=False" in repr(DynamicTanh(8, elementwise_affine=False))
    assert "bias=False" in repr(DynamicTanh(8, bias=False))
    assert Derf(4).shift.item() == 0.0 and Derf(4).alpha.item() == 0.5


def test_alpha_must_be_positive():
    with pytest.raises(ValueError, match="alpha_init must be > 0"):
        DynamicTanh(4, alpha_init=0.0)


def test_device_and_dtype_are_honoured():
    layer = DynamicTanh(4, device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in layer.parameters())


def test_timm_builds_the_layer_through_norm_layer():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=3,
                              norm_layer=DynamicTanh)
    assert sum(isinstance(m, DynamicTanh) for m in model.modules()) == 5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


# ---------------------------------------------------------------- DyISRU, and the point-wise registry


@pytest.mark.parametrize("channels_last", LAYOUTS)
@pytest.mark.parametrize("kernel", ["eager", "auto"])
def test_dyisru_is_sqrt_c_x_over_sqrt_beta_plus_x_squared(channels_last, kernel):
    """arXiv 2503.21708: DyISRU(x) = √C·x/√(β + x²), with its scalar stored as α = √(C/β); bounded by ±√C."""
    from dyt import PointwiseNorm

    torch.manual_seed(2)
    layer = PointwiseNorm(6, 0.7, channels_last, fn="isru", kernel=kernel)
    _randomise(layer)
    x = _input(channels_last) * 5
    C = 6
    beta = C / layer.alpha ** 2
    view = (lambda t: t) if channels_last else (lambda t: t.reshape(-1, 1, 1))
    expected = view(layer.weight) * (math.sqrt(C) * x / torch.sqrt(beta + x * x)) + view(layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    bare = PointwiseNorm(6, 0.7, channels_last, elementwise_affine=False, fn="isru")
    huge = bare(torch.full((2, 6, 1, 1) if not channels_last else (2, 6), 1e6))
    torch.testing.assert_close(huge, torch.full_like(huge, math.sqrt(C)))  # RMSNorm's bound for one outlier
    assert "fn=isru" in repr(layer)


@pytest.mark.parametrize("channels_last", LAYOUTS)
def test_dyisru_gradients_pass_gradcheck(channels_last):
    from dyt import PointwiseNorm

    torch.manual_seed(3)
    layer = PointwiseNorm(6, 0.6, channels_last, fn="isru", dtype=torch.float64)
    _gradcheck(layer, channels_last)


def test_a_new_pointwise_function_is_one_function_and_one_config(tmp_path):
    """Registering f is all the library needs: the layer, convert and the run config take it by name."""
    from dyt import PointwiseNorm, convert
    from dyt.functional import POINTWISE, pointwise_function
    from dyt.train.config import validate
    from tests.models import tiny_vit
    from tests.test_trainer import compose_cfg

    try:
        pointwise_function("softsign_test")(F.softsign)
        model = tiny_vit()
        swaps = convert(model, {"type": "dyt", "fn": "softsign_test", "alpha_init": 0.5})
        layers = [m for m in model.modules() if isinstance(m, PointwiseNorm)]
        assert len(swaps.replaced) == len(layers) == 5 and {m.fn for m in layers} == {"softsign_test"}
        x = torch.randn(2, 4, 192)
        torch.testing.assert_close(layers[0](x), layers[0].weight * F.softsign(0.5 * x) + layers[0].bias)
        validate(compose_cfg("task=vit", "norm=dyt", "norm.fn=softsign_test"))  # the config accepts the name
        assert convert(model, {"type": "dyt", "fn": "softsign_test"}).replaced == []  # idempotent
    finally:
        POINTWISE.pop("softsign_test", None)
    with pytest.raises(ValueError, match="dyt fn must be one of"):
        convert(tiny_vit(), {"type": "dyt", "fn": "softsign_test"})
