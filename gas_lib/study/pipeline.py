"""The steps of the study notebooks that take more than one library call.

``01_training`` calls ``make_config`` and ``fit_detector`` (fit with checkpoints, optional
per-epoch monitoring on cached test features, model + history saved); ``03_evaluation`` calls
``evaluate_detector`` (metrics overall and per defect type, ``metrics.json`` built by
``gas_lib.study.report.metrics_record``, as the command line's ``train`` writes it), the figure
helpers below, and ``fit_and_evaluate_baseline`` with the comparison tables and maps of GAS
against the nearest-neighbour baseline (``baseline_metrics.json``, ``baseline_per_defect.csv``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from ..config import GASConfig
from ..data import Sample, config_for_data, load_images, load_mask, load_split
from ..evaluate import Predictions, auroc, evaluate
from ..train import GASDetector
from . import plots
from .report import SELECTION_LABELS, metrics_record, write_csv, write_json

METRIC_NAMES = {
    "image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO (FPR <= 0.3)",
    "image_ap": "image AP", "pixel_ap": "pixel AP", "f1_max": "image F1-max",
}
EXAMPLE_KINDS = ("best", "worst", "false_positive")
SCORE_BATCH = 16


def setup_notebook() -> None:
    """Quiet the known harmless messages of the libraries the study uses (not all warnings)."""
    import pandas as pd

    pd.set_option("display.precision", 4)
    pd.set_option("display.max_columns", 40)
    pd.set_option("display.width", 160)
    for name in ("papermill", "traitlets", "PIL", "matplotlib.font_manager", "timm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # seaborn/pandas deprecations about internals we do not control
    warnings.filterwarnings("ignore", category=FutureWarning, module="seaborn")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="seaborn")
    warnings.filterwarnings("ignore", message=".*is_categorical_dtype.*")
    warnings.filterwarnings("ignore", message=".*use_inf_as_na.*")


# --- configuration ----------------------------------------------------------------------------
def make_config(profile: str = "auto", *, seed: int = 0, epochs: int | None = None,
                image_size: int | None = None, feature_cache_dir: str | Path | None = None,
                **overrides: Any) -> GASConfig:
    """The profile's preset with the notebook's overrides (``None`` keeps the preset's value)."""
    values: dict[str, Any] = {"seed": int(seed)}
    if epochs is not None:
        values["epochs"] = int(epochs)
    if image_size is not None:
        values["image_size"] = int(image_size)
    if feature_cache_dir is not None:
        values["feature_cache_dir"] = str(feature_cache_dir)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return GASConfig.preset(profile, **values)


def config_table(config: GASConfig) -> pd.DataFrame:
    """The settings a reader needs to understand a run, as a two-column table."""
    keys = ("profile", "backbone", "embedding", "image_size", "center_crop", "keep_aspect",
            "aspect", "target_embed_dim",
            "disc_hidden", "epochs", "batch_size", "adaptor_optimizer", "adaptor_lr",
            "disc_optimizer", "disc_lr", "lr_schedule", "ema_decay", "noise_std", "eta", "n_step",
            "n_proj", "r1", "r2", "variant", "selection", "seed", "device")
    values = config.to_dict()
    rows = [(k, values[k]) for k in keys]
    rows.append(("device used", str(GASDetector(config).device)))
    return pd.DataFrame(rows, columns=["setting", "value"]).astype({"value": str})


def read_train_images(config: GASConfig, samples: Sequence[Sample]) -> torch.Tensor:
    """The images [N, 3, H, W] in [0, 1] at the input shape a fit on ``samples`` uses
    (``config_for_data``: with ``keep_aspect`` their own proportions), as training reads them."""
    config = config_for_data(config, samples)
    return load_images([s.image_path for s in samples], config.input_shape, config.center_crop,
                       progress=False)


def model_path(out_dir: str | Path, category: str) -> Path:
    return Path(out_dir) / f"best_model_{category}.pth"


# --- training ---------------------------------------------------------------------------------
class EpochMonitor:
    """``epoch_callback`` for ``GASDetector.fit``: optional test AUROC and text progress.

    Test features are embedded once (and kept in the feature cache), so tracking an epoch
    only runs the two small heads plus the AUROC computations. Monitoring only: the model is
    still selected by the config's (honest) selection rule.
    """

    def __init__(self, test_samples: Sequence[Sample] | None, every: int, epochs: int,
                 log: bool) -> None:
        self.samples = list(test_samples or [])
        self.every = int(every) if self.samples else 0
        self.epochs = epochs
        self.log = log
        self.log_every = max(1, epochs // 10)
        self.seconds = 0.0
        self._features: torch.Tensor | None = None
        self._labels: np.ndarray | None = None
        self._masks: np.ndarray | None = None
        self._last = time.perf_counter()

    def _due(self, epoch: int, every: int) -> bool:
        return bool(every) and (epoch % every == 0 or epoch == self.epochs)

    def __call__(self, detector: GASDetector, epoch: int) -> dict[str, float]:
        now = time.perf_counter()
        epoch_seconds, self._last = now - self._last, now
        row: dict[str, float] = {}
        if self._due(epoch, self.every):
            started = time.perf_counter()
            row = self.track(detector)
            self.seconds += time.perf_counter() - started
        if self.log and (self._due(epoch, self.log_every) or epoch == 1):
            tracked = "".join(f", {METRIC_NAMES[k]} {v:.3f}" for k, v in row.items())
            print(f"epoch {epoch:>3}/{self.epochs}: {epoch_seconds:.1f} s{tracked}", flush=True)
        self._last = time.perf_counter()
        return row

    def track(self, detector: GASDetector) -> dict[str, float]:
        if self._features is None:
            shape, crop = detector.config.input_shape, detector.config.center_crop
            self._features = detector.embed(self.samples, progress=False)
            self._labels = np.array([s.label for s in self.samples])
            self._masks = np.stack([load_mask(s.mask_path, shape, crop).numpy()
                                    for s in self.samples])
        scores, maps = score_cached(detector, self._features)
        return {"image_auroc": auroc(self._labels, scores),
                "pixel_auroc": auroc(self._masks.ravel(), maps.ravel())}


def score_cached(detector: GASDetector, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Image scores [N] and maps [N, H, W] (float32 numpy) from cached features [N, P, D]."""
    scores, maps = [], []
    for start in range(0, features.shape[0], SCORE_BATCH):
        s, m = detector.score_features(features[start:start + SCORE_BATCH])
        scores.append(s.numpy())
        maps.append(m.numpy())
    return np.concatenate(scores), np.concatenate(maps)


def fit_detector(config: GASConfig, train_samples: Sequence[Sample], out_dir: str | Path,
                 category: str, *, test_samples: Sequence[Sample] | None = None,
                 track_every: int | None = None, interactive: bool = True,
                 resume: bool = True) -> GASDetector:
    """Fit on the training images and save model, history and config into ``out_dir``.

    - Checkpoints go to ``out_dir/checkpoints`` after every epoch; a rerun with the same
      config resumes (or, when finished, returns at once).
    - ``track_every``: score ``test_samples`` every that many epochs for the AUROC curves
      (``None``: about five times per fit; ``0``: never). Monitoring only.
    - ``interactive``: progress bars in JupyterLab; otherwise a few plain text lines, which
      read well in an HTML report.
    - With ``keep_aspect`` the input's aspect is set from ``train_samples`` first
      (``config_for_data``); the saved model and ``config.json`` record it.
    """
    config = config_for_data(config, train_samples)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if track_every is None:
        track_every = max(1, config.epochs // 5)
    monitor = EpochMonitor(test_samples, track_every, config.epochs, log=not interactive)
    detector = GASDetector(config)
    detector.fit(train_samples, checkpoint_dir=out_dir / "checkpoints", resume=resume,
                 epoch_callback=monitor, progress=interactive)
    history = detector.history
    wall = detector.timings.get("train_seconds", float("nan"))
    epoch_seconds = float(history["seconds"].sum()) if "seconds" in history else wall
    detector.timings.update(train_seconds=epoch_seconds, fit_wall_seconds=wall,
                            tracking_seconds=monitor.seconds)
    detector.save(model_path(out_dir, category))
    write_csv(history, out_dir / "history.csv")
    config.to_json(out_dir / "config.json")
    return detector


def timing_table(detector: GASDetector) -> pd.DataFrame:
    """Where the training time went."""
    t = detector.timings
    n_epochs = len(detector.history)
    rows = [
        ("backbone features (train images; 0 when read from the cache)", t.get("feature_seconds")),
        ("LAS pool: make + embed the LAS images (0 without LAS)", t.get("las_pool_seconds", 0.0)),
        ("training epochs", t.get("train_seconds")),
        ("per epoch", t.get("train_seconds", np.nan) / max(1, n_epochs)),
        ("test-set monitoring (not part of training)", t.get("tracking_seconds")),
    ]
    return pd.DataFrame(rows, columns=["step", "seconds"]).round(2)


def describe_training(detector: GASDetector) -> str:
    """Markdown sentences on the fit: length, final losses and, when tracked, the AUROC."""
    h = detector.history
    if h.empty:
        return "No epochs were run."
    last = h.iloc[-1]
    height, width = detector.config.input_shape
    pixels = f"{height} px" if height == width else f"{height} x {width} px"
    lines = [f"- {len(h)} epochs of {detector.config.profile!r} ({detector.config.backbone}, "
             f"{pixels}) took {h['seconds'].sum():.0f} s "
             f"({h['seconds'].mean():.1f} s per epoch); the model kept is epoch "
             f"{detector.selected_epoch} ({SELECTION_LABELS[detector.config.selection]}).",
             f"- Final losses: normal {last['loss_normal']:.3f}, synthetic anomaly "
             f"{last['loss_anomaly']:.3f} (first epoch: {h['loss_normal'].iloc[0]:.3f} and "
             f"{h['loss_anomaly'].iloc[0]:.3f})."]
    if "loss_las" in h:
        pool = detector.las_pool
        lines.append(f"- Synthesis {detector.config.synthesis!r}: LAS focal loss "
                     f"{h['loss_las'].iloc[0]:.3f} -> {last['loss_las']:.3f}"
                     + (f"; LAS pool of {len(pool)} images ({pool.texture_source} textures, "
                        f"{100 * pool.anomalous_fraction:.1f} % of patches anomalous) made in "
                        f"{pool.seconds:.0f} s." if pool is not None else "."))
    else:
        lines.append("- Synthesis 'gas': GAS only, no LAS images.")
    if "image_auroc" in h and h["image_auroc"].notna().any():
        tracked = h.dropna(subset=["image_auroc"])
        lines.append(f"- Tracked on the test split (monitoring only): image AUROC "
                     f"{tracked['image_auroc'].iloc[0]:.3f} at epoch {int(tracked['epoch'].iloc[0])}"
                     f" to {tracked['image_auroc'].iloc[-1]:.3f} at epoch "
                     f"{int(tracked['epoch'].iloc[-1])}; pixel AUROC "
                     f"{tracked['pixel_auroc'].iloc[-1]:.3f} at the end.")
    return "\n".join(lines)


# --- evaluation -------------------------------------------------------------------------------
def evaluate_detector(detector: GASDetector, data_root: str | Path, category: str,
                      out_dir: str | Path, *, progress: bool = False
                      ) -> tuple[dict[str, Any], pd.DataFrame, Predictions]:
    """Evaluate on the test split; write ``metrics.json`` and ``per_defect.csv`` to out_dir."""
    # imported here, not on top, so that `python -m gas_lib.study.summary` runs cleanly
    from .summary import paper_numbers

    out_dir = Path(out_dir)
    test = load_split(data_root, category, "test")
    n_train = len(load_split(data_root, category, "train"))
    metrics, per_defect, predictions = evaluate(detector, test, progress=progress)
    record = metrics_record(detector, metrics, category=category, n_train=n_train,
                            n_test=len(test), model_file=model_path(out_dir, category))
    record["paper_glass_m"] = paper_numbers(category)
    write_csv(per_defect, out_dir / "per_defect.csv")
    write_json(record, out_dir / "metrics.json")
    return record, per_defect, predictions


def metrics_overview(record: dict[str, Any]) -> pd.DataFrame:
    """Our metrics next to the GLASS-m paper's for this class (where published)."""
    from .summary import paper_numbers

    paper = record.get("paper_glass_m") or paper_numbers(record["category"])
    rows = [(label, record.get(key), paper.get(key)) for key, label in METRIC_NAMES.items()]
    frame = pd.DataFrame(rows, columns=["metric", "ours", "GLASS-m paper"])
    return frame.set_index("metric")


def describe_evaluation(record: dict[str, Any], predictions: Predictions) -> str:
    """Markdown sentences on the headline numbers and the F1-max operating point."""
    thr = record.get("f1_threshold")
    lines = [f"- Image AUROC **{record['image_auroc']:.4f}**, pixel AUROC "
             f"**{record['pixel_auroc']:.4f}**, AUPRO **{record['aupro']:.4f}** on "
             f"{record['n_test']} test images ({record['selection_label']})."]
    if thr is not None and np.isfinite(thr):
        pred = predictions.image_scores >= thr
        labels = predictions.labels.astype(bool)
        lines.append(f"- At the F1-max threshold {thr:.4f}: {int((pred & labels).sum())} of "
                     f"{int(labels.sum())} defective images caught, {int((pred & ~labels).sum())} "
                     f"of {int((~labels).sum())} good images flagged (false positives).")
    lines.append(f"- Inference: {record['eval_seconds']:.1f} s for the test split end to end "
                 f"({record.get('images_per_second', float('nan')):.1f} images/s).")
    return "\n".join(lines)


def plot_curves(predictions: Predictions, title: str = "") -> Figure:
    """Image ROC and PR (top) and pixel ROC and PR (bottom)."""
    fig = Figure(figsize=(10.0, 9.0), layout="constrained")
    axes = fig.subplots(2, 2)
    plots.plot_roc_curve(predictions.labels, predictions.image_scores, ax=axes[0, 0],
                         title="Image ROC")
    plots.plot_pr_curve(predictions.labels, predictions.image_scores, ax=axes[0, 1],
                        title="Image precision-recall")
    labels = predictions.masks.ravel()
    scores = predictions.maps.ravel().astype(np.float32)
    if labels.any() and not labels.all():
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=True)
        axes[1, 0].plot(fpr, tpr, color=plots.DEFECT_COLOUR, linewidth=2,
                        label=f"AUROC = {auc(fpr, tpr):.3f}")
        axes[1, 0].plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="chance")
        precision, recall, _ = precision_recall_curve(labels, scores, drop_intermediate=True)
        axes[1, 1].plot(recall, precision, color=plots.DEFECT_COLOUR, linewidth=2,
                        label=f"area = {auc(recall, precision):.3f}")
        axes[1, 1].axhline(labels.mean(), color="gray", linestyle="--", linewidth=1,
                           label="no skill")
    axes[1, 0].set(xlabel="false positive rate", ylabel="true positive rate", title="Pixel ROC")
    axes[1, 1].set(xlabel="recall", ylabel="precision", title="Pixel precision-recall",
                   ylim=(-0.01, 1.05))
    for ax in axes[1]:
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is axes[1, 0] else "upper right")
    if title:
        fig.suptitle(title)
    return fig


