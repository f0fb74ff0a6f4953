"""wav2vec 2.0 self-supervised pretraining (the paper's Table 5): transformers' Wav2Vec2ForPreTraining built from
a config, trained as fairseq's recipe does.

Spans of the latent frames are masked (`_compute_mask_indices`: p = 0.65, length 10, at least 2 spans; with
`task.require_same_masks`, as fairseq, every utterance of a batch then keeps the same number of masked
frames), 100 negatives are drawn from the masked frames of the same utterance (`_sample_negative_indices`),
and the loss is fairseq's: InfoNCE over the masked frames + 0.1 × the codebook diversity loss (the CPU
default: 0) + 10 × the L2 penalty on the conv features, with the Gumbel temperature annealed per update
(`set_step`). Losses are reported as fairseq logs them and the paper quotes them: summed over the masked
frames, divided by their number, in bits (log base 2); with them fairseq's contrastive accuracy, which
tells learning from chance (≈ 1/(number of distinct candidates)) where the loss barely moves, and the
codebook perplexities, which tell a collapse.

Norms: the norms of the conv feature extractor are kept, as the official DyT patch keeps them (it swaps
only the features' LayerNorm and the Transformer's); in fairseq's default extractor, which Base and Large
on LibriSpeech use, that is the GroupNorm of the first conv layer. Every other LayerNorm (Transformer
blocks, the encoder's LayerNorm, the feature projection's) becomes the chosen norm. The CPU size reads
log-mel frames instead of the conv stack (`task.front_end`); their per-bin GroupNorm is kept in the same way.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.audio_utils import mel_filter_bank
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from dyt.train.config import ConfigError
from dyt.train.task import Headline, Task

from .data import speech

log = logging.getLogger("dyt.train")

# Architectures. Base is fairseq's wav2vec2_base_librispeech.yaml (post-LN, fairseq's default extractor mode:
# GroupNorm in the first conv layer, no conv bias; final_dim 256): transformers' Wav2Vec2Config defaults.
# Large is the DyT repo's wav2vec2_large_librispeech.yaml (other_tasks/wav2vec2/): 24 × 1024, pre-LN
# (`do_stable_layer_norm`, fairseq's layer_norm_first), final_dim 768, and fairseq's default extractor as
# Base's. (fairseq's LibriVox Large, wav2vec2_large_librivox.yaml, has a LayerNorm and a bias in every conv
# layer: `++task.model.feat_extract_norm=layer ++task.model.conv_bias=true`.)
SIZES = {
    "debug": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                  num_codevectors_per_group=32, codevector_dim=32, proj_codevector_dim=32),
    "cpu": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                conv_dim=(64,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8,
                num_codevectors_per_group=64, codevector_dim=64, proj_codevector_dim=64),
    "base": dict(),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  do_stable_layer_norm=True, codevector_dim=768, proj_codevector_dim=768),
}

# What reads the waveform: fairseq's conv stack, or log-mel frames. The CPU size reads log-mel: at its scale a
# randomly initialised conv stack gives features that are white from one 20 ms frame to the next, so the
# quantised targets are noise and the contrastive loss stays at chance for thousands of steps (README).
FRONT_ENDS = {"debug": "conv", "cpu": "log_mel", "base": "conv", "large": "conv"}
MEL_BINS, MEL_WINDOW, MEL_HOP = 80, 400, 320  # 25 ms windows every 20 ms at 16 kHz: the conv stack's framing
# the config describes the log-mel front end as one "conv layer" of its window and hop, so that transformers
# computes frame counts (masks, attention) as the front end produces them
LOG_MEL_FRAMING = dict(conv_dim=(MEL_BINS,), conv_kernel=(MEL_WINDOW,), conv_stride=(MEL_HOP,))


class LogMelFrames(nn.Module):
    """Log-mel frames of the waveform (Hann window, power spectrum, Slaney mel filters), each bin normalised
    over the utterance's frames by a GroupNorm with one group per bin: the per-channel normalisation that
    Base's first conv layer applies, and like it kept when the norms are converted."""

    def __init__(self, sample_rate: int = 16_000):
        super().__init__()
        filters = mel_filter_bank(num_frequency_bins=MEL_WINDOW // 2 + 1, num_mel_filters=MEL_BINS,
                                  min_frequency=20.0, max_frequency=sample_rate / 2, sampling_rate=sample_rate,
                                  norm="slaney", mel_scale="slaney")
        self.register_buffer("filters", torch.tensor(filters.T, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(MEL_WINDOW), persistent=False)
        self.norm = nn.GroupNorm(MEL_BINS, MEL_BINS)

    def forward(self, waves: torch.Tensor) -> torch.Tensor:  # [B, samples] → [B, bins, frames]
        spectrum = torch.stft(waves.float(), MEL_WINDOW, MEL_HOP, window=self.window, center=False,
                              return_complex=True).abs().pow(2)
        return self.norm((self.filters @ spectrum).clamp_min(1e-10).log())


# task.data.val: hold out part of the training files (fairseq's wav2vec_manifest.py --valid-percent)
HELD_OUT = "held_out"


def same_mask_counts(mask: np.ndarray) -> np.ndarray:
    """fairseq's `require_same_masks` (fairseq/data/data_utils.py `compute_mask_indices`): every utterance
    of the batch keeps as many masked frames as the one with the fewest has, drawn at random among its own
    (overlapping spans mask different numbers of frames)."""
    fewest = int(mask.sum(1).min())
    same = np.zeros_like(mask)
    for row, masked in enumerate(mask):
        same[row, np.random.choice(np.flatnonzero(masked), fewest, replace=False)] = True
    return same


@contextmanager
def numpy_seed(seed: int):
    """transformers' mask and negative samplers draw from numpy's global RNG: fix it for a block."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


class Wav2Vec2Pretraining(Task):
    headline = Headline("val/loss", higher_is_better=False)
    open_sections = ("model",)  # Wav2Vec2Config's fields, checked against it
    shard_units = r"wav2vec2\.encoder\.layers\.\d+"  # the Transformer layers

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.size not in SIZES:
            raise ConfigError(f"task.size={cfg.size} is unknown; known: {', '.join(SIZES)}")
        fields = Wav2Vec2Config().to_dict()  # task.model: Wav2Vec2Config fields, which would take a typo silently
        unknown = sorted(k for k in cfg.model if k not in fields)
        if unknown:
            raise ConfigError(f"unknown config key task.model.{unknown[0]}: task.model takes Wav2Vec2Config's fields "
                              "(transformers), e.g. task.model.layerdrop")
        if cfg.front_end not in (None, "conv", "log_mel"):
            raise ConfigError(f"task.front_end={cfg.front_end} is unknown; use conv or log_mel (null: the size's)")
        if cfg.model.get("feat_extract_norm", "group") not in ("group", "layer"):
            raise ConfigError(f"task.model.feat_extract_norm={cfg.model.feat_extract_norm} is unknown; use group "
                              f"(fairseq's default extractor) or layer (its layer_norm extractor)")
        d = cfg.data
        # never a 400k-step Base or Large run on the synthesised speech by mistake; the debug and cpu sizes
        # (smoke runs, tests) may still use it
        if d.require_root and not d.root and cfg.size in ("base", "large"):
            raise ConfigError(f"task.size={cfg.size} trains on LibriSpeech here (task.data.require_root): give "
                              f"task.data.root=/path/to/LibriSpeech")
        if d.batching not in speech.BATCHINGS:
            raise ConfigError(f"task.data.batching={d.batching} is unknown; use {' or '.join(speech.BATCHINGS)}")
        if d.val != HELD_OUT and not OmegaConf.is_list(d.val):
            raise ConfigError(f"task.data.val={d.val} is neither {HELD_OUT} nor a list of folders under "
                              f"task.data.root (e.g. task.data.val=[dev-clean,dev-other])")
        if d.val == HELD_OUT and not 0 < d.held_out_fraction < 1:
            raise ConfigError(f"task.data.held_out_fraction={d.held_out_fraction} must be in (0, 1); fairseq: 0.01")
        if d.root:
            root = Path(d.root).expanduser()
            if not root.is_dir():
                raise ConfigError(f"task.data.root={d.root} is not a folder; give LibriSpeech's or any folder of audio")
            named = [*d.train, *(d.val if OmegaConf.is_list(d.val) else [])]
            missing = [name for name in named if not (root / name).is_dir()]
            if missing and len(missing) < len(named):  # a LibriSpeech tree short of a named subset
                raise ConfigError(f"task.data.root={d.root} has no {missing[0]}/ of the folders task.data.train / "
                                  f"task.data.val name; name the ones it has, e.g. task.data.train=[train-clean-100]")

    @staticmethod
    def train_folders(d) -> list[str]:
        """task.data.train's subfolders of root, or, where root has none of them (a folder of one's own audio),
        root itself."""
        root = Path(d.root).expanduser()
        return list(d.train) if any((root / name).is_dir() for name in d.train) else ["."]

    def __init__(self, cfg):
        super().__init__(cfg)
        self.check_config(cfg)
        defaults = Wav2Vec2Config()  # its fields are typed: `task.model.layerdrop=0` must reach it as 0.0
        overrides = {k: float(v) if isinstance(getattr(defaults, k, None), float) and isinstance(v, int) else v
                     for k, v in OmegaConf.to_container(cfg.model).items()}
        self.front_end = cfg.front_end or FRONT_ENDS[cfg.size]
        framing = LOG_MEL_FRAMING if self.front_end == "log_mel" else {}
        self.config = Wav2Vec2Config(**{**SIZES[cfg.size], **framing, **overrides})
        # fairseq's L2 penalty shrinks the conv features; log-mel features are normalised: nothing to shrink
        self.feature_penalty = cfg.feature_penalty if cfg.feature_penalty is not None else (
            10.0 if self.front_end == "conv" else 0.0)
        self.norm_exclude = tuple(cfg.keep_norms)
        self.unused_parameters = self.config.layerdrop > 0  # a dropped layer gets no gradient in that step
        # pre-LN (Large): the encoder's LayerNorm comes after the last block although it is registered before
        self.norm_roles = {r"encoder\.layer_norm$": "final"} if self.config.do_stable_layer_norm else None
        self.temperature = cfg.gumbel.max
        self.model = None
        self._captured: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------ model

    def build_model(self) -> Wav2Vec2ForPreTraining:
        model = Wav2Vec2ForPreTraining(self.config)
        if self.front_end == "log_mel":
            model.wav2vec2.feature_extractor = LogMelFrames()
        model.set_gumbel_temperature(self.temperature)
        model.wav2vec2.feature_extractor.register_forward_hook(self._conv_features)
        model.quantizer.weight_proj.register_forward_hook(self._code_logits)
        self.model = model
        return model

    def _conv_features(self, _module, _inputs, features):
        """fairseq's feature_grad_mult (the conv encoder's gradient scaled: 0.1 in both LibriSpeech recipes)
        and its L2 penalty on the conv features, taken after the scaling as fairseq takes it."""
        mult = self.cfg.feature_grad_mult
        if mult != 1:
            features = features.detach() + mult * (features - features.detach())
        self._captured["feature_pen"] = features.float().pow(2).mean()
        return features

    def _code_logits(self, _module, _inputs, logits):
        self._captured["code_logits"] = logits

    def set_step(self, step: int, max_steps: int) -> None:
        """fairseq's Gumbel temperature: max(max · decay^step, min); decay null anneals to min at the end."""
        g = self.cfg.gumbel
        decay = g.decay if g.decay is not None else (g.min / g.max) ** (1 / max(1, max_steps - 1))
        self.temperature = max(g.max * decay**step, g.min)
        self.model.set_gumbel_temperature(self.temperature)

    # ------------------------------------------------------------ data

    def build_data(self):
        d = self.cfg.data
        if d.root and self.train_folders(d) == ["."]:
            log.info("task.data.root=%s has none of task.data.train's folders (%s): training on every audio file "
                     "under it", d.root, ", ".join(d.train))
        if d.root and d.val == HELD_OUT:
            train, val = speech.held_out_audio(d.root, self.train_folders(d), d.cache_dir, d.held_out_fraction,
                                               d.held_out_seed)
        elif d.root:
            train = speech.audio_folders(d.root, self.train_folders(d), d.cache_dir)
            val = speech.audio_folders(d.root, d.val, d.cache_dir)
        else:
            train, val = speech.synthetic_speech(d.cache_dir, d.train_sentences, d.val_sentences, d.seed)
        self.speech = {"train": train, "val": val}
        batches = dict(max_tokens=d.max_tokens, max_sample_size=d.max_sample_size,
                       min_sample_size=d.min_sample_size, normalize=d.normalize, batching=d.batching)
        return (speech.LengthBatches(train, train.lengths, fixed_crops=False, **batches),
                speech.LengthBatches(val, val.lengths, fixed_crops=True, **batches))

    collate_fn = staticmethod(speech.collate_batches)

    def describe_data(self, train_set, val_set) -> dict:
        """Utterances and hours per split, at 16 kHz (every file is read resampled to it), and the split."""
        d = self.cfg.data
        found = {"source": str(d.root) if d.root else "speech synthesised by eSpeak NG from Wikipedia sentences"}
        for split, data in self.speech.items():
            seconds = sum(data.lengths) / speech.SAMPLE_RATE
            length = (f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60
                      else f"{seconds:.1f} s")
            found[split] = f"{len(data)} utterances, {length}"
        found["sample_rate"] = speech.SAMPLE_RATE
        unreadable = {path for data in self.speech.values() for path, _ in getattr(data, "unreadable", ())}
        if unreadable:  # skipped by the manifest (speech.AudioFiles), named in a warning
            found["unreadable_files"] = len(unreadable)
        if d.root and d.val == HELD_OUT:
            found["split"] = (f"{d.held_out_fraction:.0%} of the training files held out (seed {d.held_out_seed}, "
                              "fairseq's manifest rule)")
        return found

    def artifacts(self) -> dict:
        """The speech: synthesised audio itself, or the audio files' manifest (paths and lengths)."""
        found = {}
        for split, data in getattr(self, "speech", {}).items():
            if isinstance(data, speech.SpeechSet):
                found[f"speech_{split}"] = np.concatenate(data.audio)
            else:
                found[f"speech_{split}_manifest"] = "\n".join(f"{p}\t{n}" for p, n in zip(data.paths, data.lengths))
        return found

    def count(self, batch):
        """(utterances, audio samples): tokens_per_s is audio samples per second."""
        return batch["input_values"].shape[0], batch["input_values"].numel()

    # ------------------------------------------------------------ loss

    def _losses(self, model, batch) -> dict[str, torch.Tensor]:
        waves = batch["input_values"]
        n, frames = waves.shape[0], int(self.model._get_feat_extract_output_lengths(waves.shape[1]))
        c = self.config
        mask = _compute_mask_indices((n, frames), c.mask_time_prob, c.mask_time_length, min_masks=c.mask_time_min_masks)
        if self.cfg.require_same_masks:
            mask = same_mask_counts(mask)
        negatives = _sample_negative_indices((n, frames), c.num_negatives, mask)
        mask = torch.from_numpy(mask).to(waves.device)
        out = model(waves, mask_time_indices=mask)
        contrastive, correct, chance = self._contrastive(out, mask, torch.from_numpy(negatives).to(waves.device))
        # codebook perplexities over the masked frames: of the softmax (fairseq's prob_perplexity, which
        # the diversity loss uses, in training and validation alike) and of the chosen codes
        groups, entries = c.num_codevector_groups, c.num_codevectors_per_group
        logits = self._captured.pop("code_logits").float().view(n * frames, groups, entries)
        perplexity = self.model.quantizer._compute_perplexity
        prob_ppl = perplexity(logits.softmax(-1), mask)
        code_ppl = perplexity(F.one_hot(logits.argmax(-1), entries).float(), mask)
        masked = mask.sum()
        diversity = (groups * entries - prob_ppl) / (groups * entries)
        feature_pen = self._captured.pop("feature_pen")
        contrastive = contrastive / masked
        total = contrastive + c.diversity_loss_weight * diversity + self.feature_penalty * feature_pen
        chance = chance / masked
        # what the loss alone hides: a codebook that collapses lowers chance and the loss with it, learning or not
        return {"loss": total / math.log(2), "contrastive": contrastive / math.log(2), "diversity": diversity,
                "feature_pen": feature_pen, "prob_ppl": prob_ppl, "code_ppl": code_ppl, "accuracy": correct / masked,
                "chance": chance / math.log(2), "below_chance": (chance - contrastive) / math.log(2), "masked": masked}

    def _contrastive(self, out, mask, negatives):
        """fairseq's InfoNCE summed over the masked frames, and how many of them rank their own quantized
        target first (fairseq's `correct`: a tie of all candidates counts as wrong; a collapsed codebook, whose
        distractors are all left out, scores every frame right, so read it with code_ppl), and the loss of a
        prediction that cannot tell the candidates apart: log(1 + the distractors left in), summed. Chance is
        log(1 + K) only while no distractor is left out; codes shared by neighbouring frames lower it.
        transformers computes the same loss inside the model but returns no logits, so all come from here."""
        predicted, targets = out.projected_states[mask], out.projected_quantized_states
        positives = targets[mask]
        distractors = targets.reshape(-1, targets.shape[-1])[negatives[mask].long()]
        candidates = torch.cat([positives[:, None], distractors], dim=1)
        logits = F.cosine_similarity(predicted[:, None].float(), candidates.float(), dim=-1)
        logits = logits / self.config.contrastive_logits_temperature
        # a distractor quantized to the positive's codes cannot be told apart from it: left out, as in fairseq
        same_codes = (distractors == positives[:, None]).all(-1)
        logits[:, 1:][same_codes] = float("-inf")
        loss = F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long), reduction="sum")
        correct = ((logits.argmax(-1) == 0) & (logits.argmin(-1) != 0)).sum()
        chance = (1 + (~same_codes).sum(-1).float()).log().sum()
        return loss, correct, chance

    def loss(self, model, batch):
        losses = self._losses(model, batch)
        logged = ("contrastive", "chance", "below_chance", "accuracy", "prob_ppl", "code_ppl", "feature_pen")
        metrics = {k: losses[k].detach() for k in logged}
        return losses["loss"], {**metrics, "temperature": self.temperature}

    def eval_step(self, model, batch):
        with numpy_seed(int(batch["index"][0])):  # the same masks and negatives at every evaluation
            losses = self._losses(model, batch)
        masked = losses.pop("masked")
        return {"masked": masked, **{f"{k}_sum": v * masked for k, v in losses.items()}}

    def eval_metrics(self, totals):
        """Averages per masked frame (the perplexities: of each batch, weighted by its masked frames)."""
        return {k.removesuffix("_sum"): v / totals["masked"] for k, v in totals.items() if k.endswith("_sum")}
