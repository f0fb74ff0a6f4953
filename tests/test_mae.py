"""MAE (task=mae): the masking, the loss over masked patches only, every norm converted, the two stages chained
by init_from, and the layer-wise lr decay of its fine-tuning (dyt.optim.param_groups, the trainer's lr)."""
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dyt import DynamicTanh
from tasks.mae import MaskedAutoencoder, random_masking
from tests.test_trainer import compose_cfg

TINY = ["task=mae", "task.size=debug", "task.mae.decoder.dim=16", "task.mae.decoder.depth=1",
        "task.mae.decoder.heads=2"]


def _build(*overrides):
    from dyt.train.run import build

    return build(compose_cfg(*TINY, *overrides))


def test_masking_keeps_exactly_the_unmasked_fraction():
    x = torch.randn(3, 49, 8)
    kept, mask, restore = random_masking(x, 0.75)
    assert kept.shape == (3, 12, 8)  # int(49 · 0.25): models_mae.py len_keep
    assert mask.sum(dim=1).tolist() == [37.0] * 3 and set(mask.unique().tolist()) == {0.0, 1.0}
    for row in range(3):  # the kept patches are exactly the unmasked ones
        visible = x[row][mask[row] == 0]
        assert torch.equal(kept[row].sort(dim=0).values, visible.sort(dim=0).values)
    assert torch.equal(restore.argsort(dim=1).argsort(dim=1), restore)  # a permutation
    # the same noise, the same mask: evaluations and reconstruction grids draw reproducible masks
    noise = torch.rand(3, 49)
    assert torch.equal(random_masking(x, 0.75, noise)[1], random_masking(x, 0.75, noise)[1])


def test_the_loss_covers_only_the_masked_patches():
    _, model, _ = _build("norm=layernorm")
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        loss, pred, mask = model(images)
    assert pred.shape == (2, 16, 49) and mask.shape == (2, 16)  # debug: patch 7, 4×4 patches, 7·7 pixels each
    target = model.target(images)
    per_patch = (pred - target).pow(2).mean(dim=-1)
    assert loss == pytest.approx(float((per_patch * mask).sum() / mask.sum()), rel=1e-5)
    changed_visible = pred.detach().clone()
    changed_visible[mask == 0] += 5.0  # predictions of visible patches are not scored …
    assert model.reconstruction_loss(images, changed_visible, mask) == pytest.approx(float(loss), rel=1e-6)
    changed_masked = pred.detach().clone()
    changed_masked[mask == 1] += 5.0  # … those of removed patches are
    assert model.reconstruction_loss(images, changed_masked, mask) > loss + 1
    # norm_pix_loss: each patch's target has mean 0 and unit (unbiased) variance
    assert target.mean(dim=-1).abs().max() < 1e-5 and torch.allclose(target.var(dim=-1), torch.ones(2, 16), atol=1e-3)


def test_patchify_inverts_and_orders_pixels_as_models_mae():
    model = MaskedAutoencoder(_build("norm=layernorm")[1].encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    images = torch.randn(2, 1, 28, 28)
    patches = model.patchify(images)
    assert torch.equal(patches[0, 1].view(7, 7), images[0, 0, :7, 7:14])  # row-major patches, pixels row by row
    assert torch.equal(model.unpatchify(patches), images)


def test_every_norm_of_encoder_and_decoder_is_converted():
    _, model, swaps = _build("norm=dyt")
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    paths = {s.path for s in swaps.replaced}
    assert {"encoder.norm", "encoder.blocks.1.norm2", "decoder_norm", "decoder_blocks.0.norm1"} <= paths
    assert len(paths) == 2 * 2 + 1 + 2 * 1 + 1  # debug: 2 encoder blocks, 1 decoder block, two final norms
    assert isinstance(model.decoder_norm, DynamicTanh)
    # the position embeddings are fixed sin-cos, as MAE's (the class token's position is zero)
    assert not model.encoder.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.decoder_pos_embed[0, 0], torch.zeros(16))


