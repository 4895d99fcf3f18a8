"""Samples/s of the pre-training data pipeline against full training steps (prints figures; not a test).

    .venv/bin/python benchmarks/bench_train.py [--device auto|cpu|cuda] [--presets cpu-tiny,audioset-audiontt]
        [--steps N] [--tiny-steps N] [--batches N] [--cache-dir DIR]

(a) Data pipeline alone: ``training.data.CropSampler`` batches of 128 random 96-frame crops from a
prepared corpus (the synthetic corpus of ``benchmarks/bench_data.py``, built once and cached), through
the prefetching iterator the trainer uses and through ``batch_at`` (no thread).

(b) Training steps exactly as ``training/pretrain.py`` runs them (``training.engine.build`` and
``train_step``): device copy -> dataset normalisation -> two augmented views -> encoder + projector ->
loss -> backward -> optimiser step, on pre-built batches so only the step is timed. Each preset runs at its own batch
size (cpu-tiny: 32, audioset-audiontt: 128) unless ``--train-batch`` is given, on the CPU and, when
available, on CUDA (bf16 autocast for the paper presets). An end-to-end loop (sampler feeding the
steps) is also timed for the presets given in ``--end-to-end``.

Targets (PASS/FAIL): data pipeline >= 10x the training step's samples/s on the same machine, and
>= 5,000 crops/s (set on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import _make_corpus  # noqa: E402  (the shared synthetic corpus)

from training import engine  # noqa: E402
from training.config import build_config  # noqa: E402
from training.data import CropSampler, ShardDataset  # noqa: E402
from training.prepare import prepare  # noqa: E402

DATA_BATCH = 128
CROP = 96
TARGET_DATA_OVER_TRAIN = 10.0
TARGET_CROPS_PER_S = 5_000.0


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- (a) data pipeline -----------------------------------------------------------------------


def data_rates(dataset: ShardDataset, n_batches: int) -> tuple[float, float]:
    """(prefetching iterator, batch_at) crops/s for batches of 128 x 96 frames."""
    fetched = CropSampler(dataset, batch_size=DATA_BATCH, crop_frames=CROP, seed=0, prefetch=2)
    plain = CropSampler(dataset, batch_size=DATA_BATCH, crop_frames=CROP, seed=0, prefetch=0)

    def iterate(n: int) -> float:
        start, produced = time.perf_counter(), 0
        while produced < n:
            for _crops in fetched:
                produced += 1
                if produced == n:
                    break
        return produced * DATA_BATCH / (time.perf_counter() - start)

    iterate(2)  # epoch permutation, thread start-up
    rate_iter = iterate(n_batches)
    plain.batch_at(0, 0)
    start = time.perf_counter()
    for b in range(n_batches):
        plain.batch_at(b // len(plain), b % len(plain))
    rate_direct = n_batches * DATA_BATCH / (time.perf_counter() - start)
    return rate_iter, rate_direct


# ---- (b) training steps ----------------------------------------------------------------------


class Trainer:
    """The engine pretrain.py runs (training.engine), on one process; only the steps are timed."""

    def __init__(self, preset: str, dataset: ShardDataset, device: torch.device, batch: int | None):
        overrides = [f"batch_size={batch}"] if batch else []
        self.cfg = build_config(preset, overrides)
        self.device = device
        self.state = engine.build(self.cfg, dataset, device, prefetch=2)
        self.amp_dtype = self.state.amp_dtype

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.state.net.parameters())

    def step(self, crops: torch.Tensor) -> None:
        engine.train_step(self.state, crops)


def train_rate(trainer: Trainer, batches: list[torch.Tensor], steps: int, warmup: int = 2) -> float:
    for i in range(warmup):
        trainer.step(batches[i % len(batches)])
    sync(trainer.device)
    start = time.perf_counter()
    for i in range(steps):
        trainer.step(batches[i % len(batches)])
    sync(trainer.device)
    return steps * trainer.cfg.batch_size / (time.perf_counter() - start)


def end_to_end_rate(trainer: Trainer, dataset: ShardDataset, steps: int) -> float:
    """Sampler (prefetching thread) feeding the steps, as in pretrain.py."""
    done, start = -1, 0.0
    while done < steps:
        for crops in trainer.state.sampler:
            trainer.step(crops)
            done += 1
            if done == 0:  # the first step is a warm-up
                sync(trainer.device)
                start = time.perf_counter()
            if done == steps:
                break
    sync(trainer.device)
    return steps * trainer.cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hear-abt" / "bench_data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, plus CUDA when available), cpu or cuda[:N]"
    )
    parser.add_argument("--presets", default="cpu-tiny,audioset-audiontt", help="(default: %(default)s)")
    parser.add_argument("--train-batch", type=int, default=None, help="override every preset's batch size")
    parser.add_argument(
        "--tiny-steps", type=int, default=20, help="timed cpu-tiny steps (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps of other presets on CPU (default: %(default)s)"
    )
    parser.add_argument(
        "--cuda-steps", type=int, default=30, help="timed steps on CUDA (default: %(default)s)"
    )
    parser.add_argument("--batches", type=int, default=200, help="timed data batches (default: %(default)s)")
    parser.add_argument(
        "--end-to-end",
        default="cpu-tiny",
        help="presets also timed with the sampler feeding the steps ('' for none)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=cache, help="corpus + shards (default: %(default)s)"
    )
    parser.add_argument("--clips", type=int, default=600, help="synthetic clips (default: %(default)s)")
    args = parser.parse_args()

    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    e2e = {p.strip() for p in args.end_to_end.split(",") if p.strip()}

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load average {load_avg()}"
    )
    cache_dir = args.cache_dir.resolve()
    _make_corpus(cache_dir / "wav", args.clips, 10.0)
    summary = prepare(cache_dir / "wav", cache_dir / "shards", workers=2, clips_per_shard=64, progress=False)
    dataset = ShardDataset(cache_dir / "shards")
    for shard in dataset.shards:  # page cache: time the sampler, not the disk
        np.asarray(shard).sum(dtype=np.float32)
    print(f"corpus: {summary.clips} clips, {summary.hours:.2f} h in {summary.shards} shards ({cache_dir})")

    rate_iter, rate_direct = data_rates(dataset, args.batches)
    print(f"\n(a) data pipeline, batch {DATA_BATCH} x {CROP} frames (CPU, load average {load_avg()})")
    print(f"  prefetching iterator (as in training): {rate_iter:>9,.0f} crops/s")
    print(f"  batch_at, no thread:                   {rate_direct:>9,.0f} crops/s")
    ok = rate_iter >= TARGET_CROPS_PER_S
    print(f"  target >= {TARGET_CROPS_PER_S:,.0f} crops/s: {'PASS' if ok else 'FAIL'}")

    batches = [CropSampler(dataset, DATA_BATCH, CROP, seed=2, prefetch=0).batch_at(0, b) for b in range(4)]
    print("\n(b) training steps (augment + forward + loss + backward + optimiser step)")
    print(
        f"  {'preset':<18s} {'device':<6s} {'precision':<9s} {'params':>8s} {'batch':>5s} {'steps':>5s} "
        f"{'samples/s':>10s} {'s/step':>7s} {'end-to-end':>11s} {'data/train':>11s}  target >= {TARGET_DATA_OVER_TRAIN:g}x"
    )
    for device in devices:
        for preset in presets:
            trainer = Trainer(preset, dataset, device, args.train_batch)
            bs = trainer.cfg.batch_size
            step_batches = [
                b[:bs] if bs <= DATA_BATCH else b.repeat(-(-bs // DATA_BATCH), 1, 1, 1)[:bs] for b in batches
            ]
            if device.type == "cuda":
                steps = args.cuda_steps
            else:
                steps = args.tiny_steps if preset == "cpu-tiny" else args.steps
            rate = train_rate(trainer, step_batches, steps)
            e2e_rate = end_to_end_rate(trainer, dataset, steps) if preset in e2e else None
            ratio = rate_iter / rate
            amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
            print(
                f"  {preset:<18s} {device.type:<6s} {amp:<9s} {trainer.params / 1e6:>7.1f}M {bs:>5d} {steps:>5d} "
                f"{rate:>10,.1f} {bs / rate:>7.3f} "
                + (f"{e2e_rate:>11,.1f}" if e2e_rate else f"{'-':>11s}")
                + f" {ratio:>10,.1f}x  {'PASS' if ratio >= TARGET_DATA_OVER_TRAIN else 'FAIL'}"
            )
            del trainer
    print(f"  load average after: {load_avg()}")
    print(
        "  data/train = prefetching-iterator crops/s / training samples/s; end-to-end = steps fed by the\n"
        "  prefetching CropSampler (the pipeline's thread competes with the step for the same cores)."
    )


if __name__ == "__main__":
    main()
