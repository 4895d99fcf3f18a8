"""`hear-abt` command line: embed audio files, inspect weights, run the offline demo.

hear-abt embed AUDIO... --out FILE.npz [--weights SRC] [--what scene|timestamp|both]
hear-abt info [SRC]
hear-abt demo [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def _embed(args: argparse.Namespace) -> int:
    from . import get_scene_embeddings, get_timestamp_embeddings, load_model
    from .audio import AudioFileError, load_audio

    out = Path(args.out).resolve()
    if out.suffix != ".npz":
        raise SystemExit(f"--out must end in .npz, got {out}")
    model = load_model(args.weights, timestamp_mode=args.timestamp_mode).to(args.device)
    files, scenes, ts_embs, ts_ms, failed = [], [], [], [], []
    for path in tqdm(args.audio, desc="embedding", unit="file", disable=args.quiet):
        try:
            wav = load_audio(path)
        except AudioFileError as err:
            tqdm.write(f"skipped: {err}", file=sys.stderr)
            failed.append(str(path))
            continue
        audio = torch.from_numpy(wav)[None].to(args.device)
        files.append(str(Path(path).resolve()))
        if args.what in ("scene", "both"):
            scenes.append(get_scene_embeddings(audio, model)[0].cpu().numpy())
        if args.what in ("timestamp", "both"):
            emb, ts = get_timestamp_embeddings(audio, model)
            ts_embs.append(emb[0].cpu().numpy())
            ts_ms.append(ts[0].cpu().numpy())
    result: dict[str, np.ndarray] = {"files": np.array(files), "failed": np.array(failed, dtype=str)}
    if scenes:
        result["scene_embeddings"] = np.stack(scenes)
    if ts_embs:
        # Clips differ in length: concatenate and keep offsets (clip i is rows offsets[i]:offsets[i+1]).
        result["timestamp_embeddings"] = np.concatenate(ts_embs)
        result["timestamps_ms"] = np.concatenate(ts_ms)
        result["timestamp_offsets"] = np.cumsum([0] + [len(t) for t in ts_ms])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **result)
    print(
        f"wrote {out}: {len(files)} file(s) embedded with {model.config.encoder}"
        + (f", {len(failed)} failed" if failed else "")
    )
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    from .weights import default_weights_source, load_checkpoint

    ckpt = load_checkpoint(args.weights or default_weights_source("audiontt"))
    print(f"source: {ckpt.source}")
    print(ckpt.config.to_json())
    print(
        f"tensors: {len(ckpt.state_dict)}, parameters: {sum(t.numel() for t in ckpt.state_dict.values()):,}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from training.demo import run_demo
    except ImportError as err:  # the training package ships in the same distribution
        raise SystemExit(
            f"the demo needs the training extras: pip install 'hear-abt[train]' ({err})"
        ) from err
    run_demo(Path(args.workdir).resolve(), steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hear-abt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed audio files into an .npz file")
    embed.add_argument(
        "audio", nargs="+", help="audio files (any soundfile-readable format, rate and channel count)"
    )
    embed.add_argument(
        "--out",
        required=True,
        help="output .npz (files, scene_embeddings, timestamp_embeddings, timestamps_ms, timestamp_offsets)",
    )
    embed.add_argument(
        "--weights",
        default="",
        help="checkpoint folder, .safetensors/.pt file or Hub id org/name[@rev] "
        "(default: $HEAR_ABT_WEIGHTS, else the released AudioNTT weights)",
    )
    embed.add_argument(
        "--what", choices=["scene", "timestamp", "both"], default="both", help="which embeddings to save"
    )
    embed.add_argument(
        "--timestamp-mode",
        choices=["faithful", "fast"],
        default="faithful",
        help="faithful: every 950 ms window through the encoder; fast: AudioNTT frame features pooled per window",
    )
    embed.add_argument("--device", default="cpu", help="torch device to compute on, e.g. cpu or cuda:0")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=_embed)

    info = sub.add_parser("info", help="print a checkpoint's config")
    info.add_argument("weights", nargs="?", default="", help="checkpoint folder, file or Hub id")
    info.set_defaults(func=_info)

    demo = sub.add_parser("demo", help="offline demo: make sounds, pre-train a tiny model on the CPU, embed")
    demo.add_argument(
        "--workdir", default="demo_out", help="folder for the demo's audio, run, weights and embeddings"
    )
    demo.add_argument("--steps", type=int, default=60, help="pre-training steps of the cpu-tiny preset")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
