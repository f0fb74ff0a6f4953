"""Text for language modelling, as token windows.

Embedded default: the English Wikipedia sample in gensim's test data (a shortened `enwiki` dump, ~100
articles, 3.1 MB of plain text once gensim's wiki helpers strip the markup). Real data: local text / jsonl /
parquet / arrow files (or a folder of them, compressed or not) through `datasets`. A byte-level BPE
tokenizer is trained on the text at first use unless a tokenizer folder is given; text is tokenized once
into a memory-mapped token file (or, streamed, on the fly) and served as fixed-length windows.
Everything derived is cached under a folder keyed by what it was made from, so nothing is made twice.
Files `datasets` cannot read stop the run before training with one line: for json, the file and line that is not a
JSON object (`unreadable_documents`); a malformed line is an error, not skipped, as every other line of the file
may be shifted or cut too (a concatenation gone wrong, a file still being written).
"""
from __future__ import annotations

import bz2
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Iterator
from functools import cached_property
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from dyt.train.config import ConfigError

from .cache import cache_lock

log = logging.getLogger(__name__)
EMBEDDED_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
END_OF_TEXT = "<|endoftext|>"
# file suffix → datasets builder; compressed files (.gz, .zst, …) are read through fsspec
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}
COMPRESSIONS = {".gz", ".zst", ".bz2", ".xz"}
DATASETS_METADATA = {"dataset_info.json", "state.json", "dataset_dict.json"}  # beside save_to_disk's .arrow files


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- sources of documents


def wikipedia_articles() -> list[str]:
    """The articles of gensim's shortened English Wikipedia dump as plain text (redirect pages dropped)."""
    import gensim
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    # the path gensim.test.utils.datapath gives, without importing that module (it builds demo corpora)
    with bz2.open(Path(gensim.__file__).parent / "test" / "test_data" / EMBEDDED_DUMP) as dump:
        pages = [filter_wiki(text) for _, text, _ in extract_pages(dump, filter_namespaces=("0",))]
    articles = []
    for page in pages:
        if page.lstrip().upper().startswith("#REDIRECT"):
            continue
        page = re.sub(r"'{2,}", "", page)  # bold and italic marks, which filter_wiki leaves in
        articles.append(re.sub(r"\n\s*\n", "\n\n", page).strip())  # runs of blank lines left by removed markup
    return articles


def wikipedia_source_id() -> str:
    import gensim

    return f"gensim {gensim.__version__} {EMBEDDED_DUMP} (tidy v1)"


def data_files(path: str | Path) -> tuple[str, list[str]]:
    """(datasets builder, files) for a file or a folder of files of one format."""
    path = Path(path).expanduser()
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name not in DATASETS_METADATA)

    def kind(file: Path) -> str | None:
        suffixes = file.suffixes[-2:] if file.suffix in COMPRESSIONS else file.suffixes[-1:]
        return BUILDERS.get(suffixes[0] if suffixes else "")

    kinds = {kind(f) for f in files} - {None}
    if len(kinds) != 1:
        found = ", ".join(sorted(kinds)) or "none"
        raise ValueError(f"task.data.path={path} must hold files of one format ({', '.join(BUILDERS)}; "
                         f"optionally compressed); found: {found}")
    builder = kinds.pop()
    return builder, [str(f) for f in files if kind(f) == builder]


def local_documents(path: str | Path, *, streaming: bool, cache_dir: Path):
    """A `datasets` Dataset (or IterableDataset when streaming) of the local files. Plain-text files give
    one document per paragraph, in the column `text`."""
    from datasets import load_dataset

    from datasets.exceptions import DatasetGenerationError

    builder, files = data_files(path)
    options = {"sample_by": "paragraph"} if builder == "text" else {}
    try:
        return load_dataset(builder, data_files=files, split="train", streaming=streaming,
                            cache_dir=str(cache_dir / "datasets"), **options)
    except DatasetGenerationError as err:  # a long traceback whose last line names neither file nor line
        raise unreadable_documents(path, builder, files, err) from None


