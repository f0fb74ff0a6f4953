"""What HyenaDNA and Caduceus share: two stages, pretraining on a genome and fine-tuning a classifier.

`task.stage=pretrain`: windows of the embedded chromosome (or `data.fasta_path`) with reverse-complement
augmentation; the objective is the subclass's (`causal`: next nucleotide; `mlm`: masked nucleotides).
`task.stage=finetune`: coding vs intergenic windows of the embedded chromosome (or the GenomicBenchmarks
dataset at `data.root`), accuracy. Chain the two with `init_from=<pretraining run folder>`: the backbone's
weights load, the classifier is new.

GenomicBenchmarks with `data.split_seed` (the official protocol, scripts/genomic_benchmarks.py): 10 % of
train/ is held out by that seed, the headline `val/acc` is the held-out accuracy, and every evaluation also
scores test/ (`val/test_acc`), so summary.json's `best` holds the test accuracy at the best validation
accuracy: the official early stopping (the best validation checkpoint, then the test set).
"""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from dyt.train.config import ConfigError
from dyt.train.task import Headline, Task

from ..data import genome
from ..data.genome import pad_collate
from . import embed_scale_parameter

STAGES = ("pretrain", "finetune")
DYT_LIKE = ("dyt", "derf")
# metric prefixes of the evaluation sets EvalSplits tags 0, 1: the held-out validation split, then test/
EVAL_SPLITS = ("", "test_")


