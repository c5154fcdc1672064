"""Comparing configurations without the test split: held-out good images with synthetic defects.

MPDD has no validation split, and the paper chose its checkpoints on the test set. To compare
settings honestly, ``validate`` holds out a fraction of ``train/good``, fits on the rest and
scores the held-out good images together with copies that carry synthetic defects of known
masks. It never reads ``test/``. Seven kinds of defect, made the same way for every configuration
(fixed seed, fixed source resolution):

- ``blobs``: texture pasted under a Perlin mask, like LAS, half with procedural textures and
  half with the *fit* images themselves as textures, flipped, turned and colour-jittered (so
  both offline LAS texture sources are represented);
- ``strokes``: thin curved lines of foreign texture, a scratch-like shape that neither GAS nor
  LAS synthesises, so a configuration cannot score well on them by imitating its own training;
- ``specks``: one to four small spots anywhere in the frame;
- ``smooth``: a large soft region of shifted brightness and colour, no texture;
- ``object``: specks centred on the object (``las.foreground_mask``), where MPDD's defects are;
- ``scratches``: thin curves on the object at 8-30 % opacity. Faint thin defects are where GAS
  and the nearest-neighbour baseline differ most, as on bracket_white's real defects
  (docs/experiments.md);
- ``stains``: small discoloured spots on the object (a textureless brightness and colour change,
  like a flaw in the paint). GAS ranks such images below the baseline on bracket_white and above
  it on metal_plate, as on the two test splits' image AUROC (docs/experiments.md, twelfth round).

These are proxies: a configuration that wins here is the better bet, not a guaranteed winner on
real defects. LAS-trained configurations have seen blob-like anomalies in training, so
``blobs`` favours them; compare GAS against GAS+LAS on ``strokes``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

from ..config import GASConfig
from ..data import Sample, Size, config_for_data, image_shape, load_images
from ..evaluate import compute_metrics
from ..las import (ImageTextures, ProceduralTextures, blend, foreground_mask, perlin_mask,
                   sample_beta)
from ..progress import progress as show_progress
from ..train import GASDetector

# blobs and strokes: LAS-like texture pastes and thin curves; specks: a few spots of 0.5-1.5 %
# of the image side (defects of a few pixels, as on MPDD's brackets); smooth: a large soft
# region of shifted brightness and colour with no texture (uneven surfaces); object: specks
# on the object itself (las.foreground_mask), where MPDD's defects are, rather than anywhere
# in the frame (on bracket_white most of the frame is background cloth); scratches: faint thin
# lines on the object (8-30 % opacity), the subtle end of MPDD's scratches and paint flaws;
# stains: small textureless discoloured spots on the object (``shade`` on grown specks)
DEFECT_KINDS = ("blobs", "strokes", "specks", "smooth", "object", "scratches", "stains")
SOURCE_SIZE = 512  # defects are drawn at this size, then resized with the image per config
VALIDATION_SEED = 20261129  # fixed: every configuration is scored on the same defects


def holdout_split(n_images: int, fraction: float, seed: int = VALIDATION_SEED
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (fit, held-out) indices; the held-out part has ``round(n * fraction)`` >= 1 images."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction}: expected 0 < fraction < 1")
    n_held = max(1, round(n_images * fraction))
    if n_images - n_held < 2:
        raise ValueError(f"{n_images} training images are too few to hold out {fraction:.0%} "
                         "for validation and fit on at least 2")
    order = np.random.default_rng(seed).permutation(n_images)
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def stroke_mask(size: Size, rng: np.random.Generator) -> np.ndarray:
    """bool [H, W] (``size`` an int S: S x S): one to three thin quadratic curves (width
    ~0.4-1.2 % of the image's geometric-mean side, length 15-50 % of it)."""
    height, width = image_shape(size)
    side = math.sqrt(height * width)  # = S for a square
    extent = np.array([width, height], dtype=np.float64)  # PIL points are (x, y)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(0.1, 0.9, 2) * extent
        length = rng.uniform(0.15, 0.5) * side
        angle = rng.uniform(0, 2 * np.pi)
        end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 0, extent - 1)
        bend = (start + end) / 2 + rng.normal(0, 0.15 * length, 2)
        t = np.linspace(0, 1, 64)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
        line = max(2, int(round(rng.uniform(0.004, 0.012) * side)))
        draw.line([tuple(p) for p in points], fill=255, width=line, joint="curve")
    return np.asarray(canvas) > 0


