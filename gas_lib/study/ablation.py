"""Ablations of the GAS hyperparameters on cached backbone features.

The backbone runs once for the training and once for the test images; every variant then
trains only the adaptor and discriminator (``GASDetector.fit_features``) with the same seed
and the same honest selection, and is scored on the cached test features. ``plan`` lists the
variants (the grid's size follows the profile), ``run`` returns a tidy table with one row per
run, and the ``plot_*`` functions draw it.

Groups and what they vary (values relative to the base profile unless stated):

- ``radii``: the projection shell ``r1`` x ``r2`` (heatmap);
- ``eta``, ``n_step``, ``noise_std``: the gradient-ascent step size, number of steps and the
  starting noise (line plots);
- ``variant``: manifold vs hypersphere shell;
- ``settings``: the starting project's GAS and optimiser settings vs the GLASS reference
  code's (``PRESETS["seed"]`` vs ``PRESETS["glass"]``), on this profile's features;
- ``synthesis``: GAS only vs LAS only vs GAS + LAS (full GLASS);
- ``texture``: the LAS texture source (offline ``procedural`` noise vs other ``train_images``),
  and LAS masks on the whole image vs on the object only (``las_foreground``, the reference's
  MPDD setting); whichever the profile does not use is the variant.

Every run keeps the base profile's synthesis unless it varies it: with a ``gas+las`` profile
(``cpu``, ``glass``) the GAS sweeps train GAS + LAS, i.e. they ask which GAS settings matter
within full GLASS. LAS runs share one LAS pool per texture source and mask setting (made and
embedded once, like the features), and its cost is reported next to each run's training time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..config import METHOD_VERSION, PRESETS, GASConfig
from ..data import Sample, config_for_data, load_mask
from ..evaluate import compute_metrics
from ..las import LASPool, build_las_pool
from ..train import GASDetector
from .pipeline import score_cached
from .report import write_csv

GRIDS = ("tiny", "small", "full")
EPOCH_CAP = {"tiny": 2, "small": 12, "full": 40}
GROUPS = ("baseline", "radii", "eta", "n_step", "noise_std", "variant", "settings", "synthesis",
          "texture")
SYNTHESES = ("gas", "las", "gas+las")
OFFLINE_TEXTURES = ("procedural", "train_images")
METRICS = ("image_auroc", "pixel_auroc", "aupro")
ALL_METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max")
# The settings a "settings" run copies from a preset: GAS itself (the radii, noise and step
# with their units, how the ascent sees BatchNorm, the normal term's hard fraction, the
# rarity and mass weights) and the two optimisers.
SETTING_KEYS = ("noise_std", "eta", "n_step", "n_proj", "r1", "r2", "radius_scale",
                "step_scale", "ascent_norm", "normal_hard_fraction", "rarity_weight",
                "rarity_cap", "rarity_flat", "rarity_full", "mass_weight", "adaptor_optimizer",
                "adaptor_lr", "adaptor_weight_decay", "disc_optimizer", "disc_lr",
                "disc_weight_decay")
PARAM_COLUMNS = ("r1", "r2", "eta", "n_step", "n_proj", "noise_std", "variant", "adaptor_lr",
                 "disc_lr", "disc_optimizer", "synthesis", "texture_source", "las_foreground",
                 "las_opacity")
SETTINGS_LABELS = {"seed": "starting project", "glass": "GLASS reference"}

# Multipliers of the base value per grid; the radii are (r1 factor, r2 factor) pairs.
_FACTORS: dict[str, dict[str, list[Any]]] = {
    "tiny": {"radii": [(0.5, 1.0)], "eta": [0.1], "n_step": [0.2], "noise_std": [3.0]},
    "small": {"radii": [(0.5, 0.5), (1.0, 2.0), (2.0, 2.0)],
              "eta": [0.1, 10.0], "n_step": [0.2], "noise_std": [3.0]},
    "full": {"radii": [(a, b) for a in (0.25, 0.5, 1.0, 2.0) for b in (0.5, 1.0, 2.0, 4.0)],
             "eta": [0.01, 0.1, 0.3, 3.0, 10.0], "n_step": [0.2, 0.4, 2.0, 4.0],
             "noise_std": [0.0, 1 / 3, 3.0, 10.0]},
}


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def grid_for(config: GASConfig, grid: str | None = None) -> str:
    """``grid`` if given, else ``small`` for the cpu profile or a CPU device, else ``full``."""
    if grid is not None:
        if grid not in GRIDS:
            raise ValueError(f"ablation grid {grid!r}: expected one of {GRIDS}")
        return grid
    on_cpu = GASDetector(config).device.type == "cpu"
    return "small" if config.profile == "cpu" or on_cpu else "full"


def honest(config: GASConfig) -> GASConfig:
    """Ablations never select on the test set: oracle selection becomes ``last``."""
    return config.replace(selection="last") if config.selection == "oracle" else config


def plan(base: GASConfig, grid: str | None = None, epochs: int | None = None) -> pd.DataFrame:
    """The variants to run: group, label, the config overrides and the epochs per run.

    Variants whose config equals the baseline's are dropped (the baseline row stands in).
    """
    grid = grid_for(base, grid)
    epochs = int(epochs) if epochs else min(base.epochs, EPOCH_CAP[grid])
    base = honest(base).replace(epochs=epochs)
    factors = _FACTORS[grid]
    rows: list[dict[str, Any]] = [dict(group="baseline", label="baseline", overrides={})]
    for f1, f2 in factors["radii"]:
        r1, r2 = _round(base.r1 * f1), _round(base.r2 * f2)
        if r1 <= r2:
            rows.append(dict(group="radii", label=f"r1={r1:g}, r2={r2:g}",
                             overrides=dict(r1=r1, r2=r2)))
    for factor in factors["eta"]:
        eta = _round(base.eta * factor)
        rows.append(dict(group="eta", label=f"eta={eta:g}", overrides=dict(eta=eta)))
    for factor in factors["n_step"]:
        n_step = max(1, int(round(base.n_step * factor)))
        rows.append(dict(group="n_step", label=f"n_step={n_step}",
                         overrides=dict(n_step=n_step, n_proj=min(base.n_proj, n_step))))
    for factor in factors["noise_std"]:
        noise = _round(base.noise_std * factor)
        rows.append(dict(group="noise_std", label=f"noise_std={noise:g}",
                         overrides=dict(noise_std=noise)))
    for other in ("manifold", "hypersphere"):
        if other != base.variant:
            rows.append(dict(group="variant", label=other, overrides=dict(variant=other)))
    for preset, label in SETTINGS_LABELS.items():
        rows.append(dict(group="settings", label=label, overrides=preset_settings(preset)))
    for synthesis in SYNTHESES:
        rows.append(dict(group="synthesis", label=synthesis, overrides=dict(synthesis=synthesis)))
    las_synthesis = base.synthesis if base.synthesis != "gas" else "gas+las"
    for source in OFFLINE_TEXTURES:
        rows.append(dict(group="texture", label=f"{las_synthesis}, {source} textures",
                         overrides=dict(synthesis=las_synthesis, texture_source=source)))
    where = "the whole image" if base.las_foreground else "the object only"
    rows.append(dict(group="texture", label=f"{las_synthesis}, masks on {where}",
                     overrides=dict(synthesis=las_synthesis,
                                    las_foreground=not base.las_foreground)))
    other_opacity = "reference" if base.las_opacity == "wide" else "wide"
    rows.append(dict(group="texture", label=f"{las_synthesis}, {other_opacity} opacity",
                     overrides=dict(synthesis=las_synthesis, las_opacity=other_opacity)))

    seen = {_key(base)}
    kept = [rows[0]]
    for row in rows[1:]:
        key = _key(base.replace(**row["overrides"]))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    frame = pd.DataFrame(kept)
    frame["epochs"] = epochs
    frame["grid"] = grid
    return frame


def _key(config: GASConfig) -> str:
    """What makes two runs the same: every setting except where things are stored."""
    values = config.to_dict()
    for name in ("feature_cache_dir", "device", "profile", "extra", "keep_aspect"):
        values.pop(name, None)
    if values.get("aspect") == 1.0:  # square inputs keep the keys of runs made before aspect
        values.pop("aspect")
    values["method_version"] = METHOD_VERSION
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def preset_settings(preset: str) -> dict[str, Any]:
    """The GAS and optimiser settings of a preset (defaults filled in)."""
    values = GASConfig.from_dict(dict(PRESETS[preset], profile=preset)).to_dict()
    return {k: values[k] for k in SETTING_KEYS}


def baseline_label(base: GASConfig) -> str:
    """Which preset's GAS settings the baseline already has (shown in the settings group)."""
    for preset, label in SETTINGS_LABELS.items():
        if all(getattr(base, k) == v for k, v in preset_settings(preset).items()):
            return f"this profile (= {label})"
    return f"this profile ({base.profile})"


