"""Two synthetic categories shaped like the kinds of data the study is checked on but cannot see.

Issue 9's hidden sets are grayscale tiles of varying, non-square size with five defect types
(one a large smooth "uneven" region), and a tall textured surface with thin cracks. These
surrogates have the same shapes, so a setting chosen on MPDD can be tried on data of another
character end to end (``python -m gas_lib.tools.surrogates ROOT``, then ``python -m gas_lib
train --data-root ROOT --category tiles``):

- ``tiles``: grayscale, height 180-300 and width 300-420 px (every image its own size), a shaded
  surface with grain; defects ``blowhole`` (small dark holes), ``crack`` (a thin dark curve),
  ``break`` (a dark chip cut from an edge), ``fray`` (a noisy band along the top or bottom
  edge) and ``uneven`` (a large soft region 13-22 % darker or brighter);
- ``surface``: grayscale 500 x 1254 (width x height), vertical bands and grain; ``crack``: a
  short thin line 25-50 % darker or brighter; ``faint_crack``: the same, narrower (1-2 px) and
  7-15 % darker or brighter (the kNN baseline's image AUROC there: 0.87).

They are proxies with known masks, not the hidden data: a detector can fail here for reasons
the real sets do not share, and the other way round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .synthetic import fresh_dir

SEED = 20261207
TILE_DEFECTS = ("blowhole", "crack", "break", "fray", "uneven")


# --- surfaces ---------------------------------------------------------------------------------
def tile_surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float [H, W]: a brightness gradient, soft blotches and pixel grain."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    slope = rng.uniform(-0.15, 0.15, 2)
    image = 0.45 + rng.uniform(-0.05, 0.05) + slope[0] * y + slope[1] * x
    blotches = gaussian_filter(rng.normal(0.0, 1.0, (height, width)), 12)
    return image + 0.06 * blotches + rng.normal(0.0, 0.025, (height, width))


def band_surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float [H, W]: vertical bands (a random walk across columns plus stripes) and grain."""
    walk = np.cumsum(rng.normal(0.0, 1.0, width))
    walk = gaussian_filter(walk - walk.mean(), 6)
    walk = 0.05 * walk / (np.abs(walk).max() + 1e-6)
    stripes = 0.04 * np.sin(2 * np.pi * np.arange(width) / rng.uniform(28, 36) + rng.uniform(0, 6.3))
    y = np.arange(height)[:, None] / height
    image = 0.5 + rng.uniform(-0.04, 0.04) + rng.uniform(-0.08, 0.08) * y + walk + stripes
    grain = gaussian_filter(rng.normal(0.0, 1.0, (height, width)), 3)
    return image + 0.045 * grain + rng.normal(0.0, 0.02, (height, width))


# --- defect masks -----------------------------------------------------------------------------
def ellipse(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float],
            angle: float = 0.0) -> np.ndarray:
    """bool [H, W]: a filled ellipse with semi-axes ``axes`` (along ``angle``, across it)."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    dy, dx = y - centre[0], x - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def curve(rng: np.random.Generator, shape: tuple[int, int], length: float, width: float,
          angle: float | None = None) -> np.ndarray:
    """bool [H, W]: a wandering line of ``length`` unit steps and ``width`` px from a random
    start in the central 70 % (heading ``angle``, or a random one)."""
    mask = np.zeros(shape, bool)
    y, x = rng.uniform(0.15, 0.85) * shape[0], rng.uniform(0.15, 0.85) * shape[1]
    heading = rng.uniform(0, np.pi) if angle is None else angle
    radius = width / 2
    for _ in range(int(length)):
        heading += rng.normal(0.0, 0.12)
        y, x = y + np.sin(heading), x + np.cos(heading)
        top, left = max(0, int(y - radius - 1)), max(0, int(x - radius - 1))
        if int(y + radius + 2) <= top or int(x + radius + 2) <= left:
            continue  # this step is off the image (a small one): nothing to draw
        yy, xx = np.mgrid[top:int(y + radius + 2), left:int(x + radius + 2)]
        window = mask[top:top + yy.shape[0], left:left + yy.shape[1]]
        window |= ((yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2 + 0.25)[:window.shape[0],
                                                                         :window.shape[1]]
    return mask


def tile_defect(rng: np.random.Generator, image: np.ndarray, kind: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with one defect of ``kind`` (``TILE_DEFECTS``) and its bool mask."""
    h, w = image.shape
    if kind == "blowhole":
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):
            r = rng.uniform(3, 7)
            mask |= ellipse((h, w), (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w),
                            (r, r * rng.uniform(0.7, 1.0)))
        return np.where(mask, image * rng.uniform(0.35, 0.6), image), mask
    if kind == "crack":
        mask = curve(rng, (h, w), rng.uniform(40, 120), rng.uniform(1, 2.5))
        return np.where(mask, image * rng.uniform(0.45, 0.7), image), mask
    if kind == "break":
        side = int(rng.integers(4))
        r = rng.uniform(0.12, 0.25) * min(h, w)
        centre = [(0, rng.uniform(0.2, 0.8) * w), (h - 1, rng.uniform(0.2, 0.8) * w),
                  (rng.uniform(0.2, 0.8) * h, 0), (rng.uniform(0.2, 0.8) * h, w - 1)][side]
        mask = ellipse((h, w), centre, (r * rng.uniform(1, 1.8), r), 0.0 if side < 2 else np.pi / 2)
        chip = rng.uniform(0.08, 0.2) + rng.normal(0.0, 0.01, (h, w))
        return np.where(mask, chip, image), mask
    if kind == "fray":
        depth = rng.uniform(8, 20)
        span = rng.uniform(0.3, 0.6) * w
        start = rng.uniform(0, w - span)
        edge = depth * (0.6 + 0.4 * gaussian_filter(rng.uniform(0, 1, w), 2) * 2)
        columns = (np.arange(w) >= start) & (np.arange(w) < start + span)
        mask = (np.arange(h)[:, None] < edge[None, :]) & columns[None, :]
        mask = mask[::-1] if rng.random() < 0.5 else mask
        return np.where(mask, image + rng.normal(0.0, 0.12, (h, w)), image), mask
    if kind == "uneven":
        axes = rng.uniform(0.15, 0.3) * w, rng.uniform(0.2, 0.35) * h
        centre = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        soft = gaussian_filter(ellipse((h, w), centre, axes, rng.uniform(0, np.pi)).astype(float), 6)
        gain = rng.choice([rng.uniform(0.78, 0.87), rng.uniform(1.13, 1.22)])
        return image * (1 + (gain - 1) * soft), soft > 0.5
    raise ValueError(f"defect kind {kind!r}: expected one of {TILE_DEFECTS}")