@dataclass
class ValidationDefects:
    """Held-out good images and their defective copies, at the size they were loaded."""

    good: torch.Tensor  # [G, 3, H, W] in [0, 1]
    defective: torch.Tensor  # [D, 3, H, W]
    masks: torch.Tensor  # [D, H, W] bool
    kinds: np.ndarray  # [D] one of DEFECT_KINDS


def make_defects(good: torch.Tensor, texture_images: torch.Tensor, copies: int = 2,
                 seed: int = VALIDATION_SEED) -> ValidationDefects:
    """``copies`` defective copies of each held-out image per kind in ``DEFECT_KINDS``.

    Textures alternate between procedural ones and ``texture_images`` (the fit images, never
    the held-out ones) flipped, turned and colour-jittered (``las.ImageTextures``).
    """
    if copies < 1:
        raise ValueError(f"copies={copies}: expected at least 1 defective copy per image and kind")
    rng = np.random.default_rng(seed)
    sources = [ProceduralTextures(), ImageTextures(texture_images)]
    size = (int(good.shape[-2]), int(good.shape[-1]))
    # specks and smooth draw from their own generator, so blobs and strokes stay as they were,
    # and object specks, scratches and stains from a third, fourth and fifth one
    later = np.random.default_rng([seed, 2])
    on_object = np.random.default_rng([seed, 3])
    faint = np.random.default_rng([seed, 4])
    stained = np.random.default_rng([seed, 5])
    images, masks, kinds = [], [], []
    for i in range(good.shape[0]):
        part = foreground_mask(good[i].numpy())  # where the object, scratches and stains kinds go
        for kind in DEFECT_KINDS:
            for copy in range(copies):
                texture_from = sources[(i + copy) % 2]
                if kind in ("blobs", "strokes"):
                    mask = perlin_mask(size, rng) if kind == "blobs" else stroke_mask(size, rng)
                    texture = texture_from.sample(rng, size)
                    image = blend(good[i], texture.to(good.dtype), torch.from_numpy(mask),
                                  sample_beta(rng))
                elif kind in ("specks", "object"):
                    gen = later if kind == "specks" else on_object
                    mask = speck_mask(size, gen, part if kind == "object" else None)
                    texture = texture_from.sample(gen, size)
                    image = blend(good[i], texture.to(good.dtype), torch.from_numpy(mask),
                                  float(gen.uniform(0.0, 0.5)))
                elif kind == "scratches":
                    mask = scratch_mask(size, faint, part)
                    texture = texture_from.sample(faint, size)
                    image = blend(good[i], texture.to(good.dtype), torch.from_numpy(mask),
                                  1.0 - float(faint.uniform(0.08, 0.3)))
                elif kind == "stains":
                    mask = stain_mask(size, stained, part)
                    image = shade(good[i], torch.from_numpy(mask), stained)
                else:
                    mask = smooth_mask(size, later)
                    image = shade(good[i], torch.from_numpy(mask), later)
                images.append(image)
                masks.append(torch.from_numpy(mask))
                kinds.append(kind)
    return ValidationDefects(good, torch.stack(images), torch.stack(masks), np.array(kinds))


def speck_mask(size: Size, rng: np.random.Generator, where: np.ndarray | None = None
               ) -> np.ndarray:
    """bool [H, W]: one to four round spots, radius 0.5-1.5 % of the geometric-mean side,
    centred in the middle 80 % of the frame, or on ``where`` (bool [H, W], e.g. the object)."""
    height, width = image_shape(size)
    side = math.sqrt(height * width)
    yy, xx = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    inside = np.argwhere(where) if where is not None else np.empty((0, 2))
    for _ in range(int(rng.integers(1, 5))):
        if len(inside):
            cy, cx = inside[int(rng.integers(len(inside)))] + 0.5
        else:
            cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        radius = max(1.0, rng.uniform(0.005, 0.015) * side)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    return mask


