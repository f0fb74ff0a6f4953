"""The reproduction report: every claim of the paper, and of its critics, tested at CPU scale with seeds.

Each claim below names the paper's table or figure, quotes the paper's numbers (/work/shared/PAPER.md), and
lists its arms: `train.py` overrides (what is compared, and the sizing that makes the CPU analogue fit) run
over seeds 0 … N−1. Every run is `python train.py <overrides> seed=<k> logger=none hydra.run.dir=<folder>`
in a subprocess, exactly as a user types it. After each run its small records (summary.json, metrics.jsonl,
config.yaml, norms.txt, and run.json: the overrides and the process's time) are copied to
results/reproduce/<claim>/<arm>/seed<k>/; the page results/REPORT.md is built from those records alone.

    python scripts/reproduce.py --dry-run                     # the plan (commands, estimated minutes); the page
    python scripts/reproduce.py --launcher local_parallel     # everything, two runs at a time (2 cores)
    python scripts/reproduce.py --tables 1,fn_ablation        # Table 1's claims and the squashing ablation
    python scripts/reproduce.py --launcher slurm --launcher-arg hydra.launcher.partition=gpu
    python scripts/reproduce.py --quick --results /tmp/r --outputs /tmp/o   # minutes: the whole path, debug sizes

Reuse: a run whose record says `completed` (or `diverged`: a result) with the same overrides is not run
again, so a fresh clone rebuilds the page from results/reproduce/ without training; deleting one record
re-runs that run alone (and the pretraining it starts from, when that run's checkpoint is gone). A run that
several claims share (the ViT DyT run is Table 1's, the ablation's tanh and an α₀ point) trains once and is
recorded once, under the first claim that lists it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from compare import Paired, _mean_std, final_by_seed, paired_differences, paired_statistics  # noqa: E402

from dyt.train.results import Run, load_run  # noqa: E402

SLURM_DEFAULTS = ("hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=60")
RECORD_FILES = ("summary.json", "metrics.jsonl", "config.yaml", "norms.txt")
FINAL = ("completed", "diverged")  # a record in one of these states is a result: reused, never re-run
README_BEGIN, README_END = "<!-- report:summary:begin -->", "<!-- report:summary:end -->"

# ---------------------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...]          # what this arm is (norm, α₀, width, lr, steps …), beside the claim's sizing
    minutes: float                      # estimated minutes of one run (1 thread, beside another job)
    after: str | None = None            # the arm (same seed) whose run this one starts from: init_from=<its folder>
    quick: tuple[str, ...] | None = None  # --quick: these overrides instead of `overrides`
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # what the analysis reads (α₀, width …)


@dataclass(frozen=True)
class Comparison:
    treatment: str                      # arm name
    baseline: str                       # arm name
    label: str                          # what the row compares, in words
    paper_numbers: str                  # quoted from the paper (baseline / treatment)
    paper: str                          # what the paper found for the treatment: better | worse | equal | diverges


@dataclass(frozen=True)
class Claim:
    id: str
    source: str                         # the paper's table or figure
    selectors: tuple[str, ...]          # what --tables matches besides the id
    statement: str                      # the claim in words
    sizing: tuple[str, ...] = ()        # overrides every arm shares: the CPU analogue's size
    quick_sizing: tuple[str, ...] = ()  # --quick: instead of `sizing`
    arms: tuple[Arm, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    kind: str = "pairs"                 # pairs | alpha_lines | alpha_grid | tokens_per_param | alpha_std | ln_mapping
    reads: tuple[tuple[str, str], ...] = ()  # (claim, arm) whose runs a figure claim reads
    quick_arms: tuple[str, ...] | None = None  # --quick: only these arms (the big grids)
    equivalent: str = ""                # the user's own command for the same thing (a sweep)
    notes: str = ""

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)


def vit(steps: int = 1200) -> tuple[str, ...]:
    return ("task=vit", f"trainer.max_steps={steps}", f"trainer.eval_every={steps // 2}",
            f"trainer.ckpt_every={steps // 2}")


QUICK = ("task.size=debug", "trainer.max_steps=4", "trainer.eval_every=4", "trainer.ckpt_every=4", "trainer.log_every=2")
VIT_MINUTES = 2.0            # 1,200 steps × 0.095 s (results of vit at 2,400 steps: 228 s) + start and evaluations
LLAMA_NARROW = ("+task.model.overrides.hidden_size=64", "+task.model.overrides.intermediate_size=176")
LLAMA_WIDER = ("+task.model.overrides.hidden_size=128", "+task.model.overrides.intermediate_size=344")
# the embedded text: 905,868 tokens, 860,575 of them train (95%) = 6,723 windows of 128 = 420 steps of 16 windows
TRAIN_TOKENS, TOKENS_PER_STEP = 860_575, 16 * 128


def pair(claim_id, source, selectors, statement, task_sizing, quick_sizing, base, treat, numbers, paper,
         label="DyT against LayerNorm", **extra) -> Claim:
    """A claim of one baseline arm and one DyT arm."""
    base_name, base_overrides, base_minutes = base
    treat_name, treat_overrides, treat_minutes = treat
    return Claim(claim_id, source, selectors, statement, sizing=task_sizing, quick_sizing=quick_sizing,
                 arms=(Arm(base_name, base_overrides, base_minutes), Arm(treat_name, treat_overrides, treat_minutes)),
                 comparisons=(Comparison(treat_name, base_name, label, numbers, paper),), **extra)


def chain(claim_id, source, selectors, statement, task, base_norm, pretrain, finetune, quick_sizing, numbers, paper,
          base_label="LayerNorm", pretrain_metric_note="") -> Claim:
    """Pretraining then fine-tuning from it, per norm: the comparison is the fine-tuned headline; the pretrained
    one is a second row."""
    (pre_overrides, pre_minutes), (fine_overrides, fine_minutes) = pretrain, finetune
    arms = []
    for norm in (base_norm, "dyt"):
        arms.append(Arm(f"{norm}_pretrain", (f"task={task}", f"norm={norm}", *pre_overrides), pre_minutes))
        arms.append(Arm(f"{norm}_finetune", (f"task={task}", f"norm={norm}", "task.stage=finetune", *fine_overrides),
                        fine_minutes, after=f"{norm}_pretrain"))
    return Claim(claim_id, source, selectors, statement, quick_sizing=quick_sizing, arms=tuple(arms), comparisons=(
        Comparison("dyt_finetune", f"{base_norm}_finetune", f"DyT against {base_label}, fine-tuned", numbers, paper),
        Comparison("dyt_pretrain", f"{base_norm}_pretrain", f"DyT against {base_label}, pretraining"
                   + pretrain_metric_note, "–", "equal")))


ALPHAS_VIT = (0.25, 0.5, 1.0, 2.0)
ALPHA_LINES = (  # (line, arm-name prefix, overrides, minutes per run)
    ("ViT width 128 (the CPU default), lr 2e-3", "w128_lr2e-3", (), VIT_MINUTES),
    ("ViT width 64, lr 2e-3", "w64_lr2e-3", ("+task.model.kwargs.embed_dim=64",), 0.9),
    ("ViT width 64, lr 8e-3", "w64_lr8e-3", ("+task.model.kwargs.embed_dim=64", "trainer.optim.lr=8e-3"), 0.9),
)
GRID_ALPHAS = (0.3, 1.0, 3.0)
GRID_WIDTHS = ((64, LLAMA_NARROW, 0.5), (128, LLAMA_WIDER, 0.75))  # width, overrides, minutes per run (120 steps)
TOKEN_STEPS = (13, 26, 52, 105, 210, 420)  # 32×: 26.6k … 860k tokens, at most one pass over the embedded text
QUICK_TOKEN_STEPS = (2, 4, 8)


def alpha_vit_claim() -> Claim:
    arms = []
    for line, prefix, overrides, minutes in ALPHA_LINES:
        for alpha in ALPHAS_VIT:
            # α₀ 0.5 on the CPU default is Table 1's DyT run itself (the same overrides: it trains once)
            alpha_override = () if (alpha == 0.5 and not overrides) else (f"norm.alpha_init={alpha}",)
            arms.append(Arm(f"{prefix}_a{alpha:g}", ("norm=dyt", *overrides, *alpha_override), minutes,
                            meta={"line": line, "alpha": alpha}))
    quick = tuple(a.name for a in arms if a.meta["alpha"] in (0.5, 2.0) and "lr8e-3" not in a.name)
    return Claim(
        "alpha_vit", "§7, α₀ sensitivity (figures)", ("alpha",),
        "Larger models and higher learning rates want a smaller α₀ (supervised ViT-L diverges for α₀ > 0.6 unless "
        "the lr is lowered); outside LLMs α₀ in 0.5–1.2 is generally fine.",
        sizing=vit(), quick_sizing=("task=vit", *QUICK), arms=tuple(arms), kind="alpha_lines", quick_arms=quick,
        comparisons=(
            Comparison("ViT width 128 (the CPU default), lr 2e-3", "ViT width 64, lr 2e-3",
                       "the wider ViT prefers a smaller α₀", "ViT-L diverges above α₀ 0.6 at the lr ViT-B takes",
                       "smaller"),
            Comparison("ViT width 64, lr 8e-3", "ViT width 64, lr 2e-3", "the higher lr prefers a smaller α₀",
                       "larger lr → smaller α₀ (figure, no table)", "smaller")),
        equivalent="python train.py -m task=vit norm=dyt norm.alpha_init=0.25,0.5,1.0,2.0 seed=0,1,2 "
                   "trainer.max_steps=1200 (and +task.model.kwargs.embed_dim=64, trainer.optim.lr=8e-3)",
        notes="Statistic: per seed and line, the least-squares slope of the headline against log₂ α₀ (turned so that "
              "up is better); Δ is the slope of the first line minus the second's, paired by seed. A line that "
              "prefers smaller α₀ has the lower slope, so the paper's direction is Δ < 0. Diverged runs are counted "
              "beside the numbers and left out of the slopes.")


def alpha_grid_claim() -> Claim:
    arms = []
    for width, overrides, minutes in GRID_WIDTHS:
        sizing = (*overrides, "trainer.max_steps=120", "trainer.optim.warmup_steps=6", "trainer.eval_every=120",
                  "trainer.ckpt_every=120")
        arms.append(Arm(f"w{width}_rmsnorm", ("norm=rmsnorm", *sizing), minutes, quick=("norm=rmsnorm",),
                        meta={"width": width}))
        for attn in GRID_ALPHAS:
            for other in GRID_ALPHAS:
                alpha = f"norm.alpha_init={{attn:{attn},ffn:{other},final:{other}}}"
                arms.append(Arm(f"w{width}_attn{attn:g}_other{other:g}", ("norm=dyt", alpha, *sizing), minutes,
                                quick=("norm=dyt", alpha), meta={"width": width, "attn": attn, "other": other}))
    quick = tuple(a.name for a in arms if a.meta.get("attn", 0.3) in (0.3, 3.0) and a.meta.get("other", 0.3) in (0.3, 3.0))
    return Claim(
        "llama_alpha_grid", "Fig. 11 and the α₀ table (§7)", ("4", "fig11", "llama", "alpha"),
        "LLaMA wants a larger α₀ for the attention-block norms than for the FFN and final norms, and wider models "
        "want smaller α₀ (width 1024: 1.0 / 1.0; 2048: 1.0 / 0.5; 4096: 0.8 / 0.2; 8192: 0.2 / 0.05).",
        sizing=("task=llama",), quick_sizing=("task=llama", *QUICK), arms=tuple(arms), kind="alpha_grid",
        quick_arms=quick + ("w64_rmsnorm", "w128_rmsnorm"),
        comparisons=(
            Comparison("attn", "other", "attention α₀ against the other norms' α₀ (width 64)",
                       "attention / other: 1.0/1.0 (1024), 1.0/0.5 (2048), 0.8/0.2 (4096)", "larger"),
            Comparison("attn", "other", "attention α₀ against the other norms' α₀ (width 128)",
                       "attention / other: 1.0/1.0 (1024), 1.0/0.5 (2048), 0.8/0.2 (4096)", "larger"),
            Comparison("w128", "w64", "the wider LLaMA prefers a smaller α₀",
                       "other α₀ 1.0 → 0.5 → 0.2 → 0.05 as width doubles from 1024", "smaller")),
        equivalent="python train.py -m task=llama sweep=llama_alpha_grid 'norm.alpha_init={attn:0.3,ffn:0.3,final:0.3},…' "
                   "+task.model.overrides.hidden_size=64 +task.model.overrides.intermediate_size=176 trainer.max_steps=120 "
                   "seed=0,1,2",
        notes="Each point: 120 steps × 2,048 tokens (246k tokens, 0.29 of a pass over the embedded text), 4 layers, "
              "4 heads, the RMSNorm run of each width beside the grid. Statistic: per seed and width, a least-squares "
              "plane through the 3 × 3 grid of −(val loss) (up is better) ≈ a + b·log₂ α₀(attention) + "
              "c·log₂ α₀(other). Attention preferring the larger α₀ makes b > c: Δ = b − c, > 0 the paper's "
              "direction. The wider model preferring smaller α₀ makes its b + c smaller: Δ = (b + c) at width 128 − "
              "(b + c) at width 64, < 0 the paper's direction.")


def tokens_claim() -> Claim:
    arms = []
    for norm in ("rmsnorm", "dyt"):
        for steps, quick_steps in zip(TOKEN_STEPS, (*QUICK_TOKEN_STEPS, None, None, None)):
            warmup = max(1, steps // 20)  # the paper's min(2000, steps/20)
            overrides = (f"norm={norm}", f"trainer.max_steps={steps}", f"trainer.optim.warmup_steps={warmup}",
                         f"trainer.eval_every={steps}", f"trainer.ckpt_every={steps}")
            quick = (f"norm={norm}", f"trainer.max_steps={quick_steps}", "trainer.optim.warmup_steps=1",
                     f"trainer.eval_every={quick_steps}", f"trainer.ckpt_every={quick_steps}") if quick_steps else None
            arms.append(Arm(f"{norm}_steps{steps}", overrides, round(0.12 + steps * 0.164 / 60, 2), quick=quick,
                            meta={"norm": norm, "steps": steps, "quick_steps": quick_steps}))
    return Claim(
        "tokens_per_param", "critique arXiv 2604.23434", ("critique", "tokens", "4"),
        "DyT's advantage depends on tokens per parameter: it helps at few tokens and hurts at many; the sign of the "
        "DyT − LayerNorm gap follows tokens per parameter.",
        sizing=("task=llama", *LLAMA_NARROW), quick_sizing=("task=llama", "task.size=debug", "trainer.log_every=2"),
        arms=tuple(arms), kind="tokens_per_param", quick_arms=tuple(a.name for a in arms if a.meta["quick_steps"]),
        comparisons=(Comparison("dyt", "rmsnorm", "DyT − RMSNorm val loss against tokens per parameter",
                                "GPT-2 64M: DyT 27.3% better at 1M tokens, 18.8% worse at 118M", "grows"),),
        equivalent="python train.py task=llama norm=dyt +task.model.overrides.hidden_size=64 "
                   "+task.model.overrides.intermediate_size=176 trainer.max_steps=13 … 420 (and norm=rmsnorm)",
        notes="A LLaMA of width 64 (4 layers, 0.72M parameters with its embeddings, vocabulary 4,096) trained for 13 "
              "to 420 steps of 2,048 tokens: 0.037 to 1.2 tokens per parameter, 32×, within one pass over the "
              "embedded text (860,575 training tokens: no text is seen twice; the critique's range is 0.016 to 1.8). "
              "Warm-up steps/20, cosine to 0.1×, as the paper. Statistic: per seed, the slope of the loss gap "
              "(DyT − RMSNorm) against log₁₀ tokens per parameter; the critique's direction is a positive slope "
              "(the gap grows against DyT), and a flip is a gap below 0 at the fewest tokens and above 0 at the most.")


# the paper's Fig. 2/4 and Fig. 8 models (ViT-B, wav2vec 2.0, DiT): their runs in Tables 1, 5 and 3. DiT's
# LayerNorms are not captured: scripts/plot_ln_mapping.py runs a validation batch through `task.eval_step`, which
# the DiT task does not have (its evaluation samples)
FIGURE_MODELS = ("ViT", "wav2vec 2.0", "DiT")
FIGURE_RUNS = {"dyt": (("table1_vit", "dyt"), ("table5_wav2vec2", "dyt"), ("table3_dit", "dyt")),
               "layernorm": (("table1_vit", "layernorm"), ("table5_wav2vec2", "layernorm"))}

CLAIMS: tuple[Claim, ...] = (
    pair("table1_vit", "Table 1", ("1",), "DyT matches or beats LayerNorm in supervised ViT (ImageNet-1K top-1).",
         vit(), ("task=vit", *QUICK), ("layernorm", ("norm=layernorm",), VIT_MINUTES), ("dyt", ("norm=dyt",), VIT_MINUTES),
         "ViT-B 82.3 / 82.5, ViT-L 83.1 / 83.6", "better",
         equivalent="python train.py task=vit norm=dyt trainer.max_steps=1200 (and norm=layernorm), seed=0,1,2"),
    pair("table1_convnext", "Table 1", ("1",), "DyT matches LayerNorm in ConvNeXt (channels-first).",
         ("task=convnext", "trainer.max_steps=1200", "trainer.eval_every=600", "trainer.ckpt_every=600"),
         ("task=convnext", *QUICK), ("layernorm", ("norm=layernorm",), 1.3), ("dyt", ("norm=dyt",), 1.9),
         "ConvNeXt-B 83.7 / 83.7, ConvNeXt-L 84.3 / 84.4", "equal"),
    chain("table2_mae", "Table 2", ("2",), "MAE pretraining then fine-tuning: DyT matches LayerNorm.", "mae", "layernorm",
          (("trainer.max_steps=1000", "trainer.optim.warmup_steps=50", "trainer.eval_every=1000",
            "trainer.ckpt_every=1000"), 1.6),
          (("trainer.max_steps=300", "trainer.eval_every=150", "trainer.ckpt_every=300"), 1.2),
          ("task=mae", *QUICK), "MAE ViT-B 83.2 / 83.2, ViT-L 85.5 / 85.4", "equal",
          pretrain_metric_note=" (k-NN top-1)"),
    chain("table2_dino", "Table 2", ("2",), "DINO pretraining then fine-tuning: DyT matches or beats LayerNorm.",
          "dino", "layernorm",
          (("trainer.max_steps=300", "trainer.optim.warmup_steps=35", "trainer.eval_every=300",
            "trainer.ckpt_every=300"), 2.1),
          (("trainer.max_steps=250", "trainer.eval_every=125", "trainer.ckpt_every=250"), 1.2),
          ("task=dino", *QUICK, "task.dino.local_crop_size=14", "task.dino.local_crops_number=2"), "DINO ViT-B/16 83.2 / 83.4, ViT-B/8 84.1 / 84.5", "better",
          pretrain_metric_note=" (k-NN top-1)"),
    pair("table3_dit", "Table 3", ("3",), "DyT matches LayerNorm in DiT (FID, lower is better).",
         ("task=dit", "trainer.max_steps=400", "trainer.eval_every=400", "trainer.ckpt_every=400",
          "task.eval.final_num_samples=500"),
         ("task=dit", *QUICK, "task.eval.num_samples=20", "task.eval.final_num_samples=20", "task.grid.per_class=1"),
         # 400 × 0.37 s (a 50-step probe) + 59 s for 500 samples and the grid + start
         ("layernorm", ("norm=layernorm",), 3.8), ("dyt", ("norm=dyt",), 3.8),
         "DiT-B/4 64.9 / 63.9, L/4 45.9 / 45.7, XL/2 19.9 / 20.8", "equal",
         notes="The headline is the Fréchet distance in the pinned digit classifier's features (`fd_mnist_classifier`) "
               "of 500 samples after 400 steps (25,600 images seen)."),
    pair("table4_llama", "Table 4", ("4", "llama"), "DyT matches RMSNorm in LLaMA pretraining (loss).",
         ("task=llama", "trainer.max_steps=400", "trainer.eval_every=200", "trainer.ckpt_every=200"),
         # 400 × 0.64 s (a 30-step probe) + two evaluations + start
         ("task=llama", *QUICK), ("rmsnorm", ("norm=rmsnorm",), 4.6), ("dyt", ("norm=dyt",), 4.6),
         "7B 1.59 / 1.60, 13B 1.53 / 1.54, 34B 1.50 / 1.50, 70B 1.45 / 1.45", "equal",
         label="DyT against RMSNorm",
         notes="The CPU default LLaMA (width 256, 4 layers) for 400 steps × 2,048 tokens = 819,200 tokens: 0.95 of "
               "one pass over the embedded text's 860,575 training tokens, so no window is seen twice (the CPU "
               "default's 500 steps make 1.19 passes)."),
    pair("table5_wav2vec2", "Table 5", ("5",), "DyT matches LayerNorm in wav2vec 2.0 pretraining (val loss).",
         ("task=wav2vec2", "trainer.max_steps=1500", "trainer.eval_every=750", "trainer.ckpt_every=750"),
         ("task=wav2vec2", *QUICK), ("layernorm", ("norm=layernorm",), 2.5), ("dyt", ("norm=dyt",), 2.5),
         "Base 1.95 / 1.95, Large 1.92 / 1.91", "equal",
         notes="The loss is in bits per masked frame; read it beside its chance (summary `final`: "
               "`val/loss_chance`), which the codebook sets."),
    chain("table6_hyenadna", "Table 6", ("6",), "DyT matches LayerNorm in HyenaDNA (GenomicBenchmarks accuracy).",
          "hyenadna", "layernorm", (("trainer.max_steps=300", "trainer.eval_every=150", "trainer.ckpt_every=300"), 0.9),
          (("trainer.max_steps=150", "trainer.eval_every=75", "trainer.ckpt_every=150"), 0.5),
          ("task=hyenadna", *QUICK, "task.data.seq_len=128"), "HyenaDNA 85.2 / 85.2", "equal", pretrain_metric_note=" (val loss)"),
    chain("table6_caduceus", "Table 6", ("6",), "DyT matches RMSNorm in Caduceus (GenomicBenchmarks accuracy).",
          "caduceus", "rmsnorm", (("trainer.max_steps=150", "trainer.eval_every=75", "trainer.ckpt_every=150"), 1.0),
          (("trainer.max_steps=100", "trainer.eval_every=50", "trainer.ckpt_every=100"), 0.7),
          ("task=caduceus", *QUICK), "Caduceus 86.9 / 86.9", "equal", base_label="RMSNorm",
          pretrain_metric_note=" (val loss)"),
    pair("appD_resnet", "Appendix D", ("D", "bn", "batchnorm"), "Replacing BatchNorm with DyT fails in ResNet-50.",
         ("task=resnet", "trainer.max_steps=600", "trainer.eval_every=300", "trainer.ckpt_every=600"),
         ("task=resnet", *QUICK), ("batchnorm", ("norm=native",), 1.4), ("dyt", ("norm=dyt",), 1.4),
         "ResNet-50 76.2 / 68.9, VGG19 72.7 / 71.0", "worse", label="DyT against BatchNorm"),
    Claim("table9_norm_free", "Table 9", ("9",),
          "Other normalization-free methods trail DyT (ViT-B top-1, lr searched for each): LN 82.3, Fixup 77.2, "
          "SkipInit 74.1, σReparam 82.5, DyT 82.8.",
          sizing=vit(), quick_sizing=("task=vit", *QUICK),
          arms=(Arm("layernorm", ("norm=layernorm",), VIT_MINUTES), Arm("dyt", ("norm=dyt",), VIT_MINUTES),
                Arm("fixup", ("norm=fixup",), 2.6), Arm("skipinit", ("norm=skipinit",), 3.0),
                Arm("sigma_reparam", ("norm=sigma_reparam",), 2.0)),
          comparisons=(Comparison("dyt", "layernorm", "DyT against LayerNorm", "82.3 / 82.8", "better"),
                       Comparison("fixup", "layernorm", "Fixup against LayerNorm", "82.3 / 77.2", "worse"),
                       Comparison("skipinit", "layernorm", "SkipInit against LayerNorm", "82.3 / 74.1", "worse"),
                       Comparison("sigma_reparam", "layernorm", "σReparam against LayerNorm", "82.3 / 82.5", "better")),
          notes="All at the ViT default's lr (2e-3): the paper searched the lr per method."),
    Claim("fn_ablation", "Table 7 and 8 (squashing function, α)", ("7", "8", "ablation"),
          "tanh > hardtanh > sigmoid; identity diverges; removing α costs accuracy (ViT-B: tanh 82.5, hardtanh 82.2, "
          "sigmoid 81.6; without α 81.1, 80.7, 80.7).",
          sizing=vit(), quick_sizing=("task=vit", *QUICK),
          arms=(Arm("tanh", ("norm=dyt",), VIT_MINUTES),
                Arm("hardtanh", ("norm=dyt", "norm.fn=hardtanh"), VIT_MINUTES),
                Arm("sigmoid", ("norm=dyt", "norm.fn=sigmoid"), VIT_MINUTES),
                Arm("tanh_no_alpha", ("norm=dyt_no_alpha",), VIT_MINUTES),
                Arm("hardtanh_no_alpha", ("norm=dyt_no_alpha", "norm.fn=hardtanh"), VIT_MINUTES),
                Arm("sigmoid_no_alpha", ("norm=dyt_no_alpha", "norm.fn=sigmoid"), VIT_MINUTES),
                Arm("identity", ("norm=identity",), VIT_MINUTES)),
          comparisons=(Comparison("hardtanh", "tanh", "hardtanh against tanh", "ViT-B 82.5 / 82.2", "worse"),
                       Comparison("sigmoid", "tanh", "sigmoid against tanh", "ViT-B 82.5 / 81.6", "worse"),
                       Comparison("tanh_no_alpha", "tanh", "tanh without α against with", "ViT-B 82.5 / 81.1", "worse"),
                       Comparison("hardtanh_no_alpha", "hardtanh", "hardtanh without α against with",
                                  "ViT-B 82.2 / 80.7", "worse"),
                       Comparison("sigmoid_no_alpha", "sigmoid", "sigmoid without α against with",
                                  "ViT-B 81.6 / 80.7", "worse"),
                       Comparison("identity", "tanh", "identity (no norm) against tanh", "ViT-B 82.5 / diverges",
                                  "diverges")),
          quick_arms=("tanh", "identity"),
          equivalent="python train.py -m task=vit sweep=fn_ablation seed=0,1,2 trainer.max_steps=1200"),
    alpha_vit_claim(),
    alpha_grid_claim(),
    tokens_claim(),
    Claim("fig8_alpha_std", "Fig. 8", ("fig8", "figures"),
          "α and 1/std of the DyT input move together; at the end of training α correlates with 1/std across layers.",
          kind="alpha_std", reads=FIGURE_RUNS["dyt"],
          comparisons=tuple(Comparison(f"{source}/{arm}", "", f"Pearson r of final α against final 1/std across layers "
                                       f"({model})", "ViT-B: α tracks 1/std (figure, no number)", "positive")
                            for (source, arm), model in zip(FIGURE_RUNS["dyt"], FIGURE_MODELS)),
          notes="Read from the DyT runs of Tables 1, 5 and 3 (their metrics.jsonl: `alpha/<layer>`, `input_std/<layer>`); "
                "r per seed, its mean and 95% t-interval over seeds. The figures are seed 0's "
                "(`python scripts/plot_alpha_std.py`)."),
    Claim("fig2_4_ln_mapping", "Fig. 2 and 4", ("fig2", "fig4", "figures"),
          "A trained LayerNorm's input–output mapping is nearly linear in early layers and S-shaped (tanh-like) in "
          "deeper ones.",
          kind="ln_mapping", reads=FIGURE_RUNS["layernorm"],
          comparisons=tuple(Comparison(f"{source}/{arm}", "", f"tanh-likeness of the deepest captured LayerNorm "
                                       f"against the first ({model})",
                                       "ViT-B, wav2vec 2.0: early layers linear, deeper S-shaped (figure, no number)",
                                       "positive")
                            for (source, arm), model in zip(FIGURE_RUNS["layernorm"], FIGURE_MODELS)),
          notes="From the LayerNorm runs' checkpoints of Tables 1 and 5 (`outputs/reproduce/…`; DiT's are not captured: "
                "its task has no validation forward pass to hook): one validation batch "
                "through four LayerNorms (`scripts/plot_ln_mapping.py`). Tanh-likeness: R² of the best fit "
                "y ≈ c·tanh(kx) minus R² of the best line, y the LayerNorm's output before its affine; Δ is the last "
                "layer's minus the first's, per seed. Computed while the checkpoints exist and kept in "
                "`ln_mapping.json` beside the figures, so a clone without the run folders still shows them."),
)

# ---------------------------------------------------------------------------------------------------------
# Runs: one per (claim, arm, seed); runs with the same overrides and seed train once
# ---------------------------------------------------------------------------------------------------------


def merge_overrides(*groups) -> tuple[str, ...]:
    """Overrides in order; a later value of the same key replaces an earlier one (Hydra refuses duplicates)."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            merged[item.split("=", 1)[0]] = item
    return tuple(merged.values())


