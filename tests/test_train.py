import copy
import math

import numpy as np
import pytest
import torch

from gas_lib.backbone import clear_feature_cache
from gas_lib.config import METHOD_VERSION, native_bf16
from gas_lib.data import load_split
from gas_lib.evaluate import evaluate
from gas_lib.model import WeightAverage
from gas_lib.train import CHECKPOINT_NAME, GASDetector, TrainingDiverged

from conftest import tiny_config


class Interrupt(Exception):
    pass


def _stop_after(epoch_to_stop: int):
    def callback(detector, epoch):
        if epoch == epoch_to_stop:
            raise Interrupt
        return {}
    return callback


@pytest.fixture(scope="module")
def fitted(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    detector = GASDetector(tiny_config(epochs=4)).fit(train, progress=False)
    return detector


def test_fit_records_both_losses_per_epoch(fitted):
    history = fitted.history
    assert list(history["epoch"]) == [1, 2, 3, 4]
    for column in ("loss_normal", "loss_anomaly", "loss_total", "seconds"):
        assert history[column].notna().all()
    assert fitted.selected_epoch == 4
    assert fitted.timings["train_seconds"] > 0


def test_training_steps_change_the_heads_and_lower_the_loss(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    detector = GASDetector(tiny_config(epochs=12, adaptor_lr=1e-3, disc_lr=1e-3)).fit(train, progress=False)
    losses = detector.history["loss_total"].to_numpy()
    assert losses[-3:].mean() < losses[:3].mean()


def test_scores_and_maps(fitted, synthetic_root):
    test = load_split(synthetic_root, "plate", "test")
    scores, maps = fitted.score(test)
    assert scores.shape == (len(test),) and maps.shape == (len(test), 64, 64)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    assert fitted.predict(test, threshold=float(scores.median())).sum() >= len(test) // 2
    # the reference's scoring: probabilities, and the image score is the max patch score,
    # which smoothing can only lower
    reference = copy.copy(fitted)
    reference.config = fitted.config.replace(patch_score="sigmoid", image_score_top_k=1,
                                             position_centring="off")  # raw scores again
    scores, maps = reference.score(test)
    assert 0 <= maps.min() and maps.max() <= 1
    assert torch.all(maps.flatten(1).max(1).values <= scores + 1e-6)


def test_save_and_load_give_identical_scores(fitted, synthetic_root, tmp_path):
    test = load_split(synthetic_root, "plate", "test")[:4]
    path = fitted.save(tmp_path / "model.pth")
    loaded = GASDetector.load(path)
    assert loaded.config == fitted.config and loaded.selected_epoch == fitted.selected_epoch
    for a, b in zip(fitted.score(test), loaded.score(test)):
        assert torch.allclose(a, b)
    assert list(loaded.history["epoch"]) == [1, 2, 3, 4]
    state = torch.load(path, weights_only=True)  # plain tensors and config only
    assert set(state) >= {"config", "adaptor", "discriminator"}


@pytest.mark.parametrize("schedule,ema_decay", [("constant", 0.0), ("cosine", 0.0),
                                               ("constant", 0.9)])
def test_interrupted_fit_resumes_to_the_same_result(synthetic_root, tmp_path, schedule, ema_decay):
    train = load_split(synthetic_root, "plate", "train")
    test = load_split(synthetic_root, "plate", "test")
    config = tiny_config(epochs=4, lr_schedule=schedule, ema_decay=ema_decay)
    straight = GASDetector(config).fit(train, progress=False)

    clear_feature_cache()
    with pytest.raises(Interrupt):
        GASDetector(config).fit(train, checkpoint_dir=tmp_path, epoch_callback=_stop_after(3),
                                progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2
    resumed = GASDetector(config).fit(train, checkpoint_dir=tmp_path, progress=False)
    assert list(resumed.history["epoch"]) == [1, 2, 3, 4]
    for key, value in straight.adaptor.state_dict().items():
        assert torch.equal(value, resumed.adaptor.state_dict()[key]), key
    m_straight, _, _ = evaluate(straight, test)
    m_resumed, _, _ = evaluate(resumed, test)
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert m_straight[key] == m_resumed[key]


def test_a_checkpoint_from_older_method_code_is_not_resumed(synthetic_root, tmp_path):
    """Same config, but written before a change to what a fit computes: train afresh."""
    train = load_split(synthetic_root, "plate", "train")
    config = tiny_config(epochs=2)
    GASDetector(config).fit(train, checkpoint_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["method_version"] == METHOD_VERSION and state["epoch"] == 2
    epochs_run: list[int] = []

    def record(detector, epoch):
        epochs_run.append(epoch)
        return {}

    GASDetector(config).fit(train, checkpoint_dir=tmp_path, epoch_callback=record, progress=False)
    assert epochs_run == []  # finished, same code: nothing to redo
    state["method_version"] = METHOD_VERSION - 1
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    GASDetector(config).fit(train, checkpoint_dir=tmp_path, epoch_callback=record, progress=False)
    assert epochs_run == [1, 2]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    train = load_split(synthetic_root, "plate", "train")
    detector = GASDetector(tiny_config(epochs=2))
    features = detector.embed(train, progress=False)
    detector.fit_features(features, checkpoint_dir=tmp_path, progress=False)
    broken = features.clone()
    broken[0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="not finite"):
        GASDetector(tiny_config(epochs=3)).fit_features(broken, checkpoint_dir=tmp_path,
                                                        progress=False)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["adaptor"].values())


def test_validation_selection_holds_out_train_images(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    detector = GASDetector(tiny_config(epochs=3, selection="validation")).fit(train, progress=False)
    assert detector.history["val_loss"].notna().all()
    best = int(detector.history["val_loss"].idxmin()) + 1
    assert detector.selected_epoch == best


def test_oracle_needs_the_test_split_and_picks_its_best_epoch(synthetic_root):
    from gas_lib.evaluate import make_test_tracker

    train = load_split(synthetic_root, "plate", "train")
    test = load_split(synthetic_root, "plate", "test")
    config = tiny_config(epochs=3, selection="oracle")
    with pytest.raises(ValueError, match="oracle"):
        GASDetector(config).fit(train, progress=False)
    detector = GASDetector(config).fit(train, epoch_callback=make_test_tracker(test),
                                       progress=False)
    total = detector.history["image_auroc"] + detector.history["pixel_auroc"]
    assert detector.selected_epoch == int(detector.history.loc[total.idxmax(), "epoch"])


def test_hypersphere_variant_trains(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    detector = GASDetector(tiny_config(epochs=2, variant="hypersphere")).fit(train, progress=False)
    assert detector.radius is not None and math.isfinite(detector.radius)
    assert detector.centres.shape == (64, 64)
    assert np.isfinite(detector.history["loss_total"]).all()


def test_weight_average_follows_the_exponential_rule():
    live = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    average = WeightAverage([live], decay=0.75)
    average.updates = 100  # past the warm-up: the decay is 0.75 itself
    before = {k: v.clone() for k, v in average.modules[0].state_dict().items()}
    live.train()
    with torch.no_grad():
        live[0].weight.add_(1.0)
        live(torch.randn(8, 3))  # moves the BatchNorm running statistics and batch count
    average.update()
    after, now = average.modules[0].state_dict(), live.state_dict()
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(after[key], 0.75 * before[key] + 0.25 * now[key]), key
    assert after["1.num_batches_tracked"] == now["1.num_batches_tracked"] == 1
    assert not any(p.requires_grad for p in average.modules[0].parameters())
    fresh = WeightAverage([live], decay=0.999)
    assert fresh.current_decay == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)
    old = fresh.modules[0][0].weight.clone()
    with torch.no_grad():
        live[0].weight.mul_(2.0)
    fresh.update()
    assert torch.allclose(fresh.modules[0][0].weight, 0.1 * old + 0.9 * live[0].weight)
    assert fresh.updates == 1 and fresh.current_decay == pytest.approx(2 / 11)


def test_a_fit_with_weight_averaging_scores_with_the_average(synthetic_root):
    train = load_split(synthetic_root, "plate", "train")
    test = load_split(synthetic_root, "plate", "test")[:4]
    plain = GASDetector(tiny_config(epochs=3, ema_decay=0.0)).fit(train, progress=False)
    seen = {}

    def keep_last_average(detector, epoch):
        if epoch == 3:
            seen["adaptor"] = {k: v.clone() for k, v in
                               detector._average.modules[0].state_dict().items()}
        return {}

    averaged = GASDetector(tiny_config(epochs=3, ema_decay=0.9)).fit(
        train, epoch_callback=keep_last_average, progress=False)
    assert averaged._average is None  # folded into the heads once the fit ends
    for key, value in averaged.adaptor.state_dict().items():
        assert torch.equal(value, seen["adaptor"][key]), key
    weight = averaged.adaptor.linear.weight
    assert not torch.allclose(weight, plain.adaptor.linear.weight)
    scores, maps = averaged.score(test)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()


def test_files_that_cannot_load_raise_an_error_naming_them(fitted, synthetic_root, tmp_path):
    from gas_lib.checkpoint import CheckpointError

    garbage = tmp_path / "model.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=str(garbage)):
        GASDetector.load(garbage)
    partial = tmp_path / "partial.pth"
    torch.save({"config": fitted.config.to_dict()}, partial)  # e.g. another detector's file
    with pytest.raises(CheckpointError, match="missing.*adaptor"):
        GASDetector.load(partial)
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / CHECKPOINT_NAME).write_bytes(b"half a checkpoint")
    train = load_split(synthetic_root, "plate", "train")
    with pytest.raises(CheckpointError, match=CHECKPOINT_NAME):
        GASDetector(tiny_config(epochs=1)).fit(train, checkpoint_dir=broken, progress=False)
    GASDetector(tiny_config(epochs=1)).fit(train, checkpoint_dir=broken, resume=False,
                                           progress=False)  # resume=False: starts afresh


def test_an_epoch_budget_trains_on_that_many_images_in_full_batches(synthetic_root):
    """images_per_epoch=6 of 12 images, batches of 4: batches of 4 and 2, no empty batch
    (an empty one made the losses NaN)."""
    train = load_split(synthetic_root, "plate", "train")
    detector = GASDetector(tiny_config(epochs=2, images_per_epoch=6))
    features = detector.embed(train, progress=False)
    seen = []

    def batch_features(idx):
        seen.append(len(idx))
        return features[idx]

    opt_a, opt_d = detector.init_heads(features.shape[-1])
    row = detector.run_epoch(batch_features, features.shape[0], opt_a, opt_d,
                             torch.Generator().manual_seed(0), torch.Generator().manual_seed(1),
                             reference=features)
    assert seen == [4, 2] and all(math.isfinite(v) for v in row.values())
    detector.fit_features(features, progress=False)
    assert np.isfinite(detector.history["loss_total"]).all()


def test_backbone_bf16_off_gives_the_float32_features_and_scores():
    """``backbone_bf16=False`` keeps the backbone in float32 (version 8's features) while the
    heads' training products stay in bf16; the default differs from it only where bf16 is
    native, and training and scoring see features of the same precision."""
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    clear_feature_cache()
    exact = GASDetector(tiny_config(amp=False)).embed(images, progress=False)
    float32 = GASDetector(tiny_config(backbone_bf16=False))
    assert torch.equal(float32.embed(images, progress=False), exact)
    default = GASDetector(tiny_config())
    features = default.embed(images, progress=False)
    assert features.dtype == torch.float32
    assert torch.equal(features, exact) != native_bf16(torch.device("cpu"))
    default.fit(images, progress=False)
    scored = default.score(images)[0]
    assert torch.allclose(scored, default.score_features(features)[0], atol=1e-4)


def test_position_centring_subtracts_the_training_mean_at_each_position(tmp_path):
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    detector = GASDetector(tiny_config(epochs=1, position_centring=True))  # True reads "mean"
    assert detector.config.position_centring == "mean"
    detector.fit(images, progress=False)
    features = detector.embed(images, progress=False)
    centred = detector.patch_scores(features)
    offset = detector.position_offset
    assert offset is not None and offset.shape == (centred.shape[1],)
    assert centred.mean(0).abs().max() < 1e-4  # the training images average to zero everywhere
    detector.position_offset = None
    assert torch.allclose(detector.patch_scores(features) - offset, centred, atol=1e-5)
    detector.position_offset = offset
    loaded = GASDetector.load(detector.save(tmp_path / "centred.pth"))
    for a, b in zip(detector.score(images[:3]), loaded.score(images[:3])):
        assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="position_centring"):
        detector.patch_scores(features[:, :10])


def test_position_centring_excess_lowers_only_positions_high_on_nearly_every_image():
    images = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    detector = GASDetector(tiny_config(epochs=1, position_centring="excess"))
    detector.fit(images, progress=False)
    features = detector.embed(images, progress=False)
    offset = detector.position_offset
    detector.position_offset = None
    raw = detector.patch_scores(features)
    level = raw.quantile(0.1, dim=0)  # what nearly every training image reaches there
    assert torch.allclose(offset, (level - level.median()).clamp_min(0), atol=1e-5)
    assert (offset >= 0).all() and (offset > 0).any() and (offset == 0).sum() >= offset.numel() // 2
    # a position high on every training image is lowered by its excess, the others untouched
    top = int(offset.argmax())
    detector.position_offset = offset
    lowered = detector.patch_scores(features)
    assert torch.allclose(lowered[:, top], raw[:, top] - offset[top], atol=1e-5)
    untouched = offset == 0
    assert torch.equal(lowered[:, untouched], raw[:, untouched])
    with pytest.raises(ValueError, match="position_centring"):
        GASDetector(tiny_config(position_centring="median"))
