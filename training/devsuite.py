"""A small HEAR-format development suite made from real sounds synthesised on this machine.

    python -m training.devsuite OUT_DIR [--small] [--seed 0] [--tasks speech-words,pitch] [--jobs N]

writes, for each task, the layout that heareval's runners read::

    OUT_DIR/<task>/task_metadata.json      task_name, mode, embedding_type, prediction_type, split_mode,
                                           splits, sample_duration, evaluation, ...
    OUT_DIR/<task>/labelvocabulary.csv     idx,label
    OUT_DIR/<task>/{train,valid,test}.json scene: {filename: [label]}; event: {filename: [{label,start,end}]} (ms)
    OUT_DIR/<task>/16000/<split>/*.wav     16 kHz mono 16-bit PCM, all exactly `sample_duration` long
    OUT_DIR/<task>/generation.json         how each file was made (voice, program, pitch, ...): not read by heareval
    OUT_DIR/<task>/.complete               written last; a task whose marker matches the request is skipped

Nothing else is written at the top of OUT_DIR: ``heareval.embeddings.runner`` treats every entry there
as a task.

Tasks (full / ``--small`` sizes):

* ``speech-words``: 20 English words (espeak-ng; 10 with --small: yes no up down left right on off stop go,
  then bed bird cat dog four five nine tree house wow), 30 / 6 speakers (an accent + voice variant + base
  pitch and speed); splits hold out speakers, so valid and test voices are unseen. 600 / 60 clips. Scene,
  multiclass, ``top1_acc``; 1.0 s clips.
* ``instrument``: 15 General MIDI instruments (fluidsynth + FluidR3 GM) with confusable families (piano;
  vibraphone/marimba; organ; nylon/steel guitar; violin/viola/cello; trumpet/trombone; oboe/clarinet;
  piccolo/flute), 36 / 6 pitches each; splits hold out pitches. 540 / 90 clips. Scene, multiclass,
  ``top1_acc``; 1.0 s clips.
* ``pitch``: MIDI pitch of one note, 24 classes C3..B4 (12 C4..B4 with --small) from 12 / 4 instruments;
  splits hold out instruments. 288 / 48 clips. Scene, multiclass, ``pitch_acc`` and ``chroma_acc``; 1.0 s
  clips.
* ``events``: 5.0 s clips over low noise with 1-3 non-overlapping events (the words yes/no/stop by split
  speakers, and piano/trumpet/marimba notes), labels with onset/offset in ms; 120 / 12 clips. Event,
  multilabel, ``event_onset_200ms_fms`` and ``segment_1s_er``.

Recording conditions of the scene tasks (since version 3; ``SCENE_CONDITIONS``, drawn per clip in the
design and recorded in generation.json, applied by ``scene_mix``): the sound at a random offset (words
anywhere in the clip; notes start at 0-0.3 s and are held 0.3-0.7 s), background noise at a random SNR
relative to the sound's active part (speech 0-15 dB, notes 5-20 dB) from a random mix of white, pink and
brown noise, for about 40 % of speech-words and instrument clips a competing sound 5-15 dB below it
(another word by another speaker of the same split; a note of another instrument at a pitch of the same
split, so held-out speakers and pitches stay held out), then a random gain (-20..0 dB, peak 0.9 at 0 dB).
Why: without them a randomly initialised encoder with a linear probe scored 1.0 on speech-words and
0.94-1.0 on instrument, so the suite could not tell pre-training from none; with them (random AudioNTT,
channels 32, ``training.probe.LinearProbe``, valid split) it scores about 0.5 on speech-words, 0.4-0.5 on
instrument and 0.5 on pitch.

Measured on the 2-core dev machine (full suite, version 3): generation about 80 s; with a stand-in HEAR
model (64-d features every 10 ms, version 1 sizes), heareval embeddings for all tasks 21 s and ``--grid
faster`` predictions 15-21 s per scene task but about 8 min for ``events`` (sed_eval on every frame; fewer
frames per second of audio make it faster). ``--small``: generation about 11 s.

Every random choice comes from ``--seed`` (per-clip seeds), so a build is reproducible. Generation runs in
a process pool (``--jobs``, default: CPU count); the synthesisers are separate programs.

The synthesis helpers here (``espeak_word``, ``fluidsynth_note``, ``tone``, ``noise``, ...) are also what
``tests/sounds.py`` uses. They need the Debian packages ``espeak-ng sox fluidsynth fluid-soundfont-gm``
and fail loudly when one is missing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SUITE_VERSION = "3"  # 3: recording conditions and more classes (builds marked "2" exist: skip it)
TASKS = ("speech-words", "instrument", "pitch", "events")
SPLITS = ("train", "valid", "test")
NOTES_PER_RENDER = 12

# --------------------------------------------------------------------------------------------------------
# Sound primitives
# --------------------------------------------------------------------------------------------------------


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, **kw)
    except FileNotFoundError as e:
        raise RuntimeError(
            f"{cmd[0]} is not installed: apt-get install -y --no-install-recommends "
            "espeak-ng sox fluidsynth fluid-soundfont-gm"
        ) from e
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace") if isinstance(r.stderr, bytes) else r.stderr
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {err[-2000:]}")
    return r


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate)."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1).astype(np.float32), sr


def write_wav(path: str | Path, x: np.ndarray, sr: int = SR) -> Path:
    """Write mono 16-bit PCM."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16")
    return path


