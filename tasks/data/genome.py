"""DNA data for the HyenaDNA and Caduceus tasks: single-nucleotide tokens, windows of a genome split by
position, and the coding-vs-intergenic benchmark.

Embedded genome: the complete chromosome of Corynebacterium diphtheriae NCTC11397 (RefSeq NZ_LN831026.1,
assembly GCF_001457455.1, 2.46 Mbp) that ships as test data inside the pyrodigal wheel (GPL-3.0). Real data:
any local FASTA through pyfaidx (`fasta_path`), optionally read through the HyenaDNA / Caduceus interval file
(`bed_path`, Basenji's sequences_human.bed: the official hg38 training, validation and test intervals), and
GenomicBenchmarks datasets from a local folder in their published layout (`root`/{train,test}/<class>/<id>.txt,
one sequence per file).

Split by position: every contig is cut into blocks of `block` bp and every 1/val_fraction-th block is
validation. A window never crosses a block edge, so no genome position is in both a training and a
validation window; pretraining uses the same split, so the validation blocks are never seen at all.
"""
from __future__ import annotations

import gzip
import logging
import math
from contextlib import nullcontext
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dyt.train.config import ConfigError

from .cache import cache_lock

log = logging.getLogger(__name__)
# Letters: upper and lower case are the same base (lower case is soft-masking of repeats, as in hg38; pyfaidx
# upper-cases it here, and `encode` maps both cases). The IUPAC ambiguity codes (N, R, Y, …) and RNA's U are read as N: counted in
# the run's data line (`other_than_ACGT`), never scored as targets. Any other character (a digit, '-', '*', a
# protein letter: no nucleotide code) is read as N too, and `Genome.other_letters` warns with the first one.
VOCAB = "ACGTN"  # token ids 0-4; lower case and every other letter map to N
NUCLEOTIDES = 4  # the language-model heads score A, C, G, T (ids 0-3); positions whose target is N are not scored
MASK, PAD = 5, 6
VOCAB_SIZE = 8  # A C G T N MASK PAD and one spare, a multiple of 8 as HyenaDNA pads it
COMPLEMENT = torch.tensor([3, 2, 1, 0, 4, MASK, PAD, 7])  # A↔T, C↔G; N, MASK, PAD map to themselves
_CODES = np.full(256, VOCAB.index("N"), dtype=np.uint8)
for _i, _c in enumerate(VOCAB):
    _CODES[ord(_c)] = _CODES[ord(_c.lower())] = _i

IUPAC = "ACGTURYSWKMBDHVN"  # the nucleotide codes (NC-IUB 1984)
_NOT_IUPAC = np.ones(256, dtype=bool)
_NOT_IUPAC[[ord(c) for c in IUPAC + IUPAC.lower()]] = False

EMBEDDED_FASTA = "GCF_001457455.1_NCTC11397_genomic.fna.gz"
Region = tuple[str, int, int]  # contig, start, end (0-based, end exclusive)


def encode(sequence: str) -> np.ndarray:
    """Token ids (uint8) of a nucleotide string."""
    return _CODES[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)]


def reverse_complement(tokens: torch.Tensor) -> torch.Tensor:
    """Reverse complement of token ids along the last dim (batched or not)."""
    return COMPLEMENT.to(tokens.device)[tokens.flip(-1).long()]


# ------------------------------------------------------------------ genomes


class Genome:
    """Contigs by name, with windows as token arrays: the whole sequence in memory (the embedded
    chromosome), or fetched on demand from an indexed FASTA (pyfaidx writes the .fai next to it)."""

    def __init__(self, contigs: dict):
        self.contigs = contigs  # name → np.ndarray of tokens, or a pyfaidx record (sliced to str)

    @property
    def lengths(self) -> dict[str, int]:
        return {name: len(seq) for name, seq in self.contigs.items()}

    def fetch(self, contig: str, start: int, end: int) -> np.ndarray:
        window = self.contigs[contig][start:end]
        return window if isinstance(window, np.ndarray) else encode(str(window))

    def other_letters(self, chunk: int = 1 << 24) -> int:
        """Positions that are not A, C, G or T (either case), over every contig, read a chunk at a time; a warning
        names the first character that is no nucleotide code at all (IUPAC), with their count."""
        n, other, strange, first = VOCAB.index("N"), 0, 0, None
        for name, length in self.lengths.items():
            for start in range(0, length, chunk):
                window = self.contigs[name][start:start + chunk]
                if isinstance(window, np.ndarray):  # already tokens
                    other += int((window == n).sum())
                    continue
                raw = np.frombuffer(str(window).encode("ascii", "replace"), dtype=np.uint8)
                other += int((_CODES[raw] == n).sum())
                odd = np.flatnonzero(_NOT_IUPAC[raw])
                strange += len(odd)
                if len(odd) and first is None:
                    first = f"{chr(raw[odd[0]])!r} at {name}:{start + int(odd[0]) + 1}"
        if strange:
            log.warning("%d positions hold a character that is no nucleotide code (IUPAC), read as N; the first: %s",
                        strange, first)
        return other


