"""task=llama: the paper's shapes on the meta device, one seed giving RMSNorm and DyT runs the same non-norm
weights, the √d embedding scale, local jsonl files (token file and stream), the α₀ grid, and a diverging
point that a sweep survives."""
from __future__ import annotations

import json
import math
import random
import resource
import shutil
from itertools import islice

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

import dyt.train  # noqa: F401 — registers the config schemas and resolvers
from dyt.convert import convert
from dyt.layers import DynamicTanh
from dyt.train.config import norm_spec
from tasks.llama import Llama, ScaledEmbedding
from tests.helpers import ROOT, metrics, run_train, summary

# a debug model, and a tokenizer small enough to train in a blink on the test's own text
TINY_TEXT = ["task.size=debug", "task.data.vocab_size=320", "task.data.seq_len=32", "trainer.batch_size=8"]


def config(*overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=["task=llama", *overrides], return_hydra_config=True)


def built(cfg, device: str = "cpu") -> tuple[Llama, torch.nn.Module]:
    """The model as dyt.train.run builds it: seed, native model, convert, adapt_to_norm."""
    task = Llama(cfg.task)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = task.build_model()
    convert(model, norm_spec(cfg.norm), roles=task.norm_roles, exclude=task.norm_exclude)
    task.adapt_to_norm(model, cfg.norm)
    return task, model


