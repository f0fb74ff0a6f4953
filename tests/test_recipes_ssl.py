"""Table 2's rows (experiment=mae_b, mae_l, dino_b16, dino_b8 and their *_finetune) against the official runs,
item by item.

Sources: jiachenzhu/DyT at aab5dde — other_tasks/MAE/README.md (the MAE torchrun command),
other_tasks/MAE/compatibility-fix.patch (TF32), other_tasks/DINO/README.md (the two DINO torchrun commands, and
"we use the MAE code for fine-tuning"); facebookresearch/mae — main_pretrain.py, engine_pretrain.py,
models_mae.py, main_finetune.py, engine_finetune.py, models_vit.py, util/lr_decay.py, util/lr_sched.py,
FINETUNE.md (the ViT-B and ViT-L commands); facebookresearch/dino — main_dino.py, vision_transformer.py,
utils.py, eval_knn.py.
"""
import pytest
import torch

from dyt.train.config import ConfigError, validate
from tests.test_trainer import compose_cfg

IMAGENET_TRAIN = 1_281_167
PRETRAIN_MAE = {"mae_b": "B/16", "mae_l": "L/16"}  # DyT MAE README: --model mae_vit_base_patch16 / mae_vit_large_patch16
FINETUNE = {
    # FINETUNE.md: ViT-B --epochs 100 --blr 5e-4 --layer_decay 0.65 --drop_path 0.1;
    #              ViT-L --epochs 50 --blr 1e-3 --layer_decay 0.75 --drop_path 0.2
    # DyT DINO README: "we use the MAE code for fine-tuning" (FINETUNE.md's ViT-B), at the row's patch size
    "mae_b_finetune": dict(task="mae", size="B/16", epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1),
    "mae_l_finetune": dict(task="mae", size="L/16", epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2),
    "dino_b16_finetune": dict(task="dino", size="B/16", epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1),
    "dino_b8_finetune": dict(task="dino", size="B/8", epochs=100, blr=5e-4, layer_decay=0.65, drop_path=0.1),
}
DINO = {
    # DyT DINO README, ViT-B/16: 4 nodes × 8 GPUs, --batch_size_per_gpu 32, --epochs 400, --lr 0.00075,
    # --clip_grad 0.3, --warmup_teacher_temp 0.04; ViT-B/8: 22 nodes × 8 GPUs, 6 per GPU, 300 epochs, --lr 0.0005,
    # --clip_grad 3.0, --warmup_teacher_temp 0.03
    "dino_b16": dict(size="B/16", gpus=32, per_gpu=32, epochs=400, base_lr=7.5e-4, clip=0.3, warmup_temp=0.04),
    "dino_b8": dict(size="B/8", gpus=176, per_gpu=6, epochs=300, base_lr=5e-4, clip=3.0, warmup_temp=0.03),
}
ALL = sorted([*PRETRAIN_MAE, *FINETUNE, *DINO])


