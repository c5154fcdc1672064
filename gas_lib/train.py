"""``GASDetector``: configure, ``fit`` on normal images, ``score``, ``save``/``load``.

The frozen backbone runs once per training image; every epoch trains the adaptor and the
discriminator on the cached patch features. Each epoch ends with an atomic checkpoint, so an
interrupted fit resumes where it stopped and ends with the same weights.

This module is the estimator's face; the epoch loop and the losses are in ``fit_loop.py``,
the training checkpoint in ``checkpoint.py``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import checkpoint, fit_loop
from .checkpoint import CHECKPOINT_NAME, CheckpointError
from .config import GASConfig
from .data import config_for_data
from .detector import ImagesLike, PatchDetector
from .fit_loop import (LAS_SEED_OFFSET, LAS_SHELL, EpochCallback, LASBatch, TrainingDiverged,
                       set_seed)
from .gas import column_quantile
from .las import LASPool, build_las_pool
from .model import Adaptor, Discriminator, WeightAverage, build_heads, build_optimizers
from .spectral import SpectralResult, spectral_decision

__all__ = ["GASDetector", "TrainingDiverged", "CheckpointError", "CHECKPOINT_NAME",
           "EpochCallback", "LASBatch", "LAS_SHELL", "LAS_SEED_OFFSET", "set_seed"]

# position_centring="excess": the level nearly every normal image reaches at a position (the
# twenty-second round's validation chose 0.1 over 0.25, 0.5 and the mean, all within noise)
POSITION_QUANTILE = 0.1


class GASDetector(PatchDetector):
    """GAS anomaly detector in the scikit-learn spirit.

    >>> detector = GASDetector(GASConfig.preset("cpu")).fit(train_samples)
    >>> image_scores, anomaly_maps = detector.score(test_images)
    """

    def __init__(self, config: GASConfig | None = None, *, pretrained: bool = True,
                 **overrides: Any) -> None:
        super().__init__(config, pretrained=pretrained, **overrides)
        self.adaptor: Adaptor | None = None
        self.discriminator: Discriminator | None = None
        self._average: WeightAverage | None = None  # ema_decay > 0: what scores while training
        self.centres: torch.Tensor | None = None  # hypersphere: per-position centre [P, D]
        self.radius: float | None = None
        self.history: pd.DataFrame = pd.DataFrame()
        self.selected_epoch: int | None = None
        self.feature_scale: float | None = None  # radius_scale="relative": measured at fit
        # [N, P] at fit (rarity and mass weights); None when neither applies
        self.patch_weights: torch.Tensor | None = None
        self.radius_factor = 1.0  # relative radii x this (radius_quantile), set at fit
        # [P] (position_centring), set at fit; subtracted while the config's mode is not "off"
        self.position_offset: torch.Tensor | None = None
        self.rarity_exponent: float | None = None  # what rarity_weight's ramp gave, at fit
        self.las_pool: LASPool | None = None  # the LAS pool the last fit trained on
        self.spectral: SpectralResult | None = None  # the spectral test (variant="auto")
        self.variant_choice: str | None = None  # what variant="auto" chose

    @property
    def variant(self) -> str:
        """The GAS variant in use: the config's, or what ``variant="auto"`` chose."""
        if self.config.variant != "auto":
            return self.config.variant
        if self.variant_choice is None:
            raise ValueError("variant='auto' is chosen from the training images: call fit(images) "
                             "or choose_variant(images) first")
        return self.variant_choice

    @property
    def radius_unit(self) -> float:
        """What r1 and r2 are multiplied by: the measured feature scale (relative radii) or 1."""
        if self.config.radius_scale == "absolute":
            return 1.0
        if self.feature_scale is None:
            raise RuntimeError("radius_scale='relative' needs the feature scale: fit first")
        return self.feature_scale * self.radius_factor

    def step_units(self, dim: int) -> tuple[float, float]:
        """(noise unit per feature, step unit) that ``noise_std`` and ``eta`` are multiplied
        by: 1 and 1 (absolute), or ``feature_scale / sqrt(dim)`` and ``feature_scale``
        (relative: noise_std is the noise's expected length in feature scales)."""
        if self.config.step_scale == "absolute":
            return 1.0, 1.0
        if self.feature_scale is None:
            raise RuntimeError("step_scale='relative' needs the feature scale: fit first")
        return self.feature_scale / math.sqrt(dim), self.feature_scale

    @property
    def uses_las(self) -> bool:
        return self.config.synthesis in ("las", "gas+las")

    def choose_variant(self, images: ImagesLike) -> SpectralResult:
        """Run the spectral test on the training images and remember its decision."""
        self.spectral = spectral_decision(self.read_images(images))
        self.variant_choice = self.spectral.decision
        return self.spectral

    # --- training ------------------------------------------------------------------------
    def fit(self, images: ImagesLike, *, checkpoint_dir: str | Path | None = None,
            resume: bool = True, epoch_callback: EpochCallback | None = None,
            progress: bool = True) -> "GASDetector":
        """Train on normal images; see ``fit_features`` for the options."""
        started = time.perf_counter()
        if not isinstance(images, torch.Tensor):  # keep_aspect: the input shape of these files
            self.config = config_for_data(self.config, images)
        images = self.read_images(images, progress)  # [N, 3, H, W]
        features = self.embed(images, progress=progress)  # [N, P, D]
        self.timings["feature_seconds"] = time.perf_counter() - started
        if self.config.variant == "auto":
            self.choose_variant(images)
        pool = None
        if self.uses_las:
            pool = build_las_pool(self, images, progress=progress)
            self.timings["las_pool_seconds"] = pool.seconds
        return self.fit_features(features, checkpoint_dir=checkpoint_dir, resume=resume,
                                 epoch_callback=epoch_callback, progress=progress,
                                 las_pool=pool, las_images=images)

    def fit_features(self, features: torch.Tensor, *, checkpoint_dir: str | Path | None = None,
                     resume: bool = True, epoch_callback: EpochCallback | None = None,
                     progress: bool = True, las_pool: LASPool | None = None,
                     las_images: torch.Tensor | None = None) -> "GASDetector":
        """Train on cached features [N, P, D].

        - ``checkpoint_dir``: an atomic checkpoint after every epoch; with ``resume`` a fit
          with the same config continues from it (and says so on stderr).
        - ``epoch_callback(detector, epoch) -> metrics``: monitoring (e.g. test AUROC per
          epoch); with ``selection="oracle"`` its ``image_auroc + pixel_auroc`` picks the epoch.
        - selection ``last`` keeps the final epoch; ``validation`` holds out ``val_fraction`` of
          the training images and keeps the epoch with the lowest held-out GAS loss.
        - ``las_pool`` (synthesis ``las``/``gas+las``): LAS features of these training images
          from ``build_las_pool`` (build once, reuse across runs); or ``las_images`` (the
          training images [N, 3, S, S]) to build it here. ``las_regenerate_every > 0`` needs
          ``las_images`` to rebuild the pool.
        """
        fit_loop.check_inputs(self, features, epoch_callback, las_pool, las_images)
        self.position_offset = None  # training and its callbacks see raw scores
        fit_loop.train(self, features, checkpoint_dir=checkpoint_dir, resume=resume,
                       epoch_callback=epoch_callback, show=progress, las_pool=las_pool,
                       las_images=las_images)
        if self.config.position_centring != "off":  # one scoring pass: part of the training
            started = time.perf_counter()
            self.position_offset = self._position_offset(features)
            self.timings["train_seconds"] = (self.timings.get("train_seconds", 0.0)
                                             + time.perf_counter() - started)
        return self

    def init_heads(self, dim: int) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """Fresh adaptor and discriminator on the device, with their weight average when
        ``ema_decay > 0``; returns the two optimisers."""
        self.adaptor, self.discriminator = build_heads(dim, self.config, self.grid)
        self.adaptor.to(self.device)
        self.discriminator.to(self.device)
        self._average = None
        if self.config.ema_decay > 0:
            self._average = WeightAverage([self.adaptor, self.discriminator],
                                          self.config.ema_decay)
        return build_optimizers(self.adaptor, self.discriminator, self.config)

    def run_epoch(self, batch_features: Callable[[torch.Tensor], torch.Tensor], n_images: int,
                  opt_adaptor: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer,
                  cpu_gen: torch.Generator, dev_gen: torch.Generator,
                  reference: torch.Tensor | None = None, las_batch: LASBatch | None = None
                  ) -> dict[str, float]:
        """One pass over the training images (``fit_loop.run_epoch``); the mean losses."""
        return fit_loop.run_epoch(self, batch_features, n_images, opt_adaptor, opt_disc,
                                  cpu_gen, dev_gen, reference, las_batch)

    def held_out_loss(self, features: torch.Tensor, las_pool: LASPool | None = None,
                      seed: int = 12345) -> float:
        """Selection loss on held-out features [N, P, D] (``fit_loop.held_out_loss``)."""
        return fit_loop.held_out_loss(self, features, las_pool, seed)

    @torch.no_grad()
    def _position_offset(self, features: torch.Tensor) -> torch.Tensor:
        """What ``position_centring`` subtracts at each grid position [P], from the raw patch
        scores [N, P] of the training features [N, P, D] (scored in batches; called while
        ``position_offset`` is None): their mean ("mean"), or the excess of their
        ``POSITION_QUANTILE`` over its median across positions ("excess", zero where not
        positive)."""
        batch = max(self.config.batch_size, 8)
        raw = torch.cat([self.patch_scores(chunk).float() for chunk in features.split(batch)])
        if self.config.position_centring == "mean":
            return raw.mean(0)
        level = column_quantile(raw, POSITION_QUANTILE)
        return (level - level.median()).clamp_min(0)

    # --- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The discriminator's anomaly scores [B, P] of patch features [B, P, D]."""
        adaptor, discriminator = self._scoring_heads()
        patches = features.to(self.device, torch.float32).flatten(0, 1)  # [B * P, D]
        adapted = adaptor(patches)
        if self.config.patch_score == "logit":
            scores = discriminator.logits(adapted)
        else:
            scores = discriminator(adapted)
        scores = scores.view(features.shape[0], -1)
        if self.position_offset is not None and self.config.position_centring != "off":
            if self.position_offset.numel() != scores.shape[1]:
                raise ValueError(f"position_centring: {scores.shape[1]} patches per image, the "
                                 f"fit's images had {self.position_offset.numel()} (score images "
                                 "of the fit's input shape)")
            scores = scores - self.position_offset.to(scores.device)
        return scores

    # --- persistence ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads it
        (the format: ``checkpoint.detector_state``)."""
        return checkpoint.detector_state(self)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, pretrained: bool = True
             ) -> "GASDetector":
        """A detector saved with ``save(path)``, ready to score (``device`` overrides the
        saved one); ``CheckpointError`` naming the file when it is not one."""
        return checkpoint.load_detector(cls, path, device, pretrained)

    # --- the heads -----------------------------------------------------------------------
    def _scoring_heads(self) -> tuple[Adaptor, Discriminator]:
        """The fitted heads, in eval mode (BatchNorm uses its running statistics); during a fit
        with ``ema_decay > 0``, their weight average."""
        if self.adaptor is None or self.discriminator is None:
            raise RuntimeError("the detector is not fitted: call fit() or GASDetector.load()")
        if self._average is not None:
            adaptor, discriminator = self._average.modules
            return adaptor, discriminator  # type: ignore[return-value]
        self.adaptor.eval()
        self.discriminator.eval()
        return self.adaptor, self.discriminator

    def _head_state(self) -> dict[str, Any]:
        adaptor, discriminator = self._scoring_heads()
        return {"adaptor": copy.deepcopy(adaptor.state_dict()),
                "discriminator": copy.deepcopy(discriminator.state_dict())}

    def _load_head_state(self, state: dict[str, Any]) -> None:
        assert self.adaptor is not None and self.discriminator is not None
        self.adaptor.load_state_dict(state["adaptor"])
        self.discriminator.load_state_dict(state["discriminator"])

    def _centre_state(self) -> dict[str, Any]:
        return {"centres": self.centres, "radius": self.radius}

    def _restore_centres(self, state: dict[str, Any]) -> None:
        self.centres = state.get("centres")
        if self.centres is not None:
            self.centres = self.centres.to(self.device)
        self.radius = state.get("radius")
