import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gas_lib.backbone import FeatureExtractor
from gas_lib.config import GASConfig
from gas_lib.gas import (Shell, clear_of_normal, column_quantile, feature_scale, gas_losses,
                         hypersphere_shell, manifold_shell, mass_weights, patch_rarity,
                         position_centres, project_to_shell, share_of_anchors, shell_mass,
                         synthesize)
from gas_lib.model import Adaptor, Discriminator


@pytest.fixture(scope="module")
def adapted():
    """Adapted patch features of real backbone output on real-looking images."""
    torch.manual_seed(0)
    extractor = FeatureExtractor("efficientnet_lite0", pretrain_embed_dim=64, target_embed_dim=64)
    images = torch.rand(2, 3, 64, 64) * 0.2 + torch.linspace(0, 0.8, 64)
    features = extractor(images)  # [2, 64, 64]
    adaptor = Adaptor(64)
    with torch.no_grad():
        return adaptor(features)


def _loss_anomalous(disc, g):
    return F.binary_cross_entropy_with_logits(disc.logits(g), torch.ones(g.shape[0])).item()


@pytest.mark.parametrize("preset", ["seed", "glass"])
def test_synthetic_patches_lie_in_the_manifold_shell(adapted, preset):
    config = GASConfig.preset(preset)
    anchors = adapted.flatten(0, 1)
    disc = Discriminator(anchors.shape[1], 32)
    gen = torch.Generator().manual_seed(0)
    synthetic = synthesize(disc, anchors, manifold_shell(anchors, config), config, gen)
    distance = (synthetic - anchors).norm(dim=1)
    assert synthetic.shape == anchors.shape and synthetic.dtype == torch.float32
    assert not synthetic.requires_grad
    assert distance.min() >= config.r1 - 1e-4
    assert distance.max() <= config.r2 + 1e-4


def test_hypersphere_shell_is_around_the_position_centres(adapted):
    config = GASConfig.preset("seed", variant="hypersphere")
    centres, radius = position_centres(adapted)
    distances = (adapted - centres).norm(dim=-1)
    assert (distances <= radius).float().mean().item() == pytest.approx(0.75, abs=0.05)
    anchors = adapted.flatten(0, 1)
    shell = hypersphere_shell(centres.repeat(adapted.shape[0], 1), radius)
    synthetic = synthesize(Discriminator(64, 32), anchors, shell, config)
    d = (synthetic - shell.reference).norm(dim=1)
    assert d.min() >= radius - 1e-3 and d.max() <= 2 * radius + 1e-3


def test_gradient_ascent_raises_the_discriminator_loss(adapted):
    torch.manual_seed(1)
    anchors = adapted.flatten(0, 1)
    disc = Discriminator(anchors.shape[1], 32).eval()
    wide = Shell(anchors, 1e-6, 1e6)  # projection inactive: isolate the ascent
    config = GASConfig.preset("seed", eta=0.5, n_step=5)
    start = synthesize(disc, anchors, wide, config.replace(n_step=1, eta=1e-6),
                       torch.Generator().manual_seed(0))
    climbed = synthesize(disc, anchors, wide, config, torch.Generator().manual_seed(0))
    assert _loss_anomalous(disc, climbed) > _loss_anomalous(disc, start) + 0.05
    # with the projection on, ascent beats a random direction of the same length
    config = GASConfig.preset("seed")
    shell = manifold_shell(anchors, config)
    ascended = synthesize(disc, anchors, shell, config, torch.Generator().manual_seed(0))
    offset = torch.randn(anchors.shape, generator=torch.Generator().manual_seed(2))
    offset = offset / offset.norm(dim=1, keepdim=True) * (ascended - anchors).norm(dim=1, keepdim=True)
    assert _loss_anomalous(disc, ascended) > _loss_anomalous(disc, anchors + offset)


def test_projection_clamps_each_patch_separately():
    reference = torch.zeros(3, 4)
    points = torch.tensor([[0.1, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 10.0, 0]])
    projected = project_to_shell(points, Shell(reference, 1.0, 2.0))
    assert projected.norm(dim=1).tolist() == pytest.approx([1.0, 2.0, 2.0])
    # directions are kept
    assert torch.allclose(F.normalize(projected, dim=1), F.normalize(points, dim=1))


