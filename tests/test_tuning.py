"""Honest comparison of settings: held-out train/good images with synthetic defects."""

import json
import shutil

import numpy as np
import pytest
import torch

from gas_lib.__main__ import main
from gas_lib.data import load_images, load_split
from gas_lib.study.tuning import (DEFECT_KINDS, KINDS_MEAN, compare, holdout_split, make_defects,
                                  stroke_mask)

from conftest import tiny_config


def test_holdout_split_is_a_fixed_partition():
    fit, held = holdout_split(54, 0.2)
    assert len(held) == 11 and len(fit) == 43
    assert sorted(np.r_[fit, held].tolist()) == list(range(54))
    again_fit, again_held = holdout_split(54, 0.2)
    assert (again_held == held).all() and (again_fit == fit).all()
    assert not np.array_equal(holdout_split(54, 0.2, seed=1)[1], held)
    with pytest.raises(ValueError, match="too few"):
        holdout_split(2, 0.5)


def test_stroke_masks_are_thin_curves_that_differ_by_seed():
    masks = [stroke_mask(256, np.random.default_rng(seed)) for seed in range(20)]
    coverage = np.array([m.mean() for m in masks])
    assert all(m.dtype == bool and m.shape == (256, 256) for m in masks)
    assert coverage.min() > 0.001 and coverage.max() < 0.08
    assert len({m.tobytes() for m in masks}) == 20
    assert np.array_equal(stroke_mask(256, np.random.default_rng(3)), masks[3])


def test_defects_change_only_masked_pixels():
    rng = torch.Generator().manual_seed(0)
    good = torch.rand(2, 3, 64, 64, generator=rng)
    fit_images = torch.rand(3, 3, 64, 64, generator=rng)
    defects = make_defects(good, fit_images, copies=2)
    assert defects.defective.shape == (2 * len(DEFECT_KINDS) * 2, 3, 64, 64)
    assert sorted(set(defects.kinds)) == sorted(DEFECT_KINDS)
    source = good.repeat_interleave(len(DEFECT_KINDS) * 2, dim=0)
    outside = ~defects.masks[:, None].expand_as(source)
    assert torch.equal(defects.defective[outside], source[outside])
    assert all(defects.masks[i].any() for i in range(len(defects.masks)))
    changed = (defects.defective - source).abs().sum(1) > 1e-6
    assert changed[defects.masks].float().mean() > 0.5
    assert defects.defective.min() >= 0 and defects.defective.max() <= 1


def test_object_specks_scratches_and_stains_sit_on_the_object():
    """The "object", "scratches" and "stains" kinds put their defects on the part (MPDD's
    defects are on the part, not on the background cloth), the "specks" kind anywhere in the
    frame; scratches are faint (at most 30 % opacity); stains are larger than specks and shift
    brightness and colour by at most a gain of 25 % and a cast of 0.05 (``shade``)."""
    good = torch.full((2, 3, 128, 128), 0.2)
    good[:, :, 40:100, 50:80] = 0.9  # a bright part on a dark plain background
    part = torch.zeros(128, 128, dtype=torch.bool)
    part[40:100, 50:80] = True
    defects = make_defects(good, good.clone(), copies=8)
    on_object = defects.masks[torch.from_numpy(defects.kinds == "object")]
    anywhere = defects.masks[torch.from_numpy(defects.kinds == "specks")]
    assert on_object.any(dim=(1, 2)).all()
    assert on_object[:, part].sum() / on_object.sum() > 0.8  # spots may overhang the edge
    assert anywhere[:, part].sum() / anywhere.sum() < 0.5  # the part is 11 % of the frame
    scratched = torch.from_numpy(defects.kinds == "scratches")
    scratches = defects.masks[scratched]
    assert scratches.any(dim=(1, 2)).all()
    assert scratches[:, part].sum() / scratches.sum() > 0.8
    source = good.repeat_interleave(len(DEFECT_KINDS) * 8, dim=0)[scratched]
    change = (defects.defective[scratched] - source).abs()
    assert change.max() <= 0.3 * 0.9 + 1e-6  # opacity <= 30 % of a [0, 1] difference
    stained = torch.from_numpy(defects.kinds == "stains")
    stains = defects.masks[stained]
    assert stains.any(dim=(1, 2)).all()
    assert stains[:, ~part].sum() / stains.sum() < 0.1  # at most a rim past the part's edge
    assert stains.sum() > 2 * on_object.sum()  # grown specks
    source = good.repeat_interleave(len(DEFECT_KINDS) * 8, dim=0)[stained]
    inside = stains[:, part]  # [S, pixels of the part]
    part_change = (defects.defective[stained] - source)[:, :, part]  # [S, 3, pixels]
    centre = part_change[:, 0][inside]
    assert centre.abs().max() > 0.05 and centre.abs().max() <= 0.25 * 0.9 + 0.05 + 1e-6


def test_compare_scores_candidates_on_identical_defects(synthetic_root):
    """Two candidates with the same config get identical numbers (same split, same defects,
    seeded fit); a different config gets its own; every metric is a real probability."""
    images = load_images([s.image_path for s in load_split(synthetic_root, "plate", "train")], 64)
    table = compare(tiny_config(synthesis="gas+las", las_variants=1),
                    {"base": {}, "again": {}, "gas only": {"synthesis": "gas"}}, images,
                    fraction=0.25, progress=False)
    assert list(table["candidate"].unique()) == ["base", "again", "gas only"]
    assert set(table["defects"]) == {"all", *DEFECT_KINDS, KINDS_MEAN}
    for _, rows in table.groupby("candidate"):  # the last row weighs every kind alike
        kinds = rows[rows["defects"].isin(DEFECT_KINDS)]
        mean = rows[rows["defects"] == KINDS_MEAN]
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            assert mean[metric].item() == pytest.approx(kinds[metric].mean())
    metrics = ["image_auroc", "pixel_auroc", "aupro", "pixel_ap"]
    base, again = (table[table.candidate == c][metrics].to_numpy() for c in ("base", "again"))
    np.testing.assert_allclose(base, again)
    gas_only = table[table.candidate == "gas only"][metrics].to_numpy()
    assert not np.allclose(base, gas_only)
    assert ((table[metrics] >= 0) & (table[metrics] <= 1)).all().all()
    assert (table["fit_images"] == 9).all() and (table["held_out_images"] == 3).all()
    assert (table["fit_seconds"] > 0).all()


def test_validate_cli_never_reads_the_test_split(synthetic_root, tmp_path, capsys):
    """Every test image and mask is replaced by garbage: validate must not notice."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_root / "plate", root / "plate")
    spoiled = [f for sub in ("test", "ground_truth") for f in (root / "plate" / sub).rglob("*")
               if f.is_file()]
    assert spoiled
    for path in spoiled:
        path.write_bytes(b"not an image")
    out = tmp_path / "validation.json"
    code = main(["validate", "--data-root", str(root), "--category", "plate", "--profile", "cpu",
                 "--epochs", "2", "--device", "cpu", "--fraction", "0.25", "--out", str(out),
                 "--set", "image_size=64", "pretrain_embed_dim=64", "target_embed_dim=64",
                 "disc_hidden=64"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "strokes" in printed and "pixel_auroc" in printed
    record = json.loads(out.read_text())
    assert record["config"]["image_size"] == 64 and len(record["rows"]) == len(DEFECT_KINDS) + 2