def test_pretraining_then_fine_tuning_from_its_encoder(tmp_path):
    """Two pretraining steps (reconstructions and the k-NN probe at the end), then the classifier built with
    init_from holds the pretrained encoder; its pooling norm and head are new."""
    from dyt.train.run import build, train

    run = tmp_path / "pretrain"
    cfg = compose_cfg(*TINY, "norm=dyt", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.batch_size=16",
                      "task.knn.bank_size=200", "trainer.max_eval_batches=2", "logger=none", run_dir=str(run))
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["headline"]["name"] == "val/knn_acc"
    assert 0 <= summary["headline"]["value"] <= 1 and "val/loss" in summary["final"]
    assert (run / "reconstructions.png").stat().st_size > 0 and (run / "knn_curve.png").exists()

    from dyt.train.checkpoint import latest_checkpoint, model_weights

    pretrained = model_weights(latest_checkpoint(run / "checkpoints"))
    task, classifier, swaps = build(compose_cfg(*TINY, "norm=dyt", "task.stage=finetune", f"init_from={run}"))
    assert task.headline.name == "val/acc" and len(swaps.replaced) == 2 * 2 + 1  # blocks' norms and fc_norm
    own = classifier.state_dict()
    for name in ("encoder.blocks.1.attn.qkv.weight", "encoder.patch_embed.proj.weight", "encoder.pos_embed",
                 "encoder.cls_token", "encoder.blocks.0.norm1.alpha"):
        assert torch.equal(own[name], pretrained[name]), name
    assert own["encoder.head.weight"].std() < 1e-3  # main_finetune.py: trunc_normal_(head.weight, std=2e-5)
    assert classifier(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_layer_wise_lr_decay_groups_follow_maes_rule():
    """util/lr_decay.py param_groups_lrd: layer 0 (patch embedding, class token, position embedding) at
    decay^(L+1), block i at decay^(L−i), the rest (fc_norm, head) at 1; with the trainer's lr multiplied in."""
    from dyt.optim import param_groups
    from dyt.train.schedule import learning_rate
    from dyt.train.trainer import Trainer

    task, model, _ = _build("norm=dyt", "task.stage=finetune")
    decay = 0.5
    groups = param_groups(model, 0.05, no_decay=("one_dim", "listed"),
                          lr_scale=lambda name: task.lr_scale(name, layer_decay=decay))
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    params = dict(model.named_parameters())
    expected = {"encoder.patch_embed.proj.weight": decay ** 3, "encoder.cls_token": decay ** 3,
                "encoder.pos_embed": decay ** 3, "encoder.blocks.0.attn.qkv.weight": decay ** 2,
                "encoder.blocks.1.norm1.alpha": decay, "encoder.fc_norm.weight": 1.0, "encoder.head.weight": 1.0}
    for name, scale in expected.items():
        assert scale_of[id(params[name])] == pytest.approx(scale), name
    assert sum(len(g["params"]) for g in groups) == len(params)
    # timm's no_weight_decay() list under the backbone's path, and 1-D tensors, are not decayed
    assert id(params["encoder.pos_embed"]) not in decayed and id(params["encoder.blocks.0.norm1.alpha"]) not in decayed
    assert id(params["encoder.blocks.0.attn.qkv.weight"]) in decayed
    # without lr_scale: the two groups as before, at scale 1
    assert [(g["group"], g["lr_scale"]) for g in param_groups(model, 0.05)] == [("decay", 1.0), ("no_decay", 1.0)]

    optimizer = torch.optim.AdamW(groups, lr=1.0)
    lr_at = partial(learning_rate, "constant", peak=1e-3, total=10)  # as the Trainer builds it from trainer.optim
    lr = Trainer._set_lr(SimpleNamespace(lr_at=lr_at, step=3, optimizer=optimizer))
    assert lr == pytest.approx(1e-3)
    assert sorted(g["lr"] for g in optimizer.param_groups)[0] == pytest.approx(1e-3 * decay ** 3)
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in optimizer.param_groups)

