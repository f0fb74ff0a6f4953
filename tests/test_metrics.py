"""Metric networks pinned for every machine: the digit classifier behind `fd_mnist_classifier` ships with the
suite, is checked against its checksum at load, and scores the same samples the same at any thread count."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from tasks import fid
from tasks.data.mnist import mnist_digits, split_indices

# the FD of the fixed fake digits below against the training digits, in the pinned network's features
PINNED_FD = 168.13452707021725


def _fixed_fake_and_real():
    """The DiT default's digits ([-1, 1], 32×32): its training split as the real set, and as the "generated" set
    its validation digits shifted 3 pixels right and blurred (a fixed, imperfect sample)."""
    images, labels = mnist_digits()
    x = F.pad(images[:, None].float() / 127.5 - 1, (2,) * 4, value=-1.0)
    train, val = split_indices(labels, 0.1)
    fake = torch.roll(x[val], shifts=3, dims=-1)
    fake = F.avg_pool2d(fake, 3, stride=1, padding=1, count_include_pad=False)
    return fake, x[train]


def fd_at(threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        features = fid.digit_features()
        fake, real = _fixed_fake_and_real()
        with torch.no_grad():
            stats = [fid.FeatureMoments().add(features(x)).statistics() for x in (fake, real)]
        return fid.frechet_distance(*stats[0], *stats[1])
    finally:
        torch.set_num_threads(previous)


def test_the_pinned_classifier_scores_the_same_samples_the_same_at_any_thread_count():
    one, two = fd_at(1), fd_at(2)
    assert one == pytest.approx(two, abs=1e-4)
    assert one == pytest.approx(PINNED_FD, abs=1e-4)  # and as it did when the network was pinned


def test_a_tampered_classifier_file_is_one_line_of_error(tmp_path, monkeypatch):
    tampered = tmp_path / fid.CLASSIFIER_PATH.name
    shutil.copy(fid.CLASSIFIER_PATH, tampered)
    with open(tampered, "r+b") as f:  # flip one byte of the weights
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setattr(fid, "CLASSIFIER_PATH", tampered)
    with pytest.raises(ValueError, match="not the pinned") as error:
        fid.digit_features()
    assert len(str(error.value).splitlines()) == 1



# ------------------------------------------------------------------ provenance


def test_a_run_records_what_its_numbers_depend_on(tmp_path):
    from tests.helpers import run_train, summary

    run_train(tmp_path, "task=vit", "task.size=debug", "trainer.max_steps=1", "trainer.batch_size=16",
              "trainer.max_eval_batches=1", OMP_NUM_THREADS="1")
    origin = summary(tmp_path)["provenance"]
    assert set(origin["artifacts"]) == {"digits"} and len(origin["artifacts"]["digits"]) == 16
    assert len(origin["commit"]) == 40 and isinstance(origin["dirty"], bool)
    assert {"torch", "timm", "transformers", "accelerate"} <= set(origin["versions"])
    assert origin["threads"] == 1 and origin["device"]


def _fake_run(folder, norm: str, seed: int, tokenizer: str, loss: float):
    import json

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"norm:\n  type: {norm}\nseed: {seed}\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": loss, "val/loss": loss}) + "\n")
    (folder / "summary.json").write_text(json.dumps({
        "status": "completed", "norm": norm, "seed": seed, "steps": 10,
        "headline": {"name": "val/loss", "value": loss, "best": loss, "higher_is_better": False},
        "provenance": {"artifacts": {"tokenizer": tokenizer, "tokens": "same"}}}))


def test_compare_does_not_pool_runs_whose_tokenizers_differ(tmp_path):
    import sys

    from tests.helpers import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    from compare import compare

    from dyt.train.results import find_runs

    _fake_run(tmp_path / "runs" / "a", "dyt", 0, "aaaaaaaaaaaaaaaa", 5.0)
    _fake_run(tmp_path / "runs" / "b", "dyt", 1, "bbbbbbbbbbbbbbbb", 6.0)  # another machine's tokenizer
    _fake_run(tmp_path / "runs" / "c", "rmsnorm", 0, "aaaaaaaaaaaaaaaa", 5.5)
    table = compare(find_runs([tmp_path / "runs"]), tmp_path / "out", ["runs"])[0].read_text()
    rows = [line for line in table.splitlines() if line.startswith("| dyt")]
    assert len(rows) == 2 and "tokenizer aaaaaaaa" in rows[0] and "tokenizer bbbbbbbb" in rows[1]
    assert "`dyt`: not pooled, its runs differ in tokenizer" in table
    assert "5 ± " not in table  # never averaged
