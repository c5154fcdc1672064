"""Files a fit writes: the training checkpoint it resumes from, and the saved detector.

A training checkpoint (``<checkpoint_dir>/checkpoint_last.pt``, written atomically after every
epoch) holds everything that changes while a fit runs: the heads, both optimisers, the
learning-rate schedulers, the three random generators, the weight average, the history and the
best epoch so far. A fit resumed from it continues with exactly the state an uninterrupted fit
would have had, so it ends with the same weights.

Every file is read with ``torch.load(..., weights_only=True)`` (tensors and plain values only);
a file that cannot be read raises ``CheckpointError`` naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from .config import METHOD_VERSION
from .model import build_heads

if TYPE_CHECKING:
    from .train import GASDetector

CHECKPOINT_NAME = "checkpoint_last.pt"


class CheckpointError(ValueError):
    """A checkpoint or saved detector file that cannot be read; the message names the file."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename, so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_state(path: Path, what: str, map_location: Any = "cpu",
               required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dictionary in ``path`` (tensors and plain values only), with ``required`` keys."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated file, pickled objects, not a torch file at all
        raise CheckpointError(f"cannot read {what} {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not {what}: it holds a {type(state).__name__}")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not {what} this code can read: missing {missing}")
    return state


# --- the saved detector (GASDetector.save / load) -----------------------------------------------
DETECTOR_KEYS = ("config", "adaptor", "discriminator", "selected_epoch", "history")


def detector_state(detector: GASDetector) -> dict[str, Any]:
    """What ``GASDetector.save`` writes: config, the kept heads, history, timings, centres.
    ``load_detector`` reads files without the keys added later (timings, feature_scale,
    rarity_exponent, radius_factor, position_offset, variant_choice, spectral)."""
    spectral = detector.spectral
    return {"config": detector.config.to_dict(), **detector._head_state(),
            "selected_epoch": detector.selected_epoch,
            "history": detector.history.to_dict("list"),
            "timings": dict(detector.timings), **detector._centre_state(),
            "feature_scale": detector.feature_scale,
            "rarity_exponent": detector.rarity_exponent,
            "radius_factor": detector.radius_factor,
            "position_offset": detector.position_offset,
            "variant_choice": detector.variant_choice,
            "spectral": spectral.summary() if spectral is not None else None}


def load_detector(cls: type[GASDetector], path: str | Path, device: str | None = None,
                  pretrained: bool = True) -> GASDetector:
    """A ``cls`` detector from a file ``detector_state`` wrote, in eval mode."""
    state, config = cls.read_saved(path, device, required=DETECTOR_KEYS[1:])
    detector = cls(config, pretrained=pretrained)
    dim = state["adaptor"]["linear.weight"].shape[0]
    detector.adaptor, detector.discriminator = build_heads(dim, config, detector.grid)
    detector._load_head_state(state)
    detector.adaptor.to(detector.device).eval()
    detector.discriminator.to(detector.device).eval()
    detector._restore_centres(state)
    detector.selected_epoch = state["selected_epoch"]
    detector.history = pd.DataFrame(state["history"])
    detector.timings = dict(state.get("timings", {}))
    detector.variant_choice = state.get("variant_choice")
    detector.feature_scale = state.get("feature_scale")
    detector.rarity_exponent = state.get("rarity_exponent")
    detector.radius_factor = float(state.get("radius_factor", 1.0))
    offset = state.get("position_offset", state.get("position_mean"))  # the latter: round 21
    if offset is not None:
        detector.position_offset = offset.to(detector.device)
    return detector


# --- the training checkpoint -----------------------------------------------------------------
@dataclass
class FitState:
    """What a fit changes besides the heads' weights, all of it saved in the checkpoint."""

    opt_adaptor: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    schedulers: list[torch.optim.lr_scheduler.LRScheduler]
    cpu_gen: torch.Generator  # image order per epoch
    dev_gen: torch.Generator  # GAS noise on the device
    las_gen: torch.Generator  # LAS pool sampling
    rows: list[dict[str, float]] = field(default_factory=list)  # history, one row per epoch
    best: dict[str, Any] = field(default_factory=lambda: {"score": -float("inf"),
                                                          "epoch": None, "state": None})


TRAINING_KEYS = ("config", "n_train", "epoch", "adaptor", "discriminator", "opt_adaptor",
                 "opt_disc", "schedulers", "cpu_gen", "dev_gen", "history", "best_score",
                 "best_epoch", "best_state")


def save_training(path: Path, detector: GASDetector, fit: FitState, epoch: int, n_train: int
                  ) -> None:
    """The training checkpoint after ``epoch`` (the same keys since method version 2)."""
    assert detector.adaptor is not None and detector.discriminator is not None
    average = detector._average
    atomic_torch_save({
        "config": detector.config.to_dict(), "method_version": METHOD_VERSION,
        "n_train": n_train, "epoch": epoch,
        "adaptor": detector.adaptor.state_dict(),
        "discriminator": detector.discriminator.state_dict(),
        "opt_adaptor": fit.opt_adaptor.state_dict(), "opt_disc": fit.opt_disc.state_dict(),
        "schedulers": [scheduler.state_dict() for scheduler in fit.schedulers],
        "cpu_gen": fit.cpu_gen.get_state(), "dev_gen": fit.dev_gen.get_state().cpu(),
        **({"las_gen": fit.las_gen.get_state()} if detector.uses_las else {}),
        **({"average": average.state_dict()} if average is not None else {}),
        "history": fit.rows, "best_score": fit.best["score"], "best_epoch": fit.best["epoch"],
        "best_state": fit.best["state"], **detector._centre_state(),
    }, path)


def resume_training(path: Path, detector: GASDetector, fit: FitState, n_train: int
                    ) -> int | None:
    """Load the checkpoint at ``path`` into ``detector`` and ``fit``; the last epoch it
    finished, or None when there is none or it is of another config, training set size or
    method version (then the fit starts afresh)."""
    if not path.exists():
        return None
    state = read_state(path, "a training checkpoint", detector.device)
    if (state.get("config") != detector.config.to_dict() or state.get("n_train") != n_train
            or state.get("method_version") != METHOD_VERSION):
        return None
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing or (detector._average is not None and "average" not in state):
        raise CheckpointError(f"the training checkpoint {path} lacks {missing or ['average']}: "
                              "delete it or fit with resume=False")
    assert detector.adaptor is not None and detector.discriminator is not None
    detector.adaptor.load_state_dict(state["adaptor"])
    detector.discriminator.load_state_dict(state["discriminator"])
    fit.opt_adaptor.load_state_dict(state["opt_adaptor"])
    fit.opt_disc.load_state_dict(state["opt_disc"])
    for scheduler, saved in zip(fit.schedulers, state["schedulers"]):
        scheduler.load_state_dict(saved)
    fit.cpu_gen.set_state(state["cpu_gen"])
    fit.dev_gen.set_state(state["dev_gen"].to(fit.dev_gen.get_state().device))
    if "las_gen" in state:
        fit.las_gen.set_state(state["las_gen"])
    if detector._average is not None:
        detector._average.load_state_dict(state["average"])
    fit.rows = [dict(row) for row in state["history"]]
    fit.best = {"score": state["best_score"], "epoch": state["best_epoch"],
                "state": state["best_state"]}
    detector._restore_centres(state)
    return int(state["epoch"])