@dataclass
class RunSpec:
    claim: str
    arm: str
    seed: int
    overrides: tuple[str, ...]          # as the user types them, seed included; without folders
    minutes: float
    after: "RunSpec | None" = None

    @property
    def key(self) -> tuple:
        """What makes two runs the same run: their overrides, and the run they start from."""
        return (tuple(sorted(self.overrides)), self.after.key if self.after else None)

    @property
    def name(self) -> str:
        return f"{self.claim}/{self.arm}/seed{self.seed}"


class Plan:
    """Every run of the claims, where its folder and record live, and which must train."""

    def __init__(self, claims, seeds: int, quick: bool, results: Path, outputs: Path):
        self.claims, self.seeds, self.quick = claims, seeds, quick
        self.results, self.outputs = results, outputs
        self.records = results / "reproduce"
        self.specs: dict[tuple[str, str, int], RunSpec] = {}
        for claim in claims:
            for arm in self.arms(claim):
                for seed in range(seeds):
                    self._spec(claim, arm, seed)
        self.canonical: dict[tuple, RunSpec] = {}  # the first spec of each distinct run: its outputs folder
        for spec in self.specs.values():
            self.canonical.setdefault(spec.key, spec)
        self._records: dict[Path, tuple] = {}

    def forget(self) -> None:
        """Records changed on disk: read them again."""
        self._records.clear()

    def arms(self, claim: Claim) -> list[Arm]:
        if self.quick and claim.quick_arms is not None:
            return [a for a in claim.arms if a.name in claim.quick_arms]
        return list(claim.arms)

    def _spec(self, claim: Claim, arm: Arm, seed: int) -> RunSpec:
        index = (claim.id, arm.name, seed)
        if index in self.specs:
            return self.specs[index]
        after = self._spec(claim, claim.arm(arm.after), seed) if arm.after else None
        if self.quick:  # the debug sizing wins over an arm's own steps (a chain's stages carry theirs)
            own = arm.quick if arm.quick is not None else arm.overrides
            overrides = merge_overrides(claim.quick_sizing, own, claim.quick_sizing, (f"seed={seed}",))
        else:
            overrides = merge_overrides(claim.sizing, arm.overrides, (f"seed={seed}",))
        spec = RunSpec(claim.id, arm.name, seed, overrides, 0.15 if self.quick else arm.minutes, after)
        self.specs[index] = spec
        return spec

    def record_dir(self, spec: RunSpec) -> Path:
        """One record per distinct run, under the first claim that lists it; its twins in other claims read it."""
        first = self.canonical[spec.key]
        return self.records / first.claim / first.arm / f"seed{first.seed}"

    def run_dir(self, spec: RunSpec) -> Path:
        first = self.canonical[spec.key]
        return self.outputs / first.claim / first.arm / f"seed{first.seed}"

    def command(self, spec: RunSpec, *, launcher: str = "local", launcher_args: tuple[str, ...] = ()) -> list[str]:
        extra = [f"init_from={_shown(self.run_dir(spec.after))}"] if spec.after else []
        folder = _shown(self.run_dir(spec))
        if launcher == "slurm":  # one sweep point through the repo's submitit launcher (blocks until the job ends)
            parent, leaf = folder.rsplit("/", 1)
            return [sys.executable, "train.py", "-m", "hydra/launcher=slurm", *launcher_args, *spec.overrides, *extra,
                    "logger=none", f"hydra.sweep.dir={parent}", f"hydra.sweep.subdir={leaf}"]
        return ["python", "train.py", *spec.overrides, *extra, "logger=none", f"hydra.run.dir={folder}"]

    def record(self, spec: RunSpec) -> tuple[Run | None, dict]:
        folder = self.record_dir(spec)
        if folder not in self._records:
            if (folder / "summary.json").exists():
                meta = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
                self._records[folder] = (load_run(folder), meta)
            else:
                self._records[folder] = (None, {})
        return self._records[folder]

    def state(self, spec: RunSpec) -> str:
        """recorded | stale (recorded with other overrides) | failed | missing"""
        run, meta = self.record(spec)
        if run is None:
            return "missing"
        if sorted(meta.get("overrides", ())) != sorted(spec.overrides):
            return "stale"
        return "recorded" if run.status in FINAL else "failed"

    def runs_of(self, claim_id: str, arm: str) -> list[Run]:
        return [run for seed in range(self.seeds) if (spec := self.specs.get((claim_id, arm, seed)))
                and (run := self.record(spec)[0]) is not None]


