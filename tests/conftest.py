"""Shared fixtures: a tiny synthetic MPDD-style category and a tiny CPU configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from gas_lib.config import GASConfig  # noqa: E402
from gas_lib.tools.synthetic import make_synthetic_category  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MPDD_ROOT = Path(os.environ.get("GAS_MPDD_ROOT", REPO.parent / "shared" / "data" / "mpdd"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """One small category (64 px, 12 train, 6 good + 6 defective test images)."""
    root = tmp_path_factory.mktemp("mpdd")
    make_synthetic_category(root, "plate", n_train=12, n_test_good=6, n_test_defect=6,
                            image_size=64, seed=0)
    return root


def tiny_config(**overrides) -> GASConfig:
    """The ``cpu`` profile shrunk to seconds: 64 px images, small heads, few epochs, and GAS
    alone unless ``synthesis`` is given (tests that need LAS ask for it)."""
    values = dict(image_size=64, pretrain_embed_dim=64, target_embed_dim=64, disc_hidden=64,
                  epochs=3, batch_size=4, device="cpu", synthesis="gas")
    values.update(overrides)
    return GASConfig.preset("cpu", **values)