def unreadable_documents(path, builder: str, files: list[str], err: Exception) -> ConfigError:
    """The one line for files `datasets` could not read: for json, the first file and line that is not a JSON
    object (found by reading the files again, only on failure); otherwise datasets' own reason."""
    if builder == "json":
        bad = first_bad_json_line(files)
        if bad:
            file, number, reason = bad
            return ConfigError(f"task.data.path={path}: {file} line {number} is not a JSON object ({reason}); fix or "
                               f"remove that line")
    cause = err.__cause__ or err
    reason = " ".join(str(cause).split()[:40]) or type(cause).__name__
    return ConfigError(f"task.data.path={path}: datasets cannot read its {builder} files ({reason})")


def first_bad_json_line(files: list[str]) -> tuple[str, int, str] | None:
    """(file, line number, why) of the first line of JSON Lines `files` (compressed or not) that is not a JSON
    object; None when every line is one, or when a .json file is one JSON document (not JSON Lines) that parses."""
    import fsspec

    for file in files:
        with fsspec.open(file, "rb", compression="infer") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line.rstrip(b"\r\n"))  # the line break is no part of the row
                except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
                    why = (f"{err.msg}, column {err.colno}" if isinstance(err, json.JSONDecodeError)
                           else f"not UTF-8: {err.reason}")
                else:
                    if isinstance(row, dict):
                        continue
                    why = f"a JSON {type(row).__name__}, not an object"
                if number == 1 and ".json" in Path(file).suffixes[-2:] and ".jsonl" not in Path(file).suffixes:
                    document = _json_document_error(file)  # a whole-file JSON document, not JSON Lines
                    if document is None:
                        break
                    return file, *document
                return file, number, why
    return None


def _json_document_error(file: str) -> tuple[int, str] | None:
    """(line, why) where a .json file stops being one JSON document; None when it is one."""
    import fsspec

    with fsspec.open(file, "rb", compression="infer") as handle:
        try:
            json.loads(handle.read())
        except json.JSONDecodeError as err:
            return err.lineno, f"{err.msg}, column {err.colno}"
        except ValueError as err:
            return 1, f"not UTF-8: {err}"
    return None


def local_source_id(path: str | Path, text_field: str) -> str:
    """Identifies the files by name, size and modification time: a changed file makes a new token file."""
    builder, files = data_files(path)
    stats = [(f, Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in files]
    return _key(builder, text_field, stats)


def text_batches(documents, text_field: str, batch_size: int = 1000) -> Iterator[list[str]]:
    """Lists of texts from a list of strings, a datasets Dataset or a datasets IterableDataset."""
    if isinstance(documents, list):
        for start in range(0, len(documents), batch_size):
            yield documents[start:start + batch_size]
        return
    for batch in documents.iter(batch_size=batch_size):
        yield [text for text in batch[text_field] if text]


# ---------------------------------------------------------------- tokenizer


def load_tokenizer(path: str | Path):
    """A fast tokenizer from a local folder (a LLaMA tokenizer, or one this module trained)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(path).expanduser()), local_files_only=True)
    if end_of_text_id(tokenizer) is None:
        raise ValueError(f"task.data.tokenizer_path={path} has neither an eos nor a sep token to separate "
                         "documents; give a tokenizer with an eos token")
    return tokenizer


def end_of_text_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def trained_tokenizer(texts: Iterable[str], vocab_size: int, folder: Path):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `texts` and saved as a transformers
    tokenizer folder; loaded from there when it already exists. Documents end with `<|endoftext|>`."""
    with cache_lock(folder):  # sweep points started together share the cache
        if not (folder / "tokenizer.json").exists():
            log.info("training a byte-level BPE tokenizer (vocabulary %d) on the text: first use of this text and "
                     "size, cached in %s", vocab_size, folder)
            _train_tokenizer(texts, vocab_size, folder)
    return load_tokenizer(folder)


def _train_tokenizer(texts: Iterable[str], vocab_size: int, folder: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    # tokenizers draws its own progress bars (reading the text, counting pairs, merging) on a terminal
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT])
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bpe.save(str(tmp / "tokenizer.json"))
    wrapped = PreTrainedTokenizerFast(tokenizer_file=str(tmp / "tokenizer.json"), eos_token=END_OF_TEXT)
    wrapped.save_pretrained(str(tmp))  # adds tokenizer_config.json: AutoTokenizer then loads the folder
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # a killed run never leaves a half-written tokenizer behind


