"""Global Anomaly Synthesis: hard synthetic anomalies made by gradient ascent in feature space.

Starting from normal patch features plus a little noise, GAS climbs the discriminator's
"this is anomalous" loss, i.e. walks towards where the discriminator still calls a patch
normal, and keeps each patch within a shell ``[r1, r2]`` around its anchor (manifold) or around
the per-position centre of the training set (hypersphere). The discriminator then learns to
reject exactly those near-normal points.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import GASConfig
from .knn import nearest_distance
from .model import Discriminator

_EPS = 1e-12


@dataclass
class Shell:
    """Where synthetic features must lie: ``r1 <= ||g - reference|| <= r2`` per patch."""

    reference: torch.Tensor  # [N, D], the anchor or the per-position centre of each patch
    r1: float
    r2: float


def project_to_shell(features: torch.Tensor, shell: Shell) -> torch.Tensor:
    """Truncated projection: rescale each patch's offset from its reference into ``[r1, r2]``."""
    offset = features - shell.reference
    norm = offset.norm(dim=-1, keepdim=True)
    clamped = norm.clamp(shell.r1, shell.r2)
    return shell.reference.addcmul(offset, clamped / norm.clamp_min(_EPS))


def manifold_shell(anchors: torch.Tensor, config: GASConfig, scale: float = 1.0) -> Shell:
    """Shell ``[r1, r2] * scale`` around each normal patch (``scale``: ``feature_scale`` when
    the radii are relative, else 1)."""
    return Shell(anchors, config.r1 * scale, config.r2 * scale)


def hypersphere_shell(centres: torch.Tensor, radius: float, scale: tuple[float, float] = (1.0, 2.0)
                      ) -> Shell:
    """Shell ``[scale0 * r_t, scale1 * r_t]`` around each patch's position centre (``[N, D]``)."""
    return Shell(centres, scale[0] * radius, scale[1] * radius)


def share_of_anchors(normal: torch.Tensor, shell: Shell, fraction: float,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, Shell]:
    """A random ``fraction`` of the normal patches [N, D] and their shell, as the anchors GAS
    synthesises from (``gas_patch_fraction``); all of them, unchanged, when ``fraction`` is 1.

    The ascent's cost is proportional to the number of anchors; the normal term and the
    BatchNorm context still see every normal patch.
    """
    if fraction >= 1:
        return normal, shell
    keep = torch.randperm(normal.shape[0], generator=generator, device=normal.device)
    keep = keep[:max(1, math.ceil(fraction * normal.shape[0]))]
    return normal[keep], Shell(shell.reference[keep], shell.r1, shell.r2)


