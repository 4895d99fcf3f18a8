"""The embeddings-on-disk formats of ``hear-abt embed``: a writer and a reader for each.

- ``--out emb.npz`` (:class:`NpzWriter`; read with :func:`read_npz`, or ``np.load``): ``files``,
  ``failed``, ``scene_embeddings`` (n_files, D), and every file's timestamp embeddings concatenated as
  ``timestamp_embeddings`` / ``timestamps_ms``, file i being rows
  ``timestamp_offsets[i]:timestamp_offsets[i+1]``. Held in memory, written once by :meth:`finish`.
- ``--out-dir emb/`` (:class:`FolderWriter`; read lazily with :func:`open_embeddings`):
  ``index.json`` (format ``hear-abt-embeddings`` v1: the run's :class:`RunInfo`, per file its entry,
  the failures), ``scene_embeddings.npy`` and per file ``timestamps/NNNNNN.emb.npy`` + ``.ms.npy``,
  streamed to disk by :class:`NpyWriter` as they are computed.

Every file is written atomically (a temporary file beside it, then a rename, :mod:`hear_abt.fileio`),
never in place. A writer hands out one :class:`TimestampSink` per audio file
(:meth:`EmbeddingsWriter.file`), which :func:`hear_abt.streaming.embed_file` feeds chunk by chunk;
a file that fails leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .fileio import FileSyncer, PathLike, atomic_open, atomic_write_text, file_syncer

INDEX_NAME = "index.json"
LAYOUT_FORMAT = "hear-abt-embeddings"
LAYOUT_VERSION = 1
SCENE_FILE = "scene_embeddings.npy"
_TIMESTAMP_FILE = re.compile(r"\d{6}\.(emb|ms)\.npy")

# ---- .npy written row by row ---------------------------------------------------------------------

_NPY_HEADER_BYTES = 128  # magic (6) + version (2) + length (2) + padded dict: room for any 2-D shape


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header of exactly ``_NPY_HEADER_BYTES`` bytes (numpy pads its own likewise)."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    room = _NPY_HEADER_BYTES - 10 - 1
    if len(text) > room:
        raise ValueError(f"shape {shape} does not fit a {_NPY_HEADER_BYTES}-byte .npy header")
    body = (text + " " * (room - len(text)) + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


class _Aborted(Exception):
    pass


class NpyWriter:
    """Append rows of shape ``row_shape`` to a .npy file without holding them in memory.

    Rows go to a temporary file beside ``path`` (``.NAME.*.tmp``); :meth:`close` writes the final
    header (the row count need not be known in advance), fsyncs and renames it over ``path``, so
    readers never see a half-written file. :meth:`abort` (or an exception inside ``with``) removes it.
    The result is an ordinary .npy: ``np.load(path, mmap_mode="r")`` reads it lazily. With a
    ``syncer``, the fsync is left to it (renamed at once, made durable with the others later).
    """

    def __init__(
        self,
        path: PathLike,
        row_shape: tuple[int, ...],
        dtype: Any = np.float32,
        syncer: FileSyncer | None = None,
    ):
        self.path = Path(path)
        self.row_shape = tuple(int(n) for n in row_shape)
        self.dtype = (
            np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
        )
        self.rows = 0
        # The project's one atomic writer, held open across appends (temp file, fsync, rename).
        self._syncer = syncer
        self._writer = atomic_open(self.path, "wb", fsync=syncer is None)
        self._f = self._writer.__enter__()
        self._done = False
        self._f.write(_npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} appended to a .npy of rows {self.row_shape}")
        self._f.write(rows.tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self._done = True
        self._writer.__exit__(None, None, None)
        if self._syncer is not None:
            self._syncer.add(self.path)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            aborted = _Aborted(f"writing {self.path} was abandoned")
            self._writer.__exit__(_Aborted, aborted, None)  # removes the temporary file

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---- one audio file's timestamp embeddings -------------------------------------------------------


class TimestampSink:
    """Receives one audio file's timestamp embeddings chunk by chunk, in order (the ``on_timestamps``
    of :func:`hear_abt.streaming.embed_file`). This base keeps nothing: a run without timestamps."""

    def __call__(self, emb: np.ndarray, ts: np.ndarray) -> None:
        """Rows ``emb`` (n, D) float32 and their timestamps ``ts`` (n,) float32, in ms."""

    def close(self) -> None:
        """The file is complete: make what was received permanent."""

    def abort(self) -> None:
        """The file failed: keep nothing of it."""

    def index_fields(self) -> dict[str, str]:
        """What the file's index entry records about its timestamp embeddings."""
        return {}


