"""HyenaDNA (Nguyen et al., NeurIPS 2023; the paper's Table 6): pretrained by next-nucleotide prediction,
fine-tuned to classify sequences. Model: tasks/dna/hyena.py; data and stages: tasks/dna/task.py."""
from __future__ import annotations

from .dna.hyena import HyenaDNA
from .dna.task import GenomeTask

# d_model, n_layer, max_len (the context: the implicit filters are defined over it); d_inner = 4·d_model.
# tiny-1k … large-1m are the published HyenaDNA checkpoints' shapes (LongSafari/hyenadna-*-seqlen).
# d256-l4-1k is the model of the DyT paper's Table 6 run, kuleshov-group/caduceus
# slurm_scripts/run_pretrain_hyena.sh (D_MODEL=256, N_LAYER=4, SEQLEN=1024) with configs/model/hyena.yaml:
# l_max = max_length + 2, embed_dropout 0.1, filter_order 64, emb_dim 5, short filter 3, w 10, and the
# filter MLP of src/models/sequence/hyena.py (num_inner_mlps=2, one Sin module reused).
SIZES = {
    "debug": dict(d_model=16, n_layer=1, max_len=256, filter_order=16),
    "cpu": dict(d_model=64, n_layer=2, max_len=1024),
    "tiny-1k": dict(d_model=128, n_layer=2, max_len=1024),
    "small-32k": dict(d_model=256, n_layer=4, max_len=32768),
    "medium-160k": dict(d_model=256, n_layer=8, max_len=160000),
    "large-1m": dict(d_model=256, n_layer=8, max_len=1_000_000),
    "d256-l4-1k": dict(d_model=256, n_layer=4, max_len=1026, filter_order=64, emb_dim=5, short_filter=3, w=10.0,
                       filter_inner_mlps=2, filter_shared_sin=True, embed_dropout=0.1),
}


class HyenaDNATask(GenomeTask):
    objective = "causal"
    sizes = SIZES

    def build_model(self):
        return HyenaDNA(num_classes=self.num_classes, **self.model_args())
