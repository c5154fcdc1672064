import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, roc_curve

from gas_lib.data import load_split
from gas_lib.evaluate import (RankedPixels, aupro, compute_metrics, evaluate, f1_max,
                              pixel_auroc_and_ap)
from gas_lib.train import GASDetector

from conftest import tiny_config


def _aupro_by_thresholds(masks, maps, limit=0.3, steps=4000):
    """Slow textbook AUPRO: sweep thresholds, average overlap per connected region."""
    regions = []
    for mask, amap in zip(masks, maps):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == i] for i in range(1, n + 1)]
    normal = maps[~masks]
    thresholds = np.linspace(maps.max(), maps.min(), steps)
    fprs = np.array([(normal >= t).mean() for t in thresholds])
    pros = np.array([np.mean([(r >= t).mean() for r in regions]) for t in thresholds])
    keep = fprs <= limit
    x, y = np.r_[0, fprs[keep]], np.r_[0, pros[keep]]
    if fprs[keep].max() < limit:
        nxt = np.argmax(fprs > limit)
        y_lim = np.interp(limit, [fprs[nxt - 1], fprs[nxt]], [pros[nxt - 1], pros[nxt]])
        x, y = np.r_[x, limit], np.r_[y, y_lim]
    return np.trapezoid(y, x) / limit


def test_aupro_matches_the_threshold_sweep():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32), dtype=bool)
    masks[0, 4:10, 4:10] = True
    masks[0, 20:30, 15:18] = True
    masks[1, 10:20, 10:25] = True
    maps = rng.random((4, 32, 32)) * 0.6 + masks * rng.random((4, 32, 32)) * 0.5
    assert aupro(masks, maps) == pytest.approx(_aupro_by_thresholds(masks, maps), abs=2e-3)


def test_one_ranking_gives_sklearns_pixel_auroc_and_ap_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    for share in (0.01, 0.1, 0.4):
        masks = rng.random((5, 30, 40)) < share
        # float16 (binned by its bits): many ties, both signs, and -0 and +0 (one score)
        maps = (rng.random(masks.shape) - 0.5 + 0.7 * masks).astype(np.float16)
        maps[0, 0, :4] = [-0.0, 0.0, -0.0, 0.0]
        scores = maps.ravel().astype(np.float64)
        for dtype in (np.float16, np.float32):  # float32: sorted instead of binned
            ranked = RankedPixels.of(maps.astype(dtype))
            assert len(ranked.at_or_above) == len(np.unique(scores)) < maps.size  # ties
            got_auroc, got_ap = pixel_auroc_and_ap(masks, ranked)
            assert got_auroc == pytest.approx(roc_auc_score(masks.ravel(), scores), abs=1e-12)
            assert got_ap == pytest.approx(average_precision_score(masks.ravel(), scores),
                                           abs=1e-12)
            assert aupro(masks, maps, ranked=ranked) == pytest.approx(
                aupro(masks, maps.astype(np.float64)), abs=1e-12)
    assert all(np.isnan(v) for v in pixel_auroc_and_ap(np.zeros((1, 4, 4), bool),
                                                       RankedPixels.of(np.zeros((1, 4, 4)))))


def test_aupro_extremes():
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, 1 - masks.astype(float)) == pytest.approx(0.0)
    assert np.isnan(aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4))))


def test_small_regions_count_as_much_as_large_ones():
    masks = np.zeros((1, 40, 40), dtype=bool)
    masks[0, :20, :20] = True  # large region, detected
    masks[0, 35:37, 35:37] = True  # tiny region, missed
    maps = np.where(masks, 1.0, 0.5)
    maps[0, 35:37, 35:37] = 0.0  # scored below every normal pixel
    assert aupro(masks, maps) == pytest.approx(0.5, abs=0.02)


def test_f1_max_and_metrics_on_known_scores():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.5, 0.9])
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.5)
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 2:4, 2:4] = True
    metrics = compute_metrics(labels, scores, masks, masks * 0.9 + 0.05)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert metrics["image_auroc"] == pytest.approx(auc(fpr, tpr))
    assert metrics["pixel_auroc"] == 1.0 and metrics["aupro"] == pytest.approx(1.0)
    assert np.isnan(compute_metrics(np.zeros(2), np.ones(2), masks[:2], masks[:2])["image_auroc"])


def test_evaluate_reports_overall_and_per_defect(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    test = load_split(synthetic_root, "plate", "test")
    detector = GASDetector(tiny_config(epochs=2)).fit(train, progress=False)
    overall, table, predictions = evaluate(detector, test)
    assert list(table["defect_type"]) == ["all", "scratch", "spot"]
    assert table.loc[0, "n_images"] == len(test)
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max"):
        assert 0.0 <= overall[key] <= 1.0
    assert overall["eval_seconds"] > 0 and overall["images_per_second"] > 0
    assert predictions.maps.dtype == np.float16 and predictions.masks.dtype == bool
    assert predictions.masks[predictions.labels == 1].any(axis=(1, 2)).all()
