"""Where GAS puts its anomalies: normal, GAS-synthetic and real-defect patch features in 2-D.

``gas_projection`` takes a fitted detector, adapts the patch features of a few training images
(normal), runs GAS on them exactly as training does (noise, ``n_step`` normalised gradient-
ascent steps, projection into the ``[r1, r2]`` shell) with the final discriminator, and, when
test images are given, adds the patches that lie inside real ground-truth defects. A PCA fitted
on normal + synthetic features gives the 2-D view; the discriminator's score of every point
says which side of the learnt boundary it is on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.decomposition import PCA

from ..data import Sample, load_mask
from ..gas import hypersphere_shell, manifold_shell, synthesize
from ..train import GASDetector

KINDS = ("normal", "GAS synthetic", "real defect")
COLOURS = {"normal": "tab:blue", "GAS synthetic": "tab:orange", "real defect": "tab:red"}
DEFECT_COVER = 0.25  # a grid cell counts as a defect patch when its mask covers this share


def _spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """``n`` samples evenly spread over the list (deterministic)."""
    samples = list(samples)
    if len(samples) <= n:
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, n).round().astype(int)]


@torch.no_grad()
def _adapt(detector: GASDetector, samples: Sequence[Sample]) -> torch.Tensor:
    features = detector.embed(samples, progress=False).to(detector.device, torch.float32)
    n, p, d = features.shape
    return detector.adaptor(features.flatten(0, 1)).view(n, p, -1)


def _defect_cells(detector: GASDetector, samples: Sequence[Sample]) -> torch.Tensor:
    """bool [N, P]: grid cells whose ground-truth coverage reaches DEFECT_COVER."""
    shape, crop = detector.config.input_shape, detector.config.center_crop
    masks = torch.stack([load_mask(s.mask_path, shape, crop) for s in samples]).float()
    cover = F.adaptive_avg_pool2d(masks[:, None], detector.grid)[:, 0]
    return (cover >= DEFECT_COVER).flatten(1)


def gas_projection(detector: GASDetector, train_samples: Sequence[Sample],
                   test_samples: Sequence[Sample] | None = None, *, n_images: int = 8,
                   max_points: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Points (pc1, pc2) per kind with discriminator score and, for GAS points, shell offset.

    ``df.attrs`` holds the PCA's explained variance and the shell ``[r1, r2]`` used.
    """
    if detector.adaptor is None or detector.discriminator is None:
        raise RuntimeError("the detector is not fitted: call fit() or GASDetector.load()")
    cfg = detector.config
    detector.adaptor.eval()
    detector.discriminator.eval()
    train = _spread(train_samples, n_images)
    normal = _adapt(detector, train)  # [N, P, D]
    n, p, _ = normal.shape
    flat = normal.flatten(0, 1)
    variant = detector.variant_choice or cfg.variant  # variant="auto": what the fit chose
    if variant == "hypersphere" and detector.centres is not None:
        reference = detector.centres.to(flat.device).repeat(n, 1)
        shell = hypersphere_shell(reference, float(detector.radius))
    else:
        shell = manifold_shell(flat, cfg)
    generator = torch.Generator(device=detector.device).manual_seed(seed)
    synthetic = synthesize(detector.discriminator, flat, shell, cfg, generator)
    offsets = (synthetic - shell.reference).norm(dim=-1)

    sets: dict[str, dict[str, np.ndarray]] = {
        "normal": {"x": flat.cpu().numpy()},
        "GAS synthetic": {"x": synthetic.cpu().numpy(), "offset": offsets.cpu().numpy()},
    }
    defects = [s for s in (test_samples or []) if s.label == 1 and s.mask_path is not None]
    if defects:
        chosen = _spread(defects, n_images)
        adapted = _adapt(detector, chosen)
        cells = _defect_cells(detector, chosen).to(adapted.device)
        if cells.any():
            sets["real defect"] = {"x": adapted[cells].cpu().numpy()}

    rng = np.random.default_rng(seed)
    for values in sets.values():
        count = values["x"].shape[0]
        keep = np.sort(rng.choice(count, size=min(count, max_points), replace=False))
        for key in values:
            values[key] = values[key][keep]
    with torch.no_grad():
        for values in sets.values():
            x = torch.from_numpy(values["x"]).to(detector.device)
            values["score"] = detector.discriminator(x).float().cpu().numpy()
    pca = PCA(n_components=2, random_state=seed)
    pca.fit(np.concatenate([sets["normal"]["x"], sets["GAS synthetic"]["x"]]))
    frames = []
    for kind, values in sets.items():
        coords = pca.transform(values["x"])
        frames.append(pd.DataFrame({"kind": kind, "pc1": coords[:, 0], "pc2": coords[:, 1],
                                    "score": values["score"],
                                    "offset": values.get("offset", np.full(len(coords), np.nan))}))
    frame = pd.concat(frames, ignore_index=True)
    frame.attrs.update(explained_variance=[float(v) for v in pca.explained_variance_ratio_],
                       shell=(float(shell.r1), float(shell.r2)), variant=variant,
                       n_images=len(train), patches_per_image=p)
    return frame


def projection_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per kind: points, discriminator score (mean, share above 0.5) and GAS offsets."""
    r1, r2 = frame.attrs.get("shell", (np.nan, np.nan))
    rows = []
    for kind in [k for k in KINDS if k in set(frame["kind"])]:
        part = frame[frame["kind"] == kind]
        offset = part["offset"].dropna()
        rows.append({
            "kind": kind, "points": len(part), "mean score": part["score"].mean(),
            "share scored anomalous (> 0.5)": (part["score"] > 0.5).mean(),
            "median offset": offset.median() if len(offset) else np.nan,
            "share of offsets in [r1, r2]": (((offset >= r1 - 1e-4) & (offset <= r2 + 1e-4)).mean()
                                             if len(offset) else np.nan),
        })
    return pd.DataFrame(rows).set_index("kind").round(3)


def plot_projection(frame: pd.DataFrame, title: str = "") -> Figure:
    """PCA scatter of the kinds (left) and their discriminator scores (right)."""
    variance = frame.attrs.get("explained_variance", [np.nan, np.nan])
    r1, r2 = frame.attrs.get("shell", (np.nan, np.nan))
    kinds = [k for k in KINDS if k in set(frame["kind"])]
    fig = Figure(figsize=(12.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[1.2, 1.0])
    for kind in kinds:
        part = frame[frame["kind"] == kind]
        axes[0].scatter(part["pc1"], part["pc2"], s=5, alpha=0.45, color=COLOURS[kind],
                        label=f"{kind} ({len(part)})", rasterized=True)
    axes[0].set(xlabel=f"PC1 ({variance[0]:.1%} var.)", ylabel=f"PC2 ({variance[1]:.1%} var.)",
                title="Adapted patch features, PCA of normal + GAS")
    axes[0].legend(markerscale=3, fontsize="small")
    axes[0].grid(alpha=0.3)
    sns.histplot(data=frame, x="score", hue="kind", hue_order=kinds, palette=COLOURS,
                 stat="density", common_norm=False, element="step", bins=40, ax=axes[1])
    axes[1].axvline(0.5, color="black", linestyle=":", linewidth=1)
    axes[1].set(xlabel="discriminator score (probability of 'anomalous')",
                title="How the final discriminator scores them")
    axes[1].grid(alpha=0.3)
    variant = frame.attrs.get("variant", "manifold")
    fig.suptitle(title or f"Where GAS puts its anomalies ({variant} shell r1={r1:.3g}, "
                          f"r2={r2:.3g})")
    return fig
