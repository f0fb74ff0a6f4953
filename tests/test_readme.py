"""README is the user's door: its commands and its library example must stay true."""
import re

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_library_example_runs_as_written():
    code = re.search(r"```python\n(.*?)```", _section("dyt as a library"), re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    commands = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("python train.py task=vit norm=dyt") and "pip install -e ." in commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_paper_rows_table_names_every_experiment_with_a_command():
    table = README[README.index("### Paper rows"):README.index("\n### ", README.index("### Paper rows") + 1)]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert {line.split("|")[1].strip().split(",")[0] for line in rows} >= {"1", "3", "4", "5", "6"}
    assert all("train.py experiment=" in line for line in rows)
    experiments = {p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    fine_tuning = {e for e in experiments if e.endswith("_genomic_benchmarks")}  # run by genomic_benchmarks.py
    assert all(f"`{name}`" in table for name in experiments - fine_tuning)
