"""Real sounds made on this machine: espeak-ng speech, fluidsynth notes, and numpy signals and noises.

The building blocks of the development suite (``abt_eval.devsuite``), the pre-training corpus
(``abt_eval.corpus``) and the tests. The external programs come from the Debian packages
``espeak-ng sox fluidsynth fluid-soundfont-gm``; a missing one is a ``RuntimeError`` naming the apt-get
line, never a silent skip. See ``docs/evaluation.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from hear_abt.audio import read_mono
from hear_abt.config import SAMPLE_RATE
from hear_abt.fileio import atomic_open

__all__ = [
    "APT_PACKAGES",
    "DEFAULT_SOUNDFONT",
    "NOISE_COLOURS",
    "SAMPLE_RATE",
    "active_power",
    "active_span",
    "coloured_noise",
    "espeak_word",
    "fade",
    "fluidsynth_note",
    "fluidsynth_notes",
    "midi_bytes",
    "missing_packages",
    "noise",
    "normalise",
    "place",
    "power_law_noise",
    "process_pool",
    "read_mono",
    "render_midi",
    "seed_for",
    "split_slots",
    "tone",
    "write_wav",
]

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"  # Debian fluid-soundfont-gm
APT_PACKAGES = "espeak-ng sox fluidsynth fluid-soundfont-gm"
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent


# ------------------------------------------------------------------------------------------ plumbing


def missing_packages(*files: str) -> list[str]:
    """The Debian packages of :data:`APT_PACKAGES` (and of ``files``, soundfonts) not installed here.

    ``files`` are paths under /usr/share/sounds named after their package's soundfont; each missing
    one adds the package that ships it.
    """
    import shutil

    programs = {"espeak-ng": "espeak-ng", "sox": "sox", "fluidsynth": "fluidsynth"}
    missing = [package for program, package in programs.items() if shutil.which(program) is None]
    if not Path(DEFAULT_SOUNDFONT).is_file():
        missing.append("fluid-soundfont-gm")
    by_file = {
        "TimGM6mb.sf2": "timgm6mb-soundfont",
        "MuseScore_General_Full.sf3": "musescore-general-soundfont",
    }
    missing += [by_file.get(Path(f).name, f) for f in files if not Path(f).is_file()]
    return missing


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, **kw)
    except FileNotFoundError as e:
        raise RuntimeError(
            f"{cmd[0]} is not installed: apt-get install -y --no-install-recommends {APT_PACKAGES}"
        ) from e
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {err[-2000:]}")
    return r


def seed_for(seed: int, *parts) -> int:
    """A 64-bit seed derived from ``seed`` and any ``parts`` (task, split, index ...): stable across runs,
    processes and Python versions, so every random choice follows from one user seed."""
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


def process_pool(jobs: int) -> cf.ProcessPoolExecutor | None:
    """A pool of ``jobs`` worker processes (forked where possible), or None for ``jobs <= 1`` (run inline)."""
    if jobs <= 1:
        return None
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)


def write_wav(path: str | Path, x: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write mono 16-bit PCM (clipped to [-1, 1]) atomically: a reader never sees half a file."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        sf.write(f, np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    return path


# ------------------------------------------------------------------------------------------ speech


def espeak_word(
    word: str, voice: str, path: str | Path, rate: int = SAMPLE_RATE, speed: int = 160, pitch: int = 50
) -> Path:
    """Speak ``word`` with espeak-ng ``voice`` (e.g. ``en-us+f3``) into a ``rate`` Hz mono 16-bit wav."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    speech = _run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]).stdout
    if len(speech) < 100:
        raise RuntimeError(f"espeak-ng produced no audio for {word!r} with voice {voice!r}")
    _run(
        ["sox", "-R", "-D", "-t", "wav", "-", "-r", str(rate), "-c", "1", "-b", "16", str(path)], input=speech
    )
    return path


