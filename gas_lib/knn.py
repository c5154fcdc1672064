"""``KNNDetector``: the nearest-neighbour baseline (PatchCore-style) that GAS has to beat.

No training: the memory bank is a greedy k-center coreset of the training images' patch
features (the same cached backbone features GAS trains on), and a test patch scores its
Euclidean distance to the nearest bank vector. Everything else (reading images, the backbone,
image scores, smoothed maps) is ``detector.PatchDetector``'s, so the two methods are compared
on identical inputs and identical post-processing.

>>> baseline = KNNDetector(GASConfig.preset("cpu")).fit(train_samples)
>>> image_scores, anomaly_maps = baseline.score(test_images)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .config import METHOD_VERSION, GASConfig
from .data import config_for_data
from .detector import ImagesLike, PatchDetector

PROJECTION_DIM = 128  # PatchCore's random projection for the coreset distances
CORESET_BLOCK = 1024  # training patches per block of the lazy greedy selection
DISTANCE_CHUNK = 2 ** 24  # entries of one [queries, bank] distance block (64 MB in float32)


def _project(features: torch.Tensor, dim: int, generator: torch.Generator,
             chunk: int = 16384) -> torch.Tensor:
    """``features`` [N, D] times a fixed Gaussian matrix [D, dim] (Johnson-Lindenstrauss),
    float32, chunk by chunk so a half-precision input is never copied whole to float32.
    Returned unchanged (as float32) when ``D <= dim``."""
    n, d = features.shape
    if d <= dim:
        return features.float().contiguous()
    matrix = (torch.randn(d, dim, generator=generator) / math.sqrt(dim)).to(features.device)
    return torch.cat([part.float() @ matrix for part in features.split(chunk)])


def greedy_coreset(features: torch.Tensor, n: int, seed: int = 0, *,
                   projection_dim: int = PROJECTION_DIM, block: int = CORESET_BLOCK
                   ) -> torch.Tensor:
    """Indices [n] of a greedy k-center coreset of ``features`` [N, D] (PatchCore).

    Why: the memory bank of every training patch is redundant (neighbouring patches and
    images repeat each other) and makes every test patch's nearest-neighbour search cost
    O(N). Greedy k-center picks, one at a time, the point farthest from everything picked so
    far, so the kept points cover the whole feature distribution, rare patches (outliers)
    first, and the nearest-neighbour distance of any training patch to the bank is at most
    twice the best achievable covering radius. Random subsampling would instead keep the
    dense modes and drop exactly the rare normal patches whose absence later reads as a
    defect.

    How: as PatchCore, distances are taken on a fixed random projection to ``projection_dim``
    dimensions (seeded by ``seed``, which also picks the random first point). The selection
    is exact greedy, made fast on a few CPU cores by lazy evaluation: the points are split
    into blocks of ``block`` rows, each block remembers how many centres it has already been
    compared with and the largest remaining distance in it, an upper bound since distances
    only shrink. The block with the largest bound is brought up to date with one matrix
    product against the centres it has not seen yet (instead of one matrix-vector product
    over all N points per selected centre, which is memory bound), until the largest bound
    belongs to an up-to-date block: its farthest point is the next centre. Every point is
    still compared with every centre at most once; on 110k random 384-d vectors 11k centres
    take seconds on two cores instead of minutes.

    ``n`` is clipped to [1, N]; ``n >= N`` returns ``arange(N)``. Indices are in selection
    order, distinct, on the CPU.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"greedy_coreset expects features [N, D] with N > 0, got "
                         f"{tuple(features.shape)}")
    total = features.shape[0]
    n = max(1, min(int(n), total))
    if n >= total:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(int(seed))
    start = int(torch.randint(total, (1,), generator=generator))
    with torch.no_grad():
        x = _project(features, projection_dim, generator)
        sq = (x * x).sum(1)
        centres = x.new_empty(n, x.shape[1])
        centre_sq = x.new_empty(n)
        min_dist = torch.full((total,), float("inf"), device=x.device)
        bounds = list(range(0, total, block)) + [total]
        n_blocks = len(bounds) - 1
        applied = [0] * n_blocks  # centres each block has been compared with
        upper = [float("inf")] * n_blocks  # an upper bound of each block's largest distance
        selected = torch.empty(n, dtype=torch.long)
        index = start
        for k in range(n):
            selected[k] = index
            centres[k] = x[index]
            centre_sq[k] = sq[index]
            min_dist[index] = -math.inf  # never picked twice, even among duplicate vectors
            if k == n - 1:
                break
            while True:
                b = max(range(n_blocks), key=upper.__getitem__)
                lo, hi, seen = bounds[b], bounds[b + 1], applied[b]
                segment = min_dist[lo:hi]
                if seen > k:  # up to date: its largest distance is the global largest
                    break
                # squared distances to the unseen centres: |x|^2 - 2 x.c + |c|^2
                dist = torch.addmm(centre_sq[seen:k + 1], x[lo:hi], centres[seen:k + 1].t(),
                                   alpha=-2).amin(1).add_(sq[lo:hi])
                torch.minimum(segment, dist, out=segment)
                applied[b] = k + 1
                upper[b] = float(segment.max())
            index = lo + int(segment.argmax())
    return selected


