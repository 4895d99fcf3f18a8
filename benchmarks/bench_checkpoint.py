"""Bytes and seconds per pre-training checkpoint, on 1 and on N CPU ranks (prints figures; not a test).

    .venv/bin/python benchmarks/bench_checkpoint.py [--cache-dir DIR] [--work DIR]
        [--presets audioset-audiontt,audioset-vitc-b] [--ranks 1,4] [--steps 2] [--batch-size 8]
        [--precision fp32] [--keep]

Runs the real ``python -m training.pretrain`` (and ``torchrun --standalone --nproc_per_node=N -m
training.pretrain`` for N > 1: gloo on the CPU) for each preset at its real model size, with a batch
and a step count small enough for a CPU, on a small synthetic prepared corpus (32 clips, built once in
the cache dir with ``benchmarks/bench_data.py``'s helper). For each run it reports:

* pretrain's closing line "checkpoints: N written in the background; the last, X MB, took Y s"
  (Y: from the snapshot handed to the background writer to the file renamed into place);
* the snapshot copy that precedes it on the training thread (``engine.checkpoint_state`` copies every
  tensor to fresh CPU memory), timed here with ``engine._cpu_copy`` on the saved model and optimiser
  (median of 3; on a CPU run this is what a checkpoint costs the training loop itself);
* the size of ``checkpoints/last.pt`` and what it holds (tensor bytes of the model and optimiser, and
  the serialised size of all ranks' own state; read with ``torch.load(mmap=True)``);
* the old design's size for comparison: the same file plus every rank's full mixup bank
  (``mixup_bank_size x 1 x n_mels x crop_frames x 4`` bytes per rank), which checkpoints stored
  before the bank was saved as batch positions;
* the wall time of the run and the peak memory of all its processes together (sum of each process's
  PSS, sampled every 0.25 s), with the lowest MemAvailable seen (the machine's, so other jobs count).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import default_cache_dir, load_avg, prepared_corpus  # noqa: E402

from training import engine  # noqa: E402
from training.config import build_config  # noqa: E402
from training.data import ShardDataset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLOSING = re.compile(r"checkpoints: (\d+) written in the background; the last, ([\d.]+) MB, took ([\d.]+) s")


# ---- memory of a process tree ------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def _pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between the processes sharing them)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class MemorySampler(threading.Thread):
    """Peak total PSS of a process tree and the lowest MemAvailable while it runs."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_pss, self.min_available = 0, _mem_available()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_pss = max(self.peak_pss, sum(_pss_bytes(p) for p in _tree(self.pid)))
            self.min_available = min(self.min_available, _mem_available())
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# ---- one run -----------------------------------------------------------------------------------


@dataclass
class Result:
    preset: str
    ranks: int
    params: int
    written: int
    closing_mb: float
    closing_s: float
    file_bytes: int
    parts: dict[str, int]  # tensor bytes per top-level key of the checkpoint
    snapshot_s: float  # the training thread's CPU copy before the background write
    old_bytes: int
    bank_bytes_per_rank: int
    wall_s: float
    peak_pss: int
    min_available: int


def _tensor_bytes(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tensor_bytes(v) for v in tree)
    return 0


def snapshot_seconds(path: Path, repeats: int = 3) -> float:
    """Median time of ``engine._cpu_copy`` over the checkpoint's model and optimiser tensors: the copy
    ``engine.checkpoint_state`` makes on the training thread before the background write (on a CPU
    run a memcpy into fresh memory; on a GPU a device-to-host copy)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors = {k: state[k] for k in ("encoder", "projector", "optimizer")}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        copy = engine._cpu_copy(tensors)
        times.append(time.perf_counter() - start)
        del copy
    del state, tensors
    return statistics.median(times)


def checkpoint_parts(path: Path) -> tuple[dict[str, int], int]:
    """Tensor bytes of the model and optimiser, the serialised size of every rank's own state (data
    position, RNGs, mixup bank record); and the parameter count."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    ranks = io.BytesIO()
    torch.save(state["ranks"], ranks)
    parts = {
        "model": _tensor_bytes(state["encoder"]) + _tensor_bytes(state["projector"]),
        "optimizer": _tensor_bytes(state["optimizer"]),
        "ranks": ranks.tell(),
    }
    params = sum(  # parameters only: not the BatchNorm running statistics
        t.numel()
        for part in ("encoder", "projector")
        for k, t in state[part].items()
        if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))
    )
    del state
    return parts, params


