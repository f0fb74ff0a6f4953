"""Several processes: FSDP2 sharding against DDP, sharded checkpoints and their readers, randomness per rank and
per data worker, streamed data resumed in place. Two CPU processes joined by gloo, as on a GPU node."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from dyt.train.checkpoint import MARKER, latest_checkpoint, model_weights
from tests.helpers import ROOT, metrics, run_train, summary, train_env

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TINY_LLAMA = ["task=llama", "task.size=debug", "task.data.seq_len=32", "trainer.batch_size=4", "norm=dyt",
              "trainer.max_eval_batches=2"]
TINY_VIT = ["task=vit", "task.size=debug", "trainer.batch_size=16", "trainer.max_eval_batches=2"]


def _losses(run_dir) -> list[float]:
    return [r["train/loss"] for r in metrics(run_dir) if "train/loss" in r]


def _kill_everything_of(run_dir) -> None:
    """SIGKILL every process whose command line names the run folder (torchrun starts each rank in a session
    of its own, so killing the launcher's process group would leave the ranks training)."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if any(str(run_dir) in part for part in process.info["cmdline"] or []):
            process.send_signal(signal.SIGKILL)


def _torchrun(run_dir, *overrides, **kwargs):
    return run_train(run_dir, *overrides, launcher=TORCHRUN, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory):
    """A tiny DyT LLaMA, 10 steps on 2 processes: DDP, FSDP with activation checkpointing, and HSDP as two
    replicas of one shard each."""
    root = tmp_path_factory.mktemp("llama")
    common = [*TINY_LLAMA, "trainer.max_steps=10", "trainer.log_every=1", "trainer.eval_every=10"]
    _torchrun(root / "ddp", *common, "trainer.strategy=ddp")
    _torchrun(root / "fsdp", *common, "trainer.strategy=fsdp", "trainer.activation_checkpointing=full")
    _torchrun(root / "hsdp", *common, "trainer.strategy=hsdp", "trainer.shard_size=1")
    return root


def test_fsdp_with_activation_checkpointing_trains_as_ddp_does(llama_runs):
    ddp, fsdp, hsdp = _losses(llama_runs / "ddp"), _losses(llama_runs / "fsdp"), _losses(llama_runs / "hsdp")
    assert len(ddp) == len(fsdp) == 10
    assert fsdp == pytest.approx(ddp, abs=1e-6, rel=0)
    assert hsdp == pytest.approx(ddp, abs=1e-6, rel=0)
    assert "fsdp: 2 units sharded over 2 processes" in (llama_runs / "fsdp" / "train.log").read_text()
    # α is one scalar per layer, sharded like every other parameter and gathered for the log
    alphas = [r for r in metrics(llama_runs / "fsdp") if "alpha/model.norm" in r]
    assert alphas and alphas[-1]["alpha/model.norm"] != 0.5


def test_vit_fsdp_trains_as_ddp_does(tmp_path):
    common = [*TINY_VIT, "trainer.max_steps=10", "trainer.log_every=1", "trainer.eval_every=10"]
    _torchrun(tmp_path / "ddp", *common)
    _torchrun(tmp_path / "fsdp", *common, "trainer.strategy=fsdp", "trainer.activation_checkpointing=every_2")
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "ddp"), abs=1e-6, rel=0)


def test_sharded_checkpoint_is_one_shard_per_rank_and_readable_in_one_process(llama_runs):
    checkpoint = latest_checkpoint(llama_runs / "fsdp" / "checkpoints")
    assert sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    sharded, whole = model_weights(checkpoint), model_weights(latest_checkpoint(llama_runs / "ddp" / "checkpoints"))
    assert sharded.keys() == whole.keys()
    assert all(torch.allclose(sharded[k], whole[k], atol=1e-6) for k in whole)


