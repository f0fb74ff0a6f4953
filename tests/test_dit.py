"""task=dit: the paper's DiT sizes, the adaLN-Zero switch LN vs DyT, the diffusion loss, sampling, FID as
ADM's evaluator computes it (uint8 samples, random labels, the reference batch's stored mu and sigma), a run
end to end on the embedded digits (grid PNG, Fréchet distance, scripts/sample_dit.py and its npz) and on VAE
posteriors of a tiny ImageFolder encoded by a tiny local VAE (centre crop, a flip and a posterior sample per
step, exact resume). The recipes of experiment=dit_* are pinned in tests/test_recipes_dit.py.

No Inception weights can be downloaded here: the FID tests save torch-fidelity's InceptionV3 with random
weights to a local file and run the real path (the weights file, TF1's resize, uint8 input) on it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dyt.convert import convert
from dyt.layers import DynamicTanh
from tasks import fid
from tasks.dit import DiTTask, draw_latents, noise_scheduler, sample, variational_bound
from tasks.dit_model import build_dit

from .helpers import ROOT, metrics, run_train, summary

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


def test_train_on_digits_writes_grid_and_fd_then_sample_script(tmp_path, inception_weights, monkeypatch, capsys):
    run = tmp_path / "run"
    run_train(run, "task=dit", "norm=dyt", "task.size=debug", "trainer.max_steps=3", "trainer.batch_size=16",
              "task.eval.num_samples=40", "task.eval.final_num_samples=60", "task.sample.steps=3", timeout=300)
    result = summary(run)
    assert result["status"] == "completed" and result["headline"]["name"] == "val/fd_mnist_classifier"
    assert result["final"]["val/fd_mnist_classifier"] > 0 and np.isfinite(result["final"]["val/loss"])
    assert "LayerNorm → DynamicTanh" in (run / "norms.txt").read_text()
    grid = Image.open(run / "samples.png")
    assert grid.size == (10 * 34 + 2, 10 * 34 + 2)  # 10 classes × 10 samples of 32×32, 2 px padding

    from scripts.sample_dit import main as sample_main

    monkeypatch.setattr(fid, "INCEPTION_FEATURES", "64")  # a cheap sqrtm (see the uint8 test below)
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    reference = _adm_reference(inception_weights.parent / "ref_digits_64.npz", images, "64")
    out = sample_main([str(run), "--out", str(tmp_path / "grid.png"), "--classes", "2", "7", "--per-class", "3",
                       "--steps", "2", "--num-samples", "7", "--npz", str(tmp_path / "samples.npz"),
                       "--fid-reference", str(reference), "--inception-path", str(inception_weights)])
    assert Image.open(out).size == (3 * 34 + 2, 2 * 34 + 2)
    printed = capsys.readouterr().out.split()
    assert float(printed[printed.index("FID") + 1]) > 0  # the suite's FID of the npz it wrote
    with np.load(tmp_path / "samples.npz") as npz:  # ADM's sample batch: uint8 NHWC RGB, labels beside
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (7, 32, 32, 3)
        assert npz["arr_1"].tolist() == [0, 1, 2, 3, 4, 5, 6]  # the CPU default's balanced labels
    assert not list(tmp_path.glob("samples.arr_*.npy"))  # the staging arrays are gone


def _tiny_vae(path: Path, blocks: int = 2) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                  block_out_channels=(8,) * blocks, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(path)


def test_image_folder_is_encoded_once_to_posteriors_and_resumes_exactly(tmp_path):
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
            f"task.vae.path={tmp_path / 'vae'}", "task.data.image_size=32",
            f"task.data.cache_dir={tmp_path / 'latents'}", "task.data.num_workers=0", "trainer.max_steps=2",
            "trainer.batch_size=4", "trainer.log_every=1", "trainer.ckpt_every=1", "task.sample.steps=2",
            "task.sample.scheduler=ddpm", "task.grid.per_class=2"]
    run_train(run, *args, timeout=300)
    caches = sorted(p for p in (tmp_path / "latents").iterdir() if p.is_dir())  # not the .lock files
    assert [c.name.split("-")[0] for c in caches] == ["train", "val"]
    assert all((c / "COMPLETE").exists() for c in caches)
    mean, logvar = np.load(caches[0] / "mean.npy"), np.load(caches[0] / "logvar.npy")
    assert mean.shape == logvar.shape == (12, 2, 4, 16, 16)  # image and mirror image, 4 channels, 32 / 2
    assert mean.dtype == np.float32 and logvar.dtype == np.float16

    # the cache holds the VAE's posterior of the centre-cropped first image and of its mirror image
    from diffusers import AutoencoderKL

    from tasks.data.latents import image_transform

    vae = AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    x = image_transform(32)(Image.open(tmp_path / "data" / "train" / "cat" / "0.png").convert("RGB"))[None]
    with torch.no_grad():
        for orientation, image in enumerate((x, x.flip(-1))):
            posterior = vae.encode(image).latent_dist
            assert np.allclose(mean[0, orientation], posterior.mean[0].numpy(), atol=1e-5)
            assert np.allclose(logvar[0, orientation], posterior.logvar[0].numpy(), atol=2e-2)
    assert not np.allclose(mean[0, 0], mean[0, 1])

    result = summary(run)
    assert result["status"] == "completed" and result["headline"]["name"] == "val/loss"  # no Inception weights
    assert Image.open(run / "samples.png").mode == "RGB"  # decoded by the VAE
    stamp = (caches[0] / "mean.npy").stat().st_mtime
    step2 = [r["train/loss"] for r in metrics(run) if r["step"] == 2 and "train/loss" in r]

    # resume from step 1: the flips and posterior samples of step 2 come from the restored training RNG
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_00000002")
    (run / "summary.json").unlink()
    rerun = run_train(run, *args, timeout=300)
    assert "resumed from" in rerun.stdout + rerun.stderr
    again = [r["train/loss"] for r in metrics(run) if r["step"] == 2 and "train/loss" in r]
    assert step2 and again[-1] == step2[0]
    assert (caches[0] / "mean.npy").stat().st_mtime == stamp  # encoded once


def test_latents_are_a_random_flip_and_a_fresh_posterior_sample_from_the_global_rng():
    n = 20_000
    posterior = torch.zeros(n, 2, 2, 1, 1, 1)
    posterior[:, 0, 0], posterior[:, 1, 0] = 3.0, -3.0  # the image's mean, the mirror image's
    posterior[:, :, 1] = 2 * np.log(0.5)  # log-variance: std 0.5
    torch.manual_seed(0)
    z = draw_latents(posterior, 0.5).flatten()
    mirrored = z < 0
    assert 0.48 < mirrored.float().mean() < 0.52  # RandomHorizontalFlip's p = 0.5
    assert abs(z[~mirrored].mean() - 1.5) < 0.01 and abs(z[mirrored].mean() + 1.5) < 0.01  # × scaling factor
    assert abs(z[~mirrored].std() - 0.25) < 0.01  # a sample of the posterior, std 0.5 × 0.5
    torch.manual_seed(0)
    assert torch.equal(draw_latents(posterior, 0.5).flatten(), z)  # a restored RNG state draws them again
    assert not torch.equal(draw_latents(posterior, 0.5).flatten(), z)  # a fresh sample every step
    kept = draw_latents(posterior, 0.5, flip=False, generator=torch.Generator().manual_seed(1))
    assert (kept > 0).all()  # evaluation: the image as it is


def test_center_crop_is_adms_box_halving_then_bicubic_then_floored_centre():
    from tasks.data.latents import center_crop_arr

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    # 4×4 blocks of one colour: box-halving twice (shorter side 256 ≥ 2 × 64, then 128 ≥ 2 × 64) is exact
    image = Image.fromarray(blocks.repeat(4, 0).repeat(4, 1))  # 384 × 256 (width × height)
    out = np.asarray(center_crop_arr(image, 64))
    assert out.shape == (64, 64, 3) and np.array_equal(out, blocks[:, 16:80])  # (96 − 64) // 2 = 16
    odd = Image.fromarray(rng.integers(0, 255, (64, 71, 3), dtype=np.uint8))  # no resize needed; 7 // 2 = 3
    assert np.array_equal(np.asarray(center_crop_arr(odd, 64)), np.asarray(odd)[:, 3:67])


# ------------------------------------------------------------------ FID as ADM's evaluator computes it


def _random_inception(path: Path) -> Path:
    """torch-fidelity's InceptionV3 with random weights (He-initialised, so features vary between images),
    saved where real weights would be: the offline stand-in for weights-inception-2015-12-05-6726825d.pth."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as module

    with mock.patch.object(module.FeatureExtractorInceptionV3, "load_state_dict"), \
            mock.patch.object(module, "load_state_dict_from_url", return_value={}):
        torch.manual_seed(0)
        network = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for layer in network.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    return _random_inception(tmp_path_factory.mktemp("inception") / fid.INCEPTION_FILE)


