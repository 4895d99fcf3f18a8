"""Decode a corpus once into memory-mappable float16 log-mel (or waveform) shards for pre-training.

    python -m training.prepare SRC OUT_DIR [--workers N] [--clips-per-shard N] [--part I/N]
                               [--max-seconds-per-clip S] [--store logmel|waveform]
                               [--overwrite] [--no-progress]

SRC is a folder (searched recursively) or a list file of audio paths. Rerunning the same command
resumes. ``--part I/N`` builds only the I-th of N slices of the shards, so that several processes
or machines sharing OUT_DIR can build them at once; the command without ``--part`` then writes the
manifest. Output layout, AudioSet/FSD50K examples, locking and the statistics: docs/data.md.
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
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hear_abt import audio as _audio
from hear_abt.audio import AUDIO_EXTENSIONS, decoded_by_ffmpeg, ffmpeg_decoder_id, load_audio
from hear_abt.config import FrontendConfig
from hear_abt.fileio import DiskFullError, atomic_open, is_disk_full
from hear_abt.frontend import LogMelFrontend

from .file_locks import LockError, LockSet, describe_holder

logger = logging.getLogger("training.prepare")  # not __main__ under `python -m`

# Bump when the shard or manifest layout changes; data.py refuses newer versions. Log-mel folders
# keep version 1 (their layout is unchanged, so older readers and finished shards stay valid);
# version 2 added waveform shards (``--store waveform``), which older readers must refuse.
SHARD_FORMAT_VERSION = 2
LOGMEL_FORMAT_VERSION = 1
STORES = ("logmel", "waveform")
SHARD_DTYPE = np.float16
DEFAULT_CLIPS_PER_SHARD = 2048  # ~256 MB per shard of 10 s clips; ~800 shards for AudioSet
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
LOCK_SUFFIX = ".lock"
# Certainly not audio: counted per extension in the manifest's "ignored", not listed one by one.
# Metadata beside downloads (yt-dlp's .info.json, .description, thumbnails), list files, notes, and
# prepare's own outputs. Any other extension that is not audio is listed in "skipped" with its reason.
NON_AUDIO_EXTENSIONS = frozenset(
    "txt csv tsv json jsonl md rst log yaml yml toml xml html htm pdf description "
    "jpg jpeg png gif webp bmp svg npy npz pt pth ckpt safetensors py sh lock tmp".split()
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "NON_AUDIO_EXTENSIONS",
    "PrepareError",
    "PrepareSummary",
    "LockError",
    "ShardsBusyError",
    "combine_stats",
    "parse_part",
    "part_shards",
    "prepare",
    "scan_sources",
]


class PrepareError(ValueError):
    """The corpus cannot give usable normalisation statistics (no frames, constant or non-finite)."""


class ShardsBusyError(LockError):
    """Shards whose lock another prepare job holds (it is building them): no manifest was written."""


@dataclass(frozen=True)
class PrepareSummary:
    clips: int  # clips in the manifest; with --part, in the shards this part built or reused
    hours: float
    shards: int
    skipped: int  # files listed in the manifest's "skipped" (with --part: in this part's shards)
    built_shards: list[int]
    reused_shards: list[int]
    manifest_path: Optional[Path]  # None with --part: the command without --part writes it
    ignored: dict[str, int] = field(default_factory=dict)  # non-audio files counted, not listed
    part: Optional[tuple[int, int]] = None
    busy_shards: list[int] = field(default_factory=list)  # --part: left to the job holding them


@dataclass
class _ClipResult:
    source: str
    data: Optional[np.ndarray]  # float16 rows: (frames, n_mels) or (hops, hop_length); None when skipped
    samples: int = 0
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    error: str = ""


# --------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Sources:
    root: Path
    files: list[str]  # audio paths relative to root (or absolute), in shard order
    left_out: list[dict[str, str]]  # {"path", "reason"} of files found but not prepared, listed
    ignored: dict[str, int]  # files that are certainly not audio, counted by ".ext" (or "hidden")


def scan_sources(src: Path, exclude: Optional[Path] = None) -> Sources:
    """The audio files of a folder (recursively) or list file, and what the folder holds besides.

    Every file of a folder is accounted for: audio files are prepared; hidden files (or files under
    hidden folders) and NON_AUDIO_EXTENSIONS are counted in ``ignored``; every other file (an
    unknown extension such as .wma or a download's .part, a FIFO named .wav) is in ``left_out`` with
    its reason. Every line of a list file is prepared, whatever its extension. Files under ``exclude``
    (OUT_DIR, when it lies inside SRC) are not looked at.
    """
    src = src.resolve()
    if src.is_dir():
        # The one audio finder (hear_abt.audio, shared with `hear-abt embed`): regular files only.
        others: list[tuple[Path, str]] = []
        found = _audio.find_audio_files(src, others)
        if exclude is not None:
            exclude = exclude.resolve()
            found = [p for p in found if exclude not in p.parents]
            others = [(p, why) for p, why in others if exclude not in p.parents]
        files = [p.relative_to(src).as_posix() for p in found]
        left_out, ignored = [], Counter()
        for path, reason in others:
            rel = path.relative_to(src)
            if any(part.startswith(".") for part in rel.parts) and not _audio.is_audio_file_name(path.name):
                ignored["hidden"] += 1
            elif path.suffix.lower().lstrip(".") in NON_AUDIO_EXTENSIONS:
                ignored[path.suffix.lower()] += 1
            else:
                left_out.append({"path": rel.as_posix(), "reason": reason})
        return Sources(src, files, left_out, dict(sorted(ignored.items())))
    if src.is_file():
        lines = src.read_text(encoding="utf-8").splitlines()
        files = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return Sources(src.parent, files, [], {})
    raise FileNotFoundError(f"SRC {src} is neither a folder nor a manifest file")


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _fingerprint(
    frontend: FrontendConfig, max_samples: Optional[int], sources: Sequence[str], store: str = "logmel"
) -> str:
    """Identifies a shard's inputs: a finished shard is reused only if this matches."""
    key = {
        "format_version": LOGMEL_FORMAT_VERSION,
        "frontend": dataclasses.asdict(frontend),
        "max_samples": max_samples,
        "sources": list(sources),
        "resampler": _audio.RESAMPLE_ID,
    }
    if store != "logmel":  # log-mel shards keep the key they always had
        key["store"] = store
    if any(decoded_by_ffmpeg(source) for source in sources):
        # FFmpeg's decoders change between releases; and a shard built without PyAV (its m4a files
        # all skipped) is rebuilt once PyAV is installed. Shards of libsndfile formats keep their key.
        key["decoder"] = ffmpeg_decoder_id()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N): the I-th (1-based) of N parts, 1 <= I <= N."""
    pieces = text.strip().split("/")
    try:
        if len(pieces) != 2:
            raise ValueError
        index, count = int(pieces[0]), int(pieces[1])
    except ValueError:
        raise ValueError(f"--part must be I/N, e.g. 1/4 (the first of 4 parts), got {text!r}") from None
    _check_part((index, count))
    return index, count


def _check_part(part: tuple[int, int]) -> None:
    index, count = part
    if count < 1:
        raise ValueError(f"--part I/N needs N >= 1 parts, got {index}/{count}")
    if not 1 <= index <= count:
        hint = " (parts are numbered from 1)" if index == 0 else ""
        raise ValueError(f"--part I/N needs 1 <= I <= N, got {index}/{count}{hint}")


def part_shards(part: tuple[int, int], n_shards: int) -> range:
    """Shard indices of part I/N: the I-th of N contiguous slices of the plan, as even as can be."""
    index, count = part
    return range((index - 1) * n_shards // count, index * n_shards // count)


# ---------------------------------------------------------------------------------- temporaries


def _remove_temporaries(folder: Path, name: str) -> None:
    """Remove ``name``'s temporaries (from a killed job): call only while holding its lock."""
    for pattern in (f".{name}.*.tmp", f"{name}.*.tmp.*"):  # hear_abt.fileio's, and older versions'
        for leftover in folder.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


