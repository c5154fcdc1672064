"""What every patch-level detector of the study shares: images in, patch scores, maps out.

GAS (``train.GASDetector``) and the nearest-neighbour baseline (``knn.KNNDetector``) differ
only in how they score a patch feature; reading images, the frozen backbone, the feature
cache and turning patch scores into an image score and an anomaly map are the same code, so
the two are compared on identical inputs and identical post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import FeatureExtractor, compute_features, embed_images
from .checkpoint import CheckpointError, atomic_torch_save, read_state
from .config import GASConfig, resolve_device
from .data import Sample, load_images
from .progress import progress as show_progress

ImagesLike = torch.Tensor | Sequence[Sample] | Sequence[str | Path]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of [B, H, W] maps (reflect padding, radius 4 sigma)."""
    if sigma <= 0:
        return maps
    radius = int(math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = maps[:, None]
    out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return out[:, 0]


def image_scores_from_grid(scores: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """Image score from patch scores [B, h, w]: the mean of the ``top_k`` highest patches
    (1: the map maximum, the reference's rule)."""
    flat = scores.flatten(1)
    k = max(1, min(int(top_k), flat.shape[1]))
    if k == 1:
        return flat.max(dim=1).values
    return flat.topk(k, dim=1).values.mean(dim=1)


def maps_to_original(maps: torch.Tensor | np.ndarray, original_size: tuple[int, int]
                     ) -> torch.Tensor | np.ndarray:
    """Anomaly maps [H, W] (or [N, H, W]) at the input geometry resized bilinearly to an image
    file's own size ``original_size = (width, height)`` (PIL's ``Image.size``) -> [height, width].

    Valid for maps of images that were resized whole (``center_crop=False``): the map's pixel
    centres are mapped onto the file's, like the resize that made the input. Returns the type
    given (a float32 tensor or a float32 NumPy array).
    """
    width, height = (int(v) for v in original_size)
    if width < 1 or height < 1:
        raise ValueError(f"original_size={original_size}: expected a positive (width, height)")
    as_numpy = isinstance(maps, np.ndarray)
    values = torch.as_tensor(np.asarray(maps, dtype=np.float32) if as_numpy else maps).float()
    if values.dim() not in (2, 3):
        raise ValueError(f"maps of shape {tuple(values.shape)}: expected [H, W] or [N, H, W]")
    batch = values if values.dim() == 3 else values[None]
    out = F.interpolate(batch[:, None], size=(height, width), mode="bilinear",
                        align_corners=False)[:, 0]
    out = out if values.dim() == 3 else out[0]
    return out.numpy() if as_numpy else out


class PatchDetector:
    """Base of the study's detectors: configure, ``fit``, ``score``, ``predict``.

    Subclasses implement ``fit`` and ``patch_scores(features [B, P, D]) -> [B, P]`` (higher
    means more anomalous), plus ``save``/``load``.
    """

    def __init__(self, config: GASConfig | None = None, *, pretrained: bool = True,
                 **overrides: Any) -> None:
        config = config or GASConfig.preset("auto")
        self.config = config.replace(**overrides) if overrides else config
        self.device = resolve_device(self.config.device)
        self.pretrained = pretrained
        self._extractor: FeatureExtractor | None = None
        self.timings: dict[str, float] = {}

    # --- features ------------------------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor.from_config(self.config, self.pretrained)
            self._extractor.to(self.device)
        return self._extractor

    @property
    def grid(self) -> tuple[int, int]:
        return FeatureExtractor.grid_size(self.config.input_shape)

    def read_images(self, images: ImagesLike, progress: bool = True) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] (``config.input_shape``) from a tensor, ``Sample``
        objects or file paths."""
        if isinstance(images, torch.Tensor):
            return images
        paths = [s.image_path if isinstance(s, Sample) else Path(s) for s in images]
        return load_images(paths, self.config.input_shape, self.config.center_crop, progress)

    def embed(self, images: ImagesLike, progress: bool = True) -> torch.Tensor:
        """Cached backbone patch features [N, P, D] on the detector's device."""
        return embed_images(self.extractor, self.read_images(images, progress), self.device,
                            batch_size=max(self.config.batch_size, 8), amp=self.config.backbone_amp,
                            cache_dir=self.config.feature_cache_dir, progress=progress)

    # --- scoring -------------------------------------------------------------------------
    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly scores [B, P] of patch features [B, P, D]; higher is more anomalous."""
        raise NotImplementedError

    @torch.no_grad()
    def score_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores [B] and anomaly maps [B, H, W] (``config.input_shape``, on the CPU)
        from features [B, P, D]."""
        b = features.shape[0]
        scores = self.patch_scores(features).float().view(b, *self.grid)
        image_scores = image_scores_from_grid(scores, self.config.image_score_top_k)
        maps = F.interpolate(scores[:, None], size=self.config.input_shape, mode="bilinear",
                             align_corners=False)[:, 0]
        maps = gaussian_blur(maps, self.config.map_sigma)
        return image_scores.float().cpu(), maps.float().cpu()

    def iter_scores(self, images: ImagesLike, batch_size: int | None = None, progress: bool = False
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Score batch by batch so memory stays bounded on a whole category."""
        batch_size = batch_size or max(self.config.batch_size, 8)
        n = len(images)
        for start in show_progress(range(0, n, batch_size), "scoring", enabled=progress,
                                   unit="batch"):
            batch = self.read_images(images[start:start + batch_size])
            feats = compute_features(self.extractor, batch, self.device, batch.shape[0],
                                     self.config.backbone_amp, progress=False)  # no_grad inside
            yield self.score_features(feats)

    def score(self, images: ImagesLike, batch_size: int | None = None, progress: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores [N] and anomaly maps [N, H, W] at ``config.input_shape`` (the images'
        own proportions with ``keep_aspect``; ``maps_to_original`` gives a file's size);
        higher means more anomalous."""
        parts = list(self.iter_scores(images, batch_size, progress))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def predict(self, images: ImagesLike, threshold: float) -> torch.Tensor:
        """1 for images whose score reaches ``threshold`` (e.g. the F1-max threshold)."""
        return (self.score(images)[0] >= threshold).long()

    # --- persistence ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Tensors and plain values only, so ``torch.load(weights_only=True)`` reads it."""
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_torch_save(self.state(), path)
        return path

    @staticmethod
    def read_saved(path: str | Path, device: str | None = None, required: tuple[str, ...] = ()
                   ) -> tuple[dict[str, Any], GASConfig]:
        """A saved detector's state and its config (``device`` overriding the saved one);
        ``checkpoint.CheckpointError`` naming the file when it cannot be read or lacks a
        ``required`` key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved detector at {path}")
        state = read_state(path, "a saved detector", "cpu", ("config", *required))
        try:
            config = GASConfig.from_dict(state["config"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"the config saved in {path} does not fit this code: {err}"
                                  ) from err
        if device is not None:
            config = config.replace(device=device)
        return state, config
