"""Local Anomaly Synthesis (LAS): texture pasted into normal images under Perlin-noise masks.

GAS makes near-normal anomalies in feature space; LAS adds image-space ones that look like real
local defects (stains, rust, scratches of foreign texture). Everything here is seeded by a
NumPy ``Generator``, so one seed gives the same masks, textures and blends.

Training uses a *pool*: ``las_variants`` LAS images per training image are made once, run
through the frozen backbone once, and kept as features ``[N_las, P, D]`` with patch labels
``[N_las, P]``; each training batch then samples from the pool instead of re-running the
backbone (see ``build_las_pool``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .config import LAS_OPACITIES, TEXTURE_SOURCES, GASConfig
from .progress import progress as show_progress

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .backbone import FeatureExtractor

MAX_SCALE_EXP = 5  # Perlin scales 2^0 .. 2^5 per axis
MASK_RETRIES = 64
DTD_CACHE = Path.home() / ".cache" / "gas_lib" / "dtd"


class TextureUnavailable(ValueError):
    """A texture source cannot deliver images (offline DTD, empty folder)."""


# --- Perlin masks -----------------------------------------------------------------------------
def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """2-D gradient (Perlin) noise [H, W] with ``res`` lattice cells per axis, about in [-1, 1].

    Any image size works: pixel ``i`` sits at lattice coordinate ``i * res / size``.
    """
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2 * np.pi, (ry + 1, rx + 1))
    gx, gy = np.cos(angles), np.sin(angles)
    y = np.arange(h) * (ry / h)
    x = np.arange(w) * (rx / w)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # rows first, then columns: two small gathers instead of one [H, W] fancy index
        return (gx[yi + dy][:, xi + dx] * (xf - dx)) + (gy[yi + dy][:, xi + dx] * (yf - dy))

    u, v = _fade(xf), _fade(yf)
    top_left, bottom_left = corner(0, 0), corner(1, 0)
    top = top_left + u * (corner(0, 1) - top_left)
    bottom = bottom_left + u * (corner(1, 1) - bottom_left)
    return np.sqrt(2.0) * (top + v * (bottom - top))


def rotate_map(values: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a [H, W] map by ``angle`` degrees about its centre (same size, reflected edges)."""
    return ndimage.rotate(values, angle, reshape=False, order=1, mode="reflect")


def _random_noise(size: tuple[int, int], rng: np.random.Generator, rotate: bool) -> np.ndarray:
    res = tuple(int(2 ** rng.integers(0, MAX_SCALE_EXP + 1)) for _ in range(2))
    noise = perlin_noise(size, res, rng)  # type: ignore[arg-type]
    angle = rng.uniform(-90.0, 90.0)
    return rotate_map(noise, angle) if rotate else noise


