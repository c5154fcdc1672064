"""Dataset statistics for the exploration notebook: counts, sizes, colours, defect areas.

Every ``*_table`` function returns a pandas DataFrame and every ``plot_*`` function a
pyplot-free ``matplotlib.figure.Figure`` (shown inline by Jupyter, saved with ``savefig``).
Unreadable files do not stop the exploration: ``image_table`` lists them with the reason, so
the notebook can show them instead of failing on the first one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage

from ..data import GOOD, SPLITS, DataError, Sample, load_image, load_mask, load_split
from ..spectral import MIN_DENSITY, MIN_POINTS, MIN_RADIUS, SpectralResult, spectral_decision

GROUP_ORDER_GOOD = ("train/good", "test/good")
CHANNELS = ("r", "g", "b")


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _group(split: str, defect_type: str) -> str:
    return f"{split}/{defect_type}"


def all_samples(root: str | Path, category: str) -> list[tuple[str, Sample]]:
    """(split, sample) for every image of the category, train first."""
    return [(split, s) for split in SPLITS for s in load_split(root, category, split)]


# --- counts -----------------------------------------------------------------------------------
def counts_table(root: str | Path, category: str) -> pd.DataFrame:
    """Images per defect type (rows) and split (columns), with totals."""
    rows = [dict(split=split, defect_type=s.defect_type) for split, s in all_samples(root, category)]
    frame = pd.DataFrame(rows)
    table = frame.pivot_table(index="defect_type", columns="split", aggfunc="size", fill_value=0)
    table = table.reindex(columns=[c for c in SPLITS if c in table.columns])
    order = [GOOD] + sorted(t for t in table.index if t != GOOD)
    table = table.reindex(order)
    table["total"] = table.sum(axis=1)
    table.loc["all"] = table.sum(axis=0)
    table.columns.name = None
    return table.astype(int)


def plot_counts(counts: pd.DataFrame, title: str = "") -> Figure:
    """Bars of images per defect type, one colour per split (from ``counts_table``)."""
    long = (counts.drop(index="all", errors="ignore").drop(columns="total", errors="ignore")
            .reset_index().melt(id_vars="defect_type", var_name="split", value_name="images"))
    fig = _figure(max(5.0, 1.2 * long["defect_type"].nunique() + 2), 3.8)
    ax = fig.add_subplot()
    sns.barplot(data=long, x="defect_type", y="images", hue="split", ax=ax,
                palette={"train": "tab:blue", "test": "tab:orange"})
    for container in ax.containers:
        ax.bar_label(container, fontsize="small", padding=2)
    ax.set(xlabel="defect type", ylabel="images", title=title or "Images per split and type")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.12)
    return fig


# --- per-image statistics ---------------------------------------------------------------------
def _image_row(split: str, sample: Sample) -> dict[str, Any]:
    row: dict[str, Any] = dict(split=split, defect_type=sample.defect_type,
                               group=_group(split, sample.defect_type),
                               file=sample.image_path.name, label=sample.label)
    try:
        with Image.open(sample.image_path) as image:
            image.load()
            row.update(width=image.width, height=image.height, mode=image.mode)
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        row.update(readable=False, error=f"{type(exc).__name__}: {exc}".replace("\n", " "))
        return row
    means, stds = rgb.reshape(-1, 3).mean(axis=0), rgb.reshape(-1, 3).std(axis=0)
    row.update(readable=True, error="", brightness=float(rgb.mean()),
               **{f"mean_{c}": float(m) for c, m in zip(CHANNELS, means)},
               **{f"std_{c}": float(s) for c, s in zip(CHANNELS, stds)})
    if sample.mask_path is not None:
        row.update(_mask_stats(sample.mask_path))
    return row


def _mask_stats(path: Path) -> dict[str, Any]:
    try:
        mask = load_mask(path, _mask_side(path)).numpy()
    except DataError as exc:
        return dict(defect_area=np.nan, defect_regions=np.nan, mask_error=str(exc))
    _, regions = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return dict(defect_area=float(mask.mean()), defect_regions=int(regions))


def _mask_side(path: Path) -> int:
    """Masks are square in MPDD; measure the area at the mask's own (longer) side."""
    with Image.open(path) as image:
        return max(image.size)


def image_table(root: str | Path, category: str) -> pd.DataFrame:
    """One row per image: split, type, size, mode, colour mean/std, defect area and regions.

    ``defect_area`` is the fraction of the image the ground-truth mask covers; unreadable
    files keep ``readable=False`` and the decoder's message in ``error``.
    """
    rows = [_image_row(split, s) for split, s in all_samples(root, category)]
    frame = pd.DataFrame(rows)
    for column in ("defect_area", "defect_regions"):
        if column not in frame.columns:
            frame[column] = np.nan
    return frame


def unreadable(images: pd.DataFrame) -> pd.DataFrame:
    """The files that could not be decoded (empty when all are fine)."""
    bad = images[~images["readable"].astype(bool)]
    return bad[["split", "defect_type", "file", "error"]].reset_index(drop=True)