# ---------------------------------------------------------------------------------- decoding


_FRONTEND: Optional[LogMelFrontend] = None


def _init_worker() -> None:
    # One thread per process: the pool supplies the parallelism, and single-threaded kernels give
    # bit-identical results whichever process decodes a file (so resumed manifests match).
    torch.set_num_threads(1)
    global _FRONTEND
    _FRONTEND = LogMelFrontend(FrontendConfig())


def waveform_rows(wav: np.ndarray, hop_length: int) -> np.ndarray:
    """float16 (hops, hop_length): the samples, zero-padded to whole hops, one hop per row (so the
    readers' row gathering serves waveform shards as it does log-mel ones)."""
    rows = -(-len(wav) // hop_length)
    padded = np.zeros(rows * hop_length, dtype=np.float32)
    padded[: len(wav)] = wav
    return padded.reshape(rows, hop_length).astype(SHARD_DTYPE)


def _process_file(task: tuple[str, str, Optional[int], str]) -> _ClipResult:
    root, source, max_samples, store = task
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
        values = logmel.astype(np.float64)  # the statistics are of the log-mel, whatever is stored
        if store == "waveform":
            if np.abs(wav).max(initial=0.0) > np.finfo(SHARD_DTYPE).max:
                raise FloatingPointError(
                    f"peak sample {float(np.abs(wav).max()):.3g} overflows float16 waveform shards (audio "
                    "should lie in [-1, 1]): the file is mis-scaled"
                )
            data = waveform_rows(wav, _FRONTEND.cfg.hop_length)
        else:
            data = np.ascontiguousarray(logmel.T, dtype=SHARD_DTYPE)
        return _ClipResult(
            source=source,
            data=data,
            samples=int(wav.shape[0]),
            count=int(values.size),
            total=float(values.sum()),
            total_sq=float(np.square(values).sum()),
        )
    except Exception as err:  # never fatal: one bad file must not stop a 1.6 M-file job
        return _ClipResult(source=source, data=None, error=f"{type(err).__name__}: {err}")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    try:
        _init_worker()
        yield
    finally:
        torch.set_num_threads(previous)


def _imap_results(tasks: list[tuple[str, str, Optional[int], str]], workers: int) -> Iterator[_ClipResult]:
    """Results in task order, decoded by ``workers`` processes (inline when 1)."""
    workers = min(workers, len(tasks))  # a spawned worker costs a torch import: none idle
    if workers <= 1:
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


def row_width(frontend: FrontendConfig, store: str) -> int:
    """Values per stored row: a log-mel frame's n_mels, or a hop of waveform samples."""
    return frontend.hop_length if store == "waveform" else frontend.n_mels


def _write_shard(
    out_dir: Path,
    index: int,
    fingerprint: str,
    results: list[_ClipResult],
    frontend: FrontendConfig,
    store: str = "logmel",
) -> dict[str, Any]:
    name = _shard_name(index)
    kept = [r for r in results if r.data is not None]
    lengths = np.array([r.data.shape[0] for r in kept], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if kept else lengths
    data = (
        np.concatenate([r.data for r in kept], axis=0)
        if kept
        else np.zeros((0, row_width(frontend, store)), dtype=SHARD_DTYPE)
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
        "skipped": [{"path": r.source, "reason": r.error} for r in results if r.data is None],
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


def _build_shards(
    out_dir: Path,
    root: Path,
    plan: list[list[str]],
    fingerprints: list[str],
    todo: list[int],
    max_samples: Optional[int],
    workers: int,
    frontend: FrontendConfig,
    bar: tqdm,
    store: str = "logmel",
) -> dict[int, dict[str, Any]]:
    """Decode the files of shards ``todo`` (whose locks the caller holds) and write the shards."""
    if not todo:
        return {}
    tasks = [(str(root), source, max_samples, store) for i in todo for source in plan[i]]
    results = _imap_results(tasks, workers)
    records = {}
    try:
        with logging_redirect_tqdm():  # warnings print above the bar, not through it
            for i in todo:
                shard_results = []
                for _ in plan[i]:
                    result = next(results)
                    if result.data is None:
                        logger.warning("skipping %s: %s", result.source, result.error)
                    shard_results.append(result)
                    bar.update(1)
                records[i] = _write_shard(out_dir, i, fingerprints[i], shard_results, frontend, store)
    finally:
        if hasattr(results, "close"):
            results.close()  # shuts the pool down promptly on errors
    return records


def _lock_path(out_dir: Path, index: int) -> Path:
    return out_dir / SHARD_DIR / f"{_shard_name(index)}{LOCK_SUFFIX}"


def _reason_counts(entries: Sequence[dict[str, str]]) -> str:
    counts = Counter(e["reason"] for e in entries)
    return "; ".join(f"{n} x {reason}" for reason, n in sorted(counts.items()))


def prepare(
    src: os.PathLike[str] | str,
    out_dir: os.PathLike[str] | str,
    *,
    workers: int = 1,
    clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD,
    max_seconds_per_clip: Optional[float] = None,
    overwrite: bool = False,
    progress: bool = True,
    part: Optional[tuple[int, int]] = None,
    store: str = "logmel",
) -> PrepareSummary:
    """Build (or finish) the shards of ``src`` in ``out_dir`` and write its manifest.

    ``store="waveform"`` keeps float16 samples (one hop per row) instead of log-mel frames, for the
    waveform augmentations of ``training.augment_wave``; the normalisation statistics are still the
    log-mel's. A folder holds one kind: switching rebuilds every shard.

    ``part=(I, N)`` builds only the I-th (1-based) of N contiguous slices of the shard plan and writes
    no manifest: parts may run at once, on one machine or several sharing ``out_dir``, and shards
    another job holds the lock of are left to it. Without ``part`` every shard is built or reused and
    the manifest is written; shards still locked by another job raise :class:`ShardsBusyError` after
    the free ones are built (and no manifest is written).
    """
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    if part is not None:
        _check_part(part)
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}")
    frontend = FrontendConfig()
    out_dir = Path(out_dir).resolve()
    (out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    found = _audio_sources(Path(src), out_dir)
    max_samples = (
        None if max_seconds_per_clip is None else max(1, int(max_seconds_per_clip * frontend.sample_rate))
    )
    sources = found.files
    plan = [sources[i : i + clips_per_shard] for i in range(0, len(sources), clips_per_shard)]
    job = _ShardJob(out_dir, found.root, plan, [_fingerprint(frontend, max_samples, s, store) for s in plan],
                    max_samples, workers, frontend, store, overwrite, progress, part)  # fmt: skip
    mine = range(len(plan)) if part is None else part_shards(part, len(plan))
    if part is not None and not mine:
        logger.warning(
            "part %d/%d has no shards: the plan has %d (use at most %d parts)", *part, len(plan), len(plan)
        )
    with LockSet() as locks:
        if part is None:
            _take_manifest_lock(locks, out_dir)
        records, built, busy = job.build(locks, mine)
        reused = sorted(set(records) - set(built))
        if part is not None:
            if busy:
                logger.warning("left %d shards to the jobs holding their locks: %s", len(busy), _held(busy))
            done = [records[i] for i in mine if i in records]
            return PrepareSummary(
                clips=sum(r["clips"] for r in done),
                hours=sum(r["seconds"] for r in done) / 3600,
                shards=len(done),
                skipped=sum(len(r["skipped"]) for r in done),
                built_shards=sorted(built),
                reused_shards=reused,
                manifest_path=None,
                ignored=found.ignored,
                part=part,
                busy_shards=sorted(busy),
            )
        if busy:
            raise ShardsBusyError(
                f"{len(busy)} shards of {out_dir} are locked by other prepare jobs, so no manifest was "
                f"written (the {len(built)} shards built here are kept): {_held(busy)}. Run this command "
                "again once those jobs have finished. A job that died on another machine leaves its lock: "
                f"if none is running, delete the lock files ({SHARD_DIR}/shard-NNNNNN{LOCK_SUFFIX}) first."
            )
        done = [records[i] for i in range(len(plan))]
        manifest_path, totals = _write_manifest(
            out_dir, found, done, frontend, clips_per_shard, max_seconds_per_clip, store
        )
    return PrepareSummary(
        clips=totals["clips"],
        hours=totals["hours"],
        shards=totals["shards"],
        skipped=totals["skipped"],
        built_shards=sorted(built),
        reused_shards=reused,
        manifest_path=manifest_path,
        ignored=found.ignored,
    )


def _audio_sources(src: Path, out_dir: Path) -> Sources:
    """The audio files of ``src`` (never those inside ``out_dir``); none is an error naming what is there."""
    found = scan_sources(src, exclude=out_dir)
    if not found.files:
        others = f"; it holds {len(found.left_out)} other files ({_reason_counts(found.left_out)})"
        raise FileNotFoundError(
            f"no audio files found in {src} (extensions: {', '.join(AUDIO_EXTENSIONS)})"
            + (others if found.left_out else "")
        )
    if found.left_out:
        logger.warning(
            "%d files in %s are not prepared (%s): the manifest's skipped list names them",
            len(found.left_out),
            found.root,
            _reason_counts(found.left_out),
        )
    return found


def _take_manifest_lock(locks: LockSet, out_dir: Path) -> None:
    """One job at a time writes the manifest (and may remove its temporaries)."""
    manifest_lock = out_dir / f"manifest{LOCK_SUFFIX}"
    holder = locks.take(manifest_lock)
    if holder is not None:
        raise LockError(
            f"another prepare without --part is writing {out_dir} ({describe_holder(holder)}). Let it "
            f"finish; if it is not running (it died on another machine), delete {manifest_lock}"
        )
    _remove_temporaries(out_dir, MANIFEST_NAME)


@dataclass
class _ShardJob:
    """What one prepare builds: the shard plan and how to build a shard."""

    out_dir: Path
    root: Path
    plan: list[list[str]]
    fingerprints: list[str]
    max_samples: Optional[int]
    workers: int
    frontend: FrontendConfig
    store: str
    overwrite: bool
    progress: bool
    part: Optional[tuple[int, int]]

    def build(self, locks: LockSet, mine: Sequence[int]) -> tuple[dict[int, dict[str, Any]], list[int], dict]:
        """Build or reuse the shards ``mine`` whose locks are free: (records, built, busy holders).

        Without ``part``, shards another job holds are looked at twice: they may finish meanwhile."""
        built: list[int] = []
        records: dict[int, dict[str, Any]] = {}
        busy: dict[int, dict[str, Any]] = {i: {} for i in mine}
        for attempt in range(1 if self.part is not None else 2):
            todo, finished, busy = _claim_shards(
                locks, self.out_dir, sorted(busy), self.fingerprints, self.overwrite
            )
            records.update(finished)
            if attempt == 0 and finished:
                logger.info("reusing %d finished shards; building %d", len(finished), len(todo))
            files = sum(len(self.plan[i]) for i in mine)
            waiting = sum(len(self.plan[i]) for i in todo) + sum(len(self.plan[i]) for i in busy)
            with tqdm(
                total=files,
                initial=files - waiting,
                unit="file",
                desc="prepare" if self.part is None else f"prepare {self.part[0]}/{self.part[1]}",
                disable=not self.progress,
                dynamic_ncols=True,
            ) as bar:
                records.update(
                    _build_shards(
                        self.out_dir,
                        self.root,
                        self.plan,
                        self.fingerprints,
                        todo,
                        self.max_samples,
                        self.workers,
                        self.frontend,
                        bar,
                        self.store,
                    )  # fmt: skip
                )
            built += todo
            if not busy:
                break
        return records, built, busy


def _claim_shards(
    locks: LockSet, out_dir: Path, indices: list[int], fingerprints: list[str], overwrite: bool
) -> tuple[list[int], dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Take the locks of shards ``indices``: (to build, finished records, holders of the others)."""
    todo, finished, busy = [], {}, {}
    for i in indices:
        holder = locks.take(_lock_path(out_dir, i))
        if holder is not None:
            busy[i] = holder
            continue
        # The shard is ours now: any temporaries of it are a killed job's.
        _remove_temporaries(out_dir / SHARD_DIR, _shard_name(i))
        record = None if overwrite else _finished_record(out_dir, i, fingerprints[i])
        if record is None:
            todo.append(i)
        else:
            finished[i] = record
    return todo, finished, busy


def _held(busy: dict[int, dict[str, Any]]) -> str:
    names = ", ".join(f"{_shard_name(i)} ({describe_holder(h)})" for i, h in sorted(busy.items())[:5])
    return names + (f" and {len(busy) - 5} more" if len(busy) > 5 else "")


def _write_manifest(
    out_dir: Path,
    found: Sources,
    done: list[dict[str, Any]],
    frontend: FrontendConfig,
    clips_per_shard: int,
    max_seconds_per_clip: Optional[float],
    store: str = "logmel",
) -> tuple[Path, dict[str, Any]]:
    """Write manifest.json from every shard's record; returns (its path, its totals)."""
    stale = sorted(
        p.name for p in (out_dir / SHARD_DIR).glob("shard-*.json") if p.stem >= _shard_name(len(done))
    )
    if stale:
        logger.warning("ignoring %d stale shards from an earlier, larger source list", len(stale))
    # Files that failed to decode (in shard order), then the files the finder left out (in path order).
    skipped = [s for r in done for s in r["skipped"]] + found.left_out
    seconds = sum(r["seconds"] for r in done)
    waveform = store == "waveform"
    manifest = {
        "format_version": SHARD_FORMAT_VERSION if waveform else LOGMEL_FORMAT_VERSION,
        "dtype": np.dtype(SHARD_DTYPE).name,
        "store": store,
        "layout": (
            "data (hops, hop_length) samples; index (clips, 2) = [first hop, hop count]"
            if waveform
            else "data (frames, n_mels); index (clips, 2) = [first frame, frame count]"
        ),
        "frontend": dataclasses.asdict(frontend),
        "norm": combine_stats(done),
        "source_root": str(found.root),
        "clips_per_shard": clips_per_shard,
        "max_seconds_per_clip": max_seconds_per_clip,
        "totals": {
            "files": len(found.files) + len(found.left_out),  # = clips + skipped
            "clips": sum(r["clips"] for r in done),
            "frames": sum(r["frames"] for r in done),
            "seconds": seconds,
            "hours": seconds / 3600,
            "shards": len(done),
            "skipped": len(skipped),
            "ignored": sum(found.ignored.values()),
        },
        "shards": [{k: v for k, v in r.items() if k != "skipped"} for r in done],
        "skipped": skipped,
        "ignored": found.ignored,
    }
    manifest_path = out_dir / MANIFEST_NAME
    _atomic_write(manifest_path, lambda f: f.write(_dumps(manifest)))
    return manifest_path, manifest["totals"]


def _default_workers() -> int:
    """The CPUs this process may run on (its affinity: what SLURM or taskset grant), else all."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus)


def _part_arg(text: str) -> tuple[int, int]:
    try:
        return parse_part(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("--part ", "", 1)) from None


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
        help="decoding processes; 1 decodes in this process (default: %(default)s, the CPUs this process "
        "may run on, os.sched_getaffinity; parts sharing a machine should split them)",
    )
    parser.add_argument(
        "--part",
        type=_part_arg,
        default=None,
        metavar="I/N",
        help="build only the I-th of N contiguous slices of the shards (1 <= I <= N; e.g. "
        "--part $SLURM_ARRAY_TASK_ID/N with --array=1-N) and write no manifest: parts may run at once, "
        "on machines sharing OUT_DIR. Then run the command without --part: it reuses their shards, builds "
        "any missing, and writes manifest.json",
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
        "--store",
        choices=STORES,
        default="logmel",
        help="what the shards hold: log-mel frames (default), or float16 16 kHz samples for the waveform "
        "augmentations (augment.wave_*; ~2.5x the size); the manifest's statistics are the log-mel's either way",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild every shard even if a finished one exists"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _raise_terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SLURM (time limit, scancel) and other schedulers stop jobs with SIGTERM, which by default ends
    Python on the spot: made an exception, it releases this job's locks as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _sigterm_as_exit():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        summary = prepare(
            Path(args.src).resolve(),
            Path(args.out_dir).resolve(),
            workers=args.workers,
            clips_per_shard=args.clips_per_shard,
            max_seconds_per_clip=args.max_seconds_per_clip,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            part=args.part,
            store=args.store,
        )
    except (PrepareError, LockError, FileNotFoundError) as err:
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
    print(_summary_line(summary))
    return 0


def _summary_line(summary: PrepareSummary) -> str:
    if summary.part is not None:
        busy = summary.busy_shards
        return (
            f"part {summary.part[0]}/{summary.part[1]}: built {len(summary.built_shards)} shards and reused "
            f"{len(summary.reused_shards)} ({summary.clips} clips, {summary.hours:.2f} hours; skipped "
            f"{summary.skipped} files)"
            + (f"; left {len(busy)} shards to the jobs holding their locks" if busy else "")
            + f". When every part has finished, run the same command without --part to write {MANIFEST_NAME}."
        )
    assert summary.manifest_path is not None
    line = (
        f"prepared {summary.clips} clips ({summary.hours:.2f} hours) in {summary.shards} shards; "
        f"skipped {summary.skipped} files (see {summary.manifest_path.name})"
    )
    if summary.ignored:
        counts = ", ".join(f"{kind}: {n}" for kind, n in summary.ignored.items())
        line += f"; ignored {sum(summary.ignored.values())} files that are not audio ({counts})"
    return line


if __name__ == "__main__":
    sys.exit(main())