def _shown(path: Path) -> str:
    """A path as the page and the commands show it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def has_checkpoint(folder: Path) -> bool:
    from dyt.train.checkpoint import latest_checkpoint

    return (folder / "checkpoints").exists() and latest_checkpoint(folder / "checkpoints") is not None


def to_train(plan: Plan, selected: list[Claim]) -> list[RunSpec]:
    """The distinct runs the selected claims still need (missing, stale or failed records), with the pretraining
    runs they start from whose checkpoint is gone."""
    wanted: list[RunSpec] = []
    names = {c.id for c in selected}
    reads = {(c_id, arm) for c in selected for c_id, arm in c.reads}
    for spec in plan.specs.values():
        if spec.claim in names or (spec.claim, spec.arm) in reads:
            wanted.append(spec)
    needed: dict[tuple, RunSpec] = {}

    def need(spec: RunSpec) -> None:
        if spec.key in needed:
            return
        if spec.after and not has_checkpoint(plan.run_dir(spec.after)):
            need(spec.after)
        needed[spec.key] = plan.canonical[spec.key]

    for spec in wanted:
        if plan.state(spec) != "recorded":
            need(spec)
    grown = True
    while grown:  # a run that trains again takes what starts from it along (a fine-tuning of the old weights is stale)
        grown = False
        for spec in plan.specs.values():
            if spec.after and spec.after.key in needed and spec.key not in needed:
                need(spec)
                grown = True
    return list(needed.values())


def train_one(plan: Plan, spec: RunSpec, launcher: str, launcher_args: tuple[str, ...]) -> tuple[RunSpec, int, float]:
    """Run one training command and keep its records. A folder left by an interrupted run of the same command
    resumes; one whose run had finished (its record was deleted: run it again) starts afresh."""
    folder = plan.run_dir(spec)
    marker = folder / "reproduce.json"
    if folder.exists():
        previous = json.loads(marker.read_text()) if marker.exists() else {}
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
        if sorted(previous.get("overrides", ())) != sorted(spec.overrides) or summary.get("status") in (*FINAL, "failed"):
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"overrides": list(spec.overrides)}) + "\n")
    command = plan.command(spec, launcher=launcher, launcher_args=launcher_args)
    argv = [sys.executable, *command[1:]] if command[0] == "python" else command
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    if launcher == "local_parallel":
        env["OMP_NUM_THREADS"] = "1"  # two runs, one core each
    started = time.monotonic()
    with open(folder / "stdout.log", "w") as log:
        code = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    elapsed = time.monotonic() - started
    target = plan.record_dir(spec)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in RECORD_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, target / name)
    shown = [c if i else "python" for i, c in enumerate(command)]
    (target / "run.json").write_text(json.dumps({
        "overrides": list(spec.overrides), "command": shlex.join(shown), "exit_code": code,
        "process_seconds": round(elapsed, 1), "launcher": launcher}, indent=1) + "\n")
    return spec, code, elapsed


def execute(plan: Plan, runs: list[RunSpec], launcher: str, jobs: int, launcher_args: tuple[str, ...]) -> int:
    """Train the runs, each after the run it starts from; `jobs` at a time. Returns how many failed."""
    if not runs:
        return 0
    pending = {r.key: r for r in runs}
    left = sum(r.minutes for r in runs)  # estimated run-minutes not yet done
    broken: set = set()  # runs that failed: what starts from them cannot run
    failed = 0
    running: dict = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for key, spec in list(pending.items()):
                if len(running) >= jobs:
                    break
                if spec.after and spec.after.key in broken:
                    del pending[key]
                    broken.add(key)
                    failed += 1
                    print(f"[reproduce] SKIPPED {spec.name}: the run it starts from failed", flush=True)
                    continue
                if spec.after and (spec.after.key in pending or spec.after.key in running.values()):
                    continue
                del pending[key]
                print(f"[reproduce] start  {spec.name}: {shlex.join(plan.command(spec, launcher=launcher, launcher_args=launcher_args))}",
                      flush=True)
                running[pool.submit(train_one, plan, spec, launcher, launcher_args)] = key
            if not running:  # what is left waits on a run that failed to start: nothing more can run
                break
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                spec, code, elapsed = future.result()
                plan.forget()
                status = (plan.record(spec)[0].status if plan.record(spec)[0] else "no summary")
                left -= spec.minutes
                print(f"[reproduce] {'done ' if code == 0 else 'FAILED'} {spec.name}: {status}, {elapsed / 60:.1f} min"
                      + (f", exit {code}, log {_shown(plan.run_dir(spec) / 'stdout.log')}" if code else "")
                      + f"; {len(pending) + len(running)} runs left, ~{max(left, 0) / jobs:.0f} min", flush=True)
                failed += code != 0
                if code != 0:
                    broken.add(key)
    return failed


# ---------------------------------------------------------------------------------------------------------
# Statistics and verdicts
# ---------------------------------------------------------------------------------------------------------


def headline_info(runs: list[Run]) -> tuple[str, bool]:
    headline = next((r.headline for r in runs if r.headline.get("name")), {})
    return headline.get("name", "headline"), headline.get("higher_is_better", True)


def fmt_paired(paired: Paired | None, digits: str = ".3g") -> str:
    if paired is None:
        return "–"
    if paired.n == 1:
        return f"{paired.mean:+{digits}} (1 seed)"
    return f"{paired.mean:+{digits}} [{paired.low:+{digits}}, {paired.high:+{digits}}]"


def pair_verdict(paired: Paired | None, higher_is_better: bool, paper: str, who: str) -> str:
    """Plain words: the paper's direction (paper: better | worse | equal for the treatment) against ours."""
    if paired is None:
        return "no paired seeds yet"
    if paired.n < 2:
        return "one seed: no verdict"
    if not paired.excludes_zero:
        return "no difference at this scale" + (" (the paper: equal)" if paper == "equal" else "")
    ours = "better" if (paired.mean > 0) == higher_is_better else "worse"
    if paper == "equal":
        return f"{who} {ours} here; the paper has them equal"
    return ("same direction as the paper" if ours == paper else "opposite") + f" ({who} {ours})"


