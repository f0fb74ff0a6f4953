"""Appendix D's rows (experiment=resnet50, vgg19: BatchNorm → DyT in ResNet-50 and VGG19) against the recipe the
paper names, "the training recipes provided by torchvision", item by item.

Sources: pytorch/vision references/classification — README.md (the defaults table: 8 GPUs × `--batch_size 32`,
`--epochs 90`, `--lr 0.1`, `--momentum 0.9`, `--wd 1e-4`, `--lr-step-size 30`, `--lr-gamma 0.1`; "vgg11_bn, vgg13_bn,
vgg16_bn, and vgg19_bn include batch normalization and thus are trained with the default parameters") and train.py
(argument defaults; SGD and StepLR; RandomResizedCrop(224) + RandomHorizontalFlip, Resize(256) + CenterCrop(224));
torchvision/models/vgg.py and resnet.py (the classifier's Dropout(0.5), initialisation, zero_init_residual=False).
"""
import pytest
import torch
from PIL import Image

from dyt.train.config import ConfigError, validate
from tests.test_trainer import compose_cfg

ROWS = {"resnet50": dict(size="resnet50", norms=53), "vgg19": dict(size="vgg19_bn", norms=16)}
IMAGENET_TRAIN = 1_281_167
TORCHVISION = {  # references/classification/README.md, the defaults table (train.py's argument defaults)
    "batch_per_gpu": 32, "gpus": 8, "epochs": 90, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
    "lr_step_size": 30, "lr_gamma": 0.1,
}


@pytest.fixture(params=sorted(ROWS))
def row(request):
    return request.param, ROWS[request.param], compose_cfg(f"experiment={request.param}", "task.data.root=/tmp")


def test_batch_epochs_and_evaluation(row):
    _, _, cfg = row
    trainer = cfg.trainer
    assert trainer.global_batch_size == TORCHVISION["batch_per_gpu"] * TORCHVISION["gpus"] == 256  # README.md
    assert trainer.batch_size == TORCHVISION["batch_per_gpu"]  # README.md: --batch_size 32 per GPU
    steps_per_epoch = IMAGENET_TRAIN // 256  # the trainer drops the last partial batch (train.py keeps it: 5,005)
    assert trainer.max_steps == TORCHVISION["epochs"] * steps_per_epoch  # README.md: --epochs 90
    assert trainer.eval_every == steps_per_epoch  # train.py: evaluate(...) after every epoch
    assert trainer.mixed_precision == "no" and not trainer.tf32  # train.py: fp32 without --amp (V100s)
    assert trainer.ema_decay is None  # train.py: --model-ema off
    assert trainer.optim.warmup_steps == 0  # train.py: --lr-warmup-epochs 0
    assert trainer.optim.clip_grad is None  # train.py: --clip-grad-norm None
    # train.py: --norm-weight-decay None, --bias-weight-decay None: one group, every parameter decayed
    assert list(trainer.optim.no_decay) == []


def test_model_and_norms(row):
    from dyt.convert import convert
    from tasks.image_classification import ImageClassification

    _, expected, cfg = row
    assert cfg.task.family == "resnet" and cfg.task.size == expected["size"]
    assert cfg.task.data.image_size == 224 and cfg.task.data.num_classes == 1000  # train.py: 224 crops, ImageNet-1K
    assert cfg.norm.type == "dyt" and cfg.norm.alpha_init == 0.5  # DyT in place of every BatchNorm, α₀ 0.5
    task = ImageClassification(cfg.task)
    with torch.device("meta"):
        model = task.build_model()
    swaps = convert(model, "dyt", include=task.norm_include, roles=task.norm_roles)
    assert len(swaps.replaced) == expected["norms"] and not swaps.skipped
    if expected["size"] == "resnet50":  # resnet.py: zero_init_residual=False (timm's zero_init_last defaults True)
        from tasks.image_classification import SIZES

        assert SIZES["resnet"]["resnet50"] == ("resnet50", {"zero_init_last": False}) and not cfg.task.model.kwargs
    else:  # torchvision's VGG classifier: Linear, ReLU, Dropout(0.5), Linear, ReLU, Dropout(0.5), Linear
        assert model.pre_logits.drop.p == 0.5 and model.head.drop.p == 0.5


