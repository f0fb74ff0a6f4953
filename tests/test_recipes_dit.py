"""The paper's Table 3 rows (`experiment=dit_b4`, `dit_l4`, `dit_xl2`) are DiT's runs with the DyT paper's
changes: each recipe value, composed as a user's command composes it, against the official file it comes
from (named beside it). Official code: facebookresearch/DiT (train.py, sample_ddp.py, models.py,
diffusion/), jiachenzhu/DyT (other_tasks/DiT/: learning-rate-fix.patch, dynamic-tanh.patch,
dynamic_tanh.py), openai/guided-diffusion (evaluations/evaluator.py, image_datasets.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dyt.convert import convert
from dyt.layers import DynamicTanh
from dyt.train.config import norm_spec, validate
from tasks.dit import DiTTask, noise_scheduler
from tasks.fid import INCEPTION_FILE

from .test_dit import _tiny_vae
from .test_trainer import compose_cfg

# experiment → (DiT size, depth, hidden, heads, patch): facebookresearch/DiT models.py DiT_B_4, DiT_L_4, DiT_XL_2
ROWS = {"dit_b4": ("DiT-B/4", 12, 768, 12, 4), "dit_l4": ("DiT-L/4", 24, 1024, 16, 4),
        "dit_xl2": ("DiT-XL/2", 28, 1152, 16, 2)}


@pytest.fixture(scope="module")
def local_files(tmp_path_factory):
    """What a user points a paper row at: an ImageFolder tree, an SD-geometry VAE (4 channels, ÷8), ADM's
    reference batch (mu, sigma) and an Inception weights file (present; never opened here)."""
    root = tmp_path_factory.mktemp("dit_recipe")
    for split in ("train", "val"):  # ImageNet's 1,000 class folders, as the rows' num_classes says (checked)
        for label in range(1000):
            (root / "imagenet" / split / f"n{label:08d}").mkdir(parents=True)
    _tiny_vae(root / "vae", blocks=4)
    np.savez(root / "VIRTUAL_imagenet256_labeled.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    (root / INCEPTION_FILE).write_bytes(b"")
    return root


def compose(name: str, norm: str, files, *extra: str):
    cfg = compose_cfg(f"experiment={name}", f"norm={norm}", f"task.data.root={files / 'imagenet'}",
                      f"task.vae.path={files / 'vae'}", f"task.eval.reference={files / 'VIRTUAL_imagenet256_labeled.npz'}",
                      f"task.eval.inception_path={files / INCEPTION_FILE}", *extra)
    validate(cfg)
    return cfg


@pytest.mark.parametrize("name", sorted(ROWS))
def test_training_recipe_is_dits_with_the_dyt_learning_rate(name, local_files):
    cfg = compose(name, "dyt", local_files)
    trainer, optim = cfg.trainer, cfg.trainer.optim
    assert optim.lr == 4e-4  # jiachenzhu/DyT other_tasks/DiT/learning-rate-fix.patch: --lr default 4e-4 (LN and DyT)
    assert trainer.global_batch_size == 256  # facebookresearch/DiT train.py: --global-batch-size 256
    assert optim.schedule == "constant" and optim.warmup_steps == 0  # facebookresearch/DiT train.py: fixed lr, no scheduler
    assert optim.weight_decay == 0  # facebookresearch/DiT train.py: AdamW(model.parameters(), weight_decay=0)
    assert list(optim.betas) == [0.9, 0.999] and optim.eps == 1e-8  # facebookresearch/DiT train.py: "default Adam betas"
    assert optim.clip_grad is None  # facebookresearch/DiT train.py: no gradient clipping
    assert trainer.ema_decay == 0.9999  # facebookresearch/DiT train.py: update_ema(decay=0.9999) every step
    assert trainer.max_steps == 400_000  # facebookresearch/DiT README.md: FID-50K of B/4 and XL/2 at 400K train steps
    assert cfg.task.data.image_size == 256  # facebookresearch/DiT train.py: --image-size 256, center_crop_arr
    assert cfg.task.data.num_classes == 1000  # facebookresearch/DiT train.py: --num-classes 1000


@pytest.mark.parametrize("name", sorted(ROWS))
def test_model_and_diffusion_are_dits(name, local_files):
    size, depth, hidden, heads, patch = ROWS[name]
    cfg = compose(name, "layernorm", local_files)
    assert cfg.task.size == size
    assert cfg.task.model.learn_sigma  # facebookresearch/DiT models.py learn_sigma=True; diffusion/__init__.py LEARNED_RANGE
    assert cfg.task.model.prediction == "epsilon"  # facebookresearch/DiT diffusion/__init__.py: predict_xstart=False → EPSILON
    assert cfg.task.model.class_dropout == 0.1  # facebookresearch/DiT models.py: class_dropout_prob=0.1
    task = DiTTask(cfg.task)
    with torch.device("meta"):
        model = task.build_model()
    assert len(model.blocks) == depth and model.pos_embed.shape[-1] == hidden  # facebookresearch/DiT models.py
    assert model.blocks[0].attn.num_heads == heads and model.patch_size == patch  # facebookresearch/DiT models.py
    # facebookresearch/DiT train.py: latent_size = image_size // 8, SD-VAE's 4 channels, 1000 classes
    assert model.x_embedder.img_size == (32, 32) and model.in_channels == 4 and model.num_classes == 1000
    assert model.out_channels == 8  # learned σ: ε and the variance interpolation


@pytest.mark.parametrize("name", sorted(ROWS))
def test_dyt_changes_are_the_papers(name, local_files):
    """Built small (task.size=debug) with the row's task and norm settings, as dyt.train.run builds it."""
    models = {}
    for norm in ("layernorm", "dyt"):
        cfg = compose(name, norm, local_files, "task.size=debug")
        task = DiTTask(cfg.task)
        torch.manual_seed(0)
        model = task.build_model()
        convert(model, norm_spec(cfg.norm), roles=task.norm_roles, exclude=task.norm_exclude)
        task.adapt_to_norm(model, cfg.norm)
        models[norm] = model
    # jiachenzhu/DyT other_tasks/DiT/dynamic-tanh.patch: the adaLN-Zero zeroing is deleted for DyT …
    assert all(layer.weight.abs().mean() > 1e-3 for layer in models["dyt"].zero_initialised())
    # … and kept for the LayerNorm baseline (facebookresearch/DiT models.py initialize_weights)
    assert all(not layer.weight.any() and not layer.bias.any() for layer in models["layernorm"].zero_initialised())
    # jiachenzhu/DyT other_tasks/DiT/dynamic_tanh.py: every LayerNorm → DynamicTanh(elementwise_affine=False,
    # alpha_init_value=0.5), i.e. tanh(αx) alone, since DiT's LayerNorms have no affine
    dyts = [m for m in models["dyt"].modules() if isinstance(m, DynamicTanh)]
    assert len(dyts) == 2 * len(models["dyt"].blocks) + 1
    assert all(m.weight is None and m.bias is None and m.alpha.detach().item() == 0.5 for m in dyts)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in models["dyt"].modules())


