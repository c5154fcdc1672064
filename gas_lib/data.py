"""Read MPDD-style anomaly-detection folders into samples, image tensors and masks.

Layout (any category name works)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect_type>/*.png
    <root>/<category>/ground_truth/<defect_type>/<image stem>_mask.png

Every problem with the folders is raised as one ``DataError`` whose message names the path and
what was expected, and ``load_split`` checks the whole layout up front, so a broken dataset
fails before training starts rather than hours into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .progress import progress as show_progress

if TYPE_CHECKING:  # pandas is imported lazily: only split_counts needs it
    import pandas as pd

    from .config import GASConfig

# An image size: an int for a square (S, S), or a (height, width) pair.
Size = int | tuple[int, int]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)
SPLITS = ("train", "test")
GOOD = "good"
MASK_SUFFIX = "_mask"
PROGRESS_MIN = 16  # load_images shows a progress bar above this many images

# What PIL raises for a file it cannot decode (UnidentifiedImageError is an OSError).
_PIL_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError)
# Modes whose values do not fit 8 bits; they are scaled to [0, 1] by hand, not clipped.
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_LAYOUT = "<root>/<category>/train/good"


class DataError(ValueError):
    """Bad dataset input; message names the path and what was expected."""


@dataclass(frozen=True)
class Sample:
    """One image of a split, with its label and (for defects) its ground-truth mask."""

    image_path: Path
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" for good images
    mask_path: Path | None  # None for good images


# --- folders ----------------------------------------------------------------------------------
def _is_visible(path: Path) -> bool:
    """Hidden entries (.DS_Store, ._foo.png, .ipynb_checkpoints) are OS or editor litter."""
    return not path.name.startswith(".")


def _is_image_file(path: Path) -> bool:
    return _is_visible(path) and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; other files are ignored."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _is_visible(p) and p.is_dir()),
                  key=lambda p: p.name)


def _suffix_list() -> str:
    return " ".join(IMAGE_SUFFIXES)


def _data_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"data root {path} {what}: expected a folder in the {_LAYOUT} layout")
    return path


def list_categories(root: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that have ``train/good``."""
    path = _data_root(root)
    names = [p.name for p in _subfolders(path) if (p / "train" / GOOD).is_dir()]
    if not names:
        hint = (" (it looks like a category folder itself: pass its parent as the root)"
                if (path / "train" / GOOD).is_dir() else "")
        raise DataError(f"data root {path} has no category folders: expected the {_LAYOUT} "
                        f"layout{hint}")
    return names


def category_dir(root: str | Path, category: str) -> Path:
    """The category's folder, after checking it exists and has ``train/good``."""
    path = _data_root(root) / category
    if (path / "train" / GOOD).is_dir():
        return path
    if path.is_dir():
        raise DataError(f"category folder {path} has no train/good folder: expected the "
                        f"{_LAYOUT} layout")
    existing = list_categories(root)  # raises the layout error when there are none
    raise DataError(f"category {category!r} not found at {path}; existing categories: "
                    f"{', '.join(existing)}")


# --- splits -----------------------------------------------------------------------------------
def load_split(root: str | Path, category: str, split: str) -> list[Sample]:
    """Samples of ``train`` (train/good only) or ``test`` (every test/<type>), layout-checked.

    Test samples come good first, then by defect type, each sorted by file name. Images are not
    opened here (see ``verify_images``); everything about the folders and masks is checked.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {SPLITS}")
    cat = category_dir(root, category)
    return _train_samples(cat) if split == "train" else _test_samples(cat)


def _train_samples(cat: Path) -> list[Sample]:
    folder = cat / "train" / GOOD
    files = _image_files(folder)
    if not files:
        raise DataError(f"train folder {folder} has no images: expected image files with "
                        f"suffixes {_suffix_list()}")
    return [Sample(p, 0, GOOD, None) for p in files]


def _test_samples(cat: Path) -> list[Sample]:
    test_dir = cat / "test"
    if not test_dir.is_dir():
        raise DataError(f"test folder {test_dir} does not exist: expected "
                        f"{test_dir}/<good|defect_type>/ image folders")
    type_dirs = sorted(_subfolders(test_dir), key=lambda p: (p.name != GOOD, p.name))
    samples = [s for d in type_dirs for s in _type_samples(cat, d)]
    if not samples:
        raise DataError(f"test folder {test_dir} has no images: expected "
                        f"{test_dir}/<good|defect_type>/ folders of image files with suffixes "
                        f"{_suffix_list()}")
    return samples


def _type_samples(cat: Path, type_dir: Path) -> list[Sample]:
    """The images of one test/<type> folder, defects paired with their masks."""
    images = _image_files(type_dir)
    if type_dir.name == GOOD:
        return [Sample(p, 0, GOOD, None) for p in images]
    gt_dir = cat / "ground_truth" / type_dir.name
    masks = _masks_by_stem(gt_dir)
    samples = []
    for image in images:
        mask = masks.get(image.stem + MASK_SUFFIX)
        if mask is None:
            raise DataError(f"defect image {image} has no mask: expected "
                            f"{gt_dir / (image.stem + MASK_SUFFIX + '.png')} (or another suffix "
                            f"of {_suffix_list()})")
        samples.append(Sample(image, 1, type_dir.name, mask))
    return samples


def _masks_by_stem(gt_dir: Path) -> dict[str, Path]:
    """Mask files by stem; when a stem has several suffixes the earliest in IMAGE_SUFFIXES wins."""
    files = sorted(_image_files(gt_dir), key=lambda p: IMAGE_SUFFIXES.index(p.suffix.lower()))
    masks: dict[str, Path] = {}
    for path in files:
        masks.setdefault(path.stem, path)
    return masks


def split_counts(root: str | Path, category: str) -> pd.DataFrame:
    """Image counts per (split, defect_type): a quick look at a category before a run."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for split in SPLITS:
        counts: dict[str, int] = {}
        for sample in load_split(root, category, split):
            counts[sample.defect_type] = counts.get(sample.defect_type, 0) + 1
        rows += [dict(split=split, defect_type=t, count=n) for t, n in counts.items()]
    return pd.DataFrame(rows, columns=["split", "defect_type", "count"])