def test_vgg_head_starts_as_torchvisions():
    """torchvision/models/vgg.py _initialize_weights: its Linears from N(0, 0.01), zero bias (timm holds the first
    two as convolutions, Kaiming-initialised: the task re-draws them)."""
    from omegaconf import OmegaConf

    from tasks.image_classification import ImageClassification

    cfg = compose_cfg("task=resnet", "task.size=vgg_cpu").task
    torch.manual_seed(0)
    model = ImageClassification(OmegaConf.create(OmegaConf.to_container(cfg))).build_model()
    for layer in (model.pre_logits.fc1, model.pre_logits.fc2):
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05) and not layer.bias.any()


def test_augmentation_is_torchvisions(row, tmp_path):
    """train.py: RandomResizedCrop(224) (scale 0.08–1, bilinear) + RandomHorizontalFlip; Resize(256) +
    CenterCrop(224); ImageNet mean and std; nothing else (no colour jitter, auto-augment, erasing, mixup)."""
    from torchvision import transforms as T

    from tasks.image_classification import ImageClassification

    _, _, cfg = row
    augment = cfg.task.augment
    assert augment.randaug is None and augment.mixup == 0 and augment.cutmix == 0  # train.py: off by default
    assert augment.label_smoothing == 0 and augment.random_erasing == 0  # --label-smoothing 0, --random-erase 0
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (300, 260)).save(tmp_path / split / "a" / "0.png")
    task_cfg = cfg.task.copy()
    task_cfg.data.root = str(tmp_path)
    train_set, val_set = ImageClassification(task_cfg).build_data()
    train_steps = [type(t).__name__ for t in train_set.transform.transforms]
    assert train_steps == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    crop = train_set.transform.transforms[0]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0) and crop.interpolation == T.InterpolationMode.BILINEAR
    val_steps = val_set.transform.transforms
    assert [type(t).__name__ for t in val_steps] == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]
    assert val_steps[0].size == 256 and val_steps[1].size == (224, 224)
    assert val_steps[0].interpolation == T.InterpolationMode.BILINEAR
    assert tuple(round(m, 3) for m in val_steps[3].mean.tolist()) == (0.485, 0.456, 0.406)  # train.py: normalize
    assert tuple(round(s, 3) for s in val_steps[3].std.tolist()) == (0.229, 0.224, 0.225)


def test_optimizer_is_torchvisions_sgd_with_step_decay(row):
    _, _, cfg = row
    optim = cfg.trainer.optim
    assert optim.name == "sgd" and optim.momentum == TORCHVISION["momentum"] and not optim.nesterov  # train.py: SGD
    assert optim.lr == TORCHVISION["lr"] and optim.weight_decay == TORCHVISION["weight_decay"]  # README.md
    assert optim.schedule == "step" and optim.gamma == TORCHVISION["lr_gamma"]  # train.py: StepLR
    assert optim.step_size == TORCHVISION["lr_step_size"] * (IMAGENET_TRAIN // 256)  # --lr-step-size 30 epochs
    from dyt.train.schedule import learning_rate

    lr = lambda step: learning_rate("step", step, peak=0.1, total=cfg.trainer.max_steps,  # noqa: E731
                                    step_size=optim.step_size, gamma=optim.gamma)
    assert lr(optim.step_size - 1) == 0.1 and lr(optim.step_size) == pytest.approx(0.01)
    assert lr(cfg.trainer.max_steps - 1) == pytest.approx(1e-3)


def test_a_row_without_imagenet_stops_at_start(row):
    name, _, _ = row
    with pytest.raises(ConfigError, match=r"task\.data\.root is required by this paper row"):
        validate(compose_cfg(f"experiment={name}"))
