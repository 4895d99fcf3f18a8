"""Memory-mapped log-mel shards (from ``training.prepare``) and a fast, resumable random-crop sampler.

:class:`CropSampler` yields :class:`RawCrops`: the stored float16 frames of random crops (in pinned
memory for a GPU), which :meth:`RawCrops.to_input` turns on the training device into raw log-mel
float32 ``(B, 1, n_mels, crop_frames)``, padded with the log-mel of digital silence where a clip is
short; the order is a pure function of (seed, epoch, batch, rank). Folders prepared with ``--store
waveform`` hold one hop of float16 samples per row instead of a log-mel frame: the same gathering
serves them, and :meth:`RawCrops.to_wave` makes the (B, samples) waveform on the device (the trainer
then computes the log-mel there, after the waveform augmentations). Details and the reasons for
them: ``docs/data.md``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from hear_abt.config import FrontendConfig, NormStats

from .prepare import MANIFEST_NAME, SHARD_DTYPE, SHARD_FORMAT_VERSION, STORES, row_width

PathLike = Union[str, "os.PathLike[str]"]


def _ensure_open_file_limit(needed: int) -> None:
    """Each memory map keeps a file descriptor; ~800 AudioSet shards approach the usual 1024 limit."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


REPREPARE = "re-run `python -m training.prepare SRC DATA_DIR --overwrite` to rebuild it"


class ShardDataError(ValueError):
    """A prepared data folder is damaged: the message names the file and says how to rebuild it."""


def _bad(path: Path, problem: str) -> ShardDataError:
    return ShardDataError(f"{path}: {problem}; the prepared data is damaged or incomplete: {REPREPARE}")


