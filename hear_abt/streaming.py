"""Embedding audio files of any length from disk in bounded memory (``hear-abt embed``'s path for
files longer than a chunk; shorter ones are decoded ahead and batched by :mod:`hear_abt.dataset_embed`).

A file is read in blocks (:func:`hear_abt.audio.iter_audio_blocks`: down-mixed and resampled
blockwise by libsoxr's streaming resampler, bitwise equal to :func:`hear_abt.audio.load_audio`), and
embedded as follows.

- **Files up to one chunk** (``chunk_seconds``, default 120 s, plus the margin below) are embedded in
  one call of the HEAR API (:func:`hear_abt.get_timestamp_embeddings`, :func:`get_scene_embeddings`):
  the answer is the one-shot answer, bitwise.
- **Longer files** are embedded chunk by chunk. Timestamp chunk ``[a, b)`` (``a`` and the margin
  multiples of 4, the AudioNTT output grid, so that every chunk sits on the clip's frame grid) is
  computed by ``model.timestamp_embeddings`` on the audio of timestamps ``[a - margin, b + margin)``
  (clipped to the clip), and only timestamps ``[a, b)`` are kept. The margin (28 timestamps = 1.4 s
  by default) covers each timestamp's 950 ms window, the STFT's 64 ms and the conv stack's context, so
  every kept timestamp sees exactly the audio it sees in the one-shot call, and the clip's own edges
  are the clip's edges: the result equals the one-shot one up to float rounding (tested). Scene
  embeddings stream over the same blocks: log-mel frames are computed as they become available;
  AudioNTT keeps a running sum and maximum of its frame features (computed in time chunks with the
  encoder's context, as ``iter_frame_features`` does), ViT_C a running sum of the [CLS] outputs of
  consecutive 96-frame chunks. Memory holds one chunk of audio, mel frames and embeddings, whatever
  the file's length.

Audio blocks are checked by :func:`hear_abt.hear_api.check_audio`, the HEAR API's own check. The
formats on disk (``--out`` .npz, ``--out-dir`` folder: writers and readers, :class:`NpyWriter`,
:func:`open_embeddings`) are :mod:`hear_abt.embeddings_io`'s; their names are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .audio import PathLike, iter_audio_blocks
from .embedder import ABTEmbedder
from .embeddings_io import INDEX_NAME, LAYOUT_FORMAT, LAYOUT_VERSION, NpyWriter, open_embeddings
from .hear_api import check_audio, get_scene_embeddings, get_timestamp_embeddings

__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "INDEX_NAME",
    "LAYOUT_FORMAT",
    "LAYOUT_VERSION",
    "FileResult",
    "NpyWriter",
    "check_finite",
    "embed_file",
    "one_shot_samples",
    "open_embeddings",
    "timestamp_margin",
]

DEFAULT_CHUNK_SECONDS = 120.0

# ---- chunked embedding ---------------------------------------------------------------------------


def timestamp_margin(model: ABTEmbedder) -> int:
    """Timestamps of context each side of a chunk: a window (950 ms) + the STFT + 32 frames of conv
    context, rounded up to a multiple of 4 (the AudioNTT output grid). 28 for the standard front-end."""
    fe = model.config.frontend
    samples = model.window_frames * fe.hop_length + fe.n_fft + 32 * fe.hop_length
    return _round_up(math.ceil(samples / model.hop_samples), _grid(model))


def _chunk_timestamps(model: ABTEmbedder, chunk_seconds: float) -> int:
    """Timestamps per chunk for ``chunk_seconds``: a positive multiple of the grid."""
    grid = _grid(model)
    return max(grid, _round_up(int(round(chunk_seconds * model.sample_rate / model.hop_samples)), grid))


def one_shot_samples(model: ABTEmbedder, chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> int:
    """Samples from which a file is streamed in chunks: shorter files are embedded in one HEAR API
    call (``chunk_seconds`` plus the margin of :func:`timestamp_margin`; 121.4 s by default)."""
    return model.hop_samples * (_chunk_timestamps(model, chunk_seconds) + timestamp_margin(model))


def _grid(model: ABTEmbedder) -> int:
    """Chunk starts are multiples of this many timestamps, so a chunk's frame grid is the clip's."""
    stride = int(getattr(model.encoder, "TIME_STRIDE", 4))
    return max(1, stride // math.gcd(stride, model.hop_samples // model.config.frontend.hop_length))


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


class _Samples:
    """A growing window on a sample stream: ``data[0]`` is absolute sample ``start``."""

    def __init__(self) -> None:
        self.data = np.zeros(0, dtype=np.float32)
        self.start = 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self.data = np.concatenate([self.data, samples])

    def get(self, lo: int, hi: int) -> np.ndarray:
        return self.data[lo - self.start : hi - self.start]

    def drop_before(self, sample: int) -> None:
        if sample > self.start:
            self.data = self.data[sample - self.start :].copy()
            self.start = sample


class _TimestampChunks:
    """Timestamp embeddings of a sample stream in chunks of ``chunk`` timestamps (see module doc)."""

    def __init__(self, model: ABTEmbedder, device: torch.device, chunk: int, margin: int):
        self.model, self.device, self.chunk, self.margin = model, device, chunk, margin
        self.hop = model.hop_samples
        self.samples = _Samples()
        self.next_ts = 0

    def push(self, samples: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        self.samples.push(samples)
        while self.samples.end >= self.hop * (self.next_ts + self.chunk + self.margin):
            yield self._emit(self.next_ts + self.chunk, self.hop * (self.next_ts + self.chunk + self.margin))

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        n_samples = self.samples.end
        n_ts = self.model.num_timestamps(n_samples)
        while self.next_ts < n_ts:
            b = min(self.next_ts + self.chunk, n_ts)
            yield self._emit(b, min(n_samples, self.hop * (b + self.margin)))

    def _emit(self, b: int, end: int) -> tuple[int, np.ndarray]:
        a = self.next_ts
        first = max(0, a - self.margin)
        audio = torch.from_numpy(self.samples.get(self.hop * first, end))[None].to(self.device)
        with torch.no_grad():
            emb, _ = self.model.timestamp_embeddings(audio)
        kept = emb[0, a - first : b - first].float().cpu().numpy()
        if kept.shape[0] != b - a:
            raise RuntimeError(f"chunk [{a}, {b}) gave {kept.shape[0]} timestamps")
        self.next_ts = b
        self.samples.drop_before(self.hop * max(0, b - self.margin))
        return a, kept


class _MelFrames:
    """Log-mel frames of a clip (centred STFT, zero padded at both ends) from its samples, in order."""

    def __init__(self, model: ABTEmbedder, device: torch.device):
        fe = model.config.frontend
        self.frontend, self.device = model.frontend, device
        self.hop, self.n_fft = fe.hop_length, fe.n_fft
        self.samples = _Samples()  # in padded coordinates: n_fft // 2 zeros, then the clip
        self.samples.push(np.zeros(self.n_fft // 2, dtype=np.float32))
        self.next_frame = 0

    def push(self, samples: np.ndarray, final: bool = False) -> Optional[torch.Tensor]:
        """New samples -> (n_mels, k) frames completed by them (None if none)."""
        self.samples.push(samples)
        if final:
            self.samples.push(np.zeros(self.n_fft // 2, dtype=np.float32))
        stop = (self.samples.end - self.n_fft) // self.hop + 1 if self.samples.end >= self.n_fft else 0
        if stop <= self.next_frame:
            return None
        segment = self.samples.get(self.hop * self.next_frame, self.hop * (stop - 1) + self.n_fft)
        with torch.no_grad():
            mel = self.frontend(torch.from_numpy(segment)[None].to(self.device), center=False)[0]
        self.next_frame = stop
        self.samples.drop_before(self.hop * stop)
        return mel


class _FramePoolScene:
    """AudioNTT scene: mean + max of the frame features over the whole clip, from mel frames in order."""

    def __init__(self, model: ABTEmbedder, chunk_frames: int):
        enc = model.encoder
        self.model, self.enc = model, enc
        self.stride, self.before, self.after = enc.TIME_STRIDE, enc.CONTEXT_BEFORE, enc.CONTEXT_AFTER
        self.chunk = max(self.stride, chunk_frames // self.stride * self.stride)
        self.x: Optional[torch.Tensor] = None  # normalised frames [x_start, x_start + x.shape[-1])
        self.x_start = 0
        self.next_out = 0  # first output frame not yet pooled
        self.total: Optional[torch.Tensor] = None
        self.peak: Optional[torch.Tensor] = None
        self.count = 0

    def push(self, mel: Optional[torch.Tensor], final: bool = False) -> None:
        if mel is not None:
            x = self.model.normalize(mel)
            self.x = x if self.x is None else torch.cat([self.x, x], dim=-1)
        x_end = self.x_start + self.x.shape[-1]
        if final and x_end < self.model.window_frames:  # as the one-shot call: pad to one window
            pad = torch.full(
                (self.x.shape[0], self.model.window_frames - x_end),
                float(self.model.config.norm.apply(self.model.config.frontend.silence_value)),
                device=self.x.device,
            )
            self.x = torch.cat([self.x, pad], dim=-1)
            x_end = self.model.window_frames
        n_out_final = x_end // self.stride
        while True:
            start = self.next_out * self.stride
            if final:
                stop = min(start + self.chunk, n_out_final * self.stride)
                if stop <= start:
                    break
                hi = min(x_end, stop + self.after)
            else:
                stop = start + self.chunk
                hi = stop + self.after
                if hi > x_end:
                    break
            lo = max(0, start - self.before)
            skip = (start - lo) // self.stride
            x = self.x[:, lo - self.x_start : hi - self.x_start][None, None]
            with torch.no_grad():
                frames = self.enc.frame_features(x)[0, skip : skip + (stop - start) // self.stride].float()
            chunk_sum, chunk_max = frames.double().sum(dim=0), frames.amax(dim=0)
            self.total = chunk_sum if self.total is None else self.total + chunk_sum
            self.peak = chunk_max if self.peak is None else torch.maximum(self.peak, chunk_max)
            self.count += frames.shape[0]
            self.next_out = stop // self.stride
            keep_from = max(0, stop - self.before)
            self.x, self.x_start = self.x[:, keep_from - self.x_start :], keep_from

    def result(self) -> torch.Tensor:
        return (self.total / self.count).float() + self.peak


class _ChunkClsScene:
    """ViT scene: mean of the [CLS] outputs of consecutive 96-frame chunks, the last padded with silence."""

    def __init__(self, model: ABTEmbedder):
        self.model = model
        self.w = model.window_frames
        self.batch = model.budget_frames
        self.mel: Optional[torch.Tensor] = None
        self.total: Optional[torch.Tensor] = None
        self.count = 0

    def push(self, mel: Optional[torch.Tensor], final: bool = False) -> None:
        if mel is not None:
            self.mel = mel if self.mel is None else torch.cat([self.mel, mel], dim=-1)
        if self.mel is None:
            return
        if final and self.mel.shape[-1] % self.w:
            silence = self.model.config.frontend.silence_value
            self.mel = torch.nn.functional.pad(
                self.mel, (0, self.w - self.mel.shape[-1] % self.w), value=silence
            )
        while self.mel.shape[-1] >= (self.w if final else self.batch):
            take = min(self.mel.shape[-1] // self.w * self.w, self.batch)
            n_mels = self.mel.shape[0]
            chunks = self.mel[:, :take].reshape(n_mels, take // self.w, self.w).permute(1, 0, 2)
            with torch.no_grad():
                cls = self.model.encode_windows(chunks)
            part = cls.double().sum(dim=0)
            self.total = part if self.total is None else self.total + part
            self.count += cls.shape[0]
            self.mel = self.mel[:, take:]

    def result(self) -> torch.Tensor:
        return (self.total / self.count).float()


@dataclass
class FileResult:
    n_samples: int
    n_timestamps: int
    scene: Optional[np.ndarray]  # (D,) or None
    streamed: bool  # False: embedded in one HEAR API call


def check_finite(name: str, value: np.ndarray, peak: float) -> None:
    """Raise FloatingPointError when a file's ``name`` ("scene" or "timestamp") embedding is not finite."""
    if not np.isfinite(value).all():
        raise FloatingPointError(
            f"its {name} embedding is not finite (NaN/Inf); the audio may be far too loud "
            f"(peak {peak:.3g}) or the weights broken"
        )


