"""Non-square images keep their aspect ratio: input shape, loading, masks, maps, a real fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from gas_lib.backbone import FeatureExtractor
from gas_lib.config import GASConfig, input_shape
from gas_lib.data import (config_for_data, load_image, load_images, load_mask, load_split,
                          measure_aspect)
from gas_lib.detector import maps_to_original
from gas_lib.evaluate import evaluate
from gas_lib.study.tuning import DEFECT_KINDS, make_defects, source_shape, stroke_mask
from gas_lib.train import GASDetector

from conftest import tiny_config

WIDTH, HEIGHT = 240, 96  # a 2.5 : 1 surface
RECT = (150, 30, 190, 60)  # left, top, right, bottom of the planted bright rectangle


def _surface(rng: np.random.Generator, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A dim grey texture (uint8 [H, W]) with fine vertical stripes and grain."""
    x = np.arange(width)[None, :]
    base = 70 + 12 * np.sin(2 * np.pi * x / 6.0) + rng.normal(0, 3, (height, width))
    return np.clip(base, 0, 255).astype(np.uint8)


def _write_category(root, n_train: int = 6, n_good: int = 2, n_defect: int = 2):
    rng = np.random.default_rng(0)
    cat = root / "surface"
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (cat / folder).mkdir(parents=True)
    for i in range(n_train):
        Image.fromarray(_surface(rng)).save(cat / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(_surface(rng)).save(cat / "test/good" / f"{i:03d}.png")
    for i in range(n_defect):
        pixels = _surface(rng)
        mask = np.zeros_like(pixels)
        left, top, right, bottom = RECT
        pixels[top:bottom, left + 10 * i:right + 10 * i] = 250
        mask[top:bottom, left + 10 * i:right + 10 * i] = 255
        Image.fromarray(pixels).save(cat / "test/crack" / f"{i:03d}.png")
        Image.fromarray(mask).save(cat / "ground_truth/crack" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def surface_root(tmp_path_factory):
    return _write_category(tmp_path_factory.mktemp("wide"))


# --- the input shape --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [16, 64, 256, 288])
def test_aspect_one_is_the_old_square(size):
    assert input_shape(size, 1.0) == (size, size)
    assert GASConfig(image_size=size).input_shape == (size, size)
    assert GASConfig(image_size=size, keep_aspect=True).input_shape == (size, size)


@pytest.mark.parametrize("aspect", [2.5, 0.4, 1.3, 4.0 / 3.0])
def test_input_shape_is_stride_aligned_with_the_aspect_and_area(aspect):
    height, width = GASConfig(image_size=256, aspect=aspect).input_shape
    assert height % 16 == 0 and width % 16 == 0
    assert abs(width - height * aspect) <= 16 * max(1.0, aspect)  # within one stride step
    assert abs(height * width / 256 ** 2 - 1) < 0.15
    assert (width > height) == (aspect > 1)


def test_input_shape_is_at_least_one_stride_and_center_crop_stays_square():
    assert input_shape(32, 100.0) == (16, 320)
    assert min(input_shape(16, 0.01)) == 16
    assert GASConfig(image_size=128, aspect=2.5, center_crop=True).input_shape == (128, 128)


@pytest.mark.parametrize("aspect", [0, -1.5, float("nan"), float("inf")])
def test_a_non_positive_aspect_is_refused(aspect):
    with pytest.raises(ValueError, match="aspect"):
        GASConfig(aspect=aspect)


def test_old_config_dicts_load_and_the_aspect_round_trips(tmp_path):
    old = GASConfig(image_size=128).to_dict()
    del old["aspect"], old["keep_aspect"]
    loaded = GASConfig.from_dict(old)
    assert loaded.aspect == 1.0 and loaded.keep_aspect is False
    assert loaded.input_shape == (128, 128)
    wide = GASConfig(image_size=128, aspect=2.5, keep_aspect=True)
    again = GASConfig.from_json(wide.to_json(tmp_path / "config.json"))
    assert again == wide and again.input_shape == wide.input_shape


# --- measuring the data -----------------------------------------------------------------------
def test_measure_aspect_is_the_median_of_the_headers(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(100, 50), (300, 100), (90, 90), (200, 100), (50, 100)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("L", (w, h)).save(paths[-1])
    assert measure_aspect(paths) == pytest.approx(2.0)  # ratios 2, 3, 1, 2, 0.5
    assert measure_aspect(paths[:2]) == pytest.approx(2.5)  # even count: mean of the middle two
    assert measure_aspect(torch.zeros(2, 3, 80, 200)) == pytest.approx(2.5)


def test_config_for_data_sets_the_aspect_only_with_keep_aspect(surface_root):
    train = load_split(surface_root, "surface", "train")
    plain = GASConfig(image_size=128)
    assert config_for_data(plain, train) is plain
    cropped = GASConfig(image_size=128, keep_aspect=True, center_crop=True)
    assert config_for_data(cropped, train) is cropped
    kept = config_for_data(GASConfig(image_size=128, keep_aspect=True), train)
    assert kept.aspect == round(WIDTH / HEIGHT, 3) == 2.5
    assert kept.input_shape == (80, 208)


# --- loading ------------------------------------------------------------------------------------
def test_a_wide_image_and_its_mask_keep_the_aspect_and_stay_aligned(surface_root):
    test = [s for s in load_split(surface_root, "surface", "test") if s.label == 1]
    config = config_for_data(GASConfig(image_size=128, keep_aspect=True),
                             load_split(surface_root, "surface", "train"))
    height, width = config.input_shape
    image = load_image(test[0].image_path, config.input_shape)
    mask = load_mask(test[0].mask_path, config.input_shape)
    assert image.shape == (3, height, width) and mask.shape == (height, width)
    assert abs(width / height - WIDTH / HEIGHT) <= 16 / height  # within one stride step
    bright = image[0] > 0.6
    overlap = (bright & mask).sum() / (bright | mask).sum()
    assert overlap > 0.85, f"mask and bright rectangle overlap only {overlap:.2f}"
    rows, cols = torch.nonzero(mask, as_tuple=True)
    left, top, right, bottom = RECT
    # the rectangle sits where it sits in the file, in proportion
    assert abs(cols.float().mean() - (left + right) / 2 * width / WIDTH) < 1.5
    assert abs(rows.float().mean() - (top + bottom) / 2 * height / HEIGHT) < 1.5
    batch = load_images([s.image_path for s in test], config.input_shape, progress=False)
    assert batch.shape == (len(test), 3, height, width)
    assert load_mask(None, (height, width)).shape == (height, width)
    assert load_image(test[0].image_path, 64).shape == (3, 64, 64)  # an int is still a square


def test_grid_size_takes_an_int_or_a_shape():
    assert FeatureExtractor.grid_size(64) == (8, 8)
    assert FeatureExtractor.grid_size((80, 208)) == (10, 26)


def test_maps_to_original_gives_the_file_size_and_keeps_positions():
    heat = torch.zeros(80, 208)
    heat[40:48, 104:112] = 1.0  # centre (43.5, 107.5) of the input geometry
    out = maps_to_original(heat, (WIDTH, HEIGHT))
    assert out.shape == (HEIGHT, WIDTH)
    rows, cols = torch.nonzero(out > 0.5, as_tuple=True)
    # pixel centres map onto pixel centres: x -> (x + 0.5) * scale - 0.5
    assert abs(cols.float().mean() - ((107.5 + 0.5) * WIDTH / 208 - 0.5)) < 0.5
    assert abs(rows.float().mean() - ((43.5 + 0.5) * HEIGHT / 80 - 0.5)) < 0.5
    flat = maps_to_original(np.full((2, 80, 208), 0.25, np.float32), (WIDTH, HEIGHT))
    assert isinstance(flat, np.ndarray) and flat.shape == (2, HEIGHT, WIDTH)
    assert np.allclose(flat, 0.25)


def test_synthetic_validation_defects_follow_the_shape():
    rng = np.random.default_rng(0)
    assert stroke_mask((48, 120), rng).shape == (48, 120)
    config = GASConfig(image_size=128, aspect=2.5)
    height, width = source_shape(config)
    assert height >= 80 and width >= 208 and abs(width / height - 208 / 80) < 0.05
    assert source_shape(GASConfig(image_size=128)) == (512, 512)
    good = torch.rand(2, 3, 40, 104)
    defects = make_defects(good, torch.rand(3, 3, 40, 104), copies=1)
    n = 2 * len(DEFECT_KINDS)
    assert defects.defective.shape == (n, 3, 40, 104) and defects.masks.shape == (n, 40, 104)
    assert defects.masks.flatten(1).any(1).all()


# --- a real fit ---------------------------------------------------------------------------------
def test_a_fit_on_wide_images_gives_wide_maps_and_evaluates(surface_root, tmp_path):
    train = load_split(surface_root, "surface", "train")
    test = load_split(surface_root, "surface", "test")
    config = config_for_data(tiny_config(image_size=128, keep_aspect=True, epochs=2,
                                         synthesis="gas+las", las_variants=1), train)
    height, width = config.input_shape
    assert (height, width) == (80, 208)
    detector = GASDetector(config).fit(train, progress=False)
    assert detector.las_pool is not None and detector.las_pool.masks.shape[-2:] == (80, 208)
    assert detector.las_pool.labels.shape[-1] == math.prod(detector.grid) == 10 * 26
    scores, maps = detector.score(test)
    assert maps.shape == (len(test), height, width) and width > height
    assert torch.isfinite(maps).all() and scores.shape == (len(test),)
    metrics, per_defect, predictions = evaluate(detector, test)
    assert predictions.maps.shape == predictions.masks.shape == (len(test), height, width)
    assert 0 <= metrics["pixel_auroc"] <= 1 and 0 <= metrics["image_auroc"] <= 1
    assert predictions.masks.any()
    loaded = GASDetector.load(detector.save(tmp_path / "model.pth"))
    assert loaded.config.aspect == 2.5 and loaded.config.input_shape == (height, width)
    assert torch.allclose(loaded.score(test)[1], maps, atol=1e-5)
