"""Crops per second of the pre-training reader (training.data.CropSampler), warm and cold (prints figures; not a test).

    .venv/bin/python benchmarks/bench_data.py [--cache-dir DIR] [--clips N] [--clips-per-shard N]
        [--threads 1,default,2,4] [--batch 128] [--crops 96] [--warm-batches 200] [--warm-repeats 3]
        [--cold-repeats 3] [--torch-threads N]

Builds (once, then reuses) a synthetic corpus of noisy tone clips of 1-10 s and prepares it into many
small shards with ``training.prepare`` (default 2048 clips, 8 per shard: 256 shards, ~140 MB). Then
times the prefetching iterator exactly as the trainer uses it (``for crops in sampler``, ``prefetch=4``
as in ``training.engine.build``) with 1 reader thread, the default count
(``training.data.default_reader_threads()``) and any others asked for:

* reader: the consumer only takes each ``RawCrops`` (float16 frames + ``inside`` mask);
* reader + to_input: the consumer also runs ``RawCrops.to_input(cpu, norm)`` (cast, transpose,
  silence fill, normalisation), which a GPU run does on the device; on the CPU it competes with the
  reader threads for the same cores, so this is the CPU-training figure;
* to_input alone: that conversion on one pre-built batch, repeated.

Warm: the shards are in the page cache (read once before); the median of ``--warm-repeats`` passes
of ``--warm-batches`` batches (several epochs each). Cold: before each timed epoch every shard file's
pages are dropped with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (the dataset is reopened first: pages
mapped by a live memory map are not dropped), the residency of the shard files is checked with ``mincore`` (fraction of pages
in the page cache, before and after the drop), and one epoch (every clip read once) is timed; the same
epoch is then timed again warm, on identical crops, to show the difference. On a VM the host may still
cache the disk image, so "cold" means a miss in this machine's page cache, not necessarily a disk seek.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import mmap
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from hear_abt.config import SAMPLE_RATE
from training.data import CropSampler, ShardDataset, default_reader_threads
from training.prepare import prepare

TRAINER_PREFETCH = 4  # training.engine.build's default


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hear-abt" / "bench_data"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- corpus ------------------------------------------------------------------------------------


def _make_corpus(folder: Path, clips: int, max_seconds: float) -> None:
    """``clips`` noisy tones of 1 to ``max_seconds`` s; clip i is the same whatever else exists."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        path = folder / f"clip_{i:05d}.wav"
        if path.exists():
            continue
        rng = np.random.default_rng([0, i])
        n = int(SAMPLE_RATE * rng.uniform(1.0, max_seconds))
        t = np.arange(n) / SAMPLE_RATE
        wav = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(n)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, wav.astype(np.float32), SAMPLE_RATE)
        tmp.rename(path)  # a killed run leaves no truncated clip behind


def prepared_corpus(
    cache_dir: Path, clips: int, clips_per_shard: int, max_seconds: float = 10.0, workers: int = 2
) -> Path:
    """The shards folder of a synthetic corpus in ``cache_dir``, built on first use and reused after."""
    cache_dir = cache_dir.resolve()
    wav = cache_dir / f"wav_{clips}_{max_seconds:g}s"
    shards = cache_dir / f"shards_{clips}_{max_seconds:g}s_{clips_per_shard}"
    start = time.perf_counter()
    _make_corpus(wav, clips, max_seconds)
    summary = prepare(wav, shards, workers=workers, clips_per_shard=clips_per_shard, progress=False)
    size = sum(p.stat().st_size for p in (shards / "shards").glob("*.npy"))
    print(
        f"corpus: {summary.clips} clips, {summary.hours:.2f} h in {summary.shards} shards, "
        f"{size / 1e6:.0f} MB ({shards}; built or reused in {time.perf_counter() - start:.1f} s)"
    )
    return shards


def shard_files(dataset: ShardDataset) -> list[Path]:
    records = [r for r in dataset.manifest["shards"] if r["clips"] > 0]
    return [dataset.data_dir / r["data"] for r in records]


# ---- page cache --------------------------------------------------------------------------------


def drop_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to drop the files' clean cached pages (pages mapped by a process stay)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


