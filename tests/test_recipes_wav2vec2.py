"""Table 5's rows are the runs the DyT paper made: `experiment=wav2vec2_base` and `experiment=wav2vec2_large`
composed and checked value by value against the official files, and the held-out validation split built as
fairseq's manifest script builds it.

Sources (each value below names its own):
- BASE: facebookresearch/fairseq examples/wav2vec/config/pretraining/wav2vec2_base_librispeech.yaml, which
  the DyT repo runs unchanged (jiachenzhu/DyT other_tasks/wav2vec2/README.md).
- LARGE: jiachenzhu/DyT other_tasks/wav2vec2/wav2vec2_large_librispeech.yaml (fairseq ships no Large on
  LibriSpeech; the DyT authors wrote this one from the wav2vec 2.0 paper and ran it).
- MODEL: facebookresearch/fairseq fairseq/models/wav2vec/wav2vec2.py, Wav2Vec2Config defaults (what neither
  file sets), and the module layout the DyT patch edits (jiachenzhu/DyT other_tasks/wav2vec2/dynamic-tanh.patch).
- MANIFEST: facebookresearch/fairseq examples/wav2vec/wav2vec_manifest.py (--valid-percent 0.01, --seed 42).
"""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dyt import convert
from dyt.optim import param_groups
from dyt.train.schedule import learning_rate
from tasks.data import speech
from tasks.wav2vec2 import HELD_OUT, Wav2Vec2Pretraining
from tests.test_trainer import compose_cfg

BASE, LARGE = "wav2vec2_base", "wav2vec2_large"


def experiment(name: str, *overrides):
    return compose_cfg(f"experiment={name}", *overrides)


@pytest.fixture(scope="module")
def composed():
    """Each row as composed, with its LibriSpeech requirement lifted so that the model can be built here
    (test_a_paper_row_needs_librispeech checks the requirement)."""
    return {name: experiment(name, "task.data.require_root=false") for name in (BASE, LARGE)}


# ------------------------------------------------------------------ architecture


@pytest.mark.parametrize("name, layers, width, ffn, heads, pre_ln, final_dim", [
    # BASE: encoder_embed_dim 768; MODEL: encoder_layers 12, encoder_ffn_embed_dim 3072, encoder_attention_heads
    # 12, layer_norm_first false; BASE: final_dim 256
    (BASE, 12, 768, 3072, 12, False, 256),
    # LARGE: encoder_layers 24, encoder_embed_dim 1024, encoder_ffn_embed_dim 4096, encoder_attention_heads 16,
    # layer_norm_first true, final_dim 768
    (LARGE, 24, 1024, 4096, 16, True, 768),
])
def test_encoder_and_codebook_are_the_official_ones(composed, name, layers, width, ffn, heads, pre_ln, final_dim):
    cfg = composed[name]
    c = Wav2Vec2Pretraining(cfg.task).config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (layers, width, ffn, heads)
    assert c.do_stable_layer_norm is pre_ln
    assert c.codevector_dim == c.proj_codevector_dim == final_dim  # MODEL: vq_dim = final_dim (latent_dim 0)
    assert c.hidden_act == c.feat_extract_activation == "gelu"  # MODEL: activation_fn gelu; the conv stack's nn.GELU
    assert c.layer_norm_eps == 1e-5  # MODEL: fairseq's LayerNorm, torch's default eps
    # MODEL: latent_vars 320, latent_groups 2, quantizer_depth 1 (one linear weight_proj)
    assert (c.num_codevectors_per_group, c.num_codevector_groups) == (320, 2)
    # MODEL: conv_pos 128, conv_pos_groups 16
    assert (c.num_conv_pos_embeddings, c.num_conv_pos_embedding_groups) == (128, 16)


