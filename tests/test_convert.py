import pytest
import timm
import torch
from torch import nn

from dyt import Derf, DynamicHardTanh, DynamicTanh, LayerNorm2d, auto_alpha, convert, param_groups
from tests.models import NextMonthRMSNorm, tiny_diffusers_dit, tiny_llama, tiny_vit, tiny_wav2vec2


def test_vit_every_layernorm_replaced():
    model = timm.create_model("vit_tiny_patch16_224")
    swaps = convert(model, "dyt")
    assert len(swaps.replaced) == 25 and not swaps.skipped
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    roles = [s.role for s in swaps]
    assert roles.count("attn") == 12 and roles.count("ffn") == 12 and roles[-1] == "final"


def test_convnext_layernorm2d_becomes_channels_first():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=7)
    n_ln2d = sum(type(m).__name__ == "LayerNorm2d" for m in model.modules())
    swaps = convert(model, "dyt")
    assert len(swaps.replaced) == n_ln2d > 10
    assert all(not s.channels_last for s in swaps)
    assert all(not m.channels_last for m in model.modules() if isinstance(m, DynamicTanh))
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_llama_rmsnorm_becomes_bias_free_dyt_with_role_alphas():
    model = tiny_llama()
    swaps = convert(model, "dyt", alpha_init={"attn": 0.8, "ffn": 0.2, "final": 0.3})
    assert len(swaps.replaced) == 5
    layers = model.model.layers
    for layer in layers:
        assert isinstance(layer.input_layernorm, DynamicTanh) and layer.input_layernorm.bias is None
        assert layer.input_layernorm.alpha.item() == pytest.approx(0.8)
        assert layer.post_attention_layernorm.alpha.item() == pytest.approx(0.2)
    assert model.model.norm.alpha.item() == pytest.approx(0.3)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 50)


def test_wav2vec2_keeps_and_reports_groupnorm():
    model = tiny_wav2vec2()
    swaps = convert(model, "dyt")
    assert [s.old for s in swaps.skipped] == ["GroupNorm"]
    assert isinstance(model.wav2vec2.feature_extractor.conv_layers[0].layer_norm, nn.GroupNorm)
    assert len(swaps.replaced) == 6
    assert "GroupNorm kept" in str(swaps)


def test_diffusers_dit_no_affine_norms_become_no_affine_dyt():
    model = tiny_diffusers_dit()
    swaps = convert(model, "dyt")
    assert len(swaps.replaced) == 5
    for m in model.modules():
        if isinstance(m, DynamicTanh):
            assert m.weight is None and m.bias is None
    assert {s.role for s in swaps} == {"attn", "ffn", "final"}
    out = model(torch.randn(1, 4, 8, 8), timestep=torch.tensor([3]), class_labels=torch.tensor([1])).sample
    assert out.shape == (1, 4, 8, 8)


@pytest.mark.parametrize("offset", [False, True])
def test_unlisted_rmsnorm_class_is_recognised_by_behaviour_and_keeps_its_gamma(offset):
    model = nn.Sequential(nn.Linear(8, 8), NextMonthRMSNorm(8, offset=offset))
    with torch.no_grad():
        model[1].weight.copy_(torch.linspace(-0.5, 0.5, 8))
    gamma = model[1].weight.detach().clone() + (1 if offset else 0)
    swaps = convert(model, "dyt")
    assert len(swaps.replaced) == 1 and swaps[0].old == "NextMonthRMSNorm"
    assert model[1].bias is None
    torch.testing.assert_close(model[1].weight.detach(), gamma)


def test_pretrained_gamma_and_beta_are_copied():
    norm = nn.LayerNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    model = nn.Sequential(norm)
    weight, bias = norm.weight.detach().clone(), norm.bias.detach().clone()
    convert(model, "derf")
    assert isinstance(model[0], Derf)
    torch.testing.assert_close(model[0].weight.detach(), weight)
    torch.testing.assert_close(model[0].bias.detach(), bias)


def test_batchnorm_and_gated_norms_are_left_alone():
    class GatedRMSNorm(NextMonthRMSNorm):  # as Mamba2's: replacing it would drop the gate
        def forward(self, x, gate=None):
            return super().forward(x if gate is None else x * gate)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(6), GatedRMSNorm(6))
    model(torch.randn(1, 3, 5, 5))
    swaps = convert(model, "dyt")
    assert not swaps.replaced and [s.old for s in swaps.skipped] == ["BatchNorm2d", "GatedRMSNorm"]