def test_init_from_a_sharded_run(llama_runs, tmp_path):
    from dyt.train.run import build
    from tests.test_trainer import compose_cfg

    _, model, _ = build(compose_cfg(*TINY_LLAMA, f"init_from={llama_runs / 'fsdp'}"))
    trained = model_weights(latest_checkpoint(llama_runs / "fsdp" / "checkpoints"))
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_export_makes_one_file_and_a_transformers_folder(llama_runs, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "export_checkpoint.py"), str(llama_runs / "fsdp"),
                    "--out", str(out)], check=True, cwd=ROOT, env=train_env(), capture_output=True, text=True)
    from safetensors.torch import load_file

    trained = model_weights(latest_checkpoint(llama_runs / "fsdp" / "checkpoints"))
    single = load_file(out / "model.safetensors")
    assert single.keys() == trained.keys() and all(torch.equal(single[k], trained[k]) for k in trained)

    from dyt.train.run import build
    from tests.test_trainer import compose_cfg

    _, model, _ = build(compose_cfg(*TINY_LLAMA, f"init_from={llama_runs / 'fsdp'}"))
    hf = AutoModelForCausalLM.from_pretrained(out / "hf", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "hf")
    ids = torch.tensor([tokenizer("The cat sat on the mat.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model.eval()(ids).logits, atol=1e-5)


def test_every_task_trains_under_fsdp(tmp_path):
    worker = [*TORCHRUN, str(ROOT / "tests" / "distributed_worker.py"), "every_task", str(tmp_path)]
    result = subprocess.run(worker, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"vit", "convnext", "llama", "dit", "wav2vec2", "hyenadna", "caduceus", "resnet", "mae",
                            "dino"}
    assert all(r == {"status": "completed", "steps": 2} for r in results.values()), results


def test_two_ranks_draw_different_dropout_masks(tmp_path):
    out = tmp_path / "dropout.json"
    worker = [*TORCHRUN, str(ROOT / "tests" / "distributed_worker.py"), "dropout", str(out)]
    result = subprocess.run(worker, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(out.read_text()) == {"same_output": False}


def test_sharded_run_with_data_workers_killed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    """Augmented digits drawn in two data workers per process: each sample's augmentation is a function of
    (seed, epoch, position), so a run resumed mid-epoch sees the same images."""
    args = [*TINY_VIT, "trainer.strategy=fsdp", "trainer.num_workers=2", "trainer.max_steps=40",
            "trainer.ckpt_every=10", "trainer.log_every=1", "trainer.eval_every=20"]
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    _torchrun(whole, *args)
    command = [*TORCHRUN, str(ROOT / "train.py"), *args, "logger=none", "trainer.progress=log",
               f"hydra.run.dir={interrupted}"]
    process = subprocess.Popen(command, cwd=ROOT, env=train_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "step_00000010" / MARKER).exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    _kill_everything_of(interrupted)  # the launcher, both ranks and their data workers, as a node failure would
    process.wait()
    assert not (interrupted / "summary.json").exists()
    _torchrun(interrupted, *args)
    assert _losses(interrupted) == _losses(whole)
    assert summary(interrupted)["final"] == summary(whole)["final"]


def test_an_rmsnorm_run_exports_to_a_plain_llama_folder(tmp_path):
    """One process under fsdp (a one-rank mesh), the native RMSNorm: the export is a stock LlamaForCausalLM."""
    from transformers import LlamaForCausalLM

    from dyt.train.run import build
    from tests.test_trainer import compose_cfg

    run_dir = tmp_path / "run"
    overrides = [*TINY_LLAMA, "norm=native", "trainer.strategy=fsdp", "trainer.max_steps=3"]
    run_train(run_dir, *overrides)
    assert latest_checkpoint(run_dir / "checkpoints").joinpath("__0_0.distcp").exists()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "export_checkpoint.py"), str(run_dir)], check=True,
                   cwd=ROOT, env=train_env(), capture_output=True, text=True)
    exported = LlamaForCausalLM.from_pretrained(run_dir / "export" / "hf")
    assert not (run_dir / "export" / "hf" / "modeling_dyt_llama.py").exists()
    _, model, _ = build(compose_cfg(*overrides, f"init_from={run_dir}"))
    ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, model.eval()(ids).logits, atol=1e-5)


def test_compiled_units_with_activation_checkpointing_train_as_eager_ones(tmp_path):
    """Each unit's forward compiled with its checkpoint inside (the paper's LLaMA rows: compile + selective
    checkpointing); one process, sharded over itself."""
    common = [*TINY_LLAMA, "trainer.strategy=fsdp", "trainer.max_steps=4", "trainer.log_every=1"]
    run_train(tmp_path / "eager", *common)
    run_train(tmp_path / "compiled", *common, "trainer.compile=true", "trainer.activation_checkpointing=every_2")
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), abs=1e-5, rel=0)