def test_gas_losses_are_the_two_bce_terms():
    torch.manual_seed(0)
    disc = Discriminator(8, 16).eval()
    normal, synthetic = torch.randn(5, 8), torch.randn(7, 8) + 3
    loss_n, loss_a = gas_losses(disc, normal, synthetic)
    expected_n = -torch.log(1 - disc(normal)).mean()
    expected_a = -torch.log(disc(synthetic)).mean()
    assert loss_n.item() == pytest.approx(expected_n.item(), rel=1e-5)
    assert loss_a.item() == pytest.approx(expected_a.item(), rel=1e-5)


def test_hard_normal_fraction_averages_the_worst_normal_patches():
    """normal_hard_fraction=0.25 keeps the quarter of normal patches with the largest loss
    (rounded up); the synthetic term is unchanged."""
    torch.manual_seed(0)
    disc = Discriminator(8, 16).eval()
    normal, synthetic = torch.randn(10, 8), torch.randn(7, 8) + 3
    loss_n, loss_a = gas_losses(disc, normal, synthetic, normal_hard_fraction=0.25)
    per_patch = -torch.log(1 - disc(normal))
    assert loss_n.item() == pytest.approx(per_patch.topk(3).values.mean().item(), rel=1e-5)
    assert loss_n.item() > per_patch.mean().item()
    assert loss_a.item() == pytest.approx(gas_losses(disc, normal, synthetic)[1].item())
    with pytest.raises(ValueError, match="normal_hard_fraction"):
        GASConfig.preset("cpu", normal_hard_fraction=0.0)


def test_rarity_weights_scale_each_normal_patch_and_its_synthetic_patch():
    """rarity_weight: row i of the normal and of the synthetic set both count w_i / mean(w)."""
    torch.manual_seed(0)
    disc = Discriminator(8, 16).eval()
    normal, synthetic = torch.randn(6, 8), torch.randn(6, 8) + 3
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 6.0])
    loss_n, loss_a = gas_losses(disc, normal, synthetic, weights=weights)
    w = weights / weights.mean()
    expected_n = (-torch.log(1 - disc(normal)) * w).mean()
    expected_a = (-torch.log(disc(synthetic)) * w).mean()
    assert loss_n.item() == pytest.approx(expected_n.item(), rel=1e-5)
    assert loss_a.item() == pytest.approx(expected_a.item(), rel=1e-5)
    plain = gas_losses(disc, normal, synthetic, weights=torch.full((6,), 3.0))  # uniform: none
    assert plain[0].item() == pytest.approx(gas_losses(disc, normal, synthetic)[0].item(), rel=1e-6)
    with pytest.raises(ValueError, match="gas_patch_fraction"):
        GASConfig.preset("cpu", rarity_weight=1.0, gas_patch_fraction=0.5)


def test_patch_rarity_singles_out_a_patch_no_other_image_has():
    """A patch planted in one image only (real backbone features of a bright square) is far
    rarer than a typical one; the median is 1 and scaling the features changes nothing."""
    extractor = FeatureExtractor("efficientnet_lite0", pretrain_embed_dim=64, target_embed_dim=64)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 64, 64, generator=gen) * 0.1 + 0.4
    images[0, :, 24:40, 24:40] = 1.0
    with torch.no_grad():
        features = extractor(images)  # [6, 64, 64]
    rarity = patch_rarity(features, seed=0)
    assert rarity.shape == features.shape[:2]
    assert rarity.median().item() == pytest.approx(1.0, abs=1e-6)
    grid = rarity[0].view(8, 8)
    assert grid[3:5, 3:5].min() > 2 * rarity[1:].max()  # the square's patches stand out
    assert torch.allclose(patch_rarity(4.0 * features, seed=0), rarity, rtol=1e-4, atol=1e-4)


