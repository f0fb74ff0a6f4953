#!/usr/bin/env bash
# The checks that need a GPU, in one go (under 8 minutes on one H100/H200; longer with fewer, slower GPUs):
#   1. the norm kernels side by side (Triton DyT against LayerNorm / RMSNorm, eager and compiled), bf16
#   2. a LLaMA 1B trained 40 steps with trainer.strategy=fsdp and bf16 on every GPU present (embedded text,
#      2,048-token windows, activation checkpointing, per-layer torch.compile): loss, tokens/s, MFU, peak memory
#   3. the plan for the same run, to compare its predicted peak memory with the measured one
#     bash scripts/gpu_check.sh [OUT_DIR]            # default: outputs/gpu_check; quote what it prints
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-outputs/gpu_check}"
mkdir -p "$out"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then echo "gpu_check: no CUDA device here" >&2; exit 2; fi
export HF_HUB_OFFLINE=1 WANDB_MODE=offline HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch; print('gpu_check:', torch.cuda.get_device_name(), '×', torch.cuda.device_count(), '| torch', torch.__version__)"

echo "== 1. norm kernels (bf16; ratios to LayerNorm, measured side by side)"
timeout 180 python scripts/bench_norms.py --device cuda --dtype bf16 --rounds 10 --out "$out/kernels" | tail -n 25

echo "== 2. LLaMA 1B, trainer.strategy=fsdp, bf16, $gpus GPU(s)"
run=(train.py task=llama task.size=1B norm=dyt task.data.seq_len=2048 trainer.strategy=fsdp
     trainer.mixed_precision=bf16 trainer.activation_checkpointing=full trainer.compile=true trainer.tf32=true
     trainer.batch_size=4 trainer.max_steps=40 trainer.log_every=10 trainer.eval_every=40 trainer.max_eval_batches=4
     trainer.ckpt_every=40 logger=none trainer.progress=log "hydra.run.dir=$out/llama_fsdp")
rm -rf "$out/llama_fsdp"
timeout 420 torchrun --standalone --nproc_per_node "$gpus" "${run[@]}" 2>&1 | grep -E "step [0-9]+/|val/|error|Error" || true
python - "$out/llama_fsdp" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
train = [r for r in rows if "train/loss" in r]
last = train[-1]
print(f"gpu_check llama 1B fsdp: status {json.loads((run / 'summary.json').read_text())['status']}, "
      f"loss {train[0]['train/loss']:.3f} → {last['train/loss']:.3f}, {last.get('tokens_per_s', 0):.0f} tokens/s, "
      f"MFU {last.get('mfu', float('nan')):.3f}, peak memory {last.get('memory_gb', float('nan')):.1f} GiB per GPU")
EOF

echo "== 3. the plan for that run"
python scripts/plan_memory.py task=llama task.size=1B task.data.seq_len=2048 trainer.strategy=fsdp \
    trainer.mixed_precision=bf16 trainer.activation_checkpointing=full trainer.batch_size=4 \
    --gpus "$gpus" --gpu-mem "$(python -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))")" \
    | grep -E "this run|parameters"