def run(variants: pd.DataFrame, base: GASConfig, train_samples: Sequence[Sample],
        test_samples: Sequence[Sample], *, out_csv: str | Path | None = None,
        log: bool = True, progress: bool = False, reuse: bool = True) -> pd.DataFrame:
    """Fit and score every variant of ``plan``; a tidy table, one row per run.

    With ``out_csv`` the table is rewritten after every run, and runs already in that file
    (same full config) are reused, so an interrupted ablation continues where it stopped.
    """
    epochs = int(variants["epochs"].iloc[0])
    base = config_for_data(honest(base).replace(epochs=epochs), train_samples)
    probe = GASDetector(base)
    train_images = probe.read_images(train_samples, progress)
    train_features = probe.embed(train_images, progress=progress)
    test_features = probe.embed(test_samples, progress=progress)
    if base.variant == "auto":  # the spectral choice, made once for every run
        base = base.replace(variant=probe.choose_variant(train_images).decision)
    pools: dict[tuple[str, int, bool], LASPool] = {}
    shape, crop = base.input_shape, base.center_crop
    labels = np.array([s.label for s in test_samples])
    masks = np.stack([load_mask(s.mask_path, shape, crop).numpy() for s in test_samples])

    done: dict[str, dict[str, Any]] = {}
    if out_csv is not None and reuse and Path(out_csv).is_file():
        previous = pd.read_csv(out_csv)
        done = {row["config_key"]: row for row in previous.to_dict("records")}
    rows: list[dict[str, Any]] = []
    for i, variant in enumerate(variants.to_dict("records"), start=1):
        config = base.replace(**variant["overrides"])
        key = _key(config)
        if key in done:
            row = dict(done[key])
            row.update(group=variant["group"], label=variant["label"])
            status = "reused"
        else:
            pool = _las_pool(pools, probe, config, train_images, progress)
            row = _one_run(config, train_features, test_features, labels, masks, pool)
            row.update(group=variant["group"], label=variant["label"], config_key=key)
            status = f"{row['train_seconds'] + row['eval_seconds']:.0f} s"
        rows.append(row)
        if log:
            print(f"[{i:>2}/{len(variants)}] {variant['group']:<9} {variant['label']:<28} "
                  f"image AUROC {row['image_auroc']:.3f}  pixel AUROC {row['pixel_auroc']:.3f}  "
                  f"AUPRO {row['aupro']:.3f}  ({status})", flush=True)
        if out_csv is not None:
            write_csv(_order(pd.DataFrame(rows)), out_csv)
    return _order(pd.DataFrame(rows))


