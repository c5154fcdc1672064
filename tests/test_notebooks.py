"""The study notebooks: committed clean, and each one runs under papermill on tiny data."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import papermill
import pytest
from nbconvert import HTMLExporter

from gas_lib.tools.synthetic import make_synthetic_category

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ORDER = ["00_data_exploration", "01_training", "02_gas_ablation", "03_evaluation"]
REQUIRED_PARAMETERS = {"category", "data_root", "profile", "out_dir", "seed"}


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_four_notebooks_exist_in_order():
    assert [p.stem for p in NOTEBOOKS] == ORDER


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_stripped_and_parameterised(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in _code_cells(notebook):
        assert cell.outputs == [], f"{path.name}: a code cell has outputs"
        assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
    assert tagged[0] is _code_cells(notebook)[0], "the parameters cell must be the first code cell"
    assigned = {target.id for node in ast.parse(tagged[0].source).body
                if isinstance(node, ast.Assign) for target in node.targets}
    assert REQUIRED_PARAMETERS <= assigned, f"{path.name}: missing {REQUIRED_PARAMETERS - assigned}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_defines_no_functions_or_classes(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in _code_cells(notebook):
        source = "\n".join(line for line in cell.source.splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                         ast.Lambda)), f"{path.name}: defines {type(node).__name__}"


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, Path]:
    """All four notebooks run in order on one tiny synthetic category, as run_all.sh does."""
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    make_synthetic_category(data, "plate", n_train=10, n_test_good=5, n_test_defect=5,
                            image_size=64, seed=3)
    out = root / "reports" / "plate"
    parameters = dict(category="plate", data_root=str(data), profile="cpu", out_dir=str(out),
                      seed=0, epochs=2, image_size=64, interactive=False)
    results = {}
    for name in ORDER:
        extra = {"ablation_grid": "tiny"} if name == "02_gas_ablation" else {}
        target = out / f"{name}.ipynb"
        out.mkdir(parents=True, exist_ok=True)
        papermill.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(target),
                                   parameters={**parameters, **extra}, kernel_name="python3",
                                   cwd=str(REPO / "notebooks"), progress_bar=False)
        results[name] = target
    return results


@pytest.mark.parametrize("name", ORDER)
def test_notebook_runs_clean_and_converts_to_html(executed, name):
    notebook = nbformat.read(executed[name], as_version=4)
    outputs = [o for cell in _code_cells(notebook) for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "Warning" not in stderr and "Traceback" not in stderr, stderr[:2000]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{name}: no figure was drawn"
    html, _ = HTMLExporter().from_notebook_node(notebook)
    assert html.count("data:image/png;base64") >= len(figures)  # self-contained
    assert "<h1" in html


def test_the_study_writes_its_artefacts(executed):
    out = executed["03_evaluation"].parent
    for name in ("best_model_plate.pth", "history.csv", "config.json", "ablation.csv",
                 "per_defect.csv", "image_stats.csv", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max",
                "train_seconds", "eval_seconds", "selection", "config", "environment"):
        assert key in metrics, key
    assert metrics["config"]["epochs"] == 2 and metrics["selection"] == "last"
    assert 0.5 < metrics["image_auroc"] <= 1.0  # painted defects on a tiny run: well above chance
