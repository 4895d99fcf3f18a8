"""Crops per second of training.data.CropSampler on this machine (prints figures; not a test).

    .venv/bin/python benchmarks/bench_data.py [--cache-dir DIR] [--clips N] [--seconds S]

Builds (once, then reuses) a synthetic corpus of noisy tone clips of 1-10 s, prepares it into
shards with ``training.prepare`` and times batches of 128 random 96-frame crops: the pure
``batch_at`` path and the prefetching iterator, plus a 480-frame crop for the paper's largest
setting. The shards are read once before timing, so the figures are for page-cached data.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from hear_abt.config import SAMPLE_RATE
from training.data import CropSampler, ShardDataset
from training.prepare import prepare


def _make_corpus(folder: Path, clips: int, max_seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(clips):
        path = folder / f"clip_{i:05d}.wav"
        if path.exists():
            continue
        n = int(SAMPLE_RATE * rng.uniform(1.0, max_seconds))
        t = np.arange(n) / SAMPLE_RATE
        wav = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 4000) * t) + 0.05 * rng.standard_normal(n)
        sf.write(path, wav.astype(np.float32), SAMPLE_RATE)


def _rate(make_batches, batch_size: int, n_batches: int) -> float:
    start = time.perf_counter()
    count = 0
    for _ in make_batches(n_batches):
        count += 1
    return count * batch_size / (time.perf_counter() - start)


def main() -> None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hear-abt" / "bench_data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir", type=Path, default=cache, help="corpus + shards (default: %(default)s)"
    )
    parser.add_argument("--clips", type=int, default=600, help="synthetic clips (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="longest clip (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=200, help="timed batches (default: %(default)s)")
    args = parser.parse_args()

    cache_dir = args.cache_dir.resolve()
    _make_corpus(cache_dir / "wav", args.clips, args.seconds)
    start = time.perf_counter()
    summary = prepare(cache_dir / "wav", cache_dir / "shards", workers=2, clips_per_shard=64, progress=False)
    print(
        f"corpus: {summary.clips} clips, {summary.hours:.2f} h in {summary.shards} shards "
        f"(prepare/reuse took {time.perf_counter() - start:.1f} s)"
    )

    dataset = ShardDataset(cache_dir / "shards")
    for shard in dataset.shards:  # warm the page cache so we time the sampler, not the disk
        np.asarray(shard).sum(dtype=np.float32)
    batch = 128
    for crop in (96, 480):
        plain = CropSampler(dataset, batch_size=batch, crop_frames=crop, seed=0, prefetch=0)
        fetched = CropSampler(dataset, batch_size=batch, crop_frames=crop, seed=0, prefetch=2)

        def direct(n, sampler=plain):
            return (sampler.batch_at(b // len(sampler), b % len(sampler)) for b in range(n))

        def iterated(n, sampler=fetched):
            produced = 0
            while produced < n:
                for x in sampler:
                    yield x
                    produced += 1
                    if produced == n:
                        return

        direct(2)  # build the epoch permutation outside the timing
        rate_direct = _rate(direct, batch, args.batches)
        rate_iter = _rate(iterated, batch, args.batches)
        print(
            f"batch {batch}, crop {crop}: batch_at {rate_direct:,.0f} crops/s; "
            f"prefetching iterator {rate_iter:,.0f} crops/s"
        )


if __name__ == "__main__":
    main()
