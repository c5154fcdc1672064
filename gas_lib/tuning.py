"""Comparing configurations without the test split: held-out good images with synthetic defects.

MPDD has no validation split, and the paper chose its checkpoints on the test set. To compare
settings honestly, ``validate`` holds out a fraction of ``train/good``, fits on the rest and
scores the held-out good images together with copies that carry synthetic defects of known
masks. It never reads ``test/``. Two kinds of defect, made the same way for every configuration
(fixed seed, fixed source resolution):

- ``blobs``: texture pasted under a Perlin mask, like LAS, half with procedural textures and
  half with the *fit* images themselves as textures, flipped, turned and colour-jittered (so
  both offline LAS texture sources are represented);
- ``strokes``: thin curved lines of foreign texture, a scratch-like shape that neither GAS nor
  LAS synthesises, so a configuration cannot score well on them by imitating its own training.

These are proxies: a configuration that wins here is the better bet, not a guaranteed winner on
real defects. LAS-trained configurations have seen blob-like anomalies in training, so
``blobs`` favours them; compare GAS against GAS+LAS on ``strokes``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .config import GASConfig
from .data import Sample, load_images
from .evaluate import compute_metrics
from .las import ImageTextures, ProceduralTextures, blend, perlin_mask, sample_beta
from .train import GASDetector

DEFECT_KINDS = ("blobs", "strokes")
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


def stroke_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """bool [size, size]: one to three thin quadratic curves (width ~0.4-1.2 % of the image)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(0.1, 0.9, 2) * size
        length = rng.uniform(0.15, 0.5) * size
        angle = rng.uniform(0, 2 * np.pi)
        end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1)
        bend = (start + end) / 2 + rng.normal(0, 0.15 * length, 2)
        t = np.linspace(0, 1, 64)[:, None]
        points = (1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t ** 2 * end
        width = max(2, int(round(rng.uniform(0.004, 0.012) * size)))
        draw.line([tuple(p) for p in points], fill=255, width=width, joint="curve")
    return np.asarray(canvas) > 0


@dataclass
class ValidationDefects:
    """Held-out good images and their defective copies, at the size they were loaded."""

    good: torch.Tensor  # [G, 3, S, S] in [0, 1]
    defective: torch.Tensor  # [D, 3, S, S]
    masks: torch.Tensor  # [D, S, S] bool
    kinds: np.ndarray  # [D] "blobs" / "strokes"


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
    size = good.shape[-1]
    images, masks, kinds = [], [], []
    for i in range(good.shape[0]):
        for kind in DEFECT_KINDS:
            for copy in range(copies):
                mask = perlin_mask(size, rng) if kind == "blobs" else stroke_mask(size, rng)
                texture = sources[(i + copy) % 2].sample(rng, size)
                mask_t = torch.from_numpy(mask)
                images.append(blend(good[i], texture.to(good.dtype), mask_t, sample_beta(rng)))
                masks.append(mask_t)
                kinds.append(kind)
    return ValidationDefects(good, torch.stack(images), torch.stack(masks), np.array(kinds))


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


def _resize_masks(masks: torch.Tensor, size: int) -> np.ndarray:
    """Nearest neighbour sampled at pixel centres (like PIL's, which ``data.load_mask`` uses),
    so thin strokes stay aligned with the bilinearly resized images."""
    if masks.shape[-1] != size:
        masks = F.interpolate(masks[:, None].float(), size=(size, size),
                              mode="nearest-exact")[:, 0] > 0.5
    return masks.numpy().astype(bool)


def score_defects(detector: GASDetector, defects: ValidationDefects) -> pd.DataFrame:
    """Metrics per defect kind (each against all held-out good images) and over all of them."""
    size = detector.config.image_size
    images = torch.cat([_resize(defects.good, size), _resize(defects.defective, size)])
    image_scores, maps = detector.score(images)
    n_good = defects.good.shape[0]
    labels = np.r_[np.zeros(n_good, int), np.ones(defects.defective.shape[0], int)]
    masks = np.concatenate([np.zeros((n_good, size, size), bool),
                            _resize_masks(defects.masks, size)])
    kinds = np.r_[np.full(n_good, "good"), defects.kinds]
    rows = []
    for kind in ("all",) + DEFECT_KINDS:
        keep = np.ones(len(kinds), bool) if kind == "all" else np.isin(kinds, ("good", kind))
        metrics = compute_metrics(labels[keep], image_scores.numpy()[keep], masks[keep],
                                  maps.numpy()[keep])
        rows.append({"defects": kind, **{k: metrics[k] for k in
                                         ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")}})
    return pd.DataFrame(rows)


def validate(config: GASConfig, train: Sequence[Sample] | torch.Tensor, *,
             fraction: float = 0.2, copies: int = 2, seed: int = VALIDATION_SEED,
             progress: bool = True) -> pd.DataFrame:
    """Fit ``config`` on part of the training images and score held-out synthetic defects.

    ``train``: the category's ``train/good`` samples (read at ``SOURCE_SIZE``, or at
    ``image_size`` when that is larger) or images
    [N, 3, S, S] in [0, 1]. The split and the defects depend on ``seed`` only, not on the
    config, so configurations are compared on identical data. Returns one row per defect kind
    (and ``all``) with ``fit_seconds``; the detector's own selection is forced to ``last``
    (the held-out images are the validation here). The table's ``attrs["config"]`` is the
    config that was fitted.
    """
    if isinstance(train, torch.Tensor):
        images = train
    else:
        images = load_images([s.image_path for s in train], max(SOURCE_SIZE, config.image_size),
                             config.center_crop, progress)
    if images.shape[-1] < config.image_size:
        raise ValueError(f"validation images of {images.shape[-1]} px are smaller than "
                         f"image_size={config.image_size}: load them at least that large")
    fit_idx, held_idx = holdout_split(images.shape[0], fraction, seed)
    defects = make_defects(images[held_idx], images[fit_idx], copies, seed)
    fitted = config.replace(selection="last")
    detector = GASDetector(fitted)
    started = time.perf_counter()
    detector.fit(_resize(images[fit_idx], config.image_size), progress=progress)
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
    if any("center_crop" in overrides for overrides in candidates.values()):
        raise ValueError("compare: candidates share one set of validation images, so they cannot "
                         "differ in center_crop; compare crop settings with separate runs")
    if not isinstance(train, torch.Tensor):
        size = max([SOURCE_SIZE, base.image_size] +
                   [int(o.get("image_size", 0)) for o in candidates.values()])
        train = load_images([s.image_path for s in train], size, base.center_crop, progress)
    tables = []
    for name, overrides in tqdm(candidates.items(), desc="candidates", disable=not progress):
        table = validate(base.replace(**overrides), train, fraction=fraction, copies=copies,
                         seed=seed, progress=False)
        table.insert(0, "overrides", str(dict(overrides)) if overrides else "(base)")
        table.insert(0, "candidate", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