def scratch_mask(size: Size, rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    """bool [H, W]: thin curves (``stroke_mask``) kept where they cross ``where`` (the
    object); when they miss it, one to four specks on it instead."""
    for _ in range(8):
        mask = stroke_mask(size, rng) & where
        if mask.sum() >= 0.0002 * mask.size:
            return mask
    return speck_mask(size, rng, where)


def stain_mask(size: Size, rng: np.random.Generator, where: np.ndarray) -> np.ndarray:
    """bool [H, W]: specks on ``where`` (the object) grown by 0.8-1.6 % of the geometric-mean
    side, then cut to ``where`` widened by 0.6 % (a stain may reach the part's edge, not the
    background beyond it)."""
    side = math.sqrt(math.prod(image_shape(size)))
    grow = max(1, round(rng.uniform(0.008, 0.016) * side))
    mask = ndimage.binary_dilation(speck_mask(size, rng, where), iterations=grow)
    if not where.any():  # no object found: the specks were placed anywhere, keep them whole
        return mask
    return mask & ndimage.binary_dilation(where, iterations=max(1, round(0.006 * side)))


def smooth_mask(size: Size, rng: np.random.Generator) -> np.ndarray:
    """bool [H, W]: one large soft-edged region (an ellipse of 15-35 % of the side, tilted)."""
    height, width = image_shape(size)
    yy, xx = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    cy, cx = rng.uniform(0.3, 0.7, 2)
    ry, rx = rng.uniform(0.15, 0.35, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def shade(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The image with its brightness and colour shifted inside ``mask`` (a smooth, textureless
    change: gain 0.75-0.9 or 1.1-1.25 and a colour cast of up to 0.05), fading in at the
    mask's edge; pixels outside the mask are untouched."""
    gain = float(rng.uniform(1.1, 1.25)) if rng.random() < 0.5 else float(rng.uniform(0.75, 0.9))
    cast = torch.from_numpy(rng.uniform(-0.05, 0.05, 3)).to(image.dtype).view(3, 1, 1)
    inside = mask.to(image.dtype)
    soft = F.avg_pool2d(inside[None, None], 9, stride=1, padding=4,
                        count_include_pad=False)[0] * inside  # fades in, never spills out
    changed = (image * gain + cast).clamp(0, 1)
    return image * (1 - soft) + changed * soft


def _resize(images: torch.Tensor, size: Size) -> torch.Tensor:
    shape = image_shape(size)
    if tuple(images.shape[-2:]) == shape:
        return images
    return F.interpolate(images, size=shape, mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def _resize_masks(masks: torch.Tensor, size: Size) -> np.ndarray:
    """Nearest neighbour sampled at pixel centres (like PIL's, which ``data.load_mask`` uses),
    so thin strokes stay aligned with the bilinearly resized images."""
    shape = image_shape(size)
    if tuple(masks.shape[-2:]) != shape:
        masks = F.interpolate(masks[:, None].float(), size=shape,
                              mode="nearest-exact")[:, 0] > 0.5
    return masks.numpy().astype(bool)


def source_shape(config: GASConfig, side: int | None = None) -> tuple[int, int]:
    """(H, W) the validation images are read and their defects drawn at: ``side`` x ``side``
    (default ``max(SOURCE_SIZE, image_size)``) for a square input, else the input shape's
    proportions at an area of about ``side**2`` (never smaller than the input shape)."""
    side = max(SOURCE_SIZE, config.image_size) if side is None else int(side)
    height, width = config.input_shape
    if height == width:
        return side, side
    scale = side / math.sqrt(height * width)
    largest = config.replace(image_size=max(config.image_size, side // 16 * 16)).input_shape
    return (max(height, largest[0], round(height * scale)),
            max(width, largest[1], round(width * scale)))


KINDS_MEAN = "mean of kinds"  # the row of score_defects that weighs every kind alike


def score_defects(detector: GASDetector, defects: ValidationDefects) -> pd.DataFrame:
    """Metrics per defect kind (each against all held-out good images), over all of them, and
    their mean over the kinds (``KINDS_MEAN``).

    The ``all`` row pools pixels, so its pixel metrics are mostly those of the largest defects:
    ``smooth`` regions are about 80 % of the defect pixels on MPDD's categories (issue 9,
    twenty-second round). The mean over kinds weighs a thin scratch like a large stain.
    """
    shape = detector.config.input_shape
    images = torch.cat([_resize(defects.good, shape), _resize(defects.defective, shape)])
    image_scores, maps = detector.score(images)
    n_good = defects.good.shape[0]
    labels = np.r_[np.zeros(n_good, int), np.ones(defects.defective.shape[0], int)]
    masks = np.concatenate([np.zeros((n_good, *shape), bool),
                            _resize_masks(defects.masks, shape)])
    kinds = np.r_[np.full(n_good, "good"), defects.kinds]
    rows = []
    for kind in ("all",) + DEFECT_KINDS:
        keep = np.ones(len(kinds), bool) if kind == "all" else np.isin(kinds, ("good", kind))
        metrics = compute_metrics(labels[keep], image_scores.numpy()[keep], masks[keep],
                                  maps.numpy()[keep])
        rows.append({"defects": kind, **{k: metrics[k] for k in
                                         ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")}})
    table = pd.DataFrame(rows)
    per_kind = table[table["defects"].isin(DEFECT_KINDS)].drop(columns="defects")
    return pd.concat([table, pd.DataFrame([{"defects": KINDS_MEAN, **per_kind.mean().to_dict()}])],
                     ignore_index=True)


def validate(config: GASConfig, train: Sequence[Sample] | torch.Tensor, *,
             fraction: float = 0.2, copies: int = 2, seed: int = VALIDATION_SEED,
             progress: bool = True) -> pd.DataFrame:
    """Fit ``config`` on part of the training images and score held-out synthetic defects.

    ``train``: the category's ``train/good`` samples (read at ``source_shape(config)``:
    ``SOURCE_SIZE`` square, or ``image_size`` when that is larger, in the input's proportions
    with ``keep_aspect``, whose aspect is measured from these samples) or images
    [N, 3, H, W] in [0, 1] (with ``keep_aspect`` and ``aspect`` still 1, their W / H sets it).
    The split and the defects depend on ``seed`` only, not on the
    config, so configurations are compared on identical data. Returns one row per defect kind
    (and ``all``) with ``fit_seconds``; the detector's own selection is forced to ``last``
    (the held-out images are the validation here). The table's ``attrs["config"]`` is the
    config that was fitted.
    """
    if isinstance(train, torch.Tensor):
        if config.aspect == 1.0:
            config = config_for_data(config, train)
        images = train
    else:
        config = config_for_data(config, train)
        images = load_images([s.image_path for s in train], source_shape(config),
                             config.center_crop, progress)
    shape = config.input_shape
    if images.shape[-2] < shape[0] or images.shape[-1] < shape[1]:
        raise ValueError(f"validation images of {images.shape[-2]}x{images.shape[-1]} px are "
                         f"smaller than the input shape {shape[0]}x{shape[1]} (image_size="
                         f"{config.image_size}): load them at least that large")
    fit_idx, held_idx = holdout_split(images.shape[0], fraction, seed)
    defects = make_defects(images[held_idx], images[fit_idx], copies, seed)
    fitted = config.replace(selection="last")
    detector = GASDetector(fitted)
    started = time.perf_counter()
    detector.fit(_resize(images[fit_idx], shape), progress=progress)
    fit_seconds = time.perf_counter() - started
    table = score_defects(detector, defects)
    table["fit_seconds"] = round(fit_seconds, 1)
    table["fit_images"], table["held_out_images"] = len(fit_idx), len(held_idx)
    table.attrs["config"] = fitted.to_dict()
    return table


def compare(base: GASConfig, candidates: Mapping[str, Mapping[str, Any]],
            train: Sequence[Sample] | torch.Tensor, *, fraction: float = 0.2, copies: int = 2,
            seed: int = VALIDATION_SEED, progress: bool = True) -> pd.DataFrame:
    """``validate`` each ``base.replace(**overrides)`` on the same split and defects.

    ``candidates``: name -> config overrides (``{}`` for the base itself). Returns one row per
    candidate and defect kind, the candidate's name and overrides in front.
    """
    geometry = ("center_crop", "aspect", "keep_aspect")
    if any(key in overrides for overrides in candidates.values() for key in geometry):
        raise ValueError("compare: candidates share one set of validation images, so they cannot "
                         "differ in center_crop, aspect or keep_aspect; compare those settings "
                         "with separate runs")
    if not isinstance(train, torch.Tensor):
        base = config_for_data(base, train)
        side = max([SOURCE_SIZE, base.image_size] +
                   [int(o.get("image_size", 0)) for o in candidates.values()])
        train = load_images([s.image_path for s in train], source_shape(base, side),
                            base.center_crop, progress)
    tables = []
    for name, overrides in show_progress(candidates.items(), "candidates", enabled=progress,
                                         unit="candidate"):
        table = validate(base.replace(**overrides), train, fraction=fraction, copies=copies,
                         seed=seed, progress=False)
        table.insert(0, "overrides", str(dict(overrides)) if overrides else "(base)")
        table.insert(0, "candidate", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
