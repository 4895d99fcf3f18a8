"""Decode an audio file into the mono 16 kHz float32 waveform every front-end call expects.

Decoding: libsndfile (``soundfile``) reads its formats (``SOUNDFILE_EXTENSIONS``: wav, flac, ogg/vorbis,
...); FFmpeg, through PyAV (the ``av`` package, whose wheels carry FFmpeg), reads what libsndfile cannot
(``FFMPEG_EXTENSIONS``: AAC in m4a/mp4/aac and Opus in webm/mka, as YouTube, and so AudioSet, serves
them), and any file libsndfile fails to open when ``av`` is installed. ``av`` is imported only when a
file needs it; without it such a file is an :class:`AudioFileError` that says how to install it.

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

import contextlib
import importlib.util
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import soundfile as sf
import soxr

from .config import SAMPLE_RATE

PathLike = Union[str, "os.PathLike[str]"]

RESAMPLER = "soxr"
RESAMPLE_QUALITY = "HQ"
# Identifies the resampling for caches of resampled data (training.prepare's shard fingerprints).
RESAMPLE_ID = f"{RESAMPLER}-{soxr.__version__}-{RESAMPLE_QUALITY}"

# What this libsndfile reads (MP3 since libsndfile 1.1). Not .opus, though libsndfile 1.2 opens Ogg Opus:
# its block-wise reads (hear-abt embed's streaming) diverge from whole-file reads (RMS 0.04 on a tone).
SOUNDFILE_EXTENSIONS: tuple[str, ...] = ("wav", "flac", "ogg", "oga", "aiff", "aif", "au") + (
    ("mp3",) if "MP3" in sf.available_formats() else ()
)
# Decoded by FFmpeg (PyAV): YouTube's AAC (m4a/mp4/aac) and Opus (webm; mka/opus as yt-dlp extracts it).
FFMPEG_EXTENSIONS: tuple[str, ...] = ("m4a", "mp4", "aac", "webm", "mka", "opus") + (
    () if "mp3" in SOUNDFILE_EXTENSIONS else ("mp3",)
)
AUDIO_EXTENSIONS: tuple[str, ...] = SOUNDFILE_EXTENSIONS + FFMPEG_EXTENSIONS

AV_INSTALL_HINT = "pip install av (or: pip install 'hear-abt[train]')"


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
    One channel is copied plus 0.0: the value numpy's mean gives (its sum starts at +0.0, so -0.0
    becomes 0.0), ten times faster than a mean over an axis of length one.
    """
    if data.shape[1] == 1:
        return data[:, 0] + np.float32(0.0)
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


# ------------------------------------------------------------------------------------ decoders


