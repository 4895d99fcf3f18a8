"""Lock files for jobs that share a folder, on one machine or several: each lock is a file created
with O_CREAT | O_EXCL that names its holder, and is taken over only from a holder that is provably gone.

Used by ``training.prepare`` (one lock per shard, and one for the manifest), where several processes
or machines work on one output folder at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from hear_abt.fileio import DiskFullError, is_disk_full

logger = logging.getLogger("training.prepare")


class LockError(RuntimeError):
    """A lock file prepare needs is held by another job that may be running, or cannot be created."""


# A shard is built only by the job holding its lock file, shards/shard-NNNNNN.lock, created with
# O_CREAT | O_EXCL (atomic on local filesystems and on NFS v3+, unlike flock on some network
# filesystems). The file names its holder: host, boot id, pid namespace, pid and the process's start
# time. A lock is taken over only when its holder is provably gone: same host and pid namespace but
# no such process (or the pid now belongs to a younger process), or same host name but another boot
# (the machine restarted). A holder on another machine is never judged: its lock must be removed by
# hand if that job died. The same holds for manifest.lock, held by the command without --part.
# Temporaries (hear_abt.fileio names them .shard-NNNNNN.npy.<random>.tmp) belong to the lock's
# holder, so a job removes a shard's temporaries only after taking its lock: another job's are safe.


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """(state, start time in clock ticks since boot) of a process, from /proc (Linux), else None."""
    text = _read_text(f"/proc/{pid}/stat")
    if text is None:
        return None
    fields = text.rsplit(")", 1)[-1].split()  # after "pid (comm)", which may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _this_machine() -> dict[str, str]:
    pidns = ""
    with contextlib.suppress(OSError):
        pidns = os.readlink("/proc/self/ns/pid")
    return {
        "host": socket.gethostname(),
        "boot": (_read_text("/proc/sys/kernel/random/boot_id") or "").strip(),
        "pidns": pidns,
    }


def _new_owner() -> dict[str, Any]:
    stat = _proc_stat(os.getpid())
    return {
        **_this_machine(),
        "pid": os.getpid(),
        "start": stat[1] if stat else None,
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": uuid.uuid4().hex,  # makes every lock's content unique (take-over compares it)
    }


def _read_lock(path: Path) -> Optional[dict[str, Any]]:
    """The holder a lock file names; None when there is no lock; {} when it is empty or unreadable
    (being written this instant, or left by a crash: treated as held)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_gone(holder: dict[str, Any], machine: dict[str, str]) -> bool:
    """True only when the lock's holder is certainly no longer running."""
    if not holder or holder.get("host") != machine["host"]:
        return False
    if holder.get("boot") and machine["boot"] and holder["boot"] != machine["boot"]:
        return True  # this machine has restarted since: every process of that boot is gone
    if holder.get("pidns") != machine["pidns"]:
        return False  # another container's pids are not ours to look up
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's)
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return False
    state, start = stat
    return state == "Z" or (holder.get("start") is not None and start != holder["start"])


def describe_holder(holder: Optional[dict[str, Any]]) -> str:
    if not holder:
        return "a job whose lock file is empty or unreadable"
    return f"host {holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}"


# A take-over guard lives for microseconds; one older than this was left by a crash.
_TAKEOVER_GUARD_STALE_S = 600.0


def _create_exclusive(path: Path, owner: dict[str, Any]) -> bool:
    """Create ``path`` holding ``owner``; False if it exists. Other OSErrors become clear errors."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path, err) from err
        raise LockError(
            f"cannot create the lock file {path}: {err.strerror or err}. prepare locks each shard with a "
            "file created exclusively (O_EXCL): OUT_DIR must be writable, on a filesystem that supports that"
        ) from err
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(owner))
    return True


def _take_over(path: Path, holder: dict[str, Any], owner: dict[str, Any]) -> None:
    """Remove the lock of a gone holder, unless another job did so (and took it) first.

    A guard file (created exclusively) makes the check-then-remove one job's at a time, so a lock
    that a second job has just taken is never removed in its place.
    """
    guard = path.with_name(path.name + ".takeover")
    if not _create_exclusive(guard, owner):
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _TAKEOVER_GUARD_STALE_S:
                guard.unlink()
        return
    try:
        if _read_lock(path) == holder:
            path.unlink(missing_ok=True)
            logger.warning("took over %s from %s: that process is gone", path.name, describe_holder(holder))
    finally:
        guard.unlink(missing_ok=True)


def _try_lock(path: Path, owner: dict[str, Any], machine: dict[str, str]) -> Optional[dict[str, Any]]:
    """Take lock file ``path``: None when taken, else its live (or unjudgeable) holder."""
    holder: Optional[dict[str, Any]] = {}
    for _ in range(5):
        if _create_exclusive(path, owner):
            return None
        holder = _read_lock(path)
        if holder is None:
            continue  # released meanwhile
        if not _holder_gone(holder, machine):
            return holder
        _take_over(path, holder, owner)
    return holder or {}


def _unlock(path: Path, owner: dict[str, Any]) -> None:
    if _read_lock(path) == owner:  # never another job's (one that took it over from us)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held():
    """Defer SIGTERM and SIGINT (delivered on exit) where the platform allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class LockSet:
    """The lock files one prepare call holds; all released on exit, also on errors."""

    def __init__(self) -> None:
        self.machine = _this_machine()
        self.owner = _new_owner()
        self.held: list[Path] = []

    def take(self, path: Path) -> Optional[dict[str, Any]]:
        # A SIGTERM handled between creating the file and recording it here would leak the lock
        # (found by a test under load): the signals wait until the lock is recorded.
        with _signals_held():
            holder = _try_lock(path, self.owner, self.machine)
            if holder is None:
                self.held.append(path)
        return holder

    def __enter__(self) -> LockSet:
        return self

    def __exit__(self, *exc: object) -> None:
        for path in reversed(self.held):
            with contextlib.suppress(OSError):
                _unlock(path, self.owner)
        self.held.clear()
