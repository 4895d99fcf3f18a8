"""`hear-abt` command line: embed audio files, inspect weights.

hear-abt embed AUDIO... --out FILE.npz [--weights SRC] [--what scene|timestamp|both]
hear-abt embed AUDIO... --out-dir FOLDER ...   (streamed to disk: any length, read lazily)
hear-abt info [SRC]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .devices import parse_device


def _check_writable_location(out: Path, what: str) -> None:
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the folders to create: the first existing ancestor must be writable
    try:
        if not parent.is_dir():
            raise NotADirectoryError(f"{parent} is not a folder")
        probe = tempfile.TemporaryFile(dir=parent)  # what atomic_open will need: a file beside --out
        probe.close()
    except OSError as err:
        raise SystemExit(f"error: cannot write {what} {out}: {err}") from err


def _check_output(out: Path) -> None:
    """Refuse an --out that cannot be written before any work is done."""
    if out.suffix != ".npz":
        raise SystemExit(
            f"error: --out must end in .npz, got {out} (for a folder of .npy files use --out-dir {out})"
        )
    if out.is_dir():
        raise SystemExit(f"error: --out {out} is a folder; name a .npz file (or use --out-dir)")
    _check_writable_location(out, "--out")


def _check_out_dir(out: Path) -> None:
    """Refuse an --out-dir that is a file, or a non-empty folder that is not an embeddings folder."""
    from .streaming import INDEX_NAME

    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out-dir {out} exists and is not a folder")
    if out.is_dir():
        if any(out.iterdir()) and not (out / INDEX_NAME).is_file():
            raise SystemExit(
                f"error: --out-dir {out} is a non-empty folder without {INDEX_NAME}: name a new or empty "
                "folder (or one that hear-abt embed wrote before, which is replaced)"
            )
        _check_writable_location(out / INDEX_NAME, "--out-dir")
    else:
        _check_writable_location(out, "--out-dir")


def _check_device(device: str) -> torch.device:
    try:
        return parse_device(device)
    except ValueError as err:
        raise SystemExit(f"error: --device {err}") from None


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


class _NpzSink:
    """Collects one file's timestamp embeddings in memory (the .npz layout)."""

    def __init__(self) -> None:
        self.embs: list[np.ndarray] = []
        self.ts: list[np.ndarray] = []

    def __call__(self, emb: np.ndarray, ts: np.ndarray) -> None:
        self.embs.append(emb)
        self.ts.append(ts)


class _NpySink:
    """Streams one file's timestamp embeddings into two .npy files of the --out-dir layout."""

    def __init__(self, folder: Path, index: int, dim: int) -> None:
        from .streaming import NpyWriter

        self.names = (f"timestamps/{index:06d}.emb.npy", f"timestamps/{index:06d}.ms.npy")
        self.emb = NpyWriter(folder / self.names[0], (dim,), np.float32)
        self.ts = NpyWriter(folder / self.names[1], (), np.float32)

    def __call__(self, emb: np.ndarray, ts: np.ndarray) -> None:
        self.emb.append(emb)
        self.ts.append(ts)

    def close(self) -> None:
        self.emb.close()
        self.ts.close()

    def abort(self) -> None:
        self.emb.abort()
        self.ts.abort()


_SIZE_WARNING_BYTES = 2 * 1024**3


