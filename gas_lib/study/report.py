"""Run artefacts: fit + evaluate one category and write everything a reader needs to trust it.

``train_and_evaluate`` is what ``python -m gas_lib train`` and the notebooks call. Its output
folder holds ``metrics.json`` (metrics, config, selection protocol, versions, device, timings),
``per_defect.csv``, ``history.csv``, the figures and the selected model, each written
atomically so an interrupted run never leaves a half-written file behind. ``method="knn"``
fits the nearest-neighbour baseline (``knn.KNNDetector``) instead of GAS and writes the same
files with the same ``metrics.json`` keys (``"method"`` says which).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import METHOD_VERSION, GASConfig, native_bf16
from ..data import config_for_data, load_split
from ..detector import PatchDetector
from ..evaluate import Predictions, evaluate, make_test_tracker
from ..train import GASDetector
from . import plots

METHODS = ("gas", "knn")

SELECTION_LABELS = {
    "last": "honest: last epoch",
    "validation": "honest: lowest held-out GAS loss on a validation split of train/good",
    "oracle": "ORACLE: best test-set image+pixel AUROC (tunes on the test set; not a fair result)",
}
# what metrics.json says about model selection for a detector without epochs
NO_SELECTION = ("none", "none: a nearest-neighbour memory bank has no epochs to choose from")


def detector_method(detector: PatchDetector) -> str:
    """``"knn"`` for the nearest-neighbour baseline, ``"gas"`` for GAS (and GLASS)."""
    return getattr(detector, "method", "gas")


def make_detector(config: GASConfig, method: str = "gas") -> PatchDetector:
    """An unfitted detector of ``method`` (``"gas"`` or ``"knn"``) with ``config``."""
    if method == "gas":
        return GASDetector(config)
    if method == "knn":
        from ..knn import KNNDetector

        return KNNDetector(config)
    raise ValueError(f"method={method!r}: expected one of {METHODS}")


def environment_info() -> dict[str, Any]:
    """Versions, device and git commit, recorded with every result."""
    import numpy
    import sklearn
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": numpy.__version__, "scikit_learn": sklearn.__version__,
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import timm
        info["timm"] = timm.__version__
    except ImportError:
        pass
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5, cwd=here).stdout.strip() or None
        if commit:  # "-dirty": tracked files of the checkout differ from that commit
            changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=5, cwd=here)
            commit += "-dirty" if changes.stdout.strip() else ""
        info["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Atomic JSON write (NaN written as null, so browsers and pandas both read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(data, default=_plain), parse_constant=lambda _: None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def write_csv(frame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_figures(detector: PatchDetector, predictions: Predictions, category: str,
                 out_dir: Path, threshold: float | None = None) -> list[Path]:
    """The starting project's file names plus PR, score and anomaly-map figures."""
    saved = []
    figures = {
        f"training_curves_{category}.png": lambda p: plots.plot_training_curves(
            detector.history, title=f"{category}: training", selected_epoch=detector.selected_epoch,
            save_to=p),
        f"roc_curve_{category}.png": lambda p: plots.plot_roc_curve(
            predictions.labels, predictions.image_scores, title=f"{category}: image ROC", save_to=p),
        f"pr_curve_{category}.png": lambda p: plots.plot_pr_curve(
            predictions.labels, predictions.image_scores, title=f"{category}: image PR", save_to=p),
        f"score_distribution_{category}.png": lambda p: plots.plot_score_distributions(
            predictions.labels, predictions.image_scores, predictions.defect_types,
            threshold=threshold, title=f"{category}: image scores", save_to=p),
    }
    for name, draw in figures.items():
        if name.startswith("training_curves") and detector.history.empty:
            continue
        fig = draw(out_dir / name)
        saved.append(out_dir / name)
        del fig
    types = predictions.defect_types
    per_type = [np.flatnonzero(types == t)[:2] for t in dict.fromkeys(types[predictions.labels == 1])]
    pick = np.r_[np.concatenate(per_type or [np.array([], int)])[:6],
                 np.flatnonzero(predictions.labels == 0)[:2]].astype(int)
    if pick.size:
        images = detector.read_images([predictions.samples[i] for i in pick])
        plots.plot_anomaly_grid(images, predictions.masks[pick], predictions.maps[pick].astype(np.float32),
                                titles=[f"{predictions.defect_types[i]} score={predictions.image_scores[i]:.3f}"
                                        for i in pick],
                                save_to=out_dir / f"anomaly_maps_{category}.png")
        saved.append(out_dir / f"anomaly_maps_{category}.png")
    return saved


