"""Embedding many audio files: short clips decoded ahead and batched (the engine of ``hear-abt embed``).

Each file takes the path :func:`hear_abt.streaming.embed_file` would give it:

- **Short files** (fewer samples than :func:`hear_abt.streaming.one_shot_samples`: ``chunk_seconds``
  plus 1.4 s, 121.4 s by default), the common case of a dataset of clips, are decoded ahead of the
  model by a pool of ``decode_workers`` threads (libsndfile, FFmpeg and libsoxr work outside the GIL),
  in input order, and checked block by block as the HEAR API checks audio
  (:func:`hear_abt.hear_api.check_audio`). Decoded clips wait in buckets by sample count; a bucket of
  ``batch_size`` clips (or ``max_batch_seconds`` of audio) goes through one call of each HEAR API
  function on a (B, n_samples) batch.
- **Longer files** are streamed chunk by chunk by :func:`hear_abt.streaming.embed_file` (bounded memory,
  as before). A file is taken for long from its header, or when decoding reaches the limit (what was
  read is dropped, and the file is read again by the stream).

Results reach the writer in input order, each file atomically through its own sink as before
(:mod:`hear_abt.embeddings_io`): the index numbering, the .npz rows and the list of failures are those
of one-by-one embedding. A file that fails (unreadable, bad samples, non-finite embedding) is reported
with the same reason as before and never stops the others; a batch whose call fails is retried clip by
clip, so that the failure is the file's own. Memory: at most ``max_queued_seconds`` of audio decoded or
being decoded and not yet written (at least one file), plus one batch's embeddings.

**Equal to one-by-one.** A clip's outputs in a batch equal the HEAR API's outputs for that clip alone up
to float rounding, not always bitwise: the same operations run on a batch, but oneDNN/MKL pick kernels
by problem size (e.g. MKL's sgemm accumulates differently below about 200 rows: a 5-s clip's 125
frames go through the scene MLP alone, 16 x 125 in a batch), and the HEAR API splits a batch into
groups of :attr:`ABTEmbedder.budget_frames`. When both embeddings are wanted, the scene comes from the
timestamp grid's log-mel and, for AudioNTT clips of a window or more, from the conv frames the
timestamp pass computed (:meth:`ABTEmbedder.scene_and_timestamp_embeddings`: one STFT and one conv
pass instead of two; oneDNN's convolution rounds differently by input width). Measured on a CPU:
timestamp embeddings bitwise equal (``batch_size=1`` bitwise, tested), scene embeddings within 3e-7
relative (tests allow 1e-6 relative).

**Worker processes** (``processes=N``, the CLI's default on a Linux CPU): the short files go in parts
to N forked processes that run this same pipeline with one torch thread each, and this process writes
their answers in input order and streams the long files (:mod:`hear_abt.embed_processes`). The
outputs equal one process's up to float rounding, as batching does (a worker batches within its part,
so batch sizes can differ): bitwise on the benchmark's 2,000 clips, within 3.4e-7 relative on 1,800
real recordings of mixed lengths.

:func:`embed_clips` is the same batching for clips already in memory.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from . import streaming
from .audio import PathLike, iter_audio_blocks
from .embedder import ABTEmbedder
from .embeddings_io import EmbeddingsWriter
from .hear_api import (
    MAX_ABS_SAMPLE,
    AudioInputError,
    check_audio,
    get_scene_embeddings,
    get_timestamp_embeddings,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DECODE_WORKERS",
    "ClipResult",
    "Progress",
    "default_model_workers",
    "embed_clips",
    "embed_files",
]

DEFAULT_BATCH_SIZE = 16
DEFAULT_DECODE_WORKERS = 2
# A batch's audio: 600 s is 38 MB of samples and, at 3072 dimensions, 147 MB of timestamp embeddings.
DEFAULT_MAX_BATCH_SECONDS = 600.0
# Audio decoded (or being decoded) and not yet written: 1200 s is 77 MB of float32 samples.
DEFAULT_MAX_QUEUED_SECONDS = 1200.0


@dataclass
class ClipResult:
    """One clip's embeddings (what the writers read of a result, with the arrays)."""

    n_samples: int
    n_timestamps: int
    scene: Optional[np.ndarray]  # (D,) float32, or None
    timestamp_embeddings: Optional[np.ndarray]  # (n_timestamps, D) float32, or None
    timestamps_ms: Optional[np.ndarray]  # (n_timestamps,) float32, or None
    streamed: bool = False  # embedded in one HEAR API call