def test_ascent_scores_synthetic_patches_in_one_batchnorm_batch_with_the_normal_ones():
    """As the reference scores cat([normal, synthetic]): BatchNorm over the synthetic patches
    alone would normalise away a shift they all share, so the ascent could not see it."""
    torch.manual_seed(0)
    disc = Discriminator(8, 16).train()
    normal, synthetic = torch.randn(6, 8), torch.randn(5, 8) + 1
    context = disc.first_layer(normal)
    joint = disc.logits(torch.cat([normal, synthetic]))[6:]
    assert torch.allclose(disc.logits_in_context(synthetic, context), joint, atol=1e-5)
    assert torch.allclose(disc.logits(synthetic + 5.0), disc.logits(synthetic), atol=1e-4)
    assert not torch.allclose(disc.logits_in_context(synthetic + 5.0, context),
                              disc.logits_in_context(synthetic, context), atol=1e-2)


def test_synthesize_follows_the_reference_ascent_in_train_mode(adapted):
    """Step by step as the reference: D scores cat([normal, synthetic]) in train mode, the
    gradient of BCE(D(g), 1) is normalised per patch, then the projection."""
    anchors = adapted.flatten(0, 1)
    torch.manual_seed(0)
    disc = Discriminator(anchors.shape[1], 32).train()
    config = GASConfig.preset("seed", eta=0.5, n_step=3, n_proj=1)
    shell = manifold_shell(anchors, config)
    ours = synthesize(copy.deepcopy(disc), anchors, shell, config, torch.Generator().manual_seed(0))

    reference = copy.deepcopy(disc)
    noise = torch.randn(anchors.shape, generator=torch.Generator().manual_seed(0))
    g = anchors + config.noise_std * noise
    n = anchors.shape[0]
    for _ in range(config.n_step):
        g.requires_grad_(True)
        logits = reference.logits(torch.cat([anchors, g]))[n:]
        (grad,) = torch.autograd.grad(
            F.binary_cross_entropy_with_logits(logits, torch.ones(n)), g)
        g = project_to_shell(g.detach() + config.eta * grad / grad.norm(dim=1, keepdim=True),
                             shell)
    assert torch.allclose(ours, g, atol=1e-4)


def test_feature_scale_scales_with_the_features(adapted):
    """Relative radii are in units of the measured scale: scaling the features scales it."""
    features = torch.cat([adapted, adapted.flip(1) + 0.1 * torch.randn_like(adapted)])  # [4, P, D]
    scale = feature_scale(features)
    assert scale > 0
    assert feature_scale(3.0 * features) == pytest.approx(3.0 * scale, rel=1e-4)
    assert feature_scale(features + 5.0) == pytest.approx(scale, rel=1e-3)  # a shift: the same


def test_relative_shell_radii_follow_the_feature_scale(adapted):
    """The same relative config puts synthetic patches at r1..r2 times the measured scale,
    whatever the features' magnitude (the absolute radii of the cpu profile used to be fixed)."""
    config = GASConfig.preset("cpu")
    assert config.radius_scale == "relative"
    for magnitude in (1.0, 10.0):
        gen = torch.Generator().manual_seed(1)
        features = magnitude * torch.cat([adapted, adapted + 0.1 * torch.randn(
            adapted.shape, generator=gen)])
        scale = feature_scale(features)
        assert scale > 0
        anchors = features.flatten(0, 1)
        disc = Discriminator(anchors.shape[1], 32)
        synthetic = synthesize(disc, anchors, manifold_shell(anchors, config, scale), config,
                               torch.Generator().manual_seed(0))
        distance = (synthetic - anchors).norm(dim=1) / scale
        assert distance.min() >= config.r1 - 1e-3 and distance.max() <= config.r2 + 1e-3


