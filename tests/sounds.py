"""Real sounds for tests, made on the spot with espeak-ng, sox and fluidsynth (+ fluid-soundfont-gm).

CI installs those programs (``.ci/run``); when one is missing these helpers raise ``RuntimeError``
with the apt-get line, on purpose: a test that needs real audio should fail, not skip.

The synthesis code lives in ``training.devsuite`` (the dev suite builds its tasks with it); this module
is the small API the tests use:

    espeak_word(word, voice, path, rate=16000, speed=160, pitch=50) -> Path    # 16 kHz mono 16-bit wav
    fluidsynth_note(program, pitch, path, seconds=1.0, soundfont=SOUNDFONT, velocity=100) -> Path
    tone(freq, seconds, sr=16000) -> float32 array
    noise(seconds, sr=16000, seed=0) -> float32 array
    read_wav(path) -> (float32 mono array, sr);  write_wav(path, x, sr=16000) -> Path
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import devsuite
from training.devsuite import read_wav, write_wav  # noqa: F401 - re-exported for tests

SR = devsuite.SR
SOUNDFONT = devsuite.DEFAULT_SOUNDFONT


def espeak_word(
    word: str, voice: str, path: str | Path, rate: int = SR, speed: int = 160, pitch: int = 50
) -> Path:
    """``word`` spoken by espeak-ng ``voice`` (e.g. ``"en-us"``, ``"en-gb+f3"``), resampled by sox."""
    return devsuite.espeak_word(word, voice, path, rate=rate, speed=speed, pitch=pitch)


def fluidsynth_note(
    program: int,
    pitch: int,
    path: str | Path,
    seconds: float = 1.0,
    soundfont: str | Path = SOUNDFONT,
    velocity: int = 100,
    rate: int = SR,
) -> Path:
    """One note of General MIDI ``program`` (0 = piano, 40 = violin, 56 = trumpet, 73 = flute ...) at
    MIDI ``pitch`` (60 = middle C), rendered by fluidsynth to an exactly ``seconds`` long mono wav."""
    return devsuite.fluidsynth_note(
        program, pitch, path, seconds=seconds, soundfont=soundfont, velocity=velocity, rate=rate
    )


def tone(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    return devsuite.tone(freq, seconds, sr, amplitude)


def noise(seconds: float, sr: int = SR, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    return devsuite.noise(seconds, sr, seed, amplitude)