def size_table(images: pd.DataFrame) -> pd.DataFrame:
    """How many images have each (width, height, mode), per split."""
    ok = images[images["readable"].astype(bool)]
    table = (ok.groupby(["split", "width", "height", "mode"], sort=False).size()
             .rename("images").reset_index())
    table[["width", "height"]] = table[["width", "height"]].astype(int)
    return table


def colour_table(images: pd.DataFrame) -> pd.DataFrame:
    """Mean of the per-image channel means and standard deviations, per split/type group."""
    ok = images[images["readable"].astype(bool)]
    columns = [f"mean_{c}" for c in CHANNELS] + [f"std_{c}" for c in CHANNELS] + ["brightness"]
    table = ok.groupby("group", sort=False)[columns].mean()
    table.insert(0, "images", ok.groupby("group", sort=False).size())
    return table.round(3)


def plot_colour_stats(images: pd.DataFrame, title: str = "") -> Figure:
    """Per-image mean brightness and contrast (pixel std), per split/type group."""
    ok = images[images["readable"].astype(bool)].copy()
    ok["contrast"] = ok[[f"std_{c}" for c in CHANNELS]].mean(axis=1)
    order = _group_order(ok["group"])
    fig = _figure(11.0, 0.45 * len(order) + 2.2)
    axes = fig.subplots(1, 3, sharey=True)
    long = ok.melt(id_vars=["group"], value_vars=[f"mean_{c}" for c in CHANNELS],
                   var_name="channel", value_name="mean")
    long["channel"] = long["channel"].str[-1].str.upper()
    sns.boxplot(data=long, y="group", x="mean", hue="channel", order=order, ax=axes[0],
                palette={"R": "tab:red", "G": "tab:green", "B": "tab:blue"}, fliersize=2)
    axes[0].set(xlabel="channel mean", ylabel="", title="Colour per channel")
    axes[0].legend(fontsize="small", title=None)
    sns.stripplot(data=ok, y="group", x="brightness", order=order, ax=axes[1], size=3,
                  color="0.3", jitter=0.25)
    axes[1].set(xlabel="mean grey value", ylabel="", title="Brightness")
    sns.stripplot(data=ok, y="group", x="contrast", order=order, ax=axes[2], size=3,
                  color="0.3", jitter=0.25)
    axes[2].set(xlabel="pixel std (mean over channels)", ylabel="", title="Contrast")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title or "Colour statistics per image")
    return fig


def _group_order(groups: pd.Series) -> list[str]:
    present = list(dict.fromkeys(groups))
    first = [g for g in GROUP_ORDER_GOOD if g in present]
    return first + sorted(g for g in present if g not in first)


# --- defect areas -----------------------------------------------------------------------------
def defect_area_table(images: pd.DataFrame) -> pd.DataFrame:
    """Defect area (percent of the image) and regions per mask, summarised per defect type."""
    masks = images[images["label"] == 1].dropna(subset=["defect_area"])
    if masks.empty:
        return pd.DataFrame(columns=["defect_type", "masks", "area_min_%", "area_median_%",
                                     "area_max_%", "regions_mean"])
    grouped = masks.groupby("defect_type")
    return pd.DataFrame({
        "masks": grouped.size(),
        "area_min_%": grouped["defect_area"].min() * 100,
        "area_median_%": grouped["defect_area"].median() * 100,
        "area_max_%": grouped["defect_area"].max() * 100,
        "regions_mean": grouped["defect_regions"].mean(),
    }).round(2).reset_index()