def test_relative_noise_is_as_long_as_asked_in_feature_scales(adapted):
    """step_scale="relative": the noise's length is noise_std feature scales, in random
    directions, at any feature magnitude; with absolute units the same noise_std is negligible
    against relative radii (what made every synthetic patch follow one gradient direction)."""
    anchors = adapted.flatten(0, 1)  # [P, D]
    dim = anchors.shape[1]
    wide = Shell(anchors, 1e-6, 1e6)  # no projection: the noise as it is drawn
    disc = Discriminator(dim, 32)
    for magnitude in (1.0, 10.0):
        scale = magnitude * feature_scale(torch.stack([adapted[0], adapted[1]]))
        config = GASConfig.preset("cpu", step_scale="relative", noise_std=1.5, eta=1e-9)
        units = (scale / dim ** 0.5, scale)
        offsets = synthesize(disc, magnitude * anchors, Shell(magnitude * anchors, 1e-6, 1e6),
                             config, torch.Generator().manual_seed(0), units=units
                             ) - magnitude * anchors
        lengths = offsets.norm(dim=1) / scale
        assert lengths.mean().item() == pytest.approx(1.5, rel=0.1)
        cosines = F.normalize(offsets, dim=1) @ F.normalize(offsets, dim=1).T
        off_diagonal = cosines[~torch.eye(len(offsets), dtype=torch.bool)]
        assert off_diagonal.abs().mean().item() < 0.2  # random directions, not one
    absolute = synthesize(disc, anchors, wide, GASConfig.preset("cpu", step_scale="absolute",
                                                              eta=1e-9),
                          torch.Generator().manual_seed(0)) - anchors
    assert absolute.norm(dim=1).mean().item() < 0.2 * feature_scale(adapted)


def test_step_units_follow_the_measured_scale():
    """GASDetector.step_units: 1 and 1 for absolute settings, the feature scale (and scale per
    sqrt(dim) for the per-feature noise) for relative ones; relative without a fit is an error."""
    from gas_lib.train import GASDetector

    detector = GASDetector(GASConfig.preset("cpu", step_scale="absolute"), pretrained=False)
    assert detector.step_units(64) == (1.0, 1.0)
    relative = GASDetector(GASConfig.preset("cpu", step_scale="relative"), pretrained=False)
    with pytest.raises(RuntimeError, match="feature scale"):
        relative.step_units(64)
    relative.feature_scale = 8.0
    assert relative.step_units(64) == (1.0, 8.0)


def test_a_share_of_anchors_is_a_random_subset_with_its_own_shell():
    normal = torch.randn(100, 8)
    shell = manifold_shell(normal, GASConfig(r1=1.0, r2=2.0), scale=3.0)
    anchors, part = share_of_anchors(normal, shell, 0.25, torch.Generator().manual_seed(0))
    assert anchors.shape == (25, 8)
    rows = [int((normal == a).all(dim=1).nonzero()) for a in anchors]
    assert len(set(rows)) == 25 and rows != list(range(25))  # distinct, drawn at random
    assert torch.equal(part.reference, normal[rows]) and (part.r1, part.r2) == (3.0, 6.0)
    same, whole = share_of_anchors(normal, shell, 1.0)
    assert same is normal and whole is shell
    with pytest.raises(ValueError, match="gas_patch_fraction"):
        GASConfig(gas_patch_fraction=0.0)


def test_a_fit_with_half_the_anchors_trains_and_differs_from_the_full_one():
    from conftest import tiny_config
    from gas_lib.train import GASDetector

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    histories = {}
    for fraction in (1.0, 0.5):
        detector = GASDetector(tiny_config(epochs=2, gas_patch_fraction=fraction,
                                           rarity_weight=0.0, mass_weight=0.0))
        # (patch weights, by rarity or by mass, need every anchor)
        detector.fit(images, progress=False)
        history = detector.history[["loss_normal", "loss_anomaly"]].to_numpy()
        assert history.shape == (2, 2) and (history > 0).all() and np.isfinite(history).all()
        histories[fraction] = history
    assert not (histories[1.0] == histories[0.5]).all()  # the option reaches the training loop


def test_a_fit_with_rarity_weights_measures_them_and_trains_differently():
    from conftest import tiny_config
    from gas_lib.train import GASDetector

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images[0, :, 20:44, 20:44] = 1.0  # one image with something the others lack
    histories = {}
    for exponent in (0.0, 1.0):
        detector = GASDetector(tiny_config(epochs=2, rarity_weight=exponent, rarity_flat=0.0,
                                           rarity_full=0.0, mass_weight=0.0))
        # the exponent as given; the rarity weights alone
        detector.fit(images, progress=False)
        histories[exponent] = detector.history[["loss_normal", "loss_anomaly"]].to_numpy()
        assert np.isfinite(histories[exponent]).all()
    weights = detector.patch_weights  # [8, P] of the last (weighted) fit
    assert weights is not None and weights.shape[0] == 8
    assert weights[0].max() > weights[1:].median()
    assert not (histories[0.0] == histories[1.0]).all()
    capped = GASDetector(tiny_config(epochs=1, rarity_weight=1.0, rarity_cap=1.2,
                                     rarity_flat=0.0, rarity_full=0.0, mass_weight=0.0))
    capped.fit(images, progress=False)
    assert capped.patch_weights is not None
    assert capped.patch_weights.max().item() == pytest.approx(1.2)  # the planted square is cut
    assert torch.equal(capped.patch_weights, weights.clamp(max=1.2))
    with pytest.raises(ValueError, match="rarity_cap"):
        GASConfig.preset("cpu", rarity_cap=0.5)


