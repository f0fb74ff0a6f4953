"""Table 4's LLaMA rows pinned to the official run. Each `experiment=llama_*` is composed and every recipe item
checked against the file it comes from: jiachenzhu/DyT other_tasks/LLaMA ("DyT:" below), a patch of
foundation-model-stack/fms-fsdp whose model modules are foundation-model-stack/foundation-model-stack's ("fms:",
fms/modules/*.py at the March 2025 commit 9efb6f2, which the patch imports). Then the α₀ a size brings, fms-fsdp's
init at the first DyT's input, weight decay on every parameter, and the shape-(1,) embedding scale with its shim
for older checkpoints."""
from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from scipy.stats import truncnorm

from dyt.convert import auto_alpha
from dyt.layers import DynamicTanh
from dyt.optim import param_groups
from dyt.train.config import ConfigError, norm_spec, validate
from dyt.train.run import build, norm_label
from dyt.train.schedule import learning_rate
from tasks.llama import FMS_FSDP_BOUNDS, FMS_FSDP_STD, Llama, ScaledEmbedding
from tests.helpers import ROOT, train_env
from tests.test_trainer import compose_cfg

TOKENS = 200e9  # Table 4: 200B tokens of the Pile
SEQ_LEN = 4096  # DyT: fms_fsdp/config/training.py seq_length = 4096
GLOBAL_BATCH = 1024  # sequences a step: DyT: README.md, 64 nodes × 8 GPUs × --batch_size=2 (7B, 13B), 128 × 8 × 1 (34B, 70B)

# per size: (width, layers, heads, KV heads, FFN) from DyT: fms_fsdp/utils/config_utils.py get_model_config
# (llama2_*: emb_dim, nlayers, nheads, kvheads (0 = nheads), hidden_grow_factor × emb_dim); the rest from the
# DyT: README.md "LLaMA2 <size> Training Command" (--learning_rate, --batch_size, nodes, --checkpoint_interval,
# --attn/ffn/dec_alpha_init_value)
ROWS = {
    "7B": dict(shape=(4096, 32, 32, 32, 11008), lr=3e-4, per_gpu=2, nodes=64, ckpt=5000, alpha=(0.8, 0.2, 0.2),
               sharding="hsdp", checkpointing="none"),
    "13B": dict(shape=(5120, 40, 40, 40, 13824), lr=3e-4, per_gpu=2, nodes=64, ckpt=2000, alpha=(0.6, 0.15, 0.15),
                sharding="hsdp", checkpointing="every_2"),
    "34B": dict(shape=(8192, 48, 64, 8, 22016), lr=1.5e-4, per_gpu=1, nodes=128, ckpt=2000, alpha=(0.2, 0.05, 0.05),
                sharding="fsdp", checkpointing="every_2"),
    "70B": dict(shape=(8192, 80, 64, 8, 28672), lr=1.5e-4, per_gpu=1, nodes=128, ckpt=2000, alpha=(0.2, 0.05, 0.05),
                sharding="fsdp", checkpointing="full"),
}
# a LLaMA of any size shrunk to a debug shape (the size keeps its α₀, init and ε), and its vocabulary, so no
# tokenizer is needed to build it
TINY_SHAPE = ("++task.model.overrides={hidden_size:64,intermediate_size:128,num_hidden_layers:2,num_attention_heads:4,"
              "num_key_value_heads:4,vocab_size:512}")


def roles(alpha) -> dict:
    return dict(zip(("attn", "ffn", "final"), alpha))


