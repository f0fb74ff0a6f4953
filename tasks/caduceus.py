"""Caduceus (Schiff et al., ICML 2024; the paper's Table 6): a bidirectional, optionally reverse-complement
equivariant Mamba with RMSNorm, pretrained by masked-nucleotide prediction, fine-tuned to classify sequences.
Model: tasks/dna/caduceus.py; data and stages: tasks/dna/task.py."""
from __future__ import annotations

from .dna.caduceus import Caduceus
from .dna.task import GenomeTask

# d_model (one strand), n_layer; d_state 16, expand 2. 1k and 131k are the published Caduceus checkpoints'
# shapes (kuleshov-group/caduceus-{ps,ph}_seqlen-{1k,131k}_d_model-{118,256}_n_layer-{4,16}).
# d256-l8-131k is the model of the DyT paper's Table 6 run, kuleshov-group/caduceus
# slurm_scripts/run_pretrain_caduceus.sh (D_MODEL=256, N_LAYER=8, SEQLEN=131072; d_state 16, d_conv 4,
# expand 2 from configs/model/caduceus.yaml): half the published 131k checkpoint's depth.
SIZES = {
    "debug": dict(d_model=16, n_layer=1, d_state=4),
    "cpu": dict(d_model=32, n_layer=2, d_state=8),
    "1k": dict(d_model=118, n_layer=4),
    "131k": dict(d_model=256, n_layer=16),
    "d256-l8-131k": dict(d_model=256, n_layer=8, d_state=16, d_conv=4, expand=2),
}


class CaduceusTask(GenomeTask):
    objective = "mlm"
    sizes = SIZES
    # the one norm of a Mamba block sits before the token mixer, as the attention-block norm does
    norm_roles = {r"blocks\.\d+\.norm$": "attn"}

    def build_model(self):
        return Caduceus(num_classes=self.num_classes, **self.model_args())