def threshold_table(predictions: Predictions, threshold: float) -> pd.DataFrame:
    """Counts and rates of the image decision ``score >= threshold``."""
    pred = predictions.image_scores >= threshold
    labels = predictions.labels.astype(bool)
    tp, fp = int((pred & labels).sum()), int((pred & ~labels).sum())
    fn, tn = int((~pred & labels).sum()), int((~pred & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return pd.DataFrame([dict(threshold=threshold, TP=tp, FP=fp, TN=tn, FN=fn,
                              precision=precision, recall=recall, F1=f1,
                              accuracy=(tp + tn) / len(labels))])


def pick_examples(predictions: Predictions, kind: str, k: int = 4) -> np.ndarray:
    """Indices of the ``best`` (highest-scored defective), ``worst`` (lowest-scored defective)
    or ``false_positive`` (highest-scored good) test images."""
    if kind not in EXAMPLE_KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {EXAMPLE_KINDS}")
    scores = predictions.image_scores
    group = np.flatnonzero(predictions.labels == (0 if kind == "false_positive" else 1))
    order = group[np.argsort(scores[group], kind="stable")]
    return order[:k] if kind == "worst" else order[::-1][:k]


def plot_examples(detector: GASDetector, predictions: Predictions, kind: str, k: int = 4,
                  threshold: float | None = None) -> Figure:
    """Image | ground truth | anomaly-map overlay for ``pick_examples``, one shared colour scale."""
    pick = pick_examples(predictions, kind, k)
    if pick.size == 0:
        fig = Figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, f"no images for '{kind}'", ha="center", va="center")
        return fig
    images = detector.read_images([predictions.samples[i] for i in pick])
    titles = []
    for i in pick:
        score = predictions.image_scores[i]
        side = "" if threshold is None else (" >= thr" if score >= threshold else " < thr")
        titles.append(f"{predictions.defect_types[i]} {predictions.samples[i].image_path.name}\n"
                      f"score {score:.3f}{side}")
    maps = predictions.maps[pick].astype(np.float32)
    every = predictions.maps
    fig = plots.plot_anomaly_grid(images, predictions.masks[pick], maps, titles=titles,
                                  max_rows=k, vmin=float(every.min()), vmax=float(every.max()))
    names = {"best": "Best-detected defective images (highest scores)",
             "worst": "Worst-detected defective images (lowest scores)",
             "false_positive": "Good images with the highest scores (false-positive candidates)"}
    fig.suptitle(names[kind])
    return fig


# --- nearest-neighbour baseline ---------------------------------------------------------------
BASELINE_METRICS = "baseline_metrics.json"
BASELINE_PER_DEFECT = "baseline_per_defect.csv"
BASELINE_COMPARED = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"),
                     ("aupro", "AUPRO (FPR <= 0.3)"), ("image_ap", "image AP"),
                     ("pixel_ap", "pixel AP"), ("f1_max", "image F1-max"))