class Progress:
    """What :func:`embed_files` reports as it goes; this base ignores it."""

    def audio(self, seconds: float) -> None:
        """``seconds`` of a long file were read (called as its blocks are embedded)."""

    def file_done(self, seconds: float) -> None:
        """A file was written or reported failed; ``seconds``: its audio not yet reported by :meth:`audio`."""


# ---- argument checks -----------------------------------------------------------------------------


def _check_model(model: Any) -> None:
    if not isinstance(model, ABTEmbedder):  # the HEAR API's own words
        raise TypeError(f"model must come from load_model(), got {type(model).__name__}")


def _check_count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_seconds(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or value == float("inf")
    ):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _checked_clip(i: int, clip: Any) -> np.ndarray:
    """One in-memory clip as contiguous float32 numpy, checked by the HEAR API's rules."""
    if isinstance(clip, (np.ndarray, torch.Tensor)) and clip.ndim != 1:
        raise AudioInputError(
            f"clip {i} must be 1-D (n_samples,), got shape {tuple(clip.shape)}; pass a sequence of clips "
            "(or a (n_sounds, n_samples) array to the HEAR API itself)"
        )
    try:
        audio = check_audio(
            clip[None] if isinstance(clip, (np.ndarray, torch.Tensor)) else clip, per_sound=False
        )
    except AudioInputError as err:
        raise AudioInputError(f"clip {i}: {err}") from err
    return np.ascontiguousarray(audio[0].detach().cpu().numpy())


# ---- a batch of clips of one length --------------------------------------------------------------


def _embed_same_length(
    clips: Sequence[np.ndarray], model: ABTEmbedder, device: torch.device, scene: bool, timestamps: bool
) -> list[ClipResult]:
    """Clips of one length through one call of each HEAR API function."""
    audio = torch.from_numpy(np.stack(clips)).to(device)
    n_samples = audio.shape[1]
    scenes = emb = ts = None
    if scene and timestamps:
        scene_t, emb_t, ts_t = _scene_and_timestamps(audio, model)
        scenes, emb, ts = scene_t.cpu().numpy(), emb_t.cpu().numpy(), ts_t.cpu().numpy()
    elif scene:
        scenes = get_scene_embeddings(audio, model).cpu().numpy()
    elif timestamps:
        emb_t, ts_t = get_timestamp_embeddings(audio, model)
        emb, ts = emb_t.cpu().numpy(), ts_t.cpu().numpy()
    return [
        ClipResult(
            n_samples,
            model.num_timestamps(n_samples),
            None if scenes is None else scenes[i].copy(),
            None if emb is None else emb[i],
            None if ts is None else ts[i],
        )
        for i in range(len(clips))
    ]