def test_non_norm_parameters_identical_from_one_seed():
    torch.manual_seed(3)
    plain = tiny_vit()
    torch.manual_seed(3)
    converted = tiny_vit()
    swaps = convert(converted, "dyt")
    norm_paths = tuple(s.path + "." for s in swaps)
    converted_state = converted.state_dict()
    others = {k: v for k, v in plain.state_dict().items() if not k.startswith(norm_paths)}
    assert others and all(torch.equal(v, converted_state[k]) for k, v in others.items())


def test_state_dict_round_trips():
    torch.manual_seed(0)
    model = tiny_vit()
    convert(model, "dyt", alpha_init=0.7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DynamicTanh):
                m.alpha.fill_(1.3)
    other = tiny_vit()
    convert(other, "dyt")
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval(), other.eval()
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)


def test_compiled_converted_model_matches_eager():
    torch.manual_seed(0)
    model = tiny_vit().eval()
    convert(model, "dyt")
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_convert_is_idempotent():
    model = tiny_vit()
    first = convert(model, "dyt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    second = convert(model, "dyt")
    assert len(first.replaced) == 5 and not second.replaced
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_any_norm_becomes_any_other():
    model = timm.create_model("convnext_atto")
    convert(model, {"type": "dyt", "fn": "hardtanh", "alpha_init": 0.9})
    assert any(isinstance(m, DynamicHardTanh) and m.alpha.item() == pytest.approx(0.9) for m in model.modules())
    convert(model, "layernorm")
    assert sum(isinstance(m, LayerNorm2d) for m in model.modules()) > 10
    convert(model, "rmsnorm")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    swaps = convert(model, "identity")
    assert len(swaps.replaced) > 10 and model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_options_override_and_keep_device_dtype():
    model = tiny_llama().to(torch.bfloat16)
    convert(model, "dyt", alpha_init=1.0, bias=True, alpha_per_channel=True)
    layer = model.model.norm
    assert layer.bias is not None and layer.alpha.shape == (32,) and layer.weight.dtype == torch.bfloat16


def test_meta_device_model_converts():
    with torch.device("meta"):
        model = tiny_llama()
    swaps = convert(model, "dyt", alpha_init="auto")
    assert len(swaps.replaced) == 5 and model.model.norm.weight.is_meta


def test_unknown_norm_type_fails_with_one_line_listing_known():
    with pytest.raises(ValueError) as err:
        convert(tiny_vit(), "batchtanh")
    message = str(err.value)
    assert "\n" not in message and "batchtanh" in message
    assert all(name in message for name in ("dyt", "derf", "layernorm", "rmsnorm", "identity"))


def test_unknown_option_and_bad_alpha_fail_clearly():
    with pytest.raises(ValueError, match="alpha_innit"):
        convert(tiny_vit(), "dyt", alpha_innit=1.0)
    with pytest.raises(ValueError, match="alpha_init must be > 0"):
        convert(tiny_vit(), "dyt", alpha_init=-1)
    with pytest.raises(ValueError, match="final"):
        convert(tiny_llama(), "dyt", alpha_init={"attn": 1.0, "ffn": 0.5})


def test_auto_alpha_follows_the_paper_table():
    assert auto_alpha(4096, "attn") == pytest.approx(0.8) and auto_alpha(4096, "ffn") == pytest.approx(0.2)
    assert auto_alpha(5120, "attn") == pytest.approx(0.6) and auto_alpha(8192, "final") == pytest.approx(0.05)
    assert auto_alpha(256, "attn") == 1.0 and auto_alpha(65536, "ffn") == pytest.approx(0.05)  # clamped
    between = auto_alpha(2896, "ffn")  # ≈ √(2048·4096): halfway in log-width
    assert between == pytest.approx(0.35, abs=0.01)


def test_roles_override_and_exclude():
    model = tiny_wav2vec2(do_stable_layer_norm=True, feat_extract_norm="layer")
    swaps = convert(model, "dyt", alpha_init={"attn": 1.0, "ffn": 0.5, "final": 0.25},
                    roles={r"encoder\.layer_norm$": "final"}, exclude=[r"feature_extractor"])
    by_path = {s.path: s for s in swaps}
    assert by_path["wav2vec2.encoder.layer_norm"].alpha_init == 0.25
    assert all(s.skipped for p, s in by_path.items() if "feature_extractor" in p)


def test_swap_table_is_compact():
    text = str(convert(timm.create_model("vit_tiny_patch16_224"), "dyt"))
    assert "blocks.*.norm1 ×12" in text and "25 replaced, 0 skipped" in text
    assert len(text.splitlines()) == 5


def test_param_groups_keep_dyt_parameters_out_of_decay_unless_asked():
    model = tiny_vit()
    convert(model, "dyt")
    alphas = {id(m.alpha) for m in model.modules() if isinstance(m, DynamicTanh)}
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert alphas <= {id(p) for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert id(model.pos_embed) in {id(p) for p in no_decay["params"]}
    decay, _ = param_groups(model, 0.1, decay_alpha=True)
    assert alphas <= {id(p) for p in decay["params"]}


def test_param_groups_rules_decay_everything_or_follow_the_dna_codebases():
    model = tiny_vit()
    convert(model, "dyt")
    decay, no_decay = param_groups(model, 0.1, no_decay=())  # fms-fsdp, fairseq: every parameter
    assert not no_decay["params"] and len(decay["params"]) == len(list(model.parameters()))
    decay, no_decay = param_groups(model, 0.1, no_decay=("bias", "norm", "embedding", "listed"))
    dyt = [m for m in model.modules() if isinstance(m, DynamicTanh)]
    decayed, kept = {id(p) for p in decay["params"]}, {id(p) for p in no_decay["params"]}
    assert all(id(m.alpha) in decayed and id(m.weight) in decayed and id(m.bias) in kept for m in dyt)
    with pytest.raises(ValueError, match="unknown no_decay rule"):
        param_groups(model, 0.1, no_decay=("bogus",))


def test_auto_alpha_outside_the_llm_table_says_it_took_the_nearest_row(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="dyt"):
        convert(tiny_vit(), "dyt", alpha_init="auto")
    lines = [r.getMessage() for r in caplog.records if "alpha_init=auto" in r.getMessage()]
    assert len(lines) == 1 and "outside the paper's LLM table (1024–8192)" in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dyt"):
        convert(tiny_vit(), "dyt", alpha_init=0.5)
    assert not caplog.records


@pytest.mark.parametrize("name, count", [("resnet50", 53), ("vgg19_bn", 16)])
def test_batchnorm_becomes_channels_first_dyt_only_when_included(name, count):
    """The paper's Appendix D: every BatchNorm of ResNet-50 and VGG19-BN → channels-first DyT when asked, γ and β
    kept, the running statistics dropped; none by default."""
    with torch.device("meta"):  # the full-size models, without their memory
        model = timm.create_model(name, num_classes=10)
    untouched = convert(model, "dyt")
    assert not untouched.replaced and len(untouched.skipped) == count
    assert all("include=('batchnorm',)" in s.reason for s in untouched.skipped)
    swaps = convert(model, "dyt", include=("batchnorm",))
    assert len(swaps.replaced) == count and f"{count} replaced, 0 skipped" in str(swaps)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(not s.channels_last for s in swaps.replaced)


def test_batchnorm_swap_keeps_gamma_and_beta_and_matches_the_formula():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_()
    bn.running_mean.fill_(3.0)  # statistics the replacement must not use
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), bn, torch.nn.BatchNorm1d(4, affine=False))
    convert(model, "dyt", include=("batchnorm",), alpha_init=0.7)
    dyt2d, dyt1d = model[1], model[2]
    assert isinstance(dyt2d, DynamicTanh) and not dyt2d.channels_last
    torch.testing.assert_close(dyt2d.weight, bn.weight)
    torch.testing.assert_close(dyt2d.bias, bn.bias)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(dyt2d(x), bn.weight.view(-1, 1, 1) * torch.tanh(0.7 * x) + bn.bias.view(-1, 1, 1))
    assert dyt1d.weight is None  # BatchNorm1d without affine: tanh(αx) alone, over (N, C) and (N, C, L)
    x = torch.randn(3, 4)
    torch.testing.assert_close(dyt1d(x), torch.tanh(0.7 * x))
    with pytest.raises(ValueError, match="include='groupnorm' is unknown"):
        convert(model, "dyt", include=("groupnorm",))
