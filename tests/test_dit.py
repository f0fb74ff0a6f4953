"""task=dit: the paper's DiT sizes, the adaLN-Zero switch LN vs DyT, the diffusion loss, sampling, a run
end to end on the embedded digits (grid PNG, Fréchet distance, scripts/sample_dit.py) and on latents of a
tiny ImageFolder encoded by a tiny local VAE."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dyt.convert import convert
from dyt.layers import DynamicTanh
from tasks.dit import DiTTask, noise_scheduler, sample, variational_bound
from tasks.dit_model import build_dit

from .helpers import ROOT, run_train, summary

TASK_CFG = ROOT / "configs" / "task" / "dit.yaml"


def task_cfg(**overrides):
    cfg = OmegaConf.load(TASK_CFG).task
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def build(norm: str, seed: int = 0, **overrides):
    """What train.py does: seed → build → convert → adapt_to_norm."""
    task = DiTTask(task_cfg(size="debug", **overrides))
    torch.manual_seed(seed)
    model = task.build_model()
    if norm != "native":
        convert(model, norm)
    task.adapt_to_norm(model, OmegaConf.create({"type": norm}))
    return task, model


@pytest.mark.parametrize("size, millions", [("DiT-B/4", 130), ("DiT-L/4", 458), ("DiT-XL/2", 675)])
def test_paper_sizes_build_on_meta_with_the_papers_parameter_counts(size, millions):
    with torch.device("meta"):
        model = build_dit(size)  # ImageNet 256: 32×32×4 latents, 1000 classes, learned σ
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / (millions * 1e6) - 1) < 0.01, n


def test_zero_init_kept_for_layernorm_removed_for_dyt_all_else_equal():
    _, ln = build("layernorm")
    _, dyt = build("dyt")
    for layer in ln.zero_initialised():  # adaLN-Zero: every modulation and the final projection at zero
        assert not layer.weight.any() and not layer.bias.any()
    for layer in dyt.zero_initialised():  # the paper's DyT runs keep the random (xavier) weights
        assert layer.weight.abs().mean() > 1e-2
    # the adaLN LayerNorms have no affine: DyT there is tanh(αx) alone
    norms = [m for m in dyt.modules() if isinstance(m, DynamicTanh)]
    assert len(norms) == 2 * len(dyt.blocks) + 1 and all(m.weight is None and m.bias is None for m in norms)
    zeroed = {f"{path}.{name}" for path, m in ln.named_modules() if m in ln.zero_initialised() for name in ("weight", "bias")}
    ln_state, dyt_state = ln.state_dict(), dyt.state_dict()
    shared = [k for k in ln_state if k not in zeroed]
    assert shared and all(torch.equal(ln_state[k], dyt_state[k]) for k in shared)
    # adaLN-Zero makes every block the identity and the output zero at initialisation
    x, t, y = torch.randn(3, 1, 32, 32), torch.tensor([1, 500, 999]), torch.tensor([0, 4, 9])
    assert not ln(x, t, y).any() and dyt(x, t, y).abs().mean() > 0


def test_zero_init_switch_overrides_the_paper_default():
    _, dyt_zero = build("dyt", **{"model.zero_init": True})
    _, ln_random = build("layernorm", **{"model.zero_init": False})
    assert all(not layer.weight.any() for layer in dyt_zero.zero_initialised())
    assert all(layer.weight.abs().mean() > 1e-2 for layer in ln_random.zero_initialised())
    _, native = build("native")  # the model's own LayerNorm: the paper's baseline, adaLN-Zero kept
    assert all(not layer.weight.any() for layer in native.zero_initialised())


def test_variational_bound_is_zero_for_the_true_posterior_and_positive_otherwise():
    sched = noise_scheduler("ddpm")
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([1, 10, 500, 999])
    xt = sched.add_noise(x0, noise, t)
    exact = variational_bound(sched, x0, xt, t, noise, torch.full_like(x0, -1.0))  # v = −1: posterior variance
    assert exact.abs().max() < 1e-5
    off = variational_bound(sched, x0, xt, t, noise + 0.1, torch.full_like(x0, 0.5))
    assert (off > exact + 5e-5).all()
    at_zero = variational_bound(sched, x0, sched.add_noise(x0, noise, torch.zeros(4, dtype=torch.long)),
                                torch.zeros(4, dtype=torch.long), noise, torch.zeros_like(x0))
    assert torch.isfinite(at_zero).all() and (at_zero > 0).all()  # decoder NLL in bits per dim


class Oracle(torch.nn.Module):
    """A model that knows the one image of each class: the exact ε or v for any x_t, and v = −1 for the
    variance (the true posterior's)."""

    in_channels, out_channels = 1, 2

    def __init__(self, images, prediction):
        super().__init__()
        self.images, self.prediction, self.num_classes = images, prediction, len(images)
        self.abar = noise_scheduler("ddpm").alphas_cumprod

    def forward(self, xt, t, y):
        x0 = self.images[y]
        abar = self.abar[t].view(-1, 1, 1, 1)
        eps = (xt - abar.sqrt() * x0) / (1 - abar).sqrt()
        out = eps if self.prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
        return torch.cat([out, -torch.ones_like(out)], 1)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_exact_predictions_give_zero_loss_and_sample_the_data(prediction):
    task = DiTTask(task_cfg(size="debug", **{"model.prediction": prediction}))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 32, 32, generator=gen) * 2 - 1
    oracle = Oracle(images, prediction)
    y, t = torch.tensor([0, 1, 2, 1]), torch.tensor([1, 40, 500, 999])
    loss, mse = task.diffusion_loss(oracle, images[y], y, t, torch.randn(4, 1, 32, 32, generator=gen))
    assert mse.abs().max() < 1e-6 and loss.abs().max() < 1e-4  # the ε the prediction implies is the noise
    for scheduler in ("ddim", "ddpm"):
        x = sample(oracle, y, (1, 32, 32), scheduler=scheduler, steps=10, prediction=prediction,
                   generator=torch.Generator().manual_seed(0))
        assert (x - images[y]).abs().max() < 1e-3, scheduler


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm"])
def test_sampling_is_seeded_and_guidance_changes_samples(scheduler):
    _, model = build("dyt")
    model.eval()
    labels = torch.tensor([0, 3, 7])

    def draw(cfg_scale):
        return sample(model, labels, (1, 32, 32), scheduler=scheduler, steps=4, cfg_scale=cfg_scale,
                      generator=torch.Generator().manual_seed(1))

    a, b, guided = draw(1.0), draw(1.0), draw(4.0)
    assert a.shape == (3, 1, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, guided)