def perlin_mask(size: int | tuple[int, int], rng: np.random.Generator, threshold: float = 0.5,
                rotate: bool = True, max_tries: int = MASK_RETRIES,
                foreground: np.ndarray | None = None) -> np.ndarray:
    """A non-empty bool mask [H, W]: two thresholded Perlin maps, union / intersection / one.

    Each map has its own random scale per axis (2^0..2^5) and rotation. With ``foreground``
    (bool [H, W]) the mask is cut to it, as the reference does with its foreground masks. An
    empty mask is redrawn up to ``max_tries`` times; after that the top 2 % of the last map
    (within the foreground) is used, so the function always returns some anomaly.
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    allowed = np.ones(shape, dtype=bool) if foreground is None else np.asarray(foreground, bool)
    noise = np.zeros(shape)
    for _ in range(max_tries):
        first = _random_noise(shape, rng, rotate)  # type: ignore[arg-type]
        second = _random_noise(shape, rng, rotate)  # type: ignore[arg-type]
        a, b = first > threshold, second > threshold
        choice = rng.integers(0, 3)
        mask = (a | b if choice == 0 else (a & b if choice == 1 else a)) & allowed
        noise = first
        if mask.any():
            return mask
    if not allowed.any():
        allowed = np.ones(shape, dtype=bool)
    return (noise >= np.quantile(noise[allowed], 0.98)) & allowed


def foreground_mask(image: torch.Tensor | np.ndarray, border: int = 4, min_fraction: float = 0.02,
                    max_fraction: float = 0.98) -> np.ndarray:
    """Where the object is in an image [3, H, W] (values in [0, 1]) shot on a plain background.

    The reference's MPDD script pastes LAS textures on the object only, using foreground masks
    it ships separately; this estimates one from the image itself: the colour distance of each
    pixel to the median colour of the image border, thresholded with Otsu's method, then
    cleaned with a small opening and closing. When that does not split the image into a clear
    object and background (less than ``min_fraction`` or more than ``max_fraction`` of it, e.g.
    a texture filling the frame) the whole image counts as foreground.
    """
    array = np.asarray(image, dtype=np.float64)
    h, w = array.shape[-2:]
    frame = np.concatenate([array[:, :border].reshape(3, -1), array[:, -border:].reshape(3, -1),
                            array[:, :, :border].reshape(3, -1),
                            array[:, :, -border:].reshape(3, -1)], axis=1)
    background = np.median(frame, axis=1)
    distance = np.sqrt(((array - background[:, None, None]) ** 2).sum(axis=0))
    mask = distance > _otsu_threshold(distance)
    mask = ndimage.binary_closing(ndimage.binary_opening(mask, iterations=2), iterations=2)
    if not min_fraction <= mask.mean() <= max_fraction:
        return np.ones((h, w), dtype=bool)
    return mask


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that maximises the between-class variance of ``values`` (Otsu, 1979)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def patch_labels(mask: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Max-pool pixel masks [..., H, W] to the feature grid: 1 where a patch touches the mask.

    Returns float [..., gh * gw] (flattened row-major like the patch features).
    """
    mask_t = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    lead = mask_t.shape[:-2]
    flat = mask_t.reshape(-1, 1, *mask_t.shape[-2:]).float()
    pooled = F.adaptive_max_pool2d(flat, grid)
    return pooled.reshape(*lead, grid[0] * grid[1])


def blend(image: torch.Tensor, texture: torch.Tensor, mask: torch.Tensor, beta: float
          ) -> torch.Tensor:
    """``img*(1-m) + (1-beta)*texture*m + beta*img*m``: outside the mask the image is untouched."""
    m = mask.to(image.dtype)
    if m.dim() == image.dim() - 1:
        m = m.unsqueeze(-3)
    return image * (1 - m) + (1 - beta) * texture * m + beta * image * m


SHADE_GAIN = (0.1, 0.4)  # las_shade_fraction: brightness change of the region, either way
SHADE_CAST = 0.08  # and a colour cast of up to this much per channel


def shade_region(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
                 ) -> torch.Tensor:
    """The image [3, H, W] with its brightness scaled by ``1 +- SHADE_GAIN`` and a colour cast
    added inside ``mask`` [H, W]: a smooth, textureless anomaly (uneven paint, a stain, a
    discoloured area), which texture blends never make. Outside the mask it is untouched."""
    change = float(rng.uniform(*SHADE_GAIN))
    gain = 1.0 + change if rng.random() < 0.5 else 1.0 - change
    cast = torch.from_numpy(rng.uniform(-SHADE_CAST, SHADE_CAST, (image.shape[0], 1, 1)))
    shaded = (image * gain + cast.to(image.dtype)).clamp(0.0, 1.0)
    return torch.where(mask.to(torch.bool), shaded, image)


WIDE_TEXTURE_WEIGHT = (0.05, 0.8)  # las_opacity="wide": the texture's weight, log-uniform