def test_folded_discriminator_is_batchnorm_with_the_joint_batch_statistics_fixed():
    """ascent_norm="frozen": the first step sees exactly the reference's joint batch; the
    hand-written gradient equals autograd's through the same folded network."""
    torch.manual_seed(0)
    disc = Discriminator(8, 16).train()
    with torch.no_grad():
        disc.body[1].weight.uniform_(0.5, 1.5)
        disc.body[1].bias.normal_()
    normal, synthetic = torch.randn(40, 8), torch.randn(30, 8) + 1
    context = disc.first_layer(normal).detach()
    folded = disc.folded(context, synthetic)
    joint = copy.deepcopy(disc).logits(torch.cat([normal, synthetic]))[40:]
    assert torch.allclose(folded.logits(synthetic), joint, atol=1e-5)
    moved = synthetic + 0.5 * torch.randn(30, 8)  # statistics stay those of the first batch
    assert not torch.allclose(folded.logits(moved), disc.logits_in_context(moved, context),
                              atol=1e-3)
    leaf = moved.clone().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(folded.logits(leaf), torch.ones(30))
    (expected,) = torch.autograd.grad(loss, leaf)
    assert torch.allclose(folded.anomaly_loss_gradient(moved), expected, atol=1e-7)
    disc.eval()  # eval mode folds the running statistics: the same logits as the network
    assert torch.allclose(disc.folded(None, moved).logits(moved), disc.logits(moved), atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        disc.train().folded(None, moved)
    with pytest.raises(ValueError, match="ascent_norm"):
        GASConfig(ascent_norm="fixed")


def test_frozen_ascent_climbs_the_loss_within_the_shell_and_matches_the_batch_one_in_eval(adapted):
    anchors = adapted.flatten(0, 1)
    torch.manual_seed(0)
    disc = Discriminator(anchors.shape[1], 32).train()
    config = GASConfig.preset("seed", eta=0.5, n_step=3, ascent_norm="frozen")
    shell = manifold_shell(anchors, config)
    context = disc.first_layer(anchors).detach()
    frozen = synthesize(disc, anchors, shell, config, torch.Generator().manual_seed(0), context)
    distance = (frozen - anchors).norm(dim=1)
    assert distance.min() >= config.r1 - 1e-4 and distance.max() <= config.r2 + 1e-4
    batch = synthesize(disc, anchors, shell, config.replace(ascent_norm="batch"),
                       torch.Generator().manual_seed(0), context)
    assert not torch.allclose(frozen, batch, atol=1e-3)  # the option reaches the ascent
    folded = disc.folded(context, anchors)
    start = anchors + config.noise_std * torch.randn(
        anchors.shape, generator=torch.Generator().manual_seed(0))
    bce = lambda g: F.binary_cross_entropy_with_logits(folded.logits(g), torch.ones(len(g)))
    assert bce(frozen) > bce(start) + 0.05
    disc.eval()  # BatchNorm on running statistics: nothing to freeze, both ascents agree
    eval_frozen = synthesize(disc, anchors, shell, config, torch.Generator().manual_seed(0))
    eval_batch = synthesize(disc, anchors, shell, config.replace(ascent_norm="batch"),
                            torch.Generator().manual_seed(0))
    assert torch.allclose(eval_frozen, eval_batch, atol=1e-4)


def test_the_rarity_exponent_follows_the_spread_of_the_rarity(tmp_path):
    """A uniform texture stays unweighted, rare structure gets the whole exponent, in between
    the ramp is linear in the rarities' 99th percentile; a fit records what it used."""
    from conftest import tiny_config
    from gas_lib.gas import rarity_exponent
    from gas_lib.train import GASDetector

    gen = torch.Generator().manual_seed(0)
    texture = torch.randn(8, 64, 16, generator=gen)  # every patch about as common as the others
    structured = texture.clone()
    for image in range(8):  # one patch per image that no other image has: 1.6 % of the patches
        structured[image, image] += 12 * torch.randn(16, generator=gen)
    flat_rarity, rare_rarity = patch_rarity(texture), patch_rarity(structured)
    assert torch.quantile(flat_rarity.flatten(), 0.99) < 1.5 < 3.0 < torch.quantile(
        rare_rarity.flatten(), 0.99)
    assert rarity_exponent(flat_rarity, 1.0, 1.5, 3.0) == 0.0
    assert rarity_exponent(rare_rarity, 1.0, 1.5, 3.0) == 1.0
    assert rarity_exponent(flat_rarity, 0.7) == 0.7  # no ramp: the exponent as given
    halfway = torch.ones(1000)
    halfway[-20:] = 2.25  # the 99th percentile halfway between 1.5 and 3.0
    assert rarity_exponent(halfway, 2.0, 1.5, 3.0) == pytest.approx(1.0)

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    images[0, :, 20:44, 20:44] = 1.0  # one image with something the others lack
    detector = GASDetector(tiny_config(epochs=1, rarity_weight=1.0, rarity_flat=1.5,
                                       rarity_full=3.0, mass_weight=0.0))  # rarity alone
    detector.fit(images, progress=False)
    exponent = detector.rarity_exponent
    assert exponent is not None and 0.0 <= exponent <= 1.0
    assert (detector.patch_weights is None) == (exponent == 0.0)
    detector.save(tmp_path / "ramp.pt")
    assert GASDetector.load(tmp_path / "ramp.pt", pretrained=False).rarity_exponent == exponent
    for flat, full in ((1.5, 0.0), (0.5, 3.0), (3.0, 3.0)):
        with pytest.raises(ValueError, match="rarity_flat"):
            GASConfig.preset("cpu", rarity_flat=flat, rarity_full=full)


def test_lipschitz_discriminator_is_bounded_by_its_scale_and_folds_exactly():
    """disc_lipschitz > 0: the logit moves at most ``scale`` per unit of feature distance after
    real training steps, the folded form (ascent) is the network itself, and batch context
    changes nothing."""
    from gas_lib.model import LipschitzDiscriminator

    torch.manual_seed(0)
    disc = LipschitzDiscriminator(8, 32).train()
    disc.scale.fill_(3.0)
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-2)
    normal, anomalous = torch.randn(64, 8), torch.randn(64, 8) * 0.3 + 2.0
    labels = torch.cat([torch.zeros(64), torch.ones(64)])
    losses = []
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(disc.joint_logits(normal, anomalous), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # it learns
    disc.eval()
    x, y = torch.randn(500, 8) * 2, torch.randn(500, 8) * 2
    with torch.no_grad():
        rise = (disc.logits(x) - disc.logits(y)).abs()
    assert (rise <= 3.0 * (x - y).norm(dim=1) * (1 + 1e-3)).all()
    assert rise.max() > 0.1 * 3.0 * (x - y).norm(dim=1).max()  # not collapsed to a constant
    with torch.no_grad():
        assert torch.allclose(disc.folded(None, x).logits(x) + disc.offset, disc.logits(x),
                              atol=1e-5)
        assert torch.equal(disc.logits_in_context(x, normal), disc.logits(x))
    leaf = x.clone().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(disc.logits(leaf), torch.ones(500))
    (expected,) = torch.autograd.grad(loss, leaf)
    # the hand-written gradient leaves out the offset: a per-patch factor the ascent's
    # normalisation removes, so the directions agree
    got = disc.folded(None, x).anomaly_loss_gradient(x)
    assert F.cosine_similarity(got, expected, dim=1).min() > 1 - 1e-4
    with pytest.raises(ValueError, match="disc_lipschitz"):
        GASConfig.preset("cpu", disc_lipschitz=-1.0)


def test_a_fit_with_a_lipschitz_discriminator_sets_its_scale_and_round_trips(tmp_path):
    from conftest import tiny_config
    from gas_lib.train import GASDetector

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    detector = GASDetector(tiny_config(epochs=2, disc_lipschitz=8.0))
    detector.fit(images, progress=False)
    expected = 8.0 / (detector.config.r1 * detector.feature_scale)
    scoring = detector._scoring_heads()[1]
    assert scoring.scale.item() == pytest.approx(expected, rel=1e-5)  # the average's, too
    assert detector.discriminator.scale.item() == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(detector.history[["loss_normal", "loss_anomaly"]].to_numpy()).all()
    loaded = GASDetector.load(detector.save(tmp_path / "lip.pth"))
    for a, b in zip(detector.score(images[:3]), loaded.score(images[:3])):
        assert torch.allclose(a, b)


def test_the_inner_radius_shrinks_to_the_rarity_quantile_where_patches_are_alike(tmp_path):
    """radius_quantile: a uniform texture (rarities within 1.3 median distances) pulls r1 in to
    its 99th percentile and r2 with it; rare structure (a long tail) leaves r1 as given."""
    from conftest import tiny_config
    from gas_lib.fit_loop import shell_factor
    from gas_lib.train import GASDetector

    config = GASConfig.preset("cpu", radius_quantile=0.99)  # r1 = 1.5
    alike = 1.0 + 0.1 * torch.rand(50, 400, generator=torch.Generator().manual_seed(0))
    assert shell_factor(alike, config) == pytest.approx(
        torch.quantile(alike.flatten(), 0.99).item() / 1.5, rel=1e-4)
    tailed = alike.clone()
    tailed[:, :20] = 3.0  # 5 % of the patches three median distances away
    assert shell_factor(tailed, config) == 1.0
    assert shell_factor(alike, config.replace(radius_quantile=0.0)) == 1.0
    with pytest.raises(ValueError, match="radius_quantile"):
        GASConfig.preset("cpu", radius_quantile=1.5)

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # alike noise
    detector = GASDetector(tiny_config(epochs=1, radius_quantile=0.99))
    detector.fit(images, progress=False)
    assert 0 < detector.radius_factor < 1
    assert detector.radius_unit == pytest.approx(detector.feature_scale * detector.radius_factor)
    loaded = GASDetector.load(detector.save(tmp_path / "rq.pth"))
    assert loaded.radius_factor == detector.radius_factor


def test_column_quantile_matches_torch_and_takes_more_than_two_to_the_24_values():
    values = torch.randn(37, 5, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 0.1, 0.5, 0.93, 1.0):
        torch.testing.assert_close(column_quantile(values, q), values.quantile(q, dim=0))
    # 13,000 training images of 1,296 patches: over 2**24 values (older torch.quantile refused)
    big = torch.arange(13_000, dtype=torch.float32)[:, None].repeat(1, 1_296)
    big = big[torch.randperm(13_000, generator=torch.Generator().manual_seed(1))]
    level = column_quantile(big, 0.1)
    assert level.shape == (1_296,)
    torch.testing.assert_close(level, torch.full((1_296,), 0.1 * 12_999))


def test_clearance_drops_synthetic_patches_that_land_on_another_normal_cluster():
    """A dense normal cluster (like the frame's outermost ring) inside the shell of the other
    patches: the synthetic patches that land on it are not counted as anomalies, the others are,
    and the anomaly term averages only the counted ones."""
    gen = torch.Generator().manual_seed(0)
    interior = torch.randn(200, 8, generator=gen) * 0.1
    ring = torch.randn(40, 8, generator=gen) * 0.1 + torch.tensor([2.5] + [0.0] * 7)
    normal = torch.cat([interior, ring])
    shell = manifold_shell(normal, GASConfig(r1=2.0, r2=3.0))
    towards_ring = interior[:20] + torch.tensor([2.5] + [0.0] * 7)  # 2.5 away: in the shell
    away = interior[20:40] - torch.tensor([2.5] + [0.0] * 7)
    synthetic = project_to_shell(torch.cat([towards_ring, away]),
                                 Shell(shell.reference[:40], shell.r1, shell.r2))
    counted = clear_of_normal(synthetic, normal, radius=1.0, generator=gen)
    assert not counted[:20].any() and counted[20:].all()
    disc = Discriminator(8, 16).eval()
    _, loss_a = gas_losses(disc, normal[:40], synthetic, counted=counted)
    assert loss_a.item() == pytest.approx(-torch.log(disc(synthetic[20:])).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="gas_clearance"):
        GASConfig.preset("cpu", gas_clearance=-1.0)


@pytest.mark.parametrize("option", ["gas_clearance", "mass_weight"])
def test_a_fit_with_the_option_trains_differently(option):
    from conftest import tiny_config
    from gas_lib.train import GASDetector

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    histories = {}
    for value in (0.0, 1.0):
        detector = GASDetector(tiny_config(epochs=2, **{option: value}))
        detector.fit(images, progress=False)
        histories[value] = detector.history[["loss_normal", "loss_anomaly"]].to_numpy()
        assert np.isfinite(histories[value]).all()
    assert not (histories[0.0] == histories[1.0]).all()  # the option reaches the training loop


def test_position_code_marks_the_two_outer_rings_and_survives_save_and_load(tmp_path):
    """``position_code``: the adaptor reads whether a patch lies on the frame's outermost ring
    or the next one, as inputs of ``position_code`` feature scales; the same feature is then
    adapted differently on the border than inside, and a saved detector scores the same."""
    from conftest import tiny_config
    from gas_lib.model import ring_indicators
    from gas_lib.train import GASDetector

    rings = ring_indicators((5, 6))
    assert rings[:, 0].view(5, 6)[[0, -1]].all() and rings[:, 0].view(5, 6)[:, [0, -1]].all()
    assert rings[:, 1].view(5, 6)[1:4, 1:5].sum() == 10 and rings.sum() == 5 * 6 - 2
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    detector = GASDetector(tiny_config(epochs=2, position_code=4.0)).fit(images, progress=False)
    codes = detector.adaptor.codes  # [P, 2]
    assert detector.adaptor.linear.in_features == detector.adaptor.linear.out_features + 2
    torch.testing.assert_close(codes, ring_indicators(detector.grid) * 4.0
                               * detector.feature_scale)
    one_feature = torch.randn(1, 1, 64).expand(1, codes.shape[0], 64)
    with torch.no_grad():
        adapted = detector.adaptor(one_feature.flatten(0, 1))  # [P, D]
    border, inside = adapted[codes[:, 0] > 0], adapted[codes.sum(1) == 0]
    assert torch.allclose(inside, inside[:1].expand_as(inside))  # no code: position-blind
    assert (border[0] - inside[0]).norm() > 0.1 * detector.feature_scale
    path = detector.save(tmp_path / "detector.pt")
    loaded = GASDetector.load(path)
    test = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded.score(test)[0], detector.score(test)[0])
    with pytest.raises(ValueError, match="position_code"):
        GASConfig.preset("cpu", position_code=-1.0)


