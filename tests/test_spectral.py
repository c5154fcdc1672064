"""The spectral manifold / hypersphere choice on images with and without strong structure."""

import numpy as np
import pytest
import torch

from gas_lib.spectral import plot_spectrum, spectral_decision

from conftest import MPDD_ROOT

SIZE = 128


def _stack(image: np.ndarray, n: int = 3) -> torch.Tensor:
    return torch.tensor(image, dtype=torch.float32)[None, None].repeat(n, 3, 1, 1)


def _periodic() -> torch.Tensor:
    """A high-contrast pattern, identical in every image (aligned, strongly periodic)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    period = SIZE / 9  # ~32 px once resized to 289
    return _stack(0.5 + 0.5 * np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period))


def _smooth_objects(seed: int = 0) -> torch.Tensor:
    """Soft, low-contrast blobs at random places: their mean is smooth and faint."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    images = []
    for _ in range(8):
        cy, cx = rng.uniform(0.2, 0.8, 2) * SIZE
        images.append(0.5 + 0.05 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (SIZE / 6) ** 2)))
    return torch.tensor(np.stack(images), dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)


def test_periodic_structure_gives_hypersphere():
    result = spectral_decision(_periodic())
    assert result.decision == "hypersphere"
    assert result.n_points > 60 and result.radius > 12 and result.density > 0.21


def test_smooth_objects_give_manifold():
    result = spectral_decision(_smooth_objects())
    assert result.decision == "manifold"
    assert result.n_images == 8 and result.summary()["decision"] == "manifold"


def test_flat_image_has_few_points():
    result = spectral_decision(torch.full((2, 3, SIZE, SIZE), 0.5))
    assert result.decision == "manifold" and result.radius == 0.0 and result.n_points == 1


def test_plot_spectrum_names_the_decision():
    import matplotlib.pyplot as plt

    result = spectral_decision(_periodic())
    fig = plot_spectrum(result)
    assert "hypersphere" in fig._suptitle.get_text() and len(fig.axes) >= 2
    plt.close(fig)


@pytest.mark.skipif(not (MPDD_ROOT / "metal_plate").is_dir(), reason="MPDD not present")
def test_metal_plate_is_manifold():
    from gas_lib.data import load_images, load_split

    samples = load_split(MPDD_ROOT, "metal_plate", "train")
    result = spectral_decision(load_images([s.image_path for s in samples], 128))
    assert result.decision == "manifold"  # as the reference marks every MPDD class