def _las_pool(pools: dict[tuple[str, int, bool, str], LASPool], probe: GASDetector,
              config: GASConfig, train_images: torch.Tensor, progress: bool) -> LASPool | None:
    """The LAS pool for this run's texture source and masks, built on first use, then shared."""
    if config.synthesis == "gas":
        return None
    key = (config.texture_source, config.las_variants, config.las_foreground, config.las_opacity)
    if key not in pools:
        pools[key] = build_las_pool(probe.extractor, train_images, config, device=probe.device,
                                    progress=progress)
    return pools[key]


def _one_run(config: GASConfig, train_features: torch.Tensor, test_features: torch.Tensor,
             labels: np.ndarray, masks: np.ndarray, pool: LASPool | None = None
             ) -> dict[str, Any]:
    detector = GASDetector(config)
    started = time.perf_counter()
    detector.fit_features(train_features, progress=False, las_pool=pool)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores, maps = score_cached(detector, test_features)
    metrics = compute_metrics(labels, scores, masks, maps)
    row = {name: getattr(config, name) for name in PARAM_COLUMNS}
    row.update({m: metrics[m] for m in ALL_METRICS})
    row.update(epochs=config.epochs, seed=config.seed, selection=config.selection,
               train_seconds=train_seconds, eval_seconds=time.perf_counter() - started,
               las_pool_seconds=pool.seconds if pool is not None else 0.0)
    return row


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    first = ["group", "label", *PARAM_COLUMNS, *ALL_METRICS, "epochs", "seed", "selection",
             "train_seconds", "las_pool_seconds", "eval_seconds", "config_key"]
    return frame[[c for c in first if c in frame.columns]
                 + [c for c in frame.columns if c not in first]]


