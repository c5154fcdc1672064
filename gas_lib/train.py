"""``GASDetector``: configure, ``fit`` on normal images, ``score``, ``save``/``load``.

The frozen backbone runs once per training image; every epoch trains the adaptor and the
discriminator on the cached patch features. Each epoch ends with an atomic checkpoint, so an
interrupted fit resumes where it stopped and ends with the same weights.
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
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import METHOD_VERSION, GASConfig
from .data import config_for_data
from .detector import ImagesLike, PatchDetector, atomic_torch_save
from .gas import (Shell, feature_scale, gas_losses, hypersphere_shell, manifold_shell,
                  position_centres, project_to_shell, synthesize)
from .las import LASPool, build_las_pool, focal_loss, pool_sampler
from .model import Adaptor, Discriminator, WeightAverage, build_heads, build_optimizers
from .spectral import SpectralResult, spectral_decision

EpochCallback = Callable[["GASDetector", int], dict[str, float]]
LASBatch = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LAS_SHELL = (2.0, 4.0)  # hypersphere: LAS anomalous patches go to [2 r_t, 4 r_t] around c
LAS_SEED_OFFSET = 2  # the LAS sampling generator is seed + 2: GAS's generators stay untouched
CHECKPOINT_NAME = "checkpoint_last.pt"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def set_seed(seed: int) -> None:
    """Seed every generator a fit touches (Python, NumPy, torch CPU and CUDA)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        return self.feature_scale

    @property
    def uses_las(self) -> bool:
        return self.config.synthesis in ("las", "gas+las")

    def choose_variant(self, images: ImagesLike) -> SpectralResult:
        """Run the spectral test on the training images and remember its decision."""
        self.spectral = spectral_decision(self.read_images(images))
        self.variant_choice = self.spectral.decision
        return self.spectral

    # --- training ------------------------------------------------------------------------
    def init_heads(self, dim: int) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """Fresh adaptor and discriminator on the device, with their weight average when
        ``ema_decay > 0``; returns the two optimisers."""
        self.adaptor, self.discriminator = build_heads(dim, self.config)
        self.adaptor.to(self.device)
        self.discriminator.to(self.device)
        self._average = None
        if self.config.ema_decay > 0:
            self._average = WeightAverage([self.adaptor, self.discriminator],
                                          self.config.ema_decay)
        return build_optimizers(self.adaptor, self.discriminator, self.config)

    def fit(self, images: ImagesLike, *, checkpoint_dir: str | Path | None = None,
            resume: bool = True, epoch_callback: EpochCallback | None = None,
            progress: bool = True) -> "GASDetector":
        """Train on normal images; see ``fit_features`` for the options."""
        started = time.perf_counter()
        if not isinstance(images, torch.Tensor):  # keep_aspect: the input shape of these files
            self.config = config_for_data(self.config, images)
        images = self.read_images(images, progress)
        features = self.embed(images, progress=progress)
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
          with the same config continues from it.
        - ``epoch_callback(detector, epoch) -> metrics``: monitoring (e.g. test AUROC per
          epoch); with ``selection="oracle"`` its ``image_auroc + pixel_auroc`` picks the epoch.
        - selection ``last`` keeps the final epoch; ``validation`` holds out ``val_fraction`` of
          the training images and keeps the epoch with the lowest held-out GAS loss.
        - ``las_pool`` (synthesis ``las``/``gas+las``): LAS features of these training images
          from ``build_las_pool`` (build once, reuse across runs); or ``las_images`` (the
          training images [N, 3, S, S]) to build it here. ``las_regenerate_every > 0`` needs
          ``las_images`` to rebuild the pool.
        """
        cfg = self.config
        if cfg.selection == "oracle" and epoch_callback is None:
            raise ValueError("selection='oracle' needs an epoch_callback that scores the test "
                             "split (gas_lib.evaluate.make_test_tracker)")
        _ = self.variant  # variant="auto" must have been chosen by now
        if self.uses_las:
            if las_pool is None and las_images is None:
                raise ValueError(f"synthesis={cfg.synthesis!r} needs LAS features: pass "
                                 "las_pool=build_las_pool(detector, images) or las_images, "
                                 "or call fit(images)")
            if cfg.las_regenerate_every and las_images is None:
                raise ValueError("las_regenerate_every > 0 rebuilds the LAS pool: pass "
                                 "las_images (the training images) to fit_features")
            if las_pool is not None and las_pool.source.max() >= features.shape[0]:
                raise ValueError(f"las_pool was made from more images than the "
                                 f"{features.shape[0]} training features given")
        set_seed(cfg.seed)
        fit_started = time.perf_counter()
        features = features.to(self.device)
        train_idx, val_idx = self._split(features.shape[0])
        if train_idx.numel() == 0:
            raise ValueError("no training images left after the validation split")
        opt_adaptor, opt_disc = self.init_heads(features.shape[-1])
        schedulers = [self._scheduler(opt) for opt in (opt_adaptor, opt_disc)]
        cpu_gen = torch.Generator().manual_seed(cfg.seed)
        dev_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        las_gen = torch.Generator().manual_seed(cfg.seed + LAS_SEED_OFFSET)
        rows: list[dict[str, float]] = []
        best: dict[str, Any] = {"score": -math.inf, "epoch": None, "state": None}
        start_epoch = 1

        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        if ckpt_path is not None and resume and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=self.device, weights_only=True)
            if (state["config"] == cfg.to_dict() and state["n_train"] == features.shape[0]
                    and state.get("method_version") == METHOD_VERSION):
                self.adaptor.load_state_dict(state["adaptor"])
                self.discriminator.load_state_dict(state["discriminator"])
                opt_adaptor.load_state_dict(state["opt_adaptor"])
                opt_disc.load_state_dict(state["opt_disc"])
                for scheduler, saved in zip(schedulers, state["schedulers"]):
                    scheduler.load_state_dict(saved)
                cpu_gen.set_state(state["cpu_gen"])
                dev_gen.set_state(state["dev_gen"].to(dev_gen.get_state().device))
                if "las_gen" in state:
                    las_gen.set_state(state["las_gen"])
                if self._average is not None:
                    self._average.load_state_dict(state["average"])
                rows = [dict(r) for r in state["history"]]
                best = {"score": state["best_score"], "epoch": state["best_epoch"],
                        "state": state["best_state"]}
                start_epoch = state["epoch"] + 1
                self._restore_centres(state)

        train_feats, val_feats = features[train_idx], features[val_idx]
        if cfg.radius_scale == "relative":
            self.feature_scale = feature_scale(train_feats, cfg.seed)
        train_pool = val_pool = None
        epochs = range(start_epoch, cfg.epochs + 1)
        bar = tqdm(epochs, desc="GAS epochs", disable=not progress, initial=start_epoch - 1,
                   total=cfg.epochs)
        for epoch in bar:
            epoch_started = time.perf_counter()
            las_batch = None
            if self.uses_las:
                generation = ((epoch - 1) // cfg.las_regenerate_every
                              if cfg.las_regenerate_every else 0)
                if las_pool is None or las_pool.generation != generation:
                    if las_images is None:
                        raise ValueError(f"epoch {epoch} needs LAS pool generation {generation}, "
                                         f"the las_pool given is {las_pool.generation}: pass "
                                         "las_images so it can be rebuilt")
                    las_pool = build_las_pool(self, las_images, generation=generation,
                                              progress=progress)
                    train_pool = None
                if train_pool is None:
                    self.las_pool = las_pool
                    train_pool, val_pool = self._split_pool(las_pool, train_idx, val_idx)
                las_batch = pool_sampler(train_pool, las_gen)
            row = self.run_epoch(lambda idx: train_feats[idx], train_feats.shape[0],
                                 opt_adaptor, opt_disc, cpu_gen, dev_gen, reference=train_feats,
                                 las_batch=las_batch)
            if not all(math.isfinite(v) for v in row.values()):
                raise TrainingDiverged(
                    f"epoch {epoch}: loss is not finite ({row}); the last good checkpoint "
                    f"{'is ' + str(ckpt_path) if ckpt_path else 'was not saved (no checkpoint_dir)'}"
                    "; lower the learning rates or eta")
            for scheduler in schedulers:
                scheduler.step()
            row["epoch"] = epoch
            row["seconds"] = time.perf_counter() - epoch_started
            if val_idx.numel():
                row["val_loss"] = self.held_out_loss(val_feats, val_pool)
            if epoch_callback is not None:
                row.update(epoch_callback(self, epoch))
            rows.append(row)
            score = self._selection_score(row)
            if score is not None and score > best["score"]:
                best = {"score": score, "epoch": epoch, "state": self._head_state()}
            bar.set_postfix(normal=f"{row['loss_normal']:.3f}", anomaly=f"{row['loss_anomaly']:.3f}")
            if ckpt_path is not None:
                atomic_torch_save({
                    "config": cfg.to_dict(), "method_version": METHOD_VERSION,
                    "n_train": features.shape[0], "epoch": epoch,
                    "adaptor": self.adaptor.state_dict(),
                    "discriminator": self.discriminator.state_dict(),
                    "opt_adaptor": opt_adaptor.state_dict(), "opt_disc": opt_disc.state_dict(),
                    "schedulers": [scheduler.state_dict() for scheduler in schedulers],
                    "cpu_gen": cpu_gen.get_state(), "dev_gen": dev_gen.get_state().cpu(),
                    **({"las_gen": las_gen.get_state()} if self.uses_las else {}),
                    **({"average": self._average.state_dict()}
                       if self._average is not None else {}),
                    "history": rows, "best_score": best["score"], "best_epoch": best["epoch"],
                    "best_state": best["state"], **self._centre_state(),
                }, ckpt_path)

        self.history = pd.DataFrame(rows)
        if cfg.selection == "last" or best["state"] is None:
            self.selected_epoch = cfg.epochs
            final = self._head_state()  # the weight average, when there is one
        else:
            self.selected_epoch = best["epoch"]
            final = best["state"]
        self._average = None
        self._load_head_state(final)
        if self.variant == "hypersphere":  # centres of the heads kept, not of the last step's
            self._update_centres(train_feats)
        self.adaptor.eval()
        self.discriminator.eval()
        self.timings["train_seconds"] = time.perf_counter() - fit_started
        return self

    def run_epoch(self, batch_features: Callable[[torch.Tensor], torch.Tensor], n_images: int,
                  opt_adaptor: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer,
                  cpu_gen: torch.Generator, dev_gen: torch.Generator,
                  reference: torch.Tensor | None = None, las_batch: LASBatch | None = None
                  ) -> dict[str, float]:
        """One pass over the training images; ``batch_features(indices)`` gives [B, P, D].

        Passing a function lets the benchmark compare cached features with recomputing the
        backbone for every batch, on the same training code. With LAS (synthesis ``las`` or
        ``gas+las``) ``las_batch(indices)`` gives an equal-size batch of LAS features and patch
        labels ([B, P, D], [B, P]), e.g. ``las.pool_sampler``.
        """
        cfg = self.config
        assert self.adaptor is not None and self.discriminator is not None
        if self.uses_las and las_batch is None:
            raise ValueError(f"synthesis={cfg.synthesis!r}: run_epoch needs las_batch")
        if self.variant == "hypersphere":
            self._update_centres(reference if reference is not None else batch_features(
                torch.arange(n_images)))
        self.adaptor.train()
        self.discriminator.train()
        order = torch.randperm(n_images, generator=cpu_gen)
        if 0 < cfg.images_per_epoch < n_images:  # a fixed budget per epoch, drawn afresh
            order = order[:cfg.images_per_epoch]
        sums = {"loss_normal": 0.0, "loss_anomaly": 0.0}
        if las_batch is not None:
            sums["loss_las"] = 0.0
        batches = 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            batch = batch_features(idx).to(self.device, torch.float32)
            normal = self._adapt(self.adaptor, batch.flatten(0, 1))
            if cfg.synthesis == "las":
                with self._head_autocast():
                    logits = self.discriminator.logits(normal)
                    loss_normal = F.binary_cross_entropy_with_logits(logits,
                                                                     torch.zeros_like(logits))
                loss_anomaly = torch.zeros((), device=self.device)
            else:
                shell = self._shell(normal, batch.shape[0])
                with self._head_autocast():
                    # the normal patches' first layer serves the ascent (as BatchNorm context)
                    # and the training pass, computed once with its graph
                    hidden = self.discriminator.first_layer(normal)
                    synthetic = synthesize(self.discriminator, normal, shell, cfg, dev_gen,
                                           context=hidden)
                    loss_normal, loss_anomaly = gas_losses(self.discriminator, normal, synthetic,
                                                           hidden)
            loss = loss_normal + loss_anomaly
            if las_batch is not None:
                las_features, las_labels = las_batch(idx)
                loss_las = self._las_loss(las_features, las_labels)
                loss = loss + loss_las
                sums["loss_las"] += loss_las.item()
            opt_adaptor.zero_grad(set_to_none=True)
            opt_disc.zero_grad(set_to_none=True)
            loss.backward()
            opt_adaptor.step()
            opt_disc.step()
            if self._average is not None:
                self._average.update()
            sums["loss_normal"] += loss_normal.item()
            sums["loss_anomaly"] += loss_anomaly.item()
            batches += 1
        row = {k: v / batches for k, v in sums.items()}
        row["loss_total"] = row["loss_normal"] + row["loss_anomaly"] + row.get("loss_las", 0.0)
        return row

    def _las_loss(self, features: torch.Tensor, labels: torch.Tensor,
                  heads: tuple[Adaptor, Discriminator] | None = None) -> torch.Tensor:
        """Focal loss of the discriminator on adapted LAS patches [B, P, D] with labels [B, P].

        ``heads``: the (adaptor, discriminator) to use; the ones being trained by default.
        Hypersphere variant: the anomalous patches are first projected into
        ``[2 r_t, 4 r_t]`` around their position's centre, as the reference does.
        """
        assert self.adaptor is not None and self.discriminator is not None
        adaptor, discriminator = heads or (self.adaptor, self.discriminator)
        cfg = self.config
        b = features.shape[0]
        adapted = self._adapt(adaptor, features.to(self.device, torch.float32).flatten(0, 1))
        flat_labels = labels.to(self.device, torch.float32).flatten()
        if self.variant == "hypersphere":
            assert self.centres is not None and self.radius is not None
            shell = hypersphere_shell(self.centres.repeat(b, 1), self.radius, LAS_SHELL)
            adapted = torch.where(flat_labels[:, None] > 0.5, project_to_shell(adapted, shell),
                                  adapted)
        with self._head_autocast():
            logits = discriminator.logits(adapted)
        return focal_loss(torch.sigmoid(logits.float()), flat_labels, cfg.focal_gamma,
                          cfg.las_hard_fraction)

    @staticmethod
    def _split_pool(pool: LASPool, train_idx: torch.Tensor, val_idx: torch.Tensor
                    ) -> tuple[LASPool, LASPool | None]:
        """Train on LAS images of the training split only; the held-out ones score val_loss.

        Pool ``source`` indices refer to all images given to the fit; the training features
        are re-indexed ``0..len(train_idx)-1`` but the pool is sampled independently of them.
        """
        if val_idx.numel() == 0:
            return pool, None
        return pool.subset(train_idx), pool.subset(val_idx)

    @torch.no_grad()
    def held_out_loss(self, features: torch.Tensor, las_pool: LASPool | None = None,
                      seed: int = 12345) -> float:
        """GAS loss on held-out normal images with fixed synthesis noise (honest selection),
        plus the LAS focal loss over the held-out images' LAS pool entries when given."""
        adaptor, discriminator = self._scoring_heads()
        gen = torch.Generator(device=self.device).manual_seed(seed)
        total, count = 0.0, 0
        for start in range(0, features.shape[0], self.config.batch_size):
            batch = features[start:start + self.config.batch_size].to(torch.float32)
            normal = self._adapt(adaptor, batch.flatten(0, 1))
            with self._head_autocast():
                synthetic = synthesize(discriminator, normal,
                                       self._shell(normal, batch.shape[0]), self.config, gen)
                loss_normal, loss_anomaly = gas_losses(discriminator, normal, synthetic)
            total += (loss_normal + loss_anomaly).item() * batch.shape[0]
            count += batch.shape[0]
        loss = total / count
        if las_pool is not None and len(las_pool):
            las_total = 0.0
            for start in range(0, len(las_pool), self.config.batch_size):
                rows = slice(start, start + self.config.batch_size)
                part = self._las_loss(las_pool.features[rows], las_pool.labels[rows],
                                      (adaptor, discriminator))
                las_total += part.item() * las_pool.features[rows].shape[0]
            loss += las_total / len(las_pool)
        return loss

    # --- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The discriminator's anomaly scores [B, P] of patch features [B, P, D]."""
        adaptor, discriminator = self._scoring_heads()
        patches = features.to(self.device, torch.float32).flatten(0, 1)
        adapted = adaptor(patches)
        if self.config.patch_score == "logit":
            scores = discriminator.logits(adapted)
        else:
            scores = discriminator(adapted)
        return scores.view(features.shape[0], -1)

    # --- persistence ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads it."""
        return {"config": self.config.to_dict(), **self._head_state(),
                "selected_epoch": self.selected_epoch, "history": self.history.to_dict("list"),
                "timings": dict(self.timings), **self._centre_state(),
                "feature_scale": self.feature_scale,
                "variant_choice": self.variant_choice,
                "spectral": self.spectral.summary() if self.spectral is not None else None}

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, pretrained: bool = True
             ) -> "GASDetector":
        state, config = cls.read_saved(path, device)
        detector = cls(config, pretrained=pretrained)
        dim = state["adaptor"]["linear.weight"].shape[0]
        detector.adaptor, detector.discriminator = build_heads(dim, config)
        detector._load_head_state(state)
        detector.adaptor.to(detector.device).eval()
        detector.discriminator.to(detector.device).eval()
        detector._restore_centres(state)
        detector.selected_epoch = state["selected_epoch"]
        detector.history = pd.DataFrame(state["history"])
        detector.timings = dict(state.get("timings", {}))
        detector.variant_choice = state.get("variant_choice")
        detector.feature_scale = state.get("feature_scale")
        return detector

    # --- internals -----------------------------------------------------------------------
    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.config.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.config.epochs)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)

    def _head_autocast(self) -> torch.autocast:
        """bf16 for the heads' matrix products while training, where it is native.

        The adaptor's and the discriminator's products run in bf16; features, the adaptor's
        output, GAS offsets and projections stay float32 (a bf16 feature of norm ~80 would be
        quantised to ~0.5), and scoring stays float32. On CPUs without native bf16 it would be
        slower, so it is off there.
        """
        native = self.device.type == "cuda" or (
            self.device.type == "cpu" and bool(getattr(torch.cpu, "_is_avx512_bf16_supported",
                                                       lambda: False)()))
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.config.amp and native)

    def _adapt(self, adaptor: Adaptor, patches: torch.Tensor) -> torch.Tensor:
        """Adapted training features, float32; the product in bf16 where that is native.

        The result is cast back to float32 before GAS offsets and projections are taken, so
        only the adaptor's own rounding changes (relative 2^-8, far below the shell radii).
        """
        with self._head_autocast():
            return adaptor(patches).float()

    def _split(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.selection != "validation":
            return torch.arange(n), torch.arange(0)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        n_val = max(1, round(n * self.config.val_fraction))
        if n - n_val < 1:
            raise ValueError(f"{n} training images are too few for a validation split")
        return order[n_val:].sort().values, order[:n_val].sort().values

    def _selection_score(self, row: dict[str, float]) -> float | None:
        if self.config.selection == "validation":
            return -row["val_loss"]
        if self.config.selection == "oracle":
            return row.get("image_auroc", 0.0) + row.get("pixel_auroc", 0.0)
        return None

    def _shell(self, normal: torch.Tensor, n_images: int) -> Shell:
        if self.variant == "hypersphere":
            assert self.centres is not None and self.radius is not None
            centres = self.centres.repeat(n_images, 1)
            return hypersphere_shell(centres, self.radius)
        return manifold_shell(normal.detach(), self.config, self.radius_unit)

    @torch.no_grad()
    def _update_centres(self, features: torch.Tensor) -> None:
        assert self.adaptor is not None
        adapted = torch.stack([self.adaptor(f.to(self.device, torch.float32))
                               for f in features])
        self.centres, self.radius = position_centres(adapted, self.config.hypersphere_quantile)

    def _centre_state(self) -> dict[str, Any]:
        return {"centres": self.centres, "radius": self.radius}

    def _restore_centres(self, state: dict[str, Any]) -> None:
        self.centres = state.get("centres")
        if self.centres is not None:
            self.centres = self.centres.to(self.device)
        self.radius = state.get("radius")

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
