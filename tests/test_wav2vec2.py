"""wav2vec 2.0: the synthesised speech, fairseq's batching, the published model sizes, the norms the paper
keeps, and a tiny run end to end."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from dyt import DynamicTanh, convert
from dyt.train.config import register_schemas
from tasks.data import speech
from tasks.wav2vec2 import Wav2Vec2Pretraining
from tests.helpers import ROOT, run_train, summary

register_schemas()


def task_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=["task=wav2vec2", *overrides])


def test_synthesised_speech_is_16khz_speech_that_grows_with_the_words_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    train, val = speech.synthetic_speech("~/cache", 6, 2, seed=0)
    assert (tmp_path / "cache" / "speech").is_dir()  # ~ expanded
    assert len(train) == 6 and len(val) == 2 and not set(train.text) & set(val.text)
    assert train.sample_rate == val.sample_rate == 16_000
    assert len(set(train.voice + val.voice)) > 1
    for audio in train.audio + val.audio:
        assert audio.dtype == np.int16
        assert np.sqrt(np.mean(audio.astype(float) ** 2)) > 500  # speech, not silence
    # resampled from eSpeak NG's 22.05 kHz: 16/22.05 as many samples
    from tasks.data.espeak import SAMPLE_RATE, synthesize

    raw = synthesize("The quick brown fox jumps over the lazy dog.")
    assert SAMPLE_RATE == 22_050
    assert len(speech.resample(raw, SAMPLE_RATE)) == pytest.approx(len(raw) * 16_000 / 22_050, abs=1)
    assert len(speech.speak("The quick brown fox jumps over the lazy dog.")) == pytest.approx(len(raw) * 16_000 / 22_050, rel=0.03)
    # duration grows with the words spoken, at a fixed voice and rate
    words = "the committee approved the budget for the new library after a long debate".split()
    durations = [len(speech.speak(" ".join(words[:n]) + ".")) / 16_000 for n in (2, 6, 13)]
    assert durations[0] < durations[1] < durations[2] and durations[2] > 2.5 * durations[0]
    # and across the set, with the rate each utterance was spoken at
    spoken = [len(t.split()) / r for t, r in zip(train.text, train.rate)]
    assert np.corrcoef(spoken, train.lengths)[0, 1] > 0.8

    # cached: the second call synthesises nothing and returns the same audio
    def no_synthesis(*args, **kwargs):
        raise AssertionError("synthesised again")

    monkeypatch.setattr(speech, "speak", no_synthesis)
    again, _ = speech.synthetic_speech(tmp_path / "cache", 6, 2, seed=0)
    assert again.text == train.text and all(np.array_equal(a, b) for a, b in zip(again.audio, train.audio))


def test_length_batches_as_fairseq_forms_them():
    lengths = [5_000, 40_000, 12_000, 41_000, 100_000, 11_000, 39_000]
    for batching in speech.BATCHINGS:
        batches = speech.length_batches(lengths, max_tokens=90_000, max_sample_size=60_000, min_sample_size=10_000,
                                        batching=batching)
        assert sorted(i for b in batches for i in b) == [1, 2, 3, 4, 5, 6]  # the 5,000-sample one is skipped
        for batch in batches:
            assert len(batch) * min(max(lengths[i] for i in batch), 60_000) <= 90_000
    firsts = [lengths[b[0]] for b in speech.length_batches(lengths, 90_000, 60_000, 10_000, "shortest_first")]
    assert firsts == sorted(firsts)
    # fairseq (data_utils_fast.pyx batch_by_size_vec over raw_audio_dataset.py's order): longest first,
    # capped at the crop, ties in order; a batch of 8 or more closes at its last multiple of 8
    assert speech.length_batches(lengths, 90_000, 60_000, 10_000) == [[4], [3, 1], [6, 2], [5]]
    assert speech.length_batches([10] * 12, 100, 1_000, 0) == [list(range(8)), list(range(8, 12))]
    assert speech.length_batches([10] * 12, 100, 1_000, 0, "shortest_first") == [list(range(10)), [10, 11]]
    mixed = [70, 50, 30, 12, 12, 12] + [10] * 12 + [5]
    assert speech.length_batches(mixed, 100, 50, 8) == [[0, 1], [2, 3, 4], list(range(5, 13)), list(range(13, 18))]
    rng = np.random.default_rng(0)
    many = rng.integers(32_000, 560_000, 2_000)
    batches = speech.length_batches(many, 1_400_000, 250_000, 32_000)
    assert sorted(i for b in batches for i in b) == list(range(2_000))
    assert all(len(b) < 8 or len(b) % 8 == 0 for b in batches[:-1])  # the last may be a leftover tail
    assert max(len(b) for b in batches) >= 16  # short utterances do make batches of 8 and more
    assert all(len(b) * min(max(many[i] for i in b), 250_000) <= 1_400_000 for b in batches)

    utterances = [np.full(n, 1000, np.int16) + np.arange(n, dtype=np.int16) % 7 for n in lengths]
    make = dict(max_tokens=90_000, max_sample_size=60_000, min_sample_size=10_000, normalize=False)
    val = speech.LengthBatches(utterances, lengths, fixed_crops=True, **make)
    train = speech.LengthBatches(utterances, lengths, fixed_crops=False, **make)
    for i in range(len(val)):
        x = val[i]["input_values"]
        assert x.shape == (len(val.batches[i]), min(60_000, min(lengths[j] for j in val.batches[i])))
        assert torch.equal(x, val[i]["input_values"])  # validation crops are the same every time
    torch.manual_seed(0)
    assert any(not torch.equal(train[i]["input_values"], train[i]["input_values"]) for i in range(len(train)))
    batch = speech.collate_batches([val[0], val[1]])  # batches joined: cropped to the shortest
    assert batch["input_values"].shape[0] == len(val.batches[0]) + len(val.batches[1])


@pytest.mark.parametrize("overrides, published, stable, kept, replaced", [
    (["task.size=base"], 95e6, False, ["GroupNorm"], 2 + 2 * 12),
    (["task.size=large"], 317e6, True, ["GroupNorm"], 2 + 2 * 24),
    # fairseq's LibriVox Large extractor: a LayerNorm in every conv layer, all kept as the DyT patch keeps them
    (["task.size=large", "+task.model.feat_extract_norm=layer", "+task.model.conv_bias=true"], 317e6, True,
     ["LayerNorm"] * 7, 2 + 2 * 24),
])
def test_base_and_large_have_the_published_sizes_and_keep_the_conv_norms(overrides, published, stable, kept, replaced):
    task = Wav2Vec2Pretraining(task_config(*overrides).task)
    with torch.device("meta"):
        model = task.build_model()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(published, rel=0.02)
    assert model.config.do_stable_layer_norm is stable  # Base post-LN, Large pre-LN
    swaps = convert(model, "dyt", roles=task.norm_roles, exclude=task.norm_exclude)
    conv = [f"wav2vec2.feature_extractor.conv_layers.{i}.layer_norm" for i in range(len(kept))]
    assert [(s.path, s.old) for s in swaps.skipped] == list(zip(conv, kept))
    assert len(swaps.replaced) == replaced
    assert sum(isinstance(m, DynamicTanh) for m in model.modules()) == replaced
    conv_norms = set(model.wav2vec2.feature_extractor.modules())
    assert not any(type(m) is nn.LayerNorm for m in model.modules() if m not in conv_norms)
    final = {s.path: s.role for s in swaps}["wav2vec2.encoder.layer_norm"]
    assert final == ("final" if stable else "ffn")  # pre-LN: the encoder's LayerNorm closes the stack


def test_cpu_size_hears_log_mel_frames_counted_as_the_model_counts_them():
    """The CPU default reads log-mel frames: as many as transformers computes for its masks, a spectrum that
    follows the pitch, normalised per bin by a GroupNorm that the conversion keeps."""
    task = Wav2Vec2Pretraining(task_config().task)
    assert (task.front_end, task.feature_penalty) == ("log_mel", 0.0)
    model = task.build_model().eval()
    front_end = model.wav2vec2.feature_extractor
    rate, low, high = 16_000, 500.0, 3_000.0
    t = np.arange(rate) / rate
    tones = np.concatenate([np.sin(2 * np.pi * low * t), np.sin(2 * np.pi * high * t)])  # 1 s of each
    with torch.no_grad():
        for length in (16_000, 23_456, 32_000):
            frames = front_end(torch.tensor(tones[None, :length], dtype=torch.float32))
            assert frames.shape == (1, 80, int(model._get_feat_extract_output_lengths(length)))
        frames = front_end(torch.tensor(tones[None], dtype=torch.float32))[0]
    assert frames.mean(-1).abs().max() < 1e-4 and frames.std(-1, unbiased=False).mean() == pytest.approx(1, abs=1e-3)
    centres = torch.tensor([float(np.argmax(row)) * rate / 400 for row in front_end.filters.numpy()])  # Hz
    louder_first = frames[:, : frames.shape[1] // 2].mean(-1) - frames[:, frames.shape[1] // 2 :].mean(-1)
    assert abs(float(centres[louder_first.argmax()]) - low) < 100
    assert abs(float(centres[louder_first.argmin()]) - high) < 200
    swaps = convert(model, "dyt", roles=task.norm_roles, exclude=task.norm_exclude)
    assert [(s.path, s.old) for s in swaps.skipped] == [("wav2vec2.feature_extractor.norm", "GroupNorm")]
    assert not any(type(m) is nn.LayerNorm for m in model.modules())
    conv = Wav2Vec2Pretraining(task_config("task.front_end=conv").task)
    assert (conv.feature_penalty, len(conv.config.conv_dim)) == (10.0, 7)
    assert Wav2Vec2Pretraining(task_config("task.size=base").task).front_end == "conv"


def test_same_mask_counts_keeps_the_fewest_masked_frames_in_every_utterance():
    """fairseq's require_same_masks: overlapping spans mask different numbers of frames; each utterance keeps
    as many as the one with the fewest, drawn among its own masked frames."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    from tasks.wav2vec2 import same_mask_counts

    np.random.seed(0)
    mask = _compute_mask_indices((6, 200), 0.65, 10, min_masks=2)
    counts = mask.sum(1)
    assert counts.min() < counts.max()  # overlaps differ from one utterance to the next
    same = same_mask_counts(mask)
    assert (same.sum(1) == counts.min()).all()
    assert not (same & ~mask).any()  # only frames masked before stay masked
    task = Wav2Vec2Pretraining(task_config("task.size=debug", "task.require_same_masks=true").task)
    model = task.build_model()
    captured = {}
    model.register_forward_hook(lambda _m, args, kwargs, _out: captured.update(kwargs), with_kwargs=True)
    with torch.no_grad():
        task._losses(model, {"input_values": torch.randn(5, 32_000)})
    assert len(set(captured["mask_time_indices"].sum(1).tolist())) == 1