def _extension(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def av_available() -> bool:
    """Whether PyAV (FFmpeg) is installed, without importing it."""
    try:
        return importlib.util.find_spec("av") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["av"] is None (import blocked)
        return False


def ffmpeg_decoder_id() -> Optional[str]:
    """Identifies the FFmpeg decoding (PyAV and libavcodec versions), or None without PyAV: for caches
    of decoded data (training.prepare's fingerprints of shards that hold FFmpeg-decoded files)."""
    try:
        import av
    except ImportError:
        return None
    libavcodec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return f"pyav-{av.__version__}-libavcodec-{libavcodec}"


def _import_av(path: Path) -> Any:
    try:
        import av
    except ImportError as err:
        raise AudioFileError(
            f"cannot read audio file {path}: .{_extension(path)} files are decoded by FFmpeg through PyAV, "
            f"which is not installed: {AV_INSTALL_HINT}"
        ) from err
    return av


def _ffmpeg_message(err: BaseException) -> str:
    # PyAV's errors end with the file name it was given (our "file:" URL); the caller names the path.
    reason = getattr(err, "strerror", None) or str(err)
    return f"FFmpeg: {reason}"


# Integer sample formats -> float32 in [-1, 1), with the scaling libsndfile uses.
_INT_SCALE = {"u8": (128.0, 128.0), "s16": (0.0, 2.0**15), "s32": (0.0, 2.0**31), "s64": (0.0, 2.0**63)}


def _frame_samples(frame: Any) -> np.ndarray:
    """A decoded PyAV AudioFrame as float32 (samples, channels)."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    fmt = frame.format
    data = array.T if fmt.is_planar else array.reshape(-1, channels)
    name = fmt.name.rstrip("p")
    if name in _INT_SCALE:
        offset, scale = _INT_SCALE[name]
        return ((data.astype(np.float64) - offset) / scale).astype(np.float32)
    return data.astype(np.float32, copy=False)


def _ffmpeg_blocks(frames: Iterator[Any], block_frames: Optional[int]) -> Iterator[np.ndarray]:
    """Decoded frames regrouped into float32 (samples, channels) blocks of at least ``block_frames``
    samples (None: one block); a block never mixes sample rates or channel counts."""
    pending: list[np.ndarray] = []
    pending_frames = 0
    rate = None
    for frame in frames:
        if rate is None:
            rate = frame.sample_rate
        elif frame.sample_rate != rate:
            raise ValueError(f"its sample rate changes from {rate} to {frame.sample_rate} Hz part-way")
        data = _frame_samples(frame)
        if pending and data.shape[1] != pending[0].shape[1]:  # the channel count changed: flush first
            yield np.concatenate(pending)
            pending, pending_frames = [], 0
        pending.append(data)
        pending_frames += len(data)
        if block_frames is not None and pending_frames >= block_frames:
            yield np.concatenate(pending)
            pending, pending_frames = [], 0
    if pending:
        yield np.concatenate(pending)


def _open_ffmpeg(path: Path, block_seconds: Optional[float]) -> tuple[Any, int, Iterator[np.ndarray]]:
    """(open container, to close; sample rate; blocks) of a file decoded by FFmpeg."""
    av = _import_av(path)
    try:
        # "file:" keeps FFmpeg from taking a name such as "a:b.m4a" or "http:..." for a protocol.
        container = av.open("file:" + str(path), mode="r")
    except Exception as err:
        raise AudioFileError(f"cannot read audio file {path}: {_ffmpeg_message(err)}") from err
    try:
        if not container.streams.audio:
            raise AudioFileError(f"cannot read audio file {path}: it holds no audio stream")
        frames = container.decode(container.streams.audio[0])
        # The rate is the first decoded frame's, which can differ from the header's (HE-AAC's SBR doubles it).
        try:
            first = next(frames, None)
        except Exception as err:
            raise AudioFileError(f"cannot read audio file {path}: {_ffmpeg_message(err)}") from err
        if first is None:
            raise AudioFileError(f"audio file {path} contains no samples")
    except BaseException:
        container.close()
        raise
    sr = int(first.sample_rate)
    block_frames = None if block_seconds is None else max(1, int(block_seconds * sr))
    return container, sr, _ffmpeg_blocks(_chain(first, frames), block_frames)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# libsndfile turns 16-bit samples into floats as sample * (1 / 32768), which is exact, but about ten
# times slower than reading the integers and converting them in numpy: the same values, bit for bit.
_PCM16_SCALE = np.float32(1.0 / 32768.0)


def _soundfile_blocks(f: sf.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    pcm16 = f.subtype == "PCM_16"
    while True:
        if pcm16:
            data = f.read(block_frames, dtype="int16", always_2d=True).astype(np.float32) * _PCM16_SCALE
        else:
            data = f.read(block_frames, dtype="float32", always_2d=True)
        if len(data) == 0:
            return
        yield data
        if block_frames < 0:  # -1 reads the whole file in one block
            return


def decoded_by_ffmpeg(path: PathLike) -> bool:
    """Whether a file's extension is one of FFMPEG_EXTENSIONS (read by PyAV, never by libsndfile)."""
    return _extension(Path(path)) in FFMPEG_EXTENSIONS


def _open_decoder(path: Path, block_seconds: Optional[float]) -> tuple[Any, int, Iterator[np.ndarray]]:
    """libsndfile first; FFmpeg for FFMPEG_EXTENSIONS, and for any file libsndfile cannot open when PyAV
    is installed (e.g. AAC saved as .wav). Returns (handle to close, sample rate, blocks)."""
    if decoded_by_ffmpeg(path):
        return _open_ffmpeg(path, block_seconds)
    try:
        f = sf.SoundFile(str(path))
    except Exception as sf_error:  # libsndfile raises several types (LibsndfileError, TypeError, ...)
        if not av_available():
            raise AudioFileError(f"cannot read audio file {path}: {sf_error}") from sf_error
        try:
            return _open_ffmpeg(path, block_seconds)
        except AudioFileError as err:
            raise AudioFileError(f"{err} (libsndfile: {sf_error})") from err
    sr = int(f.samplerate)
    block_frames = -1 if block_seconds is None else max(1, int(block_seconds * sr))
    return f, sr, _soundfile_blocks(f, block_frames)


@contextlib.contextmanager
def _open_audio(path: PathLike, block_seconds: Optional[float]) -> Iterator[tuple[int, Iterator[np.ndarray]]]:
    """(sample rate, float32 (samples, channels) blocks of about ``block_seconds``; None: one block).

    Errors while opening are AudioFileErrors naming the file; errors while reading the blocks are
    raised as they come, for the caller to name with the position reached.
    """
    path = Path(path)
    _check_regular_file(path)
    handle, sr, blocks = _open_decoder(path, block_seconds)
    with handle:
        yield sr, blocks


def _check_regular_file(path: Path) -> None:
    if not path.exists():
        kind = "a broken symbolic link" if path.is_symlink() else "no such file"
        raise AudioFileError(f"cannot read audio file {path}: {kind}")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device?)"
        raise AudioFileError(f"cannot read audio file {path}: it is {kind}")


