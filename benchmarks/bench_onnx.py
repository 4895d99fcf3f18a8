"""onnxruntime against torch (the HEAR API) on this CPU, and the ONNX graphs' parity (prints figures; not a test).

    .venv/bin/python benchmarks/bench_onnx.py [--encoders audiontt,vitc_b] [--weights PATH]
        [--seconds 10] [--vit-seconds 3] [--batch 2] [--repeats 5] [--threads N]
        [--parity-seconds 1,3.3,10]

For each encoder: random-init weights of the full architecture written with ``save_pretrained``
(or ``--weights``), loaded with ``hear_abt.load_model`` (faithful timestamps), exported with
``hear_abt.onnx_export.export_onnx`` (timed), then

- parity: ``max|onnx - torch| / max|torch|`` per clip, worst over a batch, for scene and timestamp
  embeddings on clips of ``--parity-seconds`` (timestamps must be identical);
- speed: the same batch through ``hear_abt.get_scene_embeddings`` / ``get_timestamp_embeddings`` and
  through ``OnnxEmbedder`` (onnxruntime, CPU provider), called alternately ``--repeats`` times each
  after a warm-up (so that load from other processes hits both alike), medians, both with
  ``--threads`` intra-op threads (default: torch's), and the ratio onnxruntime / torch (< 1:
  onnxruntime is faster). The load average is printed before and after: on a shared machine the
  absolute times move a lot, the ratio less.

Needs the ``onnx`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hear_abt
from hear_abt.config import SAMPLE_RATE, ModelConfig, NormStats
from hear_abt.encoders import create_encoder_for
from hear_abt.onnx_export import OnnxEmbedder, export_onnx, parity_audio, parity_report
from hear_abt.weights import save_pretrained

SR = SAMPLE_RATE
# Plausible log-mel statistics (as bench_embed.py), so the random encoder sees unit-scale inputs.
BENCH_NORM = NormStats(mean=-5.0, std=7.0)


def save_random_model(folder: Path, encoder: str, seed: int = 0) -> Path:
    """Random-init weights of ``encoder`` with non-trivial BatchNorm statistics, via save_pretrained."""
    torch.manual_seed(seed)
    config = ModelConfig(encoder=encoder, norm=BENCH_NORM, provenance={"bench": "random init"})
    fe = config.frontend
    net = create_encoder_for(encoder, config.encoder_kwargs, fe.n_mels, fe.window_frames)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return save_pretrained(folder / encoder, config, net.state_dict())


def timed_pair(torch_call, onnx_call, repeats: int) -> tuple[float, float]:
    """Median seconds of each call, run alternately (so load from other processes hits both alike)."""
    torch_call(), onnx_call()  # warm-up: thread pools, allocators, oneDNN primitives / ORT kernels
    times = ([], [])
    for _ in range(repeats):
        for call, out in ((torch_call, times[0]), (onnx_call, times[1])):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_encoder(name: str, weights: Path | str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    model = hear_abt.load_model(str(weights))
    encoder = model.config.encoder
    print(f"\n== {encoder} ({sum(p.numel() for p in model.encoder.parameters()) / 1e6:.1f} M parameters)")
    start = time.perf_counter()
    export_onnx(model, tmp / name, verify=False)
    print(f"export: {time.perf_counter() - start:.1f} s")
    onnx_model = OnnxEmbedder(tmp / name, threads=args.threads)

    cases = [(args.batch, int(round(s * SR))) for s in args.parity_seconds]
    start = time.perf_counter()
    report = parity_report(model, onnx_model, cases)
    print(
        f"parity (max|onnx - torch| / max|torch|, worst clip of {args.batch}; {time.perf_counter() - start:.0f} s):"
    )
    for key, err in report.items():
        print(f"  {key:<28} {err:.2e}")

    seconds = args.seconds if model.encoder.frame_features_supported else args.vit_seconds
    audio = parity_audio(np.random.default_rng(1), args.batch, int(seconds * SR))
    tensor = torch.from_numpy(audio)
    rows = []
    for kind in ("scene", "timestamps"):
        if kind == "scene":
            t_torch, t_onnx = timed_pair(
                lambda: hear_abt.get_scene_embeddings(tensor, model),
                lambda: onnx_model.scene_embeddings(audio),
                args.repeats,
            )
        else:
            t_torch, t_onnx = timed_pair(
                lambda: hear_abt.get_timestamp_embeddings(tensor, model),
                lambda: onnx_model.timestamp_embeddings(audio),
                args.repeats,
            )
        worst = max(v for k, v in report.items() if k.startswith(kind))
        rows.append(
            {
                "encoder": encoder,
                "kind": kind,
                "clips": f"{args.batch} x {seconds:g} s",
                "torch_s": t_torch,
                "onnx_s": t_onnx,
                "ratio": t_onnx / t_torch,
                "parity": worst,
            }
        )
        print(
            f"{kind:<10} torch {t_torch:7.3f} s   onnxruntime {t_onnx:7.3f} s   "
            f"onnxruntime/torch {t_onnx / t_torch:.2f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", default="audiontt,vitc_b", help="random-init encoders to export")
    parser.add_argument("--weights", default="", help="a checkpoint to use instead of random-init encoders")
    parser.add_argument("--seconds", type=float, default=10.0, help="speed clip length, AudioNTT")
    parser.add_argument("--vit-seconds", type=float, default=3.0, help="speed clip length, ViTs")
    parser.add_argument("--batch", type=int, default=2, help="clips per call (speed and parity)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each, alternating")
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op threads for both (0: torch's default)"
    )
    parser.add_argument("--parity-seconds", default="1,3.3,10", help="clip lengths for the parity figures")
    args = parser.parse_args(argv)
    args.parity_seconds = [float(s) for s in args.parity_seconds.split(",") if s]
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)

    import onnxruntime

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads each, "
        f"batch {args.batch}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.weights:
            rows += bench_encoder("weights", args.weights, args, tmp)
        else:
            for encoder in [e for e in args.encoders.split(",") if e]:
                rows += bench_encoder(encoder, save_random_model(tmp / "models", encoder), args, tmp)

    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    print(
        "\n| encoder | embeddings | clips | torch (s) | onnxruntime (s) | onnxruntime / torch | max rel. error |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['encoder']} | {r['kind']} | {r['clips']} | {r['torch_s']:.3f} | {r['onnx_s']:.3f} | "
            f"{r['ratio']:.2f} | {r['parity']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
