"""Decode an audio file into the mono 16 kHz float32 waveform every front-end call expects.

Resampling (the one place its parameters are set: ``RESAMPLE_*`` below) uses libsoxr through the
``soxr`` package, quality ``"HQ"``: a linear-phase polyphase filter with 20-bit precision whose
passband is flat to 0.01 dB up to 7 kHz and -0.4 dB at 7.5 kHz for a 16 kHz output (-25 dB at
7.8 kHz, the front-end's top mel edge; measured). Its memory is bounded for any pair of rates: the
filter does not grow with the rates' ratio, so a file whose header says 44101 or 48001 Hz costs
the same as one at 44100 Hz (``torchaudio.functional.resample`` builds a kernel sized by the
rates divided by their gcd: 5.8-12.7 GB for one second at those rates).

Audio files are found by extension (``AUDIO_EXTENSIONS``), recursively in folders, by
:func:`find_audio_files`: the one list that ``hear-abt embed`` and ``training.prepare`` share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import soxr

from .config import SAMPLE_RATE

PathLike = Union[str, "os.PathLike[str]"]

RESAMPLER = "soxr"
RESAMPLE_QUALITY = "HQ"
# Identifies the resampling for caches of resampled data (training.prepare's shard fingerprints).
RESAMPLE_ID = f"{RESAMPLER}-{soxr.__version__}-{RESAMPLE_QUALITY}"

AUDIO_EXTENSIONS: tuple[str, ...] = ("wav", "flac", "ogg", "oga", "aiff", "aif", "au") + (
    ("mp3",) if "MP3" in sf.available_formats() else ()
)


class AudioFileError(ValueError):
    """An audio file that cannot be used: unreadable, empty, or holding NaN/inf samples."""


def resample(data: np.ndarray, sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 (samples,) at ``sr`` Hz -> float32 at ``sample_rate`` Hz, in bounded memory."""
    if int(sr) != sr or sr <= 0 or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {sr} -> {sample_rate}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    if sr == sample_rate or data.size == 0:
        return data
    out = soxr.resample(data, int(sr), int(sample_rate), quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


def _downmix(data: np.ndarray) -> np.ndarray:
    """(samples, channels) -> contiguous mono float32 (samples,).

    Channels are averaged (not summed) so a mono signal duplicated into stereo keeps its level.
    """
    return np.ascontiguousarray(data.mean(axis=1, dtype=np.float32))


def to_mono_16k(data: np.ndarray, sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(samples,) or (samples, channels) audio at ``sr`` Hz -> mono float32 (samples,) at ``sample_rate``.

    Channels are averaged (not summed) so a mono signal duplicated into stereo keeps its level.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = _downmix(data)
    elif data.ndim != 1:
        raise ValueError(f"expected (samples,) or (samples, channels) audio, got shape {data.shape}")
    if sr <= 0:
        raise ValueError(f"sample rate must be positive, got {sr}")
    return resample(data, sr, sample_rate)


def read_mono(path: PathLike) -> tuple[np.ndarray, int]:
    """Read any soundfile-readable file as (mono float32 samples, its own sample rate); no resampling.

    Raises :class:`AudioFileError` naming the file when it cannot be decoded, is not a regular file
    (a FIFO or device would block the reader), holds no samples, or contains non-finite values
    (which would poison every statistic computed from it).
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types (LibsndfileError, TypeError, ...)
        raise AudioFileError(f"cannot read audio file {path}: {err}") from err
    if data.size == 0:
        raise AudioFileError(f"audio file {path} contains no samples")
    if not np.isfinite(data).all():
        raise AudioFileError(f"audio file {path} contains NaN or infinite samples")
    return _downmix(data), int(sr)


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read any soundfile-readable file (wav/flac/ogg/...) as mono float32 (samples,) at ``sample_rate``.

    Raises :class:`AudioFileError` naming the file when it cannot be decoded, holds no samples,
    or contains non-finite values (which would poison every statistic computed from it).
    """
    data, sr = read_mono(path)
    try:
        return resample(data, sr, sample_rate)
    except (ValueError, RuntimeError, MemoryError) as err:
        raise AudioFileError(f"cannot resample audio file {path} from {sr} Hz: {err}") from err


def _check_regular_file(path: Path) -> None:
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device?)"
        raise AudioFileError(f"cannot read audio file {path}: it is {kind}")


def audio_seconds(path: PathLike) -> float:
    """Duration of an audio file from its header (0.0 when it cannot be read): for progress bars."""
    try:
        info = sf.info(str(path))
        return max(0.0, info.frames / info.samplerate) if info.samplerate > 0 and info.frames > 0 else 0.0
    except Exception:  # unreadable files are reported when they are read
        return 0.0


def iter_audio_blocks(
    path: PathLike, sample_rate: int = SAMPLE_RATE, block_seconds: float = 10.0
) -> Iterator[np.ndarray]:
    """Read a file block by block as mono float32 at ``sample_rate``: memory bounded by the block size.

    The blocks concatenated equal :func:`load_audio` bitwise: channels are averaged per block as in
    :func:`read_mono`, and libsoxr's streaming resampler (which keeps its filter state between blocks)
    gives exactly the one-shot ``soxr.resample`` output. Raises :class:`AudioFileError` naming the file,
    as :func:`load_audio` does, when it cannot be decoded (also part-way), holds no samples or holds
    NaN/Inf. Blocks may be empty (the resampler's delay); the last one flushes the resampler.
    """
    path = Path(path)
    _check_regular_file(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as err:
        raise AudioFileError(f"cannot read audio file {path}: {err}") from err
    with f:
        sr = int(f.samplerate)
        stream = None
        if sr != sample_rate:
            if sr <= 0:
                raise AudioFileError(f"cannot resample audio file {path}: sample rate {sr}")
            stream = soxr.ResampleStream(sr, int(sample_rate), 1, dtype="float32", quality=RESAMPLE_QUALITY)
        block_frames = max(1, int(block_seconds * sr))
        n_read = 0
        while True:
            try:
                data = f.read(block_frames, dtype="float32", always_2d=True)
            except Exception as err:
                raise AudioFileError(
                    f"cannot read audio file {path} after {n_read / sr:.1f} s: {err}"
                ) from err
            if len(data) == 0:
                break
            if not np.isfinite(data).all():
                raise AudioFileError(f"audio file {path} contains NaN or infinite samples")
            n_read += len(data)
            mono = _downmix(data)
            yield mono if stream is None else stream.resample_chunk(mono, last=False)
        if n_read == 0:
            raise AudioFileError(f"audio file {path} contains no samples")
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def is_audio_file_name(name: str) -> bool:
    """Whether a file name has one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return Path(name).suffix.lower().lstrip(".") in AUDIO_EXTENSIONS


def find_audio_files(folder: PathLike) -> list[Path]:
    """Audio files under ``folder``, recursively (following links), sorted by relative path.

    Only regular files count: a FIFO or device named ``x.wav`` is left out (reading it would block).
    """
    folder = Path(folder)
    found = []
    for parent, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(parent) / name
            if is_audio_file_name(name) and path.is_file():
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
