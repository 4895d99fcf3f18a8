"""Processes of a run: which device each rank uses, the process group, and what the ranks agree on.

Under torchrun (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) every rank calls
:func:`setup`. Besides the training backend (NCCL on GPUs, gloo on CPUs) it opens a gloo *control*
group on the CPU: the per-step agreement (stop on a signal, checkpoint now), the probe score and the
gathered per-rank checkpoint records travel there. Waiting on rank 0's slow work (a probe, a
checkpoint write) is then waiting in gloo with its own timeout, never inside an NCCL collective,
whose watchdog would kill the job.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hear_abt.devices import parse_device

DEFAULT_TIMEOUT_MINUTES = 60.0


class LaunchError(ValueError):
    """The processes cannot run as launched; the message says what to change."""


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    control: Any = None  # the gloo control group (None with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int | None) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise LaunchError(f"environment variable {name}={text!r} is not an integer") from None


def select_device(device_arg: str | None, local_rank: int | None) -> torch.device:
    """The device of this process: ``cuda`` means ``cuda:LOCAL_RANK`` (``cuda:0`` without a launcher).

    ``local_rank`` is ``LOCAL_RANK`` as a launcher set it, or None when no launcher did. An explicit
    ``cuda:N`` that disagrees with it is refused: under torchrun it would put every rank on GPU N.
    """
    if device_arg is None:
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = parse_device(device_arg)
    except ValueError as err:
        raise LaunchError(f"--device {err}") from None
    if device.type != "cuda":
        return device
    index = local_rank if local_rank is not None else 0
    if device.index is not None and local_rank is not None and device.index != local_rank:
        raise LaunchError(
            f"--device {device_arg}: this process has LOCAL_RANK={local_rank}, so it uses cuda:{local_rank}; "
            f"an explicit index would put every rank on GPU {device.index}. Pass --device cuda (each rank "
            "takes cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES."
        )
    if device.index is not None:
        index = device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise LaunchError(
            f"LOCAL_RANK={index} needs cuda:{index}, but only {count} CUDA device(s) are visible to this "
            f"process: start at most {count} processes per node (torchrun --nproc_per_node={count})"
        )
    return torch.device("cuda", index)


def setup(device_arg: str | None, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Processes:
    """Rank, world size and device of this process; the process groups under a launcher."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", None)
    if not 0 <= rank < world_size:
        raise LaunchError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    if timeout_minutes <= 0:
        raise LaunchError(f"--dist-timeout-minutes must be > 0, got {timeout_minutes}")
    device = select_device(device_arg, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # always with an index: set_device refuses a bare "cuda"
    control = None
    if world_size > 1:
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timeout)
        control = (
            dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else dist.group.WORLD
        )
    return Processes(rank, world_size, local_rank or 0, device, control)


def agree(procs: Processes, flags: list[int]) -> list[int]:
    """Element-wise max of every rank's ``flags`` (ints), on the CPU control group: all ranks get the same."""
    if procs.world_size == 1:
        return flags
    t = torch.tensor(flags, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=procs.control)
    return t.tolist()


def broadcast(procs: Processes, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (through the control group)."""
    if procs.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=procs.control)
    return box[0]


def gather(procs: Processes, value: Any) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on rank 0; None elsewhere."""
    if procs.world_size == 1:
        return [value]
    out: list[Any] | None = [None] * procs.world_size if procs.is_main else None
    dist.gather_object(value, out, dst=0, group=procs.control)
    return out


def leave_together(procs: Processes, timeout_s: float = 600.0) -> None:
    """Return once every rank has got here: call it after the last collective, before tearing down.

    A gloo rank that closes its sockets while a peer still reads its last collective's data makes the
    peer abort (SIGABRT, no Python traceback): seen once in CI on a loaded 2-core machine. The ranks
    are counted in the launcher's key-value store, not in a collective (c10d's default store has no
    public accessor). A store that is gone while this rank waits (launchers where rank 0 hosts it)
    means rank 0 saw every rank here and left: then this rank leaves too.
    """
    if procs.world_size == 1:
        return
    store = dist.distributed_c10d._get_default_store()
    key = "hear_abt/ranks_done"
    store.add(key, 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if store.add(key, 0) >= procs.world_size:
                return
        except (RuntimeError, OSError):  # DistStoreError and DistNetworkError are RuntimeErrors
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {procs.rank}: the other ranks did not finish within {timeout_s:g} s")
        time.sleep(0.01)


def check_shared_folders(procs: Processes, run_dir: Path, data_dir: Path | None) -> None:
    """Every rank must see rank 0's run folder (checkpoints are written once, read by all) and the data.

    Rank 0 writes a fresh token into the run folder; each rank reads it back. On nodes that do not
    share that filesystem the check fails on every rank with a message, instead of ranks resuming
    from different checkpoints or hanging.
    """
    if procs.world_size == 1:
        return
    token_path = run_dir / f".shared-check-{os.getpid()}"
    token = uuid.uuid4().hex if procs.is_main else None
    if procs.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        token_path.write_text(token)
    token, token_name = broadcast(procs, (token, token_path.name))
    problems = []
    try:
        seen = (run_dir / token_name).read_text()
    except OSError:
        seen = None
    if seen != token:
        problems.append(f"--run-dir {run_dir}")
    if data_dir is not None and not (data_dir / "manifest.json").is_file():
        problems.append(f"--data {data_dir}")
    report = gather(procs, (procs.rank, socket.gethostname(), problems))
    failed = agree(procs, [int(bool(problems))])[0]
    if procs.is_main:
        token_path.unlink(missing_ok=True)
    if failed:
        lines = []
        if report is not None:
            lines = [f"rank {r} on {host} cannot see {', '.join(p)}" for r, host, p in report if p]
        raise LaunchError(
            "every rank must see the same run and data folders (a filesystem shared by all nodes): "
            + ("; ".join(lines) if lines else "see rank 0's message")
        )