def _adm_reference(path: Path, images: np.ndarray, layer: str) -> Path:
    """A reference batch in ADM's layout: uint8 NHWC arr_0 and the mu/sigma of its Inception features,
    computed here with torch-fidelity's network directly and numpy, as ADM's compute_statistics."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    network = FeatureExtractorInceptionV3("inception-v3-compat", [layer],
                                          feature_extractor_weights_path=str(path.parent / fid.INCEPTION_FILE))
    with torch.no_grad():
        activations = network(torch.from_numpy(images).permute(0, 3, 1, 2))[0].numpy()
    np.savez(path, arr_0=images, mu=activations.mean(0), sigma=np.cov(activations, rowvar=False))
    return path


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 12 images: a singular covariance
def test_fid_of_the_reference_batch_against_its_own_statistics_is_zero(inception_weights):
    # one 2048-d sqrtm (~15–30 s on this machine's one thread): the pool_3 features real runs use
    images = np.random.default_rng(0).integers(0, 256, (12, 24, 24, 3), dtype=np.uint8)
    reference = _adm_reference(inception_weights.parent / "ref_2048.npz", images, "2048")
    features = fid.InceptionFeatures(inception_weights)  # pool_3, 2048-d: the real runs' features
    mu, sigma = fid.npz_statistics(reference, features)
    with np.load(reference) as npz:
        assert np.array_equal(mu, npz["mu"]) and np.array_equal(sigma, npz["sigma"])
    own = fid.image_statistics(fid.npz_images(reference, batch_size=5), features)  # as samples are scored
    assert own[0].shape == (2048,) and np.trace(own[1]) > 1e-3
    assert abs(fid.frechet_distance(*own, mu, sigma)) < 1e-4 * np.trace(sigma)


def test_reference_statistics_are_the_stored_moments_else_those_of_arr_0(tmp_path):
    def colour(images):  # an injected feature network: mean colour, so the expected numbers are plain numpy
        assert images.dtype == torch.uint8
        return images.double().mean((2, 3))

    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    stored_mu, stored_sigma = np.full(3, 7.0), np.eye(3) * 2
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=stored_mu, sigma=stored_sigma)
    mu, sigma = fid.npz_statistics(tmp_path / "ref.npz", colour)
    assert np.array_equal(mu, stored_mu) and np.array_equal(sigma, stored_sigma)  # not the 10k images' own
    np.savez(tmp_path / "samples.npz", arr_0=images)  # a sample batch: statistics of its images (ADM)
    activations = images.astype(np.float64).mean((1, 2))
    mu, sigma = fid.npz_statistics(tmp_path / "samples.npz", colour, batch_size=7)
    assert np.allclose(mu, activations.mean(0)) and np.allclose(sigma, np.cov(activations, rowvar=False))
    for rank in (0, 1):  # two processes read every other image, streamed in chunks
        share = torch.cat(list(fid.npz_images(tmp_path / "samples.npz", rank=rank, world=2, batch_size=4)))
        assert np.array_equal(share.permute(0, 2, 3, 1).numpy(), images[rank::2])
    np.savez(tmp_path / "floats.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        fid.npz_statistics(tmp_path / "floats.npz", colour)
    np.savez(tmp_path / "other.npz", x=images)
    with pytest.raises(ValueError, match="mu/sigma nor arr_0"):
        DiTTask(task_cfg(size="debug", **{"eval.reference": str(tmp_path / "other.npz")}))


def test_frechet_distance_and_moments_are_adms():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # diagonal covariances
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    rotation = np.linalg.qr(rng.normal(size=(5, 5)))[0]  # invariant under a rotation of both
    rotated = fid.frechet_distance(rotation @ mu1, rotation @ np.diag(a) @ rotation.T, rotation @ mu2,
                                   rotation @ np.diag(b) @ rotation.T)
    assert rotated == pytest.approx(expected, rel=1e-8)
    # moments: np.mean and np.cov(rowvar=False), summed over two "processes" by `reduce`
    features = torch.from_numpy(rng.normal(3.0, 2.0, (101, 6)))
    shards = [fid.FeatureMoments().add(features[:40]), fid.FeatureMoments().add(features[40:])]

    def reduce(totals):
        key = next(iter(totals))
        mine = {"count": torch.tensor(float(shards[0].count)), "total": shards[0].total, "outer": shards[0].outer}
        return {key: mine[key] + totals[key]}

    mu, sigma = shards[1].reduced(reduce).statistics()
    assert np.allclose(mu, features.mean(0).numpy()) and np.allclose(sigma, np.cov(features.numpy(), rowvar=False))


def test_uint8_is_dits_conversion():
    x = torch.tensor([-1.2, -1.0, -0.999, -0.5, 0.0, 0.003, 0.5, 0.996, 1.0, 1.3]).view(1, 1, 1, -1)
    expected = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)  # DiT's sample_ddp.py
    out = fid.to_uint8(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 1, 10) and torch.equal(out[:, 0], expected[:, 0])
    assert out[0, 0, 0].tolist() == [0, 0, 0, 64, 128, 128, 191, 254, 255, 255]


def test_samples_are_scored_as_uint8_with_random_labels(tmp_path, inception_weights, monkeypatch):
    from scripts.sample_dit import write_sample_npz

    # the stem's 64-d features keep sqrtm cheap (2048-d costs ~15 s here); everything else is the runs' path
    monkeypatch.setattr(fid, "INCEPTION_FEATURES", "64")
    images = np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    reference = _adm_reference(inception_weights.parent / "ref_64.npz", images, "64")
    task = DiTTask(task_cfg(size="debug", **{"eval.fid": True, "eval.inception_path": str(inception_weights),
                                             "eval.reference": str(reference), "eval.labels": "random",
                                             "sample.steps": 2, "sample.batch_size": 4}))
    assert task.metric_name == "fid"
    torch.manual_seed(0)
    model = task.build_model().eval()
    in_run = task.frechet_distance(model, 10)
    npz = write_sample_npz(task, model, tmp_path / "samples.npz", 10, device="cpu")
    with np.load(npz) as batch:
        samples, labels = batch["arr_0"], batch["arr_1"]
    assert samples.dtype == np.uint8 and samples.shape == (10, 32, 32, 3)
    # the run scores exactly the uint8 images the npz holds, against the reference's stored mu and sigma
    features = fid.InceptionFeatures(inception_weights)
    assert in_run == pytest.approx(fid.npz_fid(npz, reference, features), rel=1e-5)
    own = fid.image_statistics(fid.npz_images(reference), features)  # the reference images themselves
    assert abs(fid.frechet_distance(*own, *fid.npz_statistics(reference))) < 1e-3 * in_run
    # random labels as DiT's sample_ddp.py (uniform draws, here from the sampling generator), not balanced
    first = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(task.cfg.eval.seed))
    assert labels[:4].tolist() == first.tolist() and labels.tolist() != list(range(10))
    with pytest.raises(TypeError, match="uint8"):  # floats never reach the Inception network
        features(torch.rand(2, 3, 32, 32))


def test_dits_250_step_respacing_is_diffusers_linspace():
    # facebookresearch/DiT diffusion/respace.py space_timesteps(1000, "250"): a stride of 999/249, rounded
    stride, taken, position = 999 / 249, [], 0.0
    for _ in range(250):
        taken.append(round(position))
        position += stride
    sched = noise_scheduler("ddpm", learn_sigma=True, spacing="linspace")
    sched.set_timesteps(250)
    assert sorted(sched.timesteps.tolist()) == taken
