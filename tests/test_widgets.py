"""The evaluation notebook's explorer: live widgets in JupyterLab, a static grid headless."""

from __future__ import annotations

import ipywidgets
import pytest
from matplotlib.figure import Figure

from gas_lib.data import load_split
from gas_lib.evaluate import predict_split
from gas_lib.study.widgets import explorer
from gas_lib.train import GASDetector
from conftest import tiny_config


@pytest.fixture(scope="module")
def scored(synthetic_root):
    detector = GASDetector(tiny_config(epochs=1)).fit(load_split(synthetic_root, "plate", "train"),
                                                      progress=False)
    predictions = predict_split(detector, load_split(synthetic_root, "plate", "test"),
                                progress=False)
    return detector, predictions


def test_headless_explorer_is_a_static_figure(scored):
    detector, predictions = scored
    figure = explorer(detector, predictions, threshold=0.5, interactive=False)
    assert isinstance(figure, Figure) and len(figure.axes) >= 4


def test_live_explorer_redraws_on_pick_and_threshold(scored):
    detector, predictions = scored
    threshold = float(predictions.maps.astype(float).mean())
    box = explorer(detector, predictions, threshold=threshold, interactive=True)
    assert isinstance(box, ipywidgets.VBox)
    pick, slider = box.children[0].children
    out = box.children[1]
    assert isinstance(pick, ipywidgets.Dropdown) and isinstance(slider, ipywidgets.FloatSlider)
    assert isinstance(out, ipywidgets.Output)
    assert [value for _, value in pick.options] == list(range(len(predictions.samples)))
    maps = predictions.maps.astype(float)
    assert slider.min == pytest.approx(maps.min()) and slider.max == pytest.approx(maps.max())
    assert slider.value == pytest.approx(threshold, abs=slider.step)
    pick.value = pick.options[-1][1]  # each change redraws the panels through the observers
    slider.value = (slider.min + slider.max) / 2