def sign_verdict(paired: Paired | None, expected: int) -> str:
    """For a statistic whose sign the paper predicts (expected +1 or −1)."""
    if paired is None:
        return "no paired seeds yet"
    if paired.n < 2:
        return "one seed: no verdict"
    if not paired.excludes_zero:
        return "no difference at this scale"
    return "same direction as the paper" if (paired.mean > 0) == (expected > 0) else "opposite"


def slope(xs: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of ys against xs; None without two distinct xs."""
    if len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, ys).slope


def plane(points: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """Least-squares (b, c) of z ≈ a + b·x + c·y."""
    import numpy as np

    if len(points) < 3:
        return None
    a = np.array([[1.0, x, y] for x, y, _ in points])
    z = np.array([p[2] for p in points])
    if np.linalg.matrix_rank(a) < 3:
        return None
    coef, *_ = np.linalg.lstsq(a, z, rcond=None)
    return float(coef[1]), float(coef[2])


def describe_arm(runs: list[Run]) -> str:
    """mean ± std of the completed runs' final headline, and what did not complete."""
    if not runs:
        return "not run yet"
    finals = list(final_by_seed(runs).values())
    text = _mean_std(finals) if finals else "–"
    diverged = [r for r in runs if r.status == "diverged"]
    other = [r for r in runs if r.status not in FINAL]
    if diverged:
        text += f" ({len(diverged)} diverged, step {', '.join(str(r.summary.get('steps')) for r in diverged)})"
    if other:
        text += f" ({len(other)} {', '.join(sorted({r.status for r in other}))})"
    return text


# ---------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    claim: Claim
    what: str
    paper: str
    ours: str
    delta: str
    n: str
    verdict: str


class Report:
    def __init__(self, plan: Plan, figures: Path, regenerate_figures: bool = True):
        self.plan, self.figures, self.regenerate = plan, figures, regenerate_figures
        self.sections: list[str] = []
        self.rows: list[Row] = []

    def rel(self, path: Path) -> str:
        """A link from the page (results/REPORT.md) to a file under results/."""
        return os.path.relpath(path, self.plan.results)

    def not_run(self, claim: Claim) -> bool:
        reads = claim.reads or [(claim.id, a.name) for a in self.plan.arms(claim)]
        return not any(self.plan.runs_of(source, arm) for source, arm in reads)

    def build(self) -> str:
        for claim in self.plan.claims:
            if self.not_run(claim):
                command = f"python scripts/reproduce.py --tables {claim.id}"
                for comparison in claim.comparisons:
                    self.rows.append(Row(claim, comparison.label, comparison.paper_numbers,
                                         f"not run yet (command: `{command}`)", "–", "0", "not run yet"))
                self.sections.append(self.section_head(claim) + f"Not run yet: `{command}`.\n")
                continue
            getattr(self, f"claim_{claim.kind}")(claim)
        return self.page()

    # --- per kind ---
    def section_head(self, claim: Claim) -> str:
        lines = [f'<a id="{claim.id}"></a>', f"### {claim.id} — {claim.source}", "", claim.statement, ""]
        if claim.arms:
            example = next(s for s in self.plan.specs.values() if s.claim == claim.id)
            # a chain: the run that starts from it too (its init_from names the first's folder)
            examples = [example, *(s for s in self.plan.specs.values() if s.after is example)]
            lines += ["Runs: " + ", ".join(f"`{a.name}`" for a in self.plan.arms(claim))
                      + f"; seeds 0–{self.plan.seeds - 1}. "
                      + ("One run, as typed:" if len(examples) == 1 else "One chain, as typed:"), "",
                      "```bash", *(shlex.join(self.plan.command(e)) for e in examples), "```", ""]
            lines.append(f"Records: [`{self.rel(self.plan.records / claim.id)}/`]({self.rel(self.plan.records / claim.id)}/)"
                         f" (each run's summary.json, metrics.jsonl, config.yaml). "
                         f"All of it: `python scripts/reproduce.py --tables {claim.id}`.")
            if claim.equivalent:
                lines.append(f"The same as a user's sweep: `{claim.equivalent}`.")
            lines.append("")
        if claim.notes:
            lines += [claim.notes, ""]
        return "\n".join(lines) + "\n"

    def arm_table(self, claim: Claim) -> str:
        lines = ["| arm | overrides | seeds | status | final headline (mean ± std) | wall min (sum) |", "|---|---|---|---|---|---|"]
        for arm in self.plan.arms(claim):
            runs = self.plan.runs_of(claim.id, arm.name)
            spec = self.plan.specs[(claim.id, arm.name, 0)]
            statuses = defaultdict(int)
            for r in runs:
                statuses[r.status] += 1
            status = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "not run yet"
            minutes = sum(r.summary.get("wall_seconds") or 0 for r in runs) / 60
            shown = f"`{' '.join(o for o in spec.overrides if not o.startswith('seed='))}`"
            first = self.plan.canonical[spec.key]
            if first is not spec:
                shown += f" ({first.claim}'s `{first.arm}` runs)"
            lines.append(f"| `{arm.name}` | {shown} | {len(runs)} | {status} | {describe_arm(runs)} | {minutes:.1f} |")
        return "\n".join(lines) + "\n"

    def claim_pairs(self, claim: Claim) -> None:
        text = [self.section_head(claim)]
        name, higher = headline_info([r for a in claim.arms for r in self.plan.runs_of(claim.id, a.name)])
        for comparison in claim.comparisons:
            treated = self.plan.runs_of(claim.id, comparison.treatment)
            base = self.plan.runs_of(claim.id, comparison.baseline)
            name_c, higher_c = headline_info(treated + base)
            ours = (f"{comparison.baseline} {describe_arm(base)}; {comparison.treatment} {describe_arm(treated)} "
                    f"({name_c} {'↑' if higher_c else '↓'})")
            if comparison.paper == "diverges":
                diverged = sum(r.status == "diverged" for r in treated)
                verdict = ("not run yet" if not treated
                           else "same direction as the paper (diverged in every seed)" if diverged == len(treated)
                           else f"opposite ({len(treated) - diverged} of {len(treated)} trained)" if diverged == 0
                           else f"diverged in {diverged} of {len(treated)} seeds")
                self.rows.append(Row(claim, comparison.label, comparison.paper_numbers, ours, "–", str(len(treated)),
                                     verdict))
                continue
            paired = paired_statistics(paired_differences(treated, base))
            who = "DyT" if comparison.treatment.startswith("dyt") else comparison.treatment.replace("_", " ")
            verdict = pair_verdict(paired, higher_c, comparison.paper, who)
            diverged = {arm: sum(r.status == "diverged" for r in rs) for arm, rs in
                        ((comparison.treatment, treated), (comparison.baseline, base))}
            if any(diverged.values()):  # never hidden: the seeds a diverged run leaves out of the interval
                verdict += "; diverged: " + ", ".join(f"{arm} {n} of {len(rs)}" for (arm, n), rs in
                                                     zip(diverged.items(), (treated, base)) if n)
            self.rows.append(Row(claim, comparison.label, comparison.paper_numbers, ours, fmt_paired(paired),
                                 str(paired.n if paired else 0), verdict))
        text.append(self.arm_table(claim))
        text.append(self.compare_figures(claim))
        self.sections.append("\n".join(text))

    def compare_figures(self, claim: Claim) -> str:
        """compare.py's table and curves per stage (chains: pretraining and fine-tuning apart)."""
        from compare import compare

        stages = defaultdict(list)
        for arm in self.plan.arms(claim):
            stages[arm.name.rsplit("_", 1)[1] if arm.after or any(b.after == arm.name for b in claim.arms) else ""].append(arm)
        links = []
        for stage, arms in sorted(stages.items()):
            runs = [r for a in arms for r in self.plan.runs_of(claim.id, a.name)]
            if not runs:
                continue
            out = self.figures / (claim.id + (f"_{stage}" if stage else ""))
            if self.regenerate:
                compare(runs, out, [self.rel(self.plan.records / claim.id)])
            links.append(f"[table]({self.rel(out / 'table.md')}) and [curves]({self.rel(out / 'curves.png')})"
                         + (f" ({stage})" if stage else ""))
        return ("compare.py's " + ", ".join(links) + ".\n") if links else ""

    def claim_alpha_lines(self, claim: Claim) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        lines = defaultdict(list)
        for arm in self.plan.arms(claim):
            lines[arm.meta["line"]].append(arm)
        all_runs = [r for a in claim.arms for r in self.plan.runs_of(claim.id, a.name)]
        name, higher = headline_info(all_runs)
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        best, slopes = {}, {}
        table = [f"| line | " + " | ".join(f"α₀ {a:g}" for a in ALPHAS_VIT) + " | best α₀ |",
                 "|---|" + "---|" * (len(ALPHAS_VIT) + 1)]
        for line, arms in lines.items():
            xs, means, stds, cells = [], [], [], []
            per_seed = defaultdict(list)
            for alpha in ALPHAS_VIT:
                arm = next((a for a in arms if a.meta["alpha"] == alpha), None)
                runs = self.plan.runs_of(claim.id, arm.name) if arm else []
                cells.append(describe_arm(runs) if runs else "–")
                finals = final_by_seed(runs)
                for seed, value in finals.items():
                    per_seed[seed].append((math.log2(alpha), value if higher else -value))
                if finals:
                    xs.append(alpha)
                    means.append(statistics.mean(finals.values()))
                    stds.append(statistics.stdev(finals.values()) if len(finals) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=line)
                pick = max if higher else min
                best[line] = xs[means.index(pick(means))]
            slopes[line] = {seed: s for seed, pts in per_seed.items() if (s := slope(*zip(*pts)) if len(pts) > 1 else None) is not None}
            table.append(f"| {line} | " + " | ".join(cells) + f" | {best.get(line, '–')} |")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("α₀")
        ax.set_ylabel(f"final {name} ({'higher' if higher else 'lower'} is better), mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("ViT: headline against α₀")
        path = self.figures / claim.id / "alpha_sensitivity.png"
        self._save(fig, path)
        plt.close(fig)
        for comparison in claim.comparisons:
            a, b = slopes.get(comparison.treatment, {}), slopes.get(comparison.baseline, {})
            paired = paired_statistics([a[s] - b[s] for s in sorted(a) if s in b])
            ours = (f"best α₀ {best.get(comparison.treatment, '–')} ({comparison.treatment}) against "
                    f"{best.get(comparison.baseline, '–')} ({comparison.baseline})")
            self.rows.append(Row(claim, comparison.label, comparison.paper_numbers, ours,
                                 "slope Δ " + fmt_paired(paired), str(paired.n if paired else 0),
                                 sign_verdict(paired, -1)))
        self.sections.append(self.section_head(claim) + "\n".join(table) + "\n\n"
                             + f"![α₀ sensitivity]({self.rel(path)})\n")

    def claim_alpha_grid(self, claim: Claim) -> None:
        from compare import plot_heatmap

        text = [self.section_head(claim)]
        widths = sorted({a.meta["width"] for a in self.plan.arms(claim)})
        coefficients: dict[int, dict] = {}
        summary = {}
        for width in widths:
            arms = [a for a in self.plan.arms(claim) if a.meta["width"] == width and "attn" in a.meta]
            runs = [r for a in arms for r in self.plan.runs_of(claim.id, a.name)]
            baseline = self.plan.runs_of(claim.id, f"w{width}_rmsnorm")
            name, higher = headline_info(runs + baseline)
            per_seed = defaultdict(list)
            means = {}
            for arm in arms:
                finals = final_by_seed(self.plan.runs_of(claim.id, arm.name))
                if finals:
                    means[(arm.meta["attn"], arm.meta["other"])] = statistics.mean(finals.values())
                for seed, value in finals.items():
                    per_seed[seed].append((math.log2(arm.meta["attn"]), math.log2(arm.meta["other"]),
                                           value if higher else -value))
            coefficients[width] = {s: bc for s, pts in per_seed.items() if (bc := plane(pts)) is not None}
            if means:
                pick = max if higher else min
                cell = pick(means, key=means.get)
                summary[width] = (f"best attention / other α₀ {cell[0]:g} / {cell[1]:g} ({name} {means[cell]:.4g}); "
                                  f"RMSNorm {describe_arm(baseline)}")
            completed = [r for r in runs if r.status == "completed"]
            if self.regenerate and completed:
                out = self.figures / claim.id / f"w{width}"
                out.mkdir(parents=True, exist_ok=True)
                plot_heatmap(runs, ["norm.alpha_init.attn", "norm.alpha_init.ffn"], out)
            heatmap = self.figures / claim.id / f"w{width}" / "heatmap.png"
            if heatmap.exists():
                text.append(f"Width {width}: {summary.get(width, '–')}\n\n![heatmap width {width}]({self.rel(heatmap)})\n")
        text.append(self.arm_table(claim))
        for comparison in claim.comparisons:
            if comparison.treatment == "attn":
                width = int(comparison.label.rsplit("width ", 1)[1].rstrip(")"))
                coef = coefficients.get(width, {})
                # in goodness units (up is better): attention preferring larger α₀ makes its slope the larger
                paired = paired_statistics([b - c for s, (b, c) in sorted(coef.items())])
                self.rows.append(Row(claim, comparison.label, comparison.paper_numbers, summary.get(width, "–"),
                                     "slope Δ " + fmt_paired(paired), str(paired.n if paired else 0),
                                     sign_verdict(paired, +1)))
            else:
                narrow, wide = coefficients.get(widths[0], {}), coefficients.get(widths[-1], {})
                paired = paired_statistics([sum(wide[s]) - sum(narrow[s]) for s in sorted(wide) if s in narrow])
                self.rows.append(Row(claim, comparison.label, comparison.paper_numbers,
                                     "; ".join(f"width {w}: {summary.get(w, '–')}" for w in widths),
                                     "slope Δ " + fmt_paired(paired), str(paired.n if paired else 0),
                                     sign_verdict(paired, -1)))
        self.sections.append("\n".join(text))

    def claim_tokens_per_param(self, claim: Claim) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps_of = sorted({a.meta["quick_steps" if self.plan.quick else "steps"] for a in self.plan.arms(claim)})
        points, gaps = [], defaultdict(dict)
        table = ["| steps | tokens | tokens / parameter | passes over the text | RMSNorm val loss | DyT val loss | "
                 "DyT − RMSNorm (95% CI) | relative | n |", "|---|---|---|---|---|---|---|---|---|"]
        for arm_steps in steps_of:
            name = next(a.name for a in self.plan.arms(claim) if a.meta["norm"] == "rmsnorm"
                        and a.meta["quick_steps" if self.plan.quick else "steps"] == arm_steps)
            base = self.plan.runs_of(claim.id, name)
            treated = self.plan.runs_of(claim.id, name.replace("rmsnorm", "dyt", 1))
            ran = [r for r in base + treated if r.summary.get("steps")]
            if not ran:
                continue
            steps = max(r.summary["max_steps"] for r in ran)
            tokens = steps * int(ran[0].config.get("trainer.batch_size", 16)) * int(ran[0].config.get("task.data.seq_len", 128))
            params = statistics.mean(r.summary["params"] for r in ran)
            ratio = tokens / params
            mine, theirs = final_by_seed(treated), final_by_seed(base)
            for seed in mine:
                if seed in theirs:
                    gaps[seed][ratio] = mine[seed] - theirs[seed]
            paired = paired_statistics(paired_differences(treated, base))
            points.append((ratio, paired))
            # the critique states the gap relative to the baseline's loss (27.3% better, 18.8% worse)
            relative = f"{100 * paired.mean / statistics.mean(theirs.values()):+.1f}%" if paired and theirs else "–"
            table.append(f"| {steps} | {tokens:,} | {ratio:.3g} | {tokens / TRAIN_TOKENS:.2f} | {describe_arm(base)} | "
                         f"{describe_arm(treated)} | {fmt_paired(paired)} | {relative} | {paired.n if paired else 0} |")
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        shown = [(r, p) for r, p in points if p is not None]
        if shown:
            ax.errorbar([r for r, _ in shown], [p.mean for _, p in shown],
                        yerr=[[p.mean - p.low if p.low is not None else 0 for _, p in shown],
                              [p.high - p.mean if p.high is not None else 0 for _, p in shown]],
                        marker="o", capsize=3, label="DyT − RMSNorm, mean and 95% CI over seeds")
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per parameter")
        ax.set_ylabel("val loss gap, DyT − RMSNorm (below 0: DyT better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = self.figures / claim.id / "gap.png"
        self._save(fig, path)
        plt.close(fig)
        slopes = [s for seed in sorted(gaps) if (s := slope([math.log10(r) for r in gaps[seed]], list(gaps[seed].values())))
                  is not None]
        paired = paired_statistics(slopes)
        verdict = sign_verdict(paired, +1)
        if len(shown) >= 2:
            first, last = shown[0][1], shown[-1][1]
            known = None not in (first.low, first.high, last.low, last.high)
            if known and first.high < 0 < last.low:
                verdict += "; the sign flips as reported (DyT better at few tokens, worse at many)"
            elif known and first.low > 0 > last.high:
                verdict += "; the sign flips the other way (DyT worse at few tokens, better at many)"
            else:
                verdict += "; no sign flip at this scale"
        ratios = f"{points[0][0]:.3g} to {points[-1][0]:.3g} tokens per parameter" if points else "–"
        ours = "gap " + ", ".join(f"{p.mean:+.3g}" for _, p in shown) + f" over {ratios}" if shown else "–"
        for comparison in claim.comparisons:
            self.rows.append(Row(claim, comparison.label, comparison.paper_numbers, ours,
                                 "slope " + fmt_paired(paired) + " per decade", str(paired.n if paired else 0), verdict))
        self.sections.append(self.section_head(claim) + "\n".join(table) + "\n\n" + f"![the gap]({self.rel(path)})\n")

    def claim_alpha_std(self, claim: Claim) -> None:
        import numpy as np

        figures = []
        for comparison in claim.comparisons:
            source, arm = comparison.treatment.split("/")
            runs = self.plan.runs_of(source, arm)
            if not runs:
                self.rows.append(Row(claim, comparison.label, comparison.paper_numbers,
                                     f"not run yet (command: `python scripts/reproduce.py --tables {source}`)", "–", "0",
                                     "not run yet"))
                continue
            rs = []
            for run in runs:
                layers = list(dict.fromkeys(k[len("alpha/"):] for row in run.metrics for k in row if k.startswith("alpha/")))
                layers = [layer for layer in layers if run.series(f"input_std/{layer}")[0]]
                if len(layers) > 2:
                    alpha = [run.series(f"alpha/{layer}")[1][-1] for layer in layers]
                    inverse = [1 / run.series(f"input_std/{layer}")[1][-1] for layer in layers]
                    rs.append(float(np.corrcoef(inverse, alpha)[0, 1]))
            rs = [r for r in rs if math.isfinite(r)]
            paired = paired_statistics(rs)
            out = self.figures / claim.id / source
            if self.regenerate:
                from plot_alpha_std import plot

                try:
                    plot(runs[0].path, out)
                except (Exception, SystemExit) as err:  # the page is still written, saying what failed
                    figures.append(f"{source}: no figure ({type(err).__name__}: {err}).\n")
            figures.append(f"![α against 1/std, {source}]({self.rel(out / 'alpha_std.png')})\n")
            self.rows.append(Row(claim, comparison.label, comparison.paper_numbers,
                                 ("r per seed: " + ", ".join(f"{r:.2f}" for r in rs)) if rs else "no DyT layers logged",
                                 "mean r " + fmt_paired(paired, ".2f"), str(paired.n if paired else 0),
                                 sign_verdict(paired, +1)))
        self.sections.append(self.section_head(claim) + "".join(figures))

    def claim_ln_mapping(self, claim: Claim) -> None:
        text = [self.section_head(claim)]
        for comparison in claim.comparisons:
            source, arm = comparison.treatment.split("/")
            out = self.figures / claim.id / source
            saved = out / "ln_mapping.json"
            folders = [self.plan.run_dir(self.plan.specs[(source, arm, seed)]) for seed in range(self.plan.seeds)]
            available = [f for f in folders if has_checkpoint(f)]
            kept = json.loads(saved.read_text()) if saved.exists() else {}
            if self.regenerate and available and len(available) >= len(kept.get("seeds", {})):
                from plot_ln_mapping import plot

                try:
                    kept = {"seeds": {str(seed): tanh_likeness(folder) for seed, folder in enumerate(folders)
                                      if folder in available}}
                    plot(available[0], out)
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    saved.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
                except (Exception, SystemExit) as err:  # the page is still written, saying what failed
                    text.append(f"{source}: not computed ({type(err).__name__}: {err}).\n")
            seeds = kept.get("seeds", {})
            if not available and not seeds:  # (numbers kept from when they were here read the same on any machine)
                text.append(f"{source}: the run folders with checkpoints (`{_shown(folders[0].parent)}/`) are not on this "
                            f"machine: nothing to compute; `python scripts/reproduce.py --tables {source}` makes them "
                            "(it keeps the run folders).\n")
            differences = [v["layers"][-1]["tanh_minus_linear"] - v["layers"][0]["tanh_minus_linear"]
                           for _, v in sorted(seeds.items())]
            paired = paired_statistics(differences)
            if seeds:
                table = [f"{source}:", "", "| seed | layer | R² line | R² c·tanh(kx) | tanh − line |", "|---|---|---|---|---|"]
                for seed, value in sorted(seeds.items()):
                    for layer in value["layers"]:
                        table.append(f"| {seed} | `{layer['path']}` | {layer['r2_linear']:.3f} | {layer['r2_tanh']:.3f} | "
                                     f"{layer['tanh_minus_linear']:+.3f} |")
                text.append("\n".join(table) + "\n")
            text += [f"![LayerNorm input against output, {source}, by {k}]({self.rel(out / f'ln_mapping_{k}.png')})\n"
                     for k in ("tokens", "channels") if (out / f"ln_mapping_{k}.png").exists()]
            ours = ", ".join(f"seed {s}: first {v['layers'][0]['tanh_minus_linear']:+.3f}, last "
                             f"{v['layers'][-1]['tanh_minus_linear']:+.3f}" for s, v in sorted(seeds.items()))
            if not seeds:
                ours = (f"not run yet (command: `python scripts/reproduce.py --tables {source}`)"
                        if not self.plan.runs_of(source, arm) else "needs the run folders with checkpoints")
            self.rows.append(Row(claim, comparison.label, comparison.paper_numbers, ours, fmt_paired(paired),
                                 str(paired.n if paired else 0),
                                 sign_verdict(paired, +1) if seeds else "not run yet" if "not run" in ours
                                 else "needs the run folders with checkpoints"))
        self.sections.append("\n".join(text))

    def _save(self, fig, path: Path) -> None:
        if self.regenerate:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)

    # --- assembly ---
    def summary_table(self, link_prefix: str = "") -> str:
        lines = ["| claim | paper | the paper's numbers | ours (mean ± std over seeds) | Δ, 95% CI over paired seeds | "
                 "n | verdict |", "|---|---|---|---|---|---|---|"]
        for row in self.rows:
            lines.append(f"| [{row.claim.id}]({link_prefix}#{row.claim.id}): {row.what} | {row.claim.source} | "
                         f"{row.paper} | {row.ours} | {row.delta} | {row.n} | {row.verdict} |")
        return "\n".join(lines)

    def compute_table(self) -> str:
        lines = ["| claim | runs recorded / planned | wall minutes (records' `wall_seconds`) | process minutes | "
                 "estimated minutes |", "|---|---|---|---|---|"]
        seen, total_wall, total_process, total_estimate = set(), 0.0, 0.0, 0.0
        for claim in self.plan.claims:
            specs = [s for s in self.plan.specs.values() if s.claim == claim.id]
            if not specs:
                lines.append(f"| {claim.id} | reads " + ", ".join(f"{c}/{a}" for c, a in claim.reads) + " | – | – | 0 |")
                continue
            wall = process = 0.0
            recorded = 0
            for spec in specs:
                run, meta = self.plan.record(spec)
                if run is None:
                    continue
                recorded += 1
                wall += (run.summary.get("wall_seconds") or 0) / 60
                process += (meta.get("process_seconds") or 0) / 60
                if spec.key not in seen:
                    seen.add(spec.key)
                    total_wall += (run.summary.get("wall_seconds") or 0) / 60
                    total_process += (meta.get("process_seconds") or 0) / 60
            estimate = sum(s.minutes for s in specs)
            total_estimate += sum(s.minutes for s in specs if self.plan.canonical[s.key] is s)
            lines.append(f"| {claim.id} | {recorded} / {len(specs)} | {wall:.1f} | {process:.1f} | {estimate:.0f} |")
        lines.append(f"| **total** (each shared run once) | {len(seen)} / {len(self.plan.canonical)} | "
                     f"{total_wall:.1f} | {total_process:.1f} | {total_estimate:.0f} |")
        return "\n".join(lines)

    def page(self) -> str:
        seeds = self.plan.seeds
        head = [
            "# The reproduction report", "",
            "Every claim of the paper (and of its critics) that the suite can test on 2 CPU cores, at a CPU-scale "
            f"analogue, over seeds 0–{seeds - 1}: the paper's numbers beside ours. Made by `python scripts/reproduce.py"
            + (" --quick" if self.plan.quick else "") + "` from the records under "
            f"[`{self.rel(self.plan.records)}/`]({self.rel(self.plan.records)}/) alone (a fresh clone rebuilds this "
            "page without training; `--tables ID` runs what a claim still lacks).", "",
            "Ours: the final headline of each arm, mean ± std over seeds. Δ: treatment minus baseline, seed by seed "
            "(same seed, same initial weights but the norms), with the 95% t-interval over the paired seeds "
            "(`scripts/compare.py`'s statistics). Verdict: *same direction as the paper*, *opposite*, or *no "
            "difference at this scale* (the interval contains 0). Diverged runs are counted, never dropped. The "
            "paper's numbers are at full scale (ImageNet, The Pile …); ours are the embedded data's.", "",
            "## Summary", "", self.summary_table(), "",
            "## Compute", "", "Minutes of one run on one core beside another job; `--launcher local_parallel` runs "
            "two at once, so the wall-clock time is about half the sum.", "", self.compute_table(), "",
            "## Claims", ""]
        return "\n".join(head) + "\n" + "\n".join(self.sections)


def tanh_likeness(folder: Path, n_layers: int = 4, samples: int = 20000) -> dict:
    """Per captured LayerNorm: R² of the best line and of the best c·tanh(kx) through its (input, output before
    the affine) points, one validation batch of the run's checkpoint."""
    import numpy as np
    import torch

    from plot_ln_mapping import capture

    torch.manual_seed(0)
    layers = []
    for path, x, y in capture(folder, n_layers, 16):
        x, y = x.numpy().ravel(), y.numpy().ravel()
        pick = np.random.default_rng(0).choice(x.size, size=min(x.size, samples), replace=False)
        x, y = x[pick].astype(np.float64), y[pick].astype(np.float64)
        total = float(((y - y.mean()) ** 2).sum())
        line = np.polyfit(x, y, 1)
        r2_line = 1 - float(((y - np.polyval(line, x)) ** 2).sum()) / total
        best = -math.inf
        scale = 1 / max(float(np.abs(x).std()), 1e-8)
        for k in scale * np.logspace(-2, 1.5, 60):
            t = np.tanh(k * x)
            c = float((t * y).sum() / max((t * t).sum(), 1e-12))
            best = max(best, 1 - float(((y - c * t) ** 2).sum()) / total)
        layers.append({"path": path, "r2_linear": round(r2_line, 4), "r2_tanh": round(best, 4),
                       "tanh_minus_linear": round(best - r2_line, 4)})
    return {"layers": layers}


def update_readme(readme: Path, table: str) -> bool:
    if not readme.exists():
        return False
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    before, rest = text.split(README_BEGIN, 1)
    _, after = rest.split(README_END, 1)
    new = f"{before}{README_BEGIN}\n{table}\n{README_END}{after}"
    if new != text:
        readme.write_text(new)
    return True


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def select(tokens: str | None) -> list[Claim]:
    if not tokens:
        return list(CLAIMS)
    chosen = []
    for token in (t.strip() for t in tokens.split(",") if t.strip()):
        found = [c for c in CLAIMS if token.lower() in (c.id.lower(), *map(str.lower, c.selectors))]
        if not found:
            raise SystemExit(f"error: --tables {token}: no such claim or table; claims: "
                             + ", ".join(c.id for c in CLAIMS) + "; tables: "
                             + ", ".join(sorted({s for c in CLAIMS for s in c.selectors})))
        chosen += [c for c in found if c not in chosen]
    return chosen


def print_plan(plan: Plan, selected: list[Claim], runs: list[RunSpec], jobs: int, launcher: str,
               launcher_args: tuple[str, ...]) -> None:
    train = {r.key for r in runs}
    every: dict[tuple, float] = {}  # each distinct run once, whichever claims list it
    for claim in selected:
        specs = [s for s in plan.specs.values() if s.claim == claim.id
                 or (s.claim, s.arm) in set(claim.reads)]
        new = [s for s in specs if s.key in train and plan.canonical[s.key] is s]
        minutes = sum(s.minutes for s in new)
        full = sum(s.minutes for s in specs if plan.canonical[s.key] is s)
        every.update({s.key: s.minutes for s in specs})
        print(f"\n{claim.id} ({claim.source}): {len(specs)} runs, {len(new)} to train, ~{minutes:.0f} of ~{full:.0f} "
              "estimated minutes")
        for spec in specs:
            state = "train" if spec.key in train and plan.canonical[spec.key] is spec else plan.state(spec)
            if plan.canonical[spec.key] is not spec:
                state += ", the run of " + plan.canonical[spec.key].name
            print(f"  [{state}] ~{spec.minutes:.1f} min  {shlex.join(plan.command(spec, launcher=launcher, launcher_args=launcher_args))}")
    pending, total_all = sum(r.minutes for r in runs), sum(every.values())
    print(f"\nto train: {len(runs)} runs, ~{pending:.0f} run-minutes, ~{pending / jobs:.0f} minutes at {jobs} at a time; "
          f"all selected claims from scratch: ~{total_all:.0f} run-minutes (~{total_all / 2:.0f} min with local_parallel)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", help="comma-separated table/figure numbers or claim ids (default: all)")
    parser.add_argument("--seeds", type=int, help="seeds 0 … N−1 (default 3; --quick: 2)")
    parser.add_argument("--launcher", choices=("local", "local_parallel", "slurm"), default="local")
    parser.add_argument("--jobs", type=int, help="runs at a time (local 1, local_parallel 2, slurm 32)")
    parser.add_argument("--launcher-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="slurm: a hydra.launcher.* override (partition, gpus_per_node …); repeatable")
    parser.add_argument("--quick", action="store_true", help="debug sizes, 4 steps, 2 seeds: the whole path in minutes")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write the page; train nothing")
    parser.add_argument("--results", type=Path, help="records, figures and REPORT.md (default results/)")
    parser.add_argument("--outputs", type=Path, help="the run folders (default outputs/reproduce/)")
    parser.add_argument("--readme", type=Path, help="README whose summary block is rewritten (default: README.md "
                        "when --results is the default)")
    parser.add_argument("--no-figures", action="store_true", help="keep the figures as they are (faster)")
    args = parser.parse_args(argv)
    if args.quick and args.results is None:
        parser.error("--quick writes debug-size numbers: give it --results (and --outputs) outside results/")
    seeds = args.seeds or (2 if args.quick else 3)
    if seeds < 2:
        parser.error("--seeds must be at least 2: the paired interval needs two seeds")
    results = (args.results or ROOT / "results").resolve()
    outputs = (args.outputs or (results.parent / "outputs" / "reproduce" if args.results else ROOT / "outputs" / "reproduce")).resolve()
    readme = args.readme or (ROOT / "README.md" if args.results is None else None)
    jobs = args.jobs or {"local": 1, "local_parallel": 2, "slurm": 32}[args.launcher]
    # one small run per job: one GPU (the launcher config's default is a node of 8), an hour at most
    launcher_args = merge_overrides(SLURM_DEFAULTS, args.launcher_arg) if args.launcher == "slurm" else ()
    selected = select(args.tables)
    plan = Plan(CLAIMS, seeds, args.quick, results, outputs)
    runs = to_train(plan, selected)
    print_plan(plan, selected, runs, jobs, args.launcher, launcher_args)
    failed = 0
    if not args.dry_run:
        failed = execute(plan, runs, args.launcher, jobs, launcher_args)
        plan.forget()
    report = Report(plan, results / "reproduce" / "figures", regenerate_figures=not args.no_figures)
    page = report.build()
    path = results / "REPORT.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != page:
        path.write_text(page)
    print(f"\n{path}")
    if readme and update_readme(readme, report.summary_table(link_prefix=_shown(path))):
        print(f"{readme}: summary block rewritten")
    if failed:
        print(f"{failed} runs failed: their logs are named above; running the command again retries them", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
