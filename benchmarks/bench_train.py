"""Samples/s of the pre-training data pipeline against full training steps (prints figures; not a test).

    .venv/bin/python benchmarks/bench_train.py [--device auto|cpu|cuda] [--cache-dir DIR]
        [--presets cpu-tiny,audioset-audiontt,audioset-vitc-b:16] [--train-batch N] [--steps N]
        [--tiny-steps N] [--batches N]

(a) Reader alone (``benchmarks/bench_data.py``'s measurement, warm page cache, its synthetic corpus
of 256 shards built once and cached): ``training.data.CropSampler`` batches of 128 random 96-frame
crops through the prefetching iterator the trainer uses, with the default reader threads, yielding
``RawCrops``; the same with ``RawCrops.to_input(cpu, norm)`` in the consumer (what a CPU step adds;
a GPU does it on the device); and ``batch_at`` alone (no thread).

(b) Training steps exactly as ``training/pretrain.py`` runs them (``training.engine.build`` and
``train_step``): RawCrops -> device input (cast, silence fill, dataset normalisation) -> two augmented
views -> encoder + projector -> loss -> backward -> optimiser step, on pre-built batches so only the
step is timed. Each preset runs at its own batch size (cpu-tiny: 32, the paper presets: 128) unless
``preset:N`` or ``--train-batch`` says otherwise, on the CPU and, when available, on CUDA (bf16
autocast for the paper presets). An end-to-end loop (sampler feeding the steps) is also timed for the
presets given in ``--end-to-end``.

Targets (PASS/FAIL): reader >= 10x the training step's samples/s on the same machine, and
>= 5,000 crops/s (set on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import (  # noqa: E402  (the shared synthetic corpus and reader measurement)
    default_cache_dir,
    load_avg,
    prepared_corpus,
    shard_files,
    warm_page_cache,
    warm_rate,
)

from training import engine  # noqa: E402
from training.config import build_config  # noqa: E402
from training.data import CropSampler, RawCrops, ShardDataset, default_reader_threads  # noqa: E402

DATA_BATCH = 128
CROP = 96
TARGET_DATA_OVER_TRAIN = 10.0
TARGET_CROPS_PER_S = 5_000.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- (a) data pipeline -----------------------------------------------------------------------


def data_rates(dataset: ShardDataset, n_batches: int) -> tuple[float, float, float]:
    """(reader, reader + to_input, batch_at) crops/s for batches of 128 x 96 frames, default threads."""
    threads = default_reader_threads()
    rate_iter = warm_rate(dataset, DATA_BATCH, CROP, threads, n_batches, convert=False)
    rate_conv = warm_rate(dataset, DATA_BATCH, CROP, threads, n_batches, convert=True)
    plain = CropSampler(dataset, batch_size=DATA_BATCH, crop_frames=CROP, seed=0, prefetch=0)
    plain.batch_at(0, 0)
    start = time.perf_counter()
    for b in range(n_batches):
        plain.batch_at(b // len(plain), b % len(plain))
    rate_direct = n_batches * DATA_BATCH / (time.perf_counter() - start)
    return rate_iter, rate_conv, rate_direct


# ---- (b) training steps ----------------------------------------------------------------------


class Trainer:
    """The engine pretrain.py runs (training.engine), on one process; only the steps are timed."""

    def __init__(self, preset: str, dataset: ShardDataset, device: torch.device, batch: int | None):
        overrides = [f"batch_size={batch}"] if batch else []
        self.cfg = build_config(preset, overrides)
        self.device = device
        self.state = engine.build(self.cfg, dataset, device)  # pretrain's prefetch and reader threads
        self.amp_dtype = self.state.amp_dtype

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.state.net.parameters())

    def step(self, crops: RawCrops) -> None:
        engine.train_step(self.state, crops)


def step_batches(dataset: ShardDataset, cfg, device: torch.device, count: int = 4) -> list[RawCrops]:
    """``count`` reader batches at the preset's batch size and crop length (pinned for CUDA)."""
    sampler = CropSampler(
        dataset, cfg.batch_size, cfg.crop_frames, seed=2, prefetch=0, pin_memory=device.type == "cuda"
    )
    return [sampler.batch_at(0, b) for b in range(min(count, len(sampler)))]