def surface_crack(rng: np.random.Generator, image: np.ndarray, faint: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with a short thin crack, mostly across the bands, and its bool mask; ``faint``:
    narrower and 7-15 % darker or brighter instead of 25-50 %."""
    width = rng.uniform(1, 2) if faint else rng.uniform(1, 3)
    mask = curve(rng, image.shape, rng.uniform(20, 90), width, angle=rng.uniform(-0.6, 0.6))
    low, high = ((0.85, 0.93), (1.07, 1.15)) if faint else ((0.5, 0.75), (1.25, 1.45))
    gain = rng.choice([rng.uniform(*low), rng.uniform(*high)])
    return np.where(mask, image * gain, image), mask


# --- writing ----------------------------------------------------------------------------------
def _save_gray(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), "L").save(path)


def _write_category(cat: Path, surface: Callable[[], np.ndarray],
                    defects: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]],
                    n_train: int, n_good: int, n_per_defect: int) -> Path:
    for i in range(n_train):
        _save_gray(surface(), cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _save_gray(surface(), cat / "test" / "good" / f"{i:03d}.png")
    for kind, draw in defects.items():
        for i in range(n_per_defect):
            image, mask = draw(surface())
            _save_gray(image, cat / "test" / kind / f"{i:03d}.png")
            _save_gray(mask.astype(float), cat / "ground_truth" / kind / f"{i:03d}_mask.png")
    return cat


def make_surrogates(root: str | Path, *, n_train: tuple[int, int] = (300, 250),
                    n_good: int = 60, n_per_defect: tuple[int, int] = (16, 30), seed: int = SEED,
                    surface_size: tuple[int, int] = (1254, 500)) -> list[Path]:
    """Write ``<root>/tiles`` and ``<root>/surface`` (MPDD layout, in that order from one random
    generator: the same arguments, the same bytes) and return their paths. ``n_train`` and
    ``n_per_defect`` are (tiles, surface); ``surface_size`` is (height, width)."""
    rng = np.random.default_rng(seed)
    root = Path(root).expanduser()

    def tile() -> np.ndarray:
        return tile_surface(rng, int(rng.integers(180, 301)), int(rng.integers(300, 421)))

    tile_defects = {kind: (lambda image, kind=kind: tile_defect(rng, image, kind))
                    for kind in TILE_DEFECTS}
    tiles = _write_category(fresh_dir(root / "tiles"), tile, tile_defects, n_train[0], n_good,
                            n_per_defect[0])
    surface = _write_category(fresh_dir(root / "surface"), lambda: band_surface(rng, *surface_size),
                              {"crack": lambda image: surface_crack(rng, image),
                               "faint_crack": lambda image: surface_crack(rng, image, faint=True)},
                              n_train[1], n_good, n_per_defect[1])
    return [tiles, surface]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the tiles and surface surrogates")
    parser.add_argument("root", help="folder to write <root>/tiles and <root>/surface into")
    args = parser.parse_args(argv)
    for path in make_surrogates(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
