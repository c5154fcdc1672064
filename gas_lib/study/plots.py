"""Figures for GAS runs: training curves, ROC/PR, score histograms, anomaly maps, tables.

Every function takes plain data (numpy arrays, torch tensors, pandas DataFrames) so it can be
used from a notebook or a script without the rest of ``gas_lib``. Figures are built with
``matplotlib.figure.Figure`` directly, never through pyplot, so nothing is left open in
pyplot's global state and everything works headless (Agg). Each function returns its Figure
and, given ``save_to``, also writes it as an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

PathLike = str | Path

CLASS_NAMES = ("good", "defective")
AUROC_COLUMNS = ("image_auroc", "pixel_auroc")
DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "aupro")
GOOD_COLOUR = "tab:blue"
DEFECT_COLOUR = "tab:red"
HEAT_CMAP = "jet"


# --------------------------------------------------------------------------- helpers


def _np(x: Any) -> np.ndarray:
    """Torch tensors (on any device, with or without grad) and lists become numpy arrays."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _finish(fig: Figure, save_to: PathLike | None) -> Figure:
    """Shared tail of every plot: optionally save, always return the figure."""
    if save_to is not None:
        save_figure(fig, save_to)
    return fig


def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with constrained layout, so labels never overlap."""
    return Figure(figsize=(width, height), layout="constrained")


def _single_axes(ax: Axes | None, size: tuple[float, float] = (5.0, 4.5)) -> tuple[Figure, Axes]:
    """Draw into the caller's axes when given (for composite figures), else a new figure."""
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(*size)
    return fig, fig.add_subplot()


def _binary_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flat int labels and float scores; ROC/PR are meaningless without both classes."""
    y = _np(labels).reshape(-1).astype(int)
    s = _np(scores).reshape(-1).astype(float)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if np.unique(y).size < 2:
        raise ValueError("labels must contain both good (0) and defective (1) images")
    return y, s


def _present_metrics(table: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Metrics that the table actually has, so optional ones (e.g. AUPRO) can be skipped."""
    present = [m for m in metrics if m in table.columns]
    if not present:
        raise KeyError(f"none of the metrics {list(metrics)} are columns of the table")
    return present


