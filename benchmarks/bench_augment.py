"""Milliseconds per batch of each waveform augmentation (``training.augment_wave``), against the
log-mel front-end, the spectrogram view blocks and a full training step (prints figures; not a test).

    .venv/bin/python benchmarks/bench_augment.py [--device cpu|cuda] [--batch 128] [--crop 96]
        [--repeats 5] [--steps 3] [--preset audioset-audiontt] [--skip-step]

Per block: one view of a batch of ``--batch`` crops of ``--crop`` frames (the paper's 128 x 96),
the block alone at probability 1 with its default strength, then the log-mel; the front-end alone is
the baseline each row includes. A step makes two views, so a block costs twice its row per step.
The full step is ``training.engine.train_step`` of ``--preset`` (fp32) on folders prepared here from
synthetic clips: log-mel (today's path), waveform with the blocks off (the front-end on the device),
and waveform with every block on at p=0.5. Best (minimum) of ``--repeats`` (blocks) or ``--steps``
(steps): on a shared machine the least disturbed run is the closest to the cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hear_abt.config import FrontendConfig  # noqa: E402
from hear_abt.frontend import LogMelFrontend  # noqa: E402
from training import engine  # noqa: E402
from training.augment import AugmentConfig, ViewAugmenter  # noqa: E402
from training.augment_wave import WaveAugmenter, WaveAugmentSettings, context_hops, input_hops  # noqa: E402

BLOCKS = {
    "front-end only (baseline)": {},
    "gain": {"gain_p": 1.0},
    "eq": {"eq_p": 1.0},
    "reverb": {"reverb_p": 1.0},
    "pitch shift": {"pitch_p": 1.0},
    "time stretch": {"stretch_p": 1.0},
    "all five": {"gain_p": 1.0, "eq_p": 1.0, "reverb_p": 1.0, "pitch_p": 1.0, "stretch_p": 1.0},
}
WAVE_ON = [f"augment.wave_{b}_p=0.5" for b in ("gain", "eq", "reverb", "pitch", "stretch")]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: allocations, FFT plans
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)  # the least disturbed run: the machine is shared


def block_rows(device: torch.device, batch: int, crop: int, repeats: int) -> list[tuple[str, float]]:
    frontend = LogMelFrontend(FrontendConfig()).to(device)
    context = context_hops(frontend.cfg.n_fft, frontend.cfg.hop_length)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, settings in BLOCKS.items():
        s = WaveAugmentSettings(**settings)
        hops = input_hops(crop, context, s.max_rate)
        wav = 0.1 * torch.randn(batch, hops * frontend.cfg.hop_length, device=device)
        aug = WaveAugmenter(s, frontend, crop, context)
        rows.append((name, best_ms(lambda aug=aug, wav=wav: aug(wav, gen), device, repeats)))
    x = torch.randn(batch, 1, frontend.cfg.n_mels, crop, device=device)
    views = ViewAugmenter(AugmentConfig())
    views(x, gen)  # fill the mixup bank a little
    rows.append(
        ("spectrogram views (Mixup+RRC+RLF, both views)", best_ms(lambda: views(x, gen), device, repeats))
    )
    return rows


def prepared_folders(root: Path, clips: int) -> dict[str, Path]:
    """``clips`` synthetic 1.5 s clips prepared both ways: {"logmel": DIR, "waveform": DIR}."""
    import signals
    import soundfile as sf

    from training import prepare

    rng = np.random.default_rng(0)
    (root / "audio").mkdir()
    for i in range(clips):
        kind = signals.KINDS[i % len(signals.KINDS)]
        sf.write(root / "audio" / f"{i:04d}.wav", signals.make_signal(kind, 1.5, rng), 16000)
    for store in ("logmel", "waveform"):
        prepare.main([str(root / "audio"), str(root / store), "--store", store, "--no-progress"])
    return {store: root / store for store in ("logmel", "waveform")}


def step_ms(
    data: Path, preset: str, batch: int, overrides: list[str], device: torch.device, steps: int
) -> float:
    from training.config import build_config
    from training.data import ShardDataset

    cfg = build_config(preset, [f"batch_size={batch}", "precision=fp32", *overrides])
    state = engine.build(cfg, ShardDataset(data), device, prefetch=0)
    batches = [state.sampler.batch_at(0, i % len(state.sampler)) for i in range(steps + 1)]
    engine.train_step(state, batches[0])  # warm-up
    sync(device)
    times = []
    for crops in batches[1:]:
        start = time.perf_counter()
        engine.train_step(state, crops)
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128, help="crops per batch (default: the paper's 128)")
    parser.add_argument("--crop", type=int, default=96, help="log-mel frames per crop (default: 96)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--preset", default="audioset-audiontt", help="preset of the full step")
    parser.add_argument("--skip-step", action="store_true", help="time the blocks only")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch} x {args.crop} frames, "
        f"full steps of {args.preset} (fp32)"
    )
    print(f"{'one view of a batch':50s} {'ms':>9s}")
    for name, ms in block_rows(device, args.batch, args.crop, args.repeats):
        print(f"{name:50s} {ms:9.1f}")
    if args.skip_step:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folders = prepared_folders(Path(tmp), args.batch)
        for label, store, overrides in (
            ("log-mel folder", "logmel", []),
            ("waveform folder, blocks off", "waveform", []),
            ("waveform folder, all five at p=0.5", "waveform", WAVE_ON),
        ):
            ms = step_ms(folders[store], args.preset, args.batch, overrides, device, args.steps)
            print(f"{'full step, ' + label:50s} {ms:9.1f}")


if __name__ == "__main__":
    main()
