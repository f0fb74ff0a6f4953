"""A user's data that is partly broken: each case is either skipped and counted (a log line naming the first bad file,
the count in summary.json's `data`) or one `error: …` line naming the file (and line), never a traceback from a
data worker. Real small files, made here; tiny runs."""
from __future__ import annotations

import json
import wave

import numpy as np
import pytest

from tests.helpers import image_folder, run_train, summary

FAST = ["trainer.max_steps=2", "trainer.batch_size=4", "trainer.max_eval_batches=1", "trainer.eval_every=2"]


def _one_error_line(result, *needles) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("break_image", [
    lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),  # truncated
    lambda path: path.write_bytes(b"<html>not found</html>" * 20),  # not an image at all
], ids=["truncated", "garbage"])
def test_a_broken_image_stops_the_run_with_one_line_naming_it_from_a_worker_too(tmp_path, break_image):
    root = image_folder(tmp_path / "images", ("ant", "bee", "wasp"), 1, 24)
    broken = root / "train" / "bee" / "0.png"
    break_image(broken)
    run_dir = tmp_path / "run"
    # 3 training images, a batch of 3: the first step reads every one, in a DataLoader worker
    result = run_train(run_dir, "task=vit", "task.size=debug", f"task.data.root={root}", "task.data.image_size=24",
                       "trainer.max_steps=1", "trainer.batch_size=3", "trainer.num_workers=1", check=False)
    line = _one_error_line(result, f"{broken} is not a readable image", "remove or replace it")
    assert "Traceback" not in result.stdout + result.stderr and "DataLoader worker" not in line
    assert summary(run_dir)["status"] == "failed" and str(broken) in summary(run_dir)["error"]


def test_an_unreadable_first_image_is_one_line_before_any_work(tmp_path):
    root = image_folder(tmp_path / "images", ("ant", "bee", "wasp"), 1, 24)
    (root / "train" / "ant" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = run_train(tmp_path / "run", "task=vit", "task.size=debug", f"task.data.root={root}",
                       "task.data.image_size=auto", *FAST, check=False)
    _one_error_line(result, f"{root / 'train' / 'ant' / '0.png'} is not a readable image")


# ---------------------------------------------------------------- audio


def _wav(path, seconds: float = 1.5, seed: int = 0):
    samples = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 3000).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())


def test_unreadable_audio_files_are_skipped_counted_and_the_first_named(tmp_path):
    folder = tmp_path / "audio" / "speaker1"
    folder.mkdir(parents=True)
    for i in range(5):
        _wav(folder / f"{i}.wav", seed=i)
    (folder / "5.flac").write_bytes(b"fLaC but nothing after it")
    (folder / "6.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    fast = [arg for arg in FAST if not arg.startswith("trainer.batch_size")]
    cache = tmp_path / "cache"
    for run in ("run", "again"):  # the second run reads the manifest the first made, and reports the same
        run_dir = tmp_path / run
        run_train(run_dir, "task=wav2vec2", "task.size=debug", f"task.data.root={tmp_path / 'audio'}", *fast,
                  DYT_CACHE_DIR=str(cache))
        data = summary(run_dir)["data"]
        assert data["unreadable_files"] == 2 and data["train"] == "4 utterances, 6.0 s", data
        log = (run_dir / "train.log").read_text()
        assert f"2 of the 7 audio files under {tmp_path / 'audio'} are unreadable and skipped (the first: " \
               f"{folder / '5.flac'}: Error opening" in log


def test_audio_that_fails_when_read_is_one_line_naming_it(tmp_path):
    from tasks.data.errors import UnreadableFile
    from tasks.data.speech import AudioFiles

    broken = tmp_path / "0.wav"
    broken.write_bytes(b"not audio")
    with pytest.raises(UnreadableFile, match=f"^{broken} is not readable audio .*; remove or replace it"):
        AudioFiles([str(broken)], [16000])[0]
    # as torch re-raises it from a DataLoader worker: the one line is kept
    wrapped = UnreadableFile("Caught UnreadableFile in DataLoader worker process 0.\nOriginal Traceback (most recent "
                             "call last):\n  File \"x.py\", line 1, in f\ntasks.data.errors.UnreadableFile: a.wav is "
                             "not readable audio\n")
    assert str(wrapped) == "a.wav is not readable audio"


# ---------------------------------------------------------------- text


def _jsonl_folder(folder, bad_line: bytes | None, suffix: str = ".jsonl"):
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["river", "stone", "light", "north", "garden", "window", "market", "winter", "signal", "copper"]
    for part in range(2):
        lines = [json.dumps({"text": " ".join(rng.choice(words, 40))}).encode() for _ in range(30)]
        if part == 1 and bad_line is not None:
            lines[6] = bad_line  # line 7 of the second file
        (folder / f"part{part}{suffix}").write_bytes(b"\n".join(lines) + b"\n")
    return folder


@pytest.mark.parametrize("bad_line, reason", [
    (b'{"text": "cut off in the middle', "not a JSON object (Unterminated string"),
    (b'["a list", "of words"]', "not a JSON object (a JSON list, not an object)"),
    ('{"text": "latin-1 café"}'.encode("latin-1"), "not a JSON object (not UTF-8"),
], ids=["cut", "list", "latin1"])
def test_a_malformed_jsonl_line_is_one_error_naming_the_file_and_line(tmp_path, bad_line, reason):
    folder = _jsonl_folder(tmp_path / "text", bad_line)
    result = run_train(tmp_path / "run", "task=llama", "task.size=debug", f"task.data.path={folder}",
                       "task.data.seq_len=32", *FAST, check=False, DYT_CACHE_DIR=str(tmp_path / "cache"))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert last.startswith(f"error: task.data.path={folder}: {folder / 'part1.jsonl'} line 7 is {reason}"), last


def test_a_json_document_file_that_parses_is_not_blamed_on_a_line(tmp_path):
    from tasks.data.text import first_bad_json_line

    document = tmp_path / "rows.json"
    document.write_text(json.dumps([{"text": "one"}, {"text": "two"}], indent=2))
    assert first_bad_json_line([str(document)]) is None
    document.write_text('[\n  {"text": "one"},\n  {"text": "two"\n]\n')
    assert first_bad_json_line([str(document)])[1] == 4


# ---------------------------------------------------------------- genomes


def test_a_fastas_lower_case_iupac_codes_and_odd_characters(tmp_path):
    """Lower case is the same base (soft-masked repeats); IUPAC codes are N, counted; a character that is no
    nucleotide code at all is N too, counted, and the first named in a warning."""
    rng = np.random.default_rng(0)
    sequence = list("".join(rng.choice(list("ACGT"), 120_000)))
    for position in range(1000, 3000):  # a soft-masked repeat: still A, C, G, T
        sequence[position] = sequence[position].lower()
    for position, letter in ((10, "R"), (500, "y"), (700, "N"), (90_000, "n")):
        sequence[position] = letter
    for position, character in ((60_001, "*"), (60_002, "5")):  # no nucleotide code
        sequence[position] = character
    fasta = tmp_path / "genome.fa"
    fasta.write_text(">chrX test\n" + "\n".join("".join(sequence[i:i + 60]) for i in range(0, len(sequence), 60)) + "\n")
    run_dir = tmp_path / "run"
    run_train(run_dir, "task=hyenadna", "task.size=debug", f"task.data.fasta_path={fasta}", "task.data.seq_len=128",
              *FAST)
    assert summary(run_dir)["data"]["other_than_ACGT"] == 6
    log = (run_dir / "train.log").read_text()
    assert "2 positions hold a character that is no nucleotide code (IUPAC), read as N; the first: '*' at chrX:60002" in log

    from tasks.data.genome import encode

    assert encode("ACGTacgtRyNn*").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 4, 4, 4]


