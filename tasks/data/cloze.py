"""A zero-shot cloze over text the model never trained on, as an lm-evaluation-harness task: the accuracy a CPU
LLaMA run can show, RMSNorm against DyT, with nothing to download.

The text is the run's validation text (`TextCorpus.held_out_texts`: for the embedded default, the last 5% of
the token stream of gensim's Wikipedia dump, which the trainer validates on and never trains on). Each item is
one held-out sentence: the context is the sentence before it in its paragraph and the sentence's words but its
last `CONTINUATION_WORDS`; the choices are those last words and the last words of `DISTRACTORS` other held-out
sentences from other paragraphs, in a seeded random order. Every choice has the same number of words, so the
harness's `acc` (sum of log-likelihoods) and `acc_norm` (per byte) are both fair; chance is 1 / (DISTRACTORS + 1).

Sentences are kept only when they read as prose: `MIN_WORDS`–`MAX_WORDS` words, a capital first and a full stop
last, no markup left over (headings, tables, double spaces where a template was removed); a sentence that also
occurs in the training text is dropped. The task is a jsonl file and a YAML file in the harness's custom-task
format (docs/task_guide.md of EleutherAI/lm-evaluation-harness), cached under the corpus's cache folder keyed by
what made it, so the RMSNorm and DyT runs of one configuration are scored on the same items.
"""
from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .cache import cache_lock
from .text import TextCorpus, _key, tokenizer_id

log = logging.getLogger(__name__)

TASK_NAME = "dyt_heldout_cloze"
CLOZE_VERSION = 1          # bump when the items change for the same text
CONTINUATION_WORDS = 5     # the words to complete: the sentence's last five
DISTRACTORS = 3            # wrong endings per item
CHANCE = 1 / (DISTRACTORS + 1)
MIN_WORDS, MAX_WORDS = 10, 40
MAX_ITEMS = 1000           # a few minutes on one CPU core for the CPU model; ±1.4 points of standard error at 25%
SEED = 0                   # the items are a fixed benchmark: the same for every run of a configuration
# checking the held-out sentences against the training text reads at most this much of it (the embedded
# training text is 2.9 M characters; a corpus larger than this is checked on its first part only, and says so)
MAX_TRAINING_CHARS = 200_000_000

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MARKUP = re.compile(r"[|{}\[\]<>=*#]|\s{2}")


def sentences(document: str) -> Iterator[list[str]]:
    """The sentences of each paragraph (one line of plain text) of a document, as lists per paragraph."""
    for line in document.split("\n"):
        line = line.strip()
        if line and not line.startswith("="):
            yield _SENTENCE_END.split(line)


def is_prose(sentence: str) -> bool:
    words = sentence.split(" ")
    return (MIN_WORDS <= len(words) <= MAX_WORDS and sentence[0].isupper() and sentence.endswith(".")
            and not _MARKUP.search(sentence))


def cloze_items(held_out: Iterable[str], training: Iterable[str] | None, *, max_items: int = MAX_ITEMS,
                seed: int = SEED) -> list[dict]:
    """Items {context, choices, label, paragraph} from the held-out documents; sentences found in the training
    documents (as sentences of theirs) are left out. Deterministic in its inputs and `seed`."""
    candidates = []  # (paragraph number, previous sentence, sentence)
    paragraph = 0
    for document in held_out:
        for paragraph_sentences in sentences(document):
            paragraph += 1
            for i, sentence in enumerate(paragraph_sentences):
                if is_prose(sentence):
                    candidates.append((paragraph, paragraph_sentences[i - 1] if i else "", sentence))
        if len(candidates) >= 2 * max_items:  # enough to pick items and distractors from; a corpus can be huge
            break
    if training is not None:
        seen, read = set(), 0
        for document in training:
            for paragraph_sentences in sentences(document):
                seen.update(paragraph_sentences)
            read += len(document)
            if read >= MAX_TRAINING_CHARS:
                log.warning("the cloze's sentences were checked against the first %d characters of the training "
                            "text only", read)
                break
        candidates = [c for c in candidates if c[2] not in seen]
    rng = random.Random(seed)
    ending = [" ".join(c[2].split(" ")[-CONTINUATION_WORDS:]) for c in candidates]
    items = []
    for index, (paragraph, previous, sentence) in enumerate(candidates[:max_items]):
        others = [j for j in range(len(candidates)) if candidates[j][0] != paragraph and ending[j] != ending[index]]
        if len(set(ending[j] for j in others)) < DISTRACTORS:
            continue
        distractors: list[str] = []
        for j in rng.sample(others, len(others)):
            if ending[j] not in distractors:
                distractors.append(ending[j])
            if len(distractors) == DISTRACTORS:
                break
        label = rng.randrange(DISTRACTORS + 1)
        choices = distractors[:label] + [ending[index]] + distractors[label:]
        words = sentence.split(" ")
        context = " ".join(([previous] if previous else []) + words[:-CONTINUATION_WORDS])
        items.append({"context": context, "choices": choices, "label": label, "paragraph": paragraph})
    return items


def task_yaml(data_file: Path, datasets_cache: Path) -> str:
    """The harness's custom-task YAML for the items in `data_file` (a jsonl file read by datasets' json
    builder): multiple choice, the context then a space then each choice, accuracy and normalised accuracy."""
    config = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(datasets_cache)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": CLOZE_VERSION, "chance": CHANCE},
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML: no quoting rules to get wrong


def cloze_task(corpus: TextCorpus) -> Path:
    """The folder holding the cloze task (its YAML and jsonl) for this corpus and tokenizer (which decides where
    the validation text starts), made on first use and cached; made on the main process first."""
    from accelerate import PartialState

    cfg = corpus.cfg
    split = (cfg.streaming and not corpus.embedded, cfg.val_documents if cfg.streaming else cfg.val_fraction)
    key = _key("cloze", CLOZE_VERSION, CONTINUATION_WORDS, DISTRACTORS, MIN_WORDS, MAX_WORDS, MAX_ITEMS, SEED,
               corpus.source_id, tokenizer_id(corpus.tokenizer), split)
    folder = corpus.cache / "lm_eval" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with PartialState().main_process_first(), cache_lock(folder):
        if not (folder / "task.yaml").exists():
            held_out, training = corpus.held_out_texts()
            items = cloze_items(held_out, training)
            if not items:
                raise ValueError("the validation text holds no sentence to make a cloze of (sentences of "
                                 f"{MIN_WORDS}–{MAX_WORDS} words ending in a full stop); raise task.data.val_fraction")
            folder.mkdir(exist_ok=True)
            data = folder / "items.jsonl"
            data.write_text("".join(json.dumps(item) + "\n" for item in items))
            tmp = folder / "task.yaml.tmp"
            tmp.write_text(task_yaml(data, folder / "datasets"))
            tmp.replace(folder / "task.yaml")  # the marker that the folder is whole
            log.info("cloze task: %d items from the held-out text → %s", len(items), folder)
    return folder