@lru_cache(maxsize=1)
def embedded_sequence() -> tuple[str, str]:
    """(record name, sequence) of the C. diphtheriae chromosome in pyrodigal's test data."""
    path = resources.files("pyrodigal.tests.data") / EMBEDDED_FASTA
    with path.open("rb") as raw, gzip.open(raw, "rt") as handle:
        header, *lines = handle.read().strip().split("\n")
    return header[1:].split()[0], "".join(lines).upper()


def embedded_genome() -> Genome:
    name, sequence = embedded_sequence()
    return Genome({name: encode(sequence)})


def fasta_genome(path: str | Path, contigs=None) -> Genome:
    """A local FASTA (plain or bgzip) through pyfaidx; `contigs` keeps only the named ones (e.g. [chr1])."""
    from pyfaidx import Fasta, FastaIndexingError

    index = Path(f"{path}.fai")
    # runs started together: one writes pyfaidx's index beside the FASTA (no lock file once it is there: the
    # FASTA's folder may be read-only)
    try:
        with nullcontext() if index.exists() else cache_lock(index):
            fasta = Fasta(str(path), as_raw=True, sequence_always_upper=True)
    except FastaIndexingError as err:  # a malformed FASTA; pyfaidx's message names the line
        raise ConfigError(f"task.data.fasta_path={path} is not a FASTA pyfaidx can index: {err}") from None
    names = list(contigs) if contigs else list(fasta.keys())
    missing = [n for n in names if n not in fasta]
    if missing:
        raise KeyError(f"{path} has no contig {missing[0]!r}; it has {', '.join(list(fasta.keys())[:8])} …")
    return Genome({name: fasta[name] for name in names})


def split_regions(lengths: dict[str, int], block: int, val_fraction: float) -> dict[str, list[Region]]:
    """Blocks of `block` bp over all contigs in order; every 1/val_fraction-th block is validation."""
    regions: dict[str, list[Region]] = {"train": [], "val": []}
    k = 0
    for name, length in lengths.items():
        for start in range(0, length, block):
            is_val = math.floor((k + 1) * val_fraction) > math.floor(k * val_fraction)
            regions["val" if is_val else "train"].append((name, start, min(start + block, length)))
            k += 1
    return regions


# ------------------------------------------------------------------ pretraining windows


class RandomWindows(Dataset):
    """Item i: a window of `length` tokens at a position drawn uniformly from `regions`, reverse-complemented
    with probability `rc_prob`; drawn from (seed, i), so a resumed run sees the same windows."""

    def __init__(self, genome: Genome, regions: list[Region], length: int, size: int, *, seed: int = 0,
                 rc_prob: float = 0.5):
        self.genome, self.length, self.size, self.seed, self.rc_prob = genome, length, size, seed, rc_prob
        self.regions = [r for r in regions if r[2] - r[1] >= length]
        if not self.regions:
            raise ValueError(f"no region holds a window of {length} bp; lower the sequence length or raise the "
                             "block size")
        self.cumulative = np.cumsum([end - start - length + 1 for _, start, end in self.regions])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        for _ in range(10):  # draw again if the window is mostly N (assembly gaps, centromeres)
            k = int(rng.integers(self.cumulative[-1]))
            r = int(np.searchsorted(self.cumulative, k, side="right"))
            contig, start, _ = self.regions[r]
            start += k - (int(self.cumulative[r - 1]) if r else 0)
            tokens = torch.from_numpy(self.genome.fetch(contig, start, start + self.length).astype(np.int64))
            if (tokens == VOCAB.index("N")).float().mean() < 0.5:
                break
        if rng.random() < self.rc_prob:
            tokens = reverse_complement(tokens)
        return {"tokens": tokens}


