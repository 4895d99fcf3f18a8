"""Processes of a run without a GPU: device selection with torch.cuda faked, the run lock on a filesystem
without flock, and the shared-folder check across two real gloo ranks."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training import distributed
from training.run_dir import RunDir, RunDirError


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with ``n`` CUDA devices as far as torch.cuda's queries go; records set_device calls."""
    calls = []

    def install(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        # torch's own check: set_device refuses a device without an index (the crash this guards against).
        monkeypatch.setattr(
            torch.cuda, "set_device", lambda d: calls.append(torch.cuda._utils._get_device_index(d))
        )
        return calls

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return install


def launch(monkeypatch, rank: int, world: int, local: int) -> None:
    """The environment torchrun gives a rank (setup() is then asked for one rank only: no process group)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", str(local))


def test_one_process_cuda_means_cuda_0_and_cuda_n_is_kept(fake_cuda):
    calls = fake_cuda(2)
    assert distributed.setup("cuda").device == torch.device("cuda", 0)
    assert distributed.setup(None).device == torch.device("cuda", 0)  # default: cuda when available
    assert distributed.setup("cuda:1").device == torch.device("cuda", 1)
    assert calls == [0, 0, 1]  # always an index: set_device(torch.device("cuda")) raises in torch


@pytest.mark.parametrize("local", [0, 1, 3])
def test_under_torchrun_cuda_means_cuda_local_rank(fake_cuda, monkeypatch, local):
    calls = fake_cuda(4)
    monkeypatch.setenv("LOCAL_RANK", str(local))  # WORLD_SIZE unset: 1, so no process group is made
    assert distributed.select_device("cuda", local) == torch.device("cuda", local)
    assert distributed.setup("cuda").device == torch.device("cuda", local)
    assert distributed.setup(None).device == torch.device("cuda", local)
    assert distributed.setup(f"cuda:{local}").device == torch.device("cuda", local)  # agrees: accepted
    assert calls == [local] * 3


def test_an_index_that_disagrees_with_local_rank_is_refused(fake_cuda, monkeypatch):
    fake_cuda(4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(distributed.LaunchError, match=r"LOCAL_RANK=2, so it uses cuda:2.*--device cuda"):
        distributed.setup("cuda:0")


def test_more_ranks_per_node_than_gpus_is_refused(fake_cuda, monkeypatch):
    fake_cuda(2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(distributed.LaunchError, match=r"only 2 CUDA device\(s\).*--nproc_per_node=2"):
        distributed.setup("cuda")


def test_no_cuda_and_bad_devices_and_bad_environment_are_refused(fake_cuda, monkeypatch):
    fake_cuda(0)
    assert distributed.setup(None).device == torch.device("cpu")
    with pytest.raises(distributed.LaunchError, match="sees no CUDA device"):
        distributed.setup("cuda")
    with pytest.raises(distributed.LaunchError, match="is not a torch device"):
        distributed.setup("warp-drive")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(distributed.LaunchError, match="RANK='x' is not an integer"):
        distributed.setup("cpu")
    launch(monkeypatch, 2, 2, 0)
    with pytest.raises(distributed.LaunchError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        distributed.setup("cpu")


def test_a_filesystem_without_flock_is_a_clear_error(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(RunDirError, match=r"does not support flock.*--no-lock"):
        RunDir(tmp_path / "run").lock().acquire()


def test_the_lock_names_its_holder(tmp_path):
    with RunDir(tmp_path / "run").lock():
        with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()} on {socket.gethostname()}"):
            RunDir(tmp_path / "run").lock().acquire()


def _shared_check_rank(rank: int, port: int, run_dirs: list, data_dir, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ["LOCAL_RANK"] = str(rank)
    procs = distributed.setup("cpu", timeout_minutes=2)
    try:
        distributed.check_shared_folders(procs, run_dirs[rank], data_dir)
        out.put((rank, "ok"))
    except distributed.LaunchError as err:
        out.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("shared", [True, False])
def test_ranks_that_do_not_share_the_run_folder_fail_together_with_a_message(tmp_path, shared):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    # Rank 1 looking at another folder is what a node without the shared filesystem sees.
    run_dirs = [tmp_path / "run", tmp_path / "run"] if shared else [tmp_path / "run", tmp_path / "elsewhere"]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    workers = [ctx.Process(target=_shared_check_rank, args=(r, port, run_dirs, data, out)) for r in range(2)]
    for w in workers:
        w.start()
    results = dict(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    if shared:
        assert results == {0: "ok", 1: "ok"}
        assert not list((tmp_path / "run").glob(".shared-check-*"))  # the token is removed
    else:
        assert "rank 1 on" in results[0] and "cannot see --run-dir" in results[0]
        assert "filesystem shared by all nodes" in results[1]


def test_leave_together_waits_for_every_rank_then_lets_all_go(monkeypatch):
    """Ranks counted in the launcher's store: the first to arrive waits until the last has arrived
    (no rank tears its sockets down while a peer may still read); a rank alone times out, saying so;
    a store gone while waiting (rank 0 hosted it and left, having seen everyone) lets it leave."""
    import threading
    import time

    store = dist.HashStore()
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: store)
    left = {}

    def rank(r, delay):
        time.sleep(delay)
        distributed.leave_together(distributed.Processes(r, 3, r, torch.device("cpu")), timeout_s=30)
        left[r] = time.monotonic()

    threads = [threading.Thread(target=rank, args=(r, d)) for r, d in [(0, 0.0), (1, 0.1), (2, 0.6)]]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert min(left.values()) - start >= 0.6  # nobody left before rank 2 arrived

    alone = dist.HashStore()
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: alone)
    with pytest.raises(RuntimeError, match="rank 1: the other ranks did not finish within 0.2 s"):
        distributed.leave_together(distributed.Processes(1, 2, 1, torch.device("cpu")), timeout_s=0.2)

    class Gone:
        calls = 0

        def add(self, key, n):
            Gone.calls += 1
            if Gone.calls > 1:
                raise RuntimeError("Connection reset by peer")
            return 1

    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: Gone())
    distributed.leave_together(distributed.Processes(1, 2, 1, torch.device("cpu")), timeout_s=30)
    assert Gone.calls == 2
