"""run_all.sh end to end on two tiny synthetic categories, one of them broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gas_lib.tools.synthetic import make_synthetic_category

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("00_data_exploration", "01_training", "02_gas_ablation", "03_evaluation")


def _run_all(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GAS_PYTHON": sys.executable}  # the bootstrap finds this Python
    return subprocess.run([str(REPO / "run_all.sh"), *args], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("run_all")
    data = root / "data"
    make_synthetic_category(data, "good_part", n_train=8, n_test_good=4, n_test_defect=4,
                            image_size=64, seed=1)
    broken = make_synthetic_category(data, "broken_part", n_train=6, n_test_good=2,
                                     n_test_defect=2, image_size=64, seed=2)
    (broken / "train" / "good" / "002.png").write_bytes(b"this is not a PNG")
    reports = root / "reports"
    result = _run_all("--categories", "good_part,broken_part", "--data-root", str(data),
                      "--profile", "cpu", "--epochs", "1", "--image-size", "64",
                      "--ablation-grid", "tiny", "--out", str(reports))
    return data, reports, result


def test_help_lists_the_options():
    result = _run_all("--help")
    assert result.returncode == 0
    for option in ("--categories", "--data-root", "--profile", "--epochs", "--out", "--jobs",
                   "--force", "--download"):
        assert option in result.stdout


def test_a_bad_option_is_one_clear_line():
    result = _run_all("--profile", "fastest")
    assert result.returncode == 2
    assert result.stderr.strip() == ("run_all.sh: --profile 'fastest': expected cpu, seed, "
                                     "glass or auto")


def test_missing_data_without_network_says_where_to_get_it(tmp_path):
    result = _run_all("--categories", "metal_plate", "--data-root", str(tmp_path / "empty"),
                      "--out", str(tmp_path / "reports"))
    assert result.returncode == 2
    assert "1b3dcRqTXR7LZkOEkVQ9qO_EcKzzC2EEI" in result.stderr
    assert "metal_plate/train/good" in result.stderr


def test_the_good_category_gets_every_report(study):
    _, reports, result = study
    assert result.returncode == 1, result.stdout + result.stderr  # one category failed
    for name in NOTEBOOKS:
        assert (reports / "good_part" / f"{name}.html").is_file(), name
    assert (reports / "good_part" / "metrics.json").is_file()
    assert not (reports / "good_part" / "FAILED").exists()


def test_the_summary_marks_the_failure_with_its_log(study):
    _, reports, _ = study
    summary = pd.read_csv(reports / "summary.csv").set_index("category")
    assert summary.loc["good_part", "status"] == "ok"
    assert 0.0 <= summary.loc["good_part", "image_auroc"] <= 1.0
    assert summary.loc["broken_part", "status"] == "failed"
    assert summary.loc["broken_part", "failed_step"] == "01_training"
    assert "002.png" in summary.loc["broken_part", "error"]
    page = (reports / "index.html").read_text()
    assert 'href="broken_part/run.log"' in page
    assert 'href="broken_part/01_training.html"' in page  # the partial report
    assert 'href="good_part/03_evaluation.html"' in page
    assert (reports / "broken_part" / "01_training.html").is_file()


def test_a_rerun_skips_finished_work(study):
    data, reports, _ = study
    result = _run_all("--categories", "good_part", "--data-root", str(data), "--profile", "cpu",
                      "--epochs", "1", "--image-size", "64", "--ablation-grid", "tiny",
                      "--out", str(reports))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("already done, skipped") == len(NOTEBOOKS)