def _scene_and_timestamps(
    audio: torch.Tensor, model: ABTEmbedder
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both HEAR API answers for checked audio from one log-mel (``ABTEmbedder.scene_and_timestamp_
    embeddings``: a fifth less work per 5-s clip than two calls), on the audio's device as the API does."""
    if next(model.parameters()).device != audio.device:
        model.to(audio.device)
    with torch.no_grad():
        return model.scene_and_timestamp_embeddings(audio)


def _device_of(model: ABTEmbedder, device: Optional[torch.device]) -> torch.device:
    return next(model.parameters()).device if device is None else torch.device(device)


def embed_clips(
    clips: Iterable[Any],
    model: ABTEmbedder,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    scene: bool = True,
    timestamps: bool = True,
    device: Optional[torch.device] = None,
) -> list[ClipResult]:
    """Embed in-memory 16 kHz clips of any lengths; clips of one length share HEAR API calls.

    ``clips``: 1-D float arrays or tensors (n_samples,). Returns one :class:`ClipResult` per clip, in
    order, equal to the HEAR API's answer for each clip alone up to float rounding (see the module
    doc). Bad audio raises the HEAR API's :class:`AudioInputError`, naming the clip; no clips, the
    HEAR API's empty-batch error.
    """
    _check_model(model)
    batch_size = _check_count("batch_size", batch_size, 1)
    checked = [_checked_clip(i, clip) for i, clip in enumerate(clips)]
    if not checked:
        raise AudioInputError("audio is an empty batch (0 sounds); pass at least one clip")
    device = _device_of(model, device)
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(checked):
        by_length.setdefault(len(clip), []).append(i)
    results: list[Optional[ClipResult]] = [None] * len(checked)
    model.eval()
    for ids in by_length.values():
        for k in range(0, len(ids), batch_size):
            part = ids[k : k + batch_size]
            for i, result in zip(
                part, _embed_same_length([checked[i] for i in part], model, device, scene, timestamps)
            ):
                results[i] = result
    return results  # type: ignore[return-value]


# ---- files ---------------------------------------------------------------------------------------


def _failure_reason(path: Path, err: BaseException) -> str:
    return str(err) if str(path) in str(err) else f"{path}: {type(err).__name__}: {err}"


def _checked_peak(block: np.ndarray) -> float:
    """A decoded block's peak, the block checked by :func:`hear_abt.hear_api.check_audio`'s rules.

    In numpy: torch's small parallel ops (``check_audio`` makes six) cost about 10 ms each here, between
    file reads on a busy 2-core machine (OpenMP threads woken each time), 60 ms a file in all. Only a
    block that breaks a rule (NaN and Inf fail the comparison too) goes to ``check_audio``, which words
    the error as the HEAR API does.
    """
    peak = float(np.abs(block).max())
    if not peak <= MAX_ABS_SAMPLE:
        check_audio(block[None], per_sound=False)
        raise AudioInputError(f"audio has samples up to {peak:.3g}")  # not reached: check_audio raises
    return peak


def _decode_short(path: Path, sample_rate: int, limit: int) -> Optional[tuple[np.ndarray, float]]:
    """(samples, peak) of a file shorter than ``limit`` samples, checked block by block as the HEAR API
    checks audio (the blocks :func:`hear_abt.streaming.embed_file` reads); None from ``limit`` on."""
    held: list[np.ndarray] = []
    n, peak = 0, 0.0
    blocks = iter_audio_blocks(path, sample_rate)
    try:
        for block in blocks:
            if len(block):
                peak = max(peak, _checked_peak(block))
            n += len(block)
            if n >= limit:
                return None
            held.append(block)
    finally:
        blocks.close()  # closes the file when stopped early
    return (held[0] if len(held) == 1 else np.concatenate(held)), peak


@dataclass(eq=False)
class _Batch:
    """Clips of one length being embedded by a model worker."""

    items: list[_Item]
    future: Future


@dataclass(eq=False)
class _Item:
    """One input file on its way through the run."""

    index: int
    path: Path
    header_seconds: float
    held_seconds: float = 0.0  # counted against max_queued_seconds while the item is held
    state: str = "decoding"  # -> "clip" (decoded) -> "embedding" -> "done" / "failed"; or "long"
    future: Optional[Future] = None
    batch: Optional[_Batch] = None  # while "embedding"
    audio: Optional[np.ndarray] = None
    peak: float = 0.0
    result: Optional[ClipResult] = None
    reason: str = ""


class _Run:
    def __init__(
        self,
        model: ABTEmbedder,
        writer: EmbeddingsWriter,
        device: torch.device,
        chunk_seconds: float,
        batch_size: int,
        decode_workers: int,
        model_workers: int,
        max_batch_seconds: float,
        max_queued_seconds: float,
        progress: Progress,
    ) -> None:
        self.model, self.writer, self.device = model, writer, device
        self.model_workers = model_workers
        self.running: deque[_Batch] = deque()  # submitted to the model workers, oldest first
        self.chunk_seconds, self.batch_size, self.workers = chunk_seconds, batch_size, decode_workers
        self.sr = model.sample_rate
        self.limit = streaming.one_shot_samples(model, chunk_seconds)
        self.max_batch_samples = max_batch_seconds * self.sr
        self.max_queued = max_queued_seconds
        self.progress = progress
        self.inflight: deque[_Item] = deque()  # handed to the decoders, in input order
        self.pending: deque[_Item] = deque()  # decoded (or failed, or long), not yet written, in order
        self.buckets: dict[int, list[_Item]] = {}  # n_samples -> decoded clips awaiting their batch
        self.held = 0.0  # seconds of audio in flight or pending
        self.failures: list[tuple[str, str]] = []

    def run(self, files: Iterable[tuple[Path, float]]) -> list[tuple[str, str]]:
        todo = iter(enumerate(files))
        self.executor = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="hear-abt-decode") if self.workers else None
        )
        self.model_pool = ThreadPoolExecutor(self.model_workers, thread_name_prefix="hear-abt-model")
        try:
            self.next_file = next(todo, None)
            while True:
                self._submit(todo)
                if self.inflight:  # (their memory is counted already: collecting them costs none)
                    self._collect(self.inflight.popleft())
                elif self.running:  # nothing left to decode: results of the oldest batch
                    self._finish_batch(self.running[0])
                elif self.pending:  # memory is full (or the input ended): the oldest clip's batch goes
                    self._embed_bucket(self.pending[0])
                else:
                    break
                self._drain()
        finally:
            self.model_pool.shutdown(wait=True, cancel_futures=True)
            if self.executor is not None:
                self.executor.shutdown(wait=True, cancel_futures=True)
        return self.failures

    # ---- reading ahead

    def _submit(self, todo: Iterator[tuple[int, tuple[Path, float]]]) -> None:
        while self.next_file is not None and (
            self.held < self.max_queued or not (self.inflight or self.pending)
        ):
            index, (path, seconds) = self.next_file
            self.next_file = next(todo, None)
            item = _Item(index, Path(path), seconds)
            if seconds * self.sr >= self.limit:
                item.state = "long"  # its header says so: streamed, nothing read ahead
            else:
                item.held_seconds = (
                    min(seconds, self.limit / self.sr) if seconds > 0 else self.limit / self.sr
                )
                self.held += item.held_seconds
                if self.executor is not None:
                    item.future = self.executor.submit(_decode_short, item.path, self.sr, self.limit)
            self.inflight.append(item)

    def _collect(self, item: _Item) -> None:
        if item.state == "decoding":
            try:
                if item.future is not None:
                    decoded = item.future.result()
                else:
                    decoded = _decode_short(item.path, self.sr, self.limit)
            except Exception as err:
                self._fail(item, err)
            else:
                item.future = None
                if decoded is None:
                    item.state = "long"  # longer than its header said: streamed
                    self._release(item)
                else:
                    item.state, (item.audio, item.peak) = "clip", decoded
                    self._hold(item, len(item.audio) / self.sr)
        self.pending.append(item)
        if item.state == "clip":
            bucket = self.buckets.setdefault(len(item.audio), [])
            bucket.append(item)
            if len(bucket) >= self._batch_cap(len(item.audio)):
                self._embed_bucket(item)

    def _batch_cap(self, n_samples: int) -> int:
        return max(1, min(self.batch_size, int(self.max_batch_samples // n_samples)))

    def _hold(self, item: _Item, seconds: float) -> None:
        self.held += seconds - item.held_seconds
        item.held_seconds = seconds

    def _release(self, item: _Item) -> None:
        self._hold(item, 0.0)

    # ---- embedding

    def _embed_bucket(self, item: _Item) -> None:
        """The batch of ``item``'s length (``item`` and the clips of its length queued with it) goes to
        a model worker; with every worker busy, the oldest batch is waited for first."""
        while len(self.running) >= self.model_workers:
            self._finish_batch(self.running[0])
        items = self.buckets.pop(len(item.audio))
        batch = _Batch(items, self.model_pool.submit(self._embed, [c.audio for c in items]))
        for clip in items:
            clip.state, clip.batch = "embedding", batch
        self.running.append(batch)

    def _finish_batch(self, batch: _Batch) -> None:
        self.running.remove(batch)
        try:
            results = batch.future.result()
        except Exception as err:
            results, error = None, err
        for clip in batch.items:
            clip.batch = None
        if results is None:
            self._retry_one_by_one(batch.items, error)
        else:
            self._accept(batch.items, results)

    def _retry_one_by_one(self, clips: list[_Item], err: Exception) -> None:
        """A batch failed: find out which clip it was, one call each (in this thread)."""
        if len(clips) == 1:
            self._fail(clips[0], err)
            return
        for clip in clips:
            try:
                results = self._embed([clip.audio])
            except Exception as one_err:
                self._fail(clip, one_err)
            else:
                self._accept([clip], results)

    def _accept(self, batch: list[_Item], results: list[ClipResult]) -> None:
        for clip, result in zip(batch, results):
            try:
                if result.scene is not None:
                    streaming.check_finite("scene", result.scene, clip.peak)
                if result.timestamp_embeddings is not None:
                    streaming.check_finite("timestamp", result.timestamp_embeddings, clip.peak)
            except FloatingPointError as err:
                self._fail(clip, err)
            else:
                clip.state, clip.result, clip.audio = "done", result, None

    def _embed(self, clips: list[np.ndarray]) -> list[ClipResult]:
        info = self.writer.info
        return _embed_same_length(clips, self.model, self.device, info.scene, info.timestamps)

    def _fail(self, item: _Item, err: BaseException) -> None:
        item.state, item.reason, item.audio, item.future = (
            "failed",
            _failure_reason(item.path, err),
            None,
            None,
        )

    # ---- writing, in input order

    def _drain(self) -> None:
        while self.pending and self.pending[0].state != "clip":
            head = self.pending[0]
            if head.state == "embedding":
                if not head.batch.future.done():
                    return  # written once its batch is back; meanwhile decode and batch more
                self._finish_batch(head.batch)
                continue
            item = self.pending.popleft()
            if item.state == "done":
                self._write(item)
            elif item.state == "long":
                self._stream(item)
            else:
                self._report(item, item.header_seconds)
            self._release(item)

    def _write(self, item: _Item) -> None:
        result, item.result = item.result, None
        try:
            with self.writer.file() as sink:  # aborted (nothing of the file kept) if this raises
                if self.writer.info.timestamps:
                    sink(result.timestamp_embeddings, result.timestamps_ms)
        except Exception as err:  # e.g. a full disk: reported as the file's failure, as before
            item.reason = _failure_reason(item.path, err)
            self._report(item, result.n_samples / self.sr)
            return
        self.writer.add(item.path, result, sink)
        self.progress.file_done(result.n_samples / self.sr)

    def _stream(self, item: _Item) -> None:
        """A long file through :func:`hear_abt.streaming.embed_file` (chunked, bounded memory)."""
        read = [0.0]

        def on_audio(seconds: float) -> None:
            read[0] += seconds
            self.progress.audio(seconds)

        try:
            with self.writer.file() as sink:  # aborted (nothing of the file kept) if this raises
                result = streaming.embed_file(
                    item.path,
                    self.model,
                    scene=self.writer.info.scene,
                    timestamps=self.writer.info.timestamps,
                    on_timestamps=sink,
                    on_audio=on_audio,
                    chunk_seconds=self.chunk_seconds,
                    device=self.device,
                )
        except Exception as err:  # one bad file never aborts the others
            item.reason = _failure_reason(item.path, err)
            self._report(item, max(0.0, item.header_seconds - read[0]))
            return
        self.writer.add(item.path, result, sink)
        self.progress.file_done(0.0)

    def _report(self, item: _Item, seconds: float) -> None:
        tqdm.write(f"skipped: {item.reason}", file=sys.stderr)
        self.failures.append((str(item.path), item.reason))
        self.progress.file_done(seconds)


def default_model_workers(device: torch.device) -> int:
    """Batches embedded at once: 2 on a CPU with 2+ threads (one batch's Python and small ops overlap
    the other's compute: a 5-s clip through a small model is hundreds of short ops, which torch's
    intra-op threads cannot fill), else 1 (a GPU queues its kernels itself)."""
    return 2 if torch.device(device).type == "cpu" and torch.get_num_threads() >= 2 else 1


@contextlib.contextmanager
def _threads_per_worker(device: torch.device, workers: int) -> Iterator[None]:
    """Share torch's CPU threads among ``workers`` concurrent batches (a process-wide setting),
    restored afterwards."""
    before = torch.get_num_threads()
    if torch.device(device).type == "cpu" and workers > 1:
        torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_files(
    files: Sequence[PathLike],
    model: ABTEmbedder,
    writer: EmbeddingsWriter,
    *,
    chunk_seconds: float = streaming.DEFAULT_CHUNK_SECONDS,
    device: Optional[torch.device] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    decode_workers: int = DEFAULT_DECODE_WORKERS,
    model_workers: Optional[int] = None,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    max_queued_seconds: float = DEFAULT_MAX_QUEUED_SECONDS,
    header_seconds: Optional[Sequence[float]] = None,
    progress: Optional[Progress] = None,
    processes: int = 0,
) -> list[tuple[str, str]]:
    """Embed audio files into ``writer`` in input order; returns the failures as (audio, reason).

    Short files are decoded by ``decode_workers`` threads (0: in this thread, between batches) and
    batched by length, up to ``batch_size`` clips and ``max_batch_seconds`` of audio per HEAR API
    call (``batch_size=1``: one call per file), ``model_workers`` batches at once (default:
    :func:`default_model_workers`; torch's CPU threads are shared among them for the run); longer
    ones are streamed (see the module doc).
    ``header_seconds``: each file's duration from its header (:func:`hear_abt.audio.audio_seconds`;
    0 if unknown), read here when not given. ``processes``: worker processes that decode and embed the
    short files (CPU only; :mod:`hear_abt.embed_processes`), 0: all in this process.
    ``writer.finish`` is left to the caller. Ctrl-C and SystemExit pass (the file being written leaves
    nothing; the decoders and workers are stopped).
    """
    from .audio import audio_seconds

    _check_model(model)
    batch_size = _check_count("batch_size", batch_size, 1)
    decode_workers = _check_count("decode_workers", decode_workers, 0)
    device = _device_of(model, device)
    if model_workers is None:
        model_workers = default_model_workers(device)
    model_workers = _check_count("model_workers", model_workers, 1)
    chunk_seconds = _check_seconds("chunk_seconds", chunk_seconds)
    max_batch_seconds = _check_seconds("max_batch_seconds", max_batch_seconds)
    max_queued_seconds = _check_seconds("max_queued_seconds", max_queued_seconds)
    processes = _check_count("processes", processes, 0)
    if processes and device.type != "cpu":
        raise ValueError(
            f"processes must be 0 on {device} (worker processes embed on the CPU), got {processes}"
        )
    paths = [Path(p) for p in files]
    if header_seconds is None:
        header_seconds = [audio_seconds(p) for p in paths]
    if len(header_seconds) != len(paths):
        raise ValueError(f"header_seconds has {len(header_seconds)} entries for {len(paths)} files")
    model.eval()
    if processes:
        from .embed_processes import ProcessRun

        run_class = functools.partial(ProcessRun, processes)
    else:
        run_class = _Run
    run = run_class(
        model,
        writer,
        device,
        chunk_seconds,
        batch_size,
        decode_workers,
        model_workers,
        max_batch_seconds,
        max_queued_seconds,
        progress or Progress(),
    )
    # With worker processes this one only streams the long files, with all its threads.
    with _threads_per_worker(device, 1 if processes else model_workers):
        return run.run(zip(paths, header_seconds))