# ------------------------------------------------------------------------------------------ music


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def midi_bytes(notes: list[tuple[float, float, int, int, int]], ticks_per_beat: int = 480) -> bytes:
    """A format-0 Standard MIDI File playing ``notes`` = [(start_s, duration_s, program, pitch, velocity)].

    Notes go to channel 0 with a program change just before each note (so notes that overlap must share
    a program). Tempo 120 bpm: one tick is 1/960 s.
    """
    tempo_us = 500_000
    ticks_per_s = ticks_per_beat * 1_000_000 / tempo_us
    events = []  # (tick, order, bytes): note-offs before program changes before note-ons at a tick
    for start, dur, program, pitch, velocity in notes:
        if not (0 <= program < 128 and 0 <= pitch < 128 and 0 < velocity < 128):
            raise ValueError(f"bad note {(start, dur, program, pitch, velocity)}")
        on, off = round(start * ticks_per_s), round((start + dur) * ticks_per_s)
        events.append((on, 1, bytes([0xC0, program])))
        events.append((on, 2, bytes([0x90, pitch, velocity])))
        events.append((off, 0, bytes([0x80, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    track = b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big")
    last = 0
    for tick, _, data in events:
        track += _vlq(tick - last) + data
        last = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_beat)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def render_midi(
    midi: bytes, soundfont: str | Path = DEFAULT_SOUNDFONT, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Render MIDI bytes with fluidsynth (reverb and chorus off) to mono float32 at ``rate``."""
    if not Path(soundfont).is_file():
        raise RuntimeError(f"soundfont {soundfont} not found: apt-get install fluid-soundfont-gm")
    with tempfile.TemporaryDirectory(prefix="abt-sounds-") as tmp:
        mid, wav = Path(tmp, "in.mid"), Path(tmp, "out.wav")
        mid.write_bytes(midi)
        cmd = ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-F", str(wav), "-r", str(rate)]
        _run(cmd + [str(soundfont), str(mid)])
        x, sr = read_mono(wav)
    if sr != rate:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, asked {rate}")
    return x


def split_slots(
    x: np.ndarray, count: int, slot: float, seconds: float, rate: int = SAMPLE_RATE
) -> list[np.ndarray]:
    """Cut ``count`` pieces of exactly ``seconds`` from a rendering that holds one every ``slot`` s
    (zero-padded at the end if the rendering stops early), each with a short fade-out."""
    n = int(round(seconds * rate))
    out = []
    for i in range(count):
        a = int(round(i * slot * rate))
        seg = np.zeros(n, np.float32)
        piece = x[a : a + n]
        seg[: len(piece)] = piece
        out.append(fade(seg, rate))
    return out


def fluidsynth_notes(
    notes: list[tuple[int, int, int]],
    seconds: float = 1.0,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    rate: int = SAMPLE_RATE,
    hold: float | list[float] = 0.8,
) -> list[np.ndarray]:
    """Render many single notes [(program, pitch, velocity)] in one fluidsynth run (one per slot).

    Each note is held for ``hold * seconds`` (``hold``: one fraction, or one per note) and returned as
    exactly ``seconds`` of mono float32 (the release is kept up to the end, with a 10 ms fade-out).
    """
    slot = seconds + 1.0
    holds = [hold] * len(notes) if isinstance(hold, (int, float)) else list(hold)
    midi = midi_bytes(
        [(i * slot, h * seconds, p, k, v) for i, ((p, k, v), h) in enumerate(zip(notes, holds))]
    )
    return split_slots(render_midi(midi, soundfont, rate), len(notes), slot, seconds, rate)


def fluidsynth_note(
    program: int,
    pitch: int,
    path: str | Path,
    seconds: float = 1.0,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    velocity: int = 100,
    rate: int = SAMPLE_RATE,
) -> Path:
    """One General MIDI note (``program`` 0-127: 0 piano, 40 violin, 56 trumpet, 73 flute ...; MIDI
    ``pitch``, 60 = middle C) as an exactly ``seconds`` long mono wav."""
    (x,) = fluidsynth_notes([(program, pitch, velocity)], seconds, soundfont, rate)
    return write_wav(path, x, rate)


# ------------------------------------------------------------------------------------------ signals


def tone(freq: float, seconds: float, sr: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    """A sine of ``freq`` Hz, float32."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sr: int = SAMPLE_RATE, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    """White Gaussian noise with standard deviation ``amplitude``."""
    n = int(round(seconds * sr))
    return (amplitude * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def power_law_noise(n: int, exponent: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``n`` samples (float64, not normalised) of Gaussian noise whose power spectrum falls as
    ``1 / f**exponent`` (0 white, 1 pink, 2 brown); flat below 20 Hz, so brown noise does not drift."""
    f = np.maximum(np.fft.rfftfreq(n, 1 / sr), 20.0)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * f ** (-exponent / 2), n)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def coloured_noise(n: int, shares: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-RMS noise: a mix of ``NOISE_COLOURS`` with the given power ``shares``."""
    out = np.zeros(n)
    for colour, share in shares.items():
        if share <= 0:
            continue
        x = power_law_noise(n, NOISE_COLOURS[colour], rng)
        out += np.sqrt(share) * x / (_rms(x) + 1e-12)
    return (out / (_rms(out) + 1e-12)).astype(np.float32)


def fade(x: np.ndarray, sr: int = SAMPLE_RATE, ms: float = 10.0) -> np.ndarray:
    """Linear fade-in and fade-out of ``ms`` milliseconds (a copy; at most half the signal each)."""
    n = min(len(x) // 2, int(sr * ms / 1000))
    if n:
        x = x.copy()
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def active_span(x: np.ndarray, sr: int = SAMPLE_RATE, threshold_db: float = -35.0) -> tuple[int, int]:
    """First and one-past-last sample of 10 ms frames within ``threshold_db`` of the loudest frame."""
    hop = max(1, sr // 100)
    nfr = max(1, len(x) // hop)
    rms = np.sqrt(np.mean(x[: nfr * hop].reshape(nfr, hop) ** 2, axis=1) + 1e-12)
    on = np.flatnonzero(20 * np.log10(rms / rms.max()) > threshold_db)
    if on.size == 0:
        return 0, len(x)
    return int(on[0] * hop), int(min(len(x), (on[-1] + 1) * hop))


def active_power(x: np.ndarray) -> float:
    """Mean power of ``x`` over its active span (``active_span``): the level SNRs refer to."""
    a, b = active_span(x)
    return float(np.mean(np.asarray(x[a:b], dtype=np.float64) ** 2)) + 1e-20


def place(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    """``x`` at ``offset`` in ``n`` zeros (cut, with a fade, if it runs past the end)."""
    out = np.zeros(n, np.float32)
    piece = x[: max(0, n - offset)]
    if len(piece) < len(x):
        piece = fade(piece)
    out[offset : offset + len(piece)] = piece
    return out


def normalise(x: np.ndarray, peak: float) -> np.ndarray:
    """``x`` scaled to an absolute peak of ``peak`` (silence is returned unchanged)."""
    m = float(np.abs(x).max())
    return x if m == 0 else (x * (peak / m)).astype(np.float32)
