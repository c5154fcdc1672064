"""Every plot runs headless on small seeded data, returns a Figure and can be saved as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from gas_lib.study import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def scored(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """30 good and 20 defective images; defective ones score higher on average."""
    labels = np.r_[np.zeros(30), np.ones(20)].astype(int)
    scores = rng.normal(size=50) + 1.5 * labels
    return labels, scores


def _history(rng: np.random.Generator, epochs: int = 12) -> pd.DataFrame:
    return pd.DataFrame({
        "epoch": np.arange(epochs),
        "loss_normal": rng.random(epochs),
        "loss_anomaly": rng.random(epochs),
        "loss_total": rng.random(epochs),
    })


def _legend_texts(fig: Figure, axis: int = 0) -> list[str]:
    legend = fig.axes[axis].get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- helpers


def test_np_accepts_tensors_with_grad() -> None:
    x = torch.ones(2, 3, requires_grad=True)
    out = plots._np(x * 2)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out[0, 0] == 2


def test_save_figure_creates_parent_dirs(tmp_path: Path) -> None:
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    path = plots.save_figure(fig, tmp_path / "a" / "b" / "fig.png")
    assert path == tmp_path / "a" / "b" / "fig.png"
    _assert_png(path)


# --------------------------------------------------------------------------- training curves


def test_training_curves_losses_only(rng: np.random.Generator, tmp_path: Path) -> None:
    fig = plots.plot_training_curves(_history(rng), title="run", save_to=tmp_path / "tc.png")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 3  # normal, anomaly, total
    assert fig.axes[0].lines[2].get_linestyle() == "--"
    _assert_png(tmp_path / "tc.png")


def test_training_curves_without_total(rng: np.random.Generator) -> None:
    fig = plots.plot_training_curves(_history(rng).drop(columns="loss_total"))
    assert len(fig.axes[0].lines) == 2


def test_training_curves_all_nan_auroc_gives_no_right_panel(rng: np.random.Generator) -> None:
    history = _history(rng).assign(image_auroc=np.nan, val_loss=np.nan)
    assert len(plots.plot_training_curves(history).axes) == 1


def test_training_curves_with_sparse_auroc_and_val_loss(rng: np.random.Generator) -> None:
    history = _history(rng)
    every_third = history["epoch"] % 3 == 0
    history["image_auroc"] = np.where(every_third, rng.random(len(history)), np.nan)
    history["pixel_auroc"] = np.where(every_third, rng.random(len(history)), np.nan)
    history["val_loss"] = rng.random(len(history))
    fig = plots.plot_training_curves(history, selected_epoch=6)

    assert len(fig.axes) == 3  # losses, AUROC, val_loss twin
    auroc_ax = fig.axes[1]
    image_line = auroc_ax.lines[0]
    assert len(image_line.get_xdata()) == every_third.sum()  # NaN epochs dropped
    assert not np.isnan(image_line.get_ydata()).any()
    texts = _legend_texts(fig, axis=1)
    assert {"image_auroc", "pixel_auroc", "val_loss", "selected"} <= set(texts)
    assert "selected" in _legend_texts(fig, axis=0)


def test_training_curves_val_loss_only(rng: np.random.Generator) -> None:
    fig = plots.plot_training_curves(_history(rng).assign(val_loss=1.0))
    assert len(fig.axes) == 2  # no twin needed without AUROC
    assert fig.axes[1].get_ylabel() == "validation loss"


# --------------------------------------------------------------------------- ROC / PR


def test_roc_legend_shows_sklearn_auroc(scored, tmp_path: Path) -> None:
    labels, scores = scored
    fig = plots.plot_roc_curve(labels, scores, save_to=tmp_path / "roc.png")
    expected = f"{roc_auc_score(labels, scores):.3f}"
    assert any(expected in text for text in _legend_texts(fig))
    assert len(fig.axes[0].lines) == 2  # curve + chance diagonal
    _assert_png(tmp_path / "roc.png")


def test_roc_accepts_torch_and_existing_axes(scored) -> None:
    labels, scores = scored
    fig = Figure()
    left, right = fig.subplots(1, 2)
    out = plots.plot_roc_curve(torch.tensor(labels), torch.tensor(scores), ax=right)
    assert out is fig
    assert len(right.lines) == 2 and len(left.lines) == 0


def test_roc_rejects_single_class() -> None:
    with pytest.raises(ValueError, match="both"):
        plots.plot_roc_curve(np.zeros(5), np.arange(5.0))


def test_pr_curve_marks_f1_max(scored, tmp_path: Path) -> None:
    labels, scores = scored
    fig = plots.plot_pr_curve(labels, scores, title="pr", save_to=tmp_path / "pr.png")
    texts = _legend_texts(fig)
    assert any(t.startswith("AP = ") for t in texts)
    assert any(t.startswith("F1-max = ") for t in texts)
    assert len(fig.axes[0].collections) == 1  # the F1-max point
    _assert_png(tmp_path / "pr.png")


def test_f1_max_on_perfect_separation() -> None:
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    best, f1 = plots._f1_max(precision, recall)
    assert f1 == pytest.approx(1.0)
    assert thresholds[best] == pytest.approx(0.8)


# --------------------------------------------------------------------------- score histograms


def test_score_distributions_good_vs_defective(scored, tmp_path: Path) -> None:
    labels, scores = scored
    fig = plots.plot_score_distributions(labels, scores, threshold=0.75,
                                         save_to=tmp_path / "scores.png")
    ax = fig.axes[0]
    assert _legend_texts(fig) == ["good", "defective"]
    assert any(list(line.get_xdata()) == [0.75, 0.75] for line in ax.lines)  # threshold
    _assert_png(tmp_path / "scores.png")


def test_score_distributions_hue_by_defect_type(scored) -> None:
    labels, scores = scored
    types = np.where(labels == 0, "good", np.where(np.arange(50) % 2, "hole", "scratch"))
    fig = plots.plot_score_distributions(labels, scores, defect_types=list(types))
    assert _legend_texts(fig) == ["good", "hole", "scratch"]


# --------------------------------------------------------------------------- anomaly grid


def _grid_inputs(rng: np.random.Generator, n: int, size: int = 24):
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = np.zeros((n, size, size), dtype=bool)
    masks[1:, 6:14, 8:16] = True  # first image is good (empty mask)
    maps = rng.random((n, size, size))
    return images, masks, maps


def test_anomaly_grid_rows_columns_and_colorbar(rng: np.random.Generator, tmp_path: Path) -> None:
    images, masks, maps = _grid_inputs(rng, n=4)
    fig = plots.plot_anomaly_grid(images, masks, maps, titles=["a", "b", "c", "d"],
                                  save_to=tmp_path / "grid.png")
    assert len(fig.axes) == 4 * 3 + 1  # + colorbar
    grid = fig.axes[:12]
    assert [ax.get_title() for ax in grid[:3]] == ["image", "ground truth", "anomaly map"]
    assert [grid[3 * r].get_ylabel() for r in range(4)] == ["a", "b", "c", "d"]
    assert len(grid[1].collections) == 0  # empty mask: no outline
    assert len(grid[4].collections) > 0  # defective row: GT contour
    _assert_png(tmp_path / "grid.png")


def test_anomaly_grid_caps_rows_and_shares_scale(rng: np.random.Generator) -> None:
    images, masks, maps = _grid_inputs(rng, n=6)
    maps[5] += 10.0  # only in a row that is not shown, yet it sets the global scale
    fig = plots.plot_anomaly_grid(images.numpy().transpose(0, 2, 3, 1), masks, maps, max_rows=3)
    assert len(fig.axes) == 3 * 3 + 1
    heat_images = [fig.axes[3 * r + 2].images[-1] for r in range(3)]
    for im in heat_images:
        assert im.get_clim() == pytest.approx((maps.min(), maps.max()))


def test_anomaly_grid_explicit_limits_and_low_res_maps(rng: np.random.Generator) -> None:
    images, masks, _ = _grid_inputs(rng, n=2)
    maps = rng.random((2, 1, 6, 6))  # coarser map with a channel axis
    fig = plots.plot_anomaly_grid(images, masks[:, None], maps, vmin=0.0, vmax=2.0)
    heat = fig.axes[2].images[-1]
    assert heat.get_clim() == (0.0, 2.0)
    assert heat.get_extent() == pytest.approx([-0.5, 23.5, 23.5, -0.5])


# --------------------------------------------------------------------------- tables


def test_confusion_matrix_counts(tmp_path: Path) -> None:
    labels = np.array([0, 0, 0, 1, 1])
    predictions = np.array([0, 1, 0, 1, 1])
    fig = plots.plot_confusion_matrix(labels, predictions, save_to=tmp_path / "cm.png")
    assert len(fig.axes) == 1
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert [t.split("\n")[0] for t in texts] == ["2", "1", "0", "2"]
    _assert_png(tmp_path / "cm.png")


def test_metric_bars_skips_absent_metrics(tmp_path: Path) -> None:
    table = pd.DataFrame({
        "defect_type": ["hole", "scratch", "flattening"],
        "image_auroc": [0.91, 0.82, 0.77],
        "pixel_auroc": [0.97, np.nan, 0.95],
    })  # no aupro column
    fig = plots.plot_metric_bars(table, save_to=tmp_path / "bars.png")
    ax = fig.axes[0]
    assert len(ax.containers) == 2
    labels = [t.get_text() for t in ax.texts]
    assert "0.910" in labels and "0.950" in labels and "nan" not in labels
    _assert_png(tmp_path / "bars.png")


def test_metric_bars_by_index_name() -> None:
    table = pd.DataFrame({"image_auroc": [0.9, 0.8]},
                         index=pd.Index(["bracket_black", "tubes"], name="category"))
    fig = plots.plot_metric_bars(table, by="category")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["bracket_black", "tubes"]


def test_metric_bars_without_any_metric_raises() -> None:
    with pytest.raises(KeyError):
        plots.plot_metric_bars(pd.DataFrame({"defect_type": ["a"], "x": [1.0]}))


# --------------------------------------------------------------------------- features


def test_feature_projection_subsamples_and_is_deterministic(rng, tmp_path: Path) -> None:
    normal = rng.normal(size=(500, 16))
    synthetic = torch.tensor(rng.normal(loc=1.0, size=(2, 60, 16)))  # flattened to [120, 16]
    kwargs = dict(max_points=200, seed=3)
    first = plots.plot_feature_projection(normal, synthetic, save_to=tmp_path / "fp.png", **kwargs)
    second = plots.plot_feature_projection(normal, synthetic, **kwargs)
    other = plots.plot_feature_projection(normal, synthetic, max_points=200, seed=4)

    offsets = [c.get_offsets() for c in first.axes[0].collections]
    assert [len(o) for o in offsets] == [200, 120]
    for a, b in zip(offsets, (c.get_offsets() for c in second.axes[0].collections)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(offsets[0], other.axes[0].collections[0].get_offsets())
    assert _legend_texts(first) == ["normal", "GAS synthetic"]
    assert first.axes[0].get_xlabel().startswith("PC1")
    _assert_png(tmp_path / "fp.png")


def test_feature_projection_rejects_mismatched_dims(rng) -> None:
    with pytest.raises(ValueError):
        plots.plot_feature_projection(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))


# --------------------------------------------------------------------------- ablations


def test_ablation_numeric_param(rng: np.random.Generator, tmp_path: Path) -> None:
    table = pd.DataFrame({
        "lr": [1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2],  # two seeds each
        "image_auroc": rng.random(6),
        "pixel_auroc": rng.random(6),
        "aupro": rng.random(6),
    })
    fig = plots.plot_ablation(table, "lr", save_to=tmp_path / "ablation.png")
    ax = fig.axes[0]
    assert _legend_texts(fig) == ["image_auroc", "pixel_auroc", "aupro"]
    assert ax.get_xscale() == "log"
    data_lines = [line for line in ax.lines if len(line.get_xdata()) == 3]
    assert len(data_lines) == 3  # one mean line per metric over three lr values
    _assert_png(tmp_path / "ablation.png")


def test_ablation_linear_numeric_param(rng: np.random.Generator) -> None:
    table = pd.DataFrame({"n_step": [1, 3, 5], "image_auroc": rng.random(3)})
    assert plots.plot_ablation(table, "n_step").axes[0].get_xscale() == "linear"


def test_ablation_string_param_keeps_order(rng: np.random.Generator) -> None:
    table = pd.DataFrame({
        "variant": ["manifold", "hypersphere"],
        "image_auroc": [0.9, 0.8],
        "pixel_auroc": [0.95, 0.9],
    })
    fig = plots.plot_ablation(table, "variant")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == ["manifold", "hypersphere"]
    assert _legend_texts(fig) == ["image_auroc", "pixel_auroc"]


def test_nothing_left_in_pyplot_state(scored) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.plot_roc_curve(*scored)
    plots.plot_confusion_matrix(scored[0], scored[1] > 0.75)
    assert plt.get_fignums() == before