class TiledWindows(Dataset):
    """Non-overlapping windows of `length` tiling `regions` in order, at most `limit` (evenly spread)."""

    def __init__(self, genome: Genome, regions: list[Region], length: int, limit: int | None = None):
        self.genome = genome
        self.windows = [(c, s, s + length) for c, start, end in regions for s in range(start, end - length + 1, length)]
        if limit is not None and len(self.windows) > limit:
            keep = np.linspace(0, len(self.windows) - 1, limit).round().astype(int)
            self.windows = [self.windows[k] for k in keep]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        return {"tokens": torch.from_numpy(self.genome.fetch(*self.windows[i]).astype(np.int64))}


class MaskedLM(Dataset):
    """BERT masking of another dataset's windows (`mask_prob` of positions: 80 % MASK, 10 % a random
    nucleotide, 10 % kept); `targets` is -100 where nothing is predicted. Drawn from (seed, i)."""

    def __init__(self, windows: Dataset, mask_prob: float = 0.15, seed: int = 0):
        self.windows, self.mask_prob, self.seed = windows, mask_prob, seed

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        tokens = self.windows[i]["tokens"]
        rng = np.random.default_rng([self.seed, i, 1])
        draw = torch.from_numpy(rng.random((2, len(tokens))))
        chosen = draw[0] < self.mask_prob
        targets = torch.where(chosen, tokens, -100)
        inputs = torch.where(chosen & (draw[1] < 0.8), MASK, tokens)
        random = chosen & (draw[1] >= 0.8) & (draw[1] < 0.9)
        inputs = torch.where(random, torch.from_numpy(rng.integers(0, 4, len(tokens))), inputs)
        return {"tokens": inputs, "targets": targets}


# ------------------------------------------------------------------ the official hg38 intervals

# HyenaDNA and Caduceus read every BED interval as start … start + 2^20, whatever its end column says
# (kuleshov-group/caduceus src/dataloaders/datasets/hg38_dataset.py, MAX_ALLOWED_LENGTH; the same in hyena-dna)
BED_EXTENT = 2 ** 20
BED_SPLITS = ("train", "valid", "test")


def bed_intervals(path: str | Path) -> dict[str, list[Region]]:
    """The intervals of a BED file with a split column (`chrom start end split`, tab-separated, as Basenji's
    sequences_human.bed), by split, each extended to BED_EXTENT bp from its start."""
    intervals: dict[str, list[Region]] = {split: [] for split in BED_SPLITS}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split("\t")
        if len(fields) < 4 or fields[3] not in intervals:
            raise ValueError(f"{path}:{number}: expected `chrom<TAB>start<TAB>end<TAB>split` with split one of "
                             f"{', '.join(BED_SPLITS)}; got {line[:80]!r}")
        start = int(fields[1])
        intervals[fields[3]].append((fields[0], start, start + BED_EXTENT))
    return intervals