@dataclass
class BaselineRun:
    """What ``fit_and_evaluate_baseline`` returns: the fitted baseline, its ``metrics.json``
    record, its per-defect table and its test predictions (maps included)."""

    detector: Any  # knn.KNNDetector
    record: dict[str, Any]
    per_defect: pd.DataFrame
    predictions: Predictions


def fit_and_evaluate_baseline(config: GASConfig, data_root: str | Path, category: str,
                              out_dir: str | Path, *, progress: bool = False) -> BaselineRun:
    """Fit the nearest-neighbour baseline (``knn.KNNDetector``) on ``train/good`` with GAS's
    config (same backbone, image size and feature cache, so the same patch features) and
    evaluate it on ``test`` exactly as GAS is evaluated; write ``baseline_metrics.json``
    (built by ``report.metrics_record``, as ``metrics.json``) and ``baseline_per_defect.csv``
    atomically into ``out_dir``."""
    from ..knn import KNNDetector

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = load_split(data_root, category, "train")
    test = load_split(data_root, category, "test")
    detector = KNNDetector(config).fit(train, progress=progress)
    metrics, per_defect, predictions = evaluate(detector, test, progress=progress)
    record = metrics_record(detector, metrics, category=category, n_train=len(train),
                            n_test=len(test))
    write_csv(per_defect, out_dir / BASELINE_PER_DEFECT)
    write_json(record, out_dir / BASELINE_METRICS)
    return BaselineRun(detector, record, per_defect, predictions)


