"""Dataset reading: layout parsing, every pixel format, masks, errors, synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gas_lib.data import (
    IMAGE_SUFFIXES,
    DataError,
    Sample,
    SampleDataset,
    category_dir,
    list_categories,
    load_image,
    load_images,
    load_mask,
    load_split,
    split_counts,
    verify_images,
)
from gas_lib.tools.synthetic import make_synthetic_category


# --- helpers ----------------------------------------------------------------------------------
def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    make_synthetic_category(data, "bracket", n_train=5, n_test_good=3, n_test_defect=5)
    return data


# --- layout -----------------------------------------------------------------------------------
def test_layout_counts_labels_and_masks(root: Path) -> None:
    assert list_categories(root) == ["bracket"]
    assert category_dir(root, "bracket") == root / "bracket"

    train = load_split(root, "bracket", "train")
    assert [s.image_path.name for s in train] == [f"{i:03d}.png" for i in range(5)]
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in train)

    test = load_split(root, "bracket", "test")
    assert [s.defect_type for s in test] == ["good"] * 3 + ["scratch"] * 3 + ["spot"] * 2
    assert [s.label for s in test] == [0] * 3 + [1] * 5
    for sample in test[3:]:
        expected = (root / "bracket" / "ground_truth" / sample.defect_type
                    / f"{sample.image_path.stem}_mask.png")
        assert sample.mask_path == expected
    assert all(isinstance(s, Sample) for s in test)

    counts = split_counts(root, "bracket")
    assert list(counts.columns) == ["split", "defect_type", "count"]
    assert counts.set_index(["split", "defect_type"])["count"].to_dict() == {
        ("train", "good"): 5, ("test", "good"): 3, ("test", "scratch"): 3, ("test", "spot"): 2}


def test_hidden_and_non_image_files_are_ignored(root: Path) -> None:
    cat = root / "bracket"
    for folder in (cat / "train" / "good", cat / "test" / "scratch", root):
        (folder / "README.txt").write_text("notes")
        (folder / "Thumbs.db").write_bytes(b"\0\1")
        (folder / ".DS_Store").write_bytes(b"\0")
        (folder / "._000.png").write_bytes(b"resource fork, not a png")
    (cat / "test" / ".ipynb_checkpoints").mkdir()
    _save(_rgb(8, 8), cat / "test" / ".ipynb_checkpoints" / "x.png")
    (root / "notes").mkdir()  # a folder without train/good is not a category
    (root / ".cache" / "train" / "good").mkdir(parents=True)

    assert list_categories(root) == ["bracket"]
    assert len(load_split(root, "bracket", "train")) == 5
    assert len(load_split(root, "bracket", "test")) == 8


def test_suffixes_are_case_insensitive_and_masks_may_use_any_suffix(tmp_path: Path) -> None:
    cat = tmp_path / "parts"
    _save(_rgb(8, 8), cat / "train" / "good" / "a.PNG")
    _save(_rgb(8, 8), cat / "train" / "good" / "b.JPEG")
    _save(_rgb(8, 8), cat / "test" / "dent" / "c.Tif")
    _save(np.full((8, 8), 255, np.uint8), cat / "ground_truth" / "dent" / "c_mask.BMP")

    assert ".png" in IMAGE_SUFFIXES and ".tiff" in IMAGE_SUFFIXES
    assert [s.image_path.name for s in load_split(tmp_path, "parts", "train")] == ["a.PNG",
                                                                                   "b.JPEG"]
    (sample,) = load_split(tmp_path, "parts", "test")
    assert sample.mask_path == cat / "ground_truth" / "dent" / "c_mask.BMP"
    assert load_mask(sample.mask_path, 4).all()


# --- images -----------------------------------------------------------------------------------
def _gray(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (h, w), dtype=np.uint8)


IMAGE_CASES = {
    "gray_png": lambda p: _save(_gray(30, 50), p / "g.png"),
    "rgba_png": lambda p: _save(np.dstack([_rgb(40, 40), _gray(40, 40)]), p / "a.png"),
    "palette_png": lambda p: Image.fromarray(_rgb(20, 36)).convert("P").save(p / "p.png")
    or p / "p.png",
    "palette_transparency": lambda p: Image.fromarray(_rgb(20, 20)).convert("P").save(
        p / "t.png", transparency=0) or p / "t.png",
    "jpg": lambda p: _save(_rgb(33, 71), p / "c.jpg", quality=90),
    "bmp": lambda p: _save(_rgb(64, 16), p / "b.bmp"),
    "tiff": lambda p: _save(_rgb(17, 19), p / "t.tiff"),
    "one_bit": lambda p: Image.fromarray(_gray(25, 25) > 127).save(p / "o.png") or p / "o.png",
    "gray16_png": lambda p: _save((_gray(24, 40).astype(np.uint16) * 257), p / "h.png"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
@pytest.mark.parametrize("center_crop", [False, True])
def test_load_image_any_mode_gives_rgb_float(tmp_path: Path, case: str, center_crop: bool) -> None:
    path = IMAGE_CASES[case](tmp_path)
    image = load_image(path, 24, center_crop=center_crop)
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.max() > 0.5  # not clipped to black, not left in 0..255


def test_gray_and_16_bit_values_are_scaled_not_clipped(tmp_path: Path) -> None:
    gray = load_image(_save(np.full((10, 14), 128, np.uint8), tmp_path / "g.png"), 8)
    assert torch.allclose(gray, torch.full_like(gray, 128 / 255))
    deep = load_image(_save(np.full((10, 14), 32768, np.uint16), tmp_path / "d.png"), 8)
    assert torch.allclose(deep, torch.full_like(deep, 32768 / 65535), atol=1e-5)


def _three_bands(height: int, width: int) -> np.ndarray:
    """Red outer quarters and a green middle half along the longer side."""
    image = np.zeros((height, width, 3), np.uint8)
    if width >= height:
        image[:, : width // 4, 0] = image[:, 3 * width // 4:, 0] = 255
        image[:, width // 4: 3 * width // 4, 1] = 255
    else:
        image[: height // 4, :, 0] = image[3 * height // 4:, :, 0] = 255
        image[height // 4: 3 * height // 4, :, 1] = 255
    return image


@pytest.mark.parametrize("shape", [(64, 128), (128, 64)])
def test_center_crop_keeps_the_middle_and_plain_resize_keeps_everything(
        tmp_path: Path, shape: tuple[int, int]) -> None:
    path = _save(_three_bands(*shape), tmp_path / "bands.png")
    cropped = load_image(path, 32, center_crop=True)
    inner = cropped[:, 2:-2, 2:-2]
    assert torch.allclose(inner[1], torch.ones_like(inner[1]), atol=0.02)  # green only
    assert inner[0].max() < 0.02
    squashed = load_image(path, 32)
    assert squashed[0].max() > 0.98  # the red bands are still there


def test_load_images_stacks_and_handles_many(tmp_path: Path) -> None:
    paths = [_save(_rgb(12, 20, seed=i), tmp_path / f"{i}.png") for i in range(18)]
    batch = load_images(paths, 16)  # > 16 images: shows a progress bar
    assert batch.shape == (18, 3, 16, 16)
    assert torch.equal(batch[3], load_image(paths[3], 16))
    assert load_images([], 16).shape == (0, 3, 16, 16)


# --- masks ------------------------------------------------------------------------------------
def _square_mask(on: int) -> np.ndarray:
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:30] = on
    return mask


@pytest.mark.parametrize("on", [255, 1])
def test_load_mask_nearest_and_binarised(tmp_path: Path, on: int) -> None:
    path = _save(_square_mask(on), tmp_path / "m.png")
    mask = load_mask(path, 20)
    assert mask.dtype == torch.bool and mask.shape == (20, 20)
    expected = torch.from_numpy(_square_mask(1)[1::2, 1::2] > 0)  # PIL nearest picks odd pixels
    assert torch.equal(mask, expected)


def test_load_mask_thresholds_grey_colour_and_one_bit(tmp_path: Path) -> None:
    grey = np.zeros((8, 8), np.uint8)
    grey[:4] = 100  # below half: compression noise, not a defect
    grey[4:] = 200
    assert torch.equal(load_mask(_save(grey, tmp_path / "g.png"), 8),
                       torch.from_numpy(grey > 127))
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[2:5, 2:5] = (255, 255, 255)
    assert load_mask(_save(colour, tmp_path / "c.png"), 8).sum() == 9
    Image.fromarray(_square_mask(1) > 0).save(tmp_path / "b.png")  # mode "1"
    assert load_mask(tmp_path / "b.png", 40).sum() == 200
    assert not load_mask(None, 12).any() and load_mask(None, 12).shape == (12, 12)


def test_load_mask_follows_the_image_geometry(tmp_path: Path) -> None:
    mask = np.zeros((64, 128), np.uint8)
    mask[:, :32] = 255  # left quarter: cropped away by the centre crop
    path = _save(mask, tmp_path / "m.png")
    assert not load_mask(path, 32, center_crop=True).any()
    assert load_mask(path, 32).float().mean() == pytest.approx(0.25)


def test_sample_dataset_items_collate(root: Path) -> None:
    dataset = SampleDataset(load_split(root, "bracket", "test"), 32)
    item = dataset[-1]
    assert set(item) == {"image", "mask", "label", "defect_type", "path"}
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.bool
    assert item["label"] == 1 and item["defect_type"] == "spot" and item["mask"].any()
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["mask"].shape == (8, 32, 32)
    assert batch["label"].tolist() == [0] * 3 + [1] * 5
    assert not batch["mask"][:3].any() and all(m.any() for m in batch["mask"][3:])


# --- errors -----------------------------------------------------------------------------------
def _raises(call, *fragments: object) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message


def test_missing_or_file_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    _raises(lambda: list_categories(missing), missing, "does not exist")
    _raises(lambda: load_split(missing, "x", "train"), missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _raises(lambda: category_dir(a_file, "x"), a_file, "not a directory")


def test_root_not_in_layout(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    _raises(lambda: list_categories(tmp_path), tmp_path, "<root>/<category>/train/good")
    _raises(lambda: load_split(tmp_path, "images", "train"), tmp_path / "images", "train/good")


def test_category_folder_given_as_root_gets_a_hint(root: Path) -> None:
    _raises(lambda: list_categories(root / "bracket"), root / "bracket", "parent")


def test_missing_category_lists_existing(root: Path) -> None:
    make_synthetic_category(root, "tubes", n_train=1, n_test_good=1, n_test_defect=1)
    message = _raises(lambda: load_split(root, "metal_plate", "train"), root / "metal_plate")
    assert "bracket" in message and "tubes" in message


def test_empty_train_folder(root: Path) -> None:
    good = root / "bracket" / "train" / "good"
    for path in good.iterdir():
        path.unlink()
    (good / "README.txt").write_text("no images here")
    _raises(lambda: load_split(root, "bracket", "train"), good, ".png")


def test_missing_or_empty_test_folder(root: Path) -> None:
    test_dir = root / "bracket" / "test"
    for path in test_dir.rglob("*.png"):
        path.unlink()
    _raises(lambda: load_split(root, "bracket", "test"), test_dir, "no images")
    for folder in test_dir.iterdir():
        folder.rmdir()
    test_dir.rmdir()
    _raises(lambda: load_split(root, "bracket", "test"), test_dir, "does not exist")
    assert len(load_split(root, "bracket", "train")) == 5  # train does not need test


def test_missing_mask_names_image_and_expected_mask(root: Path) -> None:
    mask = root / "bracket" / "ground_truth" / "spot" / "001_mask.png"
    mask.unlink()
    _raises(lambda: load_split(root, "bracket", "test"),
            root / "bracket" / "test" / "spot" / "001.png", mask)


def test_bad_split_name(root: Path) -> None:
    with pytest.raises(ValueError, match="train"):
        load_split(root, "bracket", "val")


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_unreadable_images(root: Path, content: bytes | str) -> None:
    path = root / "bracket" / "test" / "scratch" / "000.png"
    if content == "truncated":
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    _raises(lambda: load_image(path, 16), path, "not a readable image")
    samples = load_split(root, "bracket", "test")  # folders are fine; pixels are not read
    _raises(lambda: verify_images(samples), path, "not a readable image")
    _raises(lambda: SampleDataset(samples, 16)[3], path)


def test_unreadable_or_mismatched_mask(root: Path) -> None:
    samples = load_split(root, "bracket", "test")
    verify_images(samples)  # a good category passes
    mask = samples[-1].mask_path
    assert mask is not None
    _save(np.zeros((10, 10), np.uint8), mask)
    _raises(lambda: verify_images(samples), mask, samples[-1].image_path, "size")
    mask.write_bytes(b"garbage")
    _raises(lambda: load_mask(mask, 16), mask, "not a readable image")
    _raises(lambda: load_image(root / "missing.png", 16), root / "missing.png")


# --- synthetic data ---------------------------------------------------------------------------
def test_synthetic_is_deterministic(tmp_path: Path) -> None:
    first = make_synthetic_category(tmp_path / "a", seed=3)
    second = make_synthetic_category(tmp_path / "b", seed=3)
    other = make_synthetic_category(tmp_path / "c", seed=4)
    assert _files(first) == _files(second)
    assert _files(first).keys() == _files(other).keys()
    assert _files(first) != _files(other)
    again = make_synthetic_category(tmp_path / "a", seed=3)  # replaces its own earlier output
    assert _files(again) == _files(second)


def test_synthetic_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_synthetic_category(tmp_path)
    assert (tmp_path / "synthetic" / "keep.txt").read_text() == "mine"


def test_synthetic_masks_mark_exactly_the_defect_pixels(tmp_path: Path) -> None:
    make_synthetic_category(tmp_path, n_test_defect=8, image_size=64, seed=1)
    defects = [s for s in load_split(tmp_path, "synthetic", "test") if s.label == 1]
    assert len(defects) == 8
    for sample in defects:
        image = np.asarray(Image.open(sample.image_path), np.float32) / 255
        mask = np.asarray(Image.open(sample.mask_path))
        assert set(np.unique(mask)) == {0, 255}
        mask = mask > 0
        assert 0.01 <= mask.mean() <= 0.05
        background = np.median(image.reshape(-1, 3), axis=0)
        deviation = np.abs(image - background).max(axis=2)
        assert deviation[mask].min() > 0.25 and deviation[~mask].max() < 0.25


def test_synthetic_train_and_test_good_look_alike(tmp_path: Path) -> None:
    make_synthetic_category(tmp_path, n_train=8, n_test_good=8, image_size=32)
    train = load_images([s.image_path for s in load_split(tmp_path, "synthetic", "train")], 32)
    test = load_images([s.image_path for s in load_split(tmp_path, "synthetic", "test")
                        if s.label == 0], 32)
    assert abs(train.mean() - test.mean()) < 0.03
    assert abs(train.std() - test.std()) < 0.03
    assert not torch.equal(train[0], train[1])  # images differ by their random shifts
