"""The spine's promises: clear config errors, exact resume, preemption, divergence, tracking, pairing."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir

from dyt.train.checkpoint import MARKER, latest_checkpoint, valid_checkpoints
from dyt.train.data import EpochSampler
from dyt.train.schedule import learning_rate, warmup_cosine
from tests.helpers import ROOT, metrics, run_train, summary, train_env

TINY_VIT = ["task=vit", "task.size=debug", "trainer.batch_size=32", "trainer.max_eval_batches=2"]


def compose_cfg(*overrides, run_dir="unused"):
    import dyt.train  # noqa: F401 — registers the schemas and resolvers

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"run_dir={run_dir}"])


# ------------------------------------------------------------------ bad input fails fast, in one line


@pytest.mark.parametrize("args, needle", [
    (["norm.alpha_innit=1"], "norm.alpha_innit"),
    (["+norm.alpha_innit=1"], "norm.alpha_innit"),
    (["trainer.max_step=3"], "trainer.max_step"),
    (["task=vitt"], "unknown task 'vitt'"),
    (["norm=dytt"], "unknown norm 'dytt'"),
    (["norm.alpha_init=0"], "norm.alpha_init=0"),
    (["norm.alpha_init=-0.5"], "must be > 0"),
    (["norm.alpha_init={attn:1.0,ffn:0.5}"], "attn, ffn, final"),
    (["task.data.root=/no/such/imagenet"], "task.data.root=/no/such/imagenet does not exist"),
    (["norm.type=batchtanh"], "known: dyt, derf"),
    (["norm.kernel=cuda"], "norm.kernel='cuda' is unknown"),
    (["task=llama", "task.size=huge"], "task.size=huge is unknown"),
    (["task=caduceus", "task.size=huge"], "task.size=huge is unknown for caduceus"),
    (["task=dit", "task.sample.scheduler=euler"], "task.sample.scheduler=euler is unknown"),
    (["task=dit", "task.model.prediction=x0"], "task.model.prediction=x0 is unknown"),
    (["task=dit", "task.model.class_dropout=0"], "task.model.class_dropout > 0"),
    # unknown keys anywhere, `+` additions included (the task section has no schema: its file is the reference)
    (["+task.data.roott=/x"], "unknown config key task.data.roott; task.data takes: root"),
    (["+task.augment.mixupp=0.5"], "unknown config key task.augment.mixupp"),
    (["+trainer.optim.lrr=1"], "trainer.optim.lrr"),
    (["task.data.roott=/x"], "unknown config key task.data.roott"),
    (["logger=tensorbored"], "unknown logger 'tensorbored'"),
    # types and ranges
    (["seed=abc"], "seed='abc' must be an integer"),
    (["norm.alpha_init=abc"], "is not a number"),
    (["trainer.batch_size=0"], "trainer.batch_size=0 must be ≥ 1"),
    (["trainer.optim.lr=0"], "trainer.optim.lr=0 must be > 0"),
    (["trainer.mixed_precision=fp8"], "trainer.mixed_precision='fp8'"),
    (["trainer.progress=verbose"], "trainer.progress='verbose'"),
    (["trainer.optim.schedule=poly"], "trainer.optim.schedule='poly' is unknown"),
    (["trainer.optim.schedule=step"], "needs trainer.optim.step_size"),
    (["task=dino", "task.size=debug"], "task.dino.local_crop_size=12 is not a multiple of task.size=debug's patch size 7"),
    (["trainer.optim.layer_decay=1.5"], "trainer.optim.layer_decay=1.5 must be in (0, 1]"),
    (["trainer.optim.layer_decay=0.75"], "needs a task that orders its layers (mae, dino); task=vit"),
    (["trainer.optim.no_decay=[bogus]"], "trainer.optim.no_decay has 'bogus'"),
    (["norm.fn=relu"], "norm.fn='relu' is unknown"),
    # strategy, precision and batch combinations that cannot work
    (["trainer.strategy=zero3"], "trainer.strategy='zero3'"),
    (["trainer.strategy=fsdp", "trainer.mixed_precision=fp16"], "fp16 does not go with trainer.strategy=fsdp"),
    (["trainer.activation_checkpointing=half"], "trainer.activation_checkpointing='half'"),
    (["trainer.shard_size=0"], "trainer.shard_size=0 must be ≥ 1"),
    (["trainer.global_batch_size=100"], "trainer.global_batch_size=100 is not a multiple"),
    # sizes that do not fit the sequence, stages, sweeps, paths and runs to start from
    (["task=hyenadna", "task.size=debug"], "task.data.seq_len=512 does not fit task.size=debug's context of 256"),
    (["task=llama", "task.data.seq_len=1"], "task.data.seq_len=1 must be at least 2"),
    (["task=caduceus", "task.stage=eval"], "task.stage=eval is unknown"),
    (["task=wav2vec2", "task.size=huge"], "task.size=huge is unknown"),
    (["norm=dyt,layernorm"], "lists several values: that is a sweep, run it with -m"),
    (["experiment=vit_b"], "task.data.root is required by this paper row"),
    (["experiment=llama_7b"], "task.data.path is required by this paper row"),
    (["init_from=/no/such/run"], "init_from=/no/such/run does not exist; give a run folder"),
    (["init_from={empty}"], "holds no complete checkpoint"),
])
def test_bad_config_is_one_clear_line_before_any_work(tmp_path, args, needle):
    run_dir = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.replace("{empty}", str(empty)) for a in args]
    result = run_train(run_dir, *args, check=False, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not run_dir.exists()  # nothing was started, no checkpoint written


# ------------------------------------------------------------------ a run and what it writes


def test_run_writes_summary_metrics_and_alpha_logs(tmp_path):
    run_train(tmp_path, *TINY_VIT, "trainer.max_steps=6", "trainer.log_every=3", "trainer.eval_every=3")
    result = summary(tmp_path)
    assert result["status"] == "completed" and result["steps"] == 6 and result["norm"] == "dyt-a0.5"
    assert result["headline"]["name"] == "val/acc" and result["headline"]["higher_is_better"] is True
    assert 0 <= result["headline"]["value"] <= 1 and result["params"] > 0 and result["norms_replaced"] == 5
    rows = metrics(tmp_path)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [3, 6]
    row = train_rows[-1]
    assert {"lr", "grad_norm", "samples_per_s", "alpha/blocks.0.norm1", "input_std/blocks.0.norm1"} <= set(row)
    assert [r["step"] for r in rows if "val/acc" in r] == [3, 6]
    assert (tmp_path / "config.yaml").exists() and "DynamicTanh" in (tmp_path / "norms.txt").read_text()
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000006"


def test_same_seed_gives_layernorm_and_dyt_the_same_other_weights():
    from dyt.train.run import build

    _, ln_model, _ = build(compose_cfg(*TINY_VIT, "norm=layernorm", "seed=7"))
    _, dyt_model, swaps = build(compose_cfg(*TINY_VIT, "norm=dyt", "seed=7"))
    norm_paths = tuple(s.path + "." for s in swaps)
    dyt_state = dyt_model.state_dict()
    shared = {k: v for k, v in ln_model.state_dict().items() if not k.startswith(norm_paths)}
    assert len(shared) > 10 and all(torch.equal(v, dyt_state[k]) for k, v in shared.items())


def test_norm_kernel_reaches_every_dyt_layer():
    from dyt import DynamicTanh
    from dyt.train.run import build

    _, model, _ = build(compose_cfg(*TINY_VIT, "norm=dyt", "norm.kernel=eager"))
    layers = [m for m in model.modules() if isinstance(m, DynamicTanh)]
    assert len(layers) == 5 and {m.kernel for m in layers} == {"eager"}


# ------------------------------------------------------------------ resume


def _train_rows(run_dir):
    keys = ("train/loss", "grad_norm", "lr", "val/acc", "val/loss")
    return [(r["step"], *(r.get(k) for k in keys)) for r in metrics(run_dir)]


def test_sigkill_then_same_command_resumes_to_the_same_result(tmp_path):
    args = [*TINY_VIT, "trainer.max_steps=200", "trainer.ckpt_every=20", "trainer.log_every=1",
            "trainer.eval_every=20"]
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    run_train(whole, *args)

    command = [sys.executable, str(ROOT / "train.py"), *args, "logger=none", "trainer.progress=log",
               f"hydra.run.dir={interrupted}"]
    process = subprocess.Popen(command, cwd=ROOT, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "step_00000020" / MARKER).exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "summary.json").exists()  # it really was killed mid-way

    result = run_train(interrupted, *args)
    assert "resumed from" in result.stderr + result.stdout
    assert _train_rows(interrupted) == _train_rows(whole)
    assert summary(interrupted)["final"] == summary(whole)["final"]


def test_preemption_signal_checkpoints_then_resume_completes(tmp_path):
    args = [*TINY_VIT, "trainer.max_steps=5000", "trainer.ckpt_every=10000", "trainer.log_every=1",
            "trainer.eval_every=10000"]
    command = [sys.executable, str(ROOT / "train.py"), *args, "logger=none", "trainer.progress=log",
               f"hydra.run.dir={tmp_path}"]
    process = subprocess.Popen(command, cwd=ROOT, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not ((tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").read_text().count("\n") >= 3):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGUSR1)
    assert process.wait(timeout=120) == 128 + signal.SIGUSR1
    preempted = summary(tmp_path)
    steps = preempted["steps"]
    assert preempted["status"] == "preempted" and 3 <= steps < 5000
    assert latest_checkpoint(tmp_path / "checkpoints").name == f"step_{steps:08d}"

    run_train(tmp_path, *args, f"trainer.max_steps={steps + 5}")
    done = summary(tmp_path)
    assert done["status"] == "completed" and done["steps"] == steps + 5


# ------------------------------------------------------------------ divergence


def test_divergence_ends_cleanly_and_is_recorded(tmp_path):
    result = run_train(tmp_path, *TINY_VIT, "norm=identity", "trainer.optim.lr=1e6", "trainer.optim.clip_grad=null",
                       "trainer.max_steps=50", "trainer.log_every=1")
    assert result.returncode == 0
    diverged = summary(tmp_path)
    assert diverged["status"] == "diverged" and diverged["steps"] < 50 and "non-finite" in diverged["error"]

    failing = run_train(tmp_path / "strict", *TINY_VIT, "norm=identity", "trainer.optim.lr=1e6",
                        "trainer.optim.clip_grad=null", "trainer.max_steps=50", "trainer.fail_on_divergence=true",
                        check=False)
    assert failing.returncode == 1 and summary(tmp_path / "strict")["status"] == "diverged"


# ------------------------------------------------------------------ tracking


def test_wandb_without_api_key_writes_an_offline_run(tmp_path):
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "", "NETRC": str(tmp_path / "no-netrc")}
    result = run_train(tmp_path, *TINY_VIT, "trainer.max_steps=2", "logger=wandb", **env)
    assert "wandb sync" in result.stderr + result.stdout
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "wandb_id.txt").read_text().strip()


def test_logger_none_never_imports_wandb(tmp_path):
    poison = tmp_path / "poison" / "wandb"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('wandb must not be imported with logger=none')\n")
    run_train(tmp_path / "run", *TINY_VIT, "trainer.max_steps=2", "logger=none",
              PYTHONPATH=str(tmp_path / "poison"))
    assert summary(tmp_path / "run")["status"] == "completed"


# ------------------------------------------------------------------ several processes


def test_accelerate_launch_two_cpu_processes(tmp_path):
    # accelerate's `--cpu` launcher starts one process (several need MPI); `--multi_gpu` goes through torchrun,
    # and without CUDA the trainer's Accelerator joins the processes in a gloo group on the CPU
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    run_train(tmp_path, *TINY_VIT, "trainer.max_steps=4", "trainer.eval_every=2", launcher=launcher, timeout=300)
    result = summary(tmp_path)
    assert result["status"] == "completed" and result["steps"] == 4
    log_text = (tmp_path / "train.log").read_text()
    assert "2 processes" in log_text


# ------------------------------------------------------------------ building blocks


def test_epoch_sampler_shards_cover_each_batch_once_and_skip_resumes():
    shards = [list(EpochSampler(100, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 48 and not set(shards[0]) & set(shards[1])
    sampler = EpochSampler(100, 8, seed=3)
    full = list(sampler)
    sampler.set_position(0, skip_batches=5)
    assert list(sampler) == full[40:]
    sampler.set_position(1)
    assert list(sampler) != full


def test_warmup_cosine_schedule():
    lrs = [warmup_cosine(s, peak=1.0, total=100, warmup=10, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert warmup_cosine(100, peak=1.0, total=100, warmup=10, min_ratio=0.1) == pytest.approx(0.1)


def test_fms_fsdp_schedule_is_the_lower_of_a_parabolic_warmup_and_a_cosine_over_the_run():
    # fms-fsdp main_training_llama.py: min(1 - (1 - min(x, w)/w)**2, 0.1 + 0.5*0.9*(1 + cos(min(x, N)/N*pi)))
    lr = lambda s: learning_rate("fms_fsdp", s, peak=2.0, total=1000, warmup=50, min_ratio=0.1)  # noqa: E731
    assert lr(0) == 0.0 and lr(25) == pytest.approx(2.0 * 0.75) and lr(50) == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(0.05 * math.pi))))
    assert lr(1000) == pytest.approx(0.2) and lr(5000) == pytest.approx(0.2)


def test_linear_schedule_is_fairseqs_polynomial_decay():
    lr = lambda s: learning_rate("linear", s, peak=1.0, total=100, warmup=10)  # noqa: E731
    assert lr(0) == lr(1) == pytest.approx(0.1) and lr(10) == pytest.approx(1.0)
    assert lr(55) == pytest.approx(0.5) and lr(100) == 0.0
    assert learning_rate("constant", 7, peak=3.0, total=10) == 3.0


def test_sgd_with_step_decay_trains_as_torchvisions_recipe_asks(tmp_path):
    run_train(tmp_path, *TINY_VIT, "trainer.optim.name=sgd", "trainer.optim.lr=0.1", "trainer.optim.schedule=step",
              "trainer.optim.step_size=2", "trainer.optim.warmup_steps=0", "trainer.max_steps=4", "trainer.log_every=1")
    lrs = [r["lr"] for r in metrics(tmp_path) if "lr" in r]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01]) and summary(tmp_path)["status"] == "completed"


def test_incomplete_checkpoint_folders_are_ignored(tmp_path):
    (tmp_path / "step_00000010").mkdir()
    (tmp_path / "step_00000010" / MARKER).touch()
    (tmp_path / "step_00000020").mkdir()  # a save that was killed before its marker
    (tmp_path / ".tmp-step_00000030").mkdir()
    assert [p.name for p in valid_checkpoints(tmp_path)] == ["step_00000010"]


# ------------------------------------------------------------------ faults


def _losses(run_dir):
    return [(r["step"], r["train/loss"]) for r in metrics(run_dir) if "train/loss" in r]


def test_a_checkpoint_that_does_not_match_its_marker_is_skipped_for_the_one_before(tmp_path):
    args = [*TINY_VIT, "trainer.max_steps=6", "trainer.ckpt_every=2", "trainer.keep_last=3", "trainer.log_every=1",
            "trainer.eval_every=6"]
    run_train(tmp_path, *args)
    whole = _losses(tmp_path)
    latest = latest_checkpoint(tmp_path / "checkpoints")
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short after its marker was written
    (tmp_path / "summary.json").unlink()
    rerun = run_train(tmp_path, *args)
    log_text = rerun.stdout + rerun.stderr
    assert "step_00000006 does not match its COMPLETE marker" in log_text
    assert "resumed from" in log_text and "at step 4" in log_text
    assert _losses(tmp_path) == whole and summary(tmp_path)["status"] == "completed"


def test_a_failed_checkpoint_write_keeps_the_earlier_ones_and_training_goes_on(tmp_path, monkeypatch):
    import errno

    from accelerate import Accelerator

    from dyt.train.run import train

    real_save = Accelerator.save_state

    def disk_full_at_step_4(self, output_dir, *args, **kwargs):
        if "step_00000004" in str(output_dir):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_step_4)
    cfg = compose_cfg(*TINY_VIT, "trainer.max_steps=6", "trainer.ckpt_every=2", "trainer.keep_last=5", "logger=none",
                      "trainer.progress=log", run_dir=str(tmp_path))
    result = train(cfg)
    assert result["status"] == "completed" and result["failed_checkpoints"] == 1
    # step 4's folder removed, nothing half-written left, step 2 kept beside step 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000006"]


def test_a_second_run_on_a_folder_in_use_is_refused_in_one_line(tmp_path):
    from dyt.train.run import run_folder_lock

    tmp_path.mkdir(exist_ok=True)
    with run_folder_lock(tmp_path):  # as a live run holds it
        result = run_train(tmp_path, *TINY_VIT, "trainer.max_steps=2", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"in use by a running run (pid {os.getpid()})" in lines[0]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "summary.json").exists()
    run_train(tmp_path, *TINY_VIT, "trainer.max_steps=2")  # released: a killed run leaves no stuck lock
    assert summary(tmp_path)["status"] == "completed"
