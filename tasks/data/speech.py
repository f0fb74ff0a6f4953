"""Speech for self-supervised pretraining: the embedded synthesised set, audio folders, and wav2vec 2.0's
length batching.

Embedded default: sentences of the English Wikipedia extract shipped in gensim's test data
(gensim/test/test_data/enwiki-latest-pages-articles1…-shortened.bz2; Wikipedia text, CC BY-SA), spoken by
eSpeak NG (GPL-3.0, from the espeakng-loader wheel) with several voices, rates and pitches, resampled from
22.05 to 16 kHz and cached as one .npz, so only the first run synthesises.
Real data: LibriSpeech in its standard layout (<root>/<subset>/<speaker>/<chapter>/*.flac), or any folder
of audio files per split (a `datasets` AudioFolder tree: <root>/train/…, <root>/validation/…); validation on
folders of their own, or on ~1% of the training utterances held out as fairseq's wav2vec_manifest.py does.
An audio file that soundfile cannot open (garbage, a truncated header, a format libsndfile lacks) is skipped when
the folder's manifest is made, counted (`unreadable` in the run's data line) and the first one named in a warning:
one bad file in a 1,000-hour corpus should not stop a pretraining run, and the manifest is the one place every file
is opened before training.
"""
from __future__ import annotations

import bz2
import hashlib
import json
import logging
import os
import random
import re
from dataclasses import dataclass
from functools import cache
from math import gcd
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly
from torch.utils.data import Dataset

from .cache import cache_lock
from .errors import UnreadableFile

