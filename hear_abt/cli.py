"""`hear-abt` command line: embed audio files, inspect weights.

hear-abt embed AUDIO... --out FILE.npz [--weights SRC] [--what scene|timestamp|both]
hear-abt info [SRC]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


def _check_output(out: Path) -> None:
    """Refuse an --out that cannot be written before any work is done."""
    if out.suffix != ".npz":
        raise SystemExit(f"error: --out must end in .npz, got {out}")
    if out.is_dir():
        raise SystemExit(f"error: --out {out} is a folder; name a .npz file")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folders to create: the first existing ancestor must be writable
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        probe = tempfile.TemporaryFile(dir=parent)  # what atomic_open will need: a file beside --out
        probe.close()
    except OSError as err:
        raise SystemExit(f"error: cannot write --out {out}: {err}") from err


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise SystemExit(
            f"error: --device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device {device} asked for, but this torch sees no CUDA GPU; use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SystemExit(f"error: --device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def expand_audio_args(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders searched recursively for audio files (the extensions training.prepare
    uses). Returns (files, problems): a folder without audio is a problem, reported like a bad file."""
    from .audio import AUDIO_EXTENSIONS, find_audio_files

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = find_audio_files(path)
            if not found:
                problems.append((arg, f"folder {path} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"))
            files.extend(found)
        else:
            files.append(path)
    return files, problems


def _embed_one(path: Path, model, what: str, device: torch.device) -> tuple:
    from . import get_scene_embeddings, get_timestamp_embeddings
    from .audio import load_audio

    audio = torch.from_numpy(load_audio(path))[None].to(device)
    scene = emb = ts = None
    if what in ("scene", "both"):
        scene = get_scene_embeddings(audio, model)[0].cpu().numpy()
    if what in ("timestamp", "both"):
        e, t = get_timestamp_embeddings(audio, model)
        emb, ts = e[0].cpu().numpy(), t[0].cpu().numpy()
    for name, value in (("scene", scene), ("timestamp", emb)):
        if value is not None and not np.isfinite(value).all():
            raise FloatingPointError(
                f"its {name} embedding is not finite (NaN/Inf); the audio may be far too loud "
                f"(peak {float(audio.abs().max()):.3g}) or the weights broken"
            )
    return scene, emb, ts


def _embed(args: argparse.Namespace) -> int:
    from . import load_model
    from .fileio import atomic_open

    out = Path(args.out).resolve()
    _check_output(out)
    device = _check_device(args.device)
    files, problems = expand_audio_args(args.audio)
    failed: list[str] = []
    for arg, why in problems:
        print(f"skipped {arg}: {why}", file=sys.stderr)
        failed.append(arg)
    model = load_model(args.weights, timestamp_mode=args.timestamp_mode).to(device)
    embedded, scenes, ts_embs, ts_ms = [], [], [], []
    for path in tqdm(files, desc="embedding", unit="file", disable=args.quiet):
        try:
            scene, emb, ts = _embed_one(path, model, args.what, device)
        except (KeyboardInterrupt, SystemExit):
            raise  # nothing is written: an older --out stays as it was
        except Exception as err:  # one bad file never aborts the others
            reason = str(err) if str(path) in str(err) else f"{path}: {type(err).__name__}: {err}"
            tqdm.write(f"skipped: {reason}", file=sys.stderr)
            failed.append(str(path))
            continue
        embedded.append(str(path.resolve()))
        if scene is not None:
            scenes.append(scene)
        if emb is not None:
            ts_embs.append(emb)
            ts_ms.append(ts)
    result: dict[str, np.ndarray] = {
        "files": np.array(embedded, dtype=str),
        "failed": np.array(failed, dtype=str),
    }
    if scenes:
        result["scene_embeddings"] = np.stack(scenes)
    if ts_embs:
        # Clips differ in length: concatenate and keep offsets (clip i is rows offsets[i]:offsets[i+1]).
        result["timestamp_embeddings"] = np.concatenate(ts_embs)
        result["timestamps_ms"] = np.concatenate(ts_ms)
        result["timestamp_offsets"] = np.cumsum([0] + [len(t) for t in ts_ms])
    # Atomic: an interrupted write (Ctrl-C, SIGKILL, full disk) leaves the previous file or nothing.
    with atomic_open(out, "wb") as f:
        np.savez(f, **result)
    print(
        f"wrote {out}: {len(embedded)} file(s) embedded with {model.config.encoder}"
        + (f", {len(failed)} failed (listed in 'failed')" if failed else "")
    )
    return 1 if failed else 0


def _info(args: argparse.Namespace) -> int:
    from .encoders import create_encoder_for
    from .weights import default_weights_source, load_checkpoint

    ckpt = load_checkpoint(args.weights or default_weights_source("audiontt"))
    print(f"source: {ckpt.source}")
    print(ckpt.config.to_json())
    fe = ckpt.config.frontend
    with torch.device("meta"):  # counts only, nothing allocated
        encoder = create_encoder_for(
            ckpt.config.encoder, ckpt.config.encoder_kwargs, fe.n_mels, fe.window_frames
        )
    learnable = sum(p.numel() for p in encoder.parameters())
    stored = sum(t.numel() for t in ckpt.state_dict.values())
    print(
        f"encoder parameters: {learnable:,} (learnable weights of the encoder, all that the HEAR model runs; "
        f"training logs 'encoder + projector', larger by the projector, which is not exported)"
    )
    print(
        f"tensors: {len(ckpt.state_dict)} holding {stored:,} values (parameters + BatchNorm running statistics)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hear-abt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed audio files into an .npz file")
    embed.add_argument(
        "audio",
        nargs="+",
        help="audio files (any soundfile-readable format, rate and channel count) or folders, searched "
        "recursively for audio files",
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
