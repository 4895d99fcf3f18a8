"""A run directory: its settings file, its lock, and where checkpoints, logs and images go.

run.json               the run's settings (preset, data folder, full training config)
checkpoints/last.pt    everything a resume needs; best.pt with the probe monitor
weights/step-NNNNNN/   encoder weights kept along the way (keep_weights_at), folders load_model reads
metrics.csv, tb/, images/, probe.csv
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hear_abt.fileio import atomic_write_text

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"  # best linear-probe score, when the probe monitor is on


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / LAST_NAME

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / BEST_NAME

    def weights_at(self, step: int) -> Path:
        return self.path / "weights" / f"step-{step:06d}"

    def read_run(self) -> dict[str, Any]:
        if not self.run_file.is_file():
            raise RunDirError(f"{self.run_file} not found: there is no run to resume in {self.path}")
        return json.loads(self.run_file.read_text())

    def write_run(self, run: dict[str, Any]) -> None:
        atomic_write_text(self.run_file, json.dumps(run, indent=2) + "\n")

    def lock(self) -> RunLock:
        return RunLock(self.path / LOCK_FILE)


class RunLock:
    """An exclusive lock on a run directory for as long as the process lives (or until released).

    Uses ``flock``: the kernel drops it when the process dies, so a killed run never leaves a stale
    lock behind, and a second process on the same directory is refused at once.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 128).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent} is in use by {holder}: two runs cannot share a run directory. "
                "Wait for it to finish, stop it, or choose another --run-dir."
            ) from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP...: a filesystem without flock (some NFS, FUSE)
            os.close(fd)
            raise RunDirError(
                f"cannot lock {self.path} ({err.strerror or err}): the filesystem of --run-dir does not "
                "support flock, so this run cannot make sure it is the only one writing there. Put the run "
                "directory on a filesystem with locking (local disk, NFSv4, Lustre mounted with -o flock), "
                "or pass --no-lock if your scheduler guarantees one job per run directory."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