def sample_beta(rng: np.random.Generator, opacity: str = "reference") -> float:
    """Opacity of the image under the texture. ``reference``: N(0.5, 0.1) clipped to
    [0.2, 0.8], so the texture always weighs 20-80 %. ``wide``: the texture's weight
    ``1 - beta`` log-uniform in [0.05, 0.8], half of the draws below 0.2: faint defects
    (a light scratch, a slight discolouration) are anomalies too, and the reference never
    makes one."""
    if opacity == "wide":
        low, high = WIDE_TEXTURE_WEIGHT
        return float(1.0 - np.exp(rng.uniform(np.log(low), np.log(high))))
    if opacity != "reference":
        raise ValueError(f"las_opacity={opacity!r}: expected one of {LAS_OPACITIES}")
    return float(np.clip(rng.normal(0.5, 0.1), 0.2, 0.8))


# --- textures ---------------------------------------------------------------------------------
def procedural_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [3, S, S] in [0, 1]: a texture rich in fine detail, like the DTD photographs the
    reference pastes, made offline: multi-octave Perlin noise starting at a fine lattice (cells
    of 1/4..1/16 of the image), half the time modulated by stripes or a grid of random period and
    angle, coloured between two random colours with a third tint.

    Fine detail matters: smooth colour fields would teach the discriminator that any smooth,
    uniform region (a plain background) looks anomalous.
    """
    def fractal() -> np.ndarray:
        base = int(2 ** rng.integers(2, 5))
        persistence = rng.uniform(0.5, 0.8)
        total, weight = np.zeros((size, size)), 0.0
        for octave in range(int(rng.integers(3, 6))):
            res = min(base * 2 ** octave, max(1, size // 2))
            amplitude = persistence ** octave
            total += amplitude * perlin_noise((size, size), (res, res), rng)
            weight += amplitude
        return _stretch(total / weight)

    field = fractal()
    if rng.random() < 0.5:  # structured: stripes (or a grid) of random period and angle
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, max(5.0, size / 8))
        phase = (x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period
        pattern = 0.5 + 0.5 * np.sin(phase)
        if rng.random() < 0.5:
            pattern *= 0.5 + 0.5 * np.sin((-x * np.sin(angle) + y * np.cos(angle))
                                          * 2 * np.pi / period)
        field = _stretch(0.5 * field + 0.5 * pattern)
    colours = rng.uniform(0.0, 1.0, (3, 3))
    out = colours[0][:, None, None] * (1 - field) + colours[1][:, None, None] * field
    tint = 0.5 * fractal()
    out = out * (1 - tint) + colours[2][:, None, None] * tint
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _stretch(field: np.ndarray) -> np.ndarray:
    lo, hi = field.min(), field.max()
    return (field - lo) / max(hi - lo, 1e-8)


def jitter(texture: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Colour and geometry augmentation of a [3, H, W] texture (flips, 90-degree turns,
    brightness, contrast, per-channel gain, channel order). A non-square texture keeps its
    shape: its quarter turns become half turns."""
    out = texture
    if rng.random() < 0.5:
        out = out.flip(-1)
    if rng.random() < 0.5:
        out = out.flip(-2)
    turns = int(rng.integers(0, 4))
    if turns % 2 and out.shape[-1] != out.shape[-2]:
        turns = 2
    out = torch.rot90(out, turns, dims=(-2, -1))
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.6, 1.6) + mean * rng.uniform(0.6, 1.4)
    out = out * torch.as_tensor(rng.uniform(0.7, 1.3, 3), dtype=out.dtype)[:, None, None]
    out = out[torch.as_tensor(rng.permutation(3))]
    return out.clamp(0.0, 1.0).contiguous()


TextureSize = int | tuple[int, int]


def _texture_shape(size: TextureSize) -> tuple[int, int]:
    """(H, W) of a texture size: an int S is S x S."""
    if isinstance(size, (tuple, list, torch.Size)):
        height, width = (int(v) for v in size)
        return height, width
    return int(size), int(size)