def coreset_size(n_patches: int, fraction: float, bank_max: int) -> int:
    """``max(1, round(fraction * N))`` training patches, at most ``bank_max``."""
    return max(1, min(int(round(fraction * n_patches)), int(bank_max), int(n_patches)))


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor,
                     bank_sq: torch.Tensor | None = None, chunk: int = DISTANCE_CHUNK
                     ) -> torch.Tensor:
    """Euclidean distance [Q] from each query [Q, D] to its nearest bank row [M, D].

    Queries are taken in chunks so that one [chunk, M] distance block stays under ``chunk``
    entries whatever the bank and batch sizes (the ``torch.cdist`` matrix-product formula,
    with the bank's squared norms computed once). That formula loses about
    ``sqrt(eps) * |x|`` near zero distance, so callers centre both sides first (the
    detector subtracts the bank's mean).
    """
    queries = queries.to(bank.device, torch.float32)
    if bank_sq is None:
        bank_sq = (bank * bank).sum(1)
    rows = max(1, chunk // max(1, bank.shape[0]))
    out = []
    for part in queries.split(rows):
        dist = torch.addmm(bank_sq, part, bank.t(), alpha=-2).amin(1)
        out.append(dist.add_((part * part).sum(1)).clamp_(min=0).sqrt_())
    return torch.cat(out) if out else queries.new_zeros(0)


class KNNDetector(PatchDetector):
    """Nearest-neighbour patch baseline (PatchCore without its re-weighting).

    ``fit`` embeds the training images with the same cached backbone as GAS, keeps a greedy
    k-center coreset of ``config.knn_coreset_fraction`` of the patch vectors (at most
    ``config.knn_bank_max``), and a test patch scores its distance to the nearest one.
    """

    method = "knn"

    def __init__(self, config: GASConfig | None = None, *, pretrained: bool = True,
                 **overrides: Any) -> None:
        super().__init__(config, pretrained=pretrained, **overrides)
        self.bank: torch.Tensor | None = None  # [M, D] float32 on the device
        self._centre: torch.Tensor | None = None  # the bank's mean [D]
        self._centred: torch.Tensor | None = None  # bank - centre: distances lose less precision
        self._bank_sq: torch.Tensor | None = None
        self.n_train_patches: int | None = None
        # the same public surface as GASDetector: no epochs, nothing selected
        self.history: pd.DataFrame = pd.DataFrame()
        self.selected_epoch: int | None = None
        self.variant_choice: str | None = None
        self.spectral = None
        self.las_pool = None

    @property
    def variant(self) -> None:
        """No GAS shell: ``None`` (``GASDetector.variant`` names its manifold/hypersphere)."""
        return None

    def fit(self, images: ImagesLike, *, progress: bool = True, **ignored: Any) -> "KNNDetector":
        """Embed the training images and keep the coreset memory bank. Keyword arguments of
        ``GASDetector.fit`` that mean nothing here (``checkpoint_dir``, ``resume``,
        ``epoch_callback``) are accepted and ignored."""
        started = time.perf_counter()
        if not isinstance(images, torch.Tensor):  # keep_aspect: the input shape of these files
            self.config = config_for_data(self.config, images)
        features = self.embed(images, progress=progress)
        self.timings["feature_seconds"] = time.perf_counter() - started
        return self.fit_features(features)

    def fit_features(self, features: torch.Tensor) -> "KNNDetector":
        """The memory bank from cached features [N, P, D] (or [N, D])."""
        started = time.perf_counter()
        flat = features.reshape(-1, features.shape[-1])
        n = coreset_size(flat.shape[0], self.config.knn_coreset_fraction,
                         self.config.knn_bank_max)
        keep = greedy_coreset(flat, n, self.config.seed)
        self.set_bank(flat[keep.to(flat.device)])
        self.n_train_patches = int(flat.shape[0])
        self.timings["train_seconds"] = time.perf_counter() - started
        return self

    def set_bank(self, bank: torch.Tensor) -> None:
        self.bank = bank.to(self.device, torch.float32).contiguous()
        self._centre = self.bank.mean(0)
        self._centred = self.bank - self._centre
        self._bank_sq = (self._centred * self._centred).sum(1)

    # --- scoring -------------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Distance [B, P] of each patch feature [B, P, D] to its nearest bank vector."""
        if self.bank is None:
            raise RuntimeError("KNNDetector is not fitted: call fit(images) or load(path)")
        queries = features.flatten(0, 1).to(self.device, torch.float32) - self._centre
        distances = nearest_distance(queries, self._centred, self._bank_sq)
        return distances.view(features.shape[0], -1)

    # --- persistence ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads it."""
        if self.bank is None:
            raise RuntimeError("KNNDetector is not fitted: nothing to save")
        return {"method": self.method, "method_version": METHOD_VERSION,
                "config": self.config.to_dict(), "bank": self.bank.cpu(),
                "n_train_patches": self.n_train_patches, "timings": dict(self.timings)}

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, pretrained: bool = True
             ) -> "KNNDetector":
        state, config = cls.read_saved(path, device)
        if state.get("method") != cls.method:
            raise ValueError(f"{path} holds a {state.get('method', 'gas')!r} detector, not a "
                             f"{cls.method!r} one")
        detector = cls(config, pretrained=pretrained)
        detector.set_bank(state["bank"])
        detector.n_train_patches = state.get("n_train_patches")
        detector.timings = dict(state.get("timings", {}))
        return detector
