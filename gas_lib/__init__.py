"""gas_lib: Global Anomaly Synthesis (GLASS's GAS) for industrial defect detection.

Typical use::

    from gas_lib import GASConfig, GASDetector, load_split, evaluate
    train = load_split("data/anomaly_dataset", "metal_plate", "train")
    detector = GASDetector(GASConfig.preset("auto")).fit(train)
    metrics, per_defect, predictions = evaluate(detector, load_split(..., "test"))
    baseline = KNNDetector(detector.config).fit(train)  # nearest-neighbour baseline
"""

from .config import PRESETS, GASConfig, resolve_device
from .data import DataError, Sample, config_for_data, list_categories, load_split, measure_aspect
from .detector import maps_to_original
from .detector import PatchDetector
from .evaluate import compute_metrics, evaluate, make_test_tracker
from .knn import KNNDetector, greedy_coreset
from .las import LASPool, build_las_pool, focal_loss
from .spectral import SpectralResult, plot_spectrum, spectral_decision
from .train import GASDetector, TrainingDiverged

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "GASConfig", "resolve_device", "DataError", "Sample", "list_categories",
    "load_split", "compute_metrics", "evaluate", "make_test_tracker", "GASDetector",
    "KNNDetector", "PatchDetector", "greedy_coreset",
    "TrainingDiverged", "LASPool", "build_las_pool", "focal_loss", "SpectralResult",
    "plot_spectrum", "spectral_decision", "config_for_data", "measure_aspect",
    "maps_to_original", "__version__",
]
