"""Training checkpoints: everything a resume needs, written atomically, read without unpickling code.

A checkpoint holds only tensors and plain containers (``torch.load(weights_only=True)`` reads it), so
``hear_abt.load_model`` can read a training checkpoint safely too (keys ``format``, ``model_config``,
``encoder``). What goes in it is :func:`training.engine.checkpoint_state`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hear_abt.fileio import atomic_open
from hear_abt.weights import TRAINING_CHECKPOINT_FORMAT

# 2: per-rank streams in "ranks" (version 1 kept only rank 0's augmentation state).
CHECKPOINT_VERSION = 2


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_open(path) as f:
        torch.save({"format": TRAINING_CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hear-abt training checkpoint")
    version = state.get("version", 0)
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} comes from a newer hear-abt (checkpoint version {version}); upgrade")
    if version < CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is a version-{version} checkpoint, which cannot resume exactly (it lacks per-rank "
            "state). Its encoder still loads with hear_abt.load_model and exports with training.export."
        )
    return state
