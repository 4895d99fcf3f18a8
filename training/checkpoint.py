"""Training checkpoints: everything a resume needs, written atomically, read without unpickling code.

A checkpoint holds only tensors and plain containers (``torch.load(weights_only=True)`` reads it), so
``hear_abt.load_model`` can read a training checkpoint safely too (keys ``format``, ``model_config``,
``encoder``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from hear_abt.weights import TRAINING_CHECKPOINT_FORMAT, atomic_open

CHECKPOINT_VERSION = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"  # best linear-probe score, when the probe monitor is on


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_open(path) as f:
        torch.save({"format": TRAINING_CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hear-abt training checkpoint")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} comes from a newer hear-abt (checkpoint version {state['version']}); upgrade"
        )
    return state


def rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    """Every random stream a step draws from (dropout, augmentations, python)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "augment": aug_gen.get_state(),
        # Python's state is a tuple of ints: stored as a list, which weights_only loading accepts.
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["augment"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