def embed_file(
    path: PathLike,
    model: ABTEmbedder,
    *,
    scene: bool = True,
    timestamps: bool = True,
    on_timestamps: Optional[Callable[[np.ndarray, np.ndarray], None]] = None,
    on_audio: Optional[Callable[[float], None]] = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    device: Optional[torch.device] = None,
    blocks: Optional[Iterable[np.ndarray]] = None,
) -> FileResult:
    """Embed one audio file in bounded memory; timestamp embeddings go to ``on_timestamps`` in order.

    ``on_timestamps(embeddings (n, D) float32, timestamps_ms (n,) float32)`` is called once per chunk;
    ``on_audio(seconds)`` after each block read (for a progress bar in audio time). ``blocks``
    replaces reading ``path`` (16 kHz mono float32 blocks). Raises what the HEAR API raises for bad
    audio (``AudioInputError``), :class:`hear_abt.audio.AudioFileError` for unreadable files and
    ``FloatingPointError`` for non-finite embeddings.
    """
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    embedder = _FileEmbedder(model, device, scene, timestamps, on_timestamps, chunk_seconds)
    for block in blocks if blocks is not None else iter_audio_blocks(path, model.sample_rate):
        embedder.push(block)
        if on_audio is not None:
            on_audio(len(block) / model.sample_rate)
    return embedder.finish()