def tokenizer_id(tokenizer) -> str:
    return _key(tokenizer.backend_tokenizer.to_str())


# ---------------------------------------------------------------- token files and windows


def token_file(batches: Iterable[list[str]], tokenizer, path: Path) -> np.memmap:
    """Tokenize every document once into `path` (documents joined by the end-of-text token) and map it.
    uint16 while the vocabulary fits, else uint32; the dtype is the file's suffix."""
    with cache_lock(path):
        if not path.exists():
            from tqdm.auto import tqdm

            log.info("tokenizing the text once into %s (first use of this text and tokenizer)", path)
            eot = end_of_text_id(tokenizer)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as out:
                # a bar once it takes more than a few seconds, on a terminal
                for texts in tqdm(batches, desc="tokenizing", unit="batch", delay=3, disable=None):
                    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                        np.asarray(ids + [eot], dtype=path.suffix[1:]).tofile(out)
            tmp.replace(path)
    return np.memmap(path, dtype=path.suffix[1:], mode="r")


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


class TokenWindows(Dataset):
    """Window i of `tokens[start:stop]`: seq_len + 1 tokens from start + i·seq_len (inputs are the first
    seq_len, targets the last seq_len), as int64."""

    def __init__(self, tokens: np.ndarray, seq_len: int, start: int = 0, stop: int | None = None):
        self.tokens, self.seq_len, self.start = tokens, seq_len, start
        stop = len(tokens) if stop is None else stop
        self.count = max(0, (stop - start - 1) // seq_len)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(index)
        first = self.start + index * self.seq_len
        return torch.from_numpy(self.tokens[first:first + self.seq_len + 1].astype(np.int64))


def validation_start(length: int, val_fraction: float) -> int:
    """Where a token stream of `length` tokens starts validating: the first (1 − val_fraction) train."""
    return int(length * (1 - val_fraction))


def split_windows(tokens: np.ndarray, seq_len: int, val_fraction: float) -> tuple[TokenWindows, TokenWindows]:
    """Train on the first (1 − val_fraction) of the token stream, validate on the rest: deterministic."""
    boundary = validation_start(len(tokens), val_fraction)
    train, val = TokenWindows(tokens, seq_len, 0, boundary), TokenWindows(tokens, seq_len, boundary)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{len(tokens)} tokens give {len(train)} train and {len(val)} validation windows of "
                         f"{seq_len}; lower task.data.seq_len or change task.data.val_fraction")
    return train, val


def tokens_of(documents, text_field: str, tokenizer) -> np.ndarray:
    """A small set of documents tokenized in memory (the held-out start of a stream)."""
    eot = end_of_text_id(tokenizer)
    ids = [i for texts in text_batches(documents, text_field)
           for doc in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in doc + [eot]]
    return np.asarray(ids, dtype=token_dtype(len(tokenizer)))


def held_out_documents(stream, count: int) -> tuple[list, dict[int, int]]:
    """The stream's first `count` documents (validation) and, per shard (file), how many of them it holds:
    the training readers start each shard after its held-out documents."""
    held_out, skip = [], {}
    for shard in range(stream.num_shards):
        if len(held_out) >= count:
            break
        taken = list(islice(stream.shard(stream.num_shards, shard), count - len(held_out)))
        held_out += taken
        skip[shard] = len(taken)
    return held_out, skip