class BedWindows(Dataset):
    """The official hg38 windows (HG38Dataset, FastaInterval): each interval cut into BED_EXTENT / stride
    consecutive windows; item i is window i % shifts of interval i // shifts, `length` bp long (a causal model
    reads one more than the stride), moved back inside its contig where it would run past an end, reverse
    complemented with probability `rc_prob` drawn from (seed, i). A validation set keeps only the first
    `first_fraction` of these windows, or `limit` of them spread evenly (`validation_subset`)."""

    def __init__(self, genome: Genome, intervals: list[Region], stride: int, length: int, *, seed: int = 0,
                 rc_prob: float = 0.0, first_fraction: float | None = None, limit: int | None = None):
        if BED_EXTENT % stride:
            raise ValueError(f"the window stride {stride} must divide {BED_EXTENT} (2^20), as in the official loader")
        missing = sorted({c for c, _, _ in intervals} - set(genome.contigs))
        if missing:
            raise KeyError(f"the BED file names contig {missing[0]!r}, which the FASTA does not have")
        self.genome, self.intervals, self.stride, self.length = genome, intervals, stride, length
        self.seed, self.rc_prob, self.shifts = seed, rc_prob, BED_EXTENT // stride
        self.contig_length = genome.lengths
        self.keep = validation_subset(len(intervals) * self.shifts, first_fraction, limit)

    def __len__(self) -> int:
        return len(self.intervals) * self.shifts if self.keep is None else len(self.keep)

    def __getitem__(self, i: int) -> dict:
        index = int(self.keep[i]) if self.keep is not None else i
        contig, start, _ = self.intervals[index // self.shifts]
        start += (index % self.shifts) * self.stride
        start = max(0, min(start, self.contig_length[contig] - self.length))
        tokens = torch.from_numpy(self.genome.fetch(contig, start, start + self.length).astype(np.int64))
        if self.rc_prob and np.random.default_rng([self.seed, index]).random() < self.rc_prob:
            tokens = reverse_complement(tokens)
        return {"tokens": tokens}


def validation_subset(size: int, first_fraction: float | None = None, limit: int | None = None) -> np.ndarray | None:
    """Which of `size` validation windows to evaluate: the first `first_fraction` of them in order (Lightning's
    `limit_val_batches`, as the official runs evaluate), else `limit` spread evenly, else all (None)."""
    if first_fraction is not None:
        return np.arange(math.ceil(first_fraction * size))
    if limit is not None and size > limit:
        return np.linspace(0, size - 1, limit).round().astype(int)
    return None


# ------------------------------------------------------------------ coding vs intergenic


@lru_cache(maxsize=1)
def embedded_coding_mask() -> np.ndarray:
    """Per position of the embedded chromosome: inside a gene pyrodigal predicts (either strand)."""
    import pyrodigal

    _, sequence = embedded_sequence()
    finder = pyrodigal.GeneFinder()
    finder.train(sequence)
    mask = np.zeros(len(sequence), dtype=bool)
    for gene in finder.find_genes(sequence):
        mask[gene.begin - 1:gene.end] = True
    return mask


def class_starts(mask: np.ndarray, regions: list[Region], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Start positions of windows inside `regions` that are wholly intergenic (class 0) or wholly inside
    predicted genes (class 1)."""
    covered = np.concatenate([[0], np.cumsum(mask)])
    intergenic, coding = [], []
    for _, start, end in regions:
        starts = np.arange(start, end - length + 1)
        count = covered[starts + length] - covered[starts]
        intergenic.append(starts[count == 0])
        coding.append(starts[count == length])
    return np.concatenate(intergenic), np.concatenate(coding)


class SampledLabelledWindows(Dataset):
    """Training windows for classification: item i takes class i % n_classes (balanced), a start drawn from
    that class's candidates and a reverse complement with probability `rc_prob`, all from (seed, i)."""

    def __init__(self, genome: Genome, contig: str, starts: list[np.ndarray], length: int, size: int, *,
                 seed: int = 0, rc_prob: float = 0.5):
        self.genome, self.contig, self.starts, self.length = genome, contig, starts, length
        self.size, self.seed, self.rc_prob = size, seed, rc_prob

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        label = i % len(self.starts)
        start = int(rng.choice(self.starts[label]))
        tokens = torch.from_numpy(self.genome.fetch(self.contig, start, start + self.length).astype(np.int64))
        if rng.random() < self.rc_prob:
            tokens = reverse_complement(tokens)
        return {"tokens": tokens, "labels": torch.tensor(label)}


class LabelledSequences(Dataset):
    """Fixed (tokens, label) pairs, reverse-complemented with probability `rc_prob` (training only)."""

    def __init__(self, sequences: list[torch.Tensor], labels: list[int], rc_prob: float = 0.0,
                 classes: list[str] | None = None):
        self.sequences, self.labels, self.rc_prob, self.classes = sequences, labels, rc_prob, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        tokens = self.sequences[i]
        if self.rc_prob and torch.rand(()) < self.rc_prob:
            tokens = reverse_complement(tokens)
        return {"tokens": tokens, "labels": torch.tensor(self.labels[i])}


def coding_vs_intergenic(length: int, block: int, val_fraction: float, *, train_size: int, val_per_class: int,
                         seed: int = 0, rc_prob: float = 0.5) -> tuple[Dataset, Dataset, dict]:
    """The embedded benchmark: windows of the chromosome wholly inside predicted genes (label 1) or wholly
    intergenic (label 0), balanced; validation windows are spread evenly over the validation blocks'
    candidates. Returns (train, val, info) with info giving the positions for leak checks."""
    genome = embedded_genome()
    (contig, n), = genome.lengths.items()
    regions = split_regions({contig: n}, block, val_fraction)
    mask = embedded_coding_mask()
    train_starts = class_starts(mask, regions["train"], length)
    val_starts = class_starts(mask, regions["val"], length)
    per_class = min(val_per_class, *(len(s) for s in val_starts))
    picked = [s[np.linspace(0, len(s) - 1, per_class).round().astype(int)] for s in val_starts]
    val_seqs, val_labels = [], []
    for label, starts in enumerate(picked):
        for start in starts:
            val_seqs.append(torch.from_numpy(genome.fetch(contig, int(start), int(start) + length).astype(np.int64)))
            val_labels.append(label)
    train = SampledLabelledWindows(genome, contig, list(train_starts), length, train_size, seed=seed, rc_prob=rc_prob)
    val = LabelledSequences(val_seqs, val_labels, classes=["intergenic", "coding"])
    info = {"regions": regions, "train_starts": train_starts, "val_starts": picked, "length": length}
    return train, val, info


# ------------------------------------------------------------------ GenomicBenchmarks


CROPS = ("center", "start")
# the official protocol holds out this fraction of train/ as validation (caduceus src/dataloaders/genomics.py,
# GenomicBenchmark.setup: random_split(..., lengths=[0.1, 0.9], generator=manual_seed(train_val_split_seed)))
HOLD_OUT_FRACTION = 0.1


def genomic_benchmark(root: str | Path, rc_prob: float = 0.5, max_len: int | None = None,
                      crop: str = "center") -> tuple[Dataset, Dataset]:
    """A GenomicBenchmarks dataset folder (e.g. ~/.genomic_benchmarks/human_nontata_promoters) with
    train/<class>/*.txt and test/<class>/*.txt; classes are numbered in sorted order; sequences longer
    than `max_len` are cropped: at the centre, or to their first `max_len` bases (`crop="start"`, what the
    official tokenizer's right-side truncation keeps)."""
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}: use {' or '.join(CROPS)}")
    root = Path(root)
    splits = []
    for split, prob in (("train", rc_prob), ("test", 0.0)):
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"task.data.root={root} has no {split}/ folder (GenomicBenchmarks layout: "
                                    f"{split}/<class>/<id>.txt)")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        sequences, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((folder / name).glob("*.txt")):
                tokens = torch.from_numpy(encode(path.read_text().strip()).astype(np.int64))
                if max_len is not None and len(tokens) > max_len:
                    cut = (len(tokens) - max_len) // 2 if crop == "center" else 0
                    tokens = tokens[cut:cut + max_len]
                sequences.append(tokens)
                labels.append(label)
        splits.append(LabelledSequences(sequences, labels, prob, classes))
    return splits[0], splits[1]