def test_a_fasta_pyfaidx_cannot_index_is_one_line(tmp_path):
    fasta = tmp_path / "genome.fa"
    fasta.write_text(">chr1\n" + "ACGT" * 15 + "\nACG\n" + "ACGT" * 15 + "\n")  # a short line inside the contig
    result = run_train(tmp_path / "run", "task=hyenadna", "task.size=debug", f"task.data.fasta_path={fasta}",
                       "task.data.seq_len=128", *FAST,
                       check=False)
    _one_error_line(result, f"task.data.fasta_path={fasta} is not a FASTA pyfaidx can index", "line 3")


# ---------------------------------------------------------------- many runs at once on a cold cache


def test_four_runs_started_together_on_a_cold_cache_build_each_cache_once(tmp_path):
    """Two LLaMA runs (a tokenizer and a token file to make) and two wav2vec 2.0 runs (speech to synthesise), started
    at once with an empty data cache and an empty torch extension folder (the DyT CPU kernel to compile): all
    complete, and every cache entry is made by one run while the others wait on its lock (tasks/data/cache.py)."""
    import subprocess
    import sys

    from tests.helpers import ROOT, train_env

    cache, extensions = tmp_path / "cache", tmp_path / "torch_extensions"
    env = train_env(DYT_CACHE_DIR=str(cache), TORCH_EXTENSIONS_DIR=str(extensions))
    common = ["trainer.max_steps=2", "trainer.max_eval_batches=1", "trainer.eval_every=2", "logger=none",
              "trainer.progress=log"]
    runs = {f"llama{i}": ["task=llama", "task.size=debug", "task.data.seq_len=64", "task.data.vocab_size=512",
                          "trainer.batch_size=2", f"seed={i}"] for i in range(2)}
    runs |= {f"wav2vec2_{i}": ["task=wav2vec2", "task.size=debug", "task.data.train_sentences=12",
                               "task.data.val_sentences=3", f"seed={i}"] for i in range(2)}
    processes = {name: subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, *common,
                                         f"hydra.run.dir={tmp_path / name}"], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name, args in runs.items()}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, f"{name} exited {process.returncode}\n{output[-4000:]}"
        assert summary(tmp_path / name)["status"] == "completed", name

    def entries(folder, pattern="*"):  # what the cache holds, without the locks beside it
        return sorted(p.name for p in (cache / folder).glob(pattern) if not p.name.endswith(".lock"))

    assert len(entries("tokenizers")) == 1 and len(entries("tokens")) == 1 and len(entries("speech")) == 1, (
        entries("tokenizers"), entries("tokens"), entries("speech"))
    logs = {name: (tmp_path / name / "train.log").read_text() for name in runs}
    for made in ("training a byte-level BPE tokenizer", "tokenizing the text once into", "synthesising 12 + 3"):
        assert sum(made in log for log in logs.values()) == 1, made  # one run made it, the others read it
    builds = [p for p in extensions.rglob("*.so")]
    assert len(builds) == 1, builds  # the kernel compiled once, under torch's own lock