def _checked(data: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(data).all():
        raise AudioFileError(f"audio file {path} contains NaN or infinite samples")
    return data


def read_mono(path: PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as (mono float32 samples, its own sample rate); no resampling.

    Raises :class:`AudioFileError` naming the file when it cannot be decoded, is not a regular file
    (a FIFO or device would block the reader), holds no samples, or contains non-finite values
    (which would poison every statistic computed from it).
    """
    path = Path(path)
    with _open_audio(path, None) as (sr, blocks):
        try:
            parts = [_downmix(_checked(data, path)) for data in blocks]
        except AudioFileError:
            raise
        except Exception as err:
            raise AudioFileError(f"cannot read audio file {path}: {_reason(err)}") from err
    if not parts or sum(map(len, parts)) == 0:
        raise AudioFileError(f"audio file {path} contains no samples")
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), sr


def _reason(err: BaseException) -> str:
    av_error = type(err).__module__.startswith("av")
    return _ffmpeg_message(err) if av_error else str(err)


def load_audio(path: PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read an audio file (wav/flac/ogg/mp3/m4a/webm/...) as mono float32 (samples,) at ``sample_rate``.

    Raises :class:`AudioFileError` naming the file when it cannot be decoded, holds no samples,
    or contains non-finite values (which would poison every statistic computed from it).
    """
    data, sr = read_mono(path)
    try:
        return resample(data, sr, sample_rate)
    except (ValueError, RuntimeError, MemoryError) as err:
        raise AudioFileError(f"cannot resample audio file {path} from {sr} Hz: {err}") from err


def audio_seconds(path: PathLike) -> float:
    """Duration of an audio file from its header (0.0 when it cannot be read): for progress bars."""
    path = Path(path)
    try:
        if not decoded_by_ffmpeg(path):
            info = sf.info(str(path))
            if info.samplerate > 0 and info.frames > 0:
                return info.frames / info.samplerate
            return 0.0
    except Exception:  # not libsndfile's: FFmpeg may know it
        pass
    try:
        if not av_available() or not path.is_file():
            return 0.0
        import av

        with av.open("file:" + str(path), mode="r") as container:
            return max(0.0, (container.duration or 0) / av.time_base)
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
    NaN/Inf. Blocks may be empty (the resampler's delay); when resampling, each block is yielded after
    the next one is read (the last one also flushes the resampler).
    """
    path = Path(path)
    with _open_audio(path, block_seconds) as (sr, blocks):
        if sr <= 0:
            raise AudioFileError(f"cannot resample audio file {path}: sample rate {sr}")
        # Resampled blocks lag one block behind the reads: a file of one block (a short clip, the
        # commonest case) is resampled in one call, a fifth faster than a stream, with the same values.
        stream, pending = None, None
        n_read = 0
        while True:
            try:
                data = next(blocks, None)
            except Exception as err:
                raise AudioFileError(
                    f"cannot read audio file {path} after {n_read / sr:.1f} s: {_reason(err)}"
                ) from err
            if data is None:
                break
            if len(data) == 0:
                continue
            _checked(data, path)
            n_read += len(data)
            mono = _downmix(data)
            if sr == sample_rate:
                yield mono
                continue
            if pending is not None:
                if stream is None:
                    stream = soxr.ResampleStream(
                        sr, int(sample_rate), 1, dtype="float32", quality=RESAMPLE_QUALITY
                    )
                yield stream.resample_chunk(pending, last=False)
            pending = mono
        if n_read == 0:
            raise AudioFileError(f"audio file {path} contains no samples")
        if pending is not None:
            yield (
                resample(pending, sr, sample_rate)
                if stream is None
                else stream.resample_chunk(pending, last=True)
            )


def is_audio_file_name(name: str) -> bool:
    """Whether a file name has one of :data:`AUDIO_EXTENSIONS` (case-insensitive)."""
    return Path(name).suffix.lower().lstrip(".") in AUDIO_EXTENSIONS


def _not_regular_reason(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a broken symbolic link" if path.is_symlink() else "it cannot be opened"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a FIFO: reading it would block)"
    return "not a regular file (a socket or device)"


def find_audio_files(folder: PathLike, left_out: Optional[list[tuple[Path, str]]] = None) -> list[Path]:
    """Audio files under ``folder``, recursively (following links), sorted by relative path.

    Only regular files count: a FIFO or device named ``x.wav`` is left out (reading it would block).
    Every file left out is appended to ``left_out``, when given, as (path, reason), in path order.
    """
    folder = Path(folder)
    found = []
    others = []
    for parent, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(parent) / name
            if not is_audio_file_name(name):
                suffix = Path(name).suffix.lower()
                others.append((path, f"not an audio file extension ({suffix or 'none'})"))
            elif path.is_file():
                found.append(path)
            else:
                others.append((path, _not_regular_reason(path)))
    if left_out is not None:
        left_out.extend(sorted(others, key=lambda item: item[0].relative_to(folder).as_posix()))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