def hold_out_indices(size: int, seed: int, fraction: float = HOLD_OUT_FRACTION) -> tuple[list[int], list[int]]:
    """(train, validation) indices of `size` training sequences: `fraction` held out by torch's `random_split`
    from a generator seeded with `seed`, the official split (validation first, as there)."""
    from torch.utils.data import random_split

    val_part, train_part = random_split(range(size), [fraction, 1 - fraction],
                                        generator=torch.Generator().manual_seed(seed))
    return list(train_part.indices), list(val_part.indices)


def hold_out(train: LabelledSequences, seed: int, fraction: float = HOLD_OUT_FRACTION
             ) -> tuple[LabelledSequences, LabelledSequences]:
    """(train, validation) parts of a training set by `hold_out_indices`; the validation part is never
    reverse complemented."""
    train_indices, val_indices = hold_out_indices(len(train), seed, fraction)

    def subset(indices, rc_prob):
        return LabelledSequences([train.sequences[i] for i in indices], [train.labels[i] for i in indices],
                                 rc_prob, train.classes)

    return subset(train_indices, train.rc_prob), subset(val_indices, 0.0)


class EvalSplits(Dataset):
    """Several evaluation sets read as one, each item tagged with `split` (its set's position), so one pass
    of the trainer's evaluation scores the validation and the test set apart."""

    def __init__(self, datasets: list[Dataset]):
        self.datasets = datasets
        self.offsets = np.cumsum([0] + [len(d) for d in datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        split = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return {**self.datasets[split][i - int(self.offsets[split])], "split": torch.tensor(split)}


def pad_collate(items: list[dict]) -> dict:
    """Stack a batch, right-padding token sequences of unequal length with PAD (targets with -100)."""
    out = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if values[0].ndim == 0:
            out[key] = torch.stack(values)
        else:
            fill = PAD if key == "tokens" else -100
            out[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=fill)
    return out