def _has_values(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


# --------------------------------------------------------------------------- training curves


def plot_training_curves(
    history: pd.DataFrame,
    title: str = "",
    save_to: PathLike | None = None,
    *,
    selected_epoch: int | None = None,
) -> Figure:
    """Losses per epoch (left) and, when tracked, AUROC / validation loss per epoch (right).

    Shows whether the discriminator separates normal from GAS-synthetic features and whether
    detection quality follows; ``selected_epoch`` marks the checkpoint that model selection kept.
    """
    tracked = [c for c in AUROC_COLUMNS if _has_values(history, c)]
    has_val = _has_values(history, "val_loss")
    right_panel = bool(tracked) or has_val

    fig = _new_figure(11.0 if right_panel else 6.0, 4.0)
    axes = fig.subplots(1, 2 if right_panel else 1, squeeze=False)[0]
    _draw_losses(axes[0], history)
    twin = _draw_tracking(axes[1], history, tracked, has_val) if right_panel else None
    if selected_epoch is not None:
        for ax in axes:
            ax.axvline(selected_epoch, color="black", linestyle=":", linewidth=1.2,
                       label="selected")
    axes[0].legend(fontsize="small")
    if right_panel:
        _merged_legend(axes[1], twin)
    if title:
        fig.suptitle(title)
    return _finish(fig, save_to)


def _draw_losses(ax: Axes, history: pd.DataFrame) -> None:
    epochs = history["epoch"]
    ax.plot(epochs, history["loss_normal"], color=GOOD_COLOUR, label="normal")
    if history["loss_anomaly"].abs().sum() > 0:  # zero in LAS-only runs
        ax.plot(epochs, history["loss_anomaly"], color=DEFECT_COLOUR, label="GAS anomaly")
    if _has_values(history, "loss_las"):
        ax.plot(epochs, history["loss_las"], color="tab:purple", label="LAS (focal)")
    if _has_values(history, "loss_total"):
        ax.plot(epochs, history["loss_total"], color="black", linestyle="--", label="total")
    ax.set(xlabel="epoch", ylabel="loss", title="Discriminator losses")
    ax.grid(alpha=0.3)


def _draw_tracking(
    ax: Axes, history: pd.DataFrame, tracked: list[str], has_val: bool
) -> Axes | None:
    """AUROC columns on ``ax``; val_loss on a twin axis (or on ``ax`` if no AUROC is tracked).

    Returns the twin axis when one was made. NaN epochs (where evaluation was skipped) are
    dropped so the tracked points stay connected.
    """
    for column in tracked:
        rows = history[["epoch", column]].dropna()
        ax.plot(rows["epoch"], rows[column], marker="o", markersize=3, label=column)
    if tracked:
        ax.set(ylabel="AUROC", title="Detection quality")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if not has_val:
        return None
    val_ax = ax.twinx() if tracked else ax
    rows = history[["epoch", "val_loss"]].dropna()
    val_ax.plot(rows["epoch"], rows["val_loss"], color="tab:gray", linestyle="--",
                marker="s", markersize=3, label="val_loss")
    val_ax.set_ylabel("validation loss")
    if not tracked:
        ax.set_title("Validation loss")
    return val_ax if val_ax is not ax else None


def _merged_legend(ax: Axes, twin: Axes | None) -> None:
    """One legend per panel even when a twin axis holds some of the lines."""
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        h, lab = twin.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        ax.legend(handles, labels, fontsize="small")


# --------------------------------------------------------------------------- ROC / PR


def plot_roc_curve(
    labels: Any,
    scores: Any,
    title: str = "",
    save_to: PathLike | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Image-level ROC curve, AUROC in the legend; the chance diagonal for reference."""
    y, s = _binary_inputs(labels, scores)
    fpr, tpr, _ = roc_curve(y, s)
    auroc = roc_auc_score(y, s)
    fig, ax = _single_axes(ax)
    ax.plot(fpr, tpr, color=DEFECT_COLOUR, linewidth=2, label=f"AUROC = {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), title=title or "ROC curve")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _finish(fig, save_to)


def plot_pr_curve(
    labels: Any,
    scores: Any,
    title: str = "",
    save_to: PathLike | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Precision-recall curve with AP, the best-F1 operating point and the no-skill baseline."""
    y, s = _binary_inputs(labels, scores)
    precision, recall, thresholds = precision_recall_curve(y, s)
    ap = average_precision_score(y, s)
    best, f1 = _f1_max(precision, recall)
    fig, ax = _single_axes(ax)
    ax.plot(recall, precision, color=DEFECT_COLOUR, linewidth=2, label=f"AP = {ap:.3f}")
    ax.axhline(y.mean(), color="gray", linestyle="--", linewidth=1, label="no skill")
    ax.scatter([recall[best]], [precision[best]], color="black", zorder=3,
               label=f"F1-max = {f1:.3f} (thr {thresholds[best]:.3g})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(-0.01, 1.01), ylim=(-0.01, 1.05),
           title=title or "Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _finish(fig, save_to)


def _f1_max(precision: np.ndarray, recall: np.ndarray) -> tuple[int, float]:
    """Index (into thresholds) and value of the best F1; the last PR point has no threshold."""
    p, r = precision[:-1], recall[:-1]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(np.argmax(f1))
    return best, float(f1[best])


# --------------------------------------------------------------------------- score histograms


def plot_score_distributions(
    labels: Any,
    scores: Any,
    defect_types: Sequence[str] | None = None,
    threshold: float | None = None,
    title: str = "",
    save_to: PathLike | None = None,
) -> Figure:
    """Image scores of good vs defective images (or per defect type), to see the overlap.

    Densities are normalised per group so a small defect type is as visible as the good class.
    """
    y = _np(labels).reshape(-1).astype(int)
    s = _np(scores).reshape(-1).astype(float)
    groups = _score_groups(y, defect_types)
    frame = pd.DataFrame({"score": s, "group": groups})
    order = ["good"] + sorted(set(groups) - {"good"})
    palette = _group_palette(order)

    fig = _new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    sns.histplot(data=frame, x="score", hue="group", hue_order=order, palette=palette,
                 stat="density", common_norm=False, kde=len(frame) > 2, element="step",
                 alpha=0.3, ax=ax)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
        ax.text(threshold, 0.98, f" threshold {threshold:.3g}", va="top", ha="left",
                fontsize="small", transform=ax.get_xaxis_transform())
    ax.set(xlabel="image anomaly score", ylabel="density",
           title=title or "Image score distribution")
    ax.grid(alpha=0.3)
    return _finish(fig, save_to)


def _score_groups(y: np.ndarray, defect_types: Sequence[str] | None) -> np.ndarray:
    """'good' for label 0, else the defect type (or 'defective' when types are not given)."""
    if defect_types is None:
        return np.where(y == 0, "good", "defective")
    types = np.asarray([str(t) for t in defect_types])
    if types.shape != y.shape:
        raise ValueError("defect_types must have one entry per image")
    return np.where(y == 0, "good", types)


def _group_palette(order: list[str]) -> dict[str, Any]:
    """Good images always blue; defect groups take warm colours so they read as 'anomalous'."""
    defects = order[1:]
    colours = [DEFECT_COLOUR] if len(defects) == 1 else sns.color_palette("autumn", len(defects))
    return {"good": GOOD_COLOUR, **dict(zip(defects, colours))}


# --------------------------------------------------------------------------- anomaly maps


def plot_anomaly_grid(
    images: Any,
    masks: Any,
    maps: Any,
    titles: Sequence[str] | None = None,
    max_rows: int = 8,
    save_to: PathLike | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """One row per image: image | ground-truth outline | anomaly-map overlay with outline.

    All rows share one colour scale (by default the min/max over every map given), so a hot
    region means the same score in every row; one colorbar states that scale.
    """
    imgs = _to_hwc(_np(images))
    gts = _squeeze_channel(_np(masks)).astype(bool)
    heat = _squeeze_channel(_np(maps)).astype(float)
    if not len(imgs) == len(gts) == len(heat):
        raise ValueError("images, masks and maps must have the same number of items")
    vmin = float(np.nanmin(heat)) if vmin is None else vmin
    vmax = float(np.nanmax(heat)) if vmax is None else vmax
    n_rows = max(1, min(len(imgs), max_rows))

    fig = _new_figure(9.0, 2.9 * n_rows)
    axes = fig.subplots(n_rows, 3, squeeze=False)
    for row in range(min(len(imgs), n_rows)):
        label = titles[row] if titles is not None else None
        _draw_grid_row(axes[row], imgs[row], gts[row], heat[row], vmin, vmax, label)
    for ax, header in zip(axes[0], ("image", "ground truth", "anomaly map")):
        ax.set_title(header)
    scale = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=HEAT_CMAP)  # opaque
    fig.colorbar(scale, ax=list(axes[:, 2]), shrink=0.8, label="anomaly score")
    return _finish(fig, save_to)


def _to_hwc(images: np.ndarray) -> np.ndarray:
    """[N,3,H,W] or [N,H,W,3] (or grey [N,H,W]) → [N,H,W,C] clipped to [0, 1] for imshow."""
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    return np.clip(images.astype(float), 0.0, 1.0)


def _squeeze_channel(x: np.ndarray) -> np.ndarray:
    """[N,1,H,W] → [N,H,W]; masks and maps often keep a singleton channel."""
    return x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x


def _draw_grid_row(
    row: np.ndarray,
    image: np.ndarray,
    mask: np.ndarray,
    heat: np.ndarray,
    vmin: float,
    vmax: float,
    label: str | None,
) -> None:
    """Fill the three panels of one row."""
    height, width = image.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # maps at another resolution still align
    cmap = "gray" if image.ndim == 2 else None
    for ax in row:
        ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    _outline(row[1], mask, height, width)
    row[2].imshow(heat, cmap=HEAT_CMAP, alpha=0.5, vmin=vmin, vmax=vmax, extent=extent)
    _outline(row[2], mask, height, width)
    if label:
        row[0].set_ylabel(label, fontsize="small")


def _outline(ax: Axes, mask: np.ndarray, height: int, width: int) -> None:
    """Red contour of the ground truth, scaled to the image; skipped when there is no edge."""
    if not mask.any() or mask.all():
        return
    mh, mw = mask.shape
    xs = (np.arange(mw) + 0.5) * width / mw - 0.5
    ys = (np.arange(mh) + 0.5) * height / mh - 0.5
    ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)


# --------------------------------------------------------------------------- tables


def plot_confusion_matrix(
    labels: Any,
    predictions: Any,
    title: str = "",
    save_to: PathLike | None = None,
) -> Figure:
    """2x2 good/defective confusion matrix with counts and the share of each true class."""
    y = _np(labels).reshape(-1).astype(int)
    p = _np(predictions).reshape(-1).astype(int)
    counts = confusion_matrix(y, p, labels=[0, 1])
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    annot = np.array([[f"{c}\n({s:.0%})" for c, s in zip(c_row, s_row)]
                      for c_row, s_row in zip(counts, shares)])

    fig = _new_figure(4.5, 4.0)
    ax = fig.add_subplot()
    sns.heatmap(counts, annot=annot, fmt="", cmap="Blues", cbar=False, square=True,
                xticklabels=CLASS_NAMES, yticklabels=CLASS_NAMES, linewidths=0.5, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix")
    return _finish(fig, save_to)


def plot_metric_bars(
    table: pd.DataFrame,
    metrics: Sequence[str] = DEFAULT_METRICS,
    by: str = "defect_type",
    title: str = "",
    save_to: PathLike | None = None,
) -> Figure:
    """Grouped bars of each metric per row of ``table`` (per defect type, per category, ...).

    Metrics absent from the table are skipped; each bar carries its value to three decimals.
    """
    if by not in table.columns and table.index.name == by:
        table = table.reset_index()
    present = _present_metrics(table, metrics)
    long = table.melt(id_vars=[by], value_vars=present, var_name="metric", value_name="value")
    long[by] = long[by].astype(str)

    n_groups = long[by].nunique()
    fig = _new_figure(max(5.0, 1.1 * n_groups * max(1, len(present)) ** 0.5 + 2.0), 4.2)
    ax = fig.add_subplot()
    sns.barplot(data=long, x=by, y="value", hue="metric", hue_order=present, errorbar=None, ax=ax)
    for container in ax.containers:
        values = np.asarray(container.datavalues, dtype=float)
        ax.bar_label(container, labels=["" if np.isnan(v) else f"{v:.3f}" for v in values],
                     fontsize="x-small", rotation=90, padding=2)
    top = np.nanmax(long["value"].to_numpy(dtype=float)) if long["value"].notna().any() else 1.0
    ax.set_ylim(0, 1.15 if top <= 1.0 else top * 1.15)
    ax.set(xlabel=by.replace("_", " "), ylabel="score", title=title or "Metrics")
    ax.tick_params(axis="x", labelrotation=30 if n_groups > 4 else 0)
    ax.legend(title=None, fontsize="small", loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, save_to)


# --------------------------------------------------------------------------- features


def plot_feature_projection(
    normal: Any,
    synthetic: Any,
    labels: tuple[str, str] = ("normal", "GAS synthetic"),
    title: str = "",
    save_to: PathLike | None = None,
    max_points: int = 4000,
    seed: int = 0,
) -> Figure:
    """2-D PCA of normal vs GAS-synthetic features, to see how far the synthetic ones sit.

    PCA is fitted on both sets together so neither defines the axes alone. Arrays with more
    than two dimensions are flattened to [*, D] (e.g. [B, patches, D]). Each set is subsampled
    to ``max_points`` with a seeded generator, so the same seed gives the same figure.
    """
    rng = np.random.default_rng(seed)
    a = _subsample(_as_rows(_np(normal)), max_points, rng)
    b = _subsample(_as_rows(_np(synthetic)), max_points, rng)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    pca = PCA(n_components=2, random_state=seed).fit(np.concatenate([a, b]))
    pa, pb = pca.transform(a), pca.transform(b)

    fig = _new_figure(6.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(pa[:, 0], pa[:, 1], s=6, alpha=0.5, color=GOOD_COLOUR, label=labels[0])
    ax.scatter(pb[:, 0], pb[:, 1], s=6, alpha=0.5, color=DEFECT_COLOUR, label=labels[1])
    var = pca.explained_variance_ratio_
    ax.set(xlabel=f"PC1 ({var[0]:.1%} var.)", ylabel=f"PC2 ({var[1]:.1%} var.)",
           title=title or "Feature projection (PCA)")
    ax.legend(markerscale=3)
    ax.grid(alpha=0.3)
    return _finish(fig, save_to)


def _as_rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]).astype(float)


def _subsample(x: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_points`` rows, drawn without replacement and kept in original order."""
    if len(x) <= max_points:
        return x
    return x[np.sort(rng.choice(len(x), size=max_points, replace=False))]


# --------------------------------------------------------------------------- ablations


def plot_ablation(
    table: pd.DataFrame,
    param: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    title: str = "",
    save_to: PathLike | None = None,
) -> Figure:
    """Each metric against one swept setting; repeated rows (seeds) show mean ± sd.

    Numeric settings get a line plot (log x-axis when they span two or more decades, as
    learning rates do); strings and booleans get an unjoined point plot in order of appearance.
    """
    present = _present_metrics(table, metrics)
    long = table.melt(id_vars=[param], value_vars=present, var_name="metric", value_name="value")
    numeric = _is_numeric(table[param])

    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    if numeric:
        sns.lineplot(data=long, x=param, y="value", hue="metric", hue_order=present,
                     marker="o", errorbar="sd", ax=ax)
        if _spans_decades(table[param]):
            ax.set_xscale("log")
    else:
        long[param] = long[param].astype(str)
        sns.pointplot(data=long, x=param, y="value", hue="metric", hue_order=present,
                      errorbar="sd", dodge=0.3, linestyle="none", ax=ax)  # categories: no joins
    ax.set(xlabel=param.replace("_", " "), ylabel="score", title=title or f"Ablation: {param}")
    ax.legend(title=None, fontsize="small")
    ax.grid(alpha=0.3)
    return _finish(fig, save_to)


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _spans_decades(column: pd.Series) -> bool:
    values = column.dropna().to_numpy(dtype=float)
    return bool(len(values) and values.min() > 0 and values.max() / values.min() >= 100)
