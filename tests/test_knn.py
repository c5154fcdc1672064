"""The nearest-neighbour baseline: coreset, scoring, persistence, CLI, study and summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from gas_lib import KNNDetector, evaluate, greedy_coreset
from gas_lib.__main__ import main
from gas_lib.config import GASConfig
from gas_lib.data import load_split
from gas_lib.knn import coreset_size, nearest_distance
from gas_lib.study.summary import BASELINE_COLUMNS, COLUMNS, build_summary

from conftest import tiny_config


def _naive_greedy(features: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The textbook loop (one distance update over all points per centre), as reference."""
    from gas_lib.knn import PROJECTION_DIM, _project

    generator = torch.Generator().manual_seed(seed)
    start = int(torch.randint(features.shape[0], (1,), generator=generator))
    x = _project(features, PROJECTION_DIM, generator)
    min_dist = torch.full((x.shape[0],), float("inf"))
    picked = [start]
    for _ in range(n - 1):
        min_dist = torch.minimum(min_dist, ((x - x[picked[-1]]) ** 2).sum(1))
        min_dist[picked] = -1
        picked.append(int(min_dist.argmax()))
    return torch.tensor(picked)


# --- coreset ----------------------------------------------------------------------------------
def test_coreset_picks_distinct_points_and_covers_an_outlier():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2000, 256, generator=generator) * 0.1
    features[1234] += 50.0  # one far-away normal patch: random subsampling would likely drop it
    picked = greedy_coreset(features, 40, seed=3)
    assert picked.shape == (40,) and len(set(picked.tolist())) == 40
    assert 1234 in picked[:2].tolist()  # the farthest point is the first or second centre


def test_coreset_stays_distinct_among_duplicate_vectors():
    features = torch.zeros(300, 16)
    features[:5] = torch.eye(16)[:5] * 3  # 6 distinct vectors, 295 copies of the origin
    picked = greedy_coreset(features, 50, seed=0, block=32)
    assert len(set(picked.tolist())) == 50
    assert set(range(5)) <= set(picked.tolist())


@pytest.mark.parametrize("dim", [64, 384])  # below and above the 128-d projection
def test_lazy_coreset_is_exact_greedy(dim):
    features = torch.randn(1500, dim, generator=torch.Generator().manual_seed(1))
    fast = greedy_coreset(features, 120, seed=5, block=128)
    assert torch.equal(fast, _naive_greedy(features, 120, seed=5))
    assert torch.equal(fast, greedy_coreset(features, 120, seed=5, block=1000))  # any block size
    assert not torch.equal(fast, greedy_coreset(features, 120, seed=6))  # seeded start


def test_coreset_size_and_its_cap():
    assert coreset_size(110_000, 0.1, 20_000) == 11_000
    assert coreset_size(300_000, 0.1, 20_000) == 20_000
    assert coreset_size(7, 0.01, 100) == 1
    assert torch.equal(greedy_coreset(torch.randn(9, 4), 20, seed=0), torch.arange(9))


@pytest.mark.parametrize("field, value", [("knn_coreset_fraction", 0.0),
                                          ("knn_coreset_fraction", 1.5), ("knn_bank_max", 0)])
def test_config_rejects_bad_baseline_settings(field, value):
    with pytest.raises(ValueError, match=field):
        GASConfig(**{field: value})


def test_nearest_distance_matches_cdist_in_small_chunks():
    generator = torch.Generator().manual_seed(2)
    queries = torch.randn(300, 32, generator=generator)
    bank = torch.randn(70, 32, generator=generator)
    expected = torch.cdist(queries, bank).amin(1)
    assert torch.allclose(nearest_distance(queries, bank, chunk=100), expected, atol=1e-4)
    # the matrix-product formula loses ~sqrt(eps) * |x| at zero distance (|x| ~ 6 here)
    assert torch.allclose(nearest_distance(bank, bank), torch.zeros(70), atol=1e-2)


# --- detector on a synthetic category ---------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    return KNNDetector(tiny_config(knn_coreset_fraction=0.25)).fit(train, progress=False)


def test_fit_keeps_a_coreset_and_records_timings(fitted):
    grid = fitted.grid[0] * fitted.grid[1]
    assert fitted.n_train_patches == 12 * grid
    assert fitted.bank.shape == (round(0.25 * 12 * grid), 64)
    assert fitted.timings["train_seconds"] > 0 and "feature_seconds" in fitted.timings
    assert fitted.history.empty and fitted.selected_epoch is None


def test_the_baseline_finds_the_painted_defects(fitted, synthetic_root):
    test = load_split(synthetic_root, "plate", "test")
    metrics, per_defect, predictions = evaluate(fitted, test)
    assert metrics["image_auroc"] >= 0.8 and metrics["pixel_auroc"] >= 0.8
    assert set(per_defect["defect_type"]) >= {"all", "scratch", "spot"}
    assert predictions.maps.shape == (len(test), 64, 64)


def test_the_map_peaks_inside_a_planted_bright_square(fitted, synthetic_root):
    good = [s for s in load_split(synthetic_root, "plate", "test") if s.label == 0][:2]
    images = fitted.read_images(good)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[36:50, 10:24] = True
    planted = images.clone()
    planted[:, :, mask] = 1.0
    scores, maps = fitted.score(torch.cat([images, planted]))
    for i in range(2):
        peak = int(maps[2 + i].argmax())
        assert mask.flatten()[peak], f"image {i}: map maximum outside the square"
        assert scores[2 + i] > scores[i]