def run_one(
    preset: str, ranks: int, data_dir: Path, n_mels: int, run_dir: Path, overrides: list[str], timeout: float
) -> Result:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = [
        "-m",
        "training.pretrain",
        "--preset",
        preset,
        "--data",
        str(data_dir),
        "--run-dir",
        str(run_dir),
        "--device",
        "cpu",
        "--no-progress",
        *overrides,
    ]
    if ranks == 1:
        cmd = [sys.executable, *args]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", f"--nproc_per_node={ranks}", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = MemorySampler(proc.pid)
    sampler.start()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        sampler.stop()
        raise SystemExit(f"{preset} on {ranks} rank(s) ran past {timeout:.0f} s:\n{output[-4000:]}") from None
    wall = time.perf_counter() - start
    sampler.stop()
    match = CLOSING.search(output)
    if proc.returncode != 0 or match is None:
        raise SystemExit(
            f"{preset} on {ranks} rank(s) failed (exit {proc.returncode}) or printed no checkpoints line:\n"
            f"{output[-4000:]}"
        )
    last = run_dir / "checkpoints" / "last.pt"
    parts, params = checkpoint_parts(last)
    snapshot = snapshot_seconds(last)
    cfg = build_config(preset, overrides)
    bank = cfg.augment.mixup_bank_size * 1 * n_mels * cfg.crop_frames * 4 if cfg.augment.mixup else 0
    size = last.stat().st_size
    return Result(
        preset=preset,
        ranks=ranks,
        params=params,
        written=int(match.group(1)),
        closing_mb=float(match.group(2)),
        closing_s=float(match.group(3)),
        file_bytes=size,
        parts=parts,
        snapshot_s=snapshot,
        old_bytes=size + ranks * bank,
        bank_bytes_per_rank=bank,
        wall_s=wall,
        peak_pss=sampler.peak_pss,
        min_available=sampler.min_available,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="synthetic corpus, shared with bench_data.py (default: %(default)s)",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="run folders (default: CACHE_DIR/bench_checkpoint_runs)"
    )
    parser.add_argument(
        "--presets", default="audioset-audiontt,audioset-vitc-b", help="(default: %(default)s)"
    )
    parser.add_argument("--ranks", default="1,4", help="process counts (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", help="(default: %(default)s)")
    parser.add_argument("--clips", type=int, default=32, help="synthetic clips (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (checkpoints are large)")
    args = parser.parse_args()

    total, available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), _mem_available()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {total / 2**30:.1f} GiB RAM, "
        f"{available / 2**30:.1f} GiB available; load average {load_avg()}"
    )
    data_dir = prepared_corpus(args.cache_dir, args.clips, clips_per_shard=8)
    n_mels = ShardDataset(data_dir).frontend.n_mels
    work = (args.work or args.cache_dir / "bench_checkpoint_runs").resolve()
    overrides = [f"steps={args.steps}", f"batch_size={args.batch_size}", f"precision={args.precision}"]
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    rank_counts = [int(r) for r in args.ranks.split(",") if r.strip()]
    results = []
    for preset in presets:
        for ranks in rank_counts:
            run_dir = work / f"{preset}_{ranks}ranks"
            r = run_one(preset, ranks, data_dir, n_mels, run_dir, overrides, args.timeout)
            results.append(r)
            print(
                f"  {preset}, {ranks} rank(s): {r.written} checkpoint(s), last {r.closing_mb:.1f} MB in "
                f"{r.closing_s:.2f} s (snapshot copy {r.snapshot_s:.2f} s); run {r.wall_s:.0f} s, peak PSS {r.peak_pss / 2**30:.2f} GiB, "
                f"lowest MemAvailable {r.min_available / 2**30:.1f} GiB (load {load_avg()})",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(run_dir)

    print(f"\nSettings: {' '.join(overrides)}; CPU (gloo for several ranks)")
    print(
        "| preset | ranks | params | checkpoint (pretrain's line) | background write s | snapshot copy s | file | model / optimizer / "
        "all ranks' state | old design (+ full mixup banks) | old / new | run wall s | peak PSS, all ranks |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p = r.parts
        print(
            f"| {r.preset} | {r.ranks} | {r.params / 1e6:.1f}M | {r.closing_mb:.1f} MB | {r.closing_s:.2f} | "
            f"{r.snapshot_s:.2f} | "
            f"{r.file_bytes / 1e6:.1f} MB | {p['model'] / 1e6:.1f} MB / {p['optimizer'] / 1e6:.1f} MB / "
            f"{p['ranks'] / 1e3:.1f} kB | {r.old_bytes / 1e6:.1f} MB ({r.ranks} x "
            f"{r.bank_bytes_per_rank / 1e6:.1f} MB) | {r.old_bytes / r.file_bytes:.2f}x | {r.wall_s:.0f} | "
            f"{r.peak_pss / 2**30:.2f} GiB |"
        )
    print(f"load average after: {load_avg()}")


if __name__ == "__main__":
    main()