class _FileEmbedder:
    """One file, fed block by block: held for one HEAR API call while it fits one chunk (the one-shot
    answer, bitwise), streamed chunk by chunk from the block that makes it longer (see the module doc)."""

    def __init__(
        self,
        model: ABTEmbedder,
        device: torch.device,
        scene: bool,
        timestamps: bool,
        on_timestamps: Optional[Callable[[np.ndarray, np.ndarray], None]],
        chunk_seconds: float,
    ):
        self.model, self.device = model, device
        self.scene, self.timestamps, self.on_timestamps = scene, timestamps, on_timestamps
        self.chunk = _chunk_timestamps(model, chunk_seconds)
        self.margin = timestamp_margin(model)
        self.one_shot_limit = one_shot_samples(model, chunk_seconds)
        self.held: Optional[list[np.ndarray]] = []  # blocks of a file that may still fit in one chunk
        self.n_samples, self.peak = 0, 0.0
        self.ts_chunks: Optional[_TimestampChunks] = None
        self.mel_frames: Optional[_MelFrames] = None
        self.scene_pool: Optional[_FramePoolScene | _ChunkClsScene] = None

    def push(self, block: np.ndarray) -> None:
        if len(block):
            check_audio(block[None], per_sound=False)  # the HEAR API's rules, block by block
            self.peak = max(self.peak, float(np.abs(block).max()))
        self.n_samples += len(block)
        if self.held is None:
            self._stream(block)
            return
        self.held.append(block)
        if self.n_samples >= self.one_shot_limit:  # too long for one call: stream from here on
            self._start_streaming()

    def finish(self) -> FileResult:
        if self.held is not None:  # the whole file fits one chunk: one HEAR API call
            return self._one_shot()
        self._stream(np.zeros(0, dtype=np.float32), final=True)
        scene_out = None
        if self.scene_pool is not None:
            scene_out = self.scene_pool.result().cpu().numpy()
            check_finite("scene", scene_out, self.peak)
        return FileResult(self.n_samples, self.model.num_timestamps(self.n_samples), scene_out, streamed=True)

    def _start_streaming(self) -> None:
        model = self.model
        if self.timestamps:
            self.ts_chunks = _TimestampChunks(model, self.device, self.chunk, self.margin)
        if self.scene:
            self.mel_frames = _MelFrames(model, self.device)
            self.scene_pool = (
                _FramePoolScene(model, model.budget_frames)
                if model.encoder.frame_features_supported
                else _ChunkClsScene(model)
            )
        held, self.held = self.held, None
        for part in held:
            self._stream(part)

    def _stream(self, block: np.ndarray, final: bool = False) -> None:
        if self.ts_chunks is not None:
            self._deliver(self.ts_chunks.push(block))
            if final:
                self._deliver(self.ts_chunks.finish())
        if self.scene_pool is not None:
            self.scene_pool.push(self.mel_frames.push(block, final), final)

    def _deliver(self, items: Iterable[tuple[int, np.ndarray]]) -> None:
        for first, emb in items:
            check_finite("timestamp", emb, self.peak)
            k = np.arange(first, first + len(emb), dtype=np.float64)
            if self.on_timestamps is not None:
                self.on_timestamps(
                    emb, (k * self.model.hop_samples * 1000.0 / self.model.sample_rate).astype(np.float32)
                )

    def _one_shot(self) -> FileResult:
        held = self.held
        audio = torch.from_numpy(np.concatenate(held) if held else np.zeros(0, np.float32))[None].to(
            self.device
        )
        n_ts = self.model.num_timestamps(audio.shape[1]) if audio.shape[1] else 0
        scene_out = None
        if self.scene:
            scene_out = get_scene_embeddings(audio, self.model)[0].cpu().numpy()
            check_finite("scene", scene_out, self.peak)
        if self.timestamps:
            emb, ts = get_timestamp_embeddings(audio, self.model)
            emb_np = emb[0].cpu().numpy()
            check_finite("timestamp", emb_np, self.peak)
            if self.on_timestamps is not None:
                self.on_timestamps(emb_np, ts[0].cpu().numpy())
        return FileResult(self.n_samples, n_ts, scene_out, streamed=False)
