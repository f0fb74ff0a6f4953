"""Table 6's rows are the paper's runs: each recipe value of `experiment=hyenadna_pretrain`, `caduceus_pretrain`,
`hyenadna_genomic_benchmarks`, `caduceus_genomic_benchmarks` against the official file it comes from (the DyT
paper's DNA code, jiachenzhu/DyT other_tasks/DNA/README.md, runs kuleshov-group/caduceus's slurm scripts);
the weight-decay sets against the official rule; the GenomicBenchmarks protocol end to end; the BED windows;
and the (1,)-shaped embedding scale with its shim for 0-dim checkpoints."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from dyt import convert, param_groups
from dyt.train.schedule import learning_rate
from tasks.caduceus import SIZES as CADUCEUS_SIZES
from tasks.caduceus import CaduceusTask
from tasks.data import genome
from tasks.dna.caduceus import Caduceus
from tasks.dna.hyena import HyenaDNA, HyenaFilter, fft_conv
from tasks.hyenadna import SIZES as HYENA_SIZES
from tasks.hyenadna import HyenaDNATask
from tests.helpers import ROOT, run_train, summary
from tests.test_trainer import compose_cfg

CADUCEUS = "kuleshov-group/caduceus"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _experiment(name):
    return compose_cfg(f"experiment={name}")


# ------------------------------------------------------------------ pretraining rows


def test_hyenadna_pretrain_is_run_pretrain_hyena():
    cfg = _experiment("hyenadna_pretrain")
    task, trainer, optim = cfg.task, cfg.trainer, cfg.trainer.optim
    model = {**HYENA_SIZES[task.size], **task.model}
    # caduceus slurm_scripts/run_pretrain_hyena.sh: D_MODEL=256, N_LAYER=4, SEQLEN=1024
    assert (model["d_model"], model["n_layer"], task.data.seq_len) == (256, 4, 1024)
    # caduceus configs/model/hyena.yaml: l_max = dataset.max_length + 2, embed_dropout 0.1, filter_order 64,
    # emb_dim 5, local_order 3, w 10; d_inner 4 · d_model (HyenaDNA's default here)
    assert model["max_len"] == 1024 + 2 and model["embed_dropout"] == 0.1
    assert (model["filter_order"], model["emb_dim"], model["short_filter"], model["w"]) == (64, 5, 3, 10)
    # caduceus src/models/sequence/hyena.py HyenaFilter: num_inner_mlps=2 (the configs keep the default), one Sin
    assert model["filter_inner_mlps"] == 2 and model["filter_shared_sin"] is True
    # run_pretrain_hyena.sh: MAX_STEPS=10000, BATCH_SIZE = 1048576 / SEQLEN, 8 devices, RC_AUG="true", LR="6e-4"
    assert trainer.max_steps == 10000
    assert trainer.global_batch_size == 1024 and trainer.global_batch_size * task.data.seq_len == 1_048_576
    assert trainer.batch_size == 1024 // 8
    assert task.data.rc_prob == 0.5  # caduceus src/dataloaders/utils/rc.py coin_flip(p=0.5)
    assert optim.lr == 6e-4  # and the paper's 6e-4 for HyenaDNA
    assert trainer.eval_every == 10000 // 5  # run_pretrain_hyena.sh +trainer.val_check_interval=MAX_STEPS/5
    assert trainer.ckpt_every == 500  # run_pretrain_hyena.sh every_n_train_steps=500
    assert task.stage == "pretrain" and task.name == "hyenadna"  # dataset.mlm=false: next-nucleotide prediction
    assert _common_pretraining(cfg)


def test_caduceus_pretrain_is_run_pretrain_caduceus():
    cfg = _experiment("caduceus_pretrain")
    task, trainer, optim = cfg.task, cfg.trainer, cfg.trainer.optim
    model = {**CADUCEUS_SIZES[task.size], **task.model}
    # caduceus slurm_scripts/run_pretrain_caduceus.sh: D_MODEL=256, N_LAYER=8, SEQLEN=131072, RCPS=true
    assert (model["d_model"], model["n_layer"], task.data.seq_len, model["rc"]) == (256, 8, 131072, "ps")
    # caduceus configs/model/caduceus.yaml ssm_cfg: d_state 16, d_conv 4, expand 2
    assert (model["d_state"], model["d_conv"], model["expand"]) == (16, 4, 2)
    # run_pretrain_caduceus.sh: MAX_STEPS=50000, BATCH_SIZE = 1048576 / SEQLEN, 8 devices, RC_AUG="false",
    # dataset.mlm=true, dataset.mlm_probability=0.15, LR="8e-3"
    assert trainer.max_steps == 50000
    assert trainer.global_batch_size == 8 and trainer.global_batch_size * task.data.seq_len == 1_048_576
    assert trainer.batch_size == 8 // 8
    assert task.data.rc_prob == 0.0 and task.data.mask_prob == 0.15 and task.name == "caduceus"
    assert optim.lr == 8e-3  # and the paper's 8e-3 for Caduceus
    assert trainer.eval_every == 50000 // 5 and trainer.ckpt_every == 500  # val_check_interval, every_n_train_steps
    assert _common_pretraining(cfg)


def _fails_without(cfg, needle: str) -> None:
    """The row stops at start, in one line naming the missing real data, rather than train on the embedded data."""
    from dyt.train.config import ConfigError, validate

    with pytest.raises(ConfigError, match="task.data.require_real_data") as error:
        validate(cfg)
    assert needle in str(error.value) and "\n" not in str(error.value)


def _common_pretraining(cfg) -> bool:
    """What both pretraining scripts take from caduceus configs/experiment/hg38/hg38.yaml."""
    trainer, optim = cfg.trainer, cfg.trainer.optim
    assert optim.warmup_steps == 0.1 * trainer.max_steps  # scheduler.warmup_t: ${eval:0.1*${trainer.max_steps}}
    assert optim.lr * optim.min_lr_ratio == pytest.approx(1e-4)  # scheduler.lr_min: 1e-4
    assert optim.schedule == "cosine"  # configs/scheduler/cosine_warmup_timm.yaml, t_in_epochs False, per step
    # the shape: at the end of warm-up the peak, at the last step lr_min (timm's CosineLRScheduler, warmup_prefix)
    shape = dict(peak=optim.lr, total=trainer.max_steps, warmup=optim.warmup_steps, min_ratio=optim.min_lr_ratio)
    assert learning_rate("cosine", optim.warmup_steps, **shape) == pytest.approx(optim.lr)
    assert learning_rate("cosine", trainer.max_steps, **shape) == pytest.approx(1e-4)
    assert optim.weight_decay == 0.1 and list(optim.betas) == [0.9, 0.95]  # hg38.yaml optimizer
    assert optim.eps == 1e-8  # torch.optim.AdamW's default (configs/optimizer/adamw.yaml sets none)
    assert trainer.mixed_precision == "fp16"  # hg38.yaml trainer.precision: 16
    assert optim.clip_grad == 1.0  # hg38.yaml trainer.gradient_clip_val: 1.0
    assert cfg.seed == 2222  # hg38.yaml train.seed
    assert cfg.task.data.val_first_fraction == 0.125  # hg38.yaml trainer.limit_val_batches: 0.125
    # hg38 from the caduceus README: hg38.ml.fa and human-sequences.bed, both required real data
    _fails_without(cfg, "task.data.fasta_path=")
    _fails_without(compose_cfg(f"experiment={cfg.task.name}_pretrain", f"task.data.fasta_path={ROOT / 'README.md'}"),
                   "task.data.bed_path=")
    # the paper's DyT has no scale after the embedding (jiachenzhu/DyT other_tasks/DNA/dynamic-tanh.patch only
    # swaps the norms); the suite's CPU default keeps its measured fix
    assert cfg.task.embedding_scale is False
    assert OmegaConf.load(ROOT / "configs" / "task" / f"{cfg.task.name}.yaml").task.embedding_scale is True
    return True


# ------------------------------------------------------------------ fine-tuning rows


@pytest.mark.parametrize("name,lr,norms", [
    ("hyenadna", 6e-4, ["bias", "norm", "embedding", "listed"]),  # wrapper_run_genomics.sh Hyena: LRS=("6e-4")
    ("caduceus", 1e-3, ["bias", "embedding", "listed"]),  # wrapper_run_genomics.sh Caduceus-PS: LRS=("1e-3" "2e-3")
])
def test_genomic_benchmarks_rows_are_run_genomics_benchmark(name, lr, norms):
    cfg = _experiment(f"{name}_genomic_benchmarks")
    task, trainer, optim = cfg.task, cfg.trainer, cfg.trainer.optim
    assert task.stage == "finetune"
    _fails_without(cfg, "task.data.root=")  # a GenomicBenchmarks dataset folder is required
    assert optim.lr == lr and optim.no_decay == norms
    # caduceus configs/experiment/hg38/genomic_benchmark.yaml: optimizer.weight_decay 0.1, lr_min 0.1 × lr,
    # precision 16, gradient_clip_val 1.0, train.seed 2222, global_batch_size = dataset.batch_size
    assert optim.weight_decay == 0.1 and optim.min_lr_ratio == 0.1 and optim.schedule == "cosine"
    assert trainer.mixed_precision == "fp16" and optim.clip_grad == 1.0 and cfg.seed == 2222
    assert trainer.batch_size == trainer.global_batch_size == 128  # wrapper: BATCH_SIZE in 128 256
    assert list(optim.betas) == [0.9, 0.999]  # configs/optimizer/adamw.yaml (genomic_benchmark.yaml sets none)
    # caduceus run_genomics_benchmark.sh: dataset.train_val_split_seed=${seed} for seed in 1 … 5
    assert task.data.split_seed == 1
    # the char tokenizer truncates on the right (truncation=True): a long sequence keeps its start
    assert task.data.crop == "start"
    assert task.embedding_scale is False
    if name == "caduceus":
        assert task.model.rc == "ps" and task.data.rc_prob == 0.0  # Caduceus-PS block: RC_AUGS=("false")


def test_the_protocol_constants_are_the_official_ones():
    from scripts.genomic_benchmarks import DATASETS, EPOCHS, GRIDS, MAX_LENGTH, SEEDS, WARMUP_FRACTION

    # caduceus slurm_scripts/wrapper_run_genomics.sh: `for TASK in …` (the 8 GenomicBenchmarks datasets)
    assert DATASETS == ("dummy_mouse_enhancers_ensembl", "demo_coding_vs_intergenomic_seqs", "demo_human_or_worm",
                        "human_enhancers_cohn", "human_enhancers_ensembl", "human_ensembl_regulatory",
                        "human_nontata_promoters", "human_ocr_ensembl")
    # caduceus configs/dataset/genomic_benchmark.yaml <dataset>.max_length
    assert [MAX_LENGTH[d] for d in DATASETS] == [1024, 200, 200, 500, 512, 512, 251, 512]
    # run_genomics_benchmark.sh: `for seed in $(seq 1 5)`, trainer.max_epochs=10
    assert (SEEDS, EPOCHS) == (5, 10)
    assert WARMUP_FRACTION == 0.01  # genomic_benchmark.yaml scheduler.warmup_t: 0.01 × t_initial
    # wrapper_run_genomics.sh's blocks: Hyena LRS=("6e-4") RC_AUGS=("false" "true"); Caduceus-PS LRS=("1e-3"
    # "2e-3") RC_AUGS=("false"); BATCH_SIZE in 128 256 for all
    assert GRIDS[("hyenadna", None)] == {"lr": [6e-4], "batch_size": [128, 256], "rc_aug": [False, True]}
    assert GRIDS[("caduceus", "ps")] == {"lr": [1e-3, 2e-3], "batch_size": [128, 256], "rc_aug": [False]}
    assert genome.HOLD_OUT_FRACTION == 0.1  # src/dataloaders/genomics.py random_split(lengths=[0.1, 0.9])


# ------------------------------------------------------------------ weight decay: the official rule


# caduceus src/utils/optim_groups.py add_optimizer_hooks(bias_weight_decay=False, normalization_weight_decay=False)
OFFICIAL_BLACKLIST = (nn.Embedding, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.SyncBatchNorm,
                      nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)


def _official_no_decay(model) -> set[str]:
    """add_optimizer_hooks, written out: a parameter of any module is exempt if its name ends in `bias`, if it
    carries `_optim` (HyenaFilter's implicit MLP: {"weight_decay": wd=0.0}) or `_no_weight_decay` (mamba_ssm's
    A_log and D), or if the module is blacklisted (nn.Embedding, the torch norms; mamba_ssm's RMSNorm is a
    plain nn.Module, DyT is not a norm class). `_optim` and `_no_weight_decay` are matched by name here."""
    exempt = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters():
            full = f"{module_name}.{name}" if module_name else name
            special = ".filter.mlp." in full or full.endswith((".A_log", ".D"))  # `_optim`, `_no_weight_decay`
            if name.endswith("bias") or isinstance(module, OFFICIAL_BLACKLIST) or special:
                exempt.add(full)
    return exempt


@pytest.mark.parametrize("experiment,native", [("hyenadna_pretrain", "layernorm"), ("caduceus_pretrain", "rmsnorm")])
@pytest.mark.parametrize("norm", ["native", "dyt"])
def test_weight_decay_sets_are_the_official_ones(experiment, native, norm):
    cfg = compose_cfg(f"experiment={experiment}", "task.size=debug", "task.data.seq_len=128",
                      "task.data.require_real_data=false")
    task = {"hyenadna": HyenaDNATask, "caduceus": CaduceusTask}[cfg.task.name](cfg.task)
    model = task.build_model()
    if norm == "dyt":
        convert(model, "dyt")
    task.adapt_to_norm(model, OmegaConf.create({"type": norm}))
    optim = cfg.trainer.optim
    decay, kept = param_groups(model, optim.weight_decay, decay_alpha=optim.decay_alpha, no_decay=optim.no_decay)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)] for p in kept["params"]}
    assert ours == _official_no_decay(model)
    decayed = {names[id(p)] for p in decay["params"]}
    if norm == "dyt":  # DyT's α and γ decay, its β does not (optim_groups.py: DyT is no nn.LayerNorm)
        assert {"norm_f.alpha", "norm_f.weight"} <= decayed
        assert native == "rmsnorm" or "norm_f.bias" in ours  # RMSNorm becomes a DyT without β
    elif native == "rmsnorm":  # mamba_ssm's RMSNorm is not in the blacklist: its weight decays
        assert "norm_f.weight" in decayed
    else:
        assert {"norm_f.weight", "norm_f.bias"} <= ours
    assert "embed.weight" in ours and model.embed_scale is None


# ------------------------------------------------------------------ the GenomicBenchmarks protocol, end to end


def _benchmark_folder(root, names, per_class=20, test_per_class=6):
    """The published layout, <dataset>/{train,test}/<class>/<id>.txt, with classes told apart by composition."""
    rng = np.random.default_rng(0)
    for name in names:
        for split, n in (("train", per_class), ("test", test_per_class)):
            for cls, alphabet in (("negative", "AATTACGT"), ("positive", "GGCCACGT")):
                folder = root / name / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    (folder / f"{i}.txt").write_text("".join(rng.choice(list(alphabet), 40)))


def test_genomic_benchmarks_protocol_end_to_end(tmp_path):
    pre = tmp_path / "pretrain"
    run_train(pre, "task=hyenadna", "task.size=debug", "norm=dyt", "task.embedding_scale=false",
              "trainer.max_steps=2", "trainer.batch_size=4", "task.data.seq_len=64", "task.data.val_windows=4",
              OMP_NUM_THREADS="1")
    names = ["human_nontata_promoters"]  # one dataset (subprocess start-ups dominate); several: the next test
    _benchmark_folder(tmp_path / "gb", names)
    out = tmp_path / "report"
    command = [sys.executable, str(ROOT / "scripts" / "genomic_benchmarks.py"), str(pre), "--root", str(tmp_path / "gb"),
               "--datasets", *names, "--seeds", "2", "--epochs", "1", "--lr", "1e-3", "--batch-size", "4",
               "--rc-aug", "false", "--out", str(out),
               "--", "trainer.mixed_precision=no", "logger=none", "trainer.progress=log", "trainer.num_workers=0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((out / "genomic_benchmarks.json").read_text())
    assert report["task"] == "hyenadna" and report["norm"] == "dyt-a0.5" and list(report["datasets"]) == names
    means = []
    for name in names:
        dataset = report["datasets"][name]
        assert dataset["selected"] == {"lr": 1e-3, "batch_size": 4, "rc_aug": False}
        runs = dataset["settings"][0]["runs"]
        assert [r["seed"] for r in runs] == [1, 2] and all(r["status"] == "completed" for r in runs)
        tests = [r["test_acc"] for r in runs]
        assert dataset["test_acc_mean"] == pytest.approx(np.mean(tests))
        assert dataset["test_acc_std"] == pytest.approx(np.std(tests, ddof=1))
        means.append(dataset["test_acc_mean"])
        for run in runs:  # the test accuracy reported is the one logged at the best validation accuracy
            run_summary = summary(run["run_dir"])
            assert run_summary["best"]["val/test_acc"] == run["test_acc"]
            assert run_summary["best"]["val/acc"] == max(
                m["val/acc"] for m in map(json.loads, open(f"{run['run_dir']}/metrics.jsonl")) if "val/acc" in m)
            config = OmegaConf.load(f"{run['run_dir']}/config.yaml")
            assert config.task.data.split_seed == run["seed"] and config.task.data.crop == "start"
            assert config.task.data.max_len == 251  # genomic_benchmark.yaml human_nontata_promoters.max_length
            assert config.init_from == str(pre.resolve()) and config.norm.type == "dyt"
            assert config.trainer.max_steps == (40 - 4) // 4  # one epoch of the 36 kept of 40 sequences
    assert report["average_accuracy"] == pytest.approx(100 * np.mean(means))
    assert "Average accuracy" in (out / "genomic_benchmarks.md").read_text()


def test_genomic_benchmarks_report_selects_by_validation_and_averages_datasets():
    from argparse import Namespace

    from scripts.genomic_benchmarks import summarise

    def setting(lr, vals, tests):
        runs = [{"seed": k + 1, "status": "completed", "val_acc": v, "test_acc": t} for k, (v, t) in
                enumerate(zip(vals, tests))]
        return {"lr": lr, "batch_size": 128, "rc_aug": False, "runs": runs}

    results = {"a": [setting(1e-3, [0.8, 0.9], [0.95, 0.97]), setting(2e-3, [0.9, 0.9], [0.7, 0.8])],
               "b": [setting(1e-3, [0.6, 0.7], [0.6, 0.6]), setting(2e-3, [0.5, 0.5], [0.9, 0.9])]}
    report = summarise(results, "caduceus", "dyt-a0.5", Namespace(run_dir="r", root="g", seeds=2, epochs=10))
    a, b = report["datasets"]["a"], report["datasets"]["b"]
    assert a["selected"]["lr"] == 2e-3 and b["selected"]["lr"] == 1e-3  # by validation, never by test
    assert a["test_acc_mean"] == pytest.approx(0.75) and a["test_acc_std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert report["average_accuracy"] == pytest.approx(100 * (0.75 + 0.6) / 2)
    results["b"][1]["runs"][0] = {"seed": 1, "status": "diverged", "run_dir": "x"}
    results["b"][0]["runs"][1] = {"seed": 2, "status": "exit code 1", "run_dir": "y"}
    assert summarise(results, "caduceus", "dyt", Namespace(run_dir="r", root="g", seeds=2, epochs=10)
                     )["average_accuracy"] is None  # a dataset without a complete setting: no average


def test_genomic_benchmarks_missing_dataset_is_one_line_before_any_work(tmp_path):
    _benchmark_folder(tmp_path / "gb", ["demo_human_or_worm"], per_class=2, test_per_class=1)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "genomic_benchmarks.py"), str(tmp_path / "run"),
                             "--root", str(tmp_path / "gb")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "has no dataset dummy_mouse_enhancers_ensembl" in result.stderr
    assert not (tmp_path / "run").exists()


def test_hold_out_is_the_official_random_split(tmp_path):
    _benchmark_folder(tmp_path, ["d"], per_class=25, test_per_class=3)
    train, test = genome.genomic_benchmark(tmp_path / "d", rc_prob=0.5)
    kept, val = genome.hold_out(train, seed=3)
    assert (len(kept), len(val), len(test)) == (45, 5, 6) and val.rc_prob == 0.0 and kept.rc_prob == 0.5
    # src/dataloaders/genomics.py: random_split(…, lengths=[0.1, 0.9], generator=torch.Generator().manual_seed(seed))
    official_val, _ = torch.utils.data.random_split(list(range(50)), [0.1, 0.9],
                                                    generator=torch.Generator().manual_seed(3))
    assert val.labels == [train.labels[i] for i in official_val]
    assert [t.tolist() for t in val.sequences] == [train.sequences[i].tolist() for i in official_val]
    assert genome.hold_out_indices(50, 4)[1] != genome.hold_out_indices(50, 3)[1]  # another seed, another split
    both = genome.EvalSplits([val, test])
    assert len(both) == 11 and [both[i]["split"].item() for i in (0, 4, 5, 10)] == [0, 0, 1, 1]
    assert torch.equal(both[5]["tokens"], test[0]["tokens"])


def test_crop_keeps_the_start_as_the_official_truncation(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "a" / "0.txt").write_text("AAAACCCCGGGG")
    start, _ = genome.genomic_benchmark(tmp_path, rc_prob=0.0, max_len=4, crop="start")
    center, _ = genome.genomic_benchmark(tmp_path, rc_prob=0.0, max_len=4)
    assert start[0]["tokens"].tolist() == [0, 0, 0, 0] and center[0]["tokens"].tolist() == [1, 1, 1, 1]


# ------------------------------------------------------------------ the official hg38 intervals


def test_bed_windows_tile_each_interval_as_the_official_loader(tmp_path):
    bed = tmp_path / "sequences.bed"
    bed.write_text("chrA\t0\t131072\ttrain\nchrA\t3000\t134072\tvalid\nchrB\t100\t131172\ttest\n")
    intervals = genome.bed_intervals(bed)
    assert intervals["train"] == [("chrA", 0, 2 ** 20)]  # read as start … start + 2^20 (MAX_ALLOWED_LENGTH)
    source = genome.Genome({"chrA": np.arange(10_000), "chrB": np.arange(500)})  # tokens are positions
    windows = genome.BedWindows(source, intervals["train"], 1024, 1025)
    assert len(windows) == 2 ** 20 // 1024  # HG38Dataset: len(df) × shifts
    assert windows[3]["tokens"].tolist() == list(range(3 * 1024, 3 * 1024 + 1025))  # window i_shift = 3
    assert windows[9]["tokens"].tolist() == list(range(10_000 - 1025, 10_000))  # past the end: moved back inside
    val = genome.BedWindows(source, intervals["valid"], 1024, 1025, first_fraction=0.125)
    assert len(val) == 128 and val[0]["tokens"][0] == 3000 and val[1]["tokens"][0] == 4024  # the first eighth
    spread = genome.BedWindows(source, intervals["valid"], 1024, 1025, limit=3)
    assert [spread[i]["tokens"][0].item() for i in range(3)] == [3000, 10_000 - 1025, 10_000 - 1025]
    with pytest.raises(ValueError, match="divide"):
        genome.BedWindows(source, intervals["train"], 1000, 1000)


def test_pretraining_reads_the_bed_intervals_of_a_fasta(tmp_path):
    rng = np.random.default_rng(1)
    sequence = "".join(rng.choice(list("ACGT"), 5000))
    (tmp_path / "g.fa").write_text(">chr1\n" + sequence + "\n")
    (tmp_path / "g.bed").write_text("chr1\t0\t100\ttrain\nchr1\t200\t300\ttrain\nchr1\t1000\t1100\tvalid\n")
    cfg = OmegaConf.load(ROOT / "configs" / "task" / "hyenadna.yaml").task
    cfg.size, cfg.data.seq_len, cfg.data.rc_prob = "debug", 64, 0.0
    cfg.data.fasta_path, cfg.data.bed_path, cfg.data.val_first_fraction = str(tmp_path / "g.fa"), str(tmp_path / "g.bed"), 0.125
    train, val = HyenaDNATask(cfg).build_data()
    assert len(train) == 2 * 2 ** 20 // 64 and len(val) == math.ceil(0.125 * (2 ** 20 // 64))
    first = train.shifts + 2  # the second interval's third window, 65 bases for a causal model
    assert train[first]["tokens"].tolist() == genome.encode(sequence[200 + 128:200 + 128 + 65]).tolist()
    cfg.data.fasta_path = None
    with pytest.raises(ValueError, match="bed_path needs task.data.fasta_path"):
        HyenaDNATask(cfg)


# ------------------------------------------------------------------ model details of the paper rows


def test_the_official_hyena_filter_has_two_inner_layers_and_one_sin():
    official = HyenaFilter(32, 64, order=16, emb_dim=5, inner_mlps=2, shared_sin=True)
    linears = [m for m in official.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 16), (16, 16), (16, 16), (16, 32)]
    assert sum(1 for n, _ in official.named_parameters() if n.endswith("freq")) == 1  # one Sin, reused
    compact = HyenaFilter(32, 64, order=16, emb_dim=5)  # the CPU default's, unchanged
    assert len(compact.mlp) == 5 and sum(1 for n, _ in compact.named_parameters() if n.endswith("freq")) == 2


def test_fft_conv_takes_half_precision_inputs():
    torch.manual_seed(0)
    u, k, skip = torch.randn(2, 3, 50), torch.randn(3, 50) * 0.1, torch.randn(3)
    y = fft_conv(u.half(), k, skip)  # what fp16 autocast hands it: half activations, a float32 filter
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), fft_conv(u.half().float(), k, skip), rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------ the embedding scale: (1,), old checkpoints load


@pytest.mark.parametrize("name", ["hyenadna", "caduceus"])
def test_embed_scale_is_one_element_and_0_dim_checkpoints_load(name, tmp_path):
    cfg = OmegaConf.load(ROOT / "configs" / "task" / f"{name}.yaml").task
    cfg.size, cfg.data.seq_len = "debug", 128
    task = {"hyenadna": HyenaDNATask, "caduceus": CaduceusTask}[name](cfg)
    model = task.build_model()
    convert(model, "dyt")
    task.adapt_to_norm(model, OmegaConf.create({"type": "dyt"}))
    assert model.embed_scale.shape == (1,)
    assert all(p.ndim >= 1 for p in model.parameters())  # FSDP2's fully_shard rejects 0-dim parameters
    old = model.state_dict()
    old["embed_scale"] = torch.tensor(3.5)  # as written before: nn.Parameter(1 / rms), 0-dim
    torch.save(old, tmp_path / "old.pt")
    fresh = task.build_model()
    convert(fresh, "dyt")
    task.adapt_to_norm(fresh, OmegaConf.create({"type": "dyt"}))
    fresh.load_state_dict(torch.load(tmp_path / "old.pt"))  # strict
    assert fresh.embed_scale.shape == (1,) and fresh.embed_scale.item() == 3.5
    tokens = torch.randint(0, 4, (2, 20))
    model.load_state_dict(old)
    torch.testing.assert_close(fresh.eval()(tokens), model.eval()(tokens))
    assert isinstance(model, {"hyenadna": HyenaDNA, "caduceus": Caduceus}[name])
