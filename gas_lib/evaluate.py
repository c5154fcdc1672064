"""Metrics of a fitted detector on a test split, overall and per defect type.

Anomaly maps are consumed batch by batch and kept only at the configured input shape (float16
maps, boolean masks): a whole category fits in a few hundred MB at most, unlike reference code
that keeps every intermediate of every image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from .data import Sample, load_mask
from .detector import PatchDetector
from .train import GASDetector

PRO_FPR_LIMIT = 0.3


# --- metrics on arrays -----------------------------------------------------------------------
def _safe(metric, labels: np.ndarray, scores: np.ndarray) -> float:
    """A metric that needs both classes returns NaN when one is missing, instead of raising."""
    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        return float("nan")
    return float(metric(labels, np.asarray(scores, dtype=np.float64).ravel()))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    return _safe(roc_auc_score, labels, scores)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    return _safe(average_precision_score, labels, scores)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold that reaches it."""
    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        return float("nan"), float("nan")
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores).ravel())
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    best = int(np.argmax(f1[:-1]))  # the last point has no threshold
    return float(f1[best]), float(thresholds[best])


@dataclass
class RankedPixels:
    """Every pixel of a split grouped by its score, the distinct scores highest first (a
    threshold takes all ties at once). The pixel AUROC, the pixel AP and the AUPRO are all read
    off this one grouping; each used to sort the ~10^7 pixels of a category again (sklearn in
    float64, a stable sort), which made the metrics slower than scoring the images.

    Float16 maps (what ``predict_split`` keeps) have at most 65,536 distinct values, so their
    pixels are binned by the value's bits (linear time, no sort); other dtypes are sorted.
    """

    keys: np.ndarray  # [M] per pixel: a bin whose index grows with the score
    present: np.ndarray  # [n_keys] bool, highest bin first: bins that hold a pixel
    at_or_above: np.ndarray  # [R] pixels at or above each distinct score, highest first

    @classmethod
    def of(cls, maps: np.ndarray) -> "RankedPixels":
        values = np.asarray(maps)
        if values.dtype == np.float16:
            bits = (values.ravel() + np.float16(0)).view(np.uint16)  # -0 becomes +0
            negative = (bits & 0x8000) != 0  # order of the bits: flip negatives, lift positives
            keys = np.where(negative, ~bits, bits | 0x8000).astype(np.intp)
            n_keys = 1 << 16
        else:
            distinct, keys = np.unique(values.astype(np.float32).ravel(), return_inverse=True)
            n_keys = len(distinct)
        counts = np.bincount(keys, minlength=n_keys)[::-1]
        present = counts > 0
        return cls(keys, present, np.cumsum(counts)[present])

    def cumulative(self, weights: np.ndarray) -> np.ndarray:
        """Total weight of the pixels at or above each distinct score, highest score first."""
        totals = np.bincount(self.keys, np.asarray(weights, dtype=np.float64).ravel(),
                             minlength=len(self.present))[::-1]
        return np.cumsum(totals)[self.present]