def test_save_and_load_give_identical_scores(fitted, synthetic_root, tmp_path):
    test = load_split(synthetic_root, "plate", "test")[:4]
    path = fitted.save(tmp_path / "knn.pth")
    loaded = KNNDetector.load(path)
    assert loaded.config == fitted.config and torch.equal(loaded.bank, fitted.bank)
    for a, b in zip(fitted.score(test), loaded.score(test)):
        assert torch.equal(a, b)
    state = torch.load(path, weights_only=True)
    assert state["method"] == "knn" and not (tmp_path / "knn.pth.tmp").exists()


def test_load_refuses_a_gas_checkpoint(tmp_path):
    path = tmp_path / "gas.pth"
    torch.save({"config": tiny_config().to_dict(), "adaptor": {}}, path)
    with pytest.raises(ValueError, match="'gas' detector"):
        KNNDetector.load(path)


# --- command line -----------------------------------------------------------------------------
def test_cli_knn_writes_the_same_metrics_keys_as_gas(synthetic_root, tmp_path, capsys):
    common = ["train", "--data-root", str(synthetic_root), "--category", "plate", "--profile",
              "cpu", "--device", "cpu", "--set", "image_size=64", "pretrain_embed_dim=64",
              "target_embed_dim=64"]
    assert main([*common, "--out", str(tmp_path / "gas"), "--epochs", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "knn"), "--method", "knn"]) == 0
    gas = json.loads((tmp_path / "gas" / "metrics.json").read_text())
    knn = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert set(knn) == set(gas)
    assert gas["method"] == "gas" and knn["method"] == "knn"
    assert knn["selection"] == "none" and knn["epochs_run"] == 0 and knn["bank_size"] > 0
    assert knn["image_auroc"] > 0.5
    out = tmp_path / "knn"
    for name in ("best_model_plate.pth", "per_defect.csv", "history.csv", "config.json",
                 "roc_curve_plate.png", "anomaly_maps_plate.png"):
        assert (out / name).is_file(), name
    assert not (out / "training_curves_plate.png").exists()  # no epochs, no curves
    assert KNNDetector.load(out / "best_model_plate.pth").bank.shape[0] == knn["bank_size"]
    assert "method: knn" in capsys.readouterr().out


# --- study and summary ------------------------------------------------------------------------
def test_study_baseline_writes_its_files_and_compares(synthetic_root, tmp_path):
    from gas_lib import study

    out = tmp_path / "plate"
    run = study.fit_and_evaluate_baseline(tiny_config(), synthetic_root, "plate", out)
    record = json.loads((out / "baseline_metrics.json").read_text())
    assert record["method"] == "knn" and record["image_auroc"] == pytest.approx(
        run.record["image_auroc"])
    per_defect = pd.read_csv(out / "baseline_per_defect.csv")
    assert list(per_defect["defect_type"]) == list(run.per_defect["defect_type"])
    assert not list(out.glob("*.tmp"))
    # stand-in for GAS's record: the comparison only reads the keys
    gas = dict(run.record, image_auroc=0.5, las_pool_seconds=2.0)
    table = study.baseline_comparison(gas, run.record)
    assert table.loc["image AUROC", "GAS - baseline"] == pytest.approx(0.5 - record["image_auroc"])
    assert table.loc["fit seconds (without backbone features)", "GAS"] == pytest.approx(
        record["train_seconds"] + 2.0)
    assert "behind" in study.describe_baseline(gas, run.record)
    side = study.baseline_per_defect(run.per_defect, run.per_defect)
    assert {"image_auroc GAS", "image_auroc k-NN", "aupro k-NN"} <= set(side.columns)
    picked = study.pick_comparison_images(run.predictions, k=3)
    assert len(picked) == 3 and run.predictions.labels[picked[-1]] == 0
    fig = study.plot_baseline_maps(run.detector, run.predictions, run.predictions, k=3)
    assert isinstance(fig, Figure) and len(fig.axes) >= 9


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_summary_shows_the_baseline_next_to_gas_and_blanks_when_missing(tmp_path):
    metrics = {"image_auroc": 0.9, "pixel_auroc": 0.95, "aupro": 0.8, "train_seconds": 30.0,
               "config": {"image_size": 64, "epochs": 2}, "environment": {}}
    _write(tmp_path / "with" / "metrics.json", metrics)
    _write(tmp_path / "with" / "baseline_metrics.json",
           {"image_auroc": 0.93, "pixel_auroc": 0.9, "aupro": 0.7, "train_seconds": 1.5})
    _write(tmp_path / "without" / "metrics.json", metrics)
    _write(tmp_path / "broken" / "metrics.json", metrics)
    _write(tmp_path / "broken" / "baseline_metrics.json", "{not json")
    frame = build_summary(tmp_path, ["with", "without", "broken"])
    assert set(BASELINE_COLUMNS) <= set(COLUMNS) <= set(frame.columns)
    rows = frame.set_index("category")
    assert rows.loc["with", "baseline_image_auroc"] == 0.93
    assert rows.loc["with", "baseline_fit_seconds"] == 1.5
    for category in ("without", "broken"):
        assert rows.loc[category, list(BASELINE_COLUMNS)].isna().all()
    csv = pd.read_csv(tmp_path / "summary.csv").set_index("category")
    assert csv.loc["with", "baseline_aupro"] == 0.7
    assert np.isnan(csv.loc["without", "baseline_aupro"])
    page = (tmp_path / "index.html").read_text()
    assert "k-NN" in page and "class='knn ahead'>93.0<" in page  # the baseline wins I-AUROC
    assert "class='knn'>90.0<" in page  # GAS wins P-AUROC