# --- views ------------------------------------------------------------------------------------
def sweep(results: pd.DataFrame, group: str) -> pd.DataFrame:
    """The runs of one group plus the baseline, sorted by the swept setting."""
    part = results[results["group"].isin([group, "baseline"])].copy()
    if group in part.columns:
        part = part.sort_values(group, kind="stable")
    return part.reset_index(drop=True)


def plot_radii(results: pd.DataFrame, metrics: Sequence[str] = METRICS) -> Figure:
    """Heatmaps of each metric over (r1, r2); empty cells were not run."""
    part = sweep(results, "radii")
    fig = Figure(figsize=(4.2 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    base = results[results["group"] == "baseline"].iloc[0]
    for ax, metric in zip(axes, metrics):
        table = part.pivot_table(index="r1", columns="r2", values=metric, aggfunc="mean")
        sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", cbar=False, ax=ax,
                    linewidths=0.5, annot_kws={"fontsize": "small"})
        ax.invert_yaxis()
        ax.set(title=metric.replace("_", " "), xlabel="r2", ylabel="r1")
        rows, cols = list(table.index), list(table.columns)
        if base["r1"] in rows and base["r2"] in cols:
            ax.add_patch(_box(cols.index(base["r2"]), rows.index(base["r1"])))
    fig.suptitle("Projection radii (baseline boxed)")
    return fig


def _box(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 1, 1, fill=False, edgecolor="white", linewidth=2.5)


def plot_sweeps(results: pd.DataFrame, groups: Sequence[str] = ("eta", "n_step", "noise_std"),
                metrics: Sequence[str] = METRICS) -> Figure:
    """One panel per swept setting, each metric against the setting's value."""
    fig = Figure(figsize=(4.6 * len(groups), 3.9), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=True)[0]
    base = results[results["group"] == "baseline"].iloc[0]
    for ax, group in zip(axes, groups):
        part = sweep(results, group)
        for metric in metrics:
            ax.plot(part[group], part[metric], marker="o", label=metric.replace("_", " "))
        ax.axvline(base[group], color="0.5", linestyle=":", linewidth=1)
        values = part[group].to_numpy(dtype=float)
        positive = values[values > 0]
        if len(positive) and positive.max() / positive.min() >= 30 and (values > 0).all():
            ax.set_xscale("log")
        ax.set(xlabel=group, title=f"{group} (baseline dotted)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[0].legend(fontsize="small")
    return fig


def plot_choices(results: pd.DataFrame, base: GASConfig,
                 metrics: Sequence[str] = METRICS) -> Figure:
    """Bars: manifold vs hypersphere, and this profile vs the two projects' settings."""
    fig = Figure(figsize=(11.0, 3.9), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    labels = {"variant": f"{base.variant} (baseline)", "settings": baseline_label(base)}
    lows = []
    for ax, group in zip(axes, ("variant", "settings")):
        part = sweep(results, group)
        part["choice"] = np.where(part["group"] == "baseline", labels[group], part["label"])
        long = part.melt(id_vars=["choice"], value_vars=list(metrics), var_name="metric",
                         value_name="score")
        sns.barplot(data=long, x="choice", y="score", hue="metric", ax=ax, errorbar=None)
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3f", fontsize="x-small", padding=1)
        ax.set(xlabel="", title="manifold vs hypersphere" if group == "variant"
               else "GAS + optimiser settings")
        ax.legend(fontsize="small", loc="lower right")
        ax.grid(axis="y", alpha=0.3)
        lows.append(float(np.nanmin(long["score"].to_numpy(dtype=float))))
    low = min(lows) if lows else 0.0
    axes[0].set_ylim(max(0.0, low - 0.1), 1.02)
    return fig


def synthesis_table(results: pd.DataFrame, base: GASConfig) -> pd.DataFrame:
    """GAS vs LAS vs GAS+LAS and the texture sources side by side, with the time each took."""
    part = results[results["group"].isin(["baseline", "synthesis", "texture"])].copy()
    part["synthesis"] = part["synthesis"].fillna(base.synthesis)
    on_object = part["las_foreground"].fillna(False).astype(bool)
    part["textures"] = np.where(part["synthesis"] == "gas", "-", part["texture_source"]
                                + np.where(on_object, ", object only", ""))
    part["seconds"] = (part["train_seconds"] + part["las_pool_seconds"].fillna(0.0)).round(1)
    part = part.drop_duplicates(subset=["synthesis", "textures"])
    order = {name: i for i, name in enumerate(SYNTHESES)}
    part = part.sort_values(by=["synthesis", "textures"], key=lambda c: c.map(order)
                            if c.name == "synthesis" else c, kind="stable")
    cols = ["synthesis", "textures", *METRICS, "image_ap", "pixel_ap", "train_seconds",
            "las_pool_seconds", "seconds"]
    return part[cols].reset_index(drop=True)


def plot_synthesis(results: pd.DataFrame, base: GASConfig,
                   metrics: Sequence[str] = METRICS) -> Figure:
    """Bars per synthesis (and LAS texture source), labelled with the seconds each run took."""
    table = synthesis_table(results, base)
    table["run"] = [f"{row.synthesis}" + ("" if row.textures == "-" else f"\n{row.textures}")
                    + f"\n{row.seconds:.0f} s" for row in table.itertuples()]
    long = table.melt(id_vars=["run"], value_vars=list(metrics), var_name="metric",
                      value_name="score")
    fig = Figure(figsize=(max(6.0, 1.9 * len(table) + 2.0), 4.0), layout="constrained")
    ax = fig.add_subplot()
    sns.barplot(data=long, x="run", y="score", hue="metric", ax=ax, errorbar=None)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3f", fontsize="x-small", padding=1)
    low = float(np.nanmin(long["score"].to_numpy(dtype=float))) if len(long) else 0.0
    ax.set(xlabel="", ylim=(max(0.0, low - 0.1), 1.02),
           title="GAS vs LAS vs GAS + LAS (seconds: training + LAS pool)")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_overview(results: pd.DataFrame, metrics: Sequence[str] = METRICS) -> Figure:
    """Every run against the baseline: values annotated, colour = difference to baseline."""
    base = results[results["group"] == "baseline"].iloc[0]
    table = results.set_index(results["group"] + ": " + results["label"])[list(metrics)]
    delta = table - base[list(metrics)].astype(float)
    fig = Figure(figsize=(2.0 * len(metrics) + 3.5, 0.32 * len(table) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    limit = float(np.nanmax(np.abs(delta.to_numpy(dtype=float)))) or 0.01
    sns.heatmap(delta.astype(float), annot=table.astype(float), fmt=".3f", cmap="RdBu",
                center=0.0, vmin=-limit, vmax=limit, ax=ax, linewidths=0.5,
                cbar_kws={"label": "difference to baseline"}, annot_kws={"fontsize": "small"})
    ax.set(xlabel="", ylabel="", title="All runs (value; colour = better/worse than baseline)")
    return fig


def best_runs(results: pd.DataFrame, metric: str = "aupro", k: int = 5) -> pd.DataFrame:
    """The ``k`` runs with the highest ``metric`` (ties broken by image then pixel AUROC)."""
    order = [metric] + [m for m in ("image_auroc", "pixel_auroc") if m != metric]
    cols = ["group", "label", *METRICS, "train_seconds"]
    return results.sort_values(order, ascending=False)[cols].head(k).reset_index(drop=True)


def describe(results: pd.DataFrame) -> str:
    """Markdown sentences: baseline, the best run per metric and the spread of the runs."""
    base = results[results["group"] == "baseline"].iloc[0]
    lines = [f"- {len(results)} runs of {int(base['epochs'])} epochs each (seed {int(base['seed'])}, "
             f"selection '{base['selection']}') took {results['train_seconds'].sum():.0f} s of "
             f"training and {results['eval_seconds'].sum():.0f} s of scoring."]
    for metric in METRICS:
        values = results[metric].astype(float)
        if values.notna().any():
            best = results.loc[values.idxmax()]
            lines.append(f"- {metric.replace('_', ' ')}: baseline {base[metric]:.3f}; runs range "
                         f"{values.min():.3f} to {values.max():.3f}; best "
                         f"**{best['group']}: {best['label']}**.")
    return "\n".join(lines)
