"""The tiles / surface surrogates: MPDD layout, grayscale, non-square, every mask on its defect."""
import numpy as np
from PIL import Image

from gas_lib.data import load_split
from gas_lib.tools.surrogates import TILE_DEFECTS, make_surrogates, surface_crack


def test_surrogates_write_grayscale_non_square_categories_with_masks(tmp_path):
    kwargs = dict(n_train=(3, 2), n_good=2, n_per_defect=(2, 1), surface_size=(96, 40))
    tiles, surface = make_surrogates(tmp_path, **kwargs)
    assert [p.name for p in (tiles, surface)] == ["tiles", "surface"]

    test = load_split(tmp_path, "tiles", "test")
    assert sorted({s.defect_type for s in test}) == sorted(("good",) + TILE_DEFECTS)
    sizes = set()
    for sample in load_split(tmp_path, "tiles", "train") + test:
        image = Image.open(sample.image_path)
        assert image.mode == "L" and image.width > image.height  # landscape, grayscale
        sizes.add(image.size)
        if sample.defect_type != "good":
            mask = np.asarray(Image.open(sample.mask_path)) > 0
            assert mask.shape == (image.height, image.width) and 0 < mask.mean() < 0.5
    assert len(sizes) > 3  # every image its own size, as on the hidden tiles

    surface_test = load_split(tmp_path, "surface", "test")
    assert sorted({s.defect_type for s in surface_test}) == ["crack", "faint_crack", "good"]
    for kind in ("crack", "faint_crack"):
        sample = next(s for s in surface_test if s.defect_type == kind)
        assert Image.open(sample.image_path).size == (40, 96)
        assert (np.asarray(Image.open(sample.mask_path)) > 0).any()

    first = (tiles / "test" / "fray" / "000.png").read_bytes()
    make_surrogates(tmp_path, **kwargs)  # replaces its own output, byte for byte
    assert (tiles / "test" / "fray" / "000.png").read_bytes() == first


def test_a_faint_crack_is_a_7_to_15_percent_change_a_crack_25_to_50():
    rng = np.random.default_rng(0)
    flat = np.full((200, 120), 0.5)
    for faint, (low, high) in ((True, (0.07, 0.15)), (False, (0.25, 0.5))):
        for _ in range(20):
            image, mask = surface_crack(rng, flat, faint=faint)
            change = np.abs(image[mask] / 0.5 - 1)
            assert mask.any() and np.allclose(change, change[0])
            assert low - 1e-9 <= change[0] <= high + 1e-9
            assert (image[~mask] == 0.5).all()