def _embed(args: argparse.Namespace) -> int:
    from . import load_model
    from .audio import audio_seconds
    from .fileio import atomic_open, atomic_write_text
    from .streaming import INDEX_NAME, LAYOUT_FORMAT, LAYOUT_VERSION, NpyWriter, embed_file

    if (args.out is None) == (args.out_dir is None):
        raise SystemExit("error: give exactly one of --out FILE.npz and --out-dir FOLDER")
    if not args.chunk_seconds > 0:
        raise SystemExit(f"error: --chunk-seconds must be positive, got {args.chunk_seconds}")
    out = Path(args.out or args.out_dir).resolve()
    folder_layout = args.out_dir is not None
    (_check_out_dir if folder_layout else _check_output)(out)
    device = _check_device(args.device)
    files, problems = expand_audio_args(args.audio)
    failures: list[tuple[str, str]] = list(problems)  # (audio, reason)
    for arg, why in problems:
        print(f"skipped {arg}: {why}", file=sys.stderr)
    model = load_model(args.weights, timestamp_mode=args.timestamp_mode).to(device)
    want_scene = args.what in ("scene", "both")
    want_ts = args.what in ("timestamp", "both")
    dim = model.timestamp_embedding_size
    seconds = [audio_seconds(p) for p in files]
    total_seconds = sum(seconds)
    ts_bytes = total_seconds * model.sample_rate / model.hop_samples * dim * 4
    if want_ts and not folder_layout and ts_bytes > _SIZE_WARNING_BYTES:
        print(
            f"note: {total_seconds / 3600:.1f} h of audio: the .npz layout holds all timestamp embeddings "
            f"in memory ({ts_bytes / 1024**3:.1f} GB); --out-dir streams them to disk instead",
            file=sys.stderr,
        )
    if folder_layout:
        out.mkdir(parents=True, exist_ok=True)
        (out / INDEX_NAME).unlink(missing_ok=True)  # the folder is being replaced: no stale index
    entries: list[dict] = []
    scenes: list[np.ndarray] = []
    ts_embs: list[np.ndarray] = []
    ts_ms: list[np.ndarray] = []
    bar = tqdm(
        total=round(total_seconds, 1),
        desc="embedding",
        unit="s",
        unit_scale=False,
        disable=args.quiet,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
    )
    with bar:
        for i, path in enumerate(files):
            bar.set_postfix_str(f"file {i + 1}/{len(files)}")
            sink = (_NpySink(out, len(entries), dim) if folder_layout else _NpzSink()) if want_ts else None
            done_before = bar.n
            try:
                result = embed_file(
                    path,
                    model,
                    scene=want_scene,
                    timestamps=want_ts,
                    on_timestamps=sink,
                    on_audio=bar.update,
                    chunk_seconds=args.chunk_seconds,
                    device=device,
                )
                if isinstance(sink, _NpySink):
                    sink.close()
            except (KeyboardInterrupt, SystemExit):
                if isinstance(sink, _NpySink):
                    sink.abort()
                raise  # nothing else is written: an older --out stays as it was
            except Exception as err:  # one bad file never aborts the others
                if isinstance(sink, _NpySink):
                    sink.abort()
                reason = str(err) if str(path) in str(err) else f"{path}: {type(err).__name__}: {err}"
                tqdm.write(f"skipped: {reason}", file=sys.stderr)
                failures.append((str(path), reason))
                bar.n = done_before + seconds[i]
                bar.refresh()
                continue
            entry = {
                "audio": str(path.resolve()),
                "seconds": result.n_samples / model.sample_rate,
                "n_samples": result.n_samples,
                "n_timestamps": result.n_timestamps if want_ts else 0,
                "streamed": result.streamed,
            }
            if want_scene:
                scenes.append(result.scene)
                entry["scene_row"] = len(scenes) - 1
            if isinstance(sink, _NpySink):
                entry["timestamp_embeddings"], entry["timestamps_ms"] = sink.names
            elif isinstance(sink, _NpzSink):
                ts_embs.append(np.concatenate(sink.embs) if sink.embs else np.zeros((0, dim), np.float32))
                ts_ms.append(np.concatenate(sink.ts) if sink.ts else np.zeros(0, np.float32))
            entries.append(entry)
    if folder_layout:
        if scenes:
            with NpyWriter(out / "scene_embeddings.npy", (model.scene_embedding_size,)) as w:
                w.append(np.stack(scenes))
        else:
            (out / "scene_embeddings.npy").unlink(missing_ok=True)
        _remove_stale_timestamp_files(out, entries)
        index = {
            "format": LAYOUT_FORMAT,
            "version": LAYOUT_VERSION,
            "encoder": model.config.encoder,
            "weights": args.weights or "(default)",
            "what": args.what,
            "timestamp_mode": args.timestamp_mode,
            "sample_rate": model.sample_rate,
            "timestamp_hop_ms": 1000 * model.hop_samples / model.sample_rate,
            "scene_embedding_size": model.scene_embedding_size,
            "timestamp_embedding_size": dim,
            "scene_embeddings": "scene_embeddings.npy" if scenes else None,
            "files": entries,
            "failed": [{"audio": a, "reason": r} for a, r in failures],
        }
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    else:
        npz: dict[str, np.ndarray] = {
            "files": np.array([e["audio"] for e in entries], dtype=str),
            "failed": np.array([a for a, _ in failures], dtype=str),
        }
        if scenes:
            npz["scene_embeddings"] = np.stack(scenes)
        if ts_embs:
            # Clips differ in length: concatenate and keep offsets (clip i is rows offsets[i]:offsets[i+1]).
            npz["timestamp_embeddings"] = np.concatenate(ts_embs)
            npz["timestamps_ms"] = np.concatenate(ts_ms)
            npz["timestamp_offsets"] = np.cumsum([0] + [len(t) for t in ts_ms])
        # Atomic: an interrupted write (Ctrl-C, SIGKILL, full disk) leaves the previous file or nothing.
        with atomic_open(out, "wb") as f:
            np.savez(f, **npz)
    print(
        f"wrote {out}: {len(entries)} file(s) embedded with {model.config.encoder}"
        + (f", {len(failures)} failed (listed in 'failed')" if failures else "")
    )
    return 1 if failures else 0


_TIMESTAMP_FILE = re.compile(r"\d{6}\.(emb|ms)\.npy")


def _remove_stale_timestamp_files(out: Path, entries: list[dict]) -> None:
    """Drop a previous run's per-file arrays that this run's index does not list."""
    folder = out / "timestamps"
    if not folder.is_dir():
        return
    keep = {Path(e[k]).name for e in entries for k in ("timestamp_embeddings", "timestamps_ms") if k in e}
    for path in folder.iterdir():
        if _TIMESTAMP_FILE.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


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

    embed = sub.add_parser("embed", help="embed audio files into an .npz file or a folder of .npy files")
    embed.add_argument(
        "audio",
        nargs="+",
        help="audio files (any soundfile-readable format, rate and channel count) or folders, searched "
        "recursively for audio files",
    )
    embed.add_argument(
        "--out",
        help="output .npz (files, failed, scene_embeddings, timestamp_embeddings, timestamps_ms, "
        "timestamp_offsets); everything is held in memory until it is written",
    )
    embed.add_argument(
        "--out-dir",
        help="output folder instead of --out: index.json, scene_embeddings.npy and per file "
        "timestamps/NNNNNN.emb.npy + .ms.npy, streamed to disk (any length; np.load(..., mmap_mode='r'))",
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
    embed.add_argument(
        "--chunk-seconds",
        type=float,
        default=120.0,
        help="files longer than this are read and embedded in chunks of this much audio (bounded memory; "
        "the result equals the one-shot answer up to float rounding) (default: %(default)s)",
    )
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