class MemorySink(TimestampSink):
    """Collects one file's timestamp embeddings in memory (the .npz format)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.embs: list[np.ndarray] = []
        self.ts: list[np.ndarray] = []

    def __call__(self, emb: np.ndarray, ts: np.ndarray) -> None:
        self.embs.append(emb)
        self.ts.append(ts)

    def abort(self) -> None:
        self.embs, self.ts = [], []

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(n_timestamps, D) embeddings and (n_timestamps,) timestamps in ms."""
        emb = np.concatenate(self.embs) if self.embs else np.zeros((0, self.dim), np.float32)
        ms = np.concatenate(self.ts) if self.ts else np.zeros(0, np.float32)
        return emb, ms


class NpySink(TimestampSink):
    """Streams one file's timestamp embeddings into the two .npy files of the folder format."""

    def __init__(self, folder: Path, index: int, dim: int, syncer: FileSyncer | None = None) -> None:
        self.names = (f"timestamps/{index:06d}.emb.npy", f"timestamps/{index:06d}.ms.npy")
        self.emb = NpyWriter(folder / self.names[0], (dim,), np.float32, syncer)
        self.ts = NpyWriter(folder / self.names[1], (), np.float32, syncer)

    def __call__(self, emb: np.ndarray, ts: np.ndarray) -> None:
        self.emb.append(emb)
        self.ts.append(ts)

    def close(self) -> None:
        try:
            self.emb.close()
            self.ts.close()
        except BaseException:
            self.abort()  # whichever was not renamed into place yet
            raise

    def abort(self) -> None:
        self.emb.abort()
        self.ts.abort()

    def index_fields(self) -> dict[str, str]:
        return {"timestamp_embeddings": self.names[0], "timestamps_ms": self.names[1]}


# ---- a run's writers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What a run embedded, and with what: the folder format's index records these, in this order."""

    encoder: str
    weights: str
    what: str  # "scene", "timestamp" or "both"
    timestamp_mode: str
    sample_rate: int
    timestamp_hop_ms: float
    scene_embedding_size: int
    timestamp_embedding_size: int

    @property
    def scene(self) -> bool:
        return self.what in ("scene", "both")

    @property
    def timestamps(self) -> bool:
        return self.what in ("timestamp", "both")


class FileResult(Protocol):
    """What :meth:`EmbeddingsWriter.add` reads of a file's result (``hear_abt.streaming.FileResult``)."""

    n_samples: int
    n_timestamps: int
    scene: Any  # (D,) array, or None
    streamed: bool


