"""Sweeps and comparisons: a local α₀ × norm sweep with a diverging point, compare.py on it, the paper's
figures from its runs, the Slurm launcher's submission, and the pieces that make requeueing work."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dyt.train.results import load_run
from dyt.train.slurm import export_distributed_env, first_host
from dyt.train.trainer import PreemptionFlag
from tests.helpers import ROOT, summary, train_env

SWEEP = ["task=vit", "task.size=debug", "norm=dyt,layernorm", "norm.alpha_init=0.5,1.0",
         "trainer.optim.lr=2e-3,1e6", "trainer.optim.clip_grad=null", "trainer.max_steps=12",
         "trainer.log_every=2", "trainer.eval_every=6", "trainer.batch_size=32", "trainer.max_eval_batches=2"]


def run_sweep(sweep_dir: Path, *overrides: str, launcher: str = "local") -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "train.py"), "-m", f"hydra/launcher={launcher}", *overrides,
               "logger=none", "trainer.progress=log", f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(command, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep")
    run_sweep(sweep_dir, *SWEEP)
    return sweep_dir


def _points(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: summary(p.parent) for p in sweep_dir.glob("*/summary.json")}


def _lr(sweep_dir: Path, name: str) -> float:
    return load_run(sweep_dir / name).config["trainer.optim.lr"]


def test_local_sweep_runs_every_point_and_a_diverging_one_does_not_stop_it(sweep):
    points = _points(sweep)
    assert len(points) == 8
    statuses = sorted(p["status"] for p in points.values())
    # layernorm has no α₀: its second α₀ point repeats the first and trains nothing
    assert statuses.count("duplicate") == 2
    diverged = [name for name, p in points.items() if p["status"] == "diverged"]
    completed = [name for name, p in points.items() if p["status"] == "completed"]
    assert diverged and all(_lr(sweep, name) == 1e6 for name in diverged)
    assert len(completed) == 3 and all(_lr(sweep, name) == 2e-3 for name in completed)


def test_compare_writes_curves_and_a_table_that_marks_divergence(sweep, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep), "--out", str(tmp_path),
                          "--name", "tiny"], cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "tiny" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| dyt") or line.startswith("| layernorm")]
    assert len(rows) == 6  # (dyt α₀ 0.5, 1 + layernorm) × 2 learning rates; duplicates left out
    assert sum("**diverged**" in row for row in rows) >= 2
    assert any(row.startswith("| dyt-a0.5 lr=0.002") for row in rows)
    completed = [row for row in rows if "**diverged**" not in row]
    assert completed and all(float(row.rstrip(" |").rsplit("| ", 1)[1]) > 0 for row in completed)  # wall time
    assert (tmp_path / "tiny" / "curves.png").stat().st_size > 10_000


def test_figure_scripts_draw_from_short_runs(sweep, tmp_path):
    points = _points(sweep)
    layernorm = next(sweep / n for n, p in points.items() if p["status"] == "completed" and p["norm"] == "layernorm")
    dyt = next(sweep / n for n, p in points.items() if p["status"] == "completed" and p["norm"].startswith("dyt"))
    for script, run in (("plot_ln_mapping.py", layernorm), ("plot_alpha_std.py", dyt)):
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), str(run), "--out", str(tmp_path)],
                             cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
    for name in ("ln_mapping_tokens.png", "ln_mapping_channels.png", "alpha_std.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_compare_names_a_folder_that_does_not_exist(sweep, tmp_path):
    typo = tmp_path / "norm:dyt+alpha:1.0"
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep), str(typo), "--out",
                          str(tmp_path)], cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and f"no such run or sweep folder: {typo}" in out.stderr
    assert not (tmp_path / sweep.name).exists()  # nothing written from the runs that were found


def test_compare_draws_a_heatmap_for_a_two_dimensional_grid(tmp_path):
    sweep_dir = tmp_path / "grid"
    run_sweep(sweep_dir, "task=vit", "task.size=debug", "norm.alpha_init=0.5,2.0", "trainer.optim.lr=1e-3,3e-3",
              "trainer.max_steps=4", "trainer.eval_every=4", "trainer.batch_size=32", "trainer.max_eval_batches=1")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), str(sweep_dir), "--out", str(tmp_path)],
                   cwd=ROOT, env=train_env(), check=True, capture_output=True, timeout=300)
    assert (tmp_path / "grid" / "heatmap.png").exists()


def test_submitit_local_executor_runs_the_sweep_jobs(tmp_path):
    run_sweep(tmp_path, "task=vit", "task.size=debug", "norm=dyt,layernorm", "trainer.max_steps=2",
              "trainer.batch_size=16", "trainer.max_eval_batches=1", "hydra.launcher.timeout_min=10",
              launcher="submitit_local")
    points = _points(tmp_path)
    assert len(points) == 2 and all(p["status"] == "completed" for p in points.values())
    assert {p["norm"] for p in points.values()} == {"dyt-a0.5", "layernorm"}
    # one wandb group per sweep: <sweep name (here the task and size)>-<sweep folder>
    assert all(p["group"] == f"vit-debug-{tmp_path.name}" for p in points.values())


def test_slurm_launcher_renders_gpus_time_and_the_preemption_signal():
    sys.path.insert(0, str(ROOT / "scripts"))
    from slurm_preview import sbatch_script

    script = sbatch_script(["experiment=vit_b", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                            "hydra.launcher.timeout_min=600"])
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--time=600", "--partition=gpu", "--signal=USR2@120"):
        assert f"#SBATCH {line}" in script
    assert "srun" in script


def test_slurm_site_settings_come_from_a_git_ignored_file():
    site = ROOT / "configs" / "hydra" / "launcher" / "site" / "local.yaml"
    assert subprocess.run(["git", "check-ignore", "-q", str(site)], cwd=ROOT).returncode == 0
    site.parent.mkdir(exist_ok=True)
    site.write_text("partition: our-gpus\naccount: lab42\n")
    try:
        sys.path.insert(0, str(ROOT / "scripts"))
        from slurm_preview import sbatch_script

        script = sbatch_script([])
    finally:
        site.unlink()
        site.parent.rmdir()
    assert "#SBATCH --partition=our-gpus" in script and "#SBATCH --account=lab42" in script


def test_two_sweeps_started_in_the_same_second_get_different_folders():
    import dyt.train  # noqa: F401 — registers the resolvers

    folders = set()
    for _ in range(2):
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("train", return_hydra_config=True)
            folders.add(str(cfg.hydra.sweep.dir))
    assert len(folders) == 2


def test_slurm_tasks_become_a_torch_process_group():
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu7,gpu8", "SLURM_JOB_NUM_NODES": "2"}
    assert export_distributed_env(env)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("5", "1", "8", "gpu7")
    assert env["LOCAL_WORLD_SIZE"] == "4"  # hsdp shards within a node
    assert not export_distributed_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"})  # one task: nothing to form
    assert not export_distributed_env({**env, "WORLD_SIZE": "2"})  # a launcher already set it
    assert first_host("node[03-05,09],cpu1") in ("node03",)  # scontrol when present, else parsed


def test_preemption_hands_the_signal_back_to_the_launchers_handler():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        flag = PreemptionFlag()
        with flag:
            os.kill(os.getpid(), signal.SIGUSR2)
        assert flag.signum == signal.SIGUSR2 and not calls  # only flagged while training
        assert flag.hand_over(signal.SIGUSR2) and calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_local_parallel_launcher_runs_points_side_by_side(tmp_path):
    run_sweep(tmp_path, "task=vit", "task.size=debug", "seed=0,1", "trainer.max_steps=2", "trainer.batch_size=16",
              "trainer.max_eval_batches=1", "hydra.launcher.n_jobs=2", launcher="local_parallel")
    points = _points(tmp_path)
    assert len(points) == 2 and all(p["status"] == "completed" for p in points.values())
