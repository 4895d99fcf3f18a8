"""Varied sounds made with numpy alone, for tests that need data rather than speech or music.

Tests that guard training, resume and export use these, so they run on a machine with only Python;
only the tests of the sound generators themselves need espeak-ng, sox or fluidsynth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
KINDS = ("harmonic", "chirp", "vowel", "noise_burst", "am_noise", "clicks", "chord")


def _resonate(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator at ``freq`` Hz (a formant)."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE), r * r
    y = np.zeros_like(x)
    for n in range(len(x)):  # short clips: a plain loop is fast enough and needs no scipy
        y[n] = x[n] - a1 * (y[n - 1] if n else 0.0) - a2 * (y[n - 2] if n > 1 else 0.0)
    return y


def make_signal(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``kind`` (see :data:`KINDS`), float32 at 16 kHz, peak about 0.3."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(90, 600)
    if kind == "harmonic":  # a note with vibrato and a few decaying partials
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / SAMPLE_RATE
        x = sum(np.sin(k * phase) / k for k in range(1, 6)) * np.exp(-rng.uniform(0.5, 3) * t)
    elif kind == "chirp":
        f1 = rng.uniform(1000, 5000)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
    elif kind == "vowel":  # a glottal pulse train through three formants: speech-like
        pulses = (np.diff(np.floor(t * f0 / 2), prepend=0) > 0).astype(np.float64)
        x = sum(_resonate(pulses, f, 80) for f in rng.uniform([300, 900, 2200], [800, 2000, 3200]))
    elif kind == "noise_burst":
        x = rng.standard_normal(t.size) * np.exp(-rng.uniform(2, 8) * t)
        x = np.convolve(x, np.ones(rng.integers(1, 8)), mode="same")  # some colour
    elif kind == "am_noise":
        x = rng.standard_normal(t.size) * (1 + np.sin(2 * np.pi * rng.uniform(2, 12) * t))
    elif kind == "clicks":
        x = np.zeros(t.size)
        x[:: int(SAMPLE_RATE / rng.uniform(3, 30))] = 1.0
        x = np.convolve(
            x, np.exp(-np.arange(200) / 20) * np.sin(np.arange(200) * rng.uniform(0.3, 2)), "same"
        )
    elif kind == "chord":
        x = sum(np.sin(2 * np.pi * f0 * r * t) for r in (1, 1.25, 1.5)) * np.minimum(1, 4 * t)
    else:
        raise ValueError(f"unknown kind {kind!r}; known: {KINDS}")
    x = np.asarray(x, dtype=np.float64)
    return (0.3 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def write_corpus(folder: Path, n: int, seconds: float = 2.0, seed: int = 0) -> list[Path]:
    """``n`` wav files cycling through :data:`KINDS`, each with its own random parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        path = folder / f"{kind}_{i:03d}.wav"
        sf.write(path, make_signal(kind, seconds, rng), SAMPLE_RATE)
        paths.append(path)
    return paths
