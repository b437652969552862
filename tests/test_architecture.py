"""The layout is a contract the code is checked against: the layers of pyproject.toml, no circle, small modules."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from src.core.schema import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_imports_keep_the_layer_contract():
    proc = _lint_imports(PROJECT_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_an_import_up_a_layer_or_mlflow_in_the_loops_breaks_the_contract(tmp_path):
    """The contract is not vacuous: the same check fails on a copy of src/ with one upward import added."""
    shutil.copytree(PROJECT_ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    monitor = tmp_path / "src" / "training" / "monitor.py"
    monitor.write_text(monitor.read_text() + "\nimport mlflow  # noqa\nfrom src.experiments import train  # noqa\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode == 1
    assert "src.training.monitor -> src.experiments.train" in proc.stdout
    assert "src.training.monitor -> mlflow" in proc.stdout


def test_no_module_is_over_300_lines_and_train_reads_as_a_table_of_contents():
    sizes = {p.relative_to(PROJECT_ROOT).as_posix(): len(p.read_text().splitlines())
             for p in (PROJECT_ROOT / "src").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 300} == {}
    tree = ast.parse((PROJECT_ROOT / "src" / "experiments" / "train.py").read_text())
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    assert train.end_lineno - train.lineno + 1 <= 60
