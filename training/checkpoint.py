"""Training checkpoints: everything a resume needs, written atomically, read without unpickling code.

A checkpoint holds only tensors and plain containers (``torch.load(weights_only=True)`` reads it), so
``hear_abt.load_model`` can read a training checkpoint safely too (keys ``format``, ``model_config``,
``encoder``). What goes in it is :func:`training.engine.checkpoint_state`. :class:`CheckpointWriter`
writes on a background thread, so rank 0's disk time does not hold up training.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hear_abt.fileio import atomic_open
from hear_abt.weights import TRAINING_CHECKPOINT_FORMAT

# 3: each rank's mixup bank as the positions of the batches that filled it (rebuilt on resume), not
#    its data, so the file does not grow with the number of ranks. 2: per-rank streams in "ranks"
#    (version 1 kept only rank 0's augmentation state). Version 2 files still resume.
CHECKPOINT_VERSION = 3
OLDEST_RESUMABLE = 2


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save, atomically: a kill mid-write leaves the previous checkpoint intact."""
    with atomic_open(path) as f:
        torch.save({"format": TRAINING_CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f)


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """The whole saved training state, to resume from (``hear_abt.weights.load_weights`` reads just its encoder)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a hear-abt training checkpoint")
    version = state.get("version", 0)
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} comes from a newer hear-abt (checkpoint version {version}); upgrade")
    if version < OLDEST_RESUMABLE:
        raise ValueError(
            f"{path} is a version-{version} checkpoint, which cannot resume exactly (it lacks per-rank "
            "state). Its encoder still loads with hear_abt.load_model and exports with training.export."
        )
    return state


@dataclass(frozen=True)
class WriteRecord:
    path: Path
    step: int
    bytes: int
    seconds: float  # from the snapshot handed over to the file renamed into place


class CheckpointWriter:
    """Writes checkpoints on one background thread, one at a time, in order.

    :meth:`submit` takes a snapshot whose tensors are CPU copies (``engine.checkpoint_state``) and
    returns at once; it first waits for the previous write, so at most one snapshot is pending.
    :meth:`wait` returns when everything submitted is on disk, and raises a write's error (a full
    disk, say) in the caller's thread. Each write is atomic, so a kill loses at most the one in flight.
    """

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        self._pending: concurrent.futures.Future | None = None
        self.records: list[WriteRecord] = []

    def _write(self, path: Path, state: dict[str, Any]) -> WriteRecord:
        start = time.perf_counter()
        save_checkpoint(path, state)
        record = WriteRecord(path, int(state["step"]), path.stat().st_size, time.perf_counter() - start)
        self.records.append(record)
        return record

    def submit(self, path: Path, state: dict[str, Any]) -> None:
        self.wait()
        self._pending = self._pool.submit(self._write, path, state)

    def wait(self) -> WriteRecord | None:
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