def _require_keys(path: Path, obj: Any, keys: tuple[str, ...], what: str = "") -> None:
    """``obj`` (the manifest, or ``what`` in it) is a JSON object holding ``keys``."""
    if not isinstance(obj, dict):
        raise _bad(path, f"{what + ': ' if what else ''}expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise _bad(path, f"{what + ' ' if what else ''}lacks {missing}")


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, with the keys ShardDataset uses checked (types, not values)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(path, f"not valid JSON ({err})") from err
    _require_keys(path, manifest, ("format_version", "frontend", "norm", "shards"))
    version = manifest["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise _bad(path, f"format_version is {version!r}, not an integer")
    if version > SHARD_FORMAT_VERSION:
        raise ShardDataError(
            f"{path}: shard format version {version} is newer than this code reads "
            f"({SHARD_FORMAT_VERSION}); upgrade hear-abt, or {REPREPARE}"
        )
    for key in ("frontend", "norm"):
        if not isinstance(manifest[key], dict):
            raise _bad(path, f"{key!r} is not a JSON object")
    shards = manifest["shards"]
    if not isinstance(shards, list):
        raise _bad(path, "'shards' is not a list")
    for i, record in enumerate(shards):
        _require_keys(path, record, ("data", "index", "clips", "sources"), f"shard record {i}")
        clips = record["clips"]
        if not isinstance(clips, int) or isinstance(clips, bool) or clips < 0:
            raise _bad(path, f"shard record {i} has clips={clips!r}, not a count")
        if not isinstance(record["sources"], list):
            raise _bad(path, f"shard record {i}: 'sources' is not a list")
        for key in ("data", "index"):
            name = record[key]
            if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
                raise _bad(path, f"shard record {i} has {key}={name!r}, not a file inside the data folder")
    return manifest


class ShardDataset:
    """The clips of a prepared folder; ``dataset[i]`` is clip i's float16 (n_mels, frames) log-mel, or
    for a waveform folder (``store == "waveform"``) its (hop_length, hops) samples, one hop per column.

    Opening checks the folder cheaply (the manifest's keys, each shard's file sizes, array shapes
    and dtypes from the ``.npy`` headers, and every clip's frame range against its shard's length)
    without reading the log-mel data; a damaged folder is a :class:`ShardDataError` naming the file.
    """

    def __init__(self, data_dir: PathLike):
        self.data_dir = Path(data_dir).resolve()
        manifest_path = self.data_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found; run `python -m training.prepare` first")
        self.manifest: dict[str, Any] = _read_manifest(manifest_path)
        try:
            self.dtype = np.dtype(self.manifest.get("dtype", SHARD_DTYPE))
        except TypeError as err:
            raise _bad(manifest_path, f"dtype {self.manifest.get('dtype')!r} is not a numpy dtype") from err
        try:
            self.frontend = FrontendConfig(**self.manifest["frontend"])
            self.norm = NormStats(**self.manifest["norm"])
        except (TypeError, ValueError) as err:
            raise _bad(manifest_path, f"invalid 'frontend' or 'norm' ({err})") from err
        self.store = self.manifest.get("store", "logmel")
        if self.store not in STORES:
            raise _bad(manifest_path, f"store {self.store!r} is not one of {STORES}")
        self.row_width = row_width(self.frontend, self.store)
        # What a row outside a clip becomes: the log-mel of digital silence, or silent samples.
        self.silence = 0.0 if self.store == "waveform" else self.frontend.silence_value

        shard_records = [r for r in self.manifest["shards"] if r["clips"] > 0]
        _ensure_open_file_limit(len(shard_records) + 256)
        # Plain ndarray views of the maps: indexing a np.memmap subclass adds per-call overhead.
        self.shards: list[np.ndarray] = []
        shard_of, offsets, lengths = [], [], []
        self.sources: list[str] = []
        for shard_id, record in enumerate(shard_records):
            data, index = self._open_shard(record)
            self.shards.append(data)
            shard_of.append(np.full(len(index), shard_id, dtype=np.int32))
            offsets.append(index[:, 0])
            lengths.append(index[:, 1])
            self.sources.extend(record["sources"])
        if not self.shards:
            raise ShardDataError(f"{manifest_path} lists no clips: {REPREPARE} from a folder with audio")
        self.clip_shard = np.concatenate(shard_of)
        self.clip_offset = np.concatenate(offsets).astype(np.int64)
        self.clip_length = np.concatenate(lengths).astype(np.int64)

    def _open_shard(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Memory-map one shard and load its index, checking both against each other and the manifest."""
        data_path, index_path = self.data_dir / record["data"], self.data_dir / record["index"]
        for path, size_key in ((data_path, "data_bytes"), (index_path, "index_bytes")):
            if not path.is_file():
                raise _bad(path, "the shard file listed in the manifest is missing")
            expected = record.get(size_key)
            actual = path.stat().st_size
            if isinstance(expected, int) and actual != expected:
                raise _bad(path, f"the file has {actual} bytes, the manifest says {expected} (truncated?)")
        try:
            data = np.load(data_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise _bad(data_path, f"not a readable .npy shard ({err}); truncated or corrupt") from err
        if data.ndim != 2 or data.shape[1] != self.row_width or data.dtype != self.dtype:
            raise _bad(
                data_path,
                f"holds a {data.dtype} array of shape {data.shape}, expected {self.dtype} "
                f"(rows, {self.row_width}) for a {self.store} folder",
            )
        frames = record.get("frames")
        if isinstance(frames, int) and data.shape[0] != frames:
            raise _bad(data_path, f"holds {data.shape[0]} frames, the manifest says {frames}")
        try:
            index = np.load(index_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise _bad(index_path, f"not a readable .npy index ({err}); truncated or corrupt") from err
        if index.ndim != 2 or index.shape[1] != 2 or not np.issubdtype(index.dtype, np.integer):
            raise _bad(
                index_path,
                f"holds a {index.dtype} array of shape {index.shape}, expected integers (clips, 2)",
            )
        if len(index) != record["clips"] or len(record["sources"]) != record["clips"]:
            raise _bad(
                index_path,
                f"lists {len(index)} clips and the manifest {len(record['sources'])} sources, but the "
                f"manifest says {record['clips']} clips",
            )
        starts, counts = index[:, 0].astype(np.int64), index[:, 1].astype(np.int64)
        bad = np.flatnonzero((starts < 0) | (counts < 1) | (starts + counts > data.shape[0]))
        if len(bad):
            i = int(bad[0])
            raise _bad(
                index_path,
                f"clip {i} spans frames [{starts[i]}, {starts[i] + counts[i]}) but its shard "
                f"{data_path.name} has {data.shape[0]} frames ({len(bad)} clip(s) out of range)",
            )
        return np.asarray(data), index

    def __len__(self) -> int:
        return len(self.clip_length)

    def __getitem__(self, i: int) -> np.ndarray:
        start = self.clip_offset[i]
        return self.shards[self.clip_shard[i]][start : start + self.clip_length[i]].T

    def gather_rows(
        self, clip_ids: np.ndarray, starts: np.ndarray, crop_frames: int, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows [start, start + crop_frames) of each clip as stored: float16 ``(B, crop_frames, row_width)``,
        and ``inside``, bool ``(B, crop_frames)``: which frames lie inside their clip.

        ``start`` may be negative or run past the clip's end; frames outside the clip repeat its edge
        frame here and become silence in :meth:`RawCrops.to_input`. No cast or transpose on the CPU:
        those run on the training device. ``out`` may be a preallocated (pinned) array to fill.
        """
        clip_ids = np.asarray(clip_ids, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        lengths = self.clip_length[clip_ids]
        rel = starts[:, None] + np.arange(crop_frames)  # (B, T) frame within its clip
        inside = (rel >= 0) & (rel < lengths[:, None])
        rows = self.clip_offset[clip_ids, None] + np.clip(rel, 0, lengths[:, None] - 1)
        if out is None:
            out = np.empty((len(clip_ids), crop_frames, self.row_width), dtype=self.dtype)
        shard_ids = self.clip_shard[clip_ids]
        # One fancy-index gather per shard present in the batch: no per-clip Python loop.
        for shard_id in np.unique(shard_ids):
            sel = np.flatnonzero(shard_ids == shard_id)
            out[sel] = self.shards[shard_id][rows[sel]]
        return out, inside

    def gather_crops(self, clip_ids: np.ndarray, starts: np.ndarray, crop_frames: int) -> np.ndarray:
        """float32 (B, n_mels, crop_frames): :meth:`gather_rows` made model input on the CPU (no normalisation)."""
        if self.store != "logmel":
            raise ValueError(f"gather_crops reads log-mel folders; {self.data_dir} holds {self.store} shards")
        rows, inside = self.gather_rows(clip_ids, starts, crop_frames)
        raw = RawCrops(torch.from_numpy(rows), torch.from_numpy(inside), self.frontend.silence_value)
        return raw.to_input(torch.device("cpu"))[:, 0].numpy()


@dataclass
class RawCrops:
    """A batch as the reader hands it over: stored float16 frames, in pinned memory for a GPU.

    :meth:`to_input` copies it to the training device and there casts, transposes, fills the frames
    outside each clip with silence and (optionally) normalises: the work that would otherwise take
    the reader's CPU time. ``epoch``/``batch`` say which batch of the sampler it is.
    """

    frames: torch.Tensor  # float16 (B, T, n_mels), or (B, hops, hop_length) samples of a waveform folder
    inside: torch.Tensor  # bool (B, T)
    silence: float
    epoch: int = -1
    batch: int = -1

    def __len__(self) -> int:
        return self.frames.shape[0]

    def to_input(self, device: torch.device, norm: NormStats | None = None) -> torch.Tensor:
        """float32 (B, 1, n_mels, T) log-mel on ``device``, normalised by ``norm`` when given."""
        frames = self.frames.to(device, non_blocking=True)
        inside = self.inside.to(device, non_blocking=True)
        x = frames.float().transpose(1, 2).masked_fill(~inside[:, None, :], self.silence).unsqueeze(1)
        return norm.apply(x) if norm is not None else x

    def to_wave(self, device: torch.device) -> torch.Tensor:
        """float32 (B, hops * hop_length) waveform on ``device``, silent outside each clip."""
        frames = self.frames.to(device, non_blocking=True)
        inside = self.inside.to(device, non_blocking=True)
        return frames.float().masked_fill(~inside[:, :, None], 0.0).flatten(1)


def default_reader_threads() -> int:
    """Reader threads: the batches are gathered in parallel (numpy releases the GIL while copying)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus - 1))


class CropSampler:
    """Endless-by-epoch batches of random ``crop_frames``-frame crops, reproducible and resumable.

    ``for crops in sampler`` yields :class:`RawCrops` for the rest of the current epoch (``len(sampler)``
    batches from its start) and leaves the sampler at the next epoch, so ``for epoch ...: for x in
    sampler`` and ``while step < n: for x in sampler`` both work. With ``prefetch > 0``, ``threads``
    threads build up to ``prefetch`` batches ahead, handed out in order; every batch is a pure
    function of (seed, epoch, batch, rank), so the thread count never changes what is yielded, and
    the state always reflects the batches already handed out. ``pin_memory`` (for a CUDA device)
    builds each batch in page-locked memory, so that its copy to the GPU is asynchronous.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        crop_frames: int = 96,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        prefetch: int = 4,
        threads: int = 1,
        pin_memory: bool = False,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if batch_size < 1 or crop_frames < 1:
            raise ValueError(f"batch_size and crop_frames must be >= 1, got {batch_size}, {crop_frames}")
        if threads < 1:
            raise ValueError(f"reader threads must be >= 1, got {threads}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.crop_frames = crop_frames
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.threads = threads
        self.pin_memory = pin_memory
        self._torch_dtype = torch.from_numpy(np.empty(0, dtype=dataset.dtype)).dtype
        self.clips_per_rank = len(dataset) // world_size
        if drop_last:
            self.batches_per_epoch = self.clips_per_rank // batch_size
        else:
            self.batches_per_epoch = math.ceil(self.clips_per_rank / batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} clips over {world_size} ranks do not fill one batch of {batch_size}"
            )
        self.epoch = 0
        self.batch = 0  # index of the next batch to hand out within self.epoch
        self._order_cache: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's clip indices for ``epoch``, in order."""
        cached_epoch, order = self._order_cache
        if cached_epoch != epoch:
            perm = np.random.Generator(np.random.PCG64(self.seed + epoch)).permutation(len(self.dataset))
            order = perm[self.rank :: self.world_size][: self.clips_per_rank]
            self._order_cache = (epoch, order)  # one tuple: safe to replace from any reader thread
        return order

    def batch_at(self, epoch: int, batch: int) -> RawCrops:
        """Batch ``batch`` of ``epoch``; a pure function of (seed, epoch, batch, rank)."""
        clip_ids = self.epoch_indices(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]
        rng = np.random.Generator(np.random.PCG64([self.seed, epoch, batch, self.rank]))
        excess = self.dataset.clip_length[clip_ids] - self.crop_frames
        # Long clips: a window inside the clip. Short clips: the clip at a random place in a
        # window of silence (the window may start before the clip), so padding is not always right.
        starts = rng.integers(np.minimum(excess, 0), np.maximum(excess, 0) + 1)
        frames = torch.empty(
            (len(clip_ids), self.crop_frames, self.dataset.row_width),
            dtype=self._torch_dtype,
            pin_memory=self.pin_memory,
        )
        _, inside = self.dataset.gather_rows(clip_ids, starts, self.crop_frames, out=frames.numpy())
        inside = torch.from_numpy(inside)
        return RawCrops(
            frames,
            inside.pin_memory() if self.pin_memory else inside,
            self.dataset.silence,
            epoch,
            batch,
        )

    def _advance(self, epoch: int, batch: int) -> None:
        """Record that ``batch`` of ``epoch`` has been handed out."""
        if batch + 1 >= self.batches_per_epoch:
            self.epoch, self.batch = epoch + 1, 0
        else:
            self.epoch, self.batch = epoch, batch + 1

    def __iter__(self) -> Iterator[RawCrops]:
        epoch, first = self.epoch, self.batch
        if self.prefetch <= 0:
            for b in range(first, self.batches_per_epoch):
                crops = self.batch_at(epoch, b)
                self._advance(epoch, b)
                yield crops
            return
        yield from self._prefetched(epoch, first)

    def _prefetched(self, epoch: int, first: int) -> Iterator[RawCrops]:
        ahead = max(self.prefetch, self.threads)
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        submitted = first
        pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="CropSampler")
        try:
            for b in range(first, self.batches_per_epoch):
                while submitted < self.batches_per_epoch and len(pending) < ahead:
                    pending.append(pool.submit(self.batch_at, epoch, submitted))
                    submitted += 1
                crops = pending.popleft().result()  # a reader's error is raised here, in order
                self._advance(epoch, b)
                yield crops
        finally:
            # Consumer gone (break, error, end): drop queued batches, wait for those being built.
            pool.shutdown(wait=True, cancel_futures=True)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch."""
        self.epoch, self.batch = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "crop_frames": self.crop_frames,
            "num_clips": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` left off; the settings that shape the batches must match."""
        for key in ("seed", "rank", "world_size", "batch_size", "crop_frames", "num_clips"):
            ours = self.state_dict()[key]
            if key in state and state[key] != ours:
                raise ValueError(f"sampler state has {key}={state[key]}, but this sampler has {ours}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if not 0 <= self.batch < self.batches_per_epoch:
            raise ValueError(f"batch {self.batch} outside epoch of {self.batches_per_epoch} batches")


__all__ = ["CropSampler", "RawCrops", "ShardDataError", "ShardDataset", "default_reader_threads"]
