"""The study layer: what the notebooks, the command line and the reports use on top of the method.

``from gas_lib import study`` gives the notebook steps of ``study.pipeline`` by their old names
(``study.make_config``, ``study.fit_detector``, ``study.evaluate_detector``, ...). The other
modules are imported by name when needed, ``from gas_lib.study import plots, widgets``:

- ``pipeline``: the notebook steps that take more than one library call
- ``explore``: dataset inventory and image statistics (``00_data_exploration``)
- ``projection``: 2-D views of normal and GAS-synthesised features (``01_training``)
- ``ablation``: the GAS ablation grid (``02_gas_ablation``)
- ``plots``, ``widgets``: figures and the interactive explorer (``03_evaluation``)
- ``report``: ``train_and_evaluate``, metrics records and atomic CSV/JSON writers
- ``summary``: the cross-category ``reports/index.html`` (``python -m gas_lib.study.summary``)
- ``tuning``: held-out validation with synthetic defects (``python -m gas_lib validate``)

Imports run one way: the study layer uses the method (``gas_lib.config``, ``gas_lib.train``,
...), never ``gas_lib.tools``; the method never imports the study layer (``lint-imports``).
"""

from .pipeline import (
    BASELINE_COMPARED,
    BASELINE_METRICS,
    BASELINE_PER_DEFECT,
    EXAMPLE_KINDS,
    METRIC_NAMES,
    SCORE_BATCH,
    BaselineRun,
    EpochMonitor,
    baseline_comparison,
    baseline_per_defect,
    config_table,
    describe_baseline,
    describe_evaluation,
    describe_training,
    evaluate_detector,
    fit_and_evaluate_baseline,
    fit_detector,
    make_config,
    method_fit_seconds,
    metrics_overview,
    model_path,
    pick_comparison_images,
    pick_examples,
    plot_baseline_maps,
    plot_curves,
    plot_examples,
    read_train_images,
    score_cached,
    setup_notebook,
    threshold_table,
    timing_table,
)

__all__ = [
    "BASELINE_COMPARED", "BASELINE_METRICS", "BASELINE_PER_DEFECT", "EXAMPLE_KINDS",
    "METRIC_NAMES", "SCORE_BATCH", "BaselineRun", "EpochMonitor", "baseline_comparison",
    "baseline_per_defect", "config_table", "describe_baseline", "describe_evaluation",
    "describe_training", "evaluate_detector", "fit_and_evaluate_baseline", "fit_detector",
    "make_config", "method_fit_seconds", "metrics_overview", "model_path",
    "pick_comparison_images", "pick_examples", "plot_baseline_maps", "plot_curves",
    "plot_examples", "read_train_images", "score_cached", "setup_notebook", "threshold_table",
    "timing_table",
]