def test_train_on_digits_writes_grid_and_fd_then_sample_script(tmp_path):
    run = tmp_path / "run"
    run_train(run, "task=dit", "norm=dyt", "task.size=debug", "trainer.max_steps=3", "trainer.batch_size=16",
              "task.eval.num_samples=40", "task.eval.final_num_samples=60", "task.sample.steps=3",
              f"task.eval.cache_dir={tmp_path / 'cache'}", timeout=300)
    result = summary(run)
    assert result["status"] == "completed" and result["headline"]["name"] == "val/fd_mnist_classifier"
    assert result["final"]["val/fd_mnist_classifier"] > 0 and np.isfinite(result["final"]["val/loss"])
    assert (tmp_path / "cache" / "fd_mnist_classifier-v2.pt").exists()  # cached for the next run
    assert "LayerNorm → DynamicTanh" in (run / "norms.txt").read_text()
    grid = Image.open(run / "samples.png")
    assert grid.size == (10 * 34 + 2, 10 * 34 + 2)  # 10 classes × 10 samples of 32×32, 2 px padding

    from scripts.sample_dit import main as sample_main

    out = sample_main([str(run), "--out", str(tmp_path / "grid.png"), "--classes", "2", "7", "--per-class", "3",
                       "--steps", "2"])
    assert Image.open(out).size == (3 * 34 + 2, 2 * 34 + 2)