class GenomeTask(Task):
    objective = "causal"  # or "mlm"
    shard_units = r"blocks\.\d+"  # Hyena and Mamba blocks
    sizes: dict[str, dict] = {}
    collate_fn = staticmethod(pad_collate)

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.stage not in STAGES:
            raise ConfigError(f"task.stage={cfg.stage} is unknown; use pretrain or finetune")
        if cfg.size not in cls.sizes:
            raise ConfigError(f"task.size={cfg.size} is unknown for {cfg.name}; known: {', '.join(cls.sizes)}")
        if cfg.stage == "finetune" and cfg.data.root and not (Path(cfg.data.root) / "train").is_dir():
            raise ConfigError(f"task.data.root={cfg.data.root} has no train/ folder; a GenomicBenchmarks dataset "
                              "has train/<class>/*.txt and test/<class>/*.txt")
        data = cfg.data
        if data.get("require_real_data"):  # a 10k-step paper row never trains on the embedded chromosome by mistake
            needed = ("fasta_path", "bed_path") if cfg.stage == "pretrain" else ("root",)
            missing = [key for key in needed if not data.get(key)]
            if missing:
                example = {"fasta_path": "/data/hg38/hg38.ml.fa", "bed_path": "/data/hg38/human-sequences.bed",
                           "root": "~/.genomic_benchmarks/human_nontata_promoters"}[missing[0]]
                raise ConfigError(f"this configuration trains on real data (task.data.require_real_data): give "
                                  f"task.data.{missing[0]}=<path>, e.g. task.data.{missing[0]}={example}")
        if data.get("crop", "center") not in genome.CROPS:
            raise ConfigError(f"task.data.crop={data.crop} is unknown; use {' or '.join(genome.CROPS)}")
        if data.get("bed_path") and not data.get("fasta_path"):
            raise ConfigError("task.data.bed_path needs task.data.fasta_path, the genome its intervals index "
                              "(e.g. task.data.fasta_path=/data/hg38/hg38.ml.fa)")
        if data.get("bed_path") and genome.BED_EXTENT % data.seq_len:
            raise ConfigError(f"task.data.seq_len={data.seq_len} must divide 2^20 with task.data.bed_path (the "
                              "official loader tiles each interval's 2^20 bp); e.g. task.data.seq_len=1024")
        context = {**cls.sizes[cfg.size], **(cfg.get("model") or {})}.get("max_len")
        window = data.seq_len + (cls.objective == "causal")  # a causal model reads one token more
        if cfg.stage == "pretrain" and context and window > context:
            raise ConfigError(f"task.data.seq_len={data.seq_len} does not fit task.size={cfg.size}'s context of "
                              f"{context}{' (one more token is read)' if window > data.seq_len else ''}; "
                              f"lower it, e.g. task.data.seq_len={context // 2}")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.check_config(cfg)
        self.finetune = cfg.stage == "finetune"
        self.headline = Headline("val/acc", True) if self.finetune else Headline("val/loss", False)
        self.num_classes = None
        if self.finetune:
            self.num_classes = 2 if not cfg.data.root else sum(
                p.is_dir() for p in (Path(cfg.data.root) / "train").iterdir())

    def model_args(self) -> dict:
        """The size preset with `task.model` overrides on top."""
        return {**self.sizes[self.cfg.size], **(self.cfg.get("model") or {})}

    def adapt_to_norm(self, model, norm) -> None:
        """DyT-like norms (`task.embedding_scale`): a learnable scalar after the embedding, initialised so the
        embedding output has RMS 1. It is the paper's LLaMA fix for early activations that are too small
        (there √d·0.02 ≈ 1.3 at width 4096); at width 64, √d gives 0.16. Measured on the embedded benchmark,
        HyenaDNA-DyT trained from scratch for 150 steps: no scale 0.50 accuracy, √d 0.65, unit RMS 0.72
        (LayerNorm 0.79). The paper's runs have no such scale (`experiment=*_pretrain`, `*_genomic_benchmarks`
        set `task.embedding_scale=false`). Shape (1,), not a 0-dim scalar, for FSDP2."""
        if norm.type in DYT_LIKE and self.cfg.embedding_scale:
            rms = model.embed.weight.detach().pow(2).mean().sqrt()
            model.embed_scale = embed_scale_parameter(1 / rms)

    # ------------------------------------------------------------ data

    def build_data(self):
        data, seed = self.cfg.data, 0  # the data (and its split) do not change with the training seed
        if self.finetune:
            if data.root:
                train, test = genome.genomic_benchmark(data.root, data.rc_prob, max_len=data.get("max_len"),
                                                       crop=data.get("crop", "center"))
                if data.get("split_seed") is None:
                    return train, test
                train, val = genome.hold_out(train, data.split_seed)
                return train, genome.EvalSplits([val, test])
            train, val, _ = genome.coding_vs_intergenic(data.window, data.block, data.val_fraction,
                                                        train_size=data.train_windows, val_per_class=data.val_per_class,
                                                        seed=seed, rc_prob=data.rc_prob)
            return train, val
        source = genome.fasta_genome(data.fasta_path, data.contigs) if data.fasta_path else genome.embedded_genome()
        length = data.seq_len + (self.objective == "causal")  # a causal model predicts tokens 1…L from 0…L-1
        if data.get("bed_path"):  # the official intervals: train and valid rows of the BED file
            intervals = genome.bed_intervals(data.bed_path)
            train = genome.BedWindows(source, intervals["train"], data.seq_len, length, seed=seed,
                                      rc_prob=data.rc_prob)
            val = genome.BedWindows(source, intervals["valid"], data.seq_len, length,
                                    first_fraction=data.get("val_first_fraction"), limit=data.val_windows)
        else:
            regions = genome.split_regions(source.lengths, data.block, data.val_fraction)
            train = genome.RandomWindows(source, regions["train"], length, data.train_windows, seed=seed,
                                         rc_prob=data.rc_prob)
            val = genome.TiledWindows(source, regions["val"], length, limit=data.val_windows)
        if self.objective == "mlm":
            train, val = genome.MaskedLM(train, data.mask_prob, seed), genome.MaskedLM(val, data.mask_prob, seed + 1)
        return train, val

    def describe_data(self, train_set, val_set) -> dict:
        """Pretraining: the genome's contigs, length and letters other than ACGT, and how it is split.
        Fine-tuning: the benchmark's classes and sequences per split."""
        data = self.cfg.data
        if self.finetune:
            inner = getattr(train_set, "dataset", train_set)
            found = {"source": str(data.root) if data.root else "the embedded chromosome's coding vs intergenic "
                     "windows (pyrodigal's gene predictions)", "train": len(train_set), "val": len(val_set)}
            classes = getattr(inner, "classes", None)
            found["classes"] = ", ".join(classes) if classes else "intergenic, coding"
            if data.root:
                found["split"] = ("GenomicBenchmarks' test/ evaluates" if data.get("split_seed") is None else
                                  f"{genome.HOLD_OUT_FRACTION:.0%} of train/ held out (seed {data.split_seed}) "
                                  "and test/ evaluate")
            return found
        source = genome.fasta_genome(data.fasta_path, data.contigs) if data.fasta_path else genome.embedded_genome()
        lengths = source.lengths
        found = {"source": data.fasta_path or f"the embedded chromosome {genome.embedded_sequence()[0]}",
                 "contigs": len(lengths), "length": f"{sum(lengths.values()):,} bp",
                 "other_than_ACGT": source.other_letters(), "train_windows": len(train_set),
                 "val_windows": len(val_set)}
        found["split"] = (f"the BED file's train and valid intervals ({data.bed_path})" if data.get("bed_path") else
                          f"blocks of {data.block:,} bp in order, every {round(1 / data.val_fraction)}th validates")
        return found

    def artifacts(self) -> dict:
        """The genome (the embedded chromosome, or a FASTA with its BED intervals), the gene predictions of the
        embedded benchmark, or a GenomicBenchmarks dataset folder."""
        data = self.cfg.data
        if self.finetune:
            if data.root:
                return {"genomic_benchmark": Path(data.root)}
            return {"genome": genome.embedded_sequence()[1], "gene_predictions": genome.embedded_coding_mask()}
        found = {"genome": Path(data.fasta_path)} if data.fasta_path else {"genome": genome.embedded_sequence()[1]}
        if data.get("bed_path"):
            found["intervals"] = Path(data.bed_path)
        return found

    def count(self, batch):
        tokens = batch["tokens"]
        return len(tokens), tokens.numel()

    # ------------------------------------------------------------ loss and metrics

    def _outputs(self, model, batch):
        """(logits [N, C], targets [N]) of the predicted positions or sequences."""
        tokens = batch["tokens"]
        if self.finetune:
            return model(tokens), batch["labels"]
        if self.objective == "causal":
            logits, targets = model(tokens[:, :-1]), tokens[:, 1:]
        else:
            logits, targets = model(tokens), batch["targets"]
        # the heads score A, C, G, T only: a logit for a token that is never a target (N in a bacterial genome,
        # the special tokens) gave DyT models a reason to inflate the residual stream until DyT saturated
        targets = targets.masked_fill(targets >= genome.NUCLEOTIDES, -100)
        return logits.flatten(0, 1), targets.flatten()

    def loss(self, model, batch):
        logits, targets = self._outputs(model, batch)
        loss = F.cross_entropy(logits.float(), targets)
        keep = targets != -100
        acc = (logits.argmax(-1)[keep] == targets[keep]).float().mean()
        return loss, {"acc": acc}

    def eval_step(self, model, batch):
        """Sums of correct predictions, scored positions and losses; with a `split` tag (validation and test
        read as one set), one sum of each per split, prefixed as EVAL_SPLITS names them."""
        logits, targets = self._outputs(model, batch)
        keep = targets != -100
        if "split" not in batch:
            return self._sums(logits, targets, keep, "")
        sums = {}
        for index, prefix in enumerate(EVAL_SPLITS):
            sums.update(self._sums(logits, targets, keep & (batch["split"] == index), prefix))
        return sums

    @staticmethod
    def _sums(logits, targets, keep, prefix: str) -> dict:
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        return {f"{prefix}correct": (logits.argmax(-1)[keep] == targets[keep]).sum(), f"{prefix}count": keep.sum(),
                f"{prefix}loss_sum": losses[keep].sum()}

    def eval_metrics(self, totals):
        metrics = {}
        for prefix in EVAL_SPLITS:
            if totals.get(f"{prefix}count"):
                count = totals[f"{prefix}count"]
                metrics[f"{prefix}acc"] = totals[f"{prefix}correct"] / count
                metrics[f"{prefix}loss"] = totals[f"{prefix}loss_sum"] / count
        return metrics
