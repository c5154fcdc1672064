import json
import subprocess
import sys

import pytest
import torch

from gas_lib.__main__ import _config, _parser, main
from gas_lib.config import METHOD_VERSION, native_bf16


def test_train_writes_metrics_plots_and_checkpoint(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data-root", str(synthetic_root), "--category", "plate",
                 "--profile", "cpu", "--out", str(out), "--epochs", "2", "--device", "cpu",
                 "--set", "image_size=64", "pretrain_embed_dim=64", "target_embed_dim=64"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max",
                "train_seconds", "eval_seconds", "selection", "config", "environment"):
        assert key in metrics, key
    assert metrics["selection"] == "last" and "honest" in metrics["selection_label"]
    assert metrics["method"] == "gas"  # the default; --method knn: tests/test_knn.py
    assert metrics["config"]["image_size"] == 64 and metrics["environment"]["torch"]
    assert metrics["method_version"] == METHOD_VERSION
    native = native_bf16(torch.device("cpu"))  # amp and backbone_bf16 on, as in the profile
    assert metrics["bf16_backbone"] == metrics["bf16_training"] == native
    for name in ("training_curves_plate.png", "roc_curve_plate.png", "best_model_plate.pth",
                 "history.csv", "per_defect.csv", "anomaly_maps_plate.png"):
        assert (out / name).stat().st_size > 0, name
    assert "image_auroc" in capsys.readouterr().out


def test_repeated_set_options_all_apply():
    """``--set a=1 --set b=2`` keeps both (a plain ``nargs="*"`` kept only the last one)."""
    args = _parser().parse_args(["train", "--data-root", "d", "--out", "o", "--category", "plate",
                                 "--profile", "cpu",
                                 "--set", "image_size=256", "--set", "images_per_epoch=48",
                                 "ema_decay=0.9"])
    config = _config(args)
    assert (config.image_size, config.images_per_epoch, config.ema_decay) == (256, 48, 0.9)


@pytest.mark.parametrize("args, expected", [
    (["--category", "nothere"], "nothere"),
    (["--category", "plate", "--set", "variant=cube"], "variant"),
])
def test_train_errors_are_one_line(synthetic_root, tmp_path, capsys, args, expected):
    code = main(["train", "--data-root", str(synthetic_root), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and expected in err
    assert len(err.splitlines()) == 1


def test_bench_prints_the_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "gas_lib", "bench", "--profile", "cpu", "--images", "4",
         "--image-size", "64", "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for measure in ("backbone features", "epoch gas, cached features", "speed-up of gas caching",
                    "inference end to end", "peak RSS"):
        assert measure in result.stdout
    rows = {r["measure"]: r["value"] for r in json.loads(out.read_text())["rows"]}
    # a ratio of two timings: present and positive here; how large it is, is the bench's to
    # report on a quiet machine (a timed assertion fails whenever other jobs share the cores)
    assert rows["speed-up of gas caching vs reference epoch"] > 0
