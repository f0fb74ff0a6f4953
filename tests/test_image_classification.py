"""The image classification task: the embedded digits, a real ImageFolder tree, and ConvNeXt's layout."""
import numpy as np
import pytest

from tasks.data.mnist import mnist_digits, split_indices
from tests.helpers import image_folder, run_train, summary


def test_embedded_split_is_deterministic_stratified_and_disjoint():
    _, labels = mnist_digits()
    train, val = split_indices(labels, 0.1)
    again_train, again_val = split_indices(labels, 0.1)
    assert train.tolist() == again_train.tolist() and val.tolist() == again_val.tolist()
    assert len(train) + len(val) == 5000 and not set(train.tolist()) & set(val.tolist())
    per_class = np.bincount(labels[val].numpy(), minlength=10)
    assert per_class.min() >= 40 and per_class.sum() == 500


def test_image_folder_with_the_paper_augmentations_and_ema(tmp_path):
    root = image_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=vit", "task.size=debug", f"task.data.root={root}",
              "task.data.image_size=28", "task.augment.randaug=rand-m9-mstd0.5-inc1", "task.augment.mixup=0.8",
              "task.augment.cutmix=1.0", "task.augment.label_smoothing=0.1", "task.augment.random_erasing=0.25",
              "trainer.ema_decay=0.9", "trainer.batch_size=4", "trainer.max_steps=3", "trainer.eval_every=3")
    result = summary(run_dir)
    assert result["status"] == "completed" and 0 <= result["headline"]["value"] <= 1
    # the trained and the averaged weights are both evaluated, as the official vision code does
    assert {"val/acc", "val/loss", "val_ema/acc", "val_ema/loss"} <= set(result["final"])
    assert result["headline"]["ema_value"] == result["final"]["val_ema/acc"] == result["headline"]["ema_best"]


def test_convnext_in_channels_last_memory_computes_the_same_loss():
    """trainer.channels_last (on by itself on CUDA): NHWC weights and inputs, the fused channels-first DyT read
    in place; the loss equals the NCHW model's."""
    import torch
    from accelerate import Accelerator

    from dyt.train.parallel import prepare_model
    from dyt.train.run import build_task
    from tests.test_trainer import compose_cfg

    losses = []
    for channels_last in (False, True):
        cfg = compose_cfg("task=convnext", "task.size=debug", "norm=dyt",
                          f"trainer.channels_last={str(channels_last).lower()}", "task.data.digit_size=32")
        task = build_task(cfg)
        built = prepare_model(cfg, task, Accelerator(cpu=True))
        convolutions = [p for p in built.model.parameters() if p.dim() == 4]
        nhwc = all(p.is_contiguous(memory_format=torch.channels_last) for p in convolutions)
        assert (nhwc and any(not p.is_contiguous() for p in convolutions)) == channels_last
        images = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        losses.append(task.loss(built.model, (images, torch.arange(4)))[0].item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


def test_digit_augmentation_is_torchvisions_random_affine_drawn_and_applied_a_batch_at_a_time():
    """The embedded digits' shifts and rotations: the same parameters as v2.RandomAffine(degrees=10,
    translate=(0.1, 0.1)) draws from the same RNG state, applied to a whole batch in one grid sample with the
    pixels torchvision's affine gives each image."""
    import torch
    from torchvision.transforms import InterpolationMode, v2
    from torchvision.transforms.v2 import functional as TF

    from tasks.data.mnist import affine_batch, draw_affine

    images, _ = mnist_digits()
    transform = v2.RandomAffine(degrees=10, translate=(0.1, 0.1))
    drawn = []
    for seed in range(300):
        torch.manual_seed(seed)
        theirs = transform.make_params([images[0][None]])
        ours = draw_affine(28, torch.Generator().manual_seed(seed))
        assert ours == (theirs["angle"], *theirs["translate"])
        drawn.append(ours)
    batch = images[:300, None]
    warped = affine_batch(batch, torch.tensor(drawn))
    expected = torch.stack([TF.affine(image, angle=a, translate=[x, y], scale=1.0, shear=[0.0, 0.0],
                                      interpolation=InterpolationMode.NEAREST, fill=0)
                            for image, (a, x, y) in zip(batch, drawn)])
    assert (warped == expected).float().mean() > 0.9999  # ties at exact half-pixels aside
