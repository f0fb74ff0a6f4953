"""A user's own data on first contact: small datasets in each task's real layout, made here, read by the task's
default command with no key beyond the path (and the debug size, for speed). Each run infers what it can (classes,
image size), says in one line what it read, and keeps the same in summary.json (`data`)."""
from __future__ import annotations

import json
import shutil
import wave

import numpy as np
import pytest

from tests.helpers import image_folder, run_train, summary

BUGS = ("ant", "bee", "wasp")  # three classes of 24×24 images: neither ImageNet's nor the digits'
FAST = ["trainer.max_steps=2", "trainer.batch_size=4", "trainer.max_eval_batches=1", "trainer.eval_every=2"]


def _described(run_dir) -> dict:
    log = (run_dir / "train.log").read_text()
    assert "data: " in log  # the one line, before training
    return summary(run_dir)["data"]


def test_an_image_folder_gives_its_classes_and_size(tmp_path):
    root = image_folder(tmp_path / "images", BUGS, 4, 24)
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=vit", "task.size=debug", f"task.data.root={root}", *FAST)
    data = _described(run_dir)
    assert data["classes"] == 3 and (data["train"], data["val"]) == (12, 12)
    assert data["image_size"] == "24×24 (the first of train/)" and data["input_size"] == 224
    log = (run_dir / "train.log").read_text()
    assert "are 24×24 (the first of train/) and are resized to 224×224; task.data.image_size=auto" in log
    # the head has the folder's classes, not ImageNet's 1,000
    from tasks.image_classification import ImageClassification
    from tests.test_trainer import compose_cfg

    task = ImageClassification(compose_cfg("task=vit", "task.size=debug", f"task.data.root={root}").task)
    assert task.build_model().get_classifier().out_features == 3

    auto = tmp_path / "auto"
    run_train(auto, "task=vit", "task.size=debug", f"task.data.root={root}", "task.data.image_size=auto", *FAST)
    assert _described(auto)["input_size"] == 24 and "resized" not in (auto / "train.log").read_text()


def test_an_image_folder_without_val_is_split_by_class_and_says_so(tmp_path):
    root = image_folder(tmp_path / "images", BUGS, 10, 24)
    shutil.rmtree(root / "val")
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=vit", "task.size=debug", f"task.data.root={root}", "task.data.image_size=auto", *FAST)
    data = _described(run_dir)
    assert (data["classes"], data["train"], data["val"]) == (3, 27, 3)  # a tenth of each class validates
    assert data["split"] == "no val/: a fixed 10% of each class of train/ validates, the rest trains"

    from tasks.data.image_folder import folder_splits

    train, val = folder_splits(root, None, None, 0.1)
    assert not set(train.indices) & set(val.indices) and folder_splits(root, None, None, 0.1)[1].indices == val.indices
    assert sorted(train.dataset.targets[i] for i in val.indices) == [0, 1, 2]


@pytest.mark.parametrize("make, args, needle", [
    (lambda root: image_folder(root, BUGS, 4, 24), ["task.data.num_classes=5"],
     "task.data.num_classes=5 contradicts task.data.root="),
    (lambda root: image_folder(root, BUGS, 4, 24, val_classes=("ant", "bee", "moth")), [],
     "train/ has 3 class folders and val/ 3, not the same ('moth' only in val/)"),
    (lambda root: image_folder(root, BUGS, 4, 24), ["task.data.image_size=big"], "task.data.image_size=big must be a number"),
])
def test_a_folder_that_contradicts_the_config_is_one_line_before_any_work(tmp_path, make, args, needle):
    root = make(tmp_path / "images")
    run_dir = tmp_path / "run"
    result = run_train(run_dir, "task=vit", "task.size=debug", f"task.data.root={root}", *args, *FAST, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert not run_dir.exists()


def test_a_jsonl_folder_gives_its_documents_tokens_and_vocabulary(tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["river", "stone", "light", "north", "garden", "window", "market", "winter", "signal", "copper"]
    for part in range(2):
        with open(folder / f"part{part}.jsonl", "w") as handle:
            for _ in range(60):
                handle.write(json.dumps({"text": " ".join(rng.choice(words, 40))}) + "\n")
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=llama", "task.size=debug", f"task.data.path={folder}", "task.data.seq_len=32", *FAST,
              DYT_CACHE_DIR=str(tmp_path / "cache"))
    data = _described(run_dir)
    assert (data["format"], data["files"], data["documents"]) == ("json", 2, 120)
    assert data["tokens"] > 120 and data["vocabulary"] > 0 and "trained on the corpus" in data["tokenizer"]
    assert data["split"] == "the last 5% of the tokens validate"


def test_an_audio_folder_of_ones_own_is_read_whole_with_a_held_out_file(tmp_path):
    folder = tmp_path / "audio"
    (folder / "speaker1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):  # 1.5 s each at 16 kHz: none of LibriSpeech's subfolders
        with wave.open(str(folder / "speaker1" / f"{i}.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes((rng.standard_normal(24000) * 3000).astype(np.int16).tobytes())
    run_dir = tmp_path / "run"
    # the batch is wav2vec 2.0's own (task.data.max_tokens of audio): one per step
    fast = [arg for arg in FAST if not arg.startswith("trainer.batch_size")]
    run_train(run_dir, "task=wav2vec2", "task.size=debug", f"task.data.root={folder}", *fast,
              DYT_CACHE_DIR=str(tmp_path / "cache"))
    data = _described(run_dir)
    # 1% of 5 files holds out none: the last in path order validates
    assert data["train"] == "4 utterances, 6.0 s" and data["val"] == "1 utterances, 1.5 s"
    assert data["sample_rate"] == 16000 and "held out" in data["split"]
    assert "training on every audio file under it" in (run_dir / "train.log").read_text()


def test_a_fasta_gives_its_contigs_length_and_other_letters(tmp_path):
    rng = np.random.default_rng(0)
    sequence = list("".join(rng.choice(list("ACGT"), 120_000)))
    for position in (10, 500, 90_000):
        sequence[position] = "N"
    fasta = tmp_path / "genome.fa"
    lines = ["".join(sequence[i:i + 60]) for i in range(0, len(sequence), 60)]
    fasta.write_text(">chrX test\n" + "\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=hyenadna", "task.size=debug", f"task.data.fasta_path={fasta}", "task.data.seq_len=128",
              *FAST)
    data = _described(run_dir)
    assert (data["contigs"], data["length"], data["other_than_ACGT"]) == (1, "120,000 bp", 3)
    assert data["split"] == "blocks of 20,000 bp in order, every 5th validates"


def test_a_genomic_benchmarks_folder_gives_its_classes(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "bench"
    for split, count in (("train", 8), ("test", 4)):
        for name in ("negative", "positive"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                (root / split / name / f"{i}.txt").write_text("".join(rng.choice(list("ACGT"), 100)))
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=hyenadna", "task.size=debug", "task.stage=finetune", f"task.data.root={root}", *FAST)
    data = _described(run_dir)
    assert data["classes"] == "negative, positive" and (data["train"], data["val"]) == (16, 8)