def metrics_record(detector: PatchDetector, metrics: dict[str, Any], *, category: str,
                   n_train: int | None, n_test: int, model_file: str | Path | None = None,
                   total_seconds: float | None = None) -> dict[str, Any]:
    """The ``metrics.json`` dictionary: metrics, selection, timings, config, environment.

    ``total_seconds`` defaults to features + the LAS pool + training + evaluation (what a
    notebook run that fits and evaluates in separate steps can add up; test tracking, which
    only monitors, is left out). GAS and the nearest-neighbour baseline
    get the same keys; what does not apply to one is ``None`` (the baseline's
    ``train_seconds`` is its coreset selection, its ``selection`` is ``"none"``).
    """
    config = detector.config
    timings = detector.timings
    method = detector_method(detector)
    if method == "gas":
        selection, selection_label = config.selection, SELECTION_LABELS[config.selection]
    else:
        selection, selection_label = NO_SELECTION
    spectral = getattr(detector, "spectral", None)
    las_pool = getattr(detector, "las_pool", None)
    bank = getattr(detector, "bank", None)
    train_s = timings.get("train_seconds", float("nan"))
    feature_s = timings.get("feature_seconds", float("nan"))
    las_pool_s = timings.get("las_pool_seconds", 0.0)
    if total_seconds is None:
        total_seconds = float(np.nansum([train_s, feature_s, las_pool_s,
                                         metrics.get("eval_seconds", float("nan"))]))
    return {
        "category": category, "method": method, **metrics,
        "train_seconds": train_s, "feature_seconds": feature_s,
        "las_pool_seconds": las_pool_s,
        "tracking_seconds": timings.get("tracking_seconds"),
        "total_seconds": total_seconds,
        "selection": selection, "selection_label": selection_label,
        "selected_epoch": detector.selected_epoch, "epochs_run": len(detector.history),
        "n_train": n_train, "n_test": n_test,
        "profile": config.profile, "backbone": config.backbone,
        "synthesis": config.synthesis if method == "gas" else None,
        "variant": getattr(detector, "variant", None),
        "variant_choice": getattr(detector, "variant_choice", None),
        "spectral": spectral.summary() if spectral is not None else None,
        "las_pool_size": len(las_pool) if las_pool is not None else None,
        "bank_size": int(bank.shape[0]) if bank is not None else None,
        "shell_radii": _shell_radii(detector, config) if method == "gas" else None,
        "rarity_exponent": getattr(detector, "rarity_exponent", None),
        "config": config.to_dict(), "environment": environment_info(),
        "method_version": METHOD_VERSION,
        "bf16_backbone": bool(config.backbone_amp and native_bf16(detector.device)),
        "bf16_training": bool(config.amp and native_bf16(detector.device)),  # heads' products
        "model_path": Path(model_file).name if model_file else None,
    }


def _shell_radii(detector: Any, config: GASConfig) -> list[float]:
    """GAS's shell radii as the fit used them, in the config's units (relative radii: median
    patch distances, after ``radius_quantile``)."""
    factor = float(getattr(detector, "radius_factor", 1.0))  # 1 unless radii are relative
    return [round(config.r1 * factor, 4), round(config.r2 * factor, 4)]


def train_and_evaluate(data_root: str | Path, category: str, config: GASConfig,
                       out_dir: str | Path, *, track_every: int = 0, resume: bool = True,
                       figures: bool = True, progress: bool = True, method: str = "gas"
                       ) -> dict[str, Any]:
    """Fit on ``train/good``, evaluate on ``test``, write every artefact into ``out_dir``.

    ``track_every > 0`` scores the test split every that many epochs, for the curves only
    (unless the config's selection is ``oracle``, which is then labelled as such).
    ``method="knn"``: the nearest-neighbour baseline instead of GAS (no epochs: no
    checkpoints, tracking or training curves; ``history.csv`` is empty).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_samples = load_split(data_root, category, "train")
    test_samples = load_split(data_root, category, "test")
    config = config_for_data(config, train_samples)  # keep_aspect: the images' own proportions
    config.to_json(out_dir / "config.json")
    detector = make_detector(config, method)
    if method == "gas":
        if config.selection == "oracle" and track_every <= 0:
            track_every = 1
        tracker = make_test_tracker(test_samples, track_every) if track_every > 0 else None
        detector.fit(train_samples, checkpoint_dir=out_dir / "checkpoints", resume=resume,
                     epoch_callback=tracker, progress=progress)
    else:
        detector.fit(train_samples, progress=progress)
    model_path = detector.save(out_dir / f"best_model_{category}.pth")
    write_csv(detector.history, out_dir / "history.csv")

    metrics, per_defect, predictions = evaluate(detector, test_samples, progress=progress)
    write_csv(per_defect, out_dir / "per_defect.csv")
    result = metrics_record(detector, metrics, category=category, n_train=len(train_samples),
                            n_test=len(test_samples), model_file=model_path,
                            total_seconds=time.perf_counter() - started)
    if figures:
        save_figures(detector, predictions, category, out_dir, metrics.get("f1_threshold"))
    write_json(result, out_dir / "metrics.json")
    return result
