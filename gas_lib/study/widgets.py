"""An image explorer for the evaluation notebook: live widgets in JupyterLab, a grid headless.

``explorer(detector, predictions, threshold, interactive=True)`` returns an ipywidgets box
(pick a test image, see image, ground truth and anomaly map, move a threshold slider) when
``interactive`` is true and ipywidgets is importable; otherwise (papermill / ``run_all.sh``
pass ``interactive=False``) a static figure of representative images at ``threshold``, so the
HTML report shows the same panels without a live kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..data import load_image
from ..evaluate import Predictions
from ..train import GASDetector
from .plots import HEAT_CMAP

PANELS = ("image", "ground truth", "anomaly map", "prediction at threshold")


def widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _image(detector: GASDetector, predictions: Predictions, index: int) -> np.ndarray:
    sample = predictions.samples[index]
    tensor = load_image(sample.image_path, detector.config.input_shape, detector.config.center_crop)
    return tensor.permute(1, 2, 0).numpy()


def _draw_row(axes: Sequence, image: np.ndarray, mask: np.ndarray, heat: np.ndarray,
              score: float, label: int, threshold: float, vmin: float, vmax: float,
              name: str) -> object:
    for ax in axes:
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
    if mask.any():
        axes[1].contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    shown = axes[2].imshow(heat, cmap=HEAT_CMAP, alpha=0.55, vmin=vmin, vmax=vmax)
    predicted = heat >= threshold
    if predicted.any():
        axes[3].contourf(predicted.astype(float), levels=[0.5, 1.5], colors=["yellow"], alpha=0.45)
        axes[3].contour(predicted.astype(float), levels=[0.5], colors="yellow", linewidths=1.0)
    if mask.any():
        axes[3].contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.0)
    decision = "defective" if score >= threshold else "good"
    truth = "defective" if label else "good"
    verdict = "correct" if decision == truth else "WRONG"
    axes[0].set_ylabel(name, fontsize="small")
    axes[3].set_xlabel(f"score {score:.3f} -> {decision} ({verdict})", fontsize="small")
    return shown


def image_figure(detector: GASDetector, predictions: Predictions, index: int, threshold: float,
                 vmin: float | None = None, vmax: float | None = None) -> Figure:
    """One test image in four panels: image, ground truth, anomaly map, map >= threshold."""
    maps = predictions.maps
    vmin = float(maps.min()) if vmin is None else vmin
    vmax = float(maps.max()) if vmax is None else vmax
    fig = Figure(figsize=(13.0, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    shown = _draw_row(axes, _image(detector, predictions, index), predictions.masks[index],
                      maps[index].astype(np.float32), float(predictions.image_scores[index]),
                      int(predictions.labels[index]), threshold, vmin, vmax,
                      f"{predictions.defect_types[index]}/{predictions.samples[index].image_path.name}")
    for ax, title in zip(axes, PANELS):
        ax.set_title(title)
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    return fig


def representative(predictions: Predictions, per_type: int = 2, good: int = 2) -> list[int]:
    """Per defect type its highest- and lowest-scored image, plus the highest-scored goods."""
    picks: list[int] = []
    scores = predictions.image_scores
    for defect in sorted(set(predictions.defect_types[predictions.labels == 1])):
        group = np.flatnonzero(predictions.defect_types == defect)
        order = group[np.argsort(scores[group], kind="stable")][::-1]
        chosen = [order[0], order[-1]][:per_type] if len(order) > 1 else [order[0]]
        picks += [int(i) for i in dict.fromkeys(chosen)]
    goods = np.flatnonzero(predictions.labels == 0)
    picks += [int(i) for i in goods[np.argsort(scores[goods], kind="stable")][::-1][:good]]
    return picks


def static_grid(detector: GASDetector, predictions: Predictions, threshold: float,
                indices: Sequence[int] | None = None, max_rows: int = 10) -> Figure:
    """The explorer's four panels for several images at a fixed threshold (headless runs)."""
    indices = list(indices if indices is not None else representative(predictions))[:max_rows]
    maps = predictions.maps
    vmin, vmax = float(maps.min()), float(maps.max())
    fig = Figure(figsize=(13.0, 3.1 * max(1, len(indices)) + 0.6), layout="constrained")
    axes = fig.subplots(max(1, len(indices)), 4, squeeze=False)
    shown = None
    for row, index in zip(axes, indices):
        shown = _draw_row(row, _image(detector, predictions, index), predictions.masks[index],
                          maps[index].astype(np.float32), float(predictions.image_scores[index]),
                          int(predictions.labels[index]), threshold, vmin, vmax,
                          f"{predictions.defect_types[index]}/"
                          f"{predictions.samples[index].image_path.name}")
    for ax, title in zip(axes[0], PANELS):
        ax.set_title(title)
    if shown is not None:
        fig.colorbar(shown, ax=list(axes[:, 2]), shrink=0.6, label="anomaly score")
    fig.suptitle(f"Explorer (static, threshold {threshold:.3f}): red = ground truth, "
                 "yellow = map above threshold")
    return fig


def explorer(detector: GASDetector, predictions: Predictions, threshold: float,
             interactive: bool = True):
    """Widgets in a live notebook, else ``static_grid`` (see the module docstring)."""
    if not (interactive and widgets_available()):
        return static_grid(detector, predictions, threshold)
    import ipywidgets as widgets
    from IPython.display import display

    maps = predictions.maps
    vmin, vmax = float(maps.min()), float(maps.max())
    options = [(f"{i:03d}  {predictions.defect_types[i]}/{s.image_path.name}  "
                f"score {predictions.image_scores[i]:.3f}", i)
               for i, s in enumerate(predictions.samples)]
    pick = widgets.Dropdown(options=options, description="image",
                            layout=widgets.Layout(width="420px"))
    slider = widgets.FloatSlider(value=float(threshold), min=vmin, max=max(vmax, vmin + 1e-6),
                                 step=max((vmax - vmin) / 200, 1e-6), description="threshold",
                                 readout_format=".3f", continuous_update=False,
                                 layout=widgets.Layout(width="420px"))
    out = widgets.Output()

    def redraw(_change=None) -> None:
        with out:
            out.clear_output(wait=True)
            display(image_figure(detector, predictions, pick.value, slider.value, vmin, vmax))

    pick.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([pick, slider]), out])
