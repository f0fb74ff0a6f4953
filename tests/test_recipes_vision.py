"""Table 1's rows (experiment=vit_b, vit_l, convnext_b, convnext_l) against the official run, item by item.

Sources: jiachenzhu/DyT at aab5dde — README.md (the four torchrun commands), main.py (argument defaults, model
creation, TF32), datasets.py (transforms), optim_factory.py (weight-decay groups), utils.py (cosine_scheduler).
"""
import pytest
import torch

from dyt.train.config import ConfigError, validate
from tests.test_trainer import compose_cfg

ROWS = {
    # README.md: --model, --drop_path, --opt_betas (ViT-L only; else timm's AdamW default)
    "vit_b": dict(family="vit", size="B", drop_path=0.1, betas=[0.9, 0.999]),
    "vit_l": dict(family="vit", size="L", drop_path=0.4, betas=[0.9, 0.95]),
    "convnext_b": dict(family="convnext", size="B", drop_path=0.5, betas=[0.9, 0.999]),
    "convnext_l": dict(family="convnext", size="L", drop_path=0.5, betas=[0.9, 0.999]),
}
IMAGENET_TRAIN = 1_281_167


@pytest.fixture(params=sorted(ROWS))
def row(request):
    name = request.param
    return name, ROWS[name], compose_cfg(f"experiment={name}", "task.data.root=/tmp")


def test_schedule_and_batch(row):
    _, _, cfg = row
    trainer, optim = cfg.trainer, cfg.trainer.optim
    assert trainer.global_batch_size == 4096  # README.md: 8 nodes × 8 GPUs × --batch_size 64 × --update_freq 1
    steps_per_epoch = IMAGENET_TRAIN // 4096  # main.py: num_training_steps_per_epoch = len(dataset) // total_batch
    assert trainer.max_steps == 300 * steps_per_epoch == 93_600  # main.py: --epochs 300
    assert optim.warmup_steps == 20 * steps_per_epoch  # main.py: --warmup_epochs 20
    assert optim.schedule == "cosine"  # main.py: utils.cosine_scheduler, linear warm-up then cosine
    assert optim.lr == 4e-3  # README.md / main.py: --lr 4e-3 (for total batch 4096)
    assert optim.lr * optim.min_lr_ratio == pytest.approx(1e-6)  # main.py: --min_lr 1e-6
    assert optim.weight_decay == 0.05  # main.py: --weight_decay 0.05, --weight_decay_end None (constant)
    assert optim.eps == 1e-8  # main.py: --opt_eps 1e-8
    assert optim.clip_grad is None  # main.py: --clip_grad None
    assert trainer.eval_every == steps_per_epoch  # main.py: evaluates after every epoch


def test_optimizer_betas_and_decay_groups(row):
    _, expected, cfg = row
    assert list(cfg.trainer.optim.betas) == expected["betas"]
    # optim_factory.py get_parameter_groups: no decay for len(shape) == 1, *.bias and model.no_weight_decay()
    assert list(cfg.trainer.optim.no_decay) == ["one_dim", "listed"] and not cfg.trainer.optim.decay_alpha


def test_precision_ema_and_model(row):
    _, expected, cfg = row
    assert cfg.trainer.mixed_precision == "no"  # main.py: --use_amp False
    assert cfg.trainer.tf32  # main.py: torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = True
    assert cfg.trainer.ema_decay == 0.9999  # README.md: --model_ema true --model_ema_eval true; --model_ema_decay 0.9999
    assert cfg.task.family == expected["family"] and cfg.task.size == expected["size"]
    assert cfg.task.model.drop_path_rate == expected["drop_path"]  # README.md: --drop_path
    assert cfg.task.data.image_size == 224 and cfg.task.data.num_classes == 1000  # --input_size 224, --nb_classes
    assert cfg.norm.alpha_init == 0.5  # dynamic_tanh.py: alpha_init_value=0.5


def test_augmentation(row):
    _, _, cfg = row
    augment = cfg.task.augment
    assert augment.randaug == "rand-m9-mstd0.5-inc1"  # main.py: --aa
    assert augment.mixup == 0.8 and augment.cutmix == 1.0  # main.py: --mixup 0.8, --cutmix 1.0
    assert augment.label_smoothing == 0.1  # main.py: --smoothing 0.1
    assert augment.random_erasing == 0.25 and augment.random_erasing_mode == "pixel"  # --reprob 0.25, --remode pixel


def test_a_row_without_imagenet_stops_at_start(row):
    name, _, _ = row
    with pytest.raises(ConfigError, match=r"task\.data\.root is required by this paper row"):
        validate(compose_cfg(f"experiment={name}"))


def test_vit_keeps_timms_class_token_and_pools_the_patch_tokens():
    """main.py: create_model(model, global_pool='avg') — timm keeps the class token in the sequence and
    averages the patch tokens only, then fc_norm (converted to DyT like every LayerNorm)."""
    from dyt.train.run import build

    _, model, swaps = build(compose_cfg("experiment=vit_b", "task.data.root=/tmp", "+task.model.kwargs.depth=1",
                                        "+task.model.kwargs.embed_dim=64", "+task.model.kwargs.num_heads=2"))
    assert model.cls_token is not None and model.global_pool == "avg" and model.num_prefix_tokens == 1
    assert "fc_norm" in {s.path for s in swaps.replaced}
    features = model.forward_features(torch.randn(1, 3, 224, 224))
    assert torch.allclose(model.forward_head(features, pre_logits=True), model.fc_norm(features[:, 1:].mean(1)))
