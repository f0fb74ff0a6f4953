"""Zero-shot accuracy with lm-evaluation-harness (scripts/eval_lm.py, task.eval.lm_eval_tasks): a tiny LLaMA run
scored by the harness on a local task in its format, the written json, summary and tracker row; the held-out
cloze; a missing dataset failing in one line before any model loads; local dataset copies; the paper's list."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, metrics, run_train, summary

pytest.importorskip("lm_eval")

TINY = ["task=llama", "norm=dyt", "task.size=debug", "task.data.vocab_size=320", "task.data.seq_len=32",
        "trainer.batch_size=8", "trainer.max_steps=4", "trainer.eval_every=4", "trainer.ckpt_every=4"]
SUBJECTS = ["the old miller", "a young sailor", "the village baker", "her quiet brother", "the travelling painter",
            "a tired soldier", "the river keeper", "his clever cousin"]
VERBS = ["carried", "painted", "remembered", "followed", "repaired", "visited", "described", "admired"]
OBJECTS = ["the broken wooden bridge", "a small green boat", "the tall stone tower", "an empty red cart",
           "the long winter road", "a bright silver lamp", "the narrow market street", "an old iron gate"]
PLACES = ["near the northern hills", "before the autumn rain", "after the evening bells", "beside the cold lake",
          "during the spring fair", "under the grey clouds"]


def story(rng: random.Random) -> str:
    """One paragraph of sentences of 12–13 words: prose enough for the cloze's filter."""
    return " ".join(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                    f"{rng.choice(PLACES)} again." for _ in range(rng.randint(3, 6)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stories")
    rng = random.Random(0)
    with open(folder / "stories.jsonl", "w") as out:
        for i in range(160):
            out.write(json.dumps({"text": story(rng)}) + "\n")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus):
    """A few steps of a debug-size DyT LLaMA on the stories, scored on the held-out cloze after its last step."""
    run_dir, cache = tmp_path_factory.mktemp("run") / "run", tmp_path_factory.mktemp("cache")
    run_train(run_dir, *TINY, f"task.data.path={corpus}", "task.data.val_fraction=0.2",
              "task.eval.lm_eval_tasks=[cloze]", "task.eval.lm_eval_limit=24", DYT_CACHE_DIR=str(cache))
    return run_dir, cache


def tiny_task(folder, labels: list[int]):
    """A multiple-choice task in the harness's YAML format over a local jsonl: each document's two choices are
    the same text, so the harness's argmax takes the first and the accuracy is the share of label 0, whatever
    the model."""
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps({"context": f"The old miller carried item {i}", "choices": ["again.", "again."],
                                        "label": label}) + "\n" for i, label in enumerate(labels)))
    (folder / "tiny.yaml").write_text(yaml.safe_dump({
        "task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "context",
        "doc_to_choice": "choices", "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}))
    return folder


def eval_lm(*args: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_lm", ROOT / "scripts" / "eval_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(a) for a in args])


def test_run_scored_by_the_harness_in_training_and_by_the_script(tiny_run, tmp_path):
    run_dir, cache = tiny_run
    final = summary(run_dir)["final"]
    # task.eval.lm_eval_tasks=[cloze]: the held-out cloze after the last step, in the run's metrics
    assert 0.0 <= final["val/lm_eval/cloze/mean_acc"] <= 1.0
    assert final["val/lm_eval/dyt_heldout_cloze/acc"] == final["val/lm_eval/cloze/mean_acc"]

    # the script, on the run's checkpoint, with a local task in the harness's format
    labels = [0, 0, 1, 0, 1, 0, 0, 0]
    record = eval_lm(run_dir, "--tasks", "tiny_mc", "--include-path", tiny_task(tmp_path, labels), "--batch-size", 4)
    expected = labels.count(0) / len(labels)
    written = json.loads((run_dir / "eval" / "lm_eval.json").read_text())["tiny_mc"]
    assert written["harness"]["results"]["tiny_mc"]["acc,none"] == pytest.approx(expected)
    assert written["harness"]["n-shot"]["tiny_mc"] == 0
    assert written["harness"]["n-samples"]["tiny_mc"]["effective"] == len(labels)
    assert written["checkpoint"] == "step_00000004" and written["step"] == 4
    run_summary = summary(run_dir)
    assert run_summary["lm_eval"]["tiny_mc"] == record and record["mean_acc"] == pytest.approx(expected)
    assert run_summary["final"] == final  # what training wrote stays
    row = metrics(run_dir)[-1]
    assert row["step"] == 4 and row["val/lm_eval/tiny_mc/mean_acc"] == pytest.approx(expected)

    # compare.py shows it beside the loss
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    compare.main([str(run_dir), "--out", str(tmp_path / "results"), "--name", "table"])
    table = (tmp_path / "results" / "table" / "table.md").read_text()
    assert "zero-shot cloze acc" in table and "zero-shot tiny_mc acc" in table
    assert f"{expected:.4g}" in table


def test_cloze_is_made_of_held_out_sentences(tiny_run):
    from omegaconf import OmegaConf

    from tasks.data import cloze
    from tasks.data.text import TextCorpus

    run_dir, cache = tiny_run
    cfg = OmegaConf.load(run_dir / "config.yaml")
    corpus = TextCorpus(cfg.task.data)
    held_out, training = corpus.held_out_texts()
    held_out, training = list(held_out), list(training)
    lines = (Path(cfg.task.data.path) / "stories.jsonl").read_text().splitlines()
    stories = [json.loads(line)["text"] for line in lines]
    # the training text is the stories before the split (the last one cut by it); the held-out text is the
    # stories after it (the cut one's tail would start at its next line: a story is one line)
    assert training[:-1] == stories[:len(training) - 1] and stories[len(training) - 1].startswith(training[-1])
    assert held_out == stories[len(training):] and len(held_out) >= 20

    items = cloze.cloze_items(held_out, training)
    trained = {s for text in training for paragraph in cloze.sentences(text) for s in paragraph}
    assert len(items) >= 20
    for item in items:
        assert len(item["choices"]) == cloze.DISTRACTORS + 1 == round(1 / cloze.CHANCE)
        assert len(set(item["choices"])) == len(item["choices"])
        assert {len(c.split(" ")) for c in item["choices"]} == {cloze.CONTINUATION_WORDS}
        sentence = item["context"].split(". ")[-1] + " " + item["choices"][item["label"]]
        assert sentence not in trained and any(sentence in text for text in held_out)
    assert cloze.cloze_items(held_out, training) == items  # deterministic
    # a sentence the model trained on is never asked
    assert cloze.cloze_items(held_out, [*training, *held_out]) == []
    # the task folder the run used: the harness's YAML beside the items, and the chance it states
    folder = next((cache / "lm_eval").glob("*/task.yaml")).parent
    assert json.loads((folder / "task.yaml").read_text())["metadata"]["chance"] == 0.25
    assert len((folder / "items.jsonl").read_text().splitlines()) == len(items)


def test_missing_dataset_fails_in_one_line_before_the_model(tiny_run, tmp_path, monkeypatch):
    run_dir, _ = tiny_run
    bare = tmp_path / "bare"  # config only: had the model come first, the missing checkpoint would be the error
    bare.mkdir()
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as raised:
        eval_lm(bare, "--tasks", "arc_easy", "--data-dir", empty)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("error: lm-eval task arc_easy: its dataset allenai/ai2_arc")
    assert str(empty / "allenai" / "ai2_arc") in message

    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    with pytest.raises(SystemExit) as raised:
        eval_lm(bare, "--tasks", "piqa")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("error: lm-eval task piqa: its dataset baber/piqa")
    assert "datasets_cache" in message

    with pytest.raises(SystemExit, match="error: lm-eval task no_such_task is not a task of lm-eval"):
        eval_lm(bare, "--tasks", "no_such_task")


def test_data_parallel_needs_the_runs_export(tiny_run, tmp_path, monkeypatch):
    """Under `accelerate launch` the harness loads the model itself, from RUN/export/hf of the same checkpoint."""
    run_dir, _ = tiny_run
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match=r"run `python scripts/export_checkpoint.py .* --checkpoint .*step_00000004` first"):
        eval_lm(run_dir, "--tasks", "tiny_mc", "--include-path", tiny_task(tmp_path, [0]))


def test_harness_task_reads_a_local_copy_of_its_dataset(tmp_path):
    """--data-dir DIR: the harness's arc_easy reads DIR/allenai/ai2_arc, a copy laid out as its hub repository."""
    import datasets

    from tasks.lm_eval import lm_eval_tasks

    repo = tmp_path / "data" / "allenai" / "ai2_arc"
    rows = [{"id": f"q{i}", "question": f"Which thing number {i} floats?", "answerKey": "B",
             "choices": {"text": ["a stone", "a cork"], "label": ["A", "B"]}} for i in range(3)]
    for split in ("train", "validation", "test"):
        (repo / "ARC-Easy").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(repo / "ARC-Easy" / f"{split}-00000-of-00001.parquet"))
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: ARC-Easy\n  data_files:\n" + "".join(
        f"  - split: {s}\n    path: ARC-Easy/{s}-*\n" for s in ("train", "validation", "test")) + "---\n")
    task = lm_eval_tasks(["arc_easy"], data_dir=str(tmp_path / "data"), work_dir=tmp_path / "work")["arc_easy"]
    assert [doc["question"] for doc in task.test_docs()] == [r["question"] for r in rows]


def test_paper15_is_the_openllama_selection():
    from tasks.lm_eval import PAPER15, lm_eval_names, task_manager

    # openlm-research/open_llama README.md, "Evaluation" table: anli_r1..r3, arc_challenge, arc_easy, boolq,
    # hellaswag, openbookqa, piqa, record, rte, truthfulqa_mc (mc1, mc2), wic, winogrande ("We removed the task
    # CB and WSC"); the DyT paper's Table 4 averages these 15 (its appendix; /work/shared/PAPER.md).
    assert PAPER15 == ("anli_r1", "anli_r2", "anli_r3", "arc_challenge", "arc_easy", "boolq", "hellaswag",
                       "openbookqa", "piqa", "record", "rte", "truthfulqa_mc1", "truthfulqa_mc2", "wic", "winogrande")
    assert lm_eval_names("paper15") == list(PAPER15)
    harness = task_manager((), True)
    assert [name for name in PAPER15 if name not in harness.all_tasks] == []
