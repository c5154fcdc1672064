"""Command line: ``python -m gas_lib train ...``, ``validate ...`` and ``bench ...``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backbone import BackboneUnavailable
from .config import PRESETS, SYNTHESES, TEXTURE_SOURCES, VARIANT_CHOICES, GASConfig
from .data import DataError


def _config(args: argparse.Namespace) -> GASConfig:
    overrides = {}
    for name in ("epochs", "seed", "selection", "device", "image_size", "batch_size",
                 "synthesis", "variant", "texture_source", "texture_root"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "feature_cache_dir", None):
        overrides["feature_cache_dir"] = args.feature_cache_dir
    if getattr(args, "set", None):
        for item in args.set:
            key, _, raw = item.partition("=")
            try:
                overrides[key] = json.loads(raw)
            except json.JSONDecodeError:
                overrides[key] = raw
    if getattr(args, "config", None):
        return GASConfig.from_json(args.config).replace(**overrides)
    return GASConfig.preset(args.profile, **overrides)


def _add_las_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--synthesis", choices=list(SYNTHESES),
                        help="GAS only, LAS only, or both (GLASS); default: the profile's")
    parser.add_argument("--variant", choices=list(VARIANT_CHOICES),
                        help="GAS shell; 'auto' chooses per class from the spectrum")
    parser.add_argument("--texture-source", choices=list(TEXTURE_SOURCES),
                        help="LAS textures (default procedural: offline)")
    parser.add_argument("--texture-root", help="folder of texture images / DTD cache folder")


def _add_fit_options(parser: argparse.ArgumentParser, profiles: list[str]) -> None:
    """What every command that fits a detector on a category needs."""
    parser.add_argument("--data-root", required=True, help="folder holding <category>/train/good")
    parser.add_argument("--category", required=True)
    parser.add_argument("--profile", default="auto", choices=profiles)
    parser.add_argument("--config", help="a config JSON file (replaces --profile)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    _add_las_options(parser)
    parser.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE",
                        help="any config field; repeat --set or list several")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gas_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    profiles = sorted(PRESETS) + ["auto"]

    train = sub.add_parser("train", help="fit on train/good, evaluate on test, write artefacts")
    _add_fit_options(train, profiles)
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--method", choices=["gas", "knn"], default="gas",
                       help="gas (default) or knn: the nearest-neighbour baseline (PatchCore-"
                            "style coreset memory bank, no training), same artefacts")
    train.add_argument("--selection", choices=["last", "validation", "oracle"])
    train.add_argument("--feature-cache-dir")
    train.add_argument("--track-every", type=int, default=0,
                       help="score the test split every N epochs for the curves (monitoring)")
    train.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")

    validate = sub.add_parser(
        "validate", help="compare settings without the test split: fit on part of train/good, "
        "score the held-out images with synthetic defects (never reads test/)")
    _add_fit_options(validate, profiles)
    validate.add_argument("--image-size", type=int)
    validate.add_argument("--fraction", type=float, default=0.2,
                          help="share of train/good held out (default 0.2)")
    validate.add_argument("--copies", type=int, default=2,
                          help="defective copies per held-out image and defect kind")
    validate.add_argument("--out", help="write the table here as JSON")

    bench = sub.add_parser("bench", help="speed and memory table on the current device")
    bench.add_argument("--profile", default="auto", choices=profiles)
    bench.add_argument("--images", type=int, default=32)
    bench.add_argument("--repeats", type=int, default=3,
                       help="timed rounds per measure (median; variants interleaved)")
    bench.add_argument("--data-root")
    bench.add_argument("--category")
    bench.add_argument("--device")
    bench.add_argument("--batch-size", type=int)
    bench.add_argument("--image-size", type=int)
    bench.add_argument("--out", default="bench.json", help="JSON output ('' for none)")
    bench.add_argument("--scaling", action="store_true",
                       help="also time whole fits of GAS and the k-NN baseline against the "
                            "number of training images (JSON key 'scaling')")
    bench.add_argument("--scaling-sizes", type=int, nargs="+", default=[50, 100, 200, 400],
                       metavar="N", help="training-image counts of the --scaling table")
    _add_las_options(bench)
    bench.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    return parser


def _validate(args: argparse.Namespace, config: GASConfig) -> None:
    from .data import load_split
    from .study.report import write_json
    from .study.tuning import validate

    table = validate(config, load_split(args.data_root, args.category, "train"),
                     fraction=args.fraction, copies=args.copies)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.out:
        write_json({"category": args.category, "config": table.attrs["config"],
                    "fraction": args.fraction, "copies": args.copies,
                    "rows": table.to_dict(orient="records")}, args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if args.command == "train":
            from .study.report import train_and_evaluate

            result = train_and_evaluate(args.data_root, args.category, config, args.out,
                                        track_every=args.track_every, resume=not args.no_resume,
                                        method=args.method)
            keys = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max",
                    "train_seconds", "eval_seconds")
            print(json.dumps({k: result[k] for k in keys}, indent=2))
            print(f"method: {result['method']}; selection: {result['selection_label']}; "
                  f"artefacts in {Path(args.out)}")
        elif args.command == "validate":
            _validate(args, config)
        else:
            from .tools.bench import main as bench_main

            bench_main(config, args.images, args.out or None, args.data_root, args.category,
                       args.repeats, args.scaling_sizes if args.scaling else None)
    except (DataError, BackboneUnavailable, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