def _steps_per_epoch(gpus: int, per_gpu: int) -> int:
    """len(data_loader) of a DistributedSampler (padded to a multiple of the GPUs) with drop_last."""
    return -(-IMAGENET_TRAIN // gpus) // per_gpu


def _cfg(name, *overrides):
    return compose_cfg(f"experiment={name}", "task.data.root=/tmp", *overrides)


@pytest.mark.parametrize("name", sorted(PRETRAIN_MAE))
def test_mae_pretraining_recipe(name):
    cfg = _cfg(name)
    trainer, optim, task = cfg.trainer, cfg.trainer.optim, cfg.task
    assert task.name == "mae" and task.stage == "pretrain" and task.size == PRETRAIN_MAE[name]
    assert trainer.global_batch_size == 4096  # README: --nnodes=8 --nproc_per_node=8 --batch_size 64
    steps = _steps_per_epoch(64, 64)
    assert steps == 312 and trainer.max_steps == 800 * steps  # --epochs 800
    assert optim.warmup_steps == 40 * steps  # --warmup_epochs 40
    assert optim.lr == pytest.approx(1.5e-4 * 4096 / 256)  # --blr 1.5e-4; main_pretrain.py lr = blr × batch / 256
    assert optim.schedule == "cosine" and optim.min_lr_ratio == 0.0  # lr_sched.py half-cycle cosine; --min_lr 0
    assert optim.weight_decay == 0.05  # --weight_decay 0.05
    assert list(optim.betas) == [0.9, 0.95]  # main_pretrain.py: AdamW(param_groups, betas=(0.9, 0.95))
    assert list(optim.no_decay) == ["one_dim"]  # param_groups_weight_decay: ndim <= 1 or .bias, no skip list
    assert optim.clip_grad is None  # engine_pretrain.py: loss_scaler(...) without clip_grad
    assert optim.layer_decay == 1.0
    assert trainer.mixed_precision == "fp16"  # engine_pretrain.py: torch.cuda.amp.autocast()
    assert trainer.tf32  # compatibility-fix.patch: torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = True
    assert task.mae.mask_ratio == 0.75  # --mask_ratio 0.75
    assert task.mae.norm_pix_loss  # --norm_pix_loss
    assert dict(task.mae.decoder) == {"dim": 512, "depth": 8, "heads": 16}  # models_mae.py *_dec512d8b
    assert list(task.mae.crop_scale) == [0.2, 1.0]  # main_pretrain.py RandomResizedCrop(scale=(0.2, 1.0))
    assert task.data.image_size == 224 and cfg.seed == 0  # --input_size 224, --seed 0
    assert cfg.norm.alpha_init == 0.5  # DyT other_tasks/MAE/dynamic_tanh.py alpha_init_value=0.5


@pytest.mark.parametrize("name", sorted(FINETUNE))
def test_finetuning_recipe(name):
    expected = FINETUNE[name]
    cfg = _cfg(name, "init_from=/tmp")
    trainer, optim, task, augment = cfg.trainer, cfg.trainer.optim, cfg.task, cfg.task.augment
    assert task.name == expected["task"] and task.stage == "finetune" and task.size == expected["size"]
    assert trainer.global_batch_size == 1024  # FINETUNE.md: --nodes 4 (× 8 GPUs) --batch_size 32
    steps = _steps_per_epoch(32, 32)
    assert trainer.max_steps == expected["epochs"] * steps  # --epochs
    assert optim.warmup_steps == 5 * steps  # main_finetune.py --warmup_epochs 5
    assert optim.lr == pytest.approx(expected["blr"] * 1024 / 256)  # --blr; lr = blr × batch / 256
    assert optim.layer_decay == expected["layer_decay"]  # --layer_decay
    assert task.model.drop_path_rate == expected["drop_path"]  # --drop_path
    assert optim.lr * optim.min_lr_ratio == pytest.approx(1e-6)  # --min_lr 1e-6
    assert optim.schedule == "cosine"  # lr_sched.py
    assert optim.weight_decay == 0.05  # --weight_decay 0.05
    assert list(optim.betas) == [0.9, 0.999] and optim.eps == 1e-8  # torch.optim.AdamW(param_groups, lr=lr)
    assert list(optim.no_decay) == ["one_dim", "listed"]  # lr_decay.py: ndim == 1 or model.no_weight_decay()
    assert optim.clip_grad is None  # --clip_grad None
    assert trainer.mixed_precision == "fp16" and not trainer.tf32  # engine_finetune.py autocast; no TF32 set
    assert augment.randaug == "rand-m9-mstd0.5-inc1"  # --aa default
    assert augment.mixup == 0.8 and augment.cutmix == 1.0  # --mixup 0.8 --cutmix 1.0
    assert augment.label_smoothing == 0.1  # --smoothing default 0.1
    assert augment.random_erasing == 0.25 and augment.random_erasing_mode == "pixel"  # --reprob 0.25, --remode pixel
    assert trainer.eval_every == steps  # main_finetune.py evaluates every epoch
    assert task.data.image_size == 224 and task.data.num_classes == 1000  # --input_size 224, --nb_classes 1000
    assert list(cfg.required) == ["task.data.root", "init_from"]  # --data_path, --finetune


@pytest.mark.parametrize("name", sorted(DINO))
def test_dino_pretraining_recipe(name):
    expected = DINO[name]
    cfg = _cfg(name)
    trainer, optim, task, dino = cfg.trainer, cfg.trainer.optim, cfg.task, cfg.task.dino
    assert task.name == "dino" and task.stage == "pretrain" and task.size == expected["size"]  # --arch vit_base --patch_size
    batch = expected["gpus"] * expected["per_gpu"]
    assert trainer.global_batch_size == batch and trainer.batch_size == expected["per_gpu"]
    steps = _steps_per_epoch(expected["gpus"], expected["per_gpu"])
    assert dino.steps_per_epoch == steps == IMAGENET_TRAIN // batch
    assert trainer.max_steps == expected["epochs"] * steps  # --epochs
    assert optim.lr == pytest.approx(expected["base_lr"] * batch / 256)  # --lr × batch / 256 (main_dino.py)
    assert optim.warmup_steps == 10 * steps  # --warmup_epochs 10
    assert optim.lr * optim.min_lr_ratio == pytest.approx(2e-6)  # --min_lr 2e-06
    assert optim.schedule == "cosine"  # utils.cosine_scheduler
    assert optim.weight_decay == 0.04  # --weight_decay 0.04 (--weight_decay_end 0.4: a listed deviation)
    assert optim.clip_grad == expected["clip"]  # --clip_grad (per parameter officially: a listed deviation)
    assert list(optim.betas) == [0.9, 0.999]  # --optimizer adamw: torch's defaults
    assert list(optim.no_decay) == ["one_dim"]  # utils.get_params_groups: .bias or 1-D not regularised
    assert trainer.mixed_precision == "no" and not trainer.tf32  # --use_fp16 false; no TF32 set
    assert task.model.drop_path_rate == 0.1  # --drop_path_rate 0.1
    assert dino.out_dim == 65536  # --out_dim 65536
    assert dict(dino.head) == {"hidden_dim": 2048, "bottleneck_dim": 256, "layers": 3,  # DINOHead defaults
                               "norm_last_layer": True}  # --norm_last_layer true, --use_bn_in_head false
    assert dino.momentum_teacher == 0.996  # --momentum_teacher 0.996
    assert dino.warmup_teacher_temp == expected["warmup_temp"]  # --warmup_teacher_temp
    assert dino.teacher_temp == 0.07 and dino.warmup_teacher_temp_epochs == 50  # --teacher_temp 0.07, 50 epochs
    assert dino.student_temp == 0.1 and dino.center_momentum == 0.9  # DINOLoss defaults
    assert dino.freeze_last_layer_epochs == 3  # --freeze_last_layer 3
    assert dino.global_crop_size == 224 and dino.local_crop_size == 96  # DataAugmentationDINO
    assert list(dino.global_crops_scale) == [0.25, 1.0]  # --global_crops_scale 0.25 1.0
    assert list(dino.local_crops_scale) == [0.05, 0.25]  # --local_crops_scale 0.05 0.25
    assert dino.local_crops_number == 10  # --local_crops_number 10
    assert task.knn.k == 20 and task.knn.temperature == 0.07  # eval_knn.py --nb_knn 20, --temperature 0.07
    assert cfg.seed == 0 and cfg.norm.alpha_init == 0.5  # --seed 0; DINO/dynamic_tanh.py alpha_init_value=0.5


@pytest.mark.parametrize("name", ALL)
def test_a_row_without_imagenet_stops_at_start(name):
    with pytest.raises(ConfigError, match=r"task\.data\.root is required by this paper row"):
        validate(compose_cfg(f"experiment={name}"))


@pytest.mark.parametrize("name", sorted(FINETUNE))
def test_a_fine_tuning_row_without_its_pretraining_stops_at_start(name):
    with pytest.raises(ConfigError, match=r"init_from is required by this paper row"):
        validate(compose_cfg(f"experiment={name}", "task.data.root=/tmp"))


def _meta_model(name, *overrides):
    from dyt.train.run import build_task

    cfg = _cfg(name, *overrides)
    task = build_task(cfg)
    with torch.device("meta"):
        return task, task.build_model()


def test_the_models_are_the_official_shapes():
    _, mae = _meta_model("mae_b")
    # models_mae.py mae_vit_base_patch16_dec512d8b: 16×16 patches of 224 (196 + the class token), 12 × 768, a
    # 512-wide decoder of 8 blocks predicting 16·16·3 pixels per patch; its trainable parameters, counted
    assert mae.encoder.pos_embed.shape == (1, 197, 768) and len(mae.encoder.blocks) == 12
    assert len(mae.decoder_blocks) == 8 and mae.decoder_pred.out_features == 768

    def block(d):  # two LayerNorms, qkv and projection with biases, an MLP of ratio 4
        return 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)

    encoder = (16 * 16 * 3 * 768 + 768) + 768 + 12 * block(768) + 2 * 768  # patches, class token, blocks, norm
    decoder = (768 * 512 + 512) + 512 + 8 * block(512) + 2 * 512 + (512 * 768 + 768)  # the positions are fixed
    assert sum(p.numel() for p in mae.parameters() if p.requires_grad) == encoder + decoder
    _, dino = _meta_model("dino_b8")
    # DINO: vit_base at patch 8 (784 patches + class token), head 768 → 2048 → 2048 → 256 → 65,536
    assert dino.student.backbone.pos_embed.shape == (1, 785, 768)
    assert [m.out_features for m in dino.student.head.mlp if isinstance(m, torch.nn.Linear)] == [2048, 2048, 256]
    assert dino.student.head.last_layer.weight_v.shape == (65536, 256)
    assert not dino.student.head.last_layer.weight_g.requires_grad  # norm_last_layer: g fixed at 1
    assert dino.student.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # stochastic depth, last block
    assert not hasattr(dino.teacher.backbone.blocks[-1].drop_path1, "drop_prob")  # the teacher has none
    _, classifier = _meta_model("dino_b16_finetune", "init_from=/tmp")
    vit = classifier.teacher.backbone  # the teacher's path: init_from loads the teacher's weights
    assert vit.global_pool == "avg" and vit.head.out_features == 1000
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # --drop_path 0.1