@pytest.mark.parametrize("size", ROWS)
def test_experiment_pins_the_official_recipe(size):
    row = ROWS[size]
    cfg = compose_cfg(f"experiment=llama_{size.lower()}", "norm=dyt")
    assert cfg.group == f"llama_{size.lower()}" and cfg.task.size == size

    config = Llama(cfg.task).model_config()
    width, layers, heads, kv_heads, ffn = row["shape"]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (width, layers, heads, kv_heads, ffn)
    assert config.vocab_size == 32000  # DyT: fms_fsdp/config/training.py vocab_size; fms: models/llama.py src_vocab_size
    assert config.rms_norm_eps == 1e-5  # fms: models/llama.py LLaMAConfig.norm_eps (RMSNorm baseline's ε)
    assert config.initializer_range == FMS_FSDP_STD == 0.02  # fms: modules/*.py reset_parameters std=0.02
    assert config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}  # fms: models/llama.py rope_theta
    assert config.hidden_act == "silu"  # fms: models/llama.py activation_fn "swish" (SwiGLU)
    assert not config.tie_word_embeddings  # fms: models/llama.py LLaMAConfig.tie_heads = False
    assert not config.attention_bias and not config.mlp_bias  # fms: models/llama.py attn_bias, mlp_bias = False
    assert config.max_position_embeddings == SEQ_LEN  # fms: models/llama.py max_expected_seq_len = 4096
    assert cfg.task.model.init == "fms_fsdp"  # fms: modules/{attention,feedforward,embedding}.py trunc_normal_
    assert cfg.task.model.embedding_scale  # DyT: fms_fsdp/models/llama.py shared_scale, √emb_dim

    data = cfg.task.data
    # real data only, declared required: the Pile (DyT: prepare_data.py) and LLaMA 2's tokenizer (DyT: README.md,
    # meta-llama/Llama-2-7b-chat-hf); see test_experiment_without_its_data_is_refused for what composes
    assert list(cfg.required) == ["task.data.path", "task.data.tokenizer_path"]
    assert data.seq_len == SEQ_LEN and data.streaming and data.text_field == "text"  # DyT: prepare_data.py ['text']

    trainer = cfg.trainer
    assert trainer.global_batch_size == GLOBAL_BATCH == row["nodes"] * 8 * row["per_gpu"]  # DyT: README.md
    assert GLOBAL_BATCH * SEQ_LEN == 4_194_304  # ≈ 4M tokens a step (the paper)
    assert trainer.batch_size == row["per_gpu"]  # DyT: README.md --batch_size
    # the fewest steps that see 200B tokens
    assert (trainer.max_steps - 1) * GLOBAL_BATCH * SEQ_LEN < TOKENS <= trainer.max_steps * GLOBAL_BATCH * SEQ_LEN
    assert trainer.mixed_precision == "bf16"  # DyT: fms_fsdp/config/training.py mixed_precision=True (bfSixteen)
    assert trainer.log_every == 10  # DyT: fms_fsdp/config/training.py report_interval
    assert trainer.ckpt_every == row["ckpt"]  # DyT: README.md --checkpoint_interval
    assert trainer.num_workers == 0  # DyT: main_training_llama.py StatefulDataLoader(num_workers=0)
    assert trainer.strategy == row["sharding"]  # DyT: README.md --sharding_strategy
    # DyT: README.md --fsdp_activation_checkpointing, --selective_checkpointing p; fms_fsdp/policies/ac_handler.py
    # checkpoints blocks (k + 0.5)/p rounded: p = 0.5 → blocks 1, 3, 5, … = every_2's units[1::2]
    assert trainer.activation_checkpointing == row["checkpointing"]
    assert trainer.compile  # DyT: fms_fsdp/config/training.py use_torch_compile=True

    optim = trainer.optim
    assert optim.lr == row["lr"]  # DyT: README.md --learning_rate
    assert list(optim.betas) == [0.9, 0.95]  # DyT: main_training_llama.py optim.AdamW(betas=(0.9, 0.95))
    assert optim.eps == 1e-8  # DyT: main_training_llama.py keeps torch's AdamW eps
    assert optim.weight_decay == 0.1  # DyT: main_training_llama.py AdamW(model.parameters(), weight_decay=0.1)
    assert list(optim.no_decay) == [] and optim.decay_alpha  # ... over model.parameters(): nothing exempt
    assert optim.clip_grad == 1.0  # DyT: fms_fsdp/config/training.py grad_clip_thresh
    # DyT: main_training_llama.py: warmup_interval = min(2000, num_steps // 20), the lower of 1 - (1 - x/w)² and a
    # cosine from 1 to 0.1 over num_steps, x counted from 0 by LambdaLR
    assert optim.schedule == "fms_fsdp" and optim.min_lr_ratio == 0.1
    assert optim.warmup_steps == min(2000, trainer.max_steps // 20) == 2000
    lr = lambda step: learning_rate(optim.schedule, step, peak=optim.lr, total=trainer.max_steps,  # noqa: E731
                                    warmup=optim.warmup_steps, min_ratio=optim.min_lr_ratio)
    assert lr(0) == 0.0 and lr(1000) == pytest.approx(0.75 * optim.lr)  # 1 - (1 - 1/2)²
    assert lr(trainer.max_steps) == pytest.approx(0.1 * optim.lr)

    # α₀ per role (DyT: README.md --attn/ffn/dec_alpha_init_value), the paper's table by width too
    assert norm_spec(cfg.norm)["alpha_init"] == roles(row["alpha"])
    assert row["alpha"] == (auto_alpha(width, "attn"), auto_alpha(width, "ffn"), auto_alpha(width, "final"))
    assert norm_label(cfg.norm) == "dyt-a" + "/".join(f"{a:g}" for a in row["alpha"])


def test_experiment_without_its_data_is_refused():
    cfg = compose_cfg("experiment=llama_7b", "norm=dyt")
    with pytest.raises(ConfigError, match=r"task\.data\.(path|tokenizer_path) is required"):
        validate(cfg)


# ---------------------------------------------------------------- α₀: the size's, unless typed


@pytest.mark.parametrize("overrides, expected", [
    *[((f"task=llama", f"task.size={size}", "norm=dyt"), roles(row["alpha"])) for size, row in ROWS.items()],
    *[((f"experiment=llama_{size.lower()}", "norm=dyt"), roles(row["alpha"])) for size, row in ROWS.items()],
    (("task=llama", "task.size=7B", "norm=derf"), roles(ROWS["7B"]["alpha"])),
    # the α₀ table's narrower widths (PAPER.md): 1024 and 2048
    (("task=llama", "task.size=350M", "norm=dyt"), roles((1.0, 1.0, 1.0))),
    (("task=llama", "task.size=1B", "norm=dyt"), roles((1.0, 0.5, 0.5))),
    # typed on the command line, it wins
    (("task=llama", "task.size=7B", "norm=dyt", "norm.alpha_init=0.3"), 0.3),
    (("experiment=llama_70b", "norm=dyt", "norm.alpha_init={attn:1.0,ffn:0.5,final:0.5}"), roles((1.0, 0.5, 0.5))),
    (("experiment=llama_7b", "norm=dyt", "norm.alpha_init=auto"), "auto"),
    # the CPU sizes and every other task keep the paper's default outside LLMs
    (("task=llama", "norm=dyt"), 0.5),
    (("task=llama", "task.size=debug", "norm=dyt"), 0.5),
    (("task=llama", "task.size=125M", "norm=derf"), 0.5),
    (("task=vit", "norm=dyt"), 0.5),
    (("task=wav2vec2", "norm=derf"), 0.5),
])
def test_alpha_init_is_the_sizes_unless_given(overrides, expected):
    cfg = compose_cfg(*overrides)
    assert norm_spec(cfg.norm)["alpha_init"] == expected
    resolved = OmegaConf.to_container(cfg, resolve=True)["norm"]["alpha_init"]  # what config.yaml records
    assert resolved == expected


def test_the_run_records_and_uses_the_resolved_alpha(tmp_path):
    """`experiment=llama_7b norm=dyt` shrunk to a debug shape, one step on the embedded text: the label, summary
    and config.yaml carry 0.8/0.2/0.2 and the DyT layers start there."""
    from dyt.train.run import train

    # the embedded text's tokenizer has 4,096 tokens
    tiny = [TINY_SHAPE.replace("vocab_size:512", "vocab_size:4096"), "task.data.path=null",
            "task.data.tokenizer_path=null", "task.data.seq_len=32", "trainer.max_steps=1", "trainer.global_batch_size=null",
            "trainer.batch_size=4", "trainer.mixed_precision=no", "trainer.max_eval_batches=1", "logger=none"]
    cfg = compose_cfg("experiment=llama_7b", "norm=dyt", *tiny, run_dir=str(tmp_path))
    result = train(cfg)
    assert result["status"] == "completed"
    assert result["norm"] == "dyt-a0.8/0.2/0.2" and result["alpha_init"] == roles((0.8, 0.2, 0.2))
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["norm"]["alpha_init"] == roles((0.8, 0.2, 0.2)) and written["task"]["model"]["init"] == "fms_fsdp"
    # norms.txt: the swaps as converted, one row per role (layer, role, change, α₀)
    rows = [re.split(r"\s{2,}", line) for line in (tmp_path / "norms.txt").read_text().splitlines()
            if line.startswith("model.")]
    assert {row[1]: float(row[3]) for row in rows} == roles((0.8, 0.2, 0.2)) and len(rows) == 3


# ---------------------------------------------------------------- fms-fsdp's init; weight decay on everything


def _embedding_rms(model) -> float:
    embed = model.get_input_embeddings()
    with torch.no_grad():
        return embed(torch.arange(embed.num_embeddings)).pow(2).mean().sqrt().item()


def test_fms_fsdp_init_puts_the_first_dyt_input_at_the_papers_scale():
    """std 0.02 truncated at ±2 (fms: modules/*.py `nn.init.trunc_normal_(w, mean=0.0, std=0.02)`, torch's default
    bounds a=-2, b=2: ±100σ), then ×√d: 0.02·√d × the truncated normal's std relative to 0.02 (1.28 at 7B, 1.43 at
    13B, 1.81 at 34B / 70B)."""
    _, model, _ = build(compose_cfg("task=llama", "task.size=debug", "task.model.init=fms_fsdp", "norm=dyt", TINY_SHAPE))
    d = model.config.hidden_size
    low, high = (bound / FMS_FSDP_STD for bound in FMS_FSDP_BOUNDS)
    truncation = truncnorm(low, high).std()
    assert _embedding_rms(model) == pytest.approx(math.sqrt(d) * 0.02 * truncation, rel=0.05)
    # every matrix, the embedding and the head alike; norm weights stay ones
    drawn = torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))])
    assert drawn.std().item() == pytest.approx(0.02 * truncation, rel=0.03) and abs(drawn.mean().item()) < 1e-3
    assert drawn.abs().max().item() <= FMS_FSDP_BOUNDS[1]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in model.modules() if isinstance(m, DynamicTanh))