def espeak_word(
    word: str, voice: str, path: str | Path, rate: int = SR, speed: int = 160, pitch: int = 50
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
    return (
        b"MThd"
        + struct.pack(">IHHH", 6, 0, 1, ticks_per_beat)
        + b"MTrk"
        + struct.pack(">I", len(track))
        + track
    )


def render_midi(midi: bytes, soundfont: str | Path = DEFAULT_SOUNDFONT, rate: int = SR) -> np.ndarray:
    """Render MIDI bytes with fluidsynth (reverb and chorus off) to mono float32 at ``rate``."""
    if not Path(soundfont).is_file():
        raise RuntimeError(f"soundfont {soundfont} not found: apt-get install fluid-soundfont-gm")
    with tempfile.TemporaryDirectory(prefix="devsuite-") as tmp:
        mid, wav = Path(tmp, "in.mid"), Path(tmp, "out.wav")
        mid.write_bytes(midi)
        _run(
            [
                "fluidsynth",
                "-ni",
                "-q",
                "-R",
                "0",
                "-C",
                "0",
                "-F",
                str(wav),
                "-r",
                str(rate),
                str(soundfont),
                str(mid),
            ]
        )
        x, sr = read_wav(wav)
    if sr != rate:
        raise RuntimeError(f"fluidsynth wrote {sr} Hz, asked {rate}")
    return x


def fluidsynth_notes(
    notes: list[tuple[int, int, int]],
    seconds: float = 1.0,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    rate: int = SR,
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


def split_slots(x: np.ndarray, count: int, slot: float, seconds: float, rate: int = SR) -> list[np.ndarray]:
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


def fluidsynth_note(
    program: int,
    pitch: int,
    path: str | Path,
    seconds: float = 1.0,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    velocity: int = 100,
    rate: int = SR,
) -> Path:
    """One General MIDI note (``program`` 0-127, MIDI ``pitch``) as an exactly ``seconds`` long mono wav."""
    (x,) = fluidsynth_notes([(program, pitch, velocity)], seconds, soundfont, rate)
    return write_wav(path, x, rate)


def tone(freq: float, seconds: float, sr: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, sr: int = SR, seed: int = 0, amplitude: float = 0.1) -> np.ndarray:
    """White Gaussian noise with standard deviation ``amplitude``."""
    return (amplitude * np.random.default_rng(seed).standard_normal(int(round(seconds * sr)))).astype(
        np.float32
    )


def fade(x: np.ndarray, sr: int = SR, ms: float = 10.0) -> np.ndarray:
    n = min(len(x) // 2, int(sr * ms / 1000))
    if n:
        x = x.copy()
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def active_span(x: np.ndarray, sr: int = SR, threshold_db: float = -35.0) -> tuple[int, int]:
    """First and one-past-last sample of 10 ms frames within ``threshold_db`` of the loudest frame."""
    hop = max(1, sr // 100)
    nfr = max(1, len(x) // hop)
    rms = np.sqrt(np.mean(x[: nfr * hop].reshape(nfr, hop) ** 2, axis=1) + 1e-12)
    on = np.flatnonzero(20 * np.log10(rms / rms.max()) > threshold_db)
    if on.size == 0:
        return 0, len(x)
    return int(on[0] * hop), int(min(len(x), (on[-1] + 1) * hop))


def place(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    """``x`` at ``offset`` in ``n`` zeros (cut, with a fade, if it runs past the end)."""
    out = np.zeros(n, np.float32)
    piece = x[: max(0, n - offset)]
    if len(piece) < len(x):
        piece = fade(piece)
    out[offset : offset + len(piece)] = piece
    return out


def normalise(x: np.ndarray, peak: float) -> np.ndarray:
    m = float(np.abs(x).max())
    return x if m == 0 else (x * (peak / m)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Task design: all decisions in the main process, from the seed
# --------------------------------------------------------------------------------------------------------

WORDS = [  # the first 10 (the --small task) are the old command words; the rest add confusable pairs
    "yes",
    "no",
    "up",
    "down",
    "left",
    "right",
    "on",
    "off",
    "stop",
    "go",
    "bed",
    "bird",
    "cat",
    "dog",
    "four",
    "five",
    "nine",
    "tree",
    "house",
    "wow",
]
SMALL_WORDS = 10
ACCENTS = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
]
VARIANTS = [
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "croak",
]
INSTRUMENTS = {  # label -> GM program (0-based); families with confusable members
    "piano": 0,
    "vibraphone": 11,
    "marimba": 12,
    "organ": 19,
    "nylon-guitar": 24,
    "steel-guitar": 25,
    "violin": 40,
    "viola": 41,
    "cello": 42,
    "trumpet": 56,
    "trombone": 57,
    "oboe": 68,
    "clarinet": 71,
    "piccolo": 72,
    "flute": 73,
}
PITCH_PROGRAMS = [
    0,
    4,
    6,
    11,
    16,
    24,
    26,
    42,
    56,
    66,
    68,
    80,
]  # piano, e-piano, harpsichord, vibes, organ, ...
EVENT_WORDS = ["yes", "no", "stop"]
EVENT_NOTES = {"piano": 0, "trumpet": 56, "marimba": 12}

# Recording conditions of the scene tasks, drawn per clip in the design (so generation.json records them)
# and applied by ``scene_mix``: background noise at an SNR (relative to the sound's active part), a
# competing sound at a lower level for some clips, then an overall gain (peak 0.9 at 0 dB).
SCENE_CONDITIONS = {
    "speech-words": {"snr_db": (0.0, 15.0), "distractor_p": 0.4, "distractor_db": (-15.0, -5.0)},
    "instrument": {"snr_db": (5.0, 20.0), "distractor_p": 0.4, "distractor_db": (-15.0, -5.0)},
    "pitch": {"snr_db": (5.0, 20.0), "distractor_p": 0.0, "distractor_db": (0.0, 0.0)},
}
GAIN_DB = (-20.0, 0.0)
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent
NOTE_OFFSET_S = (0.0, 0.3)  # note onset inside a 1 s scene clip
NOTE_HOLD_S = (0.3, 0.7)  # key held for this long (the release follows)


def _seed_for(seed: int, *parts) -> int:
    h = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


def _split_sizes(n: int, valid_frac: float = 1 / 6, test_frac: float = 1 / 6) -> tuple[int, int, int]:
    nv, nt = max(1, round(n * valid_frac)), max(1, round(n * test_frac))
    return n - nv - nt, nv, nt


def _split_items(items: list, rng: np.random.Generator, fracs=(1 / 6, 1 / 6)) -> dict[str, list]:
    items = list(items)
    order = rng.permutation(len(items))
    ntr, nv, _ = _split_sizes(len(items), *fracs)
    shuffled = [items[i] for i in order]
    return {"train": shuffled[:ntr], "valid": shuffled[ntr : ntr + nv], "test": shuffled[ntr + nv :]}


def speakers(n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` distinct speakers: (accent+variant, base pitch, speed)."""
    combos = [(a, v) for a in ACCENTS for v in VARIANTS]
    pick = rng.choice(len(combos), size=n, replace=False)
    out = []
    for i in pick:
        a, v = combos[i]
        out.append(
            {"voice": f"{a}+{v}", "pitch": int(rng.integers(25, 76)), "speed": int(rng.integers(150, 200))}
        )
    return out


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", s)


def _conditions(rng: np.random.Generator, task: str) -> dict:
    """Per-clip recording conditions: SNR, gain, noise colour mix (power shares)."""
    c = SCENE_CONDITIONS[task]
    shares = rng.dirichlet(np.ones(len(NOISE_COLOURS)))
    return {
        "snr_db": round(float(rng.uniform(*c["snr_db"])), 2),
        "gain_db": round(float(rng.uniform(*GAIN_DB)), 2),
        "noise": {k: round(float(v), 3) for k, v in zip(NOISE_COLOURS, shares)},
    }


def _wants_distractor(rng: np.random.Generator, task: str) -> float | None:
    """The distractor level (dB relative to the sound), or None for no distractor."""
    c = SCENE_CONDITIONS[task]
    if rng.random() >= c["distractor_p"]:
        return None
    return round(float(rng.uniform(*c["distractor_db"])), 2)


def _note_timing(rng: np.random.Generator) -> dict:
    return {
        "offset": round(float(rng.uniform(*NOTE_OFFSET_S)), 3),
        "hold": round(float(rng.uniform(*NOTE_HOLD_S)), 3),
    }


def design_speech_words(seed: int, small: bool) -> dict:
    rng = np.random.default_rng(_seed_for(seed, "speech-words"))
    spk = speakers(6 if small else 30, rng)
    by_split = _split_items(spk, rng)
    words = WORDS[:SMALL_WORDS] if small else WORDS
    clips = {}
    for split in SPLITS:
        jobs = []
        for s in by_split[split]:
            for w in words:
                i = len(jobs)
                job = {
                    "kind": "speech",
                    "filename": f"{i:04d}-{w}-{_safe(s['voice'])}.wav",
                    "label": w,
                    "word": w,
                    **s,
                    "seed": _seed_for(seed, "speech-words", split, i),
                    **_conditions(rng, "speech-words"),
                    "distractor": None,
                }
                # another word by another speaker of the same split (held-out voices stay held out)
                others = [o for o in by_split[split] if o["voice"] != s["voice"]]
                level = _wants_distractor(rng, "speech-words")
                if others and level is not None:
                    other_words = [x for x in words if x != w]
                    job["distractor"] = {
                        "word": other_words[int(rng.integers(len(other_words)))],
                        **others[int(rng.integers(len(others)))],
                        "level_db": level,
                    }
                jobs.append(job)
        clips[split] = jobs
    return {
        "labels": list(words),
        "clips": clips,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "evaluation": ["top1_acc"],
        "sample_duration": 1.0,
        "held_out": "speakers (voice)",
    }


def _note_jobs(task: str, seed: int, split: str, notes: list[dict]) -> list[dict]:
    jobs = []
    for i, n in enumerate(notes):
        jobs.append(
            {
                "kind": "note",
                "filename": f"{i:04d}-{n['label']}-p{n['program']}-k{n['pitch']}.wav",
                **n,
                "seed": _seed_for(seed, task, split, i),
            }
        )
    return jobs


def design_instrument(seed: int, small: bool) -> dict:
    rng = np.random.default_rng(_seed_for(seed, "instrument"))
    pitches = list(range(60, 66)) if small else list(range(48, 84))
    by_split = _split_items(pitches, rng)
    clips = {}
    for split in SPLITS:
        split_pitches = sorted(by_split[split])
        notes = []
        for lab, prog in INSTRUMENTS.items():
            for k in split_pitches:
                note = {
                    "label": lab,
                    "program": prog,
                    "pitch": k,
                    "velocity": int(rng.integers(60, 121)),
                    **_note_timing(rng),
                    **_conditions(rng, "instrument"),
                    "distractor": None,
                }
                # a note of another instrument, at a pitch of the same split (held-out pitches stay so)
                level = _wants_distractor(rng, "instrument")
                if level is not None:
                    others = [x for x in INSTRUMENTS if x != lab]
                    other = others[int(rng.integers(len(others)))]
                    note["distractor"] = {
                        "label": other,
                        "program": INSTRUMENTS[other],
                        "pitch": split_pitches[int(rng.integers(len(split_pitches)))],
                        "velocity": int(rng.integers(60, 121)),
                        **_note_timing(rng),
                        "level_db": level,
                    }
                notes.append(note)
        clips[split] = _note_jobs("instrument", seed, split, notes)
    return {
        "labels": list(INSTRUMENTS),
        "clips": clips,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "evaluation": ["top1_acc"],
        "sample_duration": 1.0,
        "held_out": "pitches",
    }


def design_pitch(seed: int, small: bool) -> dict:
    rng = np.random.default_rng(_seed_for(seed, "pitch"))
    pitches = list(range(60, 72)) if small else list(range(48, 72))  # start at a C: label idx % 12 == chroma
    programs = [0, 24, 56, 11] if small else PITCH_PROGRAMS
    by_split = _split_items(programs, rng)
    clips = {}
    for split in SPLITS:
        notes = [
            {
                "label": str(k),
                "program": prog,
                "pitch": k,
                "velocity": int(rng.integers(60, 121)),
                **_note_timing(rng),
                **_conditions(rng, "pitch"),
                "distractor": None,
            }
            for prog in by_split[split]
            for k in pitches
        ]
        clips[split] = _note_jobs("pitch", seed, split, notes)
    return {
        "labels": [str(k) for k in pitches],
        "clips": clips,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "evaluation": ["pitch_acc", "chroma_acc"],
        "sample_duration": 1.0,
        "held_out": "instruments (programs)",
    }


def design_events(seed: int, small: bool) -> dict:
    rng = np.random.default_rng(_seed_for(seed, "events"))
    spk = _split_items(speakers(6 if small else 12, rng), rng)
    n = 12 if small else 120
    counts = dict(zip(SPLITS, _split_sizes(n)))
    clips = {}
    for split in SPLITS:
        jobs = []
        for i in range(counts[split]):
            k = int(rng.integers(1, 4))
            labels = [str(x) for x in rng.choice(EVENT_WORDS + list(EVENT_NOTES), size=k)]
            events = []
            for lab in labels:
                if lab in EVENT_WORDS:
                    s = spk[split][int(rng.integers(len(spk[split])))]
                    events.append({"label": lab, "kind": "speech", "word": lab, **s})
                else:
                    events.append(
                        {
                            "label": lab,
                            "kind": "note",
                            "program": EVENT_NOTES[lab],
                            "pitch": int(rng.integers(55, 80)),
                            "velocity": int(rng.integers(70, 121)),
                            "hold": round(float(rng.uniform(0.25, 0.7)), 3),
                        }
                    )
            jobs.append(
                {
                    "kind": "mix",
                    "filename": f"{i:04d}-{'-'.join(labels)}.wav",
                    "events": events,
                    "seed": _seed_for(seed, "events", split, i),
                }
            )
        clips[split] = jobs
    return {
        "labels": EVENT_WORDS + list(EVENT_NOTES),
        "clips": clips,
        "embedding_type": "event",
        "prediction_type": "multilabel",
        "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
        "sample_duration": 5.0,
        "held_out": "speakers of the words",
    }


DESIGNS = {
    "speech-words": design_speech_words,
    "instrument": design_instrument,
    "pitch": design_pitch,
    "events": design_events,
}

# --------------------------------------------------------------------------------------------------------
# Workers (run in the pool): each writes its wav(s) and returns the split-file entries
# --------------------------------------------------------------------------------------------------------


def _speech_clip(job: dict, duration: float) -> np.ndarray:
    """A trimmed word placed at a random offset in ``duration`` seconds."""
    rng = np.random.default_rng(job["seed"])
    with tempfile.TemporaryDirectory(prefix="devsuite-") as tmp:
        x, _ = read_wav(
            espeak_word(job["word"], job["voice"], Path(tmp, "w.wav"), SR, job["speed"], job["pitch"])
        )
    a, b = active_span(x)
    x = x[max(0, a - 160) : b + 160]  # keep 10 ms around the speech
    n = int(round(duration * SR))
    slack = max(0, n - len(x))
    return place(x, n, int(rng.integers(0, slack + 1)))


def _finish(x: np.ndarray, rng: np.random.Generator, floor: float = 3e-4) -> np.ndarray:
    """Peak 0.3-0.9 plus a faint white floor (the version 1 scene finish; ``training.corpus`` uses it)."""
    x = normalise(x, float(rng.uniform(0.3, 0.9)))
    return (x + floor * rng.standard_normal(len(x)).astype(np.float32)).astype(np.float32)


def coloured_noise(n: int, shares: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-RMS noise: a mix of ``NOISE_COLOURS`` with the given power ``shares``."""
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)  # flat below 20 Hz: no DC drift in brown noise
    out = np.zeros(n)
    for colour, share in shares.items():
        if share <= 0:
            continue
        spec = np.fft.rfft(rng.standard_normal(n)) * f ** (-NOISE_COLOURS[colour] / 2)
        x = np.fft.irfft(spec, n)
        out += np.sqrt(share) * x / (np.sqrt(np.mean(x**2)) + 1e-12)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def active_power(x: np.ndarray) -> float:
    """Mean power of ``x`` over its active span (``active_span``): the level SNRs refer to."""
    a, b = active_span(x)
    return float(np.mean(np.asarray(x[a:b], dtype=np.float64) ** 2)) + 1e-20


def scene_mix(
    x: np.ndarray,
    conditions: dict,
    rng: np.random.Generator,
    distractor: np.ndarray | None = None,
    distractor_db: float = -10.0,
) -> np.ndarray:
    """``x`` under ``conditions`` (``snr_db``, ``gain_db``, ``noise`` colour shares, from ``_conditions``):
    plus ``distractor`` at ``distractor_db`` and noise at ``snr_db``, both relative to the active power of
    ``x``; then scaled to a peak of 0.9 * 10**(gain_db / 20)."""
    p = active_power(x)
    out = np.asarray(x, dtype=np.float64).copy()
    if distractor is not None:
        out += distractor * np.sqrt(p * 10 ** (distractor_db / 10) / active_power(distractor))
    out += coloured_noise(len(x), conditions["noise"], rng) * np.sqrt(p / 10 ** (conditions["snr_db"] / 10))
    return normalise(out.astype(np.float32), 0.9 * 10 ** (conditions["gain_db"] / 20))


def _work_speech(job: dict, out_dir: str, duration: float) -> dict:
    x = _speech_clip(job, duration)
    d = job.get("distractor")
    other = _speech_clip({**d, "seed": job["seed"] + 2}, duration) if d else None
    rng = np.random.default_rng(job["seed"] + 1)
    x = scene_mix(x, job, rng, other, d["level_db"] if d else 0.0)
    write_wav(Path(out_dir, job["filename"]), x)
    return {job["filename"]: [job["label"]]}


def _work_notes(jobs: list[dict], out_dir: str, duration: float, soundfont: str) -> dict:
    """One fluidsynth run for the notes of ``jobs`` and then their distractors; each note is placed at its
    ``offset`` and mixed with ``scene_mix``."""
    notes = jobs + [j["distractor"] for j in jobs if j.get("distractor")]
    xs = fluidsynth_notes(
        [(j["program"], j["pitch"], j["velocity"]) for j in notes],
        duration,
        soundfont,
        hold=[j["hold"] / duration for j in notes],
    )
    n = int(round(duration * SR))
    placed = [place(x, n, int(round(j["offset"] * SR))) for j, x in zip(notes, xs)]
    others = iter(placed[len(jobs) :])
    out = {}
    for job, x in zip(jobs, placed):
        d = job.get("distractor")
        rng = np.random.default_rng(job["seed"])
        x = scene_mix(x, job, rng, next(others) if d else None, d["level_db"] if d else 0.0)
        write_wav(Path(out_dir, job["filename"]), x)
        out[job["filename"]] = [job["label"]]
    return out


def _work_mix(job: dict, out_dir: str, duration: float, soundfont: str) -> dict:
    """Place the events without overlap (>= 150 ms apart) over low noise; labels in ms."""
    rng = np.random.default_rng(job["seed"])
    n = int(round(duration * SR))
    notes = [ev for ev in job["events"] if ev["kind"] == "note"]
    rendered = iter(
        fluidsynth_notes(
            [(ev["program"], ev["pitch"], ev["velocity"]) for ev in notes],
            1.5,
            soundfont,
            hold=[ev["hold"] / 1.5 for ev in notes],
        )
        if notes
        else []
    )
    sounds = []
    for k, ev in enumerate(job["events"]):
        if ev["kind"] == "speech":
            x = _speech_clip({**ev, "seed": job["seed"] + k}, 2.0)
        else:
            x = next(rendered)
        a, b = active_span(x, threshold_db=-30.0)
        x = normalise(x[a:b], float(rng.uniform(0.4, 0.9)))
        sounds.append((ev["label"], fade(x)))
    gap = int(0.15 * SR)
    free = n - sum(len(s) for _, s in sounds) - gap * (len(sounds) + 1)
    if free < 0:
        raise RuntimeError(f"events do not fit in {duration} s: {job['filename']}")
    # Split the free time into len+1 random shares: before, between and after the events.
    shares = np.floor(rng.dirichlet(np.ones(len(sounds) + 1)) * free).astype(int)
    mix = noise(duration, SR, seed=job["seed"] % 2**32, amplitude=float(rng.uniform(0.002, 0.01)))
    pos, labels = gap, []
    for (label, x), share in zip(sounds, shares):
        pos += int(share)
        mix[pos : pos + len(x)] += x
        labels.append(
            {"label": label, "start": round(1000 * pos / SR, 3), "end": round(1000 * (pos + len(x)) / SR, 3)}
        )
        pos += len(x) + gap
    write_wav(Path(out_dir, job["filename"]), normalise(mix, float(rng.uniform(0.5, 0.9))))
    return {job["filename"]: labels}


# --------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------


def _marker(task: str, seed: int, small: bool) -> dict:
    return {"task": task, "seed": seed, "mode": "small" if small else "full", "version": SUITE_VERSION}


def task_is_complete(task_dir: Path, task: str, seed: int, small: bool) -> bool:
    m = task_dir / ".complete"
    try:
        return json.loads(m.read_text()) == _marker(task, seed, small)
    except (OSError, ValueError):
        return False


def _executor(jobs: int):
    if jobs <= 1:
        return None
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    return cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)


def build_task(
    out_dir: str | Path,
    task: str,
    *,
    seed: int = 0,
    small: bool = False,
    jobs: int | None = None,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    force: bool = False,
) -> Path:
    """Build one task under ``out_dir/task`` (skipped when already complete for this seed and mode)."""
    if task not in DESIGNS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    task_dir = Path(out_dir) / task
    if not force and task_is_complete(task_dir, task, seed, small):
        return task_dir
    if task_dir.exists():
        shutil.rmtree(task_dir)
    design = DESIGNS[task](seed, small)
    duration = design["sample_duration"]
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    soundfont = str(soundfont)

    pool = _executor(jobs)
    futures: dict[str, list] = {s: [] for s in SPLITS}

    def submit(split, fn, *args):
        if pool is None:
            futures[split].append(fn(*args))
        else:
            futures[split].append(pool.submit(fn, *args))

    try:
        for split in SPLITS:
            audio_dir = task_dir / str(SR) / split
            audio_dir.mkdir(parents=True, exist_ok=True)
            clips = design["clips"][split]
            if clips and clips[0]["kind"] == "note":
                # One fluidsynth run per chunk of notes (loading the soundfont is the slow part). The chunks
                # do not depend on --jobs: a note's samples depend a little on its place in the render.
                for a in range(0, len(clips), NOTES_PER_RENDER):
                    chunk = clips[a : a + NOTES_PER_RENDER]
                    submit(split, _work_notes, chunk, str(audio_dir), duration, soundfont)
            else:
                for job in clips:
                    fn = _work_speech if job["kind"] == "speech" else _work_mix
                    args = (job, str(audio_dir), duration) + (() if job["kind"] == "speech" else (soundfont,))
                    submit(split, fn, *args)
        results = {s: [f if isinstance(f, dict) else f.result() for f in futures[s]] for s in SPLITS}
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    for split in SPLITS:
        entries: dict = {}
        for r in results[split]:
            entries.update(r)
        (task_dir / f"{split}.json").write_text(json.dumps(entries, indent=1))

    with open(task_dir / "labelvocabulary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["idx", "label"])
        for i, lab in enumerate(design["labels"]):
            w.writerow([i, lab])

    metadata = {
        "task_name": task,
        "version": f"devsuite-{SUITE_VERSION}",
        "mode": "small" if small else "full",
        "default_mode": "full",
        "embedding_type": design["embedding_type"],
        "prediction_type": design["prediction_type"],
        "split_mode": "trainvaltest",
        "splits": list(SPLITS),
        "sample_duration": design["sample_duration"],
        "sample_rate": SR,
        "evaluation": design["evaluation"],
        "description": f"training.devsuite synthetic task; held out across splits: {design['held_out']}",
        "seed": seed,
    }
    (task_dir / "task_metadata.json").write_text(json.dumps(metadata, indent=1))
    (task_dir / "generation.json").write_text(
        json.dumps({"metadata": metadata, "clips": design["clips"]}, indent=1)
    )
    (task_dir / ".complete").write_text(json.dumps(_marker(task, seed, small)))
    return task_dir


def build_suite(
    out_dir: str | Path,
    *,
    tasks: list[str] | tuple[str, ...] = TASKS,
    seed: int = 0,
    small: bool = False,
    jobs: int | None = None,
    soundfont: str | Path = DEFAULT_SOUNDFONT,
    force: bool = False,
    log=print,
) -> dict[str, Path]:
    out = {}
    for task in tasks:
        t0 = time.time()
        done = not force and task_is_complete(Path(out_dir) / task, task, seed, small)
        out[task] = build_task(
            out_dir, task, seed=seed, small=small, jobs=jobs, soundfont=soundfont, force=force
        )
        n = sum(len(json.loads((out[task] / f"{s}.json").read_text())) for s in SPLITS)
        log(
            f"{task}: {n} clips {'(already complete)' if done else f'in {time.time() - t0:.1f} s'} -> {out[task]}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.devsuite", description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="where to write <task>/... (HEAR task layout)")
    ap.add_argument("--small", action="store_true", help="tiny tasks, for CI")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPU count)")
    ap.add_argument("--soundfont", default=DEFAULT_SOUNDFONT)
    ap.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in DESIGNS]
    if unknown:
        ap.error(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    build_suite(
        args.out_dir,
        tasks=tasks,
        seed=args.seed,
        small=args.small,
        jobs=args.jobs,
        soundfont=args.soundfont,
        force=args.force,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
