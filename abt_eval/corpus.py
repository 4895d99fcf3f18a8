"""A synthetic pre-training corpus, disjoint from the development suite's test material.

    python -m abt_eval.corpus OUT_DIR [--hours 3] [--seed 0] [--jobs N] [--soundfont SF ...]

What it holds, how it stays disjoint from the suite, determinism and resuming: ``docs/evaluation.md``
("Pre-training corpus").
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hear_abt.config import SAMPLE_RATE
from hear_abt.fileio import atomic_write_text

from .devsuite import EVENT_WORDS, WORDS
from .sounds import DEFAULT_SOUNDFONT as SUITE_SOUNDFONT
from .sounds import (
    active_span,
    espeak_word,
    fade,
    midi_bytes,
    normalise,
    place,
    power_law_noise,
    process_pool,
    read_mono,
    render_midi,
    seed_for,
    split_slots,
    write_wav,
)

CLIP_SECONDS = 10.0
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)
CORPUS_VERSION = "1"
CHUNK = 24  # clips per work unit (one fluidsynth run per chunk)
SLOT_SECONDS = CLIP_SECONDS + 3.0  # each music part gets its own slot in a chunk's render, + 3 s of release
KINDS = ("speech", "music", "texture", "mix")
SUITE_WORDS = frozenset(w.lower() for w in list(WORDS) + list(EVENT_WORDS))
SOUNDFONTS = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # Debian timgm6mb-soundfont
    "/usr/share/sounds/sf3/MuseScore_General_Full.sf3",  # Debian musescore-general-soundfont
)
SOUNDFONT_PACKAGES = "timgm6mb-soundfont musescore-general-soundfont"
TEXTURES = ("noise", "rain", "siren", "chirps", "engine", "impacts")
VOICE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2"]

# Per language: espeak-ng voice, consonant (onset) and vowel inventories in the language's spelling.
LANGUAGES: dict[str, dict] = {
    "de": {
        "voice": "de",
        "c": "b d f g h k l m n p r s t w z sch ch pf st".split(),
        "v": "a e i o u ei au ä ö ü ie".split(),
    },
    "fr": {
        "voice": "fr-fr",
        "c": "b d f g j l m n p r s t v ch gn".split(),
        "v": "a e i o u ou ai eu au é è on an".split(),
    },
    "es": {"voice": "es", "c": "b c d f g j l m n ñ p r s t v ll ch".split(), "v": "a e i o u ia ue".split()},
    "it": {"voice": "it", "c": "b c d f g l m n p r s t v z gl sc".split(), "v": "a e i o u ia io".split()},
    "nl": {
        "voice": "nl",
        "c": "b d f g h k l m n p r s t v w z sch".split(),
        "v": "a e i o u aa ee oo ij ui oe".split(),
    },
    "pt": {
        "voice": "pt",
        "c": "b c d f g j l m n p r s t v lh nh ch".split(),
        "v": "a e i o u ão õe ei".split(),
    },
    "pl": {
        "voice": "pl",
        "c": "b c d f g k l ł m n p r s t w z sz cz rz dż".split(),
        "v": "a e i o u y ą ę ó".split(),
    },
    "sv": {"voice": "sv", "c": "b d f g h j k l m n p r s t v sj".split(), "v": "a e i o u y å ä ö".split()},
    "fi": {"voice": "fi", "c": "h j k l m n p r s t v".split(), "v": "a e i o u y ä ö aa ii uu".split()},
    "tr": {
        "voice": "tr",
        "c": "b c ç d f g ğ h k l m n p r s ş t v y z".split(),
        "v": "a e ı i o ö u ü".split(),
    },
    "cs": {
        "voice": "cs",
        "c": "b c č d f h ch k l m n p r ř s š t v z ž".split(),
        "v": "a e i o u y á é í ů".split(),
    },
    "hu": {
        "voice": "hu",
        "c": "b c d f g h k l m n p r s sz t v z zs gy ny".split(),
        "v": "a e i o u á é ö ü ő".split(),
    },
    "ro": {"voice": "ro", "c": "b c d f g l m n p r s ș t ț v z".split(), "v": "a e i o u ă â î".split()},
    "id": {"voice": "id", "c": "b c d g h j k l m n p r s t w ng ny".split(), "v": "a e i o u".split()},
    "sw": {"voice": "sw", "c": "b ch d f g h j k l m n p s t w z mb nd ng".split(), "v": "a e i o u".split()},
    "vi": {
        "voice": "vi",
        "c": "b c d đ g h kh l m n ng nh ph qu s t th tr v x".split(),
        "v": "a ă â e ê i o ô ơ u ư á à ả ạ ế ồ ớ".split(),
    },
    "hi": {"voice": "hi", "c": list("कखगचजटडतदनपबमयरलवसह"), "v": ["", "ा", "ि", "ी", "ु", "ू", "े", "ो"]},
    "ru": {"voice": "ru", "c": list("бвгдзклмнпрстфхцчшж"), "v": list("аеиоуыяю")},
}

# ----------------------------------------------------------------------------------------------- design


def pseudo_word(rng: np.random.Generator, lang: str) -> str:
    """A random 1-4 syllable word in ``lang``'s spelling that is not one of the suite's words."""
    inv = LANGUAGES[lang]
    while True:
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        word = "".join(
            (inv["c"][int(rng.integers(len(inv["c"])))] if rng.random() < 0.85 else "")
            + inv["v"][int(rng.integers(len(inv["v"])))]
            for _ in range(n)
        )
        if word and word.lower() not in SUITE_WORDS:
            return word


def design_speech(rng: np.random.Generator) -> dict:
    lang = str(rng.choice(sorted(LANGUAGES)))
    n_voices = int(rng.integers(1, 4))
    voices = [
        {
            "voice": f"{LANGUAGES[lang]['voice']}+{VOICE_VARIANTS[int(rng.integers(len(VOICE_VARIANTS)))]}",
            "pitch": int(rng.integers(15, 86)),
            "speed": int(rng.integers(120, 230)),
        }
        for _ in range(n_voices)
    ]
    utterances = []
    for _ in range(int(rng.integers(3, 7))):  # more than fits in 10 s, usually: the clip is cut
        words = [pseudo_word(rng, lang) for _ in range(int(rng.integers(3, 10)))]
        utterances.append(
            {
                "text": " ".join(words),
                "speaker": int(rng.integers(n_voices)),
                "pause": round(float(rng.uniform(0.1, 0.8)), 3),
            }
        )
    return {"kind": "speech", "language": lang, "voices": voices, "utterances": utterances}


SCALES = {
    "major": [0, 2, 4, 5, 7, 9, 11],
    "minor": [0, 2, 3, 5, 7, 8, 10],
    "pentatonic": [0, 2, 4, 7, 9],
    "dorian": [0, 2, 3, 5, 7, 9, 10],
    "blues": [0, 3, 5, 6, 7, 10],
    "chromatic": list(range(12)),
}


def _scale_pitches(root: int, scale: str, lo: int, hi: int) -> list[int]:
    steps = SCALES[scale]
    return [p for p in range(lo, hi + 1) if (p - root) % 12 in steps]


def design_part(rng: np.random.Generator, root: int, scale: str, style: str) -> dict:
    """One single-program part: notes (start_s, dur_s, pitch, velocity) within 10 s."""
    program = int(rng.integers(0, 120))
    beat = float(rng.uniform(0.15, 0.6))
    vel = int(rng.integers(50, 120))
    notes = []
    t = float(rng.uniform(0.0, 0.5))
    end = CLIP_SECONDS - 0.3
    if style == "melody":
        pitches = _scale_pitches(root, scale, 55, 88)
        k = int(rng.integers(len(pitches)))
        while t < end:
            dur = beat * float(rng.choice([0.5, 1, 1, 1, 2, 3]))
            if rng.random() < 0.85:
                notes.append(
                    (
                        t,
                        min(dur * 0.9, end - t),
                        pitches[k],
                        int(np.clip(vel + rng.integers(-15, 16), 20, 127)),
                    )
                )
            k = int(np.clip(k + rng.integers(-3, 4), 0, len(pitches) - 1))
            t += dur
    elif style == "chords":
        pitches = _scale_pitches(root, scale, 45, 76)
        while t < end:
            dur = beat * float(rng.choice([2, 3, 4, 6]))
            k = int(rng.integers(max(1, len(pitches) - 4)))
            for j in (0, 2, 4)[: int(rng.integers(2, 4))]:
                if k + j < len(pitches):
                    notes.append((t, min(dur * 0.95, end - t), pitches[k + j], vel))
            t += dur
    elif style == "arpeggio":
        pitches = _scale_pitches(root, scale, 48, 84)
        k = int(rng.integers(max(1, len(pitches) - 6)))
        pattern = [0, 2, 4, 2] if rng.random() < 0.5 else [0, 2, 4, 7]
        i = 0
        while t < end:
            if rng.random() < 0.1:
                k = int(rng.integers(max(1, len(pitches) - 8)))
            notes.append(
                (t, min(beat * 0.8, end - t), pitches[min(k + pattern[i % 4], len(pitches) - 1)], vel)
            )
            t += beat
            i += 1
    else:  # bass
        pitches = _scale_pitches(root, scale, 28, 55)
        while t < end:
            dur = beat * float(rng.choice([1, 2, 2, 4]))
            notes.append((t, min(dur * 0.9, end - t), pitches[int(rng.integers(len(pitches)))], vel))
            t += dur
    notes = [(round(a, 4), round(d, 4), int(p), int(v)) for a, d, p, v in notes if d > 0.03]
    return {
        "program": program,
        "style": style,
        "notes": notes,
        "gain_db": round(float(rng.uniform(-9, 0)), 2),
    }


def design_music(rng: np.random.Generator) -> dict:
    root = int(rng.integers(0, 12))
    scale = str(rng.choice(sorted(SCALES)))
    styles = ["melody", "chords", "arpeggio", "bass"]
    n = int(rng.integers(1, 4))
    chosen = [styles[i] for i in rng.choice(len(styles), size=n, replace=False)]
    return {
        "kind": "music",
        "root": root,
        "scale": scale,
        "parts": [design_part(rng, root, scale, s) for s in chosen],
    }


def design_texture(rng: np.random.Generator) -> dict:
    n = int(rng.integers(1, 3))
    layers = [
        {
            "type": TEXTURES[int(i)],
            "seed": int(rng.integers(2**31)),
            "gain_db": 0.0 if j == 0 else round(float(rng.uniform(-15, -3)), 2),
        }
        for j, i in enumerate(rng.choice(len(TEXTURES), size=n, replace=False))
    ]
    return {"kind": "texture", "layers": layers}


def design_clip(seed: int, index: int) -> dict:
    """Everything about clip ``index``: a pure function of (seed, index)."""
    block = index // 4
    kinds = np.random.default_rng(seed_for(seed, "corpus-kinds", block)).permutation(len(KINDS))
    kind = KINDS[int(kinds[index % 4])]
    rng = np.random.default_rng(seed_for(seed, "corpus", index))
    makers = {"speech": design_speech, "music": design_music, "texture": design_texture}
    if kind == "mix":
        a, b = rng.choice(3, size=2, replace=False)
        parts = [makers[("speech", "music", "texture")[int(k)]](rng) for k in (a, b)]
        clip = {"kind": "mix", "components": parts, "snr_db": round(float(rng.uniform(-5, 15)), 2)}
    else:
        clip = makers[kind](rng)
    clip["index"] = index
    clip["filename"] = f"c{index:06d}-{kind}.wav"
    clip["seed"] = seed_for(seed, "corpus-finish", index)
    return clip


def chunk_soundfont(chunk: int, soundfonts: list[str]) -> str:
    return soundfonts[chunk % len(soundfonts)]


# ----------------------------------------------------------------------------------------------- synthesis


def synth_speech(d: dict, tmp: str) -> np.ndarray:
    out = np.zeros(CLIP_SAMPLES, np.float32)
    pos = int(0.05 * SAMPLE_RATE)
    for k, u in enumerate(d["utterances"]):
        if pos >= CLIP_SAMPLES - SAMPLE_RATE // 4:
            break
        v = d["voices"][u["speaker"]]
        x, _ = read_mono(
            espeak_word(u["text"], v["voice"], Path(tmp, f"u{k}.wav"), SAMPLE_RATE, v["speed"], v["pitch"])
        )
        a, b = active_span(x, threshold_db=-40.0)
        x = normalise(x[a:b], 0.8)
        out += place(x, CLIP_SAMPLES, pos)
        pos += len(x) + int(u["pause"] * SAMPLE_RATE)
    return out


def _bandpass(x: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Log-Gaussian band around a random centre in [lo, hi] Hz, applied in the frequency domain."""
    X = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    fc = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    width = float(rng.uniform(0.3, 1.5))  # octaves (std)
    g = np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / fc) / width) ** 2)
    return np.fft.irfft(X * g, len(x)).astype(np.float32)


