"""Speed and memory of the pieces that matter, on whatever device is present.

Compares, in one process and as ratios: a training epoch on cached backbone features against
the same epoch recomputing the backbone for every batch (what the reference code does), and the
same for GAS+LAS: an epoch sampling the pre-embedded LAS pool against one that reads the images,
makes LAS images and runs the backbone on both for every batch. ``run_scaling`` (``bench
--scaling``) times whole fits of GAS and the k-NN baseline against the number of training images.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..backbone import compute_features
from ..config import GASConfig, resolve_device
from ..data import load_split
from ..las import build_las_pool, make_las_images, patch_labels, pool_sampler, texture_source
from ..study.report import environment_info, write_json
from ..train import GASDetector
from .synthetic import normal_texture


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> float:
    """Median wall time of ``fn`` after one warm-up call."""
    return _timed_together({"fn": fn}, device, repeats)["fn"]


def _timed_together(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 1
                    ) -> dict[str, float]:
    """Median wall time of each function after a warm-up round, the calls interleaved round by
    round, so that a slow spell of a shared machine hits every variant of a ratio alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def bench_files(n_images: int, folder: Path, data_root: str | None = None,
                category: str | None = None, source_size: int = 512) -> list[Path]:
    """Real training image files when a dataset is given, else synthetic metal-like textures
    written as PNG at MPDD's size here (512 px), so reading them costs what reading MPDD costs."""
    if data_root and category:
        return [s.image_path for s in load_split(data_root, category, "train")[:n_images]]
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_images):
        path = folder / f"{i:03d}.png"
        Image.fromarray((normal_texture(rng, source_size) * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def peak_rss_mb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if sys.platform != "darwin" else usage / 2**20


def run_benchmark(config: GASConfig, n_images: int = 32, data_root: str | None = None,
                  category: str | None = None, repeats: int = 3) -> dict[str, Any]:
    """Measure and return the rows of the benchmark table plus the environment.

    The first epoch rows are GAS alone (whatever the profile's synthesis), so the caching
    speed-up is measured on the same training step for every profile; the ``gas+las`` rows
    follow.
    """
    detector = GASDetector(config.replace(synthesis="gas"))
    device = detector.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="gas_bench_")
    files = bench_files(n_images, Path(tmp.name), data_root, category)
    images = detector.read_images(files)
    if config.variant == "auto":
        detector.choose_variant(images)
    extractor = detector.extractor
    images_dev = images.to(device)

    def extract_all() -> torch.Tensor:
        return compute_features(extractor, images_dev, device, config.batch_size,
                                config.backbone_amp, progress=False)

    feature_s = _timed(extract_all, device, repeats)
    features = extract_all().float()

    torch.manual_seed(config.seed)
    opt_a, opt_d = detector.init_heads(features.shape[-1])
    cpu_gen = torch.Generator().manual_seed(0)
    dev_gen = torch.Generator(device=device).manual_seed(0)

    def recompute(idx: torch.Tensor) -> torch.Tensor:
        return compute_features(extractor, images_dev[idx.to(device)], device, len(idx),
                                config.backbone_amp, progress=False)

    def read_and_recompute(idx: torch.Tensor) -> torch.Tensor:
        batch = detector.read_images([files[i] for i in idx.tolist()])
        return compute_features(extractor, batch, device, len(idx), config.backbone_amp,
                                progress=False)

    def epoch(source: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        return lambda: detector.run_epoch(source, n_images, opt_a, opt_d, cpu_gen, dev_gen,
                                          reference=features)

    epochs = _timed_together({"cached": epoch(lambda idx: features[idx.to(device)]),
                              "recompute": epoch(recompute),
                              "reference": epoch(read_and_recompute)}, device, repeats)
    cached_s, recompute_s, reference_s = epochs["cached"], epochs["recompute"], epochs["reference"]
    las_rows = _las_rows(detector, config, images, files, features, opt_a, opt_d, repeats)
    tmp.cleanup()
    infer_s = _timed(lambda: detector.score(images), device, repeats)

    rows = [
        {"measure": "backbone features", "value": n_images / feature_s, "unit": "images/s"},
        {"measure": "epoch gas, cached features", "value": cached_s, "unit": "s"},
        {"measure": "epoch gas, backbone recomputed per batch", "value": recompute_s, "unit": "s"},
        {"measure": "epoch gas, images read + backbone per batch (reference code)",
         "value": reference_s, "unit": "s"},
        {"measure": "speed-up of gas caching vs backbone recomputed",
         "value": recompute_s / cached_s, "unit": "x"},
        {"measure": "speed-up of gas caching vs reference epoch",
         "value": reference_s / cached_s, "unit": "x"},
        {"measure": "backbone share of the recompute epoch",
         "value": 100 * (recompute_s - cached_s) / recompute_s, "unit": "%"},
        *las_rows,
        {"measure": "inference end to end (load excluded)", "value": n_images / infer_s,
         "unit": "images/s"},
        {"measure": "peak RSS", "value": peak_rss_mb(), "unit": "MB"},
    ]
    if device.type == "cuda":
        rows.append({"measure": "CUDA max allocated",
                     "value": torch.cuda.max_memory_allocated(device) / 2**20, "unit": "MB"})
    return {"rows": rows, "n_images": n_images, "profile": config.profile,
            "config": config.to_dict(), "environment": environment_info()}


def _las_rows(detector: GASDetector, config: GASConfig, images: torch.Tensor, files: list[Path],
              features: torch.Tensor, opt_a: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
              repeats: int) -> list[dict[str, Any]]:
    """GAS+LAS: the pool's one-off cost, and a cached epoch against two recomputing ones.

    "backbone recomputed": the same LAS images as the pool (made once, in memory), the backbone
    run on the batch's normal and LAS images every batch; only the caching differs. "reference":
    per batch what the reference's data loader and training step do: read the images, make one
    LAS image each (Perlin mask, texture, blend), run the backbone on both, then the heads.
    """
    las_config = config.replace(synthesis="gas+las")
    original = detector.config
    detector.config = las_config
    device = detector.device
    n_images = images.shape[0]
    try:
        pool = build_las_pool(detector, images, las_config, progress=False)
        textures = texture_source(las_config, images)
        grid = detector.grid
        rng = np.random.default_rng(0)
        las_gen = torch.Generator().manual_seed(0)
        cpu_gen = torch.Generator().manual_seed(0)
        dev_gen = torch.Generator(device=device).manual_seed(0)
        pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        las_images, las_masks = make_las_images(images, las_config.las_variants, textures,
                                                np.random.default_rng(1), list(range(n_images)),
                                                las_config.las_foreground,
                                                las_config.las_opacity)
        las_images, las_labels = las_images.to(device), patch_labels(las_masks, grid).to(device)
        images_dev = images.to(device)
        rows_gen = torch.Generator().manual_seed(0)

        def recompute_both(idx: torch.Tensor) -> torch.Tensor:
            rows = torch.randint(las_images.shape[0], (len(idx),), generator=rows_gen).to(device)
            both = torch.cat([images_dev[idx.to(device)], las_images[rows]])
            feats = compute_features(detector.extractor, both, device, both.shape[0],
                                     config.backbone_amp, progress=False)
            pending["las"] = (feats[len(idx):], las_labels[rows])
            return feats[:len(idx)]

        def read_las_and_recompute(idx: torch.Tensor) -> torch.Tensor:
            batch = detector.read_images([files[i] for i in idx.tolist()])
            las_images, masks = make_las_images(batch, 1, textures, rng, idx.tolist(),
                                                las_config.las_foreground,
                                                las_config.las_opacity)
            both = torch.cat([batch, las_images])
            feats = compute_features(detector.extractor, both, device, both.shape[0],
                                     config.backbone_amp, progress=False)
            pending["las"] = (feats[len(idx):], patch_labels(masks, grid).to(device))
            return feats[:len(idx)]

        def epoch(source: Callable[[torch.Tensor], torch.Tensor], las_batch) -> Callable[[], Any]:
            return lambda: detector.run_epoch(source, n_images, opt_a, opt_d, cpu_gen, dev_gen,
                                              reference=features, las_batch=las_batch)

        times = _timed_together({
            "cached": epoch(lambda idx: features[idx.to(device)], pool_sampler(pool, las_gen)),
            "recompute": epoch(recompute_both, lambda idx: pending.pop("las")),
            "reference": epoch(read_las_and_recompute, lambda idx: pending.pop("las")),
        }, device, repeats)
        cached_s, recompute_s, reference_s = (times["cached"], times["recompute"],
                                              times["reference"])
    finally:
        detector.config = original
    return [
        {"measure": f"LAS pool: make + embed {len(pool)} LAS images", "value": pool.seconds,
         "unit": "s"},
        {"measure": "LAS pool per training image", "value": pool.seconds / n_images, "unit": "s"},
        {"measure": "epoch gas+las, cached features + LAS pool", "value": cached_s, "unit": "s"},
        {"measure": "epoch gas+las, backbone recomputed per batch (same LAS images)",
         "value": recompute_s, "unit": "s"},
        {"measure": "epoch gas+las, read + LAS + backbone per batch (reference code)",
         "value": reference_s, "unit": "s"},
        {"measure": "speed-up of gas+las caching vs backbone recomputed",
         "value": recompute_s / cached_s, "unit": "x"},
        {"measure": "speed-up of gas+las caching vs reference epoch",
         "value": reference_s / cached_s, "unit": "x"},
    ]


SCALING_SIZES = (50, 100, 200, 400)


def run_scaling(config: GASConfig, sizes: Sequence[int] = SCALING_SIZES, progress: bool = False
                ) -> pd.DataFrame:
    """Whole-fit wall time against the number of training images, GAS and the k-NN baseline.

    For every size ``n`` (ascending) both detectors are fitted from scratch on the first ``n``
    of ``max(sizes)`` synthetic 512 px textures (``bench_files``: written once as PNG to a
    temporary folder, read once per size with the detector's ``read_images``, the read timed
    apart as ``read_seconds``). ``fit_seconds`` is the wall time of ``fit(images)``: for GAS
    backbone features + LAS pool + training, for ``knn.KNNDetector`` its whole ``fit``. The
    in-memory feature cache is cleared and the on-disk one switched off before every fit, so
    each pays its own feature extraction; loading the backbone's weights happens before the
    clock starts, and an untimed fit of each detector on a few images comes first, so one-off
    costs of the process (kernel set-up, allocator) fall on no row.

    GAS uses ``config`` as given (e.g. the ``cpu`` profile): with ``images_per_epoch`` and
    ``las_pool_images`` > 0 its training and LAS pool cost a fixed budget, so only feature
    extraction should grow with ``n``; with 0 (all images) everything grows. Both settings
    are in the frame's ``attrs`` and in ``format_scaling``'s header.

    Returns one row per size and method: ``n_images, method, fit_seconds, seconds_per_image,
    feature_seconds, las_pool_seconds, train_seconds, read_seconds`` (the three parts from the
    detector's ``timings``; NaN where the detector does not record them; for the k-NN
    baseline ``train_seconds`` is its coreset selection, and it has no LAS pool).
    """
    import tempfile

    from ..backbone import clear_feature_cache
    from ..knn import KNNDetector

    sizes = sorted({int(n) for n in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"scaling sizes {sizes}: expected positive numbers of images")
    config = config.replace(feature_cache_dir=None)
    detectors: dict[str, Callable[[], Any]] = {"gas": lambda: GASDetector(config),
                                               "knn": lambda: KNNDetector(config)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gas_scaling_") as tmp:
        files = bench_files(max(sizes), Path(tmp))
        reader = GASDetector(config)
        warm_up = reader.read_images(files[:min(sizes[0], 8)], progress=False)
        for make in detectors.values():  # one-off costs (kernels, allocator) off the table
            make().fit(warm_up, progress=False)
        for n in sizes:
            started = time.perf_counter()
            images = reader.read_images(files[:n], progress=progress)
            read_s = time.perf_counter() - started
            for method, make in detectors.items():
                detector = make()
                _ = detector.extractor  # weights loaded outside the clock
                clear_feature_cache()
                _sync(detector.device)
                started = time.perf_counter()
                detector.fit(images, progress=progress)
                _sync(detector.device)
                fit_s = time.perf_counter() - started
                timings = detector.timings
                rows.append({
                    "n_images": n, "method": method, "fit_seconds": fit_s,
                    "seconds_per_image": fit_s / n,
                    "feature_seconds": timings.get("feature_seconds", float("nan")),
                    "las_pool_seconds": timings.get(
                        "las_pool_seconds", 0.0 if method == "gas" else float("nan")),
                    "train_seconds": timings.get("train_seconds", float("nan")),
                    "read_seconds": read_s,
                })
                del detector
        clear_feature_cache()
    frame = pd.DataFrame(rows)
    frame.attrs.update(profile=config.profile, images_per_epoch=config.images_per_epoch,
                       las_pool_images=config.las_pool_images, synthesis=config.synthesis,
                       epochs=config.epochs, image_size=config.image_size,
                       backbone=config.backbone, device=str(resolve_device(config.device)))
    return frame


def format_scaling(frame: pd.DataFrame) -> str:
    """The scaling table as text, with what GAS's budgets were and how much each method's fit
    grew from the smallest to the largest size."""
    a = frame.attrs
    header = (f"fit time against training images: profile={a.get('profile')} "
              f"backbone={a.get('backbone')} image={a.get('image_size')}px "
              f"epochs={a.get('epochs')} synthesis={a.get('synthesis')} "
              f"images_per_epoch={a.get('images_per_epoch') or 'all'} "
              f"las_pool_images={a.get('las_pool_images') or 'all'} device={a.get('device')}")
    shown = frame.copy()
    for column in shown.columns:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:,.3f}")
    table = shown.to_markdown(index=False) if _has_tabulate() else shown.to_string(index=False)
    lines = [header, table]
    small, large = frame["n_images"].min(), frame["n_images"].max()
    if large > small:
        for method, part in frame.groupby("method", sort=False):
            by_n = part.set_index("n_images")
            growth = by_n.loc[large, "fit_seconds"] / by_n.loc[small, "fit_seconds"]
            lines.append(f"{method}: fit {growth:.2f}x longer for {large / small:g}x the images "
                         f"({small} -> {large})")
    return "\n".join(lines)


def format_table(result: dict[str, Any]) -> str:
    frame = pd.DataFrame(result["rows"])
    frame["value"] = frame["value"].map(lambda v: f"{v:,.2f}")
    header = (f"gas_lib bench: profile={result['profile']} backbone={result['config']['backbone']} "
              f"image={result['config']['image_size']}px images={result['n_images']} "
              f"device={result['environment']['device']}")
    return header + "\n" + frame.to_markdown(index=False) if _has_tabulate() else \
        header + "\n" + frame.to_string(index=False)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def main(config: GASConfig, n_images: int, out: str | Path | None, data_root: str | None,
         category: str | None, repeats: int = 3,
         scaling_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """The benchmark table; with ``scaling_sizes`` also the fit-time scaling table
    (``run_scaling``), stored in the JSON under ``"scaling"``."""
    result = run_benchmark(config, n_images, data_root, category, repeats)
    print(format_table(result))
    if scaling_sizes:
        frame = run_scaling(config, scaling_sizes)
        print(format_scaling(frame))
        result["scaling"] = {**frame.attrs, "rows": frame.to_dict(orient="records")}
    if out:
        write_json(result, out)
        print(f"wrote {out}")
    return result