def _crop_centre(texture: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The centre (H, W) of a larger [3, S, S] texture (the texture itself when it fits)."""
    height, width = shape
    if tuple(texture.shape[-2:]) == (height, width):
        return texture
    top, left = (texture.shape[-2] - height) // 2, (texture.shape[-1] - width) // 2
    return texture[..., top:top + height, left:left + width].contiguous()


class TextureSource:
    """Gives [3, H, W] textures in [0, 1] (``size`` an int S: S x S, or an (H, W) pair);
    ``name`` says where they come from."""

    name = "base"

    def sample(self, rng: np.random.Generator, size: TextureSize, exclude: int | None = None
               ) -> torch.Tensor:
        raise NotImplementedError


class ProceduralTextures(TextureSource):
    """Made square at the longer side and centre-cropped, so the pattern is not stretched."""

    name = "procedural"

    def sample(self, rng: np.random.Generator, size: TextureSize, exclude: int | None = None
               ) -> torch.Tensor:
        shape = _texture_shape(size)
        return _crop_centre(torch.from_numpy(procedural_texture(rng, max(shape))), shape)


class ImageTextures(TextureSource):
    """Textures drawn from given images [N, 3, H, W] (other training images) with jitter."""

    name = "train_images"

    def __init__(self, images: torch.Tensor) -> None:
        if images.shape[0] == 0:
            raise TextureUnavailable("texture_source='train_images' got no images")
        self.images = images

    def sample(self, rng: np.random.Generator, size: TextureSize, exclude: int | None = None
               ) -> torch.Tensor:
        n = self.images.shape[0]
        index = int(rng.integers(0, n))
        if exclude is not None and n > 1 and index == exclude:
            index = (index + 1 + int(rng.integers(0, n - 1))) % n
        image = self.images[index].float().cpu()
        shape = _texture_shape(size)
        if tuple(image.shape[-2:]) != shape:
            image = F.interpolate(image[None], size=shape, mode="bilinear",
                                  align_corners=False)[0]
        return jitter(image, rng)


class FileTextures(TextureSource):
    """Textures read from image files (a folder, or the DTD set), random crop + jitter."""

    def __init__(self, files: Sequence[Path], name: str) -> None:
        self.files = list(files)
        self.name = name

    def sample(self, rng: np.random.Generator, size: TextureSize, exclude: int | None = None
               ) -> torch.Tensor:
        from PIL import Image

        shape = _texture_shape(size)
        size = max(shape)  # a square crop at the longer side, centre-cropped to the shape
        path = self.files[int(rng.integers(0, len(self.files)))]
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        side = min(rgb.size)
        crop = int(side * rng.uniform(0.5, 1.0))
        left = int(rng.integers(0, rgb.size[0] - crop + 1))
        top = int(rng.integers(0, rgb.size[1] - crop + 1))
        rgb = rgb.crop((left, top, left + crop, top + crop)).resize((size, size),
                                                                    Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return _crop_centre(jitter(torch.from_numpy(np.ascontiguousarray(array)), rng), shape)


def _folder_files(root: Path) -> list[Path]:
    from .data import IMAGE_SUFFIXES

    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _dtd_files(root: Path) -> list[Path]:
    """The DTD images, downloaded once by torchvision into ``root``."""
    try:
        from torchvision.datasets import DTD

        DTD(str(root), split="train", download=True)
    except Exception as err:  # network, SSL, disk and archive errors all mean "no DTD here"
        raise TextureUnavailable(
            f"could not download the DTD textures into {root} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); use texture_source='procedural' "
            "(offline) or texture_source='folder' with texture_root=<a folder of images>") from err
    files = _folder_files(root / "dtd" / "dtd" / "images")
    if not files:
        files = _folder_files(root)
    if not files:
        raise TextureUnavailable(f"no DTD images found under {root}; use "
                                 "texture_source='procedural' or texture_root=<a folder of images>")
    return files


def texture_source(config: GASConfig, train_images: torch.Tensor | None = None
                   ) -> TextureSource:
    """The texture source the config names (``procedural``, ``train_images``, ``dtd``,
    ``folder``); ``train_images`` needs the training images."""
    name = config.texture_source
    if name == "procedural":
        return ProceduralTextures()
    if name == "train_images":
        if train_images is None:
            raise TextureUnavailable("texture_source='train_images' needs the training images")
        return ImageTextures(train_images)
    if name == "dtd":
        root = Path(config.texture_root).expanduser() if config.texture_root else DTD_CACHE
        return FileTextures(_dtd_files(root), "dtd")
    if name == "folder":
        if not config.texture_root:
            raise TextureUnavailable("texture_source='folder' needs texture_root=<a folder of images>")
        root = Path(config.texture_root).expanduser()
        files = _folder_files(root) if root.is_dir() else []
        if not files:
            raise TextureUnavailable(f"texture folder {root} has no images: expected image files "
                                     "(or use texture_source='procedural')")
        return FileTextures(files, "folder")
    raise ValueError(f"texture_source={name!r}: expected one of {TEXTURE_SOURCES}")


# --- LAS images -------------------------------------------------------------------------------
def make_las_images(images: torch.Tensor, n_variants: int, textures: TextureSource,
                    rng: np.random.Generator, indices: Sequence[int] | None = None,
                    foreground: bool = False, opacity: str = "reference",
                    shade_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_variants`` LAS images per image [N, 3, H, W] -> ([N*V, 3, H, W], bool [N*V, H, W]).

    Variants of one image are consecutive. ``indices`` are the images' positions in the
    training set (so ``train_images`` textures skip the image itself). ``foreground``: masks
    only on each image's object (``foreground_mask``). ``opacity``: how strongly the texture
    covers the image (``sample_beta``). ``shade_fraction``: the share of LAS images (drawn at
    random) whose masked region changes brightness and colour (``shade_region``) instead of
    taking a texture; 0 (reference) draws nothing extra, so the images stay as they were.
    """
    shape = (int(images.shape[-2]), int(images.shape[-1]))
    out = torch.empty(images.shape[0] * n_variants, *images.shape[1:], dtype=images.dtype)
    masks = torch.empty(images.shape[0] * n_variants, *images.shape[-2:], dtype=torch.bool)
    row = 0
    for i in range(images.shape[0]):
        image = images[i].cpu()
        allowed = foreground_mask(image.numpy()) if foreground else None
        for _ in range(n_variants):
            mask = torch.from_numpy(perlin_mask(shape, rng, foreground=allowed))
            if shade_fraction > 0 and rng.random() < shade_fraction:
                out[row] = shade_region(image, mask, rng)
            else:
                texture = textures.sample(rng, shape,
                                          exclude=None if indices is None else indices[i])
                out[row] = blend(image, texture.to(image.dtype), mask, sample_beta(rng, opacity))
            masks[row] = mask
            row += 1
    return out, masks


# --- focal loss ---------------------------------------------------------------------------------
def focal_loss(scores: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               hard_fraction: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Mean focal loss ``-(1 - p_t)^gamma log p_t`` over the hardest ``hard_fraction`` patches.

    ``scores`` are the discriminator's probabilities of "anomalous", ``labels`` 0/1; ``p_t`` is
    the probability given to the true label. Hard patches are those with the largest per-patch
    focal loss, which (the loss being monotone in ``|score - label| = 1 - p_t``) are exactly the
    patches with the largest ``|score - label|``; ``ceil(hard_fraction * N)`` of them are kept.
    """
    scores = scores.float().flatten().clamp(eps, 1 - eps)
    labels = labels.float().flatten().to(scores.device)
    p_t = torch.where(labels > 0.5, scores, 1 - scores)
    per_patch = -((1 - p_t) ** gamma) * torch.log(p_t)
    k = max(1, math.ceil(hard_fraction * per_patch.numel()))
    if k < per_patch.numel():
        per_patch = per_patch.topk(k).values
    return per_patch.mean()


# --- the pool -----------------------------------------------------------------------------------
@dataclass
class LASPool:
    """Backbone features of pre-made LAS images and their patch labels, kept on the device."""

    features: torch.Tensor  # [N_las, P, D]
    labels: torch.Tensor  # [N_las, P] float 0/1
    source: torch.Tensor  # [N_las] index of the training image each LAS image was made from
    masks: torch.Tensor  # [N_las, H, W] bool pixel masks (CPU), for plots and checks
    seconds: float  # wall time to generate and embed the pool
    generation: int = 0  # which rebuild (las_regenerate_every) made it
    texture_source: str = "procedural"

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def anomalous_fraction(self) -> float:
        return float(self.labels.float().mean())

    def subset(self, image_indices: torch.Tensor) -> "LASPool":
        """The entries made from the given training images (e.g. the non-validation ones)."""
        keep = torch.isin(self.source, image_indices.to(self.source.device))
        rows = torch.nonzero(keep).flatten()
        dev_rows = rows.to(self.features.device)
        return LASPool(self.features[dev_rows], self.labels[dev_rows.to(self.labels.device)],
                       self.source[rows], self.masks[rows.cpu()], self.seconds, self.generation,
                       self.texture_source)


def pool_sampler(pool: LASPool, generator: torch.Generator
                 ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``sampler(batch_indices) -> (features [B, P, D], labels [B, P])``: B random pool entries
    (drawn with ``generator``, independent of the batch's images)."""
    def sample(batch_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(len(pool), (len(batch_indices),), generator=generator)
        rows = rows.to(pool.features.device)
        return pool.features[rows], pool.labels[rows.to(pool.labels.device)]
    return sample


def las_seed(seed: int, generation: int) -> np.random.SeedSequence:
    """The seed of one pool build; separate from every generator the GAS fit uses."""
    return np.random.SeedSequence([int(seed) % 2**32, int(generation), 0x1A5])


def pool_images(n_images: int, budget: int, seed: int) -> list[int]:
    """Which training images get LAS variants: all of them, or a seeded subset of ``budget``
    (``las_pool_images``), so the pool's cost stays flat however large the category is."""
    if budget <= 0 or budget >= n_images:
        return list(range(n_images))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) % 2**32, 0x9001]))
    return sorted(int(i) for i in rng.choice(n_images, size=budget, replace=False))