@pytest.mark.parametrize("name", sorted(ROWS))
def test_fid_is_adms_protocol(name, local_files):
    cfg = compose(name, "dyt", local_files)
    sample, evaluation = cfg.task.sample, cfg.task.eval
    assert sample.scheduler == "ddpm" and sample.steps == 250  # facebookresearch/DiT sample_ddp.py: p_sample_loop, --num-sampling-steps 250
    assert sample.timestep_spacing == "linspace"  # facebookresearch/DiT diffusion/respace.py: space_timesteps(1000, "250")
    scheduler = noise_scheduler("ddpm", True, spacing=sample.timestep_spacing)
    scheduler.set_timesteps(sample.steps)
    assert scheduler.timesteps[0] == 999 and scheduler.timesteps[-1] == 0  # both ends, as space_timesteps
    assert sample.cfg_scale == 1.0  # facebookresearch/DiT README.md: FID-50K "without guidance (cfg-scale=1)"
    assert evaluation.final_num_samples == 50_000  # facebookresearch/DiT sample_ddp.py: --num-fid-samples 50_000
    assert evaluation.labels == "random"  # facebookresearch/DiT sample_ddp.py: y = torch.randint(0, num_classes, (n,))
    assert evaluation.fid is True  # the table's metric: a run without Inception weights fails at start
    task = DiTTask(cfg.task)
    assert task.metric == "inception" and task.headline.name == "val/fid"
    # facebookresearch/DiT sample_ddp.py: clamp(127.5·x + 128, 0, 255) → uint8, the images ADM's evaluator reads
    images = task.metric_input(torch.tensor([-1.0, 0.0, 0.999, 1.0]).view(1, 1, 2, 2))
    assert images.dtype == torch.uint8 and images.flatten()[:4].tolist() == [0, 128, 255, 255]
    # openai/guided-diffusion evaluations/evaluator.py read_statistics: the reference is the stored mu and sigma
    from tasks.fid import npz_statistics

    mu, sigma = npz_statistics(evaluation.reference)
    assert mu.shape == (2048,) and np.array_equal(sigma, np.eye(2048))


@pytest.mark.parametrize("name", sorted(ROWS))
def test_a_paper_row_needs_adms_reference_batch(name, local_files):
    cfg = compose_cfg(f"experiment={name}", "norm=dyt", f"task.data.root={local_files / 'imagenet'}",
                      f"task.vae.path={local_files / 'vae'}", f"task.eval.inception_path={local_files / INCEPTION_FILE}")
    with pytest.raises(ValueError, match="task.eval.reference is required.*VIRTUAL_imagenet256_labeled.npz"):
        validate(cfg)
    bare = compose_cfg(f"experiment={name}", "norm=dyt")  # never a 400k-step run on the digits by mistake
    with pytest.raises(ValueError, match="task.data.root"):
        DiTTask(bare.task)