def plot_defect_areas(images: pd.DataFrame, title: str = "") -> Figure:
    """Distribution of the defect area (percent of the image, log scale) per defect type."""
    masks = images[images["label"] == 1].dropna(subset=["defect_area"]).copy()
    fig = _figure(8.0, 0.6 * max(1, masks["defect_type"].nunique()) + 2.0)
    ax = fig.add_subplot()
    if masks.empty:
        ax.text(0.5, 0.5, "no defect masks", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    masks["area_%"] = (masks["defect_area"] * 100).clip(lower=1e-3)
    order = sorted(masks["defect_type"].unique())
    sns.boxplot(data=masks, y="defect_type", x="area_%", order=order, ax=ax, color="0.9",
                fliersize=0)
    sns.stripplot(data=masks, y="defect_type", x="area_%", order=order, ax=ax, size=4,
                  color="tab:red", alpha=0.7, jitter=0.2)
    if masks["area_%"].max() / masks["area_%"].min() > 20:
        ax.set_xscale("log")
    ax.set(xlabel="defect area (% of the image)", ylabel="",
           title=title or "Defect area per ground-truth mask")
    ax.grid(axis="x", alpha=0.3, which="both")
    return fig


# --- pictures ---------------------------------------------------------------------------------
def plot_samples(root: str | Path, category: str, per_group: int = 4, size: int = 192,
                 seed: int = 0, title: str = "") -> Figure:
    """A grid: one row per split/type group, ``per_group`` random images, masks outlined red."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[Sample]] = {}
    for split, sample in all_samples(root, category):
        groups.setdefault(_group(split, sample.defect_type), []).append(sample)
    order = _group_order(pd.Series(list(groups)))
    fig = _figure(2.1 * per_group + 0.8, 2.2 * len(order))
    axes = fig.subplots(len(order), per_group, squeeze=False)
    for row, group in zip(axes, order):
        members = groups[group]
        picks = sorted(rng.choice(len(members), size=min(per_group, len(members)), replace=False))
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, index in zip(row, picks):
            _draw_sample(ax, members[index], size)
        row[0].set_ylabel(group, fontsize="medium")
    fig.suptitle(title or f"{category}: random samples per group (ground truth outlined in red)")
    return fig


def _draw_sample(ax, sample: Sample, size: int) -> None:
    try:
        image = load_image(sample.image_path, size).permute(1, 2, 0).numpy()
    except DataError:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes,
                color="tab:red")
        ax.set_title(sample.image_path.name, fontsize="small")
        return
    ax.imshow(image)
    if sample.mask_path is not None:
        mask = load_mask(sample.mask_path, size).numpy()
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=1.0)
    ax.set_title(sample.image_path.name, fontsize="small")


def mean_image(root: str | Path, category: str, size: int = 256, split: str = "train"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation [S, S, 3] of a split's readable images."""
    total = np.zeros((size, size, 3), dtype=np.float64)
    squares = np.zeros_like(total)
    count = 0
    for sample in load_split(root, category, split):
        try:
            image = load_image(sample.image_path, size).permute(1, 2, 0).numpy()
        except DataError:
            continue
        total += image
        squares += image.astype(np.float64) ** 2
        count += 1
    if count == 0:
        raise DataError(f"no readable {split} images in {Path(root) / category}")
    mean = total / count
    std = np.sqrt(np.clip(squares / count - mean ** 2, 0.0, None))
    return mean.astype(np.float32), std.astype(np.float32)


def plot_mean_image(mean: np.ndarray, std: np.ndarray, title: str = "") -> Figure:
    """The mean training image and the per-pixel standard deviation around it."""
    fig = _figure(9.0, 4.3)
    axes = fig.subplots(1, 2)
    axes[0].imshow(np.clip(mean, 0, 1))
    axes[0].set_title("mean training image")
    spread = axes[1].imshow(std.mean(axis=2), cmap="magma")
    axes[1].set_title("per-pixel std (mean over channels)")
    fig.colorbar(spread, ax=axes[1], shrink=0.85)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig


def spectral_choice(mean: np.ndarray, images: pd.DataFrame) -> SpectralResult:
    """GLASS's per-class variant test on the mean training image [S, S, 3] from ``mean_image``
    (``images`` is ``image_table``'s frame, for the number of training images)."""
    n_train = int((images["split"] == "train").sum())
    batch = torch.from_numpy(np.ascontiguousarray(mean)).permute(2, 0, 1)[None]
    return spectral_decision(batch, n_images=n_train)


def describe_spectral(result: SpectralResult) -> str:
    """One Markdown sentence on the decision and the numbers behind it."""
    why = (f"{result.n_points} coefficients above {result.threshold:g}, reaching radius "
           f"{result.radius:.1f} with density {result.density:.2f}")
    need = f"hypersphere needs > {MIN_POINTS} points, radius > {MIN_RADIUS:g}, density > {MIN_DENSITY}"
    return (f"- Spectral test: **{result.decision}** ({why}; {need}). `variant='auto'` would "
            f"train the {result.decision} variant on this class.")


# --- words ------------------------------------------------------------------------------------
def describe(images: pd.DataFrame) -> str:
    """A few Markdown sentences stating what the tables show for this category."""
    n_train = int((images["split"] == "train").sum())
    test = images[images["split"] == "test"]
    n_good, n_bad = int((test["label"] == 0).sum()), int((test["label"] == 1).sum())
    types = sorted(test.loc[test["label"] == 1, "defect_type"].unique())
    ok = images[images["readable"].astype(bool)]
    sizes = sorted({f"{int(w)} x {int(h)}" for w, h in zip(ok["width"], ok["height"])})
    modes = sorted(set(ok["mode"]))
    lines = [f"- **{n_train}** defect-free training images; the test split has **{n_good}** good "
             f"and **{n_bad}** defective images of **{len(types)}** type(s): "
             f"{', '.join(types) or 'none'}."]
    lines.append(f"- Image size(s): {', '.join(sizes) or 'n/a'}; mode(s): {', '.join(modes) or 'n/a'}.")
    areas = images["defect_area"].dropna() * 100
    if len(areas):
        lines.append(f"- A defect covers {areas.min():.2f} % to {areas.max():.2f} % of its image "
                     f"(median {areas.median():.2f} %).")
    bad = int((~images["readable"].astype(bool)).sum())
    if bad:
        lines.append(f"- **{bad} file(s) could not be decoded** (listed below); training on this "
                     "category will fail until they are replaced.")
    return "\n".join(lines)