def build_las_pool(detector_or_extractor: Any, images: torch.Tensor, config: GASConfig | None = None,
                   *, generation: int = 0, device: torch.device | str | None = None,
                   progress: bool = True, chunk: int = 32) -> LASPool:
    """Make ``config.las_variants`` LAS images per training image and embed them once.

    ``detector_or_extractor``: a ``GASDetector`` (its extractor, device and config are used) or
    a ``FeatureExtractor`` (then pass ``config`` and ``device``). ``images`` [N, 3, H, W] in
    [0, 1]. Built in chunks so the LAS images never all sit in memory; the same seed and
    ``generation`` give the same pool.
    """
    from .backbone import compute_features

    extractor: FeatureExtractor
    if hasattr(detector_or_extractor, "extractor") and hasattr(detector_or_extractor, "config"):
        extractor = detector_or_extractor.extractor
        config = config or detector_or_extractor.config
        device = device or detector_or_extractor.device
    else:
        extractor = detector_or_extractor
    if config is None:
        raise ValueError("build_las_pool needs a config when given a bare FeatureExtractor")
    device = torch.device(device or "cpu")
    started = time.perf_counter()
    rng = np.random.default_rng(las_seed(config.seed, generation))
    textures = texture_source(config, images)
    grid = extractor.grid_size(tuple(images.shape[-2:]))
    feats, labels, masks = [], [], []
    batch = max(config.batch_size, 8)
    chosen = pool_images(images.shape[0], config.las_pool_images, config.seed)
    starts = range(0, len(chosen), chunk)
    for start in show_progress(starts, "LAS pool", enabled=progress, unit="chunk"):
        idx = chosen[start:start + chunk]
        part = images[idx]
        las_images, las_masks = make_las_images(part, config.las_variants, textures, rng, idx,
                                                config.las_foreground, config.las_opacity,
                                                config.las_shade_fraction)
        feats.append(compute_features(extractor, las_images, device, batch_size=batch,
                                      amp=config.backbone_amp, progress=False))
        labels.append(patch_labels(las_masks, grid))
        masks.append(las_masks)
    source = torch.tensor(chosen, dtype=torch.long).repeat_interleave(config.las_variants)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LASPool(torch.cat(feats), torch.cat(labels).to(device), source, torch.cat(masks),
                   time.perf_counter() - started, generation, textures.name)