class _Mincore:
    """Fraction of a set of files' pages in the page cache (``mincore`` on a fresh, untouched map)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.mmap, self.mincore, self.munmap = libc.mmap, libc.mincore, libc.munmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.page = mmap.PAGESIZE

    def resident(self, paths: list[Path]) -> float:
        total = resident = 0
        for path in paths:
            size = path.stat().st_size
            if size == 0:
                continue
            pages = -(-size // self.page)
            fd = os.open(path, os.O_RDONLY)
            try:
                addr = self.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
                if addr in (None, ctypes.c_void_p(-1).value):
                    raise OSError(ctypes.get_errno(), f"mmap {path}")
                try:
                    vec = (ctypes.c_ubyte * pages)()
                    if self.mincore(addr, size, vec) != 0:
                        raise OSError(ctypes.get_errno(), f"mincore {path}")
                    resident += sum(v & 1 for v in vec)
                finally:
                    self.munmap(addr, size)
            finally:
                os.close(fd)
            total += pages
        return resident / max(total, 1)


def resident_fraction(paths: list[Path]) -> float | None:
    """Fraction of the files' pages in the page cache, or None where mincore is unavailable."""
    try:
        return _Mincore().resident(paths)
    except (OSError, AttributeError, TypeError):
        return None


# ---- timing ------------------------------------------------------------------------------------


@dataclass
class Pass:
    crops: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.crops / self.seconds


def timed_pass(sampler: CropSampler, n_batches: int, convert: bool) -> Pass:
    """``n_batches`` from the sampler's current position through ``for crops in sampler`` (the
    trainer's loop); with ``convert`` each batch is also made float32 model input on the CPU."""
    device, norm = torch.device("cpu"), sampler.dataset.norm
    produced = crops = 0
    start = time.perf_counter()
    while produced < n_batches:
        for raw in sampler:
            if convert:
                raw.to_input(device, norm)
            produced += 1
            crops += len(raw)
            if produced == n_batches:
                break
    return Pass(crops, time.perf_counter() - start)


def warm_rate(
    dataset: ShardDataset,
    batch: int,
    crop: int,
    threads: int,
    n_batches: int,
    convert: bool,
    repeats: int = 3,
    seed: int = 0,
) -> float:
    """Median crops/s over ``repeats`` passes of the prefetching iterator on page-cached shards
    (call warm_page_cache first)."""
    sampler = CropSampler(dataset, batch, crop, seed=seed, prefetch=TRAINER_PREFETCH, threads=threads)
    timed_pass(sampler, min(2, len(sampler)), convert)  # epoch permutation, first pool start
    return statistics.median(timed_pass(sampler, n_batches, convert).rate for _ in range(repeats))


def to_input_rate(dataset: ShardDataset, batch: int, crop: int, calls: int = 50, repeats: int = 3) -> float:
    """Median crops/s of ``RawCrops.to_input(cpu, norm)`` on one pre-built batch (``calls`` per pass)."""
    raw = CropSampler(dataset, batch, crop, seed=1, prefetch=0).batch_at(0, 0)
    device, norm = torch.device("cpu"), dataset.norm
    raw.to_input(device, norm)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            raw.to_input(device, norm)
        rates.append(calls * len(raw) / (time.perf_counter() - start))
    return statistics.median(rates)


@dataclass
class ColdResult:
    cold: list[float]
    warm_again: list[float]
    resident_before: list[float | None]  # just before the timed epoch (after the drop)
    resident_after: list[float | None]  # after the cold epoch


def cold_rates(
    data_dir: Path, batch: int, crop: int, threads: int, convert: bool, repeats: int, first_epoch: int
) -> ColdResult:
    """Each repeat: reopen the dataset, drop every shard's pages, time one epoch (each clip read once),
    then time the same epoch again with the pages now cached."""
    out = ColdResult([], [], [], [])
    for r in range(repeats):
        gc.collect()  # unmap the previous dataset's shards: mapped pages are not dropped
        dataset = ShardDataset(data_dir)
        files = shard_files(dataset)
        drop_page_cache(files)
        out.resident_before.append(resident_fraction(files))
        epoch = first_epoch + r  # a fresh permutation each time
        sampler = CropSampler(dataset, batch, crop, seed=0, prefetch=TRAINER_PREFETCH, threads=threads)
        sampler.set_epoch(epoch)
        out.cold.append(timed_pass(sampler, len(sampler), convert).rate)
        out.resident_after.append(resident_fraction(files))
        sampler.set_epoch(epoch)
        out.warm_again.append(timed_pass(sampler, len(sampler), convert).rate)
        del sampler, dataset
    gc.collect()
    return out