def test_dino_schedules_at_paper_scale():
    task, _ = _meta_model("dino_b16")
    steps = 1251
    task.set_step(0, 400 * steps)
    assert task.momentum(0) == pytest.approx(0.996)  # cosine_scheduler(0.996, 1, …)[0]
    assert task.momentum(400 * steps - 1) == pytest.approx(1.0, abs=1e-9)
    assert task.teacher_temp(0) == 0.04 and task.teacher_temp(49 * steps) == pytest.approx(0.07)
    assert task.teacher_temp(25 * steps) == pytest.approx(0.04 + 0.03 * 25 / 49)  # np.linspace(0.04, 0.07, 50)[25]
    assert task.last_layer_frozen(3 * steps - 1) and not task.last_layer_frozen(3 * steps)  # --freeze_last_layer 3


def test_mae_fine_tuning_layer_decay_at_vit_b():
    task, _ = _meta_model("mae_b_finetune", "init_from=/tmp")
    scale = lambda name: task.lr_scale(name, layer_decay=0.65)  # noqa: E731
    # lr_decay.py: num_layers = 12 + 1; layer_scales[i] = 0.65 ** (13 − i)
    assert scale("encoder.patch_embed.proj.weight") == pytest.approx(0.65 ** 13)
    assert scale("encoder.cls_token") == pytest.approx(0.65 ** 13)
    assert scale("encoder.blocks.0.attn.qkv.weight") == pytest.approx(0.65 ** 12)
    assert scale("encoder.blocks.11.mlp.fc2.bias") == pytest.approx(0.65)
    assert scale("encoder.fc_norm.weight") == scale("encoder.head.weight") == 1.0
