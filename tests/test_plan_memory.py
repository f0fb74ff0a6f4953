"""scripts/plan_memory.py: memory plans from the model built on the meta device, and the activation trace
they rest on checked against a real forward pass on the CPU."""
import json

import pytest
import torch

from scripts.plan_memory import (GIB, build_on_meta, compose_config, find_units, loss_function, main, make_plan,
                                 planning_task, trace_activations)

LLAMA_7B = ["task=llama", "task.size=7B", "task.data.seq_len=4096", "trainer.mixed_precision=bf16"]


@pytest.fixture(scope="module")
def llama_7b():
    # trainer.strategy= is read by the planner whether or not the config schema knows the key yet
    return make_plan([*LLAMA_7B, "trainer.strategy=fsdp", "--gpus", "8", "--gpu-mem", "80", "--micro-batch", "2",
                      "--activation-checkpointing", "full"])


def test_llama_7b_does_not_fit_ddp_on_8_gpus_but_fits_fsdp_with_checkpointing(llama_7b):
    runs = llama_7b.configurations
    assert not runs["ddp/none"]["fits"] and not runs["ddp/full"]["fits"]
    assert runs["fsdp/full"]["fits"] and runs["fsdp/full"]["total_gib"] < 80
    assert llama_7b.selected == "fsdp/full"
    # 22 bytes a parameter under DDP with bf16: alone more than a GPU
    assert runs["ddp/full"]["total_gib"] > 22 * 6.7e9 / GIB
    assert runs["fsdp/full"]["total_gib"] < runs["fsdp/none"]["total_gib"] < runs["ddp/none"]["total_gib"]


def test_llama_7b_parameters_are_the_meta_models(llama_7b):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.llama import SIZES

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SIZES["7B"], tie_word_embeddings=False))
    numel = sum(p.numel() for p in model.parameters())
    # LLaMA 2 7B (meta-llama/Llama-2-7b-hf config.json: hidden 4096, intermediate 11008, 32 layers, vocab 32000,
    # untied head): 2·32000·4096 + 32·(4·4096² + 3·4096·11008 + 2·4096) + 4096 = 6,738,415,616
    assert numel == 6_738_415_616
    assert llama_7b.parameters == pytest.approx(numel, rel=1e-6)  # + DyT's α and the embedding scale
    ddp, fsdp = (llama_7b.configurations[k]["components_gib"] for k in ("ddp/none", "fsdp/none"))
    assert ddp["weights (fp32)"] * GIB == pytest.approx(4 * numel, rel=0.10)
    assert ddp["optimizer (AdamW, 2 × fp32)"] * GIB == pytest.approx(8 * numel, rel=0.10)
    assert fsdp["weights (fp32)"] * 8 == pytest.approx(ddp["weights (fp32)"])  # sharded over 8 GPUs
    assert llama_7b.unit_count == 32 and llama_7b.units == r"model\.layers\.\d+"  # the task's shard_units


def test_llama_7b_activations_match_the_closed_form(llama_7b):
    traced, closed = llama_7b.activations["traced_gib"], llama_7b.activations["closed_form_gib"]
    assert traced["largest_unit"] == pytest.approx(closed["per_layer"], rel=0.05)
    # full checkpointing keeps each layer's bf16 input: 32 layers × b·s·h × 2 bytes
    assert traced["unit_inputs"] * GIB == pytest.approx(32 * 2 * 4096 * 4096 * 2, rel=0.05)
    # the loss keeps fp32 log-probabilities, b·s·vocab × 4 bytes, outside the layers
    assert traced["outside_units"] >= closed["fp32_logits"]
    assert llama_7b.activations["with_checkpointing_gib"] < llama_7b.activations["without_checkpointing_gib"] / 5