def _tiny_vae(path: Path, blocks: int = 2) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                  block_out_channels=(8,) * blocks, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(path)


def test_image_folder_is_encoded_once_to_latents_and_trained_in_latent_space(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for label in ("cat", "dog"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / label / f"{i}.png")
    _tiny_vae(tmp_path / "vae")
    run = tmp_path / "run"
    args = ["task=dit", "norm=layernorm", "task.size=debug", f"task.data.root={tmp_path / 'data'}",
            f"task.vae.path={tmp_path / 'vae'}", "task.data.num_classes=2", "task.data.image_size=32",
            f"task.data.cache_dir={tmp_path / 'latents'}", "task.data.num_workers=0", "trainer.max_steps=2",
            "trainer.batch_size=8", "task.sample.steps=2", "task.sample.scheduler=ddpm", "task.grid.per_class=2"]
    run_train(run, *args, timeout=300)
    caches = sorted(p for p in (tmp_path / "latents").iterdir() if p.is_dir())  # not the .lock files
    assert [c.name.split("-")[0] for c in caches] == ["train", "val"]
    assert all((c / "COMPLETE").exists() for c in caches)
    latents = np.load(caches[0] / "latents.npy")
    assert latents.shape == (12, 2, 4, 16, 16)  # image and mirror image, 4 latent channels, 32 / 2
    assert np.abs(latents).max() > 0
    stamp = (caches[0] / "latents.npy").stat().st_mtime
    result = summary(run)
    assert result["status"] == "completed" and result["headline"]["name"] == "val/loss"  # no Inception weights
    assert Image.open(run / "samples.png").mode == "RGB"  # decoded by the VAE
    run_train(tmp_path / "run2", *args, timeout=300)
    assert (caches[0] / "latents.npy").stat().st_mtime == stamp  # encoded once


@pytest.mark.parametrize("name, size", [("dit_b4", "DiT-B/4"), ("dit_l4", "DiT-L/4"), ("dit_xl2", "DiT-XL/2")])
def test_experiment_configs_are_the_papers_recipe(tmp_path, name, size):
    from hydra import compose, initialize_config_dir

    import dyt.train  # noqa: F401  (registers the schemas and resolvers)

    _tiny_vae(tmp_path / "vae", blocks=4)  # SD's VAE geometry: 4 channels, ÷8
    for split in ("train", "val"):  # an ImageFolder tree's layout (check_config looks for it)
        (tmp_path / split).mkdir()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        bare = compose("train", overrides=[f"experiment={name}", "norm=dyt"])
        cfg = compose("train", overrides=[f"experiment={name}", "norm=dyt", f"task.data.root={tmp_path}",
                                          f"task.vae.path={tmp_path / 'vae'}"])
    with pytest.raises(ValueError, match="task.data.root"):  # never a 400k-step run on the digits by mistake
        DiTTask(bare.task)
    assert cfg.task.name == "dit" and cfg.task.size == size
    optim = cfg.trainer.optim
    assert optim.lr == 4e-4 and optim.weight_decay == 0 and optim.min_lr_ratio == 1.0 and optim.clip_grad is None
    assert cfg.trainer.ema_decay == 0.9999 and cfg.trainer.max_steps == 400_000
    assert cfg.task.model.prediction == "epsilon" and cfg.task.model.learn_sigma
    assert cfg.task.sample.scheduler == "ddpm" and cfg.task.sample.steps == 250 and cfg.task.sample.cfg_scale == 1
    assert cfg.task.eval.final_num_samples == 50_000 and cfg.task.eval.fid is True
    cfg.task.eval.fid = False  # no Inception weights here
    task = DiTTask(cfg.task)
    with torch.device("meta"):
        model = task.build_model()
    assert model.x_embedder.img_size == (32, 32) and model.in_channels == 4