class StreamedWindows(IterableDataset):
    """Windows of seq_len + 1 tokens cut from a `datasets` stream tokenized on the fly, for corpora too large to
    tokenize up front, with a position that a checkpoint saves and a resumed run restores without re-reading.

    Every process × DataLoader worker is one reader, g of G. With at least G shards (files), reader g reads the
    shards s ≡ g (mod G), disjoint from every other reader's, in an order reshuffled every epoch; with fewer,
    every reader walks every shard and tokenizes only its own documents (every G-th). Documents are shuffled in
    blocks of `shuffle_buffer` by a permutation drawn from (seed, epoch, shard, block), so the position is a few
    integers plus the tokens not yet cut into a window (`state_dict`). Epochs follow one another: the stream
    never ends."""

    TOKENIZE_BATCH = 64

    def __init__(self, stream, text_field: str, tokenizer, seq_len: int, *, seed: int, shuffle_buffer: int,
                 rank: int, world: int, skip: dict[int, int] | None = None):
        self.stream, self.text_field, self.tokenizer, self.seq_len = stream, text_field, tokenizer, seq_len
        self.seed, self.block, self.rank, self.world = seed, max(1, shuffle_buffer), rank, world
        self.skip = skip or {}
        self.epoch = 0
        self.documents_read = 0  # documents tokenized by this reader (the tests count them)
        self._position: dict | None = None  # restored by load_state_dict
        self._live: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start from the beginning of this epoch."""
        self.epoch, self._position = epoch, None

    # ---------------------------------------------------------------- position

    def state_dict(self) -> dict:
        """Where this reader stands after the last window it yielded."""
        live = self._live
        if live is None:
            return {"position": self._position, "epoch": self.epoch}
        tokens, start = live["tokens"], live["start"]
        return {"position": {**{k: v for k, v in live.items() if k not in ("tokens", "start")},
                             "carry": np.asarray(tokens[start:], dtype=np.int64)}, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self._position, self.epoch = state["position"], state["epoch"]

    # ---------------------------------------------------------------- reading

    def _reader(self) -> tuple[int, int]:
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        return self.rank * workers + worker_id, self.world * workers

    def _shards(self, reader: int, readers: int, epoch: int) -> tuple[list[int], int, int]:
        """(this reader's shards in this epoch's order, document stride, document offset)."""
        count = self.stream.num_shards
        if count >= readers:
            shards, stride, offset = [s for s in range(count) if s % readers == reader], 1, 0
        else:
            shards, stride, offset = list(range(count)), readers, reader
        order = torch.randperm(len(shards), generator=torch.Generator().manual_seed(_seed(self.seed, epoch, reader)))
        return [shards[i] for i in order.tolist()], stride, offset

    def _blocks(self, shard: int, stride: int, offset: int, first_block: int):
        """This reader's documents of one shard, in blocks of `shuffle_buffer`, from block `first_block`; the
        documents before it are skipped by the datasets reader without being tokenized."""
        documents = self.stream.shard(self.stream.num_shards, shard)
        start = self.skip.get(shard, 0) + first_block * self.block * stride
        # `.iter`, not `__iter__`: in a DataLoader worker the latter would split the shard among workers again
        texts = (text for batch in documents.skip(start).iter(batch_size=256) for text in batch[self.text_field] if text)
        mine = islice(texts, offset, None, stride)
        while True:
            block = list(islice(mine, self.block))
            if not block:
                return
            yield block

    def __iter__(self) -> Iterator[torch.Tensor]:
        reader, readers = self._reader()
        eot, window = end_of_text_id(self.tokenizer), self.seq_len + 1
        position = self._position or {"epoch": self.epoch, "slot": 0, "block": 0, "done": 0,
                                      "carry": np.zeros(0, dtype=np.int64)}
        live = {"epoch": position["epoch"], "slot": position["slot"], "block": position["block"],
                "done": position["done"], "tokens": position["carry"].tolist(), "start": 0}
        self._live = live
        while True:
            shards, stride, offset = self._shards(reader, readers, live["epoch"])
            while live["slot"] < len(shards):
                shard = shards[live["slot"]]
                for block in self._blocks(shard, stride, offset, live["block"]):
                    generator = torch.Generator().manual_seed(_seed(self.seed, live["epoch"], shard, live["block"]))
                    order = torch.randperm(len(block), generator=generator).tolist()
                    while live["done"] < len(order):
                        batch = [block[i] for i in order[live["done"]:live["done"] + self.TOKENIZE_BATCH]]
                        for ids in self.tokenizer(batch, add_special_tokens=False)["input_ids"]:
                            live["tokens"] += ids + [eot]
                        self.documents_read += len(batch)
                        live["done"] += len(batch)
                        while len(live["tokens"]) - live["start"] >= window:
                            first = live["start"]
                            out = torch.tensor(live["tokens"][first:first + window])
                            live["start"] = first + self.seq_len
                            if live["start"] > 65536:  # drop the tokens already cut, now and then
                                del live["tokens"][:live["start"]]
                                live["start"] = 0
                            yield out
                    live["block"], live["done"] = live["block"] + 1, 0
                live["slot"], live["block"], live["done"] = live["slot"] + 1, 0, 0
            live["epoch"], live["slot"] = live["epoch"] + 1, 0
            self.epoch = live["epoch"]


def _seed(*parts: int) -> int:
    return int(_key(*parts), 16) >> 1


class TextCorpus:
    """The text a task trains on, from its `data` config: the documents, the tokenizer (loaded or trained
    and cached) and the train / validation windows. Derived files are made on the main process first, so
    the other processes of a distributed run find them made."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.cache = Path(cfg.cache_dir).expanduser()

    @property
    def embedded(self) -> bool:
        return not self.cfg.path

    @property
    def text_field(self) -> str:
        plain_text = self.embedded or data_files(self.cfg.path)[0] == "text"  # datasets' text builder: `text`
        return "text" if plain_text else self.cfg.text_field

    @cached_property
    def documents(self):
        if self.embedded:
            return wikipedia_articles()
        return local_documents(self.cfg.path, streaming=self.cfg.streaming, cache_dir=self.cache)

    @cached_property
    def source_id(self) -> str:
        return wikipedia_source_id() if self.embedded else local_source_id(self.cfg.path, self.cfg.text_field)

    # generators, so nothing is read when the cache already holds what the text would make
    def _batches(self) -> Iterator[list[str]]:
        if self.embedded:
            yield from text_batches(self.documents, self.text_field)
            return
        from datasets.exceptions import DatasetGenerationError

        try:
            yield from text_batches(self.documents, self.text_field)
        # what the files hold but datasets only finds when it reads the rows (a json file's bytes that are not
        # UTF-8 load, and fail as text), or when it first reads them at all (streaming)
        except (ValueError, DatasetGenerationError) as err:
            builder, files = data_files(self.cfg.path)
            raise unreadable_documents(self.cfg.path, builder, files, err) from None

    def _texts(self, count: int | None = None) -> Iterator[str]:
        yield from islice((text for batch in self._batches() for text in batch), count)

    @cached_property
    def tokenizer(self):
        from accelerate import PartialState

        if self.cfg.tokenizer_path:
            return load_tokenizer(self.cfg.tokenizer_path)
        cfg = self.cfg
        folder = self.cache / "tokenizers" / _key(self.source_id, cfg.vocab_size, cfg.tokenizer_documents)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with PartialState().main_process_first():
            return trained_tokenizer(self._texts(cfg.tokenizer_documents), cfg.vocab_size, folder)

    def windows(self, seq_len: int, *, seed: int, rank: int = 0, world: int = 1) -> tuple[Dataset, Dataset]:
        """(train, val): a token file's windows split by position, or, streaming, the stream after its
        first `val_documents` documents and windows of those documents."""
        cfg, tokenizer = self.cfg, self.tokenizer
        if cfg.streaming and not self.embedded:
            held_out, skip = held_out_documents(self.documents, cfg.val_documents)
            val = TokenWindows(tokens_of([d[self.text_field] for d in held_out if d[self.text_field]],
                                         self.text_field, tokenizer), seq_len)
            train = StreamedWindows(self.documents, self.text_field, tokenizer, seq_len, seed=seed,
                                    shuffle_buffer=cfg.shuffle_buffer, rank=rank, world=world, skip=skip)
            return train, val
        return split_windows(self.token_file(), seq_len, cfg.val_fraction)

    def token_file(self) -> np.memmap:
        """Every document tokenized once, joined by the end-of-text token (made on the main process first)."""
        from accelerate import PartialState

        path = self.token_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with PartialState().main_process_first():
            return token_file(self._batches(), self.tokenizer, path)

    @property
    def token_path(self) -> Path:
        """Where `token_file` keeps the tokens: named by the corpus and the tokenizer, so either changing makes a
        new file."""
        tokenizer = self.tokenizer
        return self.cache / "tokens" / f"{_key(self.source_id, tokenizer_id(tokenizer))}.{token_dtype(len(tokenizer))}"

    def describe(self) -> dict:
        """The corpus as read: its files (format, count), documents and tokens (a streamed corpus: its files
        alone, nothing is counted ahead), how it is split, and the tokenizer with its vocabulary."""
        cfg, tokenizer = self.cfg, self.tokenizer
        found = {"source": f"embedded English Wikipedia ({EMBEDDED_DUMP}, gensim)" if self.embedded else str(cfg.path)}
        if not self.embedded:
            builder, files = data_files(cfg.path)
            found.update(format=builder, files=len(files))
        if cfg.streaming and not self.embedded:
            found.update(documents="streamed", split=f"the stream's first {cfg.val_documents} documents validate")
        else:
            tokens = np.memmap(self.token_path, dtype=self.token_path.suffix[1:], mode="r")
            # the embedded articles are counted by their end-of-text tokens (parsing the dump again costs seconds)
            found["documents"] = (int((tokens == end_of_text_id(tokenizer)).sum()) if self.embedded
                                  else len(self.documents))
            found.update(tokens=len(tokens), split=f"the last {cfg.val_fraction:.0%} of the tokens validate")
        found.update(tokenizer=cfg.tokenizer_path or "byte-level BPE trained on the corpus (cached)",
                     vocabulary=len(tokenizer))
        return found

    def held_out_texts(self) -> tuple[Iterator[str], Iterator[str] | None]:
        """(the validation text, the training text) as documents of plain text, decoded lazily one document at a
        time, for evaluations built from text the model never trained on (tasks/data/cloze.py). The validation
        text is what `windows` validates on: with a token file, the documents after the split (the one the split
        cuts, from its first line break after the split); streaming, the held-out first documents, and then no
        training text (None: the stream has no end)."""
        cfg = self.cfg
        if cfg.streaming and not self.embedded:
            held_out, _ = held_out_documents(self.documents, cfg.val_documents)
            return iter([d[self.text_field] for d in held_out if d[self.text_field]]), None
        tokens, tokenizer = self.token_file(), self.tokenizer
        eot, boundary = end_of_text_id(tokenizer), validation_start(len(tokens), cfg.val_fraction)

        def documents(start: int, stop: int, chunk: int = 1 << 22) -> Iterator[tuple[int, str]]:
            """(first token, text) of the documents in tokens[start:stop], the last one cut at `stop`."""
            first = start
            for offset in range(start, stop, chunk):
                part = np.asarray(tokens[offset:min(offset + chunk, stop)])
                for end in offset + np.flatnonzero(part == eot):
                    yield first, tokenizer.decode(tokens[first:end].tolist())
                    first = end + 1
            if first < stop:
                yield first, tokenizer.decode(tokens[first:stop].tolist())

        def validation() -> Iterator[str]:
            cut = boundary > 0 and tokens[boundary - 1] != eot
            for first, text in documents(boundary, len(tokens)):
                if first == boundary and cut:
                    text = text.partition("\n")[2]
                if text.strip():
                    yield text

        return validation(), (text for _, text in documents(0, boundary))