log = logging.getLogger(__name__)
SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3")
# English voices (with eSpeak NG's male/female variants), speaking rates (words per minute) and pitches
VOICES = ("en-us", "en-us+f2", "en", "en+f3", "en-gb-x-rp+m3", "en-gb-scotland+f4", "en-029+m2", "en-us-nyc+f1")
RATES = (140, 215)
PITCHES = (30, 75)
_VERSION = 1  # bump when synthesis changes: the cache key holds it


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    if rate == target:
        return audio.astype(np.float32)
    g = gcd(rate, target)
    return resample_poly(audio.astype(np.float32), target // g, rate // g, axis=-1).astype(np.float32)


def speak(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50) -> np.ndarray:
    """`text` spoken by eSpeak NG: float32 samples at 16 kHz in the int16 range."""
    from .espeak import SAMPLE_RATE as ESPEAK_RATE, synthesize

    return resample(synthesize(text, voice, rate, pitch), ESPEAK_RATE)


@cache
def wikipedia_sentences() -> tuple[str, ...]:
    """Plain sentences (5–25 words, letters, digits and simple punctuation) of the Wikipedia extract in
    gensim's test data, in article order, without repeats."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    plain = re.compile(r"[A-Z][A-Za-z0-9 ,;:'%-]*[a-z]\.")
    sentences = {}
    with bz2.open(datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")) as dump:
        for _title, text, _page in extract_pages(dump):
            for line in filter_wiki(text).splitlines():
                line = " ".join(line.replace("'''", "").replace("''", "").split())
                if not line or line[0] in "=*#|!{:;":  # headings, lists, tables
                    continue
                for sentence in re.split(r"(?<=[.!?])\s+", line):
                    if plain.fullmatch(sentence) and 5 <= len(sentence.split()) <= 25:
                        sentences[sentence] = None
    return tuple(sentences)


@dataclass
class SpeechSet:
    """Utterances (int16 samples at `sample_rate`) with what was said and how."""

    audio: list[np.ndarray]
    text: list[str]
    voice: list[str]
    rate: list[int]
    pitch: list[int]
    sample_rate: int = SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.audio)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.audio[index]

    @property
    def lengths(self) -> list[int]:
        return [len(a) for a in self.audio]


def _synthesise(sentences, rng: np.random.Generator, what: str = "utterances") -> SpeechSet:
    from tqdm.auto import tqdm

    speech = SpeechSet([], [], [], [], [])
    # a bar once it takes more than a few seconds, on a terminal
    for text in tqdm(sentences, desc=f"synthesising {what}", unit="utterance", delay=3, disable=None):
        voice = str(rng.choice(VOICES))
        rate, pitch = int(rng.integers(*RATES, endpoint=True)), int(rng.integers(*PITCHES, endpoint=True))
        audio = np.clip(np.round(speak(text, voice, rate, pitch)), -32768, 32767).astype(np.int16)
        for field, value in zip(("audio", "text", "voice", "rate", "pitch"), (audio, text, voice, rate, pitch)):
            getattr(speech, field).append(value)
    return speech


def _save(path: Path, sets: dict[str, SpeechSet]) -> None:
    arrays = {}
    for split, s in sets.items():
        arrays[f"{split}_audio"] = np.concatenate(s.audio)
        arrays[f"{split}_offsets"] = np.cumsum([0, *s.lengths])
        for field in ("text", "voice", "rate", "pitch"):
            arrays[f"{split}_{field}"] = np.asarray(getattr(s, field))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, **arrays)
    tmp.replace(path)  # atomic: a killed run never leaves half a cache


def _load(path: Path, splits) -> dict[str, SpeechSet]:
    with np.load(path) as z:
        out = {}
        for split in splits:
            audio, offsets = z[f"{split}_audio"], z[f"{split}_offsets"]
            out[split] = SpeechSet([audio[a:b] for a, b in zip(offsets[:-1], offsets[1:])],
                                   *(z[f"{split}_{f}"].tolist() for f in ("text", "voice", "rate", "pitch")))
    return out


def synthetic_speech(cache_dir: str | Path, train_sentences: int, val_sentences: int, seed: int = 0
                     ) -> tuple[SpeechSet, SpeechSet]:
    """(train, val) synthesised speech, from disjoint sentences; cached under `cache_dir` (~ expanded), so
    a second call with the same arguments reads the file and synthesises nothing."""
    settings = {"version": _VERSION, "train": train_sentences, "val": val_sentences, "seed": seed,
                "voices": VOICES, "rates": RATES, "pitches": PITCHES}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    path = Path(cache_dir).expanduser() / "speech" / f"espeak-{train_sentences}+{val_sentences}-s{seed}-{key}.npz"
    with cache_lock(path):  # runs started together on a cold cache: one synthesises, the others wait and read
        if not path.exists():
            _synthesise_into(path, train_sentences, val_sentences, seed)
    sets = _load(path, ("train", "val"))
    return sets["train"], sets["val"]


def _synthesise_into(path: Path, train_sentences: int, val_sentences: int, seed: int) -> None:
    sentences = list(wikipedia_sentences())
    if train_sentences + val_sentences > len(sentences):
        raise ValueError(f"the text source has {len(sentences)} sentences, fewer than "
                         f"{train_sentences} + {val_sentences} asked for")
    rng = np.random.default_rng(seed)
    chosen = [sentences[i] for i in rng.permutation(len(sentences))[:train_sentences + val_sentences]]
    log.info("synthesising %d + %d utterances with eSpeak NG (first use of these settings; cached in %s)",
             train_sentences, val_sentences, path)
    _save(path, {"val": _synthesise(chosen[:val_sentences], rng, "validation speech"),
                 "train": _synthesise(chosen[val_sentences:], rng, "training speech")})


# ---------------------------------------------------------------- audio folders


class AudioFiles:
    """Audio files read on demand as float32 mono at 16 kHz (int16 range), with their lengths in samples at
    16 kHz. `from_folders` lists folders through manifests cached under `cache_dir`, as fairseq's wav2vec
    manifests hold the lengths."""

    def __init__(self, paths: list[str], lengths: list[int], unreadable: list[tuple[str, str]] = ()):
        self.paths, self.lengths = list(paths), list(lengths)
        self.unreadable = list(unreadable)  # (path, soundfile's reason) of the files skipped by the manifest

    @classmethod
    def from_folders(cls, folders: list[Path], cache_dir: str | Path) -> "AudioFiles":
        paths, lengths, unreadable = [], [], []
        for folder in folders:
            more = cls._manifest(Path(folder), Path(cache_dir).expanduser() / "manifests")
            paths += more[0]
            lengths += more[1]
            unreadable += more[2]
        return cls(paths, lengths, unreadable)

    UNREADABLE = "#unreadable"  # a manifest row of a skipped file: #unreadable <tab> path <tab> reason

    @classmethod
    def _manifest(cls, folder: Path, cache: Path) -> tuple[list[str], list[int], list[tuple[str, str]]]:
        """(paths, lengths at 16 kHz, unreadable (path, reason)) of the audio under `folder`, from its manifest,
        made at first use: each file's header read by soundfile, a file it cannot open skipped and kept in the
        manifest as unreadable (so every later run reports it too)."""
        import soundfile

        folder = folder.resolve()
        path = cache / f"{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}.tsv"
        with cache_lock(path):  # runs started together: one reads the headers, the others read its manifest
            if not path.exists():
                rows = []
                for file in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
                    name = file.relative_to(folder)
                    try:
                        info = soundfile.info(str(file))
                    except (soundfile.SoundFileError, RuntimeError) as err:  # LibsndfileError: not audio it can read
                        rows.append(f"{cls.UNREADABLE}\t{name}\t{' '.join(str(err).split())}\n")
                        continue
                    rows.append(f"{name}\t{info.frames * SAMPLE_RATE // info.samplerate}\n")
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                tmp.write_text("".join(rows))
                tmp.replace(path)  # atomic: a killed run never leaves half a manifest
        paths, lengths, unreadable = [], [], []
        for row in path.read_text().splitlines():
            fields = row.split("\t")
            if fields[0] == cls.UNREADABLE:
                unreadable.append((str(folder / fields[1]), fields[2]))
            else:
                paths.append(str(folder / fields[0]))
                lengths.append(int(fields[1]))
        return paths, lengths, unreadable

    def select(self, indices) -> "AudioFiles":
        """The files at `indices`; the unreadable files stay listed (they belong to no split)."""
        return AudioFiles([self.paths[i] for i in indices], [self.lengths[i] for i in indices], self.unreadable)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        import soundfile

        try:
            audio, rate = soundfile.read(self.paths[index], dtype="int16", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError) as err:  # its header read, its samples not
            raise UnreadableFile(f"{self.paths[index]} is not readable audio ({' '.join(str(err).split())}); remove "
                                 f"or replace it, delete the manifest under task.data.cache_dir/manifests and run "
                                 f"again") from None
        return resample(audio.mean(axis=1), rate)


def audio_folders(root: str | Path, subsets, cache_dir) -> AudioFiles:
    root = Path(root).expanduser()
    folders = [root / s for s in subsets]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"no folder {', '.join(missing)}: task.data.root must hold the subsets named in "
                                f"task.data.train and task.data.val (LibriSpeech: train-clean-100 …, dev-clean …)")
    files = AudioFiles.from_folders(folders, cache_dir)
    if files.unreadable:
        first, reason = files.unreadable[0]
        log.warning("%d of the %d audio files under %s are unreadable and skipped (the first: %s: %s)",
                    len(files.unreadable), len(files) + len(files.unreadable), ", ".join(map(str, folders)), first,
                    reason)
    if not len(files):
        unreadable = f" ({len(files.unreadable)} unreadable, the first {files.unreadable[0][0]})" if files.unreadable else ""
        raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {', '.join(map(str, folders))}"
                                + unreadable)
    return files


def held_out_split(names: list[str], fraction: float, seed: int = 42) -> tuple[list[int], list[int]]:
    """(kept, held out) positions of `names`, split as fairseq's examples/wav2vec/wav2vec_manifest.py
    splits a pretraining corpus (`--valid-percent 0.01 --seed 42`): one draw of `random.Random(seed)` per file,
    held out when it is ≤ `fraction`. fairseq draws in glob's order, the file system's directory order; here
    the names are sorted first, so the same files are held out on every machine."""
    rand = random.Random(seed)
    held_out = {i for i in sorted(range(len(names)), key=names.__getitem__) if rand.random() <= fraction}
    return [i for i in range(len(names)) if i not in held_out], sorted(held_out)


def held_out_audio(root: str | Path, subsets, cache_dir, fraction: float, seed: int = 42
                   ) -> tuple[AudioFiles, AudioFiles]:
    """(train, validation) from the audio under `root`/`subsets`: `held_out_split` over the files' paths
    relative to `root` (`train-clean-100/19/198/19-198-0001.flac`), so the subsets' order does not matter."""
    files = audio_folders(root, subsets, cache_dir)
    root = Path(root).expanduser().resolve()
    names = [os.path.relpath(p, root) for p in files.paths]
    kept, held_out = held_out_split(names, fraction, seed)
    if not held_out and len(files) > 1:  # a small folder, where fairseq's rule would validate on nothing
        last = max(range(len(names)), key=names.__getitem__)
        kept, held_out = [i for i in range(len(names)) if i != last], [last]
        log.info("task.data.held_out_fraction=%g holds out none of the %d files: validating on the last in path "
                 "order, %s", fraction, len(names), names[last])
    if not held_out:
        raise ValueError(f"task.data.root={root} holds one audio file; validation needs another, or name validation "
                         f"folders in task.data.val")
    return files.select(kept), files.select(held_out)


# ---------------------------------------------------------------- wav2vec 2.0's batches


# fairseq's dataset.required_batch_size_multiple (fairseq/dataclass/configs.py, DatasetConfig): a batch of 8
# or more utterances is cut back to a multiple of 8
FAIRSEQ_BATCH_MULTIPLE = 8
BATCHINGS = ("fairseq", "shortest_first")


def length_batches(lengths, max_tokens: int, max_sample_size: int, min_sample_size: int,
                   batching: str = "fairseq") -> list[list[int]]:
    """Utterances grouped by length so that (batch size × longest, capped at `max_sample_size`) ≤ `max_tokens`,
    those shorter than `min_sample_size` dropped.

    "fairseq": fairseq's wav2vec 2.0 batches (fairseq/data/audio/raw_audio_dataset.py `ordered_indices`,
    fairseq/data/data_utils_fast.pyx `batch_by_size_vec`): longest first (capped at `max_sample_size`; fairseq
    breaks ties at random, here by position), a batch of 8 or more closed at its last multiple of 8, the
    utterances after it opening the next. "shortest_first": shortest first, filled until the next one
    does not fit (the CPU default's measured runs)."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching={batching!r} is unknown; use {' or '.join(BATCHINGS)}")
    lengths = np.asarray(lengths, dtype=np.int64)
    capped = np.minimum(lengths, max_sample_size)
    kept = np.flatnonzero(lengths >= min_sample_size)
    if batching == "fairseq":
        order, multiple = kept[np.argsort(-capped[kept], kind="stable")], FAIRSEQ_BATCH_MULTIPLE
    else:
        order, multiple = kept[np.argsort(lengths[kept], kind="stable")], 1
    # `batch` always has a size fairseq accepts (under the multiple, or a multiple of it); `tail` waits to
    # join it. Longest first, the tail alone never overflows (it is no longer than the batch with it).
    batches, batch, tail, longest = [], [], [], 0
    for i in order:
        tail.append(int(i))
        count, size = len(batch) + len(tail), max(longest, int(capped[i]))
        if count * size > max_tokens:  # the newest does not fit: the batch closes, its tail opens the next
            batches.append(batch)
            batch, tail = tail, []
            longest = max(int(capped[j]) for j in batch)
        else:
            longest = size
            if count < multiple or count % multiple == 0:
                batch, tail = batch + tail, []
    return [b for b in (*batches, batch, tail) if b]


class LengthBatches(Dataset):
    """One item is one batch of utterances of similar length (see `length_batches`), each cropped to the
    batch's shortest (at most `max_sample_size`) at a random offset, as fairseq's wav2vec 2.0 does without
    padding; `fixed_crops` makes the offsets a function of the batch (validation)."""

    def __init__(self, utterances, lengths, *, max_tokens: int, max_sample_size: int, min_sample_size: int,
                 normalize: bool, fixed_crops: bool, batching: str = "fairseq"):
        self.utterances, self.normalize, self.fixed_crops = utterances, normalize, fixed_crops
        self.max_sample_size = max_sample_size
        self.batches = length_batches(lengths, max_tokens, max_sample_size, min_sample_size, batching)
        if not self.batches:
            raise ValueError(f"no utterance is at least task.data.min_sample_size={min_sample_size} samples long")

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        waves = [torch.as_tensor(self.utterances[i], dtype=torch.float32) / 32768 for i in self.batches[index]]
        if self.normalize:  # zero mean, unit variance per utterance (fairseq's `normalize`, Large)
            waves = [F.layer_norm(w, w.shape) for w in waves]
        size = min(self.max_sample_size, *(len(w) for w in waves))
        generator = torch.Generator().manual_seed(index) if self.fixed_crops else None
        starts = [int(torch.randint(len(w) - size + 1, (), generator=generator)) for w in waves]
        crops = torch.stack([w[s:s + size] for w, s in zip(waves, starts)])
        return {"input_values": crops, "index": torch.full((len(crops),), index)}


def collate_batches(items: list[dict]) -> dict:
    """Items are whole batches: normally one per step (trainer.batch_size=1); several are cropped to the
    shortest and joined."""
    size = min(item["input_values"].shape[-1] for item in items)
    return {"input_values": torch.cat([item["input_values"][:, :size] for item in items]),
            "index": torch.cat([item["index"] for item in items])}