def _coloured(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Unit-std noise with a ``1 / f**beta`` power spectrum."""
    x = power_law_noise(n, beta, rng)
    return (x / (np.std(x) + 1e-12)).astype(np.float32)


def _envelope(rng: np.random.Generator, n: int, rate_hz: float, depth: float) -> np.ndarray:
    """A smooth random gain in [1 - depth, 1], changing at about ``rate_hz``."""
    k = max(2, int(CLIP_SECONDS * rate_hz) + 2)
    pts = rng.uniform(1 - depth, 1, k)
    return np.interp(np.linspace(0, k - 1, n), np.arange(k), pts).astype(np.float32)


def synth_texture_layer(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = CLIP_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    if kind == "noise":  # wind, water, hiss: coloured noise through a band, slowly modulated
        x = _bandpass(_coloured(rng, n, float(rng.choice([0.0, 1.0, 2.0]))), rng, 150, 5000)
        x *= _envelope(rng, n, float(rng.uniform(0.2, 2.0)), float(rng.uniform(0.2, 0.9)))
    elif kind == "rain":  # Poisson clicks with fast decays over a bed of filtered noise
        rate = float(rng.uniform(20, 400))
        imp = np.zeros(n, np.float32)
        m = rng.poisson(rate * CLIP_SECONDS)
        imp[rng.integers(0, n, m)] = (rng.lognormal(0, 0.7, m) * rng.choice([-1, 1], m)).astype(np.float32)
        tau = float(rng.uniform(0.0005, 0.004))
        kernel = (
            np.exp(-np.arange(int(SAMPLE_RATE * tau * 6)) / (SAMPLE_RATE * tau))
            * rng.standard_normal(int(SAMPLE_RATE * tau * 6))
        ).astype(np.float32)
        x = np.convolve(imp, kernel)[:n]
        x = _bandpass(x, rng, 1000, 7000) + float(rng.uniform(0.05, 0.4)) * np.std(x) * _bandpass(
            _coloured(rng, n, 1.0), rng, 200, 3000
        )
    elif kind == "siren":  # wailing or two-tone siren with harmonics
        f0 = float(rng.uniform(400, 1200))
        if rng.random() < 0.5:
            f = f0 * (1 + float(rng.uniform(0.2, 0.6)) * np.sin(2 * np.pi * float(rng.uniform(0.1, 0.6)) * t))
        else:
            f = f0 * np.where(
                np.sin(2 * np.pi * float(rng.uniform(0.3, 1.5)) * t) > 0, 1.0, float(rng.uniform(0.7, 0.85))
            )
        phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
        x = sum(
            a * np.sin(h * phase) for h, a in zip(range(1, 5), rng.uniform(0.1, 1.0, 4) / np.arange(1, 5))
        )
        x = x.astype(np.float32) + 0.02 * _coloured(rng, n, 1.0)
    elif kind == "chirps":  # bird-like phrases of fast frequency sweeps
        x = np.zeros(n, np.float32)
        pos = int(rng.uniform(0, 0.5) * SAMPLE_RATE)
        while pos < n - SAMPLE_RATE // 5:
            f1, f2 = rng.uniform(1500, 7000, 2)
            for _ in range(int(rng.integers(2, 9))):
                dur = float(rng.uniform(0.02, 0.15))
                m = int(dur * SAMPLE_RATE)
                tt = np.arange(m) / SAMPLE_RATE
                ff = f1 * (f2 / f1) ** (tt / dur)
                c = np.sin(2 * np.pi * np.cumsum(ff) / SAMPLE_RATE) * np.hanning(m)
                x[pos : pos + m] += c[: max(0, n - pos)].astype(np.float32) * float(rng.uniform(0.3, 1))
                pos += m + int(rng.uniform(0.01, 0.08) * SAMPLE_RATE)
                if pos >= n - SAMPLE_RATE // 5:
                    break
            pos += int(rng.uniform(0.2, 1.5) * SAMPLE_RATE)
        x += 0.01 * _coloured(rng, n, 1.0)
    elif kind == "engine":  # harmonic hum with a drifting fundamental and firing-rate modulation
        f0 = float(rng.uniform(25, 120)) * _envelope(
            rng, n, float(rng.uniform(0.1, 0.5)), float(rng.uniform(0.0, 0.4))
        )
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        amps = rng.uniform(0.2, 1.0, 20) / np.arange(1, 21) ** float(rng.uniform(0.5, 1.5))
        x = sum(a * np.sin(h * phase + float(rng.uniform(0, 2 * np.pi))) for h, a in zip(range(1, 21), amps))
        x = x * (1 + 0.3 * np.sin(phase / 2)) + 0.3 * np.std(x) * _bandpass(
            _coloured(rng, n, 2.0), rng, 80, 800
        )
        x = x.astype(np.float32)
    else:  # impacts: knocks/footsteps as a few damped modes at regular or random times
        x = np.zeros(n, np.float32)
        m = int(0.5 * SAMPLE_RATE)
        tt = np.arange(m) / SAMPLE_RATE
        freqs, decays = rng.uniform(150, 3500, 5), rng.uniform(0.01, 0.2, 5)
        hit = sum(np.sin(2 * np.pi * f * tt) * np.exp(-tt / d) for f, d in zip(freqs, decays)).astype(
            np.float32
        )
        regular = rng.random() < 0.5
        period = float(rng.uniform(0.3, 1.0))
        pos = float(rng.uniform(0, 0.5))
        while pos < CLIP_SECONDS - 0.1:
            a = int(pos * SAMPLE_RATE)
            x[a : a + m] += hit[: n - a] * float(rng.uniform(0.4, 1.0))
            pos += period * float(rng.uniform(0.9, 1.1)) if regular else float(rng.exponential(period))
        x += 0.005 * _coloured(rng, n, 1.0)
    return normalise(np.asarray(x, np.float32), 1.0)


def synth_texture(d: dict) -> np.ndarray:
    out = np.zeros(CLIP_SAMPLES, np.float32)
    for layer in d["layers"]:
        out += synth_texture_layer(layer["type"], layer["seed"]) * np.float32(10 ** (layer["gain_db"] / 20))
    return out


def music_parts(d: dict) -> list[dict]:
    """The music parts a clip needs rendered, in order."""
    if d["kind"] == "music":
        return d["parts"]
    if d["kind"] == "mix":
        return [p for c in d["components"] if c["kind"] == "music" for p in c["parts"]]
    return []


def render_chunk_parts(parts: list[dict], soundfont: str) -> list[np.ndarray]:
    """All ``parts`` in one fluidsynth run (one slot each); 10 s of mono float32 per part."""
    if not parts:
        return []
    notes = [
        (j * SLOT_SECONDS + start, dur, p["program"], pitch, vel)
        for j, p in enumerate(parts)
        for start, dur, pitch, vel in p["notes"]
    ]
    return split_slots(
        render_midi(midi_bytes(notes), soundfont, SAMPLE_RATE),
        len(parts),
        SLOT_SECONDS,
        CLIP_SECONDS,
        SAMPLE_RATE,
    )


def _component(d: dict, rendered: list[np.ndarray], tmp: str) -> np.ndarray:
    if d["kind"] == "speech":
        return synth_speech(d, tmp)
    if d["kind"] == "texture":
        return synth_texture(d)
    out = np.zeros(CLIP_SAMPLES, np.float32)
    for p in d["parts"]:
        out += normalise(rendered.pop(0), 1.0) * np.float32(10 ** (p["gain_db"] / 20))
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def _finish(x: np.ndarray, rng: np.random.Generator, floor: float = 3e-4) -> np.ndarray:
    """Peak 0.3-0.9 plus a faint white floor (about -70 dB)."""
    x = normalise(x, float(rng.uniform(0.3, 0.9)))
    return (x + floor * rng.standard_normal(len(x)).astype(np.float32)).astype(np.float32)


def synth_clip(d: dict, rendered: list[np.ndarray]) -> np.ndarray:
    """The finished clip (peak 0.3-0.9 plus a -70 dB noise floor) from its design and its rendered parts."""
    rendered = list(rendered)
    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        if d["kind"] == "mix":
            a, b = (_component(c, rendered, tmp) for c in d["components"])
            b = b * np.float32(_rms(a) / _rms(b) / 10 ** (d["snr_db"] / 20))
            x = a + b
        else:
            x = _component(d, rendered, tmp)
    return _finish(fade(x), np.random.default_rng(d["seed"]))


def _work_chunk(seed: int, chunk: int, n_clips: int, audio_dir: str, soundfont: str) -> int:
    """Make the missing clips of ``chunk``; the music of the whole chunk is rendered regardless, so a
    clip's bytes never depend on which others were already there. Returns the number written."""
    designs = [design_clip(seed, i) for i in range(chunk * CHUNK, (chunk + 1) * CHUNK)]
    parts = [p for d in designs for p in music_parts(d)]
    rendered = (
        render_chunk_parts(parts, soundfont)
        if any(
            d["index"] < n_clips and music_parts(d) and not Path(audio_dir, d["filename"]).exists()
            for d in designs
        )
        else [None] * len(parts)
    )
    written, j = 0, 0
    for d in designs:
        k = len(music_parts(d))
        mine, j = rendered[j : j + k], j + k
        path = Path(audio_dir, d["filename"])
        if d["index"] >= n_clips or path.exists():
            continue
        write_wav(path, synth_clip(d, mine))
        written += 1
    return written


# ----------------------------------------------------------------------------------------------- building


def check_soundfonts(soundfonts: list[str]) -> list[str]:
    missing = [s for s in soundfonts if not Path(s).is_file()]
    if missing:
        raise SystemExit(
            f"soundfont(s) {missing} not found: apt-get install -y --no-install-recommends {SOUNDFONT_PACKAGES} "
            "(or pass --soundfont PATH, any General MIDI .sf2/.sf3 other than the suite's)"
        )
    suite = Path(SUITE_SOUNDFONT).resolve()
    same = [s for s in soundfonts if Path(s).resolve() == suite]
    if same:
        raise SystemExit(f"{same} is the development suite's soundfont; the corpus must use another")
    return [str(s) for s in soundfonts]


def summarise(designs: list[dict]) -> dict:
    """Seconds per kind, and counts of languages, GM programs, texture types (mix components included)."""
    kinds: dict[str, int] = {}
    langs: dict[str, int] = {}
    programs: dict[int, int] = {}
    textures: dict[str, int] = {}
    mixes: dict[str, int] = {}

    def visit(d):
        if d["kind"] == "speech":
            langs[d["language"]] = langs.get(d["language"], 0) + 1
        elif d["kind"] == "music":
            for p in d["parts"]:
                programs[p["program"]] = programs.get(p["program"], 0) + 1
        elif d["kind"] == "texture":
            for layer in d["layers"]:
                textures[layer["type"]] = textures.get(layer["type"], 0) + 1

    for d in designs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        if d["kind"] == "mix":
            key = "+".join(c["kind"] for c in d["components"])
            mixes[key] = mixes.get(key, 0) + 1
            for c in d["components"]:
                visit(c)
        else:
            visit(d)
    return {
        "clips_per_kind": kinds,
        "hours_per_kind": {k: round(v * CLIP_SECONDS / 3600, 3) for k, v in kinds.items()},
        "mix_pairs": mixes,
        "speech_languages": dict(sorted(langs.items())),
        "music_programs": {str(k): v for k, v in sorted(programs.items())},
        "texture_layers": textures,
    }


def settings_of(seed: int, soundfonts: list[str]) -> dict:
    return {"version": CORPUS_VERSION, "seed": seed, "soundfonts": soundfonts, "chunk": CHUNK}


def build_corpus(
    out_dir: str | Path,
    hours: float = 3.0,
    seed: int = 0,
    jobs: int | None = None,
    soundfonts: list[str] | tuple[str, ...] = SOUNDFONTS,
    progress: bool = True,
) -> dict:
    out_dir = Path(out_dir)
    soundfonts = check_soundfonts(list(soundfonts))
    n_clips = max(1, int(round(hours * 3600 / CLIP_SECONDS)))
    settings = settings_of(seed, soundfonts)
    meta_path = out_dir / "corpus.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text()).get("settings")
        if old != settings:
            raise SystemExit(
                f"{out_dir} holds a corpus made with other settings ({old}); choose another OUT_DIR"
            )
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    for stale in audio_dir.glob("*.tmp"):
        stale.unlink()
    if not meta_path.is_file():
        atomic_write_text(meta_path, json.dumps({"settings": settings, "complete": False}, indent=1))

    n_chunks = -(-n_clips // CHUNK)
    missing = {}
    for c in range(n_chunks):
        idx = range(c * CHUNK, min(n_clips, (c + 1) * CHUNK))
        k = sum(not (audio_dir / design_clip(seed, i)["filename"]).exists() for i in idx)
        if k:
            missing[c] = k
    todo = sorted(missing)
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    t0 = time.time()
    written = 0
    initial = n_clips - sum(missing.values())
    with tqdm(
        total=n_clips, initial=initial, unit="clip", desc="corpus", disable=not progress, dynamic_ncols=True
    ) as bar:
        pool = process_pool(jobs)
        try:
            args = [(seed, c, n_clips, str(audio_dir), chunk_soundfont(c, soundfonts)) for c in todo]
            if pool is None:
                for a in args:
                    k = _work_chunk(*a)
                    written += k
                    bar.update(k)
            else:
                futures = [pool.submit(_work_chunk, *a) for a in args]
                for f in cf.as_completed(futures):
                    k = f.result()
                    written += k
                    bar.update(k)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    designs = [design_clip(seed, i) for i in range(n_clips)]
    for d in designs:
        d["soundfont"] = chunk_soundfont(d["index"] // CHUNK, soundfonts) if music_parts(d) else None
    meta = {
        "settings": settings,
        "complete": True,
        "clips": n_clips,
        "clip_seconds": CLIP_SECONDS,
        "sample_rate": SAMPLE_RATE,
        "hours": round(n_clips * CLIP_SECONDS / 3600, 4),
        "format": "wav, mono, 16-bit PCM",
        "disjoint_from_suite": {
            "excluded_words": sorted(SUITE_WORDS),
            "speech": "non-English espeak-ng voices only; pseudo-words; no suite word",
            "suite_soundfont": SUITE_SOUNDFONT,
        },
        "summary": summarise(designs),
        "written_this_run": written,
        "seconds_this_run": round(time.time() - t0, 1),
        "clip_designs": designs,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m abt_eval.corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--hours", type=float, default=3.0, help="total length (10 s clips; default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    ap.add_argument(
        "--soundfont",
        action="append",
        default=None,
        help=f"General MIDI soundfont for the music (repeatable; default: {' and '.join(SOUNDFONTS)})",
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    meta = build_corpus(
        args.out_dir,
        hours=args.hours,
        seed=args.seed,
        jobs=args.jobs,
        soundfonts=args.soundfont or list(SOUNDFONTS),
        progress=not args.no_progress,
    )
    s = meta["summary"]
    print(
        f"{meta['clips']} clips ({meta['hours']:.2f} h), {meta['written_this_run']} written in "
        f"{meta['seconds_this_run']} s; per kind {s['clips_per_kind']} -> {Path(args.out_dir) / 'audio'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
