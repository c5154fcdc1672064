"""Fetch and unpack the official MPDD archive, for ``run_all.sh`` on a machine without it.

MPDD (Metal Parts Defect Detection, Jezek et al. 2021, licence CC BY-NC-SA 4.0) is published as
one zip of about 2 GB on Google Drive. ``fetch_mpdd`` downloads it with ``gdown`` (installed
on demand), unpacks it and moves the category folders to ``dest`` so that
``dest/<category>/train/good`` exists, whatever top-level folder the archive uses. Without a
network it raises ``DownloadError`` with the URL and the expected layout, so a user can fetch
it by hand.

    python -m gas_lib.tools.download --dest data/anomaly_dataset
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

MPDD_DRIVE_ID = "1b3dcRqTXR7LZkOEkVQ9qO_EcKzzC2EEI"
MPDD_URL = f"https://drive.google.com/file/d/{MPDD_DRIVE_ID}/view"
MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector",
                   "metal_plate", "tubes")
LAYOUT = ("<dest>/<category>/train/good/*.png, <dest>/<category>/test/<good|defect>/*.png, "
          "<dest>/<category>/ground_truth/<defect>/<name>_mask.png")


class DownloadError(RuntimeError):
    """The archive could not be fetched or does not hold MPDD; the message says what to do."""


def has_category(root: str | Path, category: str) -> bool:
    return (Path(root) / category / "train" / "good").is_dir()


def _manual_steps(dest: Path) -> str:
    return (f"download the MPDD zip by hand from {MPDD_URL} and unpack it so that "
            f"{dest}/metal_plate/train/good exists (layout: {LAYOUT}); or pass --data-root to a "
            "folder that already holds it")


def _gdown():
    try:
        return importlib.import_module("gdown")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "gdown"], check=False)
        try:
            return importlib.import_module("gdown")
        except ImportError as err:
            raise DownloadError(f"could not install gdown ({err}); {_manual_steps(Path('.'))}")


def _category_parent(unpacked: Path) -> Path:
    """The folder inside the unpacked archive whose children are the category folders."""
    for good in sorted(unpacked.rglob("train/good")):
        return good.parent.parent.parent
    raise DownloadError(f"{unpacked}: the archive holds no <category>/train/good folder")


def fetch_mpdd(dest: str | Path, *, archive: str | Path | None = None) -> list[str]:
    """Unpack MPDD into ``dest`` (downloading the zip unless ``archive`` is given).

    Returns the categories now present. Existing category folders in ``dest`` are kept.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.download"
    work.mkdir(parents=True, exist_ok=True)
    if archive is None:
        archive = work / "mpdd.zip"
        if not archive.is_file():
            gdown = _gdown()
            partial = work / "mpdd.zip.part"
            try:
                result = gdown.download(id=MPDD_DRIVE_ID, output=str(partial), quiet=False)
            except Exception as err:  # gdown raises many kinds on network trouble
                raise DownloadError(f"download failed ({type(err).__name__}: {err}); "
                                    f"{_manual_steps(dest)}") from None
            if not result or not partial.is_file():
                raise DownloadError(f"download failed; {_manual_steps(dest)}")
            partial.replace(archive)
    archive = Path(archive)
    try:
        with zipfile.ZipFile(archive) as zipped:
            unpacked = work / "unpacked"
            zipped.extractall(unpacked)
    except (OSError, zipfile.BadZipFile) as err:
        raise DownloadError(f"{archive}: not a readable zip ({err}); {_manual_steps(dest)}")
    parent = _category_parent(unpacked)
    for folder in sorted(p for p in parent.iterdir() if (p / "train" / "good").is_dir()):
        target = dest / folder.name
        if not target.exists():
            shutil.move(str(folder), str(target))
    shutil.rmtree(work, ignore_errors=True)
    return sorted(p.name for p in dest.iterdir() if has_category(dest, p.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gas_lib.tools.download", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="data/anomaly_dataset")
    parser.add_argument("--archive", help="an already downloaded MPDD zip")
    args = parser.parse_args(argv)
    try:
        found = fetch_mpdd(args.dest, archive=args.archive)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"MPDD categories in {args.dest}: {', '.join(found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
