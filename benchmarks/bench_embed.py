"""Inference speed, peak memory and fast-vs-faithful fidelity of the HEAR API (prints figures; not a test).

    .venv/bin/python benchmarks/bench_embed.py [--seconds 60] [--long-minutes 20] [--skip-long]
        [--encoders audiontt,vitc_b[,vitc_t]] [--weights PATH] [--profile] [--skip-long-per-window]

Options, method (random-init weights through save_pretrained/load_model, peak-memory subprocesses),
targets and the measured figures: benchmarks/README.md. The targets apply to the first encoder in
``--encoders`` that has frame features (the fast timestamp mode): AudioNTT by default.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep torch.profiler's start/stop chatter out of the table
import torch  # noqa: E402

import hear_abt  # noqa: E402
from hear_abt.config import SAMPLE_RATE, ModelConfig, NormStats  # noqa: E402
from hear_abt.encoders import create_encoder_for  # noqa: E402
from hear_abt.weights import save_pretrained  # noqa: E402

SR = SAMPLE_RATE
# Plausible dataset statistics of log-mel (the cpu-tiny demo data gives about -5 / 7); the default
# NormStats(0, 1) would feed the random encoder inputs far from unit scale.
BENCH_NORM = NormStats(mean=-5.0, std=7.0)

TARGET_FAITHFUL_RT = 2.0
TARGET_REUSE_SPEEDUP = 3.0  # exact-reuse faithful vs the per-window path (same embedding)
TARGET_FAST_SPEEDUP = 15.0  # fast vs the per-window path (the faithful mode before exact reuse)
TARGET_PEAK_BYTES = 2 * 1024**3


# ---- audio and models ------------------------------------------------------------------------


def make_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Mono float32 16 kHz audio: pink-ish noise, gliding tones and harmonics, bursts and pauses.

    Built one second at a time in float32, so even a 20-minute clip needs no large temporaries.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    out = np.empty(n, dtype=np.float32)
    t = np.arange(SR, dtype=np.float32) / SR
    phase = 0.0
    f0 = 220.0
    for start in range(0, n, SR):
        stop = min(start + SR, n)
        m = stop - start
        white = rng.standard_normal(SR + 64).astype(np.float32)
        # One-pole low-pass blend: more energy at low frequencies, like most real recordings.
        pink = 0.5 * white[64:] + 0.5 * np.convolve(white, np.full(64, 1 / 8, np.float32), "valid")[1:]
        f1 = float(np.clip(f0 * np.exp(rng.normal(0, 0.3)), 80, 3000))
        freq = np.linspace(f0, f1, SR, dtype=np.float32)
        inst = phase + 2 * np.pi * np.cumsum(freq) / SR
        phase = float(inst[-1] % (2 * np.pi))
        f0 = f1
        tone = sum(np.sin(k * inst) / k for k in (1, 2, 3)).astype(np.float32)
        env = np.clip(np.sin(2 * np.pi * rng.uniform(0.5, 4) * t + rng.uniform(0, 6)), 0, None)
        level = 0.0 if rng.random() < 0.1 else rng.uniform(0.05, 0.3)  # ~10 % near-silent seconds
        second = level * (0.6 * env * tone + 0.2 * pink) + 1e-3 * white[:SR]
        out[start:stop] = second[:m]
    return out


def save_random_model(folder: Path, encoder: str, seed: int = 0) -> tuple[Path, bool]:
    """Random-init encoder weights written with save_pretrained (the released-weights format).

    Returns the folder and whether the encoder has frame features (so a fast timestamp mode).
    """
    torch.manual_seed(seed)
    config = ModelConfig(encoder=encoder, norm=BENCH_NORM, provenance={"bench": "random init"})
    fe = config.frontend
    net = create_encoder_for(encoder, config.encoder_kwargs, fe.n_mels, fe.window_frames)
    return save_pretrained(folder / encoder, config, net.state_dict()), bool(net.frame_features_supported)


def load(folder: Path | str, mode: str = "faithful"):
    return hear_abt.load_model(str(folder), timestamp_mode=mode)


# ---- timing ----------------------------------------------------------------------------------


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(model, audio: torch.Tensor, kind: str, repeats: int) -> float:
    """x real time of one HEAR call on ``audio`` (median of ``repeats``, after a 1 s warm-up)."""
    call = hear_abt.get_timestamp_embeddings if kind == "timestamp" else hear_abt.get_scene_embeddings
    call(audio[:, : 2 * SR], model)  # warm-up: thread pool, allocator, oneDNN primitives
    call(audio[:, : 2 * SR], model)
    seconds = audio.shape[-1] / SR
    return seconds / timed(lambda: call(audio, model), repeats)


def window_gflop(model) -> float:
    """Forward FLOPs of the encoder on one 950 ms window (torch's FLOP counter), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(8, 1, model.config.frontend.n_mels, model.window_frames)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encoder(x)
    return counter.get_total_flops() / 8 / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate right now: the ceiling for a compute-bound encoder."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---- peak memory (subprocess) ----------------------------------------------------------------


def _max_rss_bytes() -> int:
    """This process's peak resident set size (high-water mark), in bytes.

    ``/proc/self/status`` VmHWM where there is one (Linux), else ``getrusage(RUSAGE_SELF).ru_maxrss``.
    On Linux, ``ru_maxrss`` of a freshly exec'd child starts at the *parent's* RSS at fork time (the
    kernel carries the pre-exec mm's high-water mark over), so a child of a big benchmark process
    would read the parent's peak as its baseline and see no increase; VmHWM does not carry it over
    and can be reset (:func:`_reset_peak`).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux/BSD: KiB


def _reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(folder: str, mode: str, kind: str, npy: str) -> None:
    model = load(folder, mode)
    warm = torch.from_numpy(make_audio(1.0, seed=1))[None]
    call = hear_abt.get_timestamp_embeddings if kind == "timestamp" else hear_abt.get_scene_embeddings
    call(warm, model)
    audio = torch.from_numpy(np.load(npy))[None]
    reset = _reset_peak()  # drop the import/load/warm-up peaks: measure the call alone
    before = _max_rss_bytes()
    start = time.perf_counter()
    result = call(audio, model)
    wall = time.perf_counter() - start
    after = _max_rss_bytes()
    emb = result[0] if isinstance(result, tuple) else result
    print(
        json.dumps(
            {
                "before": before,
                "after": after,
                "wall": wall,
                "seconds": audio.shape[-1] / SR,
                "output_bytes": emb.numel() * emb.element_size(),
                "reset": reset,
            }
        )
    )


def measure_memory(folder: Path, mode: str, kind: str, npy: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", str(folder), mode, kind, str(npy)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- fidelity --------------------------------------------------------------------------------


def reuse_error(folder: Path | str, audio: torch.Tensor) -> float:
    """Exact-reuse faithful vs per-window: max |difference| / max |per-window| (float32 rounding)."""
    reuse, _ = hear_abt.get_timestamp_embeddings(audio, load(folder, "faithful"))
    ref, _ = hear_abt.get_timestamp_embeddings(audio, load(folder, "per_window"))
    return float((reuse - ref).abs().max() / ref.abs().max())


def fidelity(folder: Path | str, audio: torch.Tensor) -> dict[str, float]:
    """Fast vs faithful timestamp embeddings of the same weights on the same audio."""
    exact, _ = hear_abt.get_timestamp_embeddings(audio, load(folder, "faithful"))
    approx, _ = hear_abt.get_timestamp_embeddings(audio, load(folder, "fast"))
    a, b = exact.reshape(-1, exact.shape[-1]).double(), approx.reshape(-1, approx.shape[-1]).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    # Cosine after removing the clip's mean faithful embedding: how well the *time-varying* part
    # matches (random ReLU features share a large positive offset that flatters the plain cosine).
    mu = a.mean(0, keepdim=True)
    cos_c = torch.nn.functional.cosine_similarity(a - mu, b - mu, dim=1)
    rel = (a - b).norm() / a.norm()
    per_ts = (a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
    return {
        "timestamps": a.shape[0],
        "cos_mean": cos.mean().item(),
        "cos_min": cos.min().item(),
        "cos_centred_mean": cos_c.mean().item(),
        "cos_centred_min": cos_c.min().item(),
        "rel_l2": rel.item(),
        "rel_l2_max": per_ts.max().item(),
    }


# ---- profile ---------------------------------------------------------------------------------


class SectionTimer:
    """Wall time per section of ABTEmbedder, by wrapping the instance's methods (no edits to it)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, obj, attr: str, label: str) -> None:
        fn = getattr(obj, attr)

        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[label] += time.perf_counter() - start
                self.calls[label] += 1

        setattr(obj, attr, wrapped)


def profile(folder: Path, mode: str, kind: str, audio: torch.Tensor) -> None:
    model = load(folder, mode)
    timer = SectionTimer()
    timer.wrap(model, "logmel", "front-end (STFT + mel + log)")
    enc = model.encoder
    # The encoder's top-level parts, whatever the architecture (a part that is never called, such
    # as a ModuleList, simply does not show up).
    for name, part in enc.named_children():
        timer.wrap(part, "forward", f"  encoder.{name}")
    if enc.frame_features_supported:
        timer.wrap(enc, "frame_features", "encoder frame_features")
    if kind == "timestamp" and mode == "per_window":
        timer.wrap(model, "_encode", "encode windows (normalise + encoder)")
        timer.wrap(model, "_per_window_windows", "per-window windows total")
    if kind == "timestamp" and mode == "faithful":
        if enc.frame_features_supported:
            timer.wrap(enc, "window_embeddings", "exact reuse: encoder.window_embeddings")
            timer.wrap(model, "_reuse_windows", "exact-reuse windows total")
        else:
            timer.wrap(model, "_encode", "encode windows (normalise + encoder)")
            timer.wrap(model, "_per_window_windows", "per-window windows total")
    if kind == "timestamp" and mode == "fast":
        timer.wrap(model, "_fast_windows", "fast windows total")
    call = hear_abt.get_timestamp_embeddings if kind == "timestamp" else hear_abt.get_scene_embeddings
    call(audio[:, : 2 * SR], model)
    timer.total.clear()
    timer.calls.clear()
    start = time.perf_counter()
    call(audio, model)
    wall = time.perf_counter() - start
    print(f"\n  profile: {folder.name} {kind} {mode}, {audio.shape[-1] / SR:.0f} s clip, {wall:.2f} s wall")
    for label, total in timer.total.items():
        print(f"    {label:<46s} {total:7.3f} s  {100 * total / wall:5.1f} %  ({timer.calls[label]} calls)")
    model = load(folder, mode)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call(audio, model)
    print("    top operators (self CPU time):")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
    print("\n".join("      " + line for line in table.splitlines()))


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="clip for fast-capable encoders such as AudioNTT (default: %(default)s)",
    )
    parser.add_argument(
        "--vit-seconds",
        type=float,
        default=5.0,
        help="clip for the other encoders (ViTs: slow on CPU) (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default: %(default)s)")
    parser.add_argument("--long-minutes", type=float, default=20.0, help="long clip (default: %(default)s)")
    parser.add_argument("--skip-long", action="store_true", help="skip the long-clip memory runs")
    parser.add_argument(
        "--skip-long-per-window",
        action="store_true",
        help="long clip: leave out the per-window timestamps row (the slowest, ~1/3 of the run)",
    )
    parser.add_argument(
        "--encoders", default="audiontt,vitc_b", help="comma-separated (default: %(default)s; also vitc_t)"
    )
    parser.add_argument(
        "--weights", help="a trained fast-capable (AudioNTT) checkpoint for the fidelity check"
    )
    parser.add_argument(
        "--fidelity-seconds", type=float, default=30.0, help="clip for fidelity (default: %(default)s)"
    )
    parser.add_argument("--profile", action="store_true", help="profile even when every target passes")
    parser.add_argument("--_memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        _memory_child(*args._memory_child)
        return

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    failing: list[tuple[str, str, str]] = []  # (encoder, kind, mode) to profile
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tmp_dir = Path(tmp)
        folders, has_fast = {}, {}
        for e in encoders:
            folders[e], has_fast[e] = save_random_model(tmp_dir, e)
        # The targets, the long clip and the fidelity check are for the first fast-capable encoder.
        main_enc = next((e for e in encoders if has_fast[e]), None)

        # -- throughput ---------------------------------------------------------------------
        print("\nThroughput (x real time = audio s / wall s; median of repeats after warm-up)")
        print(
            "  per-window: every window through the encoder; faithful: the default (AudioNTT: exact "
            "reuse, same embedding); fast: pooled clip frames"
        )
        print(
            f"  {'encoder':<9s} {'clip':>6s} {'per-window':>11s} {'faithful':>9s} {'faithful/pw':>12s} "
            f"{'fast':>8s} {'fast/pw':>8s} {'fast/faithful':>14s} {'scene':>8s}"
        )
        rows = {}
        for enc in encoders:
            secs = args.seconds if has_fast[enc] else args.vit_seconds
            repeats = args.repeats if has_fast[enc] else 1
            audio = torch.from_numpy(make_audio(secs))[None]
            faithful = throughput(load(folders[enc], "faithful"), audio, "timestamp", repeats)
            if has_fast[enc]:
                per_window = throughput(load(folders[enc], "per_window"), audio, "timestamp", repeats)
                fast = throughput(load(folders[enc], "fast"), audio, "timestamp", repeats)
            else:
                per_window, fast = faithful, None  # faithful is the per-window path
            scene = throughput(load(folders[enc], "faithful"), audio, "scene", repeats)
            rows[enc] = (per_window, faithful, fast, scene)
            pw = (
                f"{per_window:>10.2f}x {faithful:>8.2f}x {faithful / per_window:>11.2f}x"
                if fast
                else (f"{'-':>11s} {faithful:>8.2f}x {'-':>12s}")
            )
            fs = (
                f"{fast:>7.1f}x {fast / per_window:>7.1f}x {fast / faithful:>13.1f}x"
                if fast
                else f"{'-':>8s} {'-':>8s} {'-':>14s}"
            )
            print(f"  {enc:<9s} {secs:>5.0f}s {pw} {fs} {scene:>7.1f}x")
            if not has_fast[enc]:
                # Every window goes through the whole network: the encoder is compute-bound, so
                # compare its achieved rate with what a plain matmul gets from the same cores.
                model = load(folders[enc], "faithful")
                gflop = window_gflop(model)
                windows_per_audio_s = 1000 / 50
                achieved = faithful * windows_per_audio_s * gflop
                peak = matmul_gflops()
                print(
                    f"  {'':<9s} {gflop:.2f} GFLOP per window, {windows_per_audio_s * gflop:.0f} GFLOP per audio "
                    f"second: {achieved:.1f} GFLOP/s achieved vs {peak:.1f} GFLOP/s fp32 matmul now "
                    f"({achieved / peak:.0%}); ceiling {peak / (windows_per_audio_s * gflop):.2f}x real time"
                )
        if main_enc is not None:
            per_window, faithful, fast, _ = rows[main_enc]
            ok1 = faithful >= TARGET_FAITHFUL_RT
            ok2 = faithful / per_window >= TARGET_REUSE_SPEEDUP
            ok3 = fast / per_window >= TARGET_FAST_SPEEDUP
            print(
                f"  target: {main_enc} faithful >= {TARGET_FAITHFUL_RT:g}x real time: {faithful:.2f}x  {verdict(ok1)}"
            )
            print(
                f"  target: exact-reuse faithful >= {TARGET_REUSE_SPEEDUP:g}x the per-window path: "
                f"{faithful / per_window:.2f}x  {verdict(ok2)}"
            )
            print(
                f"  target: fast >= {TARGET_FAST_SPEEDUP:g}x faster than per-window: {fast / per_window:.1f}x  {verdict(ok3)}"
            )
            if not ok1 or not ok2:
                failing += [(main_enc, "timestamp", "faithful"), (main_enc, "timestamp", "per_window")]
            if not ok3:
                failing += [(main_enc, "timestamp", "fast"), (main_enc, "timestamp", "per_window")]
        print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        # -- peak memory on the long clip ---------------------------------------------------
        if not args.skip_long and main_enc is not None:
            minutes = args.long_minutes
            print(f"\n{main_enc} on a {minutes:g}-minute clip (one run each, fresh process per row)")
            npy = tmp_dir / "long.npy"
            np.save(npy, make_audio(minutes * 60, seed=2))
            clip_mb = npy.stat().st_size / 1e6
            print(f"  clip: {clip_mb:.0f} MB of float32 samples (loaded before the baseline is read)")
            print(
                f"  {'measurement':<22s} {'x real time':>12s} {'peak RSS':>10s} {'increase':>10s} "
                f"{'output':>9s}  target < 2 GB"
            )
            runs = [("faithful", "timestamp"), ("fast", "timestamp"), ("faithful", "scene")]
            if not args.skip_long_per_window:
                runs.insert(0, ("per_window", "timestamp"))
            rates = {}
            for mode, kind in runs:
                r = measure_memory(folders[main_enc], mode, kind, npy)
                rates[mode, kind] = r["seconds"] / r["wall"]
                inc = r["after"] - r["before"]
                ok = inc < TARGET_PEAK_BYTES
                label = f"{kind} {mode}" if kind == "timestamp" else "scene"
                print(
                    f"  {label:<22s} {r['seconds'] / r['wall']:>11.2f}x {r['after'] / 2**20:>8.0f} MB "
                    f"{inc / 2**20:>7.0f} MB {r['output_bytes'] / 2**20:>6.0f} MB  {verdict(ok)}"
                )
                if not ok:
                    failing.append((main_enc, kind, mode))
            faithful, fast = rates["faithful", "timestamp"], rates["fast", "timestamp"]
            ratios = f"fast/faithful {fast / faithful:.1f}x"
            if ("per_window", "timestamp") in rates:
                per_window = rates["per_window", "timestamp"]
                ok = faithful / per_window >= TARGET_REUSE_SPEEDUP
                ratios = (
                    f"faithful/per-window {faithful / per_window:.2f}x ({verdict(ok)} >= {TARGET_REUSE_SPEEDUP:g}x), "
                    f"fast/per-window {fast / per_window:.1f}x, " + ratios
                )
            print(f"  ratios: {ratios}")
            print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

        # -- fidelity -------------------------------------------------------------------------
        print(f"\nFast vs faithful timestamp embeddings ({args.fidelity_seconds:g} s clip)")
        audio = torch.from_numpy(make_audio(args.fidelity_seconds, seed=3))[None]
        sources = []
        if main_enc is not None:
            sources.append((f"{main_enc} random init", folders[main_enc]))
        if args.weights:
            sources.append((f"weights {args.weights}", args.weights))
        print(
            f"  {'weights':<34s} {'cos mean':>9s} {'cos min':>8s} {'centred mean':>13s} "
            f"{'centred min':>12s} {'rel L2':>7s} {'worst ts':>9s}"
        )
        for name, folder in sources:
            f = fidelity(folder, audio)
            print(
                f"  {name[-34:]:<34s} {f['cos_mean']:>9.4f} {f['cos_min']:>8.4f} {f['cos_centred_mean']:>13.4f} "
                f"{f['cos_centred_min']:>12.4f} {f['rel_l2']:>7.3f} {f['rel_l2_max']:>9.3f}"
            )
        for name, folder in sources:
            print(
                f"  exact-reuse faithful vs per-window, {name}: max |diff| / max |value| = "
                f"{reuse_error(folder, audio):.1e} (float32 rounding; tests/test_exact_reuse.py: float64 < 1e-12)"
            )
        print(
            "  (cosines per timestamp; 'centred' subtracts the clip's mean faithful embedding first; rel L2 = "
            "||fast - faithful|| / ||faithful|| over all timestamps, worst ts = the largest per-timestamp value)"
        )

        # -- profile --------------------------------------------------------------------------
        todo = list(dict.fromkeys(failing))
        if args.profile and not todo and main_enc is not None:
            todo = [(main_enc, "timestamp", m) for m in ("per_window", "faithful", "fast")]
        if todo:
            print("\nWhere the time goes (wall time per embedder section; sections nest)")
            audio = torch.from_numpy(make_audio(args.seconds))[None]
            for enc, kind, mode in todo:
                profile(folders[enc], mode, kind, audio)


if __name__ == "__main__":
    main()