def method_fit_seconds(record: dict[str, Any]) -> float:
    """A method's own fitting work on top of the backbone features of the training images:
    GAS's training epochs plus its LAS pool, the baseline's coreset selection."""
    parts = [record.get("train_seconds"), record.get("las_pool_seconds")]
    values = [float(v) for v in parts if v is not None]
    return float(np.nansum(values)) if values else float("nan")


def baseline_comparison(record: dict[str, Any], baseline: dict[str, Any]) -> pd.DataFrame:
    """GAS vs the nearest-neighbour baseline: metrics, difference and fit seconds."""
    rows = [(label, record.get(key), baseline.get(key)) for key, label in BASELINE_COMPARED]
    frame = pd.DataFrame(rows, columns=["metric", "GAS", "k-NN baseline"])
    frame["GAS - baseline"] = (pd.to_numeric(frame["GAS"], errors="coerce")
                               - pd.to_numeric(frame["k-NN baseline"], errors="coerce"))
    seconds = pd.DataFrame([
        ("fit seconds (without backbone features)", method_fit_seconds(record),
         method_fit_seconds(baseline)),
        ("backbone features of the training images, s (0 when cached)",
         record.get("feature_seconds"), baseline.get("feature_seconds")),
        ("inference, s (whole test split)", record.get("eval_seconds"),
         baseline.get("eval_seconds")),
    ], columns=["metric", "GAS", "k-NN baseline"])
    return pd.concat([frame, seconds], ignore_index=True).set_index("metric")