@pytest.mark.parametrize("overrides", [
    ["task=llama", "task.size=debug", "task.data.seq_len=64"],
    ["task=vit", "task.size=debug"],
    ["task=dit", "task.size=debug"],
    ["task=caduceus", "task.size=debug", "task.data.seq_len=64"],
])
def test_the_meta_trace_counts_what_a_real_cpu_forward_saves(overrides):
    """The same model and batch traced on meta tensors and run for real on the CPU (whose SDPA and DyT
    kernels keep what the GPU's do, up to the CPU DyT kernel's bookkeeping)."""
    cfg = compose_config(overrides)
    traces = {}
    for device in ("meta", "cpu"):
        task = planning_task(cfg, [])
        model, _ = build_on_meta(cfg, task, device)
        _, units = find_units(model)
        loss, _, _ = loss_function(task, model, cfg, 4, device)
        traces[device] = trace_activations(model, units, loss, dtype=torch.float32)
    meta, cpu = traces["meta"], traces["cpu"]
    assert cpu.total > 0
    assert meta.total == pytest.approx(cpu.total, rel=0.08)
    assert meta.unit_inputs == cpu.unit_inputs and meta.outside_units == cpu.outside_units


def test_fsdp_shards_over_the_gpus_and_checkpointing_cuts_activations():
    args = ["task=llama", "task.size=125M", "task.data.seq_len=1024", "trainer.mixed_precision=bf16",
            "--micro-batch", "4"]
    two, sixteen = make_plan([*args, "--gpus", "2"]), make_plan([*args, "--gpus", "16"])
    for key in ("weights (fp32)", "gradients (fp32)", "optimizer (AdamW, 2 × fp32)"):
        fsdp_2, fsdp_16 = (p.configurations["fsdp/none"]["components_gib"][key] for p in (two, sixteen))
        ddp_2, ddp_16 = (p.configurations["ddp/none"]["components_gib"][key] for p in (two, sixteen))
        assert fsdp_2 == pytest.approx(8 * fsdp_16) and ddp_2 == ddp_16 > 0
    acts = two.activations
    assert acts["with_checkpointing_gib"] < acts["without_checkpointing_gib"]
    # without flash attention each of the 12 layers keeps its 12 heads' s×s probabilities (at least 2 bytes each)
    math = make_plan([*args, "--gpus", "2", "--attention", "math"])
    s_by_s = 12 * 12 * 4 * 1024**2 * 2
    assert math.activations["without_checkpointing_gib"] > acts["without_checkpointing_gib"] + s_by_s / GIB


def test_a_tiny_vit_and_dit_plan_print_a_table_and_json(capsys):
    assert main(["task=vit", "task.size=debug", "trainer.strategy=ddp", "--gpus", "2", "--gpu-mem", "16"]) == 0
    table = capsys.readouterr().out
    assert "GiB per GPU" in table and "FSDP + AC" in table
    assert ("this run (trainer.strategy, activation checkpointing): DDP, no activation checkpointing: "
            "fits in 16 GiB: yes") in table
    assert main(["task=dit", "task.size=debug", "--json", "--gpus", "4"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["task"] == "dit" and plan["gpus"] == 4 and plan["unit_count"] == 2 and plan["selected"] == "ddp/none"
    assert set(plan["configurations"]) == {"ddp/none", "ddp/full", "fsdp/none", "fsdp/full"}
    assert all(c["fits"] for c in plan["configurations"].values())
    assert plan["activations"]["without_checkpointing_gib"] > 0


def test_an_experiment_plans_its_real_data_geometry_without_reading_it(capsys):
    # the paper's DiT-XL/2 reads ImageNet and a VAE; the plan uses SD-VAE's 4×32×32 latents without them
    assert main(["experiment=dit_xl2", "task.size=DiT-S/8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["batch"] == "32 inputs of 4×32×32"  # configs/experiment/dit_xl2.yaml: batch_size 32 per process
    assert plan["grad_accum"] == 1  # global 256 = 32 × 8 GPUs


@pytest.mark.parametrize("args, needle", [
    (["task=vit", "trainer.strategy=zero"], "trainer.strategy=zero is unknown"),
    (["task=llama", "task.size=huge"], "task.size=huge is unknown"),
    (["task=hyenadna", "task.size=debug", "task.data.seq_len=512"], "does not fit task.size=debug's context of 256"),
    (["task=vit", "trainer.activation_checkpointing=full", "--activation-checkpointing", "none"], "contradicts"),
])
def test_bad_input_is_one_line(capsys, args, needle):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
