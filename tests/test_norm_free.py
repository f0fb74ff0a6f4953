"""SkipInit, Fixup and σReparam (dyt/norm_free.py): what each changes in a model, checked against the methods' own
rules, and each selectable as `norm=` of a run."""
import math

import pytest
import timm
import torch
from torch import nn

from dyt import norm_free
from dyt.convert import NormInfo, describe_norm
from dyt.train.config import ConfigError, validate
from tests.models import tiny_llama, tiny_vit
from tests.test_trainer import TINY_VIT, compose_cfg


def _norms(model) -> int:
    return sum(isinstance(describe_norm(m), NormInfo) for m in model.modules())


def _stream_through_blocks(model, x):
    """The ViT's residual stream before and after its blocks."""
    seen = {}
    model.blocks.register_forward_pre_hook(lambda m, args: seen.__setitem__("in", args[0]))
    model.blocks.register_forward_hook(lambda m, args, out: seen.__setitem__("out", out))
    model(x)
    return seen["in"], seen["out"]


def _seeded_vit():
    torch.manual_seed(0)
    return tiny_vit()


def test_skipinit_scalars_start_at_zero_and_the_network_is_the_identity_on_the_stream():
    model = _seeded_vit()
    changes = norm_free.skipinit(model)
    assert _norms(model) == 0 and len(changes.replaced) == 5  # norm1, norm2 × 2 blocks and the final norm
    scales = [m.skipinit_scale for m in model.modules() if hasattr(m, "skipinit_scale")]
    assert len(scales) == 4 and all(s.shape == (1,) and s.item() == 0 for s in scales)  # one per residual branch
    x = torch.randn(2, 3, 32, 32)
    before, after = _stream_through_blocks(model, x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    model(x).square().sum().backward()  # the scalars learn: their gradient is the branch output's, not 0
    assert all(s.grad is not None and s.grad.abs().item() > 0 for s in scales)
    assert "4 other changes" in str(changes) and "× s (s₀ = 0)" in str(changes)


def test_skipinit_on_a_transformers_decoder_keeps_the_embedding_stream():
    torch.manual_seed(0)
    model = tiny_llama()
    norm_free.skipinit(model)
    ids = torch.randint(0, 50, (2, 7))
    out = model.model(input_ids=ids).last_hidden_state  # the final norm is gone: the stream itself
    torch.testing.assert_close(out, model.model.embed_tokens(ids), rtol=0, atol=0)
    assert len([m for m in model.modules() if hasattr(m, "skipinit_scale")]) == 4  # 2 layers × (attention, MLP)


def test_fixup_factor_is_L_to_the_minus_one_over_2m_minus_2():
    assert norm_free.fixup_factor(16, 3) == pytest.approx(0.5)  # 16^(-1/4)
    assert norm_free.fixup_factor(4, 2) == pytest.approx(0.5)  # 4^(-1/2)
    assert norm_free.fixup_factor(24, 2) == pytest.approx(24 ** -0.5)


def test_fixup_rescales_by_depth_zeroes_last_layers_and_adds_scalars_on_a_vit():
    model = _seeded_vit()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    norm_free.fixup(model)
    L = 4  # 2 blocks × (attention, MLP)
    factor = L ** (-1 / (2 * 2 - 2))  # m = 2 weight layers along each branch
    for i in range(2):
        block = f"blocks.{i}"
        for scaled in ("attn.qkv", "mlp.fc1"):
            torch.testing.assert_close(model.get_submodule(f"{block}.{scaled}").weight,
                                       original[f"{block}.{scaled}.weight"] * factor)
        for last in ("attn.proj", "mlp.fc2"):
            assert not model.get_submodule(f"{block}.{last}").weight.any()
        for end in ("ls1", "ls2"):
            assert model.get_submodule(f"{block}.{end}").fixup_scale.item() == 1
            assert model.get_submodule(f"{block}.{end}").fixup_bias.item() == 0
    assert not model.head.weight.any() and not model.head.bias.any()
    biases = [n for n, _ in model.named_parameters() if n.endswith("fixup_bias_in")]
    assert len(biases) == 8  # before each of the 4 weight layers of each block
    torch.testing.assert_close(model.patch_embed.proj.weight, original["patch_embed.proj.weight"])  # not in a branch
    x = torch.randn(2, 3, 32, 32)
    before, after = _stream_through_blocks(model, x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_fixup_on_a_resnet_uses_the_bottleneck_depth():
    torch.manual_seed(0)
    model = timm.create_model("resnet50", layers=(1, 1, 1, 1), channels=(4, 8, 16, 32), num_classes=3,
                              zero_init_last=False)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    norm_free.fixup(model)
    factor = 4 ** (-1 / 4)  # L = 4 bottlenecks, m = 3 convolutions each
    torch.testing.assert_close(model.layer2[0].conv1.weight, original["layer2.0.conv1.weight"] * factor)
    torch.testing.assert_close(model.layer2[0].conv2.weight, original["layer2.0.conv2.weight"] * factor)
    assert not model.layer2[0].conv3.weight.any() and not model.fc.weight.any()
    assert hasattr(model.layer2[0].act1, "fixup_bias_in")  # the convolutions have no bias: one before each ReLU
    assert _norms(model) == 0  # every BatchNorm removed, the shortcuts' too
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_sigma_reparam_starts_as_the_model_was_and_its_spectral_norm_converges_to_gamma():
    model = _seeded_vit()
    x = torch.randn(2, 3, 32, 32)
    reference = model.blocks[0].attn.qkv(torch.randn(2, 5, 192, generator=torch.Generator().manual_seed(1)))
    changes = norm_free.sigma_reparam(model)
    assert _norms(model) == 0 and len(changes.changes) == 10  # patch embedding, 4 per block, head
    again = model.blocks[0].attn.qkv(torch.randn(2, 5, 192, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(again, reference, rtol=1e-4, atol=1e-5)  # γ₀ = σ(W) from the SVD
    # move each weight's top singular direction away from the stored u (a strong rank-1 change), then let the
    # power iteration run, one step per training forward
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "parametrizations"):
                original = module.parametrizations.weight.original
                a, b = torch.randn(original.shape[0], generator=gen), torch.randn(original[0].numel(), generator=gen)
                rank_one = torch.outer(a / a.norm(), b / b.norm()) * 3 * original.flatten(1).norm()
                original.add_(rank_one.view_as(original))
    stale = norm_free.effective_spectral_norms(model)
    assert all(s > 1.05 * g for g, s in stale.values())  # σ under-estimated from the old u: the norm exceeds γ
    model.train()
    with torch.no_grad():
        for _ in range(200):
            model(x)
    for path, (gamma, sigma) in norm_free.effective_spectral_norms(model).items():
        assert sigma == pytest.approx(gamma, rel=1e-3), path
    gammas = [p for n, p in model.named_parameters() if n.endswith("gamma")]
    assert len(gammas) == 10 and all(g.shape == (1,) for g in gammas)


def test_sigma_reparam_power_iteration_runs_only_in_training():
    layer = nn.Linear(6, 4)
    model = nn.Sequential(layer)
    norm_free.sigma_reparam(model)
    u = layer.parametrizations.weight[0].u.clone()
    with torch.no_grad():
        layer.parametrizations.weight.original.add_(torch.randn(4, 6))
    model.eval()
    model(torch.randn(3, 6))
    assert torch.equal(layer.parametrizations.weight[0].u, u)
    model.train()
    model(torch.randn(3, 6))
    assert not torch.equal(layer.parametrizations.weight[0].u, u)


def test_models_without_known_residual_blocks_get_one_line():
    vgg = timm.create_model("vgg11_bn", num_classes=3)
    for method in ("skipinit", "fixup"):
        with pytest.raises(norm_free.NotApplicable, match=f"norm={method} needs residual blocks.*VGG has none"):
            norm_free.apply(vgg, method)
    with pytest.raises(ConfigError, match="norm=skipinit needs residual blocks"):
        validate(compose_cfg("task=resnet", "task.size=vgg_debug", "norm=skipinit"))
    with pytest.raises(norm_free.NotApplicable, match="Linear or Conv"):
        norm_free.sigma_reparam(nn.Sequential(nn.LayerNorm(4), nn.ReLU()))


@pytest.mark.parametrize("method", norm_free.METHODS)
def test_each_method_is_a_norm_of_a_run(method, tmp_path):
    """`norm=<method>` composes, validates and trains (the tiny ViT, two steps)."""
    from dyt.train.run import train

    cfg = compose_cfg(*TINY_VIT, f"norm={method}", "trainer.max_steps=2", "trainer.eval_every=2", "logger=none",
                      run_dir=str(tmp_path))
    validate(cfg)
    result = train(cfg)
    assert result["status"] == "completed" and result["norm"] == method, result
    table = (tmp_path / "norms.txt").read_text()
    assert f"{method}:" in table and "norms removed" in table
    assert math.isfinite(result["final"]["val/loss"])


# ---------------------------------------------------------------- swapping the norms of a trained model


def test_fit_rule_recovers_a_known_alpha():
    from scripts.swap_trained import fit_alpha

    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0)) * 3
    assert fit_alpha(x, torch.tanh(0.37 * x), "tanh", 16) == pytest.approx(0.37, rel=1e-3)
    assert fit_alpha(x, x / torch.sqrt(1 + (1.3 * x) ** 2 / 16) * 1.3, "isru", 16) == pytest.approx(1.3, rel=1e-3)


def test_swap_trained_reports_every_rule_before_and_after_fine_tuning(tmp_path):
    """A LayerNorm run's norms swapped for DyT by each α₀ rule: metrics before and after a fine-tune, the
    unswapped model beside them; the same from the weights alone (a safetensors file and the task's overrides)."""
    from safetensors.torch import save_file

    from dyt.train.checkpoint import latest_checkpoint, model_weights
    from dyt.train.run import train
    from scripts.swap_trained import main

    run_dir = tmp_path / "run"
    cfg = compose_cfg(*TINY_VIT, "norm=layernorm", "trainer.max_steps=4", "logger=none", run_dir=str(run_dir))
    assert train(cfg)["status"] == "completed"
    args = ["--norm", "dyt", "--steps", "2", "--batches", "1", "--max-eval-batches", "1"]
    results = main([str(run_dir), *args, "--out", str(tmp_path / "swap")])
    variants = results["variants"]
    assert list(variants) == ["unswapped", "dyt const", "dyt inv_std", "dyt fit"]
    assert set(variants["dyt const"]["alpha_init"].values()) == {0.5}
    for path, alpha in variants["dyt inv_std"]["alpha_init"].items():
        assert alpha == pytest.approx(1 / results["input_std"][path])
    assert len(results["layers"]) == 5 and all(0 <= v["after"]["acc"] <= 1 for v in variants.values())
    assert variants["dyt fit"]["alpha_final"] and variants["unswapped"]["alpha_final"] is None
    assert "| dyt inv_std |" in (tmp_path / "swap" / "swap.md").read_text()

    weights = tmp_path / "vit.safetensors"
    save_file(model_weights(latest_checkpoint(run_dir / "checkpoints")), str(weights))
    again = main([str(weights), *args, "--rules", "const", "--out", str(tmp_path / "swap2"), "--",
                  "task=vit", "task.size=debug", "trainer.batch_size=32"])
    assert again["variants"]["unswapped"]["before"] == variants["unswapped"]["before"]
    assert again["variants"]["dyt const"]["before"] == variants["dyt const"]["before"]
