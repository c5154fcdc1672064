"""The package layout: imports run one way, command line > tools > study > method.

The contracts live in pyproject.toml ([tool.importlinter]); ``lint-imports`` checks them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gas_lib"


def _lint_imports(cwd: Path) -> tuple[int, str]:
    """``lint-imports`` of this environment run in ``cwd``: it reads ``cwd/pyproject.toml`` and
    analyses the ``gas_lib`` importable from there. Returns the exit status and the output."""
    executable = Path(sys.executable).with_name("lint-imports")
    command = [str(executable) if executable.exists() else "lint-imports", "--no-cache"]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    return result.returncode, re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)


def _contracts() -> dict[str, dict]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in config["contracts"]}


def test_contracts_are_kept():
    status, out = _lint_imports(REPO)
    assert status == 0, out
    assert "0 broken" in out, out


def test_every_module_is_in_a_layer():
    """A new method module or subpackage must be placed in the layers contract, or nothing
    would check its imports."""
    layers = _contracts()["layers"]["layers"]
    listed = {name.strip().strip("()") for layer in layers for name in layer.split(":")}
    on_disk = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    on_disk |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert on_disk <= listed, f"not in [tool.importlinter] layers: {sorted(on_disk - listed)}"
    assert layers[:3] == ["__main__", "tools", "study"]


def test_the_contracts_bite(tmp_path):
    """The same contracts on a copy of the package with two imports that run the wrong way:
    a method module importing the study layer, and the public API importing a tool."""
    copy = tmp_path / "gas_lib"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with (copy / "config.py").open("a") as f:
        f.write("\nfrom .study import pipeline  # noqa: E402 (runs the wrong way)\n")
    with (copy / "__init__.py").open("a") as f:
        f.write("\nfrom .tools import synthetic  # noqa: E402 (runs the wrong way)\n")

    status, out = _lint_imports(tmp_path)
    assert status != 0, out
    assert "0 kept, 2 broken" in out, out
    assert "gas_lib.config -> gas_lib.study.pipeline" in out, out
    assert "gas_lib -> gas_lib.tools.synthetic" in out, out


def test_summary_runs_clean_as_a_script():
    """``run_all.sh`` runs ``python -m gas_lib.study.summary``: importing ``gas_lib.study``
    first must not import ``summary`` already (runpy's RuntimeWarning)."""
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "gas_lib.study.summary",
               "--help"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr, result.stderr