def pixel_auroc_and_ap(masks: np.ndarray, ranked: RankedPixels) -> tuple[float, float]:
    """Pixel AUROC (trapezoids over the distinct thresholds, ties counted half, as sklearn's
    ``roc_auc_score``) and pixel average precision (sklearn's step sum); NaN without both
    classes."""
    labels = np.asarray(masks, dtype=bool).ravel()
    positives = int(labels.sum())
    if positives in (0, labels.size):
        return float("nan"), float("nan")
    true_pos = ranked.cumulative(labels)
    false_pos = ranked.at_or_above - true_pos
    tpr = np.r_[0.0, true_pos / positives]
    fpr = np.r_[0.0, false_pos / (labels.size - positives)]
    precision = true_pos / ranked.at_or_above
    return float(np.trapezoid(tpr, fpr)), float(np.sum(np.diff(tpr) * precision))


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = PRO_FPR_LIMIT,
          ranked: RankedPixels | None = None) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised by it.

    Standard MVTec definition, exact: pixels are grouped by score once (``ranked``, reused
    when given); the PRO curve is the cumulative sum of region-pixel weights (1 / (region size
    * number of regions)) and the FPR curve the cumulative share of normal pixels, read at
    every distinct score. No dilation.
    """
    masks = np.asarray(masks, dtype=bool)
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity, as skimage's default
    region_ids = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=structure)
        region_ids[i] = np.where(labelled > 0, labelled + n_regions, 0)
        n_regions += count
    if n_regions == 0 or masks.all():
        return float("nan")
    ranked = ranked or RankedPixels.of(maps)
    flat_ids = region_ids.ravel()
    sizes = np.bincount(flat_ids, minlength=n_regions + 1).astype(np.float64)
    weights = np.where(flat_ids > 0, 1.0 / (sizes[flat_ids] * n_regions), 0.0)
    normal = flat_ids == 0
    fpr = np.r_[0.0, ranked.cumulative(normal) / normal.sum()]
    pro = np.r_[0.0, ranked.cumulative(weights)]

    cut = np.searchsorted(fpr, fpr_limit, side="right")
    fpr_part, pro_part = fpr[:cut], pro[:cut]
    if cut < len(fpr):  # interpolate the curve at exactly fpr_limit
        x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
        y = y0 + (y1 - y0) * (fpr_limit - x0) / max(x1 - x0, 1e-12)
        fpr_part, pro_part = np.r_[fpr_part, fpr_limit], np.r_[pro_part, y]
    return float(np.trapezoid(pro_part, fpr_part) / fpr_limit)


def compute_metrics(labels: np.ndarray, image_scores: np.ndarray, masks: np.ndarray,
                    maps: np.ndarray, pro: bool = True) -> dict[str, float]:
    """Every metric of the study from image labels/scores and pixel masks/maps."""
    f1, threshold = f1_max(labels, image_scores)
    ranked = RankedPixels.of(maps)
    pixel_auroc, pixel_ap = pixel_auroc_and_ap(masks, ranked)
    return {
        "image_auroc": auroc(labels, image_scores),
        "pixel_auroc": pixel_auroc,
        "aupro": aupro(masks, maps, ranked=ranked) if pro else float("nan"),
        "image_ap": average_precision(labels, image_scores),
        "pixel_ap": pixel_ap,
        "f1_max": f1,
        "f1_threshold": threshold,
    }


# --- evaluation of a detector ----------------------------------------------------------------
@dataclass
class Predictions:
    """Everything scored on a test split, kept compactly for metrics and figures."""

    samples: list[Sample]
    image_scores: np.ndarray  # [N] float32
    maps: np.ndarray  # [N, H, W] float16, H x W = config.input_shape
    masks: np.ndarray  # [N, H, W] bool
    seconds: float = 0.0
    labels: np.ndarray = field(init=False)
    defect_types: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        self.defect_types = np.array([s.defect_type for s in self.samples])

    @property
    def images_per_second(self) -> float:
        return len(self.samples) / self.seconds if self.seconds else float("nan")


def predict_split(detector: PatchDetector, samples: Sequence[Sample], progress: bool = False
                  ) -> Predictions:
    """Score every test sample in batches, keeping float16 maps and boolean masks only."""
    samples = list(samples)
    shape, crop = detector.config.input_shape, detector.config.center_crop
    scores = np.empty(len(samples), dtype=np.float32)
    maps = np.empty((len(samples), *shape), dtype=np.float16)
    masks = np.stack([load_mask(s.mask_path, shape, crop).numpy() for s in samples]) \
        if samples else np.zeros((0, *shape), dtype=bool)
    _ = detector.extractor  # backbone weights load outside the timed inference
    started = time.perf_counter()
    position = 0
    for batch_scores, batch_maps in detector.iter_scores(samples, progress=progress):
        n = batch_scores.shape[0]
        scores[position:position + n] = batch_scores.numpy()
        maps[position:position + n] = batch_maps.numpy().astype(np.float16)
        position += n
    return Predictions(samples, scores, maps, masks, time.perf_counter() - started)


def metrics_table(predictions: Predictions, pro: bool = True) -> pd.DataFrame:
    """One row for all test images and one per defect type (each against all good images)."""
    p = predictions
    maps = p.maps.astype(np.float32)
    rows = [{"defect_type": "all", "n_images": len(p.labels),
             **compute_metrics(p.labels, p.image_scores, p.masks, maps, pro)}]
    good = p.labels == 0
    for defect in sorted(set(p.defect_types[~good])):
        keep = good | (p.defect_types == defect)
        rows.append({"defect_type": defect, "n_images": int((p.defect_types == defect).sum()),
                     **compute_metrics(p.labels[keep], p.image_scores[keep], p.masks[keep],
                                       maps[keep], pro)})
    return pd.DataFrame(rows)


def evaluate(detector: PatchDetector, samples: Sequence[Sample], progress: bool = False
             ) -> tuple[dict[str, float], pd.DataFrame, Predictions]:
    """Overall metrics (with inference timing), the per-defect table and the predictions."""
    predictions = predict_split(detector, samples, progress)
    table = metrics_table(predictions)
    overall = table.iloc[0].drop(["defect_type", "n_images"]).astype(float).to_dict()
    overall["eval_seconds"] = predictions.seconds
    overall["images_per_second"] = predictions.images_per_second
    return overall, table, predictions


def make_test_tracker(samples: Sequence[Sample], every: int = 1):
    """An ``epoch_callback`` for ``fit``: image and pixel AUROC on the test split per epoch.

    Monitoring only, unless the config's selection is ``oracle`` (labelled as such): picking
    the epoch by it is tuning on the test set.
    """
    samples = list(samples)

    def track(detector: GASDetector, epoch: int) -> dict[str, float]:
        if epoch % every and epoch != detector.config.epochs:
            return {}
        p = predict_split(detector, samples)
        return {"image_auroc": auroc(p.labels, p.image_scores),
                "pixel_auroc": auroc(p.masks.ravel(), p.maps.ravel().astype(np.float32))}

    return track