def synthesize(discriminator: Discriminator, anchors: torch.Tensor, shell: Shell,
               config: GASConfig, generator: torch.Generator | None = None,
               context: torch.Tensor | None = None, units: tuple[float, float] = (1.0, 1.0)
               ) -> torch.Tensor:
    """Return GAS features [N, D] for the normal features ``anchors`` (gradients not kept).

    ``n_step`` normalised gradient-ascent steps of size ``eta`` on ``BCE(D(g), 1)``, the norm
    taken per patch; a truncated projection every ``n_proj`` steps and after the last step, so
    the result always lies in the shell. ``D`` scores ``g`` in one BatchNorm batch with the
    anchors (``Discriminator.logits_in_context``), as the reference scores
    ``cat([normal, synthetic])`` at every step (``ascent_norm="frozen"``: with the statistics
    of that batch at the first step held fixed, ``Discriminator.folded``: each step about half
    the cost); ``context`` is ``first_layer(anchors)`` when
    the caller has it already (computed here otherwise). ``units``: what ``noise_std`` and
    ``eta`` are multiplied by (``GASDetector.step_units``; 1 and 1 for absolute settings).
    """
    noise_unit, step_unit = units
    step_length = config.eta * step_unit
    anchors = anchors.detach()
    noise = torch.randn(anchors.shape, generator=generator, device=anchors.device,
                        dtype=anchors.dtype)
    synthetic = anchors + (config.noise_std * noise_unit) * noise
    target = torch.ones(anchors.shape[0], device=anchors.device, dtype=anchors.dtype)
    if context is None and discriminator.training:  # eval mode: running statistics, no context
        with torch.no_grad():
            context = discriminator.first_layer(anchors)
    context = context.detach() if context is not None else None
    if config.ascent_norm == "frozen":
        folded = discriminator.folded(context, synthetic)
        for step in range(1, config.n_step + 1):
            grad = folded.anomaly_loss_gradient(synthetic)
            grad_norm = grad.norm(dim=-1, keepdim=True).clamp_min(_EPS)
            synthetic = synthetic.addcmul(grad, grad_norm.reciprocal(), value=step_length)
            if step % config.n_proj == 0 or step == config.n_step:
                synthetic = project_to_shell(synthetic, shell)
        return synthetic
    with torch.enable_grad():
        for step in range(1, config.n_step + 1):
            synthetic.requires_grad_(True)
            logits = discriminator.logits_in_context(synthetic, context)
            loss = F.binary_cross_entropy_with_logits(logits, target)
            (grad,) = torch.autograd.grad(loss, synthetic)
            grad_norm = grad.norm(dim=-1, keepdim=True).clamp_min(_EPS)
            synthetic = synthetic.detach().addcmul(grad, grad_norm.reciprocal(), value=step_length)
            if step % config.n_proj == 0 or step == config.n_step:
                synthetic = project_to_shell(synthetic, shell)
    return synthetic.detach()


CLEARANCE_BANK = 1024


@torch.no_grad()
def clear_of_normal(synthetic: torch.Tensor, normal: torch.Tensor, radius: float,
                    generator: torch.Generator | None = None, bank: int = CLEARANCE_BANK
                    ) -> torch.Tensor:
    """Which synthetic patches [N, D] lie at least ``radius`` from each of ``bank`` random
    normal patches [M, D] (all of them when M <= bank): a bool mask [N]."""
    if normal.shape[0] > bank:
        pick = torch.randperm(normal.shape[0], generator=generator, device=normal.device)[:bank]
        normal = normal[pick]
    nearest = torch.cdist(synthetic, normal).min(dim=1).values
    return nearest >= radius


