"""scripts/reproduce.py: the paired statistics on known inputs, the verdict words, and `--quick` end to end on the
cheapest claim (records kept, the page's structure, reuse without training, one deleted record re-run alone)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import compare  # noqa: E402
import reproduce  # noqa: E402


def test_paired_statistics_match_a_hand_computed_t_interval():
    # differences 1, 2, 3: mean 2, std 1, t(0.975, 2 df) = 4.302653 (a t table), half-width 4.302653 / √3 = 2.484138
    paired = compare.paired_statistics([1.0, 2.0, 3.0])
    assert paired.n == 3 and paired.mean == pytest.approx(2.0) and paired.std == pytest.approx(1.0)
    assert paired.low == pytest.approx(2.0 - 2.484138, abs=1e-5)
    assert paired.high == pytest.approx(2.0 + 2.484138, abs=1e-5)
    assert not paired.excludes_zero
    # 1.0, 1.2, 1.1: mean 1.1, std 0.1, half-width 4.302653 · 0.1 / √3 = 0.248414: the interval excludes 0
    tight = compare.paired_statistics([1.0, 1.2, 1.1])
    assert (tight.low, tight.high) == (pytest.approx(0.851586, abs=1e-5), pytest.approx(1.348414, abs=1e-5))
    assert tight.excludes_zero
    single = compare.paired_statistics([0.5])
    assert single.n == 1 and single.low is None and not single.excludes_zero
    assert compare.paired_statistics([]) is None


def test_compare_reports_the_same_interval(tmp_path):
    """compare.py's Δ column is the same function's output, paired by seed (a seed missing in one arm is left out)."""
    def run(norm, seed, value):
        return compare.Run(tmp_path / f"{norm}{seed}", {"status": "completed", "seed": seed, "norm": norm,
                                                         "headline": {"name": "val/acc", "value": value}}, [])

    dyt = [run("dyt", 0, 0.90), run("dyt", 1, 0.92), run("dyt", 2, 0.94), run("dyt", 3, 0.5)]
    layernorm = [run("layernorm", 0, 0.89), run("layernorm", 1, 0.90), run("layernorm", 2, 0.91)]
    # differences 0.01, 0.02, 0.03: mean 0.02, std 0.01, half-width 0.02484138
    assert compare.paired_differences(dyt, layernorm) == pytest.approx([0.01, 0.02, 0.03])
    assert compare.paired_difference(dyt, layernorm) == "+0.02 [-0.00484, +0.0448] (3 seeds)"


def test_verdicts_in_plain_words():
    up = compare.paired_statistics([1.0, 1.2, 1.1])
    down = compare.paired_statistics([-1.0, -1.2, -1.1])
    noise = compare.paired_statistics([1.0, -1.0, 0.5])
    assert reproduce.pair_verdict(up, True, "better", "DyT").startswith("same direction as the paper")
    assert reproduce.pair_verdict(down, True, "better", "DyT").startswith("opposite")
    assert reproduce.pair_verdict(up, False, "worse", "DyT").startswith("same direction")  # a loss that rose
    assert reproduce.pair_verdict(noise, True, "better", "DyT") == "no difference at this scale"
    assert "the paper has them equal" in reproduce.pair_verdict(down, True, "equal", "DyT")
    assert reproduce.sign_verdict(down, -1) == "same direction as the paper"
    assert reproduce.sign_verdict(up, -1) == "opposite"


def test_claims_are_well_formed():
    ids = [c.id for c in reproduce.CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in reproduce.CLAIMS:
        names = {a.name for a in claim.arms}
        assert all(a.after in names for a in claim.arms if a.after), claim.id
        for source, arm in claim.reads:
            assert arm in {a.name for a in next(c for c in reproduce.CLAIMS if c.id == source).arms}
        if claim.kind == "pairs":
            assert all({c.treatment, c.baseline} <= names for c in claim.comparisons), claim.id
    plan = reproduce.Plan(reproduce.CLAIMS, 3, False, Path("/nonexistent/results"), Path("/nonexistent/outputs"))
    minutes = sum(s.minutes for s in plan.specs.values() if plan.canonical[s.key] is s)
    assert minutes / 2 <= 165, f"{minutes:.0f} run-minutes: more than ~2.5 h on 2 cores"
    # the LLaMA runs never pass over the embedded text twice
    for spec in plan.specs.values():
        steps = [int(o.split("=")[1]) for o in spec.overrides if o.startswith("trainer.max_steps=")]
        if "task=llama" in spec.overrides:
            assert steps and steps[0] * reproduce.TOKENS_PER_STEP <= reproduce.TRAIN_TOKENS, spec.name
    # the tokens-per-parameter probe spans at least 30×
    assert max(reproduce.TOKEN_STEPS) / min(reproduce.TOKEN_STEPS) >= 30


def _reproduce(tmp_path, *extra):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--quick", "--tables", "table1_vit",
                          "--launcher", "local_parallel", "--results", str(tmp_path / "results"),
                          "--outputs", str(tmp_path / "outputs"), *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout, re.findall(r"^\[reproduce\] start\s+(\S+):", out.stdout, flags=re.M)


def test_quick_runs_records_reuses_and_reruns_one(tmp_path):
    stdout, started = _reproduce(tmp_path)
    assert sorted(started) == sorted(f"table1_vit/{arm}/seed{s}" for arm in ("layernorm", "dyt") for s in (0, 1))
    records = tmp_path / "results" / "reproduce" / "table1_vit"
    for arm in ("layernorm", "dyt"):
        for seed in (0, 1):
            folder = records / arm / f"seed{seed}"
            assert {"summary.json", "metrics.jsonl", "config.yaml", "run.json"} <= {p.name for p in folder.iterdir()}
            assert not (folder / "checkpoints").exists()
            assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
            assert f"seed={seed}" in json.loads((folder / "run.json").read_text())["overrides"]
    page = (tmp_path / "results" / "REPORT.md").read_text()
    summary = page.split("## Summary", 1)[1].split("## Compute", 1)[0]
    rows = [line for line in summary.splitlines() if line.startswith("| [")]
    assert len(rows) == sum(len(c.comparisons) for c in reproduce.CLAIMS)  # every claim has its rows, run or not
    vit = next(r for r in rows if r.startswith("| [table1_vit]"))
    cells = [c.strip() for c in vit.strip("|").split("|")]
    assert cells[2] == "ViT-B 82.3 / 82.5, ViT-L 83.1 / 83.6"  # the paper's numbers, quoted
    assert re.search(r"layernorm \S+ ± \S+; dyt \S+ ± \S+", cells[3])  # mean ± std per arm
    assert re.fullmatch(r"[+-]\S+ \[[+-]\S+, [+-]\S+\]", cells[4])  # the paired interval
    assert cells[5] == "2"
    assert any(cells[6].startswith(v) for v in ("same direction as the paper", "opposite", "no difference at this scale",
                                                "DyT better here", "DyT worse here"))
    fig8 = next(r for r in rows if r.startswith("| [fig8_alpha_std]") and "(ViT)" in r)  # read from Table 1's runs
    assert "mean r" in fig8 and fig8.rstrip(" |").split("|")[-2].strip() == "2"
    convnext = next(r for r in rows if r.startswith("| [table1_convnext]"))
    assert "not run yet (command: `python scripts/reproduce.py --tables table1_convnext`)" in convnext
    assert (tmp_path / "results" / "reproduce" / "figures" / "fig8_alpha_std" / "table1_vit" / "alpha_std.png").exists()
    assert (tmp_path / "results" / "reproduce" / "figures" / "table1_vit" / "curves.png").exists()

    # again: nothing trains, the page is byte-identical
    _, started = _reproduce(tmp_path)
    assert started == []
    assert (tmp_path / "results" / "REPORT.md").read_text() == page

    # one record deleted: that run alone trains again
    shutil.rmtree(records / "dyt" / "seed1")
    _, started = _reproduce(tmp_path, "--no-figures")
    assert started == ["table1_vit/dyt/seed1"]
    assert json.loads((records / "dyt" / "seed1" / "summary.json").read_text())["status"] == "completed"

    # a fresh clone: the records without the run folders make the same page, training nothing
    page = (tmp_path / "results" / "REPORT.md").read_text()
    shutil.move(tmp_path / "outputs", tmp_path / "elsewhere")
    _, started = _reproduce(tmp_path, "--dry-run", "--no-figures")
    assert started == [] and (tmp_path / "results" / "REPORT.md").read_text() == page


def test_readme_block_is_rewritten_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n{reproduce.README_BEGIN}\nold\n{reproduce.README_END}\nafter\n")
    assert reproduce.update_readme(readme, "| a | b |")
    assert readme.read_text() == f"# x\n\n## Results\n{reproduce.README_BEGIN}\n| a | b |\n{reproduce.README_END}\nafter\n"
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not reproduce.update_readme(plain, "| a |") and plain.read_text() == "no markers\n"


def test_a_tables_selection_names_what_exists():
    assert [c.id for c in reproduce.select("1")] == ["table1_vit", "table1_convnext"]
    assert {c.id for c in reproduce.select("6,fn_ablation")} == {"table6_hyenadna", "table6_caduceus", "fn_ablation"}
    with pytest.raises(SystemExit, match="no such claim"):
        reproduce.select("42")
    assert len(reproduce.select(None)) == len(reproduce.CLAIMS)


def _record(plan, spec, status="completed"):
    """A record as train_one leaves it (no training: these tests read only the plan)."""
    folder = plan.record_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"status": status, "seed": spec.seed}))
    (folder / "run.json").write_text(json.dumps({"overrides": list(spec.overrides)}))


def test_a_finetune_starts_from_its_pretraining_and_reruns_it_when_the_checkpoint_is_gone(tmp_path):
    plan = reproduce.Plan(reproduce.CLAIMS, 2, False, tmp_path / "results", tmp_path / "outputs")
    claim = next(c for c in reproduce.CLAIMS if c.id == "table6_hyenadna")
    pretrain, finetune = plan.specs[("table6_hyenadna", "dyt_pretrain", 1)], plan.specs[("table6_hyenadna", "dyt_finetune", 1)]
    assert finetune.after is pretrain
    assert f"init_from={tmp_path / 'outputs' / 'table6_hyenadna' / 'dyt_pretrain' / 'seed1'}" in plan.command(finetune)
    for spec in plan.specs.values():
        if spec.claim == "table6_hyenadna" and spec is not finetune:
            _record(plan, spec)
    # the fine-tuning record is missing and its pretraining's run folder is gone: both train, nothing else
    assert [s.name for s in reproduce.to_train(plan, [claim])] == [pretrain.name, finetune.name]
    _record(plan, finetune, status="failed")  # a failed run is not a result: it runs again
    plan.forget()
    assert finetune.name in [s.name for s in reproduce.to_train(plan, [claim])]
    _record(plan, finetune)
    plan.forget()
    assert reproduce.to_train(plan, [claim]) == []
    # a record made with other overrides (the claim's sizing changed) is stale: it runs again
    (plan.record_dir(pretrain) / "run.json").write_text(json.dumps({"overrides": ["trainer.max_steps=1"]}))
    plan.forget()
    assert plan.state(pretrain) == "stale"
    # …and what was fine-tuned from its old weights runs again with it
    assert [s.name for s in reproduce.to_train(plan, [claim])] == [pretrain.name, finetune.name]


def test_shared_runs_train_once_and_are_recorded_once(tmp_path):
    plan = reproduce.Plan(reproduce.CLAIMS, 1, False, tmp_path / "results", tmp_path / "outputs")
    vit, tanh = plan.specs[("table1_vit", "dyt", 0)], plan.specs[("fn_ablation", "tanh", 0)]
    alpha = plan.specs[("alpha_vit", "w128_lr2e-3_a0.5", 0)]
    assert vit.key == tanh.key == alpha.key
    assert plan.record_dir(tanh) == plan.record_dir(alpha) == tmp_path / "results" / "reproduce" / "table1_vit" / "dyt" / "seed0"
    assert plan.run_dir(tanh) == tmp_path / "outputs" / "table1_vit" / "dyt" / "seed0"
    wanted = reproduce.to_train(plan, reproduce.select("table1_vit,fn_ablation"))
    assert sum(s.key == vit.key for s in wanted) == 1


def test_slurm_submits_each_run_through_the_repos_launcher(tmp_path):
    plan = reproduce.Plan(reproduce.CLAIMS, 1, False, tmp_path / "results", tmp_path / "outputs")
    spec = plan.specs[("table1_vit", "layernorm", 0)]
    command = plan.command(spec, launcher="slurm", launcher_args=("hydra.launcher.partition=cpu",))
    assert command[2:4] == ["-m", "hydra/launcher=slurm"] and "hydra.launcher.partition=cpu" in command
    folder = tmp_path / "outputs" / "table1_vit" / "layernorm"
    assert f"hydra.sweep.dir={folder}" in command and "hydra.sweep.subdir=seed0" in command
    assert "norm=layernorm" in command and "seed=0" in command