# --- pixels -----------------------------------------------------------------------------------
def _open(path: Path) -> Image.Image:
    """Open and fully decode, so corrupt or truncated files fail here with their name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist: expected a readable image")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except _PIL_ERRORS as exc:
        detail = str(exc).replace("\n", " ")
        raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {detail})") from exc


def image_shape(image_size: Size) -> tuple[int, int]:
    """(H, W) of an image size: an int S is the square (S, S), a pair is (height, width)."""
    if isinstance(image_size, (tuple, list)) or (isinstance(image_size, torch.Size)):
        if len(image_size) != 2:
            raise ValueError(f"image_size={tuple(image_size)}: expected an int or a (height, "
                             "width) pair")
        height, width = (int(v) for v in image_size)
    else:
        height = width = int(image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size={image_size}: expected positive integers")
    return height, width


def _check_size(image_size: Size) -> None:
    image_shape(image_size)


def _fit(image: Image.Image, size: Size, center_crop: bool, resample: Image.Resampling
         ) -> Image.Image:
    """Resize to (H, W) (``size`` an int S: S x S), or, with ``center_crop``, scale so the
    image covers (H, W) then centre-crop (for a square, torchvision's shorter-side rule)."""
    height, width = image_shape(size)
    if not center_crop:
        return image.resize((width, height), resample)
    if height != width:
        return _cover_crop(image, height, width, resample)
    size = height
    width, height = image.size
    scale = size / min(width, height)
    new_w = size if width <= height else int(width * scale)
    new_h = size if height <= width else int(height * scale)
    image = image.resize((new_w, new_h), resample)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _cover_crop(image: Image.Image, height: int, width: int, resample: Image.Resampling
                ) -> Image.Image:
    """Scale (keeping the aspect ratio) so the image covers height x width, then centre-crop."""
    old_w, old_h = image.size
    scale = max(width / old_w, height / old_h)
    new_w, new_h = max(width, round(old_w * scale)), max(height, round(old_h * scale))
    image = image.resize((new_w, new_h), resample)
    left = int(round((new_w - width) / 2.0))
    top = int(round((new_h - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


def _high_depth_gray(image: Image.Image) -> Image.Image:
    """16/32-bit or float grayscale as a float ('F') image in [0, 1], keeping its precision."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 1.0 if values.max(initial=0.0) <= 1.0 else float(values.max())
    else:
        scale = 65535.0 if values.max(initial=0.0) <= 65535 else float(values.max())
    return Image.fromarray(np.clip(values / max(scale, 1e-12), 0.0, 1.0).astype(np.float32))


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("P", "PA"):  # through RGBA so palette transparency converts cleanly
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(path: str | Path, image_size: Size, center_crop: bool = False) -> torch.Tensor:
    """float32 [3, H, W] in [0, 1] from any PIL mode, resized bilinearly (antialiased);
    ``image_size`` an int S gives S x S, a pair (H, W) that shape (e.g. ``config.input_shape``)."""
    _check_size(image_size)
    image = _open(Path(path))
    if image.mode in _HIGH_DEPTH_MODES:
        gray = np.asarray(_fit(_high_depth_gray(image), image_size, center_crop,
                               Image.Resampling.BILINEAR), dtype=np.float32)
        array = np.repeat(gray[None], 3, axis=0)
    else:
        rgb = _fit(_as_rgb(image), image_size, center_crop, Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).clamp_(0.0, 1.0)


def _binarise(image: Image.Image) -> np.ndarray:
    """True where the mask marks a defect: > 127 (8-bit), > 32767 (16-bit), > 0 (0/1 masks)."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    values = np.asarray(image)
    if values.ndim == 3:  # colour masks: any colour channel counts, alpha does not
        values = values[..., :3].max(axis=2)
    peak = values.max(initial=0)
    if values.dtype == bool or peak <= 1:
        return values > 0
    return values > (127 if peak <= 255 else 32767)


def load_mask(path: str | Path | None, image_size: Size, center_crop: bool = False
              ) -> torch.Tensor:
    """bool [H, W] with the image's geometry (``load_image``'s resize or crop, nearest
    neighbour); None -> all False."""
    height, width = image_shape(image_size)
    if path is None:
        return torch.zeros(height, width, dtype=torch.bool)
    binary = Image.fromarray(_binarise(_open(Path(path))).astype(np.uint8) * 255)
    fitted = _fit(binary, image_size, center_crop, Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(fitted) > 127)


def load_images(paths: Sequence[str | Path], image_size: Size, center_crop: bool = False,
                progress: bool = True) -> torch.Tensor:
    """[N, 3, H, W] float32 (``image_size`` as in ``load_image``), filled in place so large
    sets need no second copy."""
    out = torch.empty(len(paths), 3, *image_shape(image_size), dtype=torch.float32)
    show = progress and len(paths) > PROGRESS_MIN
    items = show_progress(paths, "loading images", enabled=show, unit="image")
    for i, path in enumerate(items):
        out[i] = load_image(path, image_size, center_crop)
    return out


def _header_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file's header; the pixels are not decoded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} does not exist: expected a readable image")
    try:
        with Image.open(path) as image:
            return image.size
    except _PIL_ERRORS as exc:
        detail = str(exc).replace("\n", " ")
        raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {detail})") from exc


def measure_aspect(images: Sequence[Sample | str | Path] | torch.Tensor) -> float:
    """The median width / height of the images: ``Sample`` objects or paths (read from the
    file headers only, no decode), or an image tensor [..., H, W] (its W / H)."""
    if isinstance(images, torch.Tensor):
        if images.dim() < 2 or images.shape[-2] < 1:
            raise ValueError("measure_aspect: expected images [..., H, W], got "
                             f"{tuple(images.shape)}")
        return float(images.shape[-1]) / float(images.shape[-2])
    paths = [s.image_path if isinstance(s, Sample) else Path(s) for s in images]
    if not paths:
        raise ValueError("measure_aspect: no images given")
    ratios = [width / height for width, height in map(_header_size, paths)]
    return float(np.median(ratios))


def config_for_data(config: GASConfig, train: Sequence[Sample | str | Path] | torch.Tensor
                    ) -> GASConfig:
    """The config a fit on ``train`` uses: with ``keep_aspect`` (and no ``center_crop``) its
    ``aspect`` is set to the training images' median width / height (``measure_aspect``,
    rounded to 3 decimals), so ``config.input_shape`` keeps their proportions; otherwise the
    config unchanged. Call it before any image is read, so training and scoring share one
    geometry; the fitted config records the aspect used."""
    if not config.keep_aspect or config.center_crop:
        return config
    aspect = round(measure_aspect(train), 3)
    return config if aspect == config.aspect else config.replace(aspect=aspect)


def verify_images(samples: Sequence[Sample]) -> None:
    """Cheaply check every image and mask decodes and each mask matches its image's size.

    Uses PIL's ``verify`` (headers and checksums, no full decode), so it is fast enough to
    run on a whole category before training.
    """
    for sample in samples:
        size = _verified_size(sample.image_path)
        if sample.mask_path is None:
            continue
        mask_size = _verified_size(sample.mask_path)
        if mask_size != size:
            raise DataError(f"mask {sample.mask_path} is {mask_size[0]}x{mask_size[1]}: expected "
                            f"the size of its image {sample.image_path} ({size[0]}x{size[1]})")


def _verified_size(path: Path) -> tuple[int, int]:
    if not Path(path).is_file():
        raise DataError(f"image file {path} does not exist: expected a readable image")
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
    except _PIL_ERRORS as exc:
        detail = str(exc).replace("\n", " ")
        raise DataError(f"{path} is not a readable image ({type(exc).__name__}: {detail})") from exc
    return size


# --- torch dataset ----------------------------------------------------------------------------
class SampleDataset(torch.utils.data.Dataset):
    """Samples as dicts the default collate batches: image, mask, label, defect_type, path."""

    def __init__(self, samples: Sequence[Sample], image_size: Size, center_crop: bool = False
                 ) -> None:
        height, width = image_shape(image_size)
        self.samples = list(samples)
        self.image_size: Size = height if height == width else (height, width)
        self.center_crop = bool(center_crop)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return dict(
            image=load_image(sample.image_path, self.image_size, self.center_crop),
            mask=load_mask(sample.mask_path, self.image_size, self.center_crop),
            label=int(sample.label),
            defect_type=sample.defect_type,
            path=str(sample.image_path),
        )