def gas_losses(discriminator: Discriminator, normal: torch.Tensor, synthetic: torch.Tensor,
               normal_hidden: torch.Tensor | None = None, *,
               normal_hard_fraction: float = 1.0, weights: torch.Tensor | None = None,
               counted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``BCE(D(t), 0)`` and ``BCE(D(g), 1)``, from one discriminator pass over both sets
    (``normal_hidden``: ``first_layer(normal)`` with its graph, when already computed).

    ``weights`` [N] (``rarity_weight``, ``mass_weight``): each normal patch and the synthetic
    patch made from it (row for row: every normal patch is an anchor) count in proportion,
    normalised to mean 1.

    ``counted`` [N] bool (``gas_clearance``): the synthetic patches the anomaly term averages
    (zero when none is).

    ``normal_hard_fraction`` < 1: the normal term averages only that fraction of the normal
    patches with the largest loss, the rare ones the discriminator still calls anomalous (e.g.
    the part on bracket_white, 6 % of the frame), instead of all of them (the reference).
    """
    logits = discriminator.joint_logits(normal, synthetic, normal_hidden)
    n = normal.shape[0]
    per_normal = F.binary_cross_entropy_with_logits(logits[:n], torch.zeros_like(logits[:n]),
                                                    reduction="none")
    per_anomaly = F.binary_cross_entropy_with_logits(logits[n:], torch.ones_like(logits[n:]),
                                                     reduction="none")
    if weights is not None:
        weights = weights / weights.mean()
        per_normal, per_anomaly = per_normal * weights, per_anomaly * weights
    k = max(1, math.ceil(normal_hard_fraction * n))
    if k < n:
        per_normal = per_normal.topk(k).values
    if counted is not None:
        return per_normal.mean(), (per_anomaly * counted).sum() / counted.sum().clamp_min(1)
    return per_normal.mean(), per_anomaly.mean()


def position_centres(features: torch.Tensor, quantile: float = 0.75
                     ) -> tuple[torch.Tensor, float]:
    """Per-position centre ``c`` [P, D] of adapted features [N, P, D] and radius ``r_t``.

    ``r_t`` is the ``quantile`` of the normal patches' distances to their position's centre.
    """
    centres = features.mean(dim=0)
    return centres, any_size_quantile((features - centres).norm(dim=-1), quantile)


def any_size_quantile(values: torch.Tensor, q: float, limit: int = 1_000_000) -> float:
    """``torch.quantile`` of ``values`` (any shape), which refuses very large inputs: above
    ``limit`` values, of an evenly strided subsample of at most ``limit``."""
    flat = values.flatten().float()
    if flat.numel() > limit:
        flat = flat[::flat.numel() // limit + 1]
    return float(torch.quantile(flat, q))


def column_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of each column of ``values`` [N, P] -> [P], linearly interpolated
    like ``torch.quantile(values, q, dim=0)``, which older torch releases refuse above 2**24
    values (about 12,900 training images of 1,296 patches; the project admits torch 2.4 on);
    two ``kthvalue`` calls have no such limit."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q}: expected 0 <= q <= 1")
    values = values.float()
    position = q * (values.shape[0] - 1)
    below = int(math.floor(position))  # kthvalue counts from 1
    low = values.kthvalue(below + 1, dim=0).values
    if position == below:
        return low
    return low + (position - below) * (values.kthvalue(below + 2, dim=0).values - low)


def feature_scale(features: torch.Tensor, seed: int = 0, n_query: int = 1024,
                  bank_size: int = 16384) -> float:
    """The category's own feature scale: median distance from a training patch to its nearest
    patch of *another* training image. ``features``: [N, P, D], N >= 2.

    Queries come from a seeded half of the images and the bank from the other half, so a patch
    never meets itself or its own image's neighbours. Shell radii given in these units
    (``radius_scale="relative"``) mean the same on any category and backbone: 1.0 is as far as
    a normal patch typically is from the closest normal patch seen in training.
    """
    n, p, d = features.shape
    if n < 2:
        raise ValueError(f"feature_scale needs at least 2 training images, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=gen)
    half = max(1, n // 2)
    query = features[order[:half].to(features.device)].reshape(-1, d)
    bank = features[order[half:].to(features.device)].reshape(-1, d)
    query = query[torch.randperm(query.shape[0], generator=gen)[:n_query].to(features.device)]
    bank = bank[torch.randperm(bank.shape[0], generator=gen)[:bank_size].to(features.device)]
    nearest = torch.cdist(query.float(), bank.float()).min(dim=1).values
    return float(nearest.median())


def rarity_exponent(rarity: torch.Tensor, weight: float, flat: float = 0.0,
                    full: float = 0.0) -> float:
    """The exponent the rarities [N, P] (median 1, ``patch_rarity``) are raised to: ``weight``,
    or with a ramp (1 <= ``flat`` < ``full``) ``weight`` times where their 99th percentile
    lies between ``flat`` (0) and ``full`` (1). Weighting by rarity moves the discriminator's
    attention to rare structure; on a surface whose patches are all about equally common it
    only takes attention from the common texture where thin defects lie (issue 9, eighteenth
    round), so the ramp leaves such a category unweighted."""
    if weight <= 0 or (flat, full) == (0, 0):
        return float(weight)
    q99 = any_size_quantile(rarity, 0.99)
    return float(weight) * min(1.0, max(0.0, (q99 - flat) / (full - flat)))


def patch_rarity(features: torch.Tensor, seed: int = 0, bank_size: int = 4096) -> torch.Tensor:
    """How rare each training patch is, [N, P] on the CPU: its distance to the nearest of
    ``bank_size`` patches of the *other* half of the images (seeded halves, as
    ``feature_scale``), divided by the median over all patches. ``features``: [N, P, D], N >= 2.

    1 is a typical patch; patches few other images share score above it (the top 1 % of
    bracket_white's and metal_plate's are 3.2-3.7 times the median). The distances are the
    baseline's (``knn.nearest_distance``, both sides centred on the bank's mean; bf16 under the
    caller's autocast: ~2^-8 relative, far below the spread of the ratios); the cost grows
    with N, ~25 ms per 288 px image on one thread of the 2-core development CPU, ~13 ms on
    both (2.1 s / 1.1 s for bracket_white's 88), so it is not flat in the training-set size
    as the rest of a fit is.
    """
    rarity = torch.empty(features.shape[:2])
    for mine, bank, bank_sq, centre in other_half_banks(features, seed, bank_size, "patch_rarity"):
        for i in mine:
            rarity[i] = nearest_distance(features[i].float() - centre, bank, bank_sq).cpu()
    return rarity / rarity.median().clamp_min(_EPS)


def other_half_banks(features: torch.Tensor, seed: int, bank_size: int, caller: str
                     ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each seeded half of the training images [N, P, D] (N >= 2): its image indices, a
    bank of ``bank_size`` random patches of the *other* half, centred on their mean (the
    distance product's precision), the bank's squared norms and that mean, so that a patch
    never meets itself or its own image's neighbours (``patch_rarity``, ``shell_mass``)."""
    n, _, d = features.shape
    if n < 2:
        raise ValueError(f"{caller} needs at least 2 training images, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=gen)
    halves = (order[: n // 2], order[n // 2:])
    for mine, other in (halves, halves[::-1]):
        bank = features[other.to(features.device)].reshape(-1, d).float()
        bank = bank[torch.randperm(bank.shape[0], generator=gen)[:bank_size].to(bank.device)]
        centre = bank.mean(0)
        bank = bank - centre
        yield mine.tolist(), bank, (bank * bank).sum(1), centre


def shell_mass(features: torch.Tensor, radius: float, seed: int = 0, bank_size: int = 4096,
               chunk: int = 1 << 22) -> torch.Tensor:
    """How much of the other training images lies around each patch at the shell's scale,
    [N, P] on the CPU: the mean over ``bank_size`` patches of the other half of the images
    (seeded halves, as ``patch_rarity``) of ``exp(-d^2 / (2 radius^2))``. ``features``:
    [N, P, D], N >= 2.

    Unlike the rarity (the nearest neighbour's distance), it sees a small cluster of alike
    patches, such as the frame's outermost ring on a texture (measured in issue 9's twenty-sixth
    round: 3-4 % of the other images' patches within 1.5 feature scales of a ring patch, 13-72 %
    for an interior one, while their nearest neighbours are closer), as thinly covered."""
    mass = torch.empty(features.shape[:2])
    scale = -0.5 / float(radius) ** 2
    for mine, bank, bank_sq, centre in other_half_banks(features, seed, bank_size, "shell_mass"):
        rows = max(1, chunk // bank.shape[0])
        for i in mine:
            query = features[i].float() - centre
            parts = []
            for part in query.split(rows):
                sq = torch.addmm(bank_sq, part, bank.t(), alpha=-2).add_(
                    (part * part).sum(1, keepdim=True)).clamp_(min=0)
                parts.append(sq.mul_(scale).exp_().mean(1))
            mass[i] = torch.cat(parts).cpu()
    return mass


def mass_weights(mass: torch.Tensor, exponent: float, cap: float) -> torch.Tensor:
    """Patch weights [N, P] from ``shell_mass``: (median mass / mass) ** exponent, the ratio
    cut to ``cap`` first (a patch with nothing around it is the rarity weight's concern)."""
    ratio = mass.median().clamp_min(_EPS) / mass.clamp_min(_EPS)
    return ratio.clamp(max=cap) ** exponent