# --- a look at the LAS images ---------------------------------------------------------------------
@dataclass
class LASPreview:
    """A few training images with LAS variants made exactly as the pool makes its first ones."""

    images: torch.Tensor  # [N, 3, H, W]
    las_images: torch.Tensor  # [N * V, 3, H, W]
    masks: torch.Tensor  # [N * V, H, W] bool
    labels: torch.Tensor  # [N * V, P] patch labels on the feature grid
    grid: tuple[int, int]
    texture_source: str


def preview(config: GASConfig, images: torch.Tensor, n_images: int = 4,
            grid: tuple[int, int] | None = None) -> LASPreview:
    """LAS variants of the first ``n_images`` of ``images`` (all training images [N, 3, H, W],
    so that ``train_images`` textures draw from the same set as in training). Same seed and
    order as ``build_las_pool``, so these are the pool's first entries."""
    rng = np.random.default_rng(las_seed(config.seed, 0))
    textures = texture_source(config, images)
    part = images[:n_images]
    las_images, masks = make_las_images(part, config.las_variants, textures, rng,
                                        list(range(part.shape[0])), config.las_foreground,
                                        config.las_opacity, config.las_shade_fraction)
    height, width = images.shape[-2:]
    grid = grid or (max(1, height // 8), max(1, width // 8))
    return LASPreview(part, las_images, masks, patch_labels(masks, grid), grid, textures.name)


def plot_preview(result: LASPreview, title: str = "") -> Figure:
    """One row per LAS image: the normal image, the LAS image with the mask outlined, the
    mask, and the patch labels on the feature grid."""
    from matplotlib.figure import Figure

    rows = result.las_images.shape[0]
    fig = Figure(figsize=(9.6, 2.5 * rows), layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    variants = rows // max(1, result.images.shape[0])
    for row in range(rows):
        source = result.images[row // variants].permute(1, 2, 0).numpy()
        las_image = result.las_images[row].permute(1, 2, 0).clamp(0, 1).numpy()
        mask = result.masks[row].numpy()
        labels = result.labels[row].reshape(result.grid).numpy()
        axes[row, 0].imshow(source)
        axes[row, 1].imshow(las_image)
        if mask.any() and not mask.all():
            axes[row, 1].contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        axes[row, 2].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[row, 3].imshow(labels, cmap="Reds", vmin=0, vmax=1)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 2].set_xlabel(f"{100 * mask.mean():.1f} % of the image", fontsize="small")
        axes[row, 3].set_xlabel(f"{100 * labels.mean():.1f} % of the patches", fontsize="small")
    for ax, name in zip(axes[0], ("normal image", "LAS image (mask outlined)", "Perlin mask",
                                  f"patch labels ({result.grid[0]}x{result.grid[1]})")):
        ax.set_title(name, fontsize="medium")
    fig.suptitle(title or f"LAS images, {result.texture_source} textures")
    return fig