def test_gumbel_temperature_follows_fairseq_schedule():
    task = Wav2Vec2Pretraining(task_config("task.size=debug", "task.gumbel.decay=0.99").task)
    model = task.build_model()
    task.set_step(0, 1000)
    assert model.quantizer.temperature == 2.0
    task.set_step(100, 1000)
    assert model.quantizer.temperature == pytest.approx(2.0 * 0.99**100)
    task.set_step(999, 1000)
    assert model.quantizer.temperature == 0.5
    annealed = Wav2Vec2Pretraining(task_config("task.size=debug").task)  # decay null: min at the last step
    annealed.build_model()
    annealed.set_step(500, 1001)
    assert annealed.temperature == pytest.approx(1.0)
    annealed.set_step(1000, 1001)
    assert annealed.temperature == pytest.approx(0.5)


def test_debug_run_reports_loss_in_bits_per_masked_frame_and_codebook_perplexity(tmp_path):
    cache = tmp_path / "cache"
    run_train(tmp_path / "run", "task=wav2vec2", "task.size=debug", "norm=dyt", "task.data.train_sentences=6",
              "task.data.val_sentences=2", "trainer.max_steps=2", "trainer.eval_every=2", timeout=300,
              DYT_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")  # one thread: far faster on a shared CPU
    result = summary(tmp_path / "run")
    assert result["status"] == "completed"
    final = result["final"]
    # near chance at the start: InfoNCE over 1 positive + 100 negatives is about log2(101) bits
    assert 0.5 * np.log2(101) < final["val/contrastive"] < 1.5 * np.log2(101)
    assert final["val/loss"] >= final["val/contrastive"]
    assert 0 <= final["val/accuracy"] < 0.25  # the positive ranked first about as often as chance has it
    # chance: log2(1 + the distractors left in); two steps learn nothing, so the loss is not below it
    assert 0 < final["val/chance"] <= np.log2(101) + 1e-6
    assert final["val/below_chance"] == pytest.approx(final["val/chance"] - final["val/contrastive"], abs=1e-4)
    assert final["val/below_chance"] < 0.1
    assert 1 <= final["val/code_ppl"] <= 2 * 32 and 1 <= final["val/prob_ppl"] <= 2 * 32
    norms = (tmp_path / "run" / "norms.txt").read_text()
    assert "GroupNorm kept" in norms and "DynamicTanh" in norms
    assert list((cache / "speech").glob("*.npz"))


def test_contrastive_loss_is_transformers_and_accuracy_counts_the_positive_ranked_first():
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    task = Wav2Vec2Pretraining(task_config("task.size=debug").task)
    model = task.build_model().eval()
    waves = torch.randn(2, 16_000)
    frames = int(model._get_feat_extract_output_lengths(waves.shape[1]))
    rng = np.random.get_state()
    np.random.seed(0)
    mask = _compute_mask_indices((2, frames), 0.65, 10, min_masks=2)
    negatives = torch.from_numpy(_sample_negative_indices((2, frames), 100, mask))
    np.random.set_state(rng)
    mask = torch.from_numpy(mask)
    with torch.no_grad():
        reference = model(waves, mask_time_indices=mask, sampled_negative_indices=negatives).contrastive_loss
        out = model(waves, mask_time_indices=mask)
        loss, correct, chance = task._contrastive(out, mask, negatives)
        assert loss == pytest.approx(float(reference), rel=1e-5)
        assert 0 <= correct <= mask.sum()
        # no distractor shares its positive's codes in a random model: chance is log(1 + 100) per frame
        assert chance == pytest.approx(float(mask.sum() * np.log(101)), rel=0.01)
        out.projected_states = out.projected_quantized_states.clone()  # every target predicted exactly
        assert task._contrastive(out, mask, negatives)[1] == mask.sum()
        out.projected_quantized_states[:] = out.projected_quantized_states[0, 0]  # one code for every frame
        assert task._contrastive(out, mask, negatives)[2] == 0  # every distractor left out: nothing to guess


def test_librispeech_layout_is_read_resampled_and_batched(tmp_path):
    import soundfile

    root = tmp_path / "LibriSpeech"
    rng = np.random.default_rng(0)
    for subset, rate, seconds in (("train-clean-100", 16_000, (2.0, 2.5, 3.0)), ("dev-clean", 22_050, (2.0,))):
        folder = root / subset / "19" / "198"
        folder.mkdir(parents=True)
        for k, s in enumerate(seconds):
            tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(s * rate)) / rate) + 0.01 * rng.standard_normal(int(s * rate))
            soundfile.write(folder / f"19-198-{k:04d}.flac", tone, rate)
    cfg = task_config("task.size=debug", f"task.data.root={root}", "task.data.train=[train-clean-100]",
                      "task.data.val=[dev-clean]", f"task.data.cache_dir={tmp_path / 'cache'}",
                      "task.data.max_tokens=200000", "task.data.max_sample_size=40000")
    train, val = Wav2Vec2Pretraining(cfg.task).build_data()
    assert len(train) == 1 and train.batches == [[0, 1, 2]]
    assert train[0]["input_values"].shape == (3, 32_000)  # cropped to the shortest
    assert val[0]["input_values"].shape == (1, 32_000)  # 2 s at 22.05 kHz, resampled to 16 kHz
    assert 0.1 < val[0]["input_values"].abs().max() < 0.5
    assert len(list((tmp_path / "cache" / "manifests").glob("*.tsv"))) == 2