def thread_counts(text: str) -> list[int]:
    counts = []
    for item in text.split(","):
        item = item.strip()
        if item:
            n = default_reader_threads() if item == "default" else int(item)
            if n not in counts:
                counts.append(n)
    return counts


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir", type=Path, default=default_cache_dir(), help="corpus + shards (default: %(default)s)"
    )
    parser.add_argument("--clips", type=int, default=2048, help="synthetic clips (default: %(default)s)")
    parser.add_argument(
        "--clips-per-shard", type=int, default=8, help="clips per shard (default: %(default)s)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="longest clip (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128, help="crops per batch (default: %(default)s)")
    parser.add_argument(
        "--crops", default="96", help="crop lengths in frames, comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        default="1,default,2,4",
        help=f"reader thread counts; 'default' = {default_reader_threads()} here (default: %(default)s)",
    )
    parser.add_argument(
        "--warm-batches", type=int, default=200, help="timed batches per warm figure (default: %(default)s)"
    )
    parser.add_argument(
        "--warm-repeats", type=int, default=3, help="warm passes per figure, median (default: %(default)s)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)"
    )
    parser.add_argument(
        "--cold-repeats",
        type=int,
        default=3,
        help="cold epochs per figure, each after a drop (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
        f"default reader threads {default_reader_threads()}; load average {load_avg()}"
    )
    data_dir = prepared_corpus(args.cache_dir, args.clips, args.clips_per_shard, args.seconds)
    # Only one ShardDataset is open at a time: the pages a live map has touched cannot be dropped.
    dataset = ShardDataset(data_dir)
    files, clips = shard_files(dataset), len(dataset)
    del dataset
    threads = thread_counts(args.threads)
    crops = [int(c) for c in args.crops.split(",") if c.strip()]
    batch = args.batch
    print(f"{len(files)} shard files, {clips} clips; batch {batch}; prefetch {TRAINER_PREFETCH}")

    warm_page_cache(files)
    print(
        f"page cache after reading every shard: {_pct(resident_fraction(files))} of the shard pages resident"
    )
    rows = []
    epoch_seed = 100
    for crop in crops:
        dataset = ShardDataset(data_dir)
        conv = to_input_rate(dataset, batch, crop)
        print(f"\ncrop {crop} frames: to_input(cpu, norm) alone {conv:,.0f} crops/s (load {load_avg()})")
        del dataset
        for n in threads:
            for convert in (False, True):
                dataset = ShardDataset(data_dir)
                warm = warm_rate(dataset, batch, crop, n, args.warm_batches, convert, args.warm_repeats)
                del dataset
                cold = cold_rates(data_dir, batch, crop, n, convert, args.cold_repeats, epoch_seed)
                epoch_seed += args.cold_repeats
                warm_page_cache(files)  # the next warm figure reads cached pages again
                what = "reader + to_input" if convert else "reader"
                row = (crop, n, what, warm, cold)
                rows.append(row)
                print(
                    f"  threads {n}, {what:<17s}: warm {warm:>8,.0f} crops/s; cold epochs "
                    + ", ".join(f"{c:,.0f}" for c in cold.cold)
                    + " -> same epoch again warm "
                    + ", ".join(f"{c:,.0f}" for c in cold.warm_again)
                    + f"; resident after drop {', '.join(_pct(x) for x in cold.resident_before)}, "
                    f"after the cold epoch {', '.join(_pct(x) for x in cold.resident_after)} "
                    f"(load {load_avg()})"
                )

    print(
        f"\nSummary (crops/s; cold = median of {args.cold_repeats} epochs, each after dropping the shards' pages)"
    )
    print(
        f"| crop | threads | consumer | warm (median of {args.warm_repeats} x {args.warm_batches} batches) | cold epoch | same epoch re-read warm | "
        "cold / warm | resident after drop |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for crop, n, what, warm, cold in rows:
        c, w = statistics.median(cold.cold), statistics.median(cold.warm_again)
        print(
            f"| {crop} | {n} | {what} | {warm:,.0f} | {c:,.0f} | {w:,.0f} | {c / w:.2f} | "
            f"{_pct(max((x for x in cold.resident_before if x is not None), default=None))} |"
        )
    print(f"load average after: {load_avg()}")


if __name__ == "__main__":
    main()
