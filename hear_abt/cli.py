"""`hear-abt` command line: embed audio files, inspect weights.

hear-abt embed AUDIO... --out FILE.npz [--weights SRC] [--what scene|timestamp|both]
hear-abt embed AUDIO... --out-dir FOLDER ...   (streamed to disk: any length, read lazily)
hear-abt embed FOLDER --out-dir FOLDER [--batch-size 16] [--processes N]   (datasets of clips)
hear-abt info [SRC]
hear-abt export-onnx WEIGHTS OUT_DIR   (scene.onnx + timestamps.onnx; pip install 'hear-abt[onnx]')
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from .dataset_embed import DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS, Progress, embed_files
from .devices import parse_device
from .embed_processes import WorkerDied, default_processes
from .embeddings_io import INDEX_NAME, FolderWriter, NpzWriter, RunInfo

if TYPE_CHECKING:
    from .embedder import ABTEmbedder


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


_SIZE_WARNING_BYTES = 2 * 1024**3


def _embed(args: argparse.Namespace) -> int:
    from . import load_model
    from .audio import audio_seconds

    out = _checked_destination(args)
    device = _check_device(args.device)
    files, failures = expand_audio_args(args.audio)  # failures: (audio, reason)
    for arg, why in failures:
        print(f"skipped {arg}: {why}", file=sys.stderr)
    model = load_model(args.weights, timestamp_mode=args.timestamp_mode).to(device)
    info = _run_info(args, model)
    seconds = [audio_seconds(p) for p in files]
    if info.timestamps and args.out_dir is None:
        _note_npz_memory(sum(seconds), info, model.hop_samples)
    writer = (FolderWriter if args.out_dir is not None else NpzWriter)(out, info)
    with _FilesAndAudioBar(len(files), sum(seconds), args.quiet) as progress:
        failures += embed_files(
            files,
            model,
            writer,
            chunk_seconds=args.chunk_seconds,
            device=device,
            batch_size=args.batch_size,
            decode_workers=args.decode_workers,
            model_workers=args.model_workers,
            processes=default_processes(device) if args.processes is None else args.processes,
            header_seconds=seconds,
            progress=progress,
        )
    writer.finish(failures)
    print(
        f"wrote {out}: {len(writer.entries)} file(s) embedded with {model.config.encoder}"
        + (f", {len(failures)} failed (listed in 'failed')" if failures else "")
    )
    return 1 if failures else 0


def _checked_destination(args: argparse.Namespace) -> Path:
    """The --out file or --out-dir folder, refused (SystemExit) with the numeric options before any work."""
    if (args.out is None) == (args.out_dir is None):
        raise SystemExit("error: give exactly one of --out FILE.npz and --out-dir FOLDER")
    if not args.chunk_seconds > 0:
        raise SystemExit(f"error: --chunk-seconds must be positive, got {args.chunk_seconds}")
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be at least 1, got {args.batch_size}")
    if args.decode_workers < 0:
        raise SystemExit(f"error: --decode-workers must be 0 or more, got {args.decode_workers}")
    if args.model_workers is not None and args.model_workers < 1:
        raise SystemExit(f"error: --model-workers must be at least 1, got {args.model_workers}")
    if args.processes is not None and args.processes < 0:
        raise SystemExit(f"error: --processes must be 0 or more, got {args.processes}")
    if args.processes and _check_device(args.device).type != "cpu":
        raise SystemExit(
            f"error: --processes must be 0 with --device {args.device} (workers embed on the CPU)"
        )
    out = Path(args.out or args.out_dir).resolve()
    (_check_out_dir if args.out_dir is not None else _check_output)(out)
    return out


def _run_info(args: argparse.Namespace, model: ABTEmbedder) -> RunInfo:
    return RunInfo(
        encoder=model.config.encoder,
        weights=args.weights or "(default)",
        what=args.what,
        timestamp_mode=args.timestamp_mode,
        sample_rate=model.sample_rate,
        timestamp_hop_ms=1000 * model.hop_samples / model.sample_rate,
        scene_embedding_size=model.scene_embedding_size,
        timestamp_embedding_size=model.timestamp_embedding_size,
    )


def _note_npz_memory(total_seconds: float, info: RunInfo, hop_samples: int) -> None:
    """The .npz format holds every timestamp embedding in memory: say so when that is a lot."""
    ts_bytes = total_seconds * info.sample_rate / hop_samples * info.timestamp_embedding_size * 4
    if ts_bytes > _SIZE_WARNING_BYTES:
        print(
            f"note: {total_seconds / 3600:.1f} h of audio: the .npz layout holds all timestamp embeddings "
            f"in memory ({ts_bytes / 1024**3:.1f} GB); --out-dir streams them to disk instead",
            file=sys.stderr,
        )


class _FilesAndAudioBar(Progress):
    """One tqdm bar counting files (and files/s), its postfix the seconds of audio done and the speed
    in times real time (long files advance it block by block)."""

    def __init__(self, n_files: int, total_seconds: float, quiet: bool) -> None:
        self.bar = tqdm(
            total=n_files,
            desc="embedding",
            unit="file",
            disable=quiet,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} files [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        )
        self.seconds, self.total_seconds = 0.0, total_seconds
        self._shown_at = 0.0

    def audio(self, seconds: float) -> None:
        self.seconds += seconds
        now = time.monotonic()
        if now - self._shown_at >= 0.5:  # a long file: show its progress twice a second
            self._shown_at = now
            self._set_postfix(refresh=True)

    def file_done(self, seconds: float) -> None:
        self.seconds += seconds
        self._set_postfix(refresh=False)
        self.bar.update(1)  # redraws (at most every tqdm mininterval)

    def _set_postfix(self, refresh: bool) -> None:
        if self.bar.disable:
            return
        elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
        self.bar.set_postfix_str(
            f"{self.seconds:.0f}/{self.total_seconds:.0f} s audio, {self.seconds / elapsed:.1f}x real time",
            refresh=refresh,
        )

    def __enter__(self) -> _FilesAndAudioBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _info(args: argparse.Namespace) -> int:
    from .encoders import create_encoder_for
    from .weights import default_weights_source, load_weights

    ckpt = load_weights(args.weights or default_weights_source("audiontt"))
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


def _add_embed_command(sub: argparse._SubParsersAction) -> None:
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
    embed.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="files shorter than a chunk that have the same length (in samples) are embedded together, up "
        "to this many (and 600 s of audio) per HEAR API call; equal to one by one up to float rounding; "
        "1: one call per file (default: %(default)s)",
    )
    embed.add_argument(
        "--decode-workers",
        type=int,
        default=DEFAULT_DECODE_WORKERS,
        help="threads decoding and resampling files ahead of the model, in order (at most 1200 s of audio "
        "read ahead); 0: decode in the main thread (default: %(default)s)",
    )
    embed.add_argument(
        "--model-workers",
        type=int,
        default=None,
        help="batches embedded at once, sharing torch's CPU threads (default: 2 on a CPU, 1 on a GPU)",
    )
    embed.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes (one torch thread each) that decode and embed the short files, written here "
        "in order (--model-workers is then unused); 0: all in this process (default: one per CPU thread, at "
        "most 8, on a Linux CPU; else 0)",
    )
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(func=_embed)


def _add_info_command(sub: argparse._SubParsersAction) -> None:
    info = sub.add_parser("info", help="print a checkpoint's config")
    info.add_argument("weights", nargs="?", default="", help="checkpoint folder, file or Hub id")
    info.set_defaults(func=_info)


def _add_export_onnx_command(sub: argparse._SubParsersAction) -> None:
    from . import onnx_export  # imports no ONNX package until it runs

    onnx_export.add_arguments(
        sub.add_parser(
            "export-onnx",
            help="write scene.onnx and timestamps.onnx (raw 16 kHz audio in, HEAR embeddings out; "
            "onnxruntime runs them without torch; needs pip install 'hear-abt[onnx]')",
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hear-abt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_embed_command(sub)
    _add_info_command(sub)
    _add_export_onnx_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except WorkerDied as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