@pytest.mark.parametrize("name", [BASE, LARGE])
def test_conv_feature_extractor_is_fairseqs_default_mode(composed, name):
    cfg = composed[name]
    task = Wav2Vec2Pretraining(cfg.task)
    c = task.config
    assert task.front_end == "conv"
    # MODEL: conv_feature_layers "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    assert tuple(c.conv_dim) == (512,) * 7
    assert tuple(c.conv_kernel) == (10, 3, 3, 3, 3, 2, 2)
    assert tuple(c.conv_stride) == (5, 2, 2, 2, 2, 2, 2)
    # MODEL: extractor_mode "default" (one GroupNorm, in the first conv layer) and conv_bias false; neither
    # BASE nor LARGE sets them (LARGE's LibriVox sibling, wav2vec2_large_librivox.yaml, does: layer_norm, true)
    assert c.feat_extract_norm == "group" and c.conv_bias is False
    with torch.device("meta"):
        model = task.build_model()
    conv_norms = [type(m).__name__ for m in model.wav2vec2.feature_extractor.modules()
                  if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    assert conv_norms == ["GroupNorm"]
    assert all(conv.conv.bias is None for conv in model.wav2vec2.feature_extractor.conv_layers)


@pytest.mark.parametrize("name, layers", [(BASE, 12), (LARGE, 24)])
def test_dyt_replaces_the_norms_the_dyt_patch_replaces(composed, name, layers):
    """The patch swaps Wav2Vec2Model.layer_norm (the conv features'; transformers' feature_projection.layer_norm),
    TransformerEncoder.layer_norm and each layer's self_attn_layer_norm and final_layer_norm, and leaves the
    conv feature extractor's GroupNorm alone (jiachenzhu/DyT other_tasks/wav2vec2/dynamic-tanh.patch)."""
    task = Wav2Vec2Pretraining(composed[name].task)
    with torch.device("meta"):
        model = task.build_model()
    swaps = convert(model, "dyt", roles=task.norm_roles, exclude=task.norm_exclude)
    assert [(s.path, s.old) for s in swaps.skipped] == [("wav2vec2.feature_extractor.conv_layers.0.layer_norm", "GroupNorm")]
    replaced = {s.path for s in swaps.replaced}
    assert len(replaced) == 2 + 2 * layers
    assert {"wav2vec2.feature_projection.layer_norm", "wav2vec2.encoder.layer_norm"} <= replaced
    # fairseq's Adam decays every parameter at weight_decay 0.01 (BASE, LARGE: optimizer), DyT's α, γ, β included
    groups = {g["group"]: g for g in param_groups(model, 0.01, no_decay=composed[name].trainer.optim.no_decay)}
    assert groups["no_decay"]["params"] == []
    assert len(groups["decay"]["params"]) == len(list(model.parameters()))


# ------------------------------------------------------------------ masking, negatives, loss, dropouts


@pytest.mark.parametrize("name", [BASE, LARGE])
def test_masks_negatives_and_loss_weights(composed, name):
    cfg = composed[name]
    task = Wav2Vec2Pretraining(cfg.task)
    c = task.config
    # MODEL: mask_prob 0.65, mask_length 10, mask_selection static, min_masks=2 (apply_mask), no channel masks
    assert (c.mask_time_prob, c.mask_time_length, c.mask_time_min_masks) == (0.65, 10, 2)
    assert c.mask_feature_prob == 0.0  # MODEL: mask_channel_prob 0
    assert cfg.task.require_same_masks is True  # MODEL: require_same_masks true
    # MODEL: num_negatives 100, cross_sample_negatives 0 (transformers draws only within the utterance)
    assert c.num_negatives == 100
    assert c.contrastive_logits_temperature == 0.1  # MODEL: logit_temp 0.1
    # BASE, LARGE: criterion loss_weights [0.1, 10]: the diversity loss and the features' L2 penalty
    assert c.diversity_loss_weight == 0.1
    assert task.feature_penalty == 10.0
    assert cfg.task.feature_grad_mult == 0.1  # BASE, LARGE: feature_grad_mult 0.1


@pytest.mark.parametrize("name, gumbel", [
    (BASE, (2.0, 0.5, 0.999995)),   # MODEL: latent_temp default (2, 0.5, 0.999995); BASE sets none
    (LARGE, (2.0, 0.1, 0.999995)),  # LARGE: latent_temp [2.0, 0.1, 0.999995]
])
def test_gumbel_temperature_schedule(composed, name, gumbel):
    g = composed[name].task.gumbel
    assert (g.max, g.min, g.decay) == gumbel


@pytest.mark.parametrize("name, dropouts", [
    # BASE: dropout_input 0.1, dropout_features 0.1, encoder_layerdrop 0.05; MODEL: dropout 0.1,
    # attention_dropout 0.1, activation_dropout 0.0
    (BASE, dict(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feat_proj_dropout=0.1,
                feat_quantizer_dropout=0.1, layerdrop=0.05)),
    # LARGE: dropout 0.1, attention_dropout 0.0, activation_dropout 0.0, dropout_input 0.1, dropout_features
    # 0.1, encoder_layerdrop 0.2
    (LARGE, dict(hidden_dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.1,
                 feat_quantizer_dropout=0.1, layerdrop=0.2)),
])
def test_dropouts_and_layerdrop(composed, name, dropouts):
    c = Wav2Vec2Pretraining(composed[name].task).config
    assert {k: getattr(c, k) for k in dropouts} == dropouts


# ------------------------------------------------------------------ data


@pytest.mark.parametrize("name, max_tokens, crop", [
    (BASE, 1_400_000, 250_000),   # BASE: dataset.max_tokens 1400000, task.max_sample_size 250000
    (LARGE, 1_200_000, 320_000),  # LARGE: dataset.max_tokens 1200000, task.max_sample_size 320000
])
def test_data_as_fairseq_reads_it(composed, name, max_tokens, crop):
    d = composed[name].task.data
    assert (d.max_tokens, d.max_sample_size) == (max_tokens, crop)
    assert d.min_sample_size == 32_000  # BASE, LARGE: task.min_sample_size 32000
    assert d.normalize is False  # BASE, LARGE: task.normalize false
    # fairseq batching: dataset.required_batch_size_multiple 8 (fairseq/dataclass/configs.py) and longest
    # first (fairseq/data/audio/raw_audio_dataset.py ordered_indices)
    assert d.batching == "fairseq" and speech.FAIRSEQ_BATCH_MULTIPLE == 8
    # LibriSpeech 960 h: the three training subsets; validation: MANIFEST --valid-percent 0.01, --seed 42
    assert list(d.train) == ["train-clean-100", "train-clean-360", "train-other-500"]
    assert (d.val, d.held_out_fraction, d.held_out_seed) == (HELD_OUT, 0.01, 42)


# ------------------------------------------------------------------ optimisation


@pytest.mark.parametrize("name, steps, lr, warmup, world", [
    # BASE: max_update 400000, lr 0.0005, warmup_updates 32000, distributed_world_size 64
    (BASE, 400_000, 5e-4, 32_000, 64),
    # LARGE: max_update 250000, lr 0.0003, warmup_updates 20000, distributed_world_size 128
    (LARGE, 250_000, 3e-4, 20_000, 128),
])
def test_optimisation(composed, name, steps, lr, warmup, world):
    t = composed[name].trainer
    o = t.optim
    assert (t.max_steps, o.lr, o.warmup_steps) == (steps, lr, warmup)
    # update_freq 1 (fairseq/dataclass/configs.py default) × distributed_world_size: one length batch a GPU
    assert (t.batch_size, t.global_batch_size) == (1, world)
    # BASE, LARGE: optimizer adam (fairseq's decoupled weight decay: AdamW), adam_betas (0.9,0.98),
    # adam_eps 1e-06, weight_decay 0.01 on every parameter
    assert (list(o.betas), o.eps, o.weight_decay, list(o.no_decay)) == ([0.9, 0.98], 1e-6, 0.01, [])
    # BASE, LARGE: lr_scheduler polynomial_decay (power 1, end_learning_rate 0 by default: linear to 0)
    assert (o.schedule, o.min_lr_ratio) == ("linear", 0.0)
    assert learning_rate(o.schedule, warmup, peak=lr, total=steps, warmup=warmup) == pytest.approx(lr)
    half = warmup + (steps - warmup) // 2
    assert learning_rate(o.schedule, half, peak=lr, total=steps, warmup=warmup) == pytest.approx(lr / 2)
    assert learning_rate(o.schedule, steps, peak=lr, total=steps, warmup=warmup) == 0.0
    assert o.clip_grad is None  # fairseq/dataclass/configs.py: clip_norm 0.0, neither recipe sets it
    assert t.mixed_precision == "fp16"  # BASE, LARGE: common.fp16 true
    assert (t.log_every, t.ckpt_every, t.num_workers) == (200, 25_000, 6)  # log_interval, save_interval_updates, num_workers


# ------------------------------------------------------------------ the held-out split


def _fake_librispeech(root, files_per_chapter=6):
    """A LibriSpeech-layout tree (<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac) of short tones."""
    import soundfile

    rng = np.random.default_rng(0)
    names = []
    for subset in ("train-clean-100", "train-clean-360", "train-other-500"):
        for speaker, chapter in ((19, 198), (26, 495)):
            folder = root / subset / str(speaker) / str(chapter)
            folder.mkdir(parents=True)
            for k in range(files_per_chapter):
                seconds = 2.0 + 0.25 * rng.integers(0, 4)
                t = np.arange(int(seconds * 16_000)) / 16_000
                wave = 0.2 * np.sin(2 * np.pi * (150 + 40 * k) * t) + 0.01 * rng.standard_normal(len(t))
                name = f"{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{k:04d}.flac"
                soundfile.write(root / name, wave, 16_000)
                names.append(name)
    return names


def test_held_out_split_is_fairseqs_manifest_rule_drawn_in_path_order(tmp_path):
    root = tmp_path / "LibriSpeech"
    names = _fake_librispeech(root)

    def relative(files):
        return {str(Path(p).relative_to(root.resolve())) for p in files.paths}

    fraction = 0.25  # fairseq's 0.01 would hold out nothing of 36 files
    # MANIFEST: rand = random.Random(seed); a file goes to valid.tsv unless rand.random() > valid_percent;
    # here the draws follow the sorted paths
    rand = random.Random(42)
    expected = {n for n in sorted(names) if rand.random() <= fraction}
    assert 0 < len(expected) < len(names)

    overrides = ["task.size=debug", f"task.data.root={root}", f"task.data.cache_dir={tmp_path / 'cache'}",
                 f"task.data.held_out_fraction={fraction}", "task.data.min_sample_size=16000",
                 "task.data.max_tokens=400000", "task.data.max_sample_size=40000", "logger=none"]
    cfg = experiment(BASE, *overrides)
    task = Wav2Vec2Pretraining(cfg.task)
    train, val = task.build_data()
    assert relative(val.utterances) == expected
    assert relative(train.utterances) == set(names) - expected  # disjoint, and nothing lost
    # every utterance is long enough here: each lands in a batch
    assert sorted(i for b in val.batches for i in b) == list(range(len(expected)))
    # the subsets' order in the config does not move the split
    reordered = Wav2Vec2Pretraining(experiment(
        BASE, *overrides, "task.data.train=[train-other-500,train-clean-360,train-clean-100]").task)
    assert relative(reordered.build_data()[1].utterances) == expected
    # another seed holds out other files
    other = speech.held_out_split(sorted(names), fraction, seed=7)[1]
    assert {sorted(names)[i] for i in other} != expected
    # dev-clean / dev-other stay an option: named folders replace the held-out files
    (root / "dev-clean").mkdir()
    (root / "train-clean-100" / "19").rename(root / "dev-clean" / "19")
    named = Wav2Vec2Pretraining(experiment(BASE, *overrides, "task.data.train=[train-clean-360]",
                                           "task.data.val=[dev-clean]").task)
    train, val = named.build_data()
    assert relative(val.utterances) == {n.replace("train-clean-100", "dev-clean") for n in names
                                        if n.startswith("train-clean-100/19/")}
    assert all(n.startswith("train-clean-360/") for n in relative(train.utterances))


def test_a_paper_row_needs_librispeech_and_says_so_before_the_run(tmp_path):
    from dyt.train.config import ConfigError

    for name in (BASE, LARGE):
        cfg = experiment(name)
        assert cfg.task.data.require_root is True and cfg.task.data.root is None
        with pytest.raises(ConfigError, match="task.data.root"):
            Wav2Vec2Pretraining.check_config(cfg.task)
        Wav2Vec2Pretraining.check_config(experiment(name, f"task.data.root={tmp_path}").task)


def test_validation_choice_is_checked_before_the_run():
    from dyt.train.config import ConfigError

    with pytest.raises(ConfigError, match="task.data.val"):
        Wav2Vec2Pretraining.check_config(experiment(BASE, "task.data.require_root=false", "task.data.val=dev-clean").task)
    with pytest.raises(ConfigError, match="held_out_fraction"):
        Wav2Vec2Pretraining.check_config(experiment(BASE, "task.data.require_root=false",
                                                    "task.data.held_out_fraction=0").task)
