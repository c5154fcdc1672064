"""LAS: Perlin masks, blending, patch labels, focal loss, the pool and gas+las training."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gas_lib.backbone import FeatureExtractor
from gas_lib.config import GASConfig
from gas_lib.data import load_split
from gas_lib.las import (ProceduralTextures, TextureUnavailable, blend, build_las_pool,
                         focal_loss, foreground_mask, make_las_images, patch_labels, perlin_mask,
                         perlin_noise, procedural_texture, rotate_map, sample_beta,
                         texture_source)
from gas_lib.train import CHECKPOINT_NAME, GASDetector

from conftest import tiny_config


# --- masks ------------------------------------------------------------------------------------
def test_perlin_masks_are_binary_non_empty_and_seeded():
    a = perlin_mask(64, np.random.default_rng(3))
    b = perlin_mask(64, np.random.default_rng(3))
    c = perlin_mask(64, np.random.default_rng(4))
    assert a.dtype == bool and a.shape == (64, 64) and a.any()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_perlin_mask_coverage_spreads_over_a_sensible_range():
    coverage = np.array([perlin_mask(64, np.random.default_rng(s)).mean() for s in range(40)])
    assert (coverage > 0).all()
    assert coverage.max() < 0.6  # threshold 0.5 keeps anomalies local
    assert np.percentile(coverage, 90) > 4 * max(np.percentile(coverage, 10), 1e-3)  # varied
    assert 0.01 < np.median(coverage) < 0.3


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise((64, 64), (4, 2), np.random.default_rng(0))
    assert noise.shape == (64, 64) and np.abs(noise).max() <= 1.5
    assert np.abs(np.diff(noise, axis=0)).max() < 0.3  # neighbours differ little: smooth


def test_rotation_is_applied():
    noise = perlin_noise((64, 64), (1, 8), np.random.default_rng(1))  # stripes along y
    turned = rotate_map(noise, 90.0)
    # a quarter turn of an anisotropic map swaps its axes: compare with np.rot90
    assert np.abs(turned - np.rot90(noise)).mean() < 0.05 * np.abs(noise).mean() + 1e-3
    assert np.abs(turned - noise).mean() > 0.3 * np.abs(noise).mean()
    straight = perlin_mask(64, np.random.default_rng(5), rotate=False)
    rotated = perlin_mask(64, np.random.default_rng(5), rotate=True)
    assert not np.array_equal(straight, rotated)


def test_blend_stays_in_range_and_leaves_the_outside_untouched():
    rng = np.random.default_rng(0)
    image = torch.rand(3, 32, 32)
    texture = torch.from_numpy(procedural_texture(rng, 32))
    mask = torch.from_numpy(perlin_mask(32, rng))
    out = blend(image, texture, mask, beta=0.3)
    assert torch.equal(out[:, ~mask], image[:, ~mask])
    lo, hi = torch.minimum(image, texture), torch.maximum(image, texture)
    assert torch.all(out >= lo - 1e-6) and torch.all(out <= hi + 1e-6)
    expected = 0.7 * texture[:, mask] + 0.3 * image[:, mask]
    assert torch.allclose(out[:, mask], expected, atol=1e-6)


def test_patch_labels_are_the_max_pooled_mask():
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 3, 5] = True  # one pixel -> patch (0, 1) of a 4x4 grid of 4x4-pixel cells
    mask[1, 8:, 8:] = True
    labels = patch_labels(mask, (4, 4))
    assert labels.shape == (2, 16)
    assert labels[0].nonzero().flatten().tolist() == [1]
    expected = F.max_pool2d(mask.float()[:, None], 4).flatten(1)
    assert torch.equal(labels, expected)
    assert torch.equal(patch_labels(mask[0].numpy(), (4, 4)), expected[0])


def test_las_images_only_change_the_masked_pixels():
    images = torch.rand(2, 3, 32, 32)
    textures = texture_source(tiny_config(texture_source="train_images"), images)
    out, masks = make_las_images(images, 3, textures, np.random.default_rng(0), [0, 1])
    assert out.shape == (6, 3, 32, 32) and masks.shape == (6, 32, 32)
    for row in range(6):
        source = images[row // 3]
        assert masks[row].any()
        assert torch.equal(out[row][:, ~masks[row]], source[:, ~masks[row]])
    assert 0 <= out.min() and out.max() <= 1


def test_wide_opacity_makes_faint_textures_that_the_reference_never_makes():
    rng = np.random.default_rng(0)
    reference = 1 - np.array([sample_beta(rng) for _ in range(2000)])  # the texture's weight
    wide = 1 - np.array([sample_beta(rng, "wide") for _ in range(2000)])
    assert reference.min() >= 0.2 - 1e-9 and reference.max() <= 0.8 + 1e-9
    assert wide.min() >= 0.05 - 1e-9 and wide.max() <= 0.8 + 1e-9
    assert 0.4 < (wide < 0.2).mean() < 0.6  # log-uniform over [0.05, 0.8]: half below 0.2
    with pytest.raises(ValueError, match="las_opacity"):
        sample_beta(rng, "faint")
    with pytest.raises(ValueError, match="las_opacity"):
        GASConfig(las_opacity="faint")


def test_wide_opacity_reaches_the_las_images():
    images = torch.full((1, 3, 32, 32), 0.5)
    textures = ProceduralTextures()
    out = {}
    for opacity in ("reference", "wide"):
        las, masks = make_las_images(images, 40, textures, np.random.default_rng(3), [0],
                                     opacity=opacity)
        change = (las - images).abs().amax(dim=1)  # [V, H, W]
        out[opacity] = torch.stack([change[v][masks[v]].mean() for v in range(40)])
    # a flat grey image: how far a LAS pixel moves is the texture's weight times its contrast
    assert out["wide"].min() < 0.5 * out["reference"].min()


def test_shaded_las_regions_change_brightness_and_colour_but_not_texture():
    """las_shade_fraction: those LAS images are the image itself, scaled and shifted per
    channel inside the mask (no texture); the rest are texture blends as before, and 0 makes
    exactly the images of the reference's LAS."""
    # values 0.3-0.6: gains of 0.6-1.4 and casts of 0.08 never clip
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.3
    textures = ProceduralTextures()
    plain = make_las_images(images, 10, textures, np.random.default_rng(5), [0, 1])
    same = make_las_images(images, 10, textures, np.random.default_rng(5), [0, 1],
                           shade_fraction=0.0)
    assert torch.equal(plain[0], same[0]) and torch.equal(plain[1], same[1])
    shaded, masks = make_las_images(images, 10, textures, np.random.default_rng(5), [0, 1],
                                    shade_fraction=1.0)
    for row in range(20):
        source, inside = images[row // 10], masks[row]
        assert torch.equal(shaded[row][:, ~inside], source[:, ~inside]) and inside.sum() >= 3
        for channel in range(3):  # inside: source * gain + cast, one gain for all channels
            x, y = source[channel][inside], shaded[row][channel][inside]
            slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
            assert torch.allclose(y, slope * x + (y.mean() - slope * x.mean()), atol=1e-5)
            assert 0.1 - 1e-4 <= abs(float(slope) - 1) <= 0.4 + 1e-4
    half, _ = make_las_images(images, 10, textures, np.random.default_rng(5), [0, 1],
                              shade_fraction=0.5)
    assert not torch.equal(half, plain[0]) and not torch.equal(half, shaded)
    with pytest.raises(ValueError, match="las_shade_fraction"):
        GASConfig(las_shade_fraction=1.5)


def test_texture_sources_fail_with_a_named_alternative(tmp_path):
    with pytest.raises(TextureUnavailable, match=str(tmp_path)):
        texture_source(tiny_config(texture_source="folder", texture_root=str(tmp_path)))
    with pytest.raises(ValueError, match="texture_root"):
        tiny_config(texture_source="folder")
    with pytest.raises(TextureUnavailable, match="needs the training images"):
        texture_source(tiny_config(texture_source="train_images"))


def test_folder_textures(tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "t.png")
    source = texture_source(tiny_config(texture_source="folder", texture_root=str(tmp_path)))
    texture = source.sample(np.random.default_rng(0), 32)
    assert texture.shape == (3, 32, 32) and 0 <= texture.min() and texture.max() <= 1


# --- focal loss -------------------------------------------------------------------------------
def test_focal_loss_equals_hand_computed_values():
    scores = torch.tensor([0.9, 0.2, 0.6, 0.3])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    p_t = torch.tensor([0.9, 0.8, 0.4, 0.3])
    per_patch = -((1 - p_t) ** 2) * torch.log(p_t)  # 0.00105, 0.00893, 0.18326, 0.58997
    full = focal_loss(scores, labels, gamma=2.0, hard_fraction=1.0)
    assert math.isclose(full.item(), per_patch.mean().item(), rel_tol=1e-5)
    hard = focal_loss(scores, labels, gamma=2.0, hard_fraction=0.5)
    assert math.isclose(hard.item(), (per_patch[2] + per_patch[3]).item() / 2, rel_tol=1e-5)
    assert math.isclose(focal_loss(scores, labels, gamma=0.0, hard_fraction=1.0).item(),
                        F.binary_cross_entropy(scores, labels).item(), rel_tol=1e-5)


def test_hard_selection_keeps_the_intended_fraction():
    torch.manual_seed(0)
    scores, labels = torch.rand(1000), (torch.rand(1000) > 0.8).float()
    p_t = torch.where(labels > 0, scores, 1 - scores)
    per_patch = -((1 - p_t) ** 2) * torch.log(p_t)
    for fraction in (0.1, 0.5, 0.25):
        k = math.ceil(fraction * 1000)
        expected = per_patch.sort(descending=True).values[:k].mean()
        got = focal_loss(scores, labels, 2.0, fraction)
        assert math.isclose(got.item(), expected.item(), rel_tol=1e-5)
    # the hardest patches are those furthest from their label
    assert focal_loss(scores, labels, 2.0, 0.1) > focal_loss(scores, labels, 2.0, 0.5)


# --- config -----------------------------------------------------------------------------------
def test_config_default_is_gas_and_presets_set_their_synthesis():
    assert GASConfig().synthesis == "gas" and GASConfig.preset("cpu").synthesis == "gas+las"
    assert GASConfig.preset("seed").synthesis == "gas"
    assert GASConfig.preset("glass").synthesis == "gas+las"
    assert GASConfig.preset("cpu").las_variants == 2
    for bad in (dict(synthesis="both"), dict(las_variants=0), dict(las_hard_fraction=0.0),
                dict(las_regenerate_every=-1), dict(texture_source="web"), dict(focal_gamma=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            GASConfig(**bad)
    config = GASConfig(synthesis="gas+las", variant="auto")
    assert GASConfig.from_json(config.to_json()) == config


# --- pool and training ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_images(synthetic_root):
    samples = load_split(synthetic_root, "plate", "train")
    return samples, GASDetector(tiny_config()).read_images(samples)


def test_pool_is_deterministic_and_labelled(train_images):
    _, images = train_images
    config = tiny_config(synthesis="gas+las", las_variants=2)
    extractor = FeatureExtractor.from_config(config)
    pool = build_las_pool(extractor, images, config, device="cpu", progress=False)
    again = build_las_pool(extractor, images, config, device="cpu", progress=False)
    n, grid = images.shape[0] * 2, FeatureExtractor.grid_size(64)
    assert pool.features.shape == (n, grid[0] * grid[1], 64)
    assert pool.labels.shape == (n, grid[0] * grid[1]) and pool.seconds > 0
    assert torch.equal(pool.labels, again.labels) and torch.equal(pool.features, again.features)
    assert torch.equal(pool.labels, patch_labels(pool.masks, grid))
    assert 0 < pool.anomalous_fraction < 0.9
    assert pool.source.tolist() == [i for i in range(images.shape[0]) for _ in range(2)]
    other = build_las_pool(extractor, images, config, device="cpu", progress=False, generation=1)
    assert not torch.equal(pool.masks, other.masks)


@pytest.fixture(scope="module")
def las_fit(train_images):
    samples, _ = train_images
    return GASDetector(tiny_config(epochs=3, synthesis="gas+las")).fit(samples, progress=False)


def test_gas_las_fit_records_the_las_loss(las_fit):
    history = las_fit.history
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["loss_las"].notna().all() and (history["loss_las"] > 0).all()
    assert np.allclose(history["loss_total"],
                       history["loss_normal"] + history["loss_anomaly"] + history["loss_las"])
    assert las_fit.las_pool is not None and len(las_fit.las_pool) == 12 * 2
    assert las_fit.timings["las_pool_seconds"] > 0


def test_gas_las_save_and_load(las_fit, synthetic_root, tmp_path):
    test = load_split(synthetic_root, "plate", "test")[:4]
    loaded = GASDetector.load(las_fit.save(tmp_path / "m.pth"))
    assert loaded.config.synthesis == "gas+las"
    for a, b in zip(las_fit.score(test), loaded.score(test)):
        assert torch.allclose(a, b)
    assert "loss_las" in loaded.history


def test_prebuilt_pool_gives_the_same_fit_as_fit(las_fit, train_images):
    samples, images = train_images
    detector = GASDetector(las_fit.config)
    pool = build_las_pool(detector, images, progress=False)
    detector.fit_features(detector.embed(images, progress=False), las_pool=pool, progress=False)
    assert np.allclose(detector.history["loss_total"], las_fit.history["loss_total"])
    with pytest.raises(ValueError, match="las_pool"):
        GASDetector(las_fit.config).fit_features(detector.embed(images, progress=False))


def test_gas_only_is_unchanged_by_the_las_code(train_images):
    samples, _ = train_images
    history = GASDetector(tiny_config(epochs=2)).fit(samples, progress=False).history
    assert "loss_las" not in history


@pytest.mark.parametrize("overrides", [dict(synthesis="las"),
                                       dict(synthesis="gas+las", variant="hypersphere"),
                                       dict(synthesis="gas+las", las_regenerate_every=1,
                                            selection="validation")])
def test_other_las_modes_train(train_images, overrides):
    samples, _ = train_images
    detector = GASDetector(tiny_config(epochs=2, **overrides)).fit(samples, progress=False)
    assert detector.history["loss_las"].notna().all()
    if overrides["synthesis"] == "las":
        assert (detector.history["loss_anomaly"] == 0).all()
    if overrides.get("las_regenerate_every"):
        assert detector.las_pool.generation == 1 and "val_loss" in detector.history


def test_auto_variant_is_chosen_and_recorded(train_images, tmp_path):
    samples, _ = train_images
    detector = GASDetector(tiny_config(epochs=1, variant="auto")).fit(samples, progress=False)
    assert detector.variant in ("manifold", "hypersphere")
    assert detector.spectral is not None and detector.variant == detector.spectral.decision
    assert GASDetector.load(detector.save(tmp_path / "a.pth")).variant == detector.variant
    with pytest.raises(ValueError, match="auto"):
        GASDetector(tiny_config(variant="auto")).fit_features(torch.zeros(2, 64, 64))


class Interrupt(Exception):
    pass


def test_interrupted_gas_las_fit_resumes_to_the_same_result(train_images, tmp_path):
    samples, _ = train_images
    config = tiny_config(epochs=3, synthesis="gas+las", las_regenerate_every=2)
    straight = GASDetector(config).fit(samples, progress=False)

    def stop(detector, epoch):
        if epoch == 2:
            raise Interrupt
        return {}

    with pytest.raises(Interrupt):
        GASDetector(config).fit(samples, checkpoint_dir=tmp_path, epoch_callback=stop,
                                progress=False)
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed = GASDetector(config).fit(samples, checkpoint_dir=tmp_path, progress=False)
    assert np.allclose(resumed.history["loss_total"], straight.history["loss_total"])
    for a, b in zip(resumed._head_state()["discriminator"].values(),
                    straight._head_state()["discriminator"].values()):
        assert torch.allclose(a.float(), b.float())


def test_cli_train_with_gas_las(synthetic_root, tmp_path):
    import json

    from gas_lib.__main__ import main

    out = tmp_path / "run"
    code = main(["train", "--data-root", str(synthetic_root), "--category", "plate",
                 "--profile", "cpu", "--out", str(out), "--epochs", "1", "--device", "cpu",
                 "--synthesis", "gas+las", "--variant", "auto",
                 "--set", "image_size=64", "pretrain_embed_dim=64", "target_embed_dim=64"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["synthesis"] == "gas+las" and metrics["config"]["synthesis"] == "gas+las"
    assert metrics["variant"] in ("manifold", "hypersphere") and metrics["spectral"]["n_points"] >= 0
    assert metrics["las_pool_size"] == 12 * 2 and metrics["las_pool_seconds"] > 0


def test_notebook_total_seconds_count_the_las_pool(synthetic_root, tmp_path):
    """The notebooks fit and evaluate in separate steps; their total adds the LAS pool too."""
    from gas_lib.study.pipeline import evaluate_detector

    detector = GASDetector(tiny_config(epochs=1, synthesis="gas+las"))
    detector.fit(load_split(synthetic_root, "plate", "train"), progress=False)
    record, _, _ = evaluate_detector(detector, synthetic_root, "plate", tmp_path)
    parts = (record["feature_seconds"], record["las_pool_seconds"], record["train_seconds"],
             record["eval_seconds"])
    assert record["las_pool_seconds"] > 0
    assert record["total_seconds"] == pytest.approx(sum(parts))


def _object_on_background(size: int = 64, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A blue square (the object) on a noisy light-grey background, and the square's mask."""
    rng = np.random.default_rng(seed)
    image = np.clip(0.65 + 0.03 * rng.standard_normal((3, size, size)), 0, 1)
    square = np.zeros((size, size), dtype=bool)
    square[16:48, 20:52] = True
    image[:, square] = np.array([0.1, 0.2, 0.8])[:, None]
    return torch.from_numpy(image.astype(np.float32)), square


def test_foreground_mask_finds_the_object_on_a_plain_background():
    image, square = _object_on_background()
    found = foreground_mask(image)
    iou = (found & square).sum() / (found | square).sum()
    assert iou > 0.9


def test_foreground_mask_is_the_whole_image_without_a_plain_background():
    texture = torch.from_numpy(np.random.default_rng(1).random((3, 64, 64)).astype(np.float32))
    assert foreground_mask(texture).all()


def test_perlin_masks_stay_on_the_foreground_and_are_never_empty():
    _, square = _object_on_background()
    for seed in range(20):
        mask = perlin_mask(64, np.random.default_rng(seed), foreground=square)
        assert mask.any() and not (mask & ~square).any()
    speck = np.zeros((64, 64), dtype=bool)
    speck[30:32, 30:32] = True
    mask = perlin_mask(64, np.random.default_rng(0), foreground=speck, max_tries=2)
    assert mask.any() and not (mask & ~speck).any()


def test_las_images_with_foreground_leave_the_background_untouched():
    image, square = _object_on_background()
    las_images, masks = make_las_images(image[None], 3, ProceduralTextures(),
                                        np.random.default_rng(2), foreground=True)
    outside = ~torch.from_numpy(foreground_mask(image))
    assert not (masks & outside).any()
    for las_image in las_images:
        assert torch.equal(las_image[:, outside], image[:, outside])


def test_the_ablation_compares_las_masks_on_the_object_and_on_the_whole_image():
    from gas_lib.study import ablation

    for foreground, label in ((False, "gas+las, masks on the object only"),
                              (True, "gas+las, masks on the whole image")):
        variants = ablation.plan(GASConfig.preset("cpu", las_foreground=foreground), grid="tiny")
        texture = variants[variants["group"] == "texture"]
        assert any(o.get("las_foreground") is (not foreground) for o in texture["overrides"])
        assert label in set(texture["label"])


def test_the_synthesis_table_names_object_only_las_masks():
    import pandas as pd

    from gas_lib.study import ablation

    metrics = dict(image_auroc=1.0, pixel_auroc=0.9, aupro=0.8, image_ap=1.0, pixel_ap=0.7)
    rows = [dict(group="baseline", label="baseline", synthesis="gas", texture_source="procedural",
                 las_foreground=False, train_seconds=1.0, las_pool_seconds=0.0, **metrics),
            dict(group="synthesis", label="gas+las", synthesis="gas+las",
                 texture_source="procedural", las_foreground=False, train_seconds=2.0,
                 las_pool_seconds=1.0, **metrics),
            dict(group="texture", label="object", synthesis="gas+las",
                 texture_source="procedural", las_foreground=True, train_seconds=2.0,
                 las_pool_seconds=1.0, **metrics)]
    table = ablation.synthesis_table(pd.DataFrame(rows), GASConfig.preset("cpu"))
    assert list(table["textures"]) == ["-", "procedural", "procedural, object only"]


def test_preset_settings_carry_the_radius_unit():
    """The ablation's "settings" runs copy the radii with their unit: the GLASS reference's
    r 0.5-1 are feature units, the cpu profile's 1-2 are multiples of the measured scale."""
    from gas_lib.study import ablation

    assert ablation.preset_settings("glass")["radius_scale"] == "absolute"
    assert ablation.preset_settings("cpu")["radius_scale"] == "relative"
    # and the patch weights: the reference's GAS counts every patch alike
    assert ablation.preset_settings("glass")["mass_weight"] == 0.0
    assert ablation.preset_settings("cpu")["mass_weight"] == 1.0
