"""``bench --scaling``: whole-fit time of GAS and the k-NN baseline against the training size."""

from __future__ import annotations

import math

from conftest import tiny_config

from gas_lib.tools.bench import format_scaling, run_scaling


def test_run_scaling_times_every_size_and_method():
    # the cpu profile (gas+las) shrunk: 64 px, one epoch, 4 and 8 real training images
    config = tiny_config(epochs=1, synthesis="gas+las")
    frame = run_scaling(config, (8, 4))

    assert list(frame.columns[:4]) == ["n_images", "method", "fit_seconds", "seconds_per_image"]
    assert sorted(zip(frame["n_images"], frame["method"])) == [
        (4, "gas"), (4, "knn"), (8, "gas"), (8, "knn")]
    assert (frame["fit_seconds"] > 0).all() and (frame["read_seconds"] > 0).all()
    per_image = frame["seconds_per_image"] * frame["n_images"]
    assert (per_image - frame["fit_seconds"]).abs().max() < 1e-9
    gas = frame[frame["method"] == "gas"]
    for column in ("feature_seconds", "las_pool_seconds", "train_seconds"):
        assert (gas[column] > 0).all(), column
    # the parts are measured inside the fit, so they cannot add up to more than it
    parts = gas["feature_seconds"] + gas["las_pool_seconds"] + gas["train_seconds"]
    assert (parts <= gas["fit_seconds"] + 1e-6).all()
    assert frame.attrs["profile"] == "cpu" and frame.attrs["synthesis"] == "gas+las"

    text = format_scaling(frame)
    assert "images_per_epoch=38" in text and "las_pool_images=48" in text  # the cpu budgets
    unbudgeted = format_scaling(run_scaling(config.replace(images_per_epoch=0, las_pool_images=0),
                                            (4,)))
    assert "images_per_epoch=all" in unbudgeted and "las_pool_images=all" in unbudgeted
    assert "gas: fit" in text and "knn: fit" in text and "2x the images" in text
    assert not any(math.isnan(v) for v in gas["fit_seconds"])