def test_cpu_default_keeps_the_scaled_init_and_hf_eps():
    cfg = compose_cfg("task=llama", "norm=dyt")
    assert (cfg.task.size, cfg.task.model.init, cfg.task.model.rms_norm_eps) == ("cpu", "scaled", 1e-6)
    _, model, _ = build(compose_cfg("task=llama", "task.size=debug", "norm=dyt", TINY_SHAPE))
    assert _embedding_rms(model) == pytest.approx(1.0, rel=0.05)  # std d^-½, then ×√d


def test_paper_rows_decay_every_parameter_where_the_cpu_default_exempts_the_one_dim_ones():
    def groups(*overrides):
        cfg = compose_cfg(*overrides, "norm=dyt", TINY_SHAPE)
        _, model, _ = build(cfg)
        optim = cfg.trainer.optim
        decay, kept = param_groups(model, optim.weight_decay, decay_alpha=optim.decay_alpha, no_decay=optim.no_decay)
        return model, {id(p) for p in decay["params"]}, kept["params"]

    model, decayed, kept = groups("experiment=llama_7b")
    assert not kept and decayed == {id(p) for p in model.parameters()}  # γ, α, the embedding scale: all at 0.1
    model, decayed, kept = groups("task=llama", "task.size=debug")
    assert id(model.get_input_embeddings().scale) in {id(p) for p in kept}  # the CPU default exempts it