class EmbeddingsWriter(ABC):
    """A run's output: audio files are added one at a time, :meth:`finish` writes the rest.

    Per file: ``with writer.file() as sink: result = embed_file(..., on_timestamps=sink)``, then
    ``writer.add(path, result, sink)``. The sink is closed when the block ends and aborted (nothing
    of the file kept) when it raises.
    """

    def __init__(self, out: PathLike, info: RunInfo) -> None:
        self.out = Path(out)
        self.info = info
        self.entries: list[dict[str, Any]] = []
        self.scenes: list[np.ndarray] = []
        self._resolved_folders: dict[Path, Path] = {}

    def _resolved(self, audio: Path) -> str:
        """``str(audio.resolve())``, each folder resolved once: a dataset's thousands of files share a
        few folders, and resolving walks every component of the path (a system call each)."""
        if audio.name in ("", ".", "..") or audio.is_symlink():
            return str(audio.resolve())
        folder = self._resolved_folders.get(audio.parent)
        if folder is None:
            folder = self._resolved_folders[audio.parent] = audio.parent.resolve()
        return str(folder / audio.name)

    @contextlib.contextmanager
    def file(self) -> Iterator[TimestampSink]:
        sink = self._new_sink() if self.info.timestamps else TimestampSink()
        try:
            yield sink
        except BaseException:
            sink.abort()
            raise
        sink.close()

    def add(self, audio: PathLike, result: FileResult, sink: TimestampSink) -> None:
        """Record an audio file whose timestamp embeddings went to ``sink`` (closed)."""
        entry: dict[str, Any] = {
            "audio": self._resolved(Path(audio)),
            "seconds": result.n_samples / self.info.sample_rate,
            "n_samples": result.n_samples,
            "n_timestamps": result.n_timestamps if self.info.timestamps else 0,
            "streamed": result.streamed,
        }
        if self.info.scene:
            self.scenes.append(result.scene)
            entry["scene_row"] = len(self.scenes) - 1
        entry.update(sink.index_fields())
        self.entries.append(entry)

    @abstractmethod
    def _new_sink(self) -> TimestampSink: ...

    @abstractmethod
    def finish(self, failures: list[tuple[str, str]]) -> None:
        """Write what is still to write; ``failures``: (audio, reason) of the files not embedded."""


class NpzWriter(EmbeddingsWriter):
    """``--out emb.npz``: everything is held in memory and written once, atomically, by :meth:`finish`."""

    def __init__(self, out: PathLike, info: RunInfo) -> None:
        super().__init__(out, info)
        self._timestamps: list[tuple[np.ndarray, np.ndarray]] = []

    def _new_sink(self) -> MemorySink:
        return MemorySink(self.info.timestamp_embedding_size)

    def add(self, audio: PathLike, result: FileResult, sink: TimestampSink) -> None:
        super().add(audio, result, sink)
        if self.info.timestamps:
            self._timestamps.append(sink.arrays())

    def finish(self, failures: list[tuple[str, str]]) -> None:
        npz: dict[str, np.ndarray] = {
            "files": np.array([e["audio"] for e in self.entries], dtype=str),
            "failed": np.array([a for a, _ in failures], dtype=str),
        }
        if self.scenes:
            npz["scene_embeddings"] = np.stack(self.scenes)
        if self._timestamps:
            # Clips differ in length: concatenate and keep offsets (clip i is rows offsets[i]:offsets[i+1]).
            npz["timestamp_embeddings"] = np.concatenate([emb for emb, _ in self._timestamps])
            npz["timestamps_ms"] = np.concatenate([ms for _, ms in self._timestamps])
            npz["timestamp_offsets"] = np.cumsum([0] + [len(ms) for _, ms in self._timestamps])
        # Atomic: an interrupted write (Ctrl-C, SIGKILL, full disk) leaves the previous file or nothing.
        with atomic_open(self.out, "wb") as f:
            np.savez(f, **npz)


