"""Per-class choice between the manifold and the hypersphere GAS variant, from a spectrum.

GLASS picks the hypersphere variant (shells around per-position centres) for classes whose
training images are aligned: their *mean* image keeps strong, sharp structure, whose blurred
spectrum has many strong coefficients filling a disc around the centre. Classes whose parts
move around (all of MPDD) or that are uniform surfaces average to a smooth, low-contrast image
with few strong coefficients: manifold (shells around each normal patch).

The test, as this module reads the reference (GLASS_REFERENCE.md section 4):

1. mean training image -> grey, on the 8-bit scale (0..255), resized to 289 x 289;
2. 39 x 39 box blur (mirrored edges);
3. unnormalised 2-D DFT, centred; log magnitude ``20 * ln|F|``;
4. points: coefficients with log magnitude > 170 (i.e. ``|F| > e^8.5 ~ 4900``);
5. radius: the largest distance of a point from the centre; densities: points per pixel of
   their bounding box around the centre (``count / (4 * max|dx| * max|dy|)``) and points per
   lattice pixel of the disc of that radius (counted unclipped);
6. "hypersphere" when (box density > 0.21 or disc density > 0.21) and radius > 12 and
   more than 60 points; otherwise "manifold".

The threshold 170 only means something for an unnormalised DFT of a 289 x 289 image on the
0..255 scale, which is why inputs in [0, 1] are scaled by 255 and always resized to 289.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIZE = 289
BLUR = 39
THRESHOLD = 170.0
MIN_DENSITY = 0.21
MIN_RADIUS = 12.0
MIN_POINTS = 60


@dataclass
class SpectralResult:
    """The decision and every number it used (the arrays are for ``plot_spectrum``)."""

    decision: str  # "manifold" or "hypersphere"
    n_points: int
    radius: float
    box_density: float
    disc_density: float
    n_images: int
    threshold: float = THRESHOLD
    mean_image: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    log_magnitude: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def density(self) -> float:
        return max(self.box_density, self.disc_density)

    def summary(self) -> dict[str, Any]:
        """The scalar fields, for JSON and checkpoints."""
        values = asdict(self)
        values.pop("mean_image")
        values.pop("log_magnitude")
        return values


def mean_grey_image(images: torch.Tensor) -> np.ndarray:
    """Mean of images [N, 3, H, W] (or [N, H, W]) in [0, 1] as a 289 x 289 grey image 0..255."""
    images = images.float()
    mean = images.mean(dim=0)
    if mean.dim() == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=mean.dtype, device=mean.device)
        mean = (mean[:3] * weights[:, None, None]).sum(0) if mean.shape[0] == 3 else mean.mean(0)
    resized = F.interpolate(mean[None, None], size=(SIZE, SIZE), mode="bilinear",
                            align_corners=False, antialias=True)[0, 0]
    return (resized.clamp(0, 1) * 255.0).cpu().numpy().astype(np.float64)


def spectral_decision(images: torch.Tensor, n_images: int | None = None) -> SpectralResult:
    """Manifold or hypersphere for the class whose training images [N, 3, H, W] are given.

    A precomputed mean image can be passed as a batch of one, with ``n_images`` saying how
    many images it averages (for the record only).
    """
    grey = mean_grey_image(images)
    blurred = ndimage.uniform_filter(grey, size=BLUR, mode="mirror")
    spectrum = np.fft.fftshift(np.fft.fft2(blurred))
    log_magnitude = 20.0 * np.log(np.abs(spectrum) + 1e-12)
    ys, xs = np.nonzero(log_magnitude > THRESHOLD)
    centre = SIZE // 2
    dy, dx = ys - centre, xs - centre
    n_points = int(ys.size)
    if n_points:
        radius = float(np.sqrt(dx ** 2 + dy ** 2).max())
        box = 4 * max(int(np.abs(dx).max()), 1) * max(int(np.abs(dy).max()), 1)
        r = int(np.ceil(radius))
        oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
        disc = int((ox ** 2 + oy ** 2 <= radius ** 2).sum())
        box_density, disc_density = n_points / box, n_points / disc
    else:
        radius, box_density, disc_density = 0.0, 0.0, 0.0
    dense = max(box_density, disc_density) > MIN_DENSITY
    hyper = dense and radius > MIN_RADIUS and n_points > MIN_POINTS
    return SpectralResult("hypersphere" if hyper else "manifold", n_points, radius, box_density,
                          disc_density, int(n_images or images.shape[0]), THRESHOLD, grey,
                          log_magnitude)


def plot_spectrum(result: SpectralResult, title: str | None = None) -> Figure:
    """Mean grey image and its blurred log spectrum with the points above the threshold."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    fig = Figure(figsize=(9, 4.6), layout="constrained")
    ax_img, ax_spec = fig.subplots(1, 2)
    ax_img.imshow(result.mean_image, cmap="gray", vmin=0, vmax=255)
    ax_img.set_title(f"mean of {result.n_images} training images (grey)")
    ax_img.axis("off")
    shown = ax_spec.imshow(result.log_magnitude, cmap="magma")
    ys, xs = np.nonzero(result.log_magnitude > result.threshold)
    ax_spec.scatter(xs, ys, s=2, c="cyan", label=f"> {result.threshold:g} ({result.n_points})")
    centre = SIZE // 2
    if result.radius > 0:
        ax_spec.add_patch(Circle((centre, centre), result.radius, fill=False, color="cyan",
                                 lw=0.8, ls="--"))
    half = max(40, int(result.radius * 1.5))
    ax_spec.set_xlim(centre - half, centre + half)
    ax_spec.set_ylim(centre + half, centre - half)
    ax_spec.set_title("20 ln|DFT| of the 39x39-blurred mean")
    ax_spec.legend(loc="lower right", fontsize=8)
    fig.colorbar(shown, ax=ax_spec, fraction=0.046)
    fig.suptitle(title or (f"{result.decision}: {result.n_points} points, radius "
                           f"{result.radius:.1f}, density {result.density:.2f} "
                           f"(hypersphere needs > {MIN_POINTS}, > {MIN_RADIUS:g}, > {MIN_DENSITY})"))
    return fig