def test_mass_weights_favour_a_small_tight_cluster_that_rarity_calls_common():
    """A small, tight cluster far from the bulk (like the frame's ring on a texture): its
    nearest neighbours are closer than the bulk's (rarity below 1), yet little mass lies around
    it at the shell's scale, so ``mass_weight`` weighs it up, cut at the cap."""
    gen = torch.Generator().manual_seed(0)
    bulk = torch.randn(40, 90, 8, generator=gen) * 0.5  # [N, P, D]: 90 interior patches
    ring = torch.randn(40, 10, 8, generator=gen) * 0.15 + torch.tensor([8.0] + [0.0] * 7)
    features = torch.cat([bulk, ring], dim=1)  # [40, 100, 8]
    rarity = patch_rarity(features)
    assert rarity[:, 90:].median() < rarity[:, :90].median()
    mass = shell_mass(features, radius=1.5)
    assert mass.shape == (40, 100) and (mass > 0).all()
    assert mass[:, 90:].median() < 0.5 * mass[:, :90].median()
    weights = mass_weights(mass, 1.0, cap=4.0)
    assert weights[:, 90:].median() > 1.5 * weights[:, :90].median()
    assert weights.max() <= 4.0 + 1e-6
    torch.testing.assert_close(mass_weights(mass, 2.0, 4.0), weights ** 2)
    with pytest.raises(ValueError, match="mass_weight"):
        GASConfig.preset("cpu", mass_weight=-1.0)