class FolderWriter(EmbeddingsWriter):
    """``--out-dir``: per-file arrays streamed to disk; the scene embeddings and the index by :meth:`finish`.

    Opening it removes the folder's index, so until :meth:`finish` writes the new one the folder reads
    as an interrupted run. A folder written before is replaced: its per-file arrays that the new index
    does not list are removed. The per-file arrays are made durable together by a
    :class:`hear_abt.fileio.FileSyncer` (an fsync per file cost more CPU than a tenth of embedding a 5-s
    clip), all of them before the index is written.
    """

    def __init__(self, out: PathLike, info: RunInfo) -> None:
        super().__init__(out, info)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / INDEX_NAME).unlink(missing_ok=True)  # the folder is being replaced: no stale index
        self.syncer = file_syncer()

    def _new_sink(self) -> NpySink:
        return NpySink(self.out, len(self.entries), self.info.timestamp_embedding_size, self.syncer)

    def finish(self, failures: list[tuple[str, str]]) -> None:
        index = {
            "format": LAYOUT_FORMAT,
            "version": LAYOUT_VERSION,
            **asdict(self.info),
            "scene_embeddings": self._write_scenes(),
            "files": self.entries,
            "failed": [{"audio": a, "reason": r} for a, r in failures],
        }
        self._remove_stale_timestamp_files()
        self.syncer.wait()  # the index may only list durable files
        atomic_write_text(self.out / INDEX_NAME, json.dumps(index, indent=1) + "\n")

    def _write_scenes(self) -> str | None:
        if not self.scenes:
            (self.out / SCENE_FILE).unlink(missing_ok=True)
            return None
        with NpyWriter(self.out / SCENE_FILE, (self.info.scene_embedding_size,)) as w:
            w.append(np.stack(self.scenes))
        return SCENE_FILE

    def _remove_stale_timestamp_files(self) -> None:
        """Drop a previous run's per-file arrays that this run's index does not list."""
        folder = self.out / "timestamps"
        if not folder.is_dir():
            return
        keep = {
            Path(e[k]).name for e in self.entries for k in ("timestamp_embeddings", "timestamps_ms") if k in e
        }
        for path in folder.iterdir():
            if _TIMESTAMP_FILE.fullmatch(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)


# ---- readers -------------------------------------------------------------------------------------


def open_embeddings(folder: PathLike) -> dict[str, Any]:
    """Read a folder written by ``hear-abt embed --out-dir``: its index, arrays memory-mapped (lazy).

    Returns the index (``files``, ``failed``, settings) with, per entry of ``files``, the arrays
    ``timestamp_embeddings`` (T, D) and ``timestamps_ms`` (T,) opened with ``mmap_mode="r"``, and
    ``scene_embeddings`` (n_files, D) at the top level, where they were written.
    """
    folder = Path(folder)
    index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
    if index.get("format") != LAYOUT_FORMAT:
        raise ValueError(f"{folder / INDEX_NAME} is not a {LAYOUT_FORMAT} index")
    if index.get("version", 0) > LAYOUT_VERSION:
        raise ValueError(f"{folder} was written by a newer hear-abt (layout {index['version']}): upgrade")
    for entry in index["files"]:
        for key in ("timestamp_embeddings", "timestamps_ms"):
            if entry.get(key):
                entry[key] = np.load(folder / entry[key], mmap_mode="r")
    if index.get("scene_embeddings"):
        index["scene_embeddings"] = np.load(folder / index["scene_embeddings"], mmap_mode="r")
    return index


def read_npz(path: PathLike) -> dict[str, Any]:
    """Read an ``hear-abt embed --out`` .npz (into memory) in the shape :func:`open_embeddings` returns.

    ``files``: per file ``audio``, ``scene_row`` (with scene embeddings), and with timestamp
    embeddings ``n_timestamps`` and its rows ``timestamp_embeddings`` / ``timestamps_ms`` (views of the
    concatenated arrays); ``failed``: ``audio`` of each (the .npz keeps no reasons);
    ``scene_embeddings``: (n_files, D) or None.
    """
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    scenes, offsets = arrays.get("scene_embeddings"), arrays.get("timestamp_offsets")
    files: list[dict[str, Any]] = []
    for i, audio in enumerate(arrays["files"]):
        entry: dict[str, Any] = {"audio": str(audio)}
        if scenes is not None:
            entry["scene_row"] = i
        if offsets is not None:
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            entry["n_timestamps"] = hi - lo
            entry["timestamp_embeddings"] = arrays["timestamp_embeddings"][lo:hi]
            entry["timestamps_ms"] = arrays["timestamps_ms"][lo:hi]
        files.append(entry)
    return {
        "files": files,
        "failed": [{"audio": str(a)} for a in arrays["failed"]],
        "scene_embeddings": scenes,
    }
