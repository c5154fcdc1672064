import json

import pytest
import torch

from gas_lib.config import PRESETS, GASConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    config = GASConfig.preset(name)
    assert config.profile == name
    path = tmp_path / "c.json"
    config.to_json(path)
    assert GASConfig.from_json(path) == config
    assert GASConfig.from_json(config.to_json()) == config


def test_auto_follows_cuda():
    expected = "seed" if torch.cuda.is_available() else "cpu"
    assert GASConfig.preset("auto").profile == expected


def test_presets_carry_the_reference_settings():
    seed, glass = GASConfig.preset("seed"), GASConfig.preset("glass")
    assert (seed.eta, seed.n_step, seed.n_proj, seed.r1, seed.r2) == (0.1, 5, 1, 1.0, 2.0)
    assert (glass.eta, glass.n_step, glass.n_proj, glass.r1, glass.r2) == (0.001, 20, 5, 0.5, 1.0)
    assert glass.disc_optimizer == "adamw" and glass.adaptor_weight_decay == 1e-5
    assert seed.embedding == "avgpool_concat" and glass.embedding == "reference"
    cpu = GASConfig.preset("cpu")
    assert cpu.backbone == "efficientnet_lite0"
    # version 13: the Lipschitz discriminator and the excess centring; version 14: the mass
    # weights. The reference profiles keep the BatchNorm discriminator, raw scores, no weights
    assert (cpu.disc_lipschitz, cpu.position_centring, cpu.mass_weight) == (128.0, "excess", 1.0)
    assert seed.mass_weight == glass.mass_weight == 0.0
    assert (seed.disc_lipschitz, seed.position_centring) == (glass.disc_lipschitz,
                                                             glass.position_centring) == (0.0, "off")


@pytest.mark.parametrize("bad", [dict(variant="cube"), dict(r1=2.0, r2=1.0), dict(image_size=100),
                                 dict(selection="best"), dict(epochs=0), dict(frame_pad=8),
                                 dict(frame_pad=32, image_size=32),
                                 dict(embedding="edge")])
def test_invalid_settings_name_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GASConfig(**bad)


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        GASConfig.from_dict({**GASConfig().to_dict(), "lr": 1})
    with pytest.raises(ValueError, match="unknown profile"):
        GASConfig.preset("fast")
    assert json.loads(GASConfig().to_json())["backbone"] == "wide_resnet50_2"


def test_fingerprint_follows_the_preset_and_the_method_version(monkeypatch):
    import gas_lib.config as config_module

    cpu = config_module.fingerprint("cpu")
    assert cpu == config_module.fingerprint("cpu") and cpu != config_module.fingerprint("seed")
    monkeypatch.setattr(config_module, "METHOD_VERSION", config_module.METHOD_VERSION + 1)
    bumped = config_module.fingerprint("cpu")
    assert bumped != cpu
    monkeypatch.setitem(config_module.PRESETS, "cpu", dict(config_module.PRESETS["cpu"], r1=1.25))
    assert config_module.fingerprint("cpu") != bumped
