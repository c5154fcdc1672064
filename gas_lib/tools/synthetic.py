"""A tiny MPDD-layout dataset drawn on the fly, so tests and demos run without downloading MPDD.

Normal images are a brushed-metal-like texture (brightness gradient, fine stripes, grain) with
small random shifts; train and test good images come from the same process. Defects are
solid-coloured shapes painted on a normal image, and each mask marks exactly the painted
pixels, so a detector's pixel scores can be checked against a known truth.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MARKER = ".synthetic"  # hidden, so loaders ignore it; lets a rerun replace its own output
TINT = np.array([1.0, 0.97, 0.93], dtype=np.float32)  # slightly warm grey metal
MIN_SIZE = 16


def make_synthetic_category(root: str | Path, category: str = "synthetic", *, n_train: int = 8,
                            n_test_good: int = 4, n_test_defect: int = 4, image_size: int = 64,
                            defect_types: Sequence[str] = ("scratch", "spot"), seed: int = 0
                            ) -> Path:
    """Write ``<root>/<category>`` in the MPDD layout and return that path.

    Test defects go to ``defect_types`` round-robin. A name containing "scratch" is drawn as a
    line, "spot" as an ellipse; other names alternate line/ellipse by position. The same seed
    gives the same bytes. A folder made by an earlier call is replaced; any other non-empty
    folder at that path raises ``FileExistsError`` rather than being overwritten.
    """
    _check_args(category, n_train, n_test_good, n_test_defect, image_size, defect_types)
    rng = np.random.default_rng(seed)
    cat = fresh_dir(Path(root).expanduser() / category)
    _write_normals(cat / "train" / "good", rng, n_train, image_size)
    _write_normals(cat / "test" / "good", rng, n_test_good, image_size)
    _write_defects(cat, rng, n_test_defect, image_size, list(defect_types))
    return cat


def _check_args(category: str, n_train: int, n_test_good: int, n_test_defect: int,
                image_size: int, defect_types: Sequence[str]) -> None:
    if not category or Path(category).name != category or category.startswith("."):
        raise ValueError(f"category={category!r}: expected a plain, visible folder name")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ValueError(f"n_train={n_train}, n_test_good={n_test_good}, "
                         f"n_test_defect={n_test_defect}: expected n_train >= 1, others >= 0")
    if image_size < MIN_SIZE:
        raise ValueError(f"image_size={image_size}: expected at least {MIN_SIZE}")
    if n_test_defect and not defect_types:
        raise ValueError("defect_types is empty: expected at least one name")
    for name in defect_types:
        if not name or name == "good" or Path(name).name != name or name.startswith("."):
            raise ValueError(f"defect type {name!r}: expected a plain folder name other than "
                             "'good'")


def fresh_dir(cat: Path) -> Path:
    """Replace our own earlier output (this module's or ``surrogates``'), never someone else's
    files."""
    if cat.exists():
        if (cat / MARKER).is_file():
            shutil.rmtree(cat)
        elif not cat.is_dir() or any(cat.iterdir()):
            raise FileExistsError(f"{cat} exists and was not written by gas_lib.tools (no "
                                  f"{MARKER} file in it): expected a new or empty folder")
    cat.mkdir(parents=True, exist_ok=True)
    (cat / MARKER).write_text("written by gas_lib.tools (synthetic or surrogates)\n")
    return cat


# --- drawing ----------------------------------------------------------------------------------
def normal_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [S, S, 3] in [0, 1]: gradient + fine stripe grid + grain, randomly shifted."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.pi / 4 + rng.uniform(-0.3, 0.3)
    along = (x * np.cos(angle) + y * np.sin(angle)) / (size * (abs(np.cos(angle))
                                                               + abs(np.sin(angle))))
    period = max(4.0, size / 16)
    shift_x, shift_y = rng.uniform(0, period, size=2)
    stripes = (0.04 * np.sin(2 * np.pi * (x + shift_x) / period)
               + 0.02 * np.sin(2 * np.pi * (y + shift_y) / (2 * period)))
    value = 0.42 + 0.16 * along + stripes + rng.normal(0.0, 0.012, (size, size))
    return np.clip(value[..., None] * TINT, 0.0, 1.0).astype(np.float32)


def scratch_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A thin straight line segment (about 1-2 % of the image) at a random place and angle."""
    half_width = max(1.0, size / 48)
    length = rng.uniform(0.35, 0.6) * size
    margin = length / 2 + half_width + 1
    cx, cy = rng.uniform(margin, size - 1 - margin, size=2)
    phi = rng.uniform(0, np.pi)
    direction = np.array([np.cos(phi), np.sin(phi)])
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - cx, y - cy
    t = np.clip(dx * direction[0] + dy * direction[1], -length / 2, length / 2)
    distance = np.hypot(dx - t * direction[0], dy - t * direction[1])
    return distance <= half_width


def spot_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled, rotated ellipse (about 1-4 % of the image) at a random place."""
    a, b = rng.uniform(0.06, 0.11, size=2) * size
    margin = max(a, b) + 1
    cx, cy = rng.uniform(margin, size - 1 - margin, size=2)
    psi = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(psi) + dy * np.sin(psi)
    v = -dx * np.sin(psi) + dy * np.cos(psi)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _defect_colour(rng: np.random.Generator, line: bool) -> np.ndarray:
    """Scratches are dark or bright; spots are rust-coloured, far from the grey metal."""
    if line:
        grey = 0.08 if rng.random() < 0.5 else 0.95
        return np.full(3, grey, dtype=np.float32)
    rust = np.array([0.45, 0.2, 0.08]) + rng.uniform(-0.04, 0.04, size=3)
    return rust.astype(np.float32)


def _is_line(name: str, position: int) -> bool:
    if "scratch" in name:
        return True
    if "spot" in name:
        return False
    return position % 2 == 0


def defect_image(rng: np.random.Generator, size: int, line: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A normal texture with one painted defect, and the bool mask of exactly those pixels."""
    image = normal_texture(rng, size)
    mask = scratch_mask(rng, size) if line else spot_mask(rng, size)
    colour = _defect_colour(rng, line)
    grain = rng.normal(0.0, 0.01, (int(mask.sum()), 3))
    image[mask] = np.clip(colour + grain, 0.0, 1.0)
    return image, mask


# --- writing ----------------------------------------------------------------------------------
def _save_rgb(image: np.ndarray, path: Path) -> None:
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)


def _write_normals(folder: Path, rng: np.random.Generator, count: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _save_rgb(normal_texture(rng, size), folder / f"{i:03d}.png")


def _write_defects(cat: Path, rng: np.random.Generator, count: int, size: int,
                   defect_types: list[str]) -> None:
    written = {name: 0 for name in defect_types}
    for i in range(count):
        position = i % len(defect_types)
        name = defect_types[position]
        image, mask = defect_image(rng, size, _is_line(name, position))
        stem = f"{written[name]:03d}"
        written[name] += 1
        image_dir = cat / "test" / name
        mask_dir = cat / "ground_truth" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        _save_rgb(image, image_dir / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{stem}_mask.png")