def train_rate(trainer: Trainer, batches: list[RawCrops], steps: int, warmup: int = 2) -> float:
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, plus CUDA when available), cpu or cuda[:N]"
    )
    parser.add_argument(
        "--presets",
        default="cpu-tiny,audioset-audiontt,audioset-vitc-b:16",
        help="presets, each optionally :BATCH (default: %(default)s)",
    )
    parser.add_argument(
        "--train-batch", type=int, default=None, help="batch size of the presets without :BATCH"
    )
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
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="corpus + shards, shared with bench_data.py (default: %(default)s)",
    )
    parser.add_argument("--clips", type=int, default=2048, help="synthetic clips (default: %(default)s)")
    parser.add_argument(
        "--clips-per-shard", type=int, default=8, help="clips per shard (default: %(default)s)"
    )
    args = parser.parse_args()

    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
    presets = []
    for item in (p.strip() for p in args.presets.split(",")):
        if item:
            name, _, batch = item.partition(":")
            presets.append((name, int(batch) if batch else args.train_batch))
    e2e = {p.strip() for p in args.end_to_end.split(",") if p.strip()}

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load average {load_avg()}"
    )
    data_dir = prepared_corpus(args.cache_dir, args.clips, args.clips_per_shard)
    dataset = ShardDataset(data_dir)
    warm_page_cache(shard_files(dataset))  # time the reader, not the disk (bench_data.py does cold)

    rate_iter, rate_conv, rate_direct = data_rates(dataset, args.batches)
    print(
        f"\n(a) reader, batch {DATA_BATCH} x {CROP} frames, warm page cache, {default_reader_threads()} reader "
        f"thread(s) (CPU, load average {load_avg()})"
    )
    print(f"  prefetching iterator (as in training), RawCrops: {rate_iter:>9,.0f} crops/s")
    print(f"  ... + RawCrops.to_input(cpu, norm) in the loop:  {rate_conv:>9,.0f} crops/s")
    print(f"  batch_at, no thread:                             {rate_direct:>9,.0f} crops/s")
    ok = rate_iter >= TARGET_CROPS_PER_S
    print(f"  target >= {TARGET_CROPS_PER_S:,.0f} crops/s (prefetching iterator): {'PASS' if ok else 'FAIL'}")

    print("\n(b) training steps (augment + forward + loss + backward + optimiser step)")
    print(
        f"  {'preset':<18s} {'device':<6s} {'precision':<9s} {'params':>8s} {'batch':>5s} {'steps':>5s} "
        f"{'samples/s':>10s} {'s/step':>7s} {'end-to-end':>11s} {'data/train':>11s}  target >= {TARGET_DATA_OVER_TRAIN:g}x"
    )
    for device in devices:
        for preset, batch in presets:
            trainer = Trainer(preset, dataset, device, batch)
            bs = trainer.cfg.batch_size
            batches = step_batches(dataset, trainer.cfg, device)
            if device.type == "cuda":
                steps = args.cuda_steps
            else:
                steps = args.tiny_steps if preset == "cpu-tiny" else args.steps
            rate = train_rate(trainer, batches, steps)
            e2e_rate = end_to_end_rate(trainer, dataset, steps) if preset in e2e else None
            ratio = rate_iter / rate
            amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
            print(
                f"  {preset:<18s} {device.type:<6s} {amp:<9s} {trainer.params / 1e6:>7.1f}M {bs:>5d} {steps:>5d} "
                f"{rate:>10,.1f} {bs / rate:>7.3f} "
                + (f"{e2e_rate:>11,.1f}" if e2e_rate else f"{'-':>11s}")
                + f" {ratio:>10,.1f}x  {'PASS' if ratio >= TARGET_DATA_OVER_TRAIN else 'FAIL'}"
            )
            del trainer, batches
    print(f"  load average after: {load_avg()}")
    print(
        "  data/train = reader (prefetching iterator, RawCrops) crops/s / training samples/s; the step's own\n"
        "  time includes RawCrops.to_input. end-to-end = steps fed by the prefetching CropSampler (on the CPU\n"
        "  its reader threads compete with the step for the same cores)."
    )


if __name__ == "__main__":
    main()
