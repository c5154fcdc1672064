"""The tiles / surface surrogates: MPDD layout, grayscale, non-square, every mask on its defect."""
import numpy as np
from PIL import Image

from gas_lib.data import load_split
from gas_lib.tools.surrogates import TILE_DEFECTS, make_surrogates


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

    cracks = [s for s in load_split(tmp_path, "surface", "test") if s.defect_type == "crack"]
    image = Image.open(cracks[0].image_path)
    assert image.size == (40, 96) and (np.asarray(Image.open(cracks[0].mask_path)) > 0).any()

    first = (tiles / "test" / "fray" / "000.png").read_bytes()
    make_surrogates(tmp_path, **kwargs)  # replaces its own output, byte for byte
    assert (tiles / "test" / "fray" / "000.png").read_bytes() == first
