"""The bar the study promises, on real MPDD images: skipped only when they are absent."""

import pytest

from gas_lib.config import GASConfig
from gas_lib.study.report import train_and_evaluate

from conftest import MPDD_ROOT

METAL_PLATE = MPDD_ROOT / "metal_plate"


@pytest.mark.realdata
@pytest.mark.skipif(not (METAL_PLATE / "train" / "good").is_dir(),
                    reason=f"real MPDD metal_plate not present at {METAL_PLATE}")
def test_cpu_profile_on_real_metal_plate(tmp_path):
    result = train_and_evaluate(MPDD_ROOT, "metal_plate", GASConfig.preset("cpu"), tmp_path,
                                progress=False)
    print({k: result[k] for k in ("image_auroc", "pixel_auroc", "aupro", "train_seconds")})
    assert result["selection"] == "last"
    assert result["image_auroc"] >= 0.99
    assert result["pixel_auroc"] >= 0.98
