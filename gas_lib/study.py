"""The steps of the study notebooks that take more than one library call.

``01_training`` calls ``make_config`` and ``fit_detector`` (fit with checkpoints, optional
per-epoch monitoring on cached test features, model + history saved); ``03_evaluation`` calls
``evaluate_detector`` (metrics overall and per defect type, ``metrics.json`` built by
``gas_lib.report.metrics_record``, as the command line's ``train`` writes it) and the figure
helpers below.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from . import plots
from .config import GASConfig
from .data import Sample, load_images, load_mask, load_split
from .evaluate import Predictions, auroc, evaluate
from .report import SELECTION_LABELS, metrics_record, write_csv, write_json
from .summary import paper_numbers
from .train import GASDetector

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
    keys = ("profile", "backbone", "embedding", "image_size", "center_crop", "target_embed_dim",
            "disc_hidden", "epochs", "batch_size", "adaptor_optimizer", "adaptor_lr",
            "disc_optimizer", "disc_lr", "lr_schedule", "ema_decay", "noise_std", "eta", "n_step",
            "n_proj", "r1", "r2", "variant", "selection", "seed", "device")
    values = config.to_dict()
    rows = [(k, values[k]) for k in keys]
    rows.append(("device used", str(GASDetector(config).device)))
    return pd.DataFrame(rows, columns=["setting", "value"]).astype({"value": str})


def read_train_images(config: GASConfig, samples: Sequence[Sample]) -> torch.Tensor:
    """The images [N, 3, S, S] in [0, 1] at the config's size, as training reads them."""
    return load_images([s.image_path for s in samples], config.image_size, config.center_crop,
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
            size, crop = detector.config.image_size, detector.config.center_crop
            self._features = detector.embed(self.samples, progress=False)
            self._labels = np.array([s.label for s in self.samples])
            self._masks = np.stack([load_mask(s.mask_path, size, crop).numpy()
                                    for s in self.samples])
        scores, maps = score_cached(detector, self._features)
        return {"image_auroc": auroc(self._labels, scores),
                "pixel_auroc": auroc(self._masks.ravel(), maps.ravel())}


def score_cached(detector: GASDetector, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Image scores [N] and maps [N, S, S] (float32 numpy) from cached features [N, P, D]."""
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
    """
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
    lines = [f"- {len(h)} epochs of {detector.config.profile!r} ({detector.config.backbone}, "
             f"{detector.config.image_size} px) took {h['seconds'].sum():.0f} s "
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