# ---------------------------------------------------------------- the embedding scale: shape (1,), old checkpoints


def test_embedding_scale_is_one_element_and_a_0_dim_checkpoint_still_loads():
    cfg = compose_cfg("task=llama", "task.size=debug", "norm=dyt", TINY_SHAPE)
    _, model, _ = build(cfg)
    scale = model.get_input_embeddings().scale
    assert isinstance(model.get_input_embeddings(), ScaledEmbedding) and scale.shape == (1,)
    assert all(p.ndim >= 1 for p in model.parameters())  # what FSDP2's fully_shard demands
    old = model.state_dict()
    old["model.embed_tokens.scale"] = torch.tensor(3.0)  # a checkpoint written when the scale was 0-dim
    _, fresh, _ = build(cfg)
    fresh.load_state_dict(old, strict=True)
    assert fresh.get_input_embeddings().scale.shape == (1,) and fresh.get_input_embeddings().scale.item() == 3.0
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(fresh.get_input_embeddings()(ids), fresh.get_input_embeddings().weight[ids] * 3.0)


def test_fully_shard_takes_the_converted_model(tmp_path):
    """FSDP2 rejects 0-dim parameters; one CPU process with gloo shards the converted model."""
    script = f"""
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from dyt.train.run import build
from tests.test_trainer import compose_cfg
from tests.test_recipes_llama import TINY_SHAPE
dist.init_process_group("gloo", init_method="file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
_, model, _ = build(compose_cfg("task=llama", "task.size=debug", "norm=dyt", TINY_SHAPE))
for layer in model.model.layers:
    fully_shard(layer)
fully_shard(model)
dist.destroy_process_group()
print("sharded")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=train_env(PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "sharded" in result.stdout, result.stderr[-2000:]
