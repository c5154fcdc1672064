"""The GAS training loop: epochs over cached patch features, the losses, the held-out loss.

``train(detector, features)`` is what ``GASDetector.fit_features`` runs. Top to bottom:

1. seed everything, split off the validation images, build fresh heads, optimisers,
   schedulers and the three generators (image order, GAS noise, LAS sampling);
2. resume from the training checkpoint when there is one for this config (``checkpoint.py``);
3. every epoch: ``run_epoch`` (one pass of GAS, + LAS), the held-out loss, the callback, the
   best epoch so far, a checkpoint;
4. keep the selected epoch's heads (or the weight average), refresh the hypersphere centres.

Shapes: N training images, P patches per image, D feature channels, B images per batch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .checkpoint import CHECKPOINT_NAME, FitState, resume_training, save_training
from .config import GASConfig, native_bf16
from .gas import (Shell, any_size_quantile, clear_of_normal, feature_scale, gas_losses,
                  hypersphere_shell, manifold_shell, mass_weights, patch_rarity,
                  position_centres, project_to_shell, rarity_exponent, share_of_anchors,
                  shell_mass, synthesize)
from .las import LASPool, build_las_pool, focal_loss, pool_sampler
from .model import Adaptor, Discriminator
from .progress import log, progress

if TYPE_CHECKING:
    from .train import GASDetector

EpochCallback = Callable[["GASDetector", int], dict[str, float]]
LASBatch = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LAS_SHELL = (2.0, 4.0)  # hypersphere: LAS anomalous patches go to [2 r_t, 4 r_t] around c
LAS_SEED_OFFSET = 2  # the LAS sampling generator is seed + 2: GAS's generators stay untouched
# mass_weight: the most a thinly covered patch weighs against the median one (before the
# exponent): above the surface surrogate's ring, which weighed 2.98 against its interior's 1.00
MASS_WEIGHT_CAP = 4.0


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


def set_seed(seed: int) -> None:
    """Seed every generator a fit touches (Python, NumPy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- the fit ------------------------------------------------------------------------------------
def check_inputs(detector: GASDetector, features: torch.Tensor,
                 epoch_callback: EpochCallback | None, las_pool: LASPool | None,
                 las_images: torch.Tensor | None) -> None:
    """Raise ``ValueError`` for a fit that cannot run as asked, before any work is done."""
    cfg = detector.config
    if cfg.selection == "oracle" and epoch_callback is None:
        raise ValueError("selection='oracle' needs an epoch_callback that scores the test "
                         "split (gas_lib.evaluate.make_test_tracker)")
    _ = detector.variant  # variant="auto" must have been chosen by now
    if not detector.uses_las:
        return
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


def train(detector: GASDetector, features: torch.Tensor, *,
          checkpoint_dir: str | Path | None = None, resume: bool = True,
          epoch_callback: EpochCallback | None = None, show: bool = True,
          las_pool: LASPool | None = None, las_images: torch.Tensor | None = None) -> None:
    """Train ``detector``'s heads on features [N, P, D]; ``GASDetector.fit_features`` has the
    options (its arguments are checked there)."""
    cfg = detector.config
    set_seed(cfg.seed)
    fit_started = time.perf_counter()
    features = features.to(detector.device)
    n_train = features.shape[0]
    train_idx, val_idx = split_indices(n_train, cfg)
    if train_idx.numel() == 0:
        raise ValueError("no training images left after the validation split")
    opt_adaptor, opt_disc = detector.init_heads(features.shape[-1])
    fit = FitState(opt_adaptor, opt_disc,
                   schedulers=[make_scheduler(opt, cfg) for opt in (opt_adaptor, opt_disc)],
                   cpu_gen=torch.Generator().manual_seed(cfg.seed),
                   dev_gen=torch.Generator(device=detector.device).manual_seed(cfg.seed + 1),
                   las_gen=torch.Generator().manual_seed(cfg.seed + LAS_SEED_OFFSET))
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    start_epoch = 1
    if ckpt_path is not None and resume:
        done = resume_training(ckpt_path, detector, fit, n_train)
        if done is not None:
            start_epoch = done + 1
            log(f"resuming from epoch {start_epoch} of {cfg.epochs} (checkpoint {ckpt_path})"
                if start_epoch <= cfg.epochs else
                f"all {cfg.epochs} epochs already trained (checkpoint {ckpt_path})")

    train_feats, val_feats = features[train_idx], features[val_idx]  # [N_t, P, D], [N_v, P, D]
    if "relative" in (cfg.radius_scale, cfg.step_scale) or cfg.position_code > 0:
        detector.feature_scale = feature_scale(train_feats, cfg.seed)
    set_position_code(detector)
    detector.patch_weights, detector.rarity_exponent = None, None
    detector.radius_factor = 1.0
    if cfg.rarity_weight > 0 or cfg.radius_quantile > 0:
        with head_autocast(detector):
            rarity = patch_rarity(train_feats, cfg.seed)
        detector.radius_factor = shell_factor(rarity, cfg)
        if detector.radius_factor < 1.0:
            log(f"shell radii {cfg.r1 * detector.radius_factor:.2f}-"
                f"{cfg.r2 * detector.radius_factor:.2f} median patch distances (radius_quantile "
                f"{cfg.radius_quantile}: the training patches are alike)")
    if cfg.rarity_weight > 0:
        exponent = rarity_exponent(rarity, cfg.rarity_weight, cfg.rarity_flat, cfg.rarity_full)
        if cfg.rarity_cap > 0:
            rarity = rarity.clamp(max=cfg.rarity_cap)
        detector.rarity_exponent = exponent
        detector.patch_weights = rarity ** exponent if exponent > 0 else None
    if cfg.mass_weight > 0:
        with head_autocast(detector):
            mass = shell_mass(train_feats, cfg.r1 * detector.radius_unit, cfg.seed)
        weights = mass_weights(mass, cfg.mass_weight, MASS_WEIGHT_CAP)
        detector.patch_weights = (weights if detector.patch_weights is None
                                  else detector.patch_weights * weights)
    train_pool = val_pool = None
    epochs = progress(range(start_epoch, cfg.epochs + 1), "GAS epochs", total=cfg.epochs,
                      initial=start_epoch - 1, enabled=show and start_epoch <= cfg.epochs,
                      unit="epoch", every=max(1, cfg.epochs // 10))
    for epoch in epochs:
        epoch_started = time.perf_counter()
        las_batch = None
        if detector.uses_las:
            pool = epoch_las_pool(detector, epoch, las_pool, las_images, show)
            if pool is not las_pool or train_pool is None:  # a new generation, or the first
                las_pool = detector.las_pool = pool
                train_pool, val_pool = split_pool(pool, train_idx, val_idx)
            las_batch = pool_sampler(train_pool, fit.las_gen)
        row = run_epoch(detector, lambda idx: train_feats[idx], train_feats.shape[0],
                        fit.opt_adaptor, fit.opt_disc, fit.cpu_gen, fit.dev_gen,
                        reference=train_feats, las_batch=las_batch)
        if not all(math.isfinite(v) for v in row.values()):
            kept = f"is {ckpt_path}" if ckpt_path else "was not saved (no checkpoint_dir)"
            raise TrainingDiverged(f"epoch {epoch}: loss is not finite ({row}); the last good "
                                   f"checkpoint {kept}; lower the learning rates or eta")
        for scheduler in fit.schedulers:
            scheduler.step()
        row["epoch"] = epoch
        row["seconds"] = time.perf_counter() - epoch_started
        if val_idx.numel():
            row["val_loss"] = held_out_loss(detector, val_feats, val_pool)
        if epoch_callback is not None:
            row.update(epoch_callback(detector, epoch))
        fit.rows.append(row)
        score = selection_score(row, cfg.selection)
        if score is not None and score > fit.best["score"]:
            fit.best = {"score": score, "epoch": epoch, "state": detector._head_state()}
        epochs.set_postfix(**{name[5:]: f"{row[name]:.3f}" for name in
                              ("loss_normal", "loss_anomaly", "loss_las") if name in row})
        if ckpt_path is not None:
            save_training(ckpt_path, detector, fit, epoch, n_train)
    finish(detector, fit, train_feats)
    detector.timings["train_seconds"] = time.perf_counter() - fit_started


def finish(detector: GASDetector, fit: FitState, train_feats: torch.Tensor) -> None:
    """Keep the selected epoch's heads (``last``: the final ones, averaged when
    ``ema_decay > 0``), in eval mode, with the hypersphere centres of those heads."""
    cfg = detector.config
    detector.history = pd.DataFrame(fit.rows)
    if cfg.selection == "last" or fit.best["state"] is None:
        detector.selected_epoch = cfg.epochs
        final = detector._head_state()  # the weight average, when there is one
    else:
        detector.selected_epoch = fit.best["epoch"]
        final = fit.best["state"]
    detector._average = None
    detector._load_head_state(final)
    if detector.variant == "hypersphere":  # centres of the heads kept, not of the last step's
        update_centres(detector, train_feats)
    assert detector.adaptor is not None and detector.discriminator is not None
    detector.adaptor.eval()
    detector.discriminator.eval()


def epoch_las_pool(detector: GASDetector, epoch: int, pool: LASPool | None,
                   las_images: torch.Tensor | None, show: bool) -> LASPool:
    """The LAS pool ``epoch`` trains on: ``pool`` itself, or a new generation of it every
    ``las_regenerate_every`` epochs (rebuilt from ``las_images``)."""
    every = detector.config.las_regenerate_every
    generation = (epoch - 1) // every if every else 0
    if pool is not None and pool.generation == generation:
        return pool
    if las_images is None:
        given = pool.generation if pool is not None else None
        raise ValueError(f"epoch {epoch} needs LAS pool generation {generation}, the las_pool "
                         f"given is {given}: pass las_images so it can be rebuilt")
    return build_las_pool(detector, las_images, generation=generation, progress=show)


def split_indices(n: int, cfg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) image indices: all for training unless ``selection="validation"``,
    which holds out ``val_fraction`` of the images (the same ones for a seed)."""
    if cfg.selection != "validation":
        return torch.arange(n), torch.arange(0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_val = max(1, round(n * cfg.val_fraction))
    if n - n_val < 1:
        raise ValueError(f"{n} training images are too few for a validation split")
    return order[n_val:].sort().values, order[:n_val].sort().values


def split_pool(pool: LASPool, train_idx: torch.Tensor, val_idx: torch.Tensor
               ) -> tuple[LASPool, LASPool | None]:
    """Train on LAS images of the training split only; the held-out ones score val_loss.

    Pool ``source`` indices refer to all images given to the fit; the training features
    are re-indexed ``0..len(train_idx)-1`` but the pool is sampled independently of them.
    """
    if val_idx.numel() == 0:
        return pool, None
    return pool.subset(train_idx), pool.subset(val_idx)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _epoch: 1.0)


def selection_score(row: dict[str, float], selection: str) -> float | None:
    """Higher is better: minus the held-out loss, or the test AUROCs (oracle); None: last."""
    if selection == "validation":
        return -row["val_loss"]
    if selection == "oracle":
        return row.get("image_auroc", 0.0) + row.get("pixel_auroc", 0.0)
    return None


# --- one epoch ----------------------------------------------------------------------------------
def run_epoch(detector: GASDetector, batch_features: Callable[[torch.Tensor], torch.Tensor],
              n_images: int, opt_adaptor: torch.optim.Optimizer, opt_disc: torch.optim.Optimizer,
              cpu_gen: torch.Generator, dev_gen: torch.Generator,
              reference: torch.Tensor | None = None, las_batch: LASBatch | None = None
              ) -> dict[str, float]:
    """One pass over the training images; the mean losses of its batches.

    ``batch_features(indices)`` gives [B, P, D]: passing a function lets the benchmark compare
    cached features with recomputing the backbone for every batch, on the same training code.
    With LAS (synthesis ``las`` or ``gas+las``) ``las_batch(indices)`` gives an equal-size
    batch of LAS features and patch labels ([B, P, D], [B, P]), e.g. ``las.pool_sampler``.
    ``images_per_epoch > 0``: only that many images, drawn afresh every epoch. Relative
    radii need ``detector.feature_scale``: a fit measures it first, a bare call (the
    benchmark) measures it here once from ``reference`` (default: all ``n_images``).
    """
    cfg = detector.config
    adaptor, discriminator = detector.adaptor, detector.discriminator
    assert adaptor is not None and discriminator is not None
    if detector.uses_las and las_batch is None:
        raise ValueError(f"synthesis={cfg.synthesis!r}: run_epoch needs las_batch")
    relative = "relative" in (cfg.radius_scale, cfg.step_scale)
    measure = (relative or cfg.position_code > 0) and detector.feature_scale is None
    if reference is None and (detector.variant == "hypersphere" or measure):
        reference = batch_features(torch.arange(n_images))  # [N, P, D]
    if measure:  # called outside a fit (bench): measure once
        detector.feature_scale = feature_scale(reference, cfg.seed)
        set_position_code(detector)
    set_logit_scale(detector)
    if detector.variant == "hypersphere":
        update_centres(detector, reference)
    adaptor.train()
    discriminator.train()
    order = torch.randperm(n_images, generator=cpu_gen)
    if 0 < cfg.images_per_epoch < n_images:  # a fixed budget per epoch, drawn afresh
        order = order[:cfg.images_per_epoch]
    sums = {"loss_normal": 0.0, "loss_anomaly": 0.0}
    if las_batch is not None:
        sums["loss_las"] = 0.0
    batches = 0
    for start in range(0, order.numel(), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        batch = batch_features(idx).to(detector.device, torch.float32)  # [B, P, D]
        normal = adapt(detector, adaptor, batch.flatten(0, 1))  # [B * P, D]
        if cfg.synthesis == "las":
            with head_autocast(detector):
                logits = discriminator.logits(normal)  # [B * P]
                loss_normal = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
            loss_anomaly = torch.zeros((), device=detector.device)
        else:
            shell = gas_shell(detector, normal, batch.shape[0])
            anchors, shell = share_of_anchors(normal, shell, cfg.gas_patch_fraction, dev_gen)
            with head_autocast(detector):
                # the normal patches' first layer serves the ascent (as BatchNorm context)
                # and the training pass, computed once with its graph
                hidden = discriminator.first_layer(normal)  # [B * P, hidden]
                synthetic = synthesize(discriminator, anchors, shell, cfg, dev_gen, context=hidden,
                                       units=detector.step_units(normal.shape[-1]))
                loss_normal, loss_anomaly = gas_losses(
                    discriminator, normal, synthetic, hidden,
                    normal_hard_fraction=cfg.normal_hard_fraction,
                    weights=batch_weights(detector, idx),
                    counted=clearance_mask(cfg, synthetic, normal, shell, dev_gen))
        loss = loss_normal + loss_anomaly
        if las_batch is not None:
            las_features, las_labels = las_batch(idx)  # [B, P, D], [B, P]
            loss_las = las_loss(detector, las_features, las_labels)
            loss = loss + loss_las
            sums["loss_las"] += loss_las.item()
        opt_adaptor.zero_grad(set_to_none=True)
        opt_disc.zero_grad(set_to_none=True)
        loss.backward()
        opt_adaptor.step()
        opt_disc.step()
        if detector._average is not None:
            detector._average.update()
        sums["loss_normal"] += loss_normal.item()
        sums["loss_anomaly"] += loss_anomaly.item()
        batches += 1
    row = {k: v / batches for k, v in sums.items()}
    row["loss_total"] = row["loss_normal"] + row["loss_anomaly"] + row.get("loss_las", 0.0)
    return row


def shell_factor(rarity: torch.Tensor, config: GASConfig) -> float:
    """What relative radii are multiplied by (``radius_quantile``): 1, or less where the
    training patches' rarities [N, P] reach their ``radius_quantile`` below ``r1``."""
    if config.radius_quantile <= 0 or config.radius_scale != "relative":
        return 1.0
    return min(1.0, any_size_quantile(rarity, config.radius_quantile) / config.r1)


def set_position_code(detector: GASDetector) -> None:
    """``position_code > 0``: the adaptors' ring inputs (the live one and its weight average)
    become ``position_code`` feature scales where true; a no-op otherwise."""
    if detector.config.position_code <= 0:
        return
    assert detector.feature_scale is not None and detector.adaptor is not None
    length = detector.config.position_code * detector.feature_scale
    heads = [detector.adaptor]
    if detector._average is not None:
        heads.append(detector._average.modules[0])
    for head in heads:
        head.set_code_length(length)


def set_logit_scale(detector: GASDetector) -> None:
    """``disc_lipschitz = k > 0``: the discriminators' logit scale (the live one and its weight
    average) becomes ``k / r1`` in feature units, so that the same ``k`` lets the logit rise by
    about as much across the inner radius on features of any scale; a no-op otherwise."""
    k = detector.config.disc_lipschitz
    if k <= 0:
        return
    value = k / (detector.config.r1 * detector.radius_unit)
    heads = [detector.discriminator]
    if detector._average is not None:
        heads.append(detector._average.modules[1])
    for head in heads:
        head.scale.fill_(value)


def clearance_mask(cfg: GASConfig, synthetic: torch.Tensor, normal: torch.Tensor, shell: Shell,
                   generator: torch.Generator) -> torch.Tensor | None:
    """The synthetic patches the anomaly term counts (``gas_clearance``), or None (off)."""
    if cfg.gas_clearance <= 0:
        return None
    return clear_of_normal(synthetic, normal, cfg.gas_clearance * shell.r1, generator)


def batch_weights(detector: GASDetector, idx: torch.Tensor) -> torch.Tensor | None:
    """The patch weights [B * P] of the training images ``idx`` (``rarity_weight`` times
    ``mass_weight``'s), or None (both off, or a bare ``run_epoch`` call outside a fit)."""
    weights = detector.patch_weights
    if weights is None:
        return None
    return weights[idx].flatten().to(detector.device)


def las_loss(detector: GASDetector, features: torch.Tensor, labels: torch.Tensor,
             heads: tuple[Adaptor, Discriminator] | None = None) -> torch.Tensor:
    """Focal loss of the discriminator on adapted LAS patches [B, P, D] with labels [B, P].

    ``heads``: the (adaptor, discriminator) to use; the ones being trained by default.
    Hypersphere variant: the anomalous patches are first projected into
    ``[2 r_t, 4 r_t]`` around their position's centre, as the reference does.
    """
    assert detector.adaptor is not None and detector.discriminator is not None
    adaptor, discriminator = heads or (detector.adaptor, detector.discriminator)
    cfg = detector.config
    b = features.shape[0]
    flat = features.to(detector.device, torch.float32).flatten(0, 1)  # [B * P, D]
    adapted = adapt(detector, adaptor, flat)
    flat_labels = labels.to(detector.device, torch.float32).flatten()  # [B * P]
    if detector.variant == "hypersphere":
        assert detector.centres is not None and detector.radius is not None
        shell = hypersphere_shell(detector.centres.repeat(b, 1), detector.radius, LAS_SHELL)
        adapted = torch.where(flat_labels[:, None] > 0.5, project_to_shell(adapted, shell),
                              adapted)
    with head_autocast(detector):
        logits = discriminator.logits(adapted)
    return focal_loss(torch.sigmoid(logits.float()), flat_labels, cfg.focal_gamma,
                      cfg.las_hard_fraction)


@torch.no_grad()
def held_out_loss(detector: GASDetector, features: torch.Tensor,
                  las_pool: LASPool | None = None, seed: int = 12345) -> float:
    """GAS loss on held-out normal images [N, P, D] with fixed synthesis noise (honest
    selection; ``gas_clearance`` counted as in training), plus the LAS focal loss over the
    held-out images' LAS pool entries."""
    adaptor, discriminator = detector._scoring_heads()
    batch_size = detector.config.batch_size
    gen = torch.Generator(device=detector.device).manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, features.shape[0], batch_size):
        batch = features[start:start + batch_size].to(torch.float32)  # [B, P, D]
        normal = adapt(detector, adaptor, batch.flatten(0, 1))
        shell = gas_shell(detector, normal, batch.shape[0])
        with head_autocast(detector):
            synthetic = synthesize(discriminator, normal, shell, detector.config, gen,
                                   units=detector.step_units(normal.shape[-1]))
            loss_normal, loss_anomaly = gas_losses(
                discriminator, normal, synthetic,
                normal_hard_fraction=detector.config.normal_hard_fraction,
                counted=clearance_mask(detector.config, synthetic, normal, shell, gen))
        total += (loss_normal + loss_anomaly).item() * batch.shape[0]
        count += batch.shape[0]
    loss = total / count
    if las_pool is not None and len(las_pool):
        las_total = 0.0
        for start in range(0, len(las_pool), batch_size):
            rows = slice(start, start + batch_size)
            part = las_loss(detector, las_pool.features[rows], las_pool.labels[rows],
                            (adaptor, discriminator))
            las_total += part.item() * las_pool.features[rows].shape[0]
        loss += las_total / len(las_pool)
    return loss


# --- pieces of a training step ------------------------------------------------------------------
def head_autocast(detector: GASDetector) -> torch.autocast:
    """bf16 for the heads' matrix products while training, where it is native.

    The adaptor's and the discriminator's products run in bf16; features, the adaptor's
    output, GAS offsets and projections stay float32 (a bf16 feature of norm ~80 would be
    quantised to ~0.5), and scoring stays float32. On CPUs without native bf16 it would be
    slower, so it is off there.
    """
    device = detector.device
    return torch.autocast(device.type, dtype=torch.bfloat16,
                          enabled=detector.config.amp and native_bf16(device))


def adapt(detector: GASDetector, adaptor: Adaptor, patches: torch.Tensor) -> torch.Tensor:
    """Adapted training features [M, D], float32; the product in bf16 where that is native.

    The result is cast back to float32 before GAS offsets and projections are taken, so
    only the adaptor's own rounding changes (relative 2^-8, far below the shell radii).
    """
    with head_autocast(detector):
        return adaptor(patches).float()


def gas_shell(detector: GASDetector, normal: torch.Tensor, n_images: int) -> Shell:
    """Where GAS puts the synthetic patches of adapted normal patches [n_images * P, D]."""
    if detector.variant == "hypersphere":
        assert detector.centres is not None and detector.radius is not None
        centres = detector.centres.repeat(n_images, 1)  # [n_images * P, D]
        return hypersphere_shell(centres, detector.radius)
    return manifold_shell(normal.detach(), detector.config, detector.radius_unit)


@torch.no_grad()
def update_centres(detector: GASDetector, features: torch.Tensor) -> None:
    """Hypersphere variant: per-position centres [P, D] and the radius, from the adapted
    training features [N, P, D]."""
    assert detector.adaptor is not None
    adapted = torch.stack([detector.adaptor(f.to(detector.device, torch.float32))
                           for f in features])  # [N, P, D]
    detector.centres, detector.radius = position_centres(adapted,
                                                         detector.config.hypersphere_quantile)
