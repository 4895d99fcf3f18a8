"""Decode a corpus once into memory-mappable float16 log-mel shards for pre-training.

    python -m training.prepare SRC OUT_DIR [--workers N] [--clips-per-shard N]
                               [--max-seconds-per-clip S] [--overwrite] [--no-progress]

SRC is a folder (searched recursively) or a list file of audio paths. Rerunning the same command
resumes. Output layout, AudioSet/FSD50K examples and the statistics: docs/data.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hear_abt import audio as _audio
from hear_abt.audio import AUDIO_EXTENSIONS, load_audio
from hear_abt.config import FrontendConfig
from hear_abt.fileio import DiskFullError, atomic_open, is_disk_full
from hear_abt.frontend import LogMelFrontend

logger = logging.getLogger("training.prepare")  # not __main__ under `python -m`

# Bump when the shard or manifest layout changes; data.py refuses newer versions.
SHARD_FORMAT_VERSION = 1
SHARD_DTYPE = np.float16
DEFAULT_CLIPS_PER_SHARD = 2048  # ~256 MB per shard of 10 s clips; ~800 shards for AudioSet
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"

__all__ = [
    "AUDIO_EXTENSIONS",
    "PrepareError",
    "PrepareSummary",
    "combine_stats",
    "find_audio_files",
    "prepare",
]


class PrepareError(ValueError):
    """The corpus cannot give usable normalisation statistics (no frames, constant or non-finite)."""


@dataclass(frozen=True)
class PrepareSummary:
    clips: int
    hours: float
    shards: int
    skipped: int
    built_shards: list[int]
    reused_shards: list[int]
    manifest_path: Path


@dataclass
class _ClipResult:
    source: str
    logmel: Optional[np.ndarray]  # float16 (frames, n_mels); None when skipped
    samples: int = 0
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    error: str = ""


# --------------------------------------------------------------------------------------- sources


def find_audio_files(src: Path) -> tuple[Path, list[str]]:
    """Return (root, sources): sources are paths relative to root (or absolute) in shard order."""
    src = src.resolve()
    if src.is_dir():
        # The one audio finder (hear_abt.audio, shared with `hear-abt embed`): regular files only.
        return src, [p.relative_to(src).as_posix() for p in _audio.find_audio_files(src)]
    if src.is_file():
        lines = src.read_text(encoding="utf-8").splitlines()
        sources = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return src.parent, sources
    raise FileNotFoundError(f"SRC {src} is neither a folder nor a manifest file")


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _fingerprint(frontend: FrontendConfig, max_samples: Optional[int], sources: Sequence[str]) -> str:
    """Identifies a shard's inputs: a finished shard is reused only if this matches."""
    key = {
        "format_version": SHARD_FORMAT_VERSION,
        "frontend": dataclasses.asdict(frontend),
        "max_samples": max_samples,
        "sources": list(sources),
        "resampler": _audio.RESAMPLE_ID,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------- decoding


_FRONTEND: Optional[LogMelFrontend] = None


def _init_worker() -> None:
    # One thread per process: the pool supplies the parallelism, and single-threaded kernels give
    # bit-identical results whichever process decodes a file (so resumed manifests match).
    torch.set_num_threads(1)
    global _FRONTEND
    _FRONTEND = LogMelFrontend(FrontendConfig())


def _process_file(task: tuple[str, str, Optional[int]]) -> _ClipResult:
    root, source, max_samples = task
    path = Path(root) / source
    assert _FRONTEND is not None, "worker not initialised"
    try:
        wav = load_audio(path, _FRONTEND.cfg.sample_rate)
        if max_samples is not None:
            wav = wav[:max_samples]
        with torch.inference_mode():
            logmel = _FRONTEND(torch.from_numpy(wav)[None])[0].numpy()  # (n_mels, frames) float32
        if not np.isfinite(logmel).all():
            # Finite samples, but so loud (|x| ~ 1e18 and up) that the float32 power spectrum overflows.
            raise FloatingPointError(
                f"its log-mel is not finite (peak sample {float(np.abs(wav).max()):.3g}; audio should lie "
                "in [-1, 1]): the file is corrupt or mis-scaled"
            )
        values = logmel.astype(np.float64)
        return _ClipResult(
            source=source,
            logmel=np.ascontiguousarray(logmel.T, dtype=SHARD_DTYPE),
            samples=int(wav.shape[0]),
            count=int(values.size),
            total=float(values.sum()),
            total_sq=float(np.square(values).sum()),
        )
    except Exception as err:  # never fatal: one bad file must not stop a 1.6 M-file job
        return _ClipResult(source=source, logmel=None, error=f"{type(err).__name__}: {err}")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    try:
        _init_worker()
        yield
    finally:
        torch.set_num_threads(previous)


def _imap_results(tasks: list[tuple[str, str, Optional[int]]], workers: int) -> Iterator[_ClipResult]:
    """Results in task order, decoded by ``workers`` processes (inline when 1)."""
    if workers <= 1 or len(tasks) <= 1:
        with _single_thread():
            yield from map(_process_file, tasks)
        return
    # spawn, not fork: forking a process whose torch thread pools are live can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(_process_file, tasks, chunksize=4)


# ---------------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Any) -> None:
    """``write(f)`` into ``path`` atomically (hear_abt.fileio): a crash never leaves a half-written file."""
    with atomic_open(path, "wb") as f:
        write(f)


def _write_shard(
    out_dir: Path, index: int, fingerprint: str, results: list[_ClipResult], frontend: FrontendConfig
) -> dict[str, Any]:
    name = _shard_name(index)
    kept = [r for r in results if r.logmel is not None]
    lengths = np.array([r.logmel.shape[0] for r in kept], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if kept else lengths
    data = (
        np.concatenate([r.logmel for r in kept], axis=0)
        if kept
        else np.zeros((0, frontend.n_mels), dtype=SHARD_DTYPE)
    )
    clip_index = np.stack([offsets, lengths], axis=1) if kept else np.zeros((0, 2), dtype=np.int64)
    data_path = out_dir / SHARD_DIR / f"{name}.npy"
    index_path = out_dir / SHARD_DIR / f"{name}.index.npy"
    _atomic_write(data_path, lambda f: np.save(f, data))
    _atomic_write(index_path, lambda f: np.save(f, clip_index))
    record = {
        "name": name,
        "fingerprint": fingerprint,
        "data": f"{SHARD_DIR}/{name}.npy",
        "index": f"{SHARD_DIR}/{name}.index.npy",
        "data_bytes": data_path.stat().st_size,
        "index_bytes": index_path.stat().st_size,
        "clips": len(kept),
        "frames": int(lengths.sum()),
        "seconds": sum(r.samples for r in kept) / frontend.sample_rate,
        "stats": {
            "count": sum(r.count for r in kept),
            "sum": float(sum(r.total for r in kept)),
            "sumsq": float(sum(r.total_sq for r in kept)),
        },
        "sources": [r.source for r in kept],
        "skipped": [{"path": r.source, "reason": r.error} for r in results if r.logmel is None],
    }
    # The record goes last: it is the marker that the shard's data and index are complete.
    _atomic_write(out_dir / SHARD_DIR / f"{name}.json", lambda f: f.write(_dumps(record)))
    return record


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _finished_record(out_dir: Path, index: int, fingerprint: str) -> Optional[dict[str, Any]]:
    """The shard's record if it was completed from exactly these inputs, else None."""
    record_path = out_dir / SHARD_DIR / f"{_shard_name(index)}.json"
    try:
        record = json.loads(record_path.read_text())
        if record.get("fingerprint") != fingerprint:
            return None
        if (out_dir / record["data"]).stat().st_size != record["data_bytes"]:
            return None
        if (out_dir / record["index"]).stat().st_size != record["index_bytes"]:
            return None
        return record
    except (OSError, ValueError, KeyError):
        return None


def combine_stats(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Dataset mean/std (population) of the log-mel values from per-shard count/sum/sumsq."""
    count = sum(r["stats"]["count"] for r in records)
    if count == 0:
        raise PrepareError(
            "no audio frames: cannot compute normalisation statistics (every file was skipped?)"
        )
    total = sum(r["stats"]["sum"] for r in records)
    total_sq = sum(r["stats"]["sumsq"] for r in records)
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    stats = {"mean": mean, "std": var**0.5}
    if not all(math.isfinite(v) for v in stats.values()):
        bad = [
            r["name"]
            for r in records
            if not all(map(math.isfinite, (r["stats"]["sum"], r["stats"]["sumsq"])))
        ]
        raise PrepareError(
            f"normalisation statistics are not finite ({stats}); shard(s) {bad[:5]} hold non-finite values. "
            "Rebuild them with --overwrite (files with non-finite log-mel are skipped)."
        )
    if stats["std"] < 1e-6:
        raise PrepareError(
            f"the log-mel values have std {stats['std']:.3g}: the corpus is (nearly) constant, e.g. all "
            "silence, and cannot be normalised. Add real audio."
        )
    return stats


# ---------------------------------------------------------------------------------- driver


def prepare(
    src: os.PathLike[str] | str,
    out_dir: os.PathLike[str] | str,
    *,
    workers: int = 1,
    clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
    max_seconds_per_clip: Optional[float] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Build (or finish) the shards of ``src`` in ``out_dir`` and write its manifest."""
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    frontend = FrontendConfig()
    out_dir = Path(out_dir).resolve()
    (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    for pattern in (".*.tmp", "*.tmp.*"):  # temporaries of an interrupted run (this and older versions)
        for leftover in (out_dir / SHARD_DIR).glob(pattern):
            leftover.unlink()
    root, sources = find_audio_files(Path(src))
    if not sources:
        raise FileNotFoundError(f"no audio files found in {src} (extensions: {', '.join(AUDIO_EXTENSIONS)})")
    max_samples = (
        None if max_seconds_per_clip is None else max(1, int(max_seconds_per_clip * frontend.sample_rate))
    )

    plan = [sources[i : i + clips_per_shard] for i in range(0, len(sources), clips_per_shard)]
    fingerprints = [_fingerprint(frontend, max_samples, shard) for shard in plan]
    records: list[Optional[dict[str, Any]]] = [
        None if overwrite else _finished_record(out_dir, i, fp) for i, fp in enumerate(fingerprints)
    ]
    todo = [i for i, r in enumerate(records) if r is None]
    reused = [i for i, r in enumerate(records) if r is not None]
    if reused:
        logger.info("reusing %d finished shards; building %d", len(reused), len(todo))

    tasks = [(str(root), source, max_samples) for i in todo for source in plan[i]]
    bar = tqdm(
        total=len(sources),
        initial=len(sources) - len(tasks),
        unit="file",
        desc="prepare",
        disable=not progress,
        dynamic_ncols=True,
    )
    results = _imap_results(tasks, workers)
    try:
        with logging_redirect_tqdm():  # warnings print above the bar, not through it
            for i in todo:
                shard_results = []
                for _ in plan[i]:
                    result = next(results)
                    if result.logmel is None:
                        logger.warning("skipping %s: %s", result.source, result.error)
                    shard_results.append(result)
                    bar.update(1)
                records[i] = _write_shard(out_dir, i, fingerprints[i], shard_results, frontend)
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()  # shuts the pool down promptly on errors

    done = [r for r in records if r is not None]
    stale = sorted(
        p.name for p in (out_dir / SHARD_DIR).glob("shard-*.json") if p.stem >= _shard_name(len(plan))
    )
    if stale:
        logger.warning("ignoring %d stale shards from an earlier, larger source list", len(stale))
    skipped = [s for r in done for s in r["skipped"]]
    seconds = sum(r["seconds"] for r in done)
    manifest = {
        "format_version": SHARD_FORMAT_VERSION,
        "dtype": np.dtype(SHARD_DTYPE).name,
        "layout": "data (frames, n_mels); index (clips, 2) = [first frame, frame count]",
        "frontend": dataclasses.asdict(frontend),
        "norm": combine_stats(done),
        "source_root": str(root),
        "clips_per_shard": clips_per_shard,
        "max_seconds_per_clip": max_seconds_per_clip,
        "totals": {
            "files": len(sources),
            "clips": sum(r["clips"] for r in done),
            "frames": sum(r["frames"] for r in done),
            "seconds": seconds,
            "hours": seconds / 3600,
            "shards": len(done),
            "skipped": len(skipped),
        },
        "shards": [{k: v for k, v in r.items() if k != "skipped"} for r in done],
        "skipped": skipped,
    }
    manifest_path = out_dir / MANIFEST_NAME
    _atomic_write(manifest_path, lambda f: f.write(_dumps(manifest)))
    return PrepareSummary(
        clips=manifest["totals"]["clips"],
        hours=seconds / 3600,
        shards=len(done),
        skipped=len(skipped),
        built_shards=todo,
        reused_shards=reused,
        manifest_path=manifest_path,
    )


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.prepare",
        description="Decode audio files once into float16 log-mel shards (+ manifest.json with the "
        "dataset's normalisation statistics) for ABT pre-training. Rerun the same command to resume.",
    )
    parser.add_argument(
        "src",
        help="folder searched recursively for audio files "
        f"({', '.join(AUDIO_EXTENSIONS)}), or a text file listing one audio path per line "
        "(relative paths are relative to the list's folder; blank lines and # comments ignored)",
    )
    parser.add_argument("out_dir", help="output folder for shards/ and manifest.json (created if missing)")
    parser.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="decoding processes; 1 decodes in this process (default: min(4, available CPUs) = %(default)s)",
    )
    parser.add_argument(
        "--clips-per-shard",
        type=int,
        default=DEFAULT_CLIPS_PER_SHARD,
        help="files per shard, the unit of resumption; changing it rebuilds every shard "
        "(default: %(default)s, ~256 MB per shard of 10 s clips)",
    )
    parser.add_argument(
        "--max-seconds-per-clip",
        type=float,
        default=None,
        help="keep only the first S seconds of longer files, bounding shard size for corpora with "
        "very long recordings (default: keep whole files)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild every shard even if a finished one exists"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = prepare(
            Path(args.src).resolve(),
            Path(args.out_dir).resolve(),
            workers=args.workers,
            clips_per_shard=args.clips_per_shard,
            max_seconds_per_clip=args.max_seconds_per_clip,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (PrepareError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if not is_disk_full(err):
            raise
        # DiskFullError (from the atomic writer) names the file; any other ENOSPC names what it can.
        what = str(err) if isinstance(err, DiskFullError) else f"the disk is full ({err})"
        print(
            f"error: {what}\nFinished shards are kept: free disk space and re-run the same command to resume.",
            file=sys.stderr,
        )
        return 2
    line = (
        f"prepared {summary.clips} clips ({summary.hours:.2f} hours) in {summary.shards} shards; "
        f"skipped {summary.skipped} files (see {summary.manifest_path.name})"
    )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