@pytest.fixture(scope="module")
def jsonl_folder(tmp_path_factory):
    """Three jsonl files of short made-up stories in a field named `content`."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    who = ["the cat", "a dog", "my neighbour", "the old king", "every child", "the baker"]
    does = ["sees", "likes", "follows", "paints", "remembers", "visits"]
    what = ["the river", "a small house", "the red door", "her brother", "the morning train", "a garden"]
    for part in range(3):
        with open(folder / f"part-{part}.jsonl", "w") as out:
            for i in range(40):
                story = " ".join(f"{rng.choice(who).capitalize()} {rng.choice(does)} {rng.choice(what)}."
                                 for _ in range(rng.randint(4, 12)))
                out.write(json.dumps({"id": i, "content": story}) + "\n")
    return folder


# ---------------------------------------------------------------- the paper's sizes, on the meta device


@pytest.mark.parametrize("size, width, depth, heads, kv_heads, billions", [
    ("7B", 4096, 32, 32, 32, 6.74), ("13B", 5120, 40, 40, 40, 13.02),
    ("34B", 8192, 48, 64, 8, 33.74), ("70B", 8192, 80, 64, 8, 68.98),
])
def test_paper_sizes_build_on_meta_without_memory(size, width, depth, heads, kv_heads, billions):
    task = Llama(config(f"task.size={size}").task)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = task.build_model()
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 2**20 < 1.0  # fp32 7B: 27 GB
    assert all(p.is_meta for p in model.parameters())
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == \
        (width, depth, heads, kv_heads, 32000)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(billions * 1e9, rel=0.01)
    # MFU's numerator: about 6 FLOPs per parameter per token at this scale
    assert task.flops_per_sample == pytest.approx(6 * billions * 1e9 * task.seq_len, rel=0.05)


def test_7b_converts_on_meta_with_the_papers_alpha_and_embedding_scale():
    cfg = config("task.size=7B", "norm=dyt", "norm.alpha_init=auto")
    _, model = built(cfg, "meta")
    assert all(p.is_meta for p in model.parameters())
    dyts = {name: m for name, m in model.named_modules() if isinstance(m, DynamicTanh)}
    assert len(dyts) == 65 and all(m.bias is None for m in dyts.values())  # RMSNorm → DyT without β
    by_role = {role: {m.alpha_init for n, m in dyts.items() if n.endswith(suffix)}
               for role, suffix in (("attn", "input_layernorm"), ("ffn", "post_attention_layernorm"), ("final", "model.norm"))}
    assert by_role == {"attn": {0.8}, "ffn": {0.2}, "final": {0.2}}  # α₀ = "auto": the paper's width-4096 row
    assert isinstance(model.get_input_embeddings(), ScaledEmbedding)
    native = sum(p.numel() for p in model.parameters()) - len(dyts) - 1  # less each α and the embedding scale
    assert native == pytest.approx(6.74e9, rel=0.01)


# ---------------------------------------------------------------- one seed, same weights; the embedding scale


def test_one_seed_gives_rmsnorm_and_dyt_the_same_other_weights(tmp_path, jsonl_folder):
    common = [f"task.data.cache_dir={tmp_path}", f"task.data.path={jsonl_folder}", "task.data.text_field=content",
              *TINY_TEXT]
    _, rms = built(config("norm=rmsnorm", *common))
    task, dyt_model = built(config("norm=dyt", *common))
    _, plain = built(config("norm=dyt", "task.model.embedding_scale=false", *common))
    _, derf = built(config("norm=derf", *common))

    rms_weights, dyt_weights = rms.state_dict(), dyt_model.state_dict()
    others = [k for k in rms_weights if "norm" not in k]
    assert others and all(torch.equal(rms_weights[k], dyt_weights[k]) for k in others)
    # the learnable scale after the embedding: √d for DyT, absent for RMSNorm and when switched off
    d = dyt_model.config.hidden_size
    embed = dyt_model.get_input_embeddings()
    assert embed.scale.requires_grad and embed.scale.item() == pytest.approx(math.sqrt(d))
    assert "model.embed_tokens.scale" not in rms_weights and "model.embed_tokens.scale" not in plain.state_dict()
    assert isinstance(derf.get_input_embeddings(), ScaledEmbedding)  # every DyT-like norm gets it
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(embed(ids), rms.get_input_embeddings()(ids) * math.sqrt(d))
    # adapt_to_norm draws nothing from the RNG, so what comes after it (data order, dropout) matches too
    model = task.build_model()
    state = torch.get_rng_state()
    task.adapt_to_norm(model, config("norm=dyt").norm)
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- local files, end to end


def test_jsonl_folder_trains_end_to_end(tmp_path, jsonl_folder):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    run_train(run_dir, "task=llama", "norm=dyt", *TINY_TEXT, f"task.data.path={jsonl_folder}",
              "task.data.text_field=content", "task.data.val_fraction=0.1", "trainer.max_steps=80",
              "trainer.log_every=20", "trainer.eval_every=80", "trainer.optim.lr=1e-2", "trainer.optim.warmup_steps=5",
              DYT_CACHE_DIR=str(cache))
    result = summary(run_dir)
    assert result["status"] == "completed" and result["steps"] == 80
    val_loss = result["final"]["val/loss"]
    assert val_loss < 0.35 * math.log(320)  # it learned the made-up stories, far below a uniform guess
    assert result["final"]["val/ppl"] == pytest.approx(math.exp(val_loss))
    logged = [m for m in metrics(run_dir) if "train/loss" in m]
    assert logged and all(m["tokens_per_s"] > 0 and "train/ppl" in m for m in logged)

    # the token file holds every document's `content`, in order, each ended by the end-of-text token
    from tasks.data.text import load_tokenizer

    tokenizer = load_tokenizer(next(p for p in (cache / "tokenizers").iterdir() if p.is_dir()))  # not the .lock
    token_file = next((cache / "tokens").glob("*.uint16"))
    stories = [json.loads(line)["content"] for f in sorted(jsonl_folder.iterdir()) for line in f.read_text().splitlines()]
    expected = [i for ids in tokenizer(stories, add_special_tokens=False)["input_ids"] for i in ids + [tokenizer.eos_token_id]]
    assert np.array_equal(np.memmap(token_file, dtype=np.uint16, mode="r"), expected)


def test_jsonl_folder_streams_with_a_local_tokenizer(tmp_path, jsonl_folder):
    cache = tmp_path / "cache"
    from tasks.data.text import TextCorpus

    # the tokenizer folder a first run trained is a tokenizer folder like any other (e.g. LLaMA 2's)
    tokenizer_dir = TextCorpus(config(f"task.data.cache_dir={cache}", f"task.data.path={jsonl_folder}",
                                      "task.data.text_field=content", *TINY_TEXT).task.data).tokenizer.name_or_path
    streamed = [f"task.data.path={jsonl_folder}", "task.data.text_field=content", "task.data.streaming=true",
                "task.data.val_documents=20", f"task.data.tokenizer_path={tokenizer_dir}"]

    # each process reads its own files (three files, two processes: one reads two); an epoch's order is a
    # function of (seed, epoch); the stream goes on into the next epoch by itself
    corpus = TextCorpus(config(*streamed, *TINY_TEXT, f"task.data.cache_dir={cache}").task.data)
    shares = [corpus.windows(32, seed=0, rank=r, world=2)[0] for r in (0, 1)]

    def windows(share, count=40):
        return [tuple(w.tolist()) for w in islice(share, count)]

    first, second = windows(shares[0]), windows(shares[1])
    assert len(first) == len(second) == 40 and not set(first) & set(second)
    assert windows(shares[0]) == first
    shares[0].set_epoch(1)
    assert windows(shares[0]) != first

    run_dir = tmp_path / "run"
    args = ["task=llama", "norm=dyt", *TINY_TEXT, *streamed, "trainer.max_steps=12", "trainer.log_every=1",
            "trainer.eval_every=12", "trainer.ckpt_every=6", "trainer.optim.lr=1e-2"]
    run_train(run_dir, *args, DYT_CACHE_DIR=str(tmp_path / "run-cache"))
    result = summary(run_dir)
    assert result["status"] == "completed" and result["steps"] == 12
    assert math.isfinite(result["final"]["val/loss"])
    assert not (tmp_path / "run-cache" / "tokens").exists()  # streamed: nothing tokenized up front

    # resumed from step 6, the stream goes on from its saved position: the same windows, the same losses
    losses = [r["train/loss"] for r in metrics(run_dir) if "train/loss" in r]
    shutil.rmtree(run_dir / "checkpoints" / "step_00000012")
    (run_dir / "summary.json").unlink()
    rerun = run_train(run_dir, *args, DYT_CACHE_DIR=str(tmp_path / "run-cache"))
    assert "resumed from" in rerun.stdout + rerun.stderr
    assert [r["train/loss"] for r in metrics(run_dir) if "train/loss" in r] == losses


class CountingTokenizer:
    """A tokenizer that remembers every text it was given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.texts += texts
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_resumed_stream_reads_no_document_twice_and_ranks_read_disjoint_files(tmp_path, jsonl_folder):
    """Each reader (process) takes whole files; a reader restored from its state_dict after N batches
    tokenizes exactly the documents an uninterrupted reader tokenizes after them, and none before."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from tasks.data.text import StreamedWindows, TextCorpus, held_out_documents

    corpus = TextCorpus(config(f"task.data.cache_dir={tmp_path}", f"task.data.path={jsonl_folder}",
                               "task.data.text_field=content", "task.data.streaming=true", *TINY_TEXT).task.data)
    documents = corpus.documents
    _, skip = held_out_documents(documents, 20)

    def reader(rank, world=2):
        tokenizer = CountingTokenizer(corpus.tokenizer)
        dataset = StreamedWindows(documents, "content", tokenizer, 32, seed=0, shuffle_buffer=16, rank=rank,
                                  world=world, skip=skip)
        return dataset, tokenizer, StatefulDataLoader(dataset, batch_size=4)

    _, whole_reads, whole = reader(0)
    batches = iter(whole)
    uninterrupted = [next(batches) for _ in range(30)]
    _, first_reads, first = reader(0)
    batches = iter(first)
    before = [next(batches) for _ in range(12)]
    state = first.state_dict()
    _, second_reads, second = reader(0)
    second.load_state_dict(state)
    batches = iter(second)
    after = [next(batches) for _ in range(18)]
    assert all(torch.equal(a, b) for a, b in zip(before + after, uninterrupted))
    assert first_reads.texts + second_reads.texts == whole_reads.texts  # nothing read twice, nothing skipped
    assert not set(first_reads.texts) & set(second_reads.texts)

    _, other_reads, other = reader(1)
    batches = iter(other)
    [next(batches) for _ in range(30)]
    assert other_reads.texts and not set(other_reads.texts) & set(whole_reads.texts)  # disjoint files


# ---------------------------------------------------------------- sweeps


def test_alpha_grid_is_attention_times_other_with_final_following_ffn():
    cfg = config("sweep=llama_alpha_grid")
    grid = cfg.hydra.sweeper.params["norm.alpha_init"]
    override = OverridesParser.create().parse_overrides([f"norm.alpha_init={grid}"])[0]
    points = list(override.sweep_iterator())
    attn, other = sorted({p["attn"] for p in points}), sorted({p["ffn"] for p in points})
    assert len(points) == len(attn) * len(other) >= 9
    assert {(p["attn"], p["ffn"]) for p in points} == {(a, o) for a in attn for o in other}
    assert all(p["final"] == p["ffn"] and set(p) == {"attn", "ffn", "final"} for p in points)


def test_diverging_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    """α₀ = 10⁴ with lr = 10³ blows up within two steps; the sweep's next point (lr = 10⁻³) still runs. On the
    embedded text, so the default data path is exercised too."""
    sweep_dir = tmp_path / "sweep"
    result = run_train(None, "-m", "task=llama", "task.size=debug", "norm=dyt", "norm.alpha_init=1e4",
                       "trainer.optim.lr=1e3,1e-3", "trainer.max_steps=4", "trainer.batch_size=4",
                       "trainer.max_eval_batches=2", "trainer.log_every=1", f"hydra.sweep.dir={sweep_dir}",
                       DYT_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode == 0
    runs = {}
    for path in sweep_dir.glob("*/summary.json"):
        lr = yaml.safe_load((path.parent / "config.yaml").read_text())["trainer"]["optim"]["lr"]
        runs[lr] = json.loads(path.read_text())
    assert sorted(runs) == [1e-3, 1e3]
    assert runs[1e3]["status"] == "diverged" and runs[1e3]["steps"] < 4 and "non-finite" in runs[1e3]["error"]
    assert runs[1e-3]["status"] == "completed" and runs[1e-3]["steps"] == 4