def describe_baseline(record: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Markdown sentences: does GAS beat the baseline, metric by metric, and at what cost."""
    parts = []
    for key, label in BASELINE_COMPARED[:3]:
        ours, base = record.get(key), baseline.get(key)
        if ours is None or base is None or not (np.isfinite(ours) and np.isfinite(base)):
            continue
        verdict = "ahead" if ours > base else ("level" if ours == base else "behind")
        parts.append(f"{label} {ours:.4f} vs {base:.4f} (GAS {verdict}, {ours - base:+.4f})")
    lines = ["- GAS vs the k-NN baseline: " + ("; ".join(parts) if parts else "no comparable "
                                                  "metrics") + "."]
    bank = baseline.get("bank_size")
    lines.append(f"- Fit without backbone features: GAS {method_fit_seconds(record):.1f} s, "
                 f"baseline {method_fit_seconds(baseline):.1f} s (coreset of "
                 f"{bank if bank is not None else '?'} patch vectors).")
    return "\n".join(lines)


def baseline_per_defect(per_defect: pd.DataFrame, baseline: pd.DataFrame,
                        metrics: Sequence[str] = ("image_auroc", "pixel_auroc", "aupro")
                        ) -> pd.DataFrame:
    """Per defect type, each metric of GAS next to the baseline's."""
    columns = [m for m in metrics if m in per_defect and m in baseline]
    left = per_defect.set_index("defect_type")[["n_images", *columns]]
    right = baseline.set_index("defect_type")[columns]
    merged = left.merge(right, left_index=True, right_index=True, how="left",
                        suffixes=(" GAS", " k-NN"))
    ordered = ["n_images"] + [f"{m} {who}" for m in columns for who in ("GAS", "k-NN")]
    return merged[ordered]


def pick_comparison_images(predictions: Predictions, k: int = 4) -> np.ndarray:
    """Test images for side-by-side maps, chosen without looking at any score: the first
    image of each defect type in test order, then the first good image; at most ``k``."""
    types = predictions.defect_types
    defective = np.flatnonzero(predictions.labels == 1)
    firsts = [int(defective[types[defective] == t][0]) for t in dict.fromkeys(types[defective])]
    good = np.flatnonzero(predictions.labels == 0)[:1].tolist()
    chosen = firsts[:max(0, k - len(good))] + good
    return np.array(chosen[:k], dtype=int)


def plot_baseline_maps(detector: GASDetector, predictions: Predictions,
                       baseline_predictions: Predictions, k: int = 4) -> Figure:
    """Image with its ground truth | GAS map | baseline map for the same test images.

    The two methods score in different units (discriminator output vs feature distance), so
    each map column has its own colour scale, the range of that method's maps over the whole
    test split: equally hot means equally extreme for that method.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    pick = pick_comparison_images(predictions, k)
    if pick.size == 0:
        fig = Figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, "no test images", ha="center", va="center")
        return fig
    images = plots._to_hwc(detector.read_images([predictions.samples[i] for i in pick]).numpy())
    fig = Figure(figsize=(9.0, 2.9 * len(pick) + 1.0), layout="constrained")
    axes = fig.subplots(len(pick), 3, squeeze=False)
    columns = (("GAS", predictions), ("k-NN baseline", baseline_predictions))
    for col, (name, preds) in enumerate(columns, start=1):
        vmin, vmax = float(preds.maps.min()), float(preds.maps.max())
        for row, i in enumerate(pick):
            ax = axes[row, col]
            ax.imshow(images[row])
            ax.imshow(preds.maps[i].astype(np.float32), cmap=plots.HEAT_CMAP, alpha=0.5,
                      vmin=vmin, vmax=vmax)
            ax.set_title(f"{name}: score {preds.image_scores[i]:.3f}", fontsize="small")
        scale = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=plots.HEAT_CMAP)
        fig.colorbar(scale, ax=list(axes[:, col]), location="bottom", shrink=0.9,
                     aspect=25, label=f"{name} score")
    height, width = images.shape[1:3]
    for row, i in enumerate(pick):
        axes[row, 0].imshow(images[row])
        axes[row, 0].set_title(f"{predictions.defect_types[i]} "
                               f"{predictions.samples[i].image_path.name}", fontsize="small")
        for ax in axes[row]:
            plots._outline(ax, predictions.masks[i], height, width)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Same test images: GAS vs the nearest-neighbour baseline (ground truth in red)")
    return fig
