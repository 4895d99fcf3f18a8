"""A small HEAR-format development suite made from real sounds synthesised on this machine.

    python -m abt_eval.devsuite OUT_DIR [--small] [--seed 0] [--tasks speech-words,pitch] [--jobs N]

Tasks, layout, recording conditions, timings: ``docs/evaluation.md`` ("Development suite").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hear_abt.config import SAMPLE_RATE
from hear_abt.fileio import atomic_open, atomic_write_text

from .sounds import (
    DEFAULT_SOUNDFONT,
    NOISE_COLOURS,
    active_power,
    active_span,
    coloured_noise,
    espeak_word,
    fade,
    fluidsynth_notes,
    noise,
    normalise,
    place,
    process_pool,
    read_mono,
    seed_for,
    write_wav,
)

SUITE_VERSION = "3"  # 3: recording conditions and more classes (builds marked "2" exist: skip it)
TASKS = ("speech-words", "instrument", "pitch", "events")
SPLITS = ("train", "valid", "test")
NOTES_PER_RENDER = 12

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
NOTE_OFFSET_S = (0.0, 0.3)  # note onset inside a 1 s scene clip
NOTE_HOLD_S = (0.3, 0.7)  # key held for this long (the release follows)


def _split_sizes(n: int, valid_frac: float = 1 / 6, test_frac: float = 1 / 6) -> tuple[int, int, int]:
    nv, nt = max(1, round(n * valid_frac)), max(1, round(n * test_frac))
    return n - nv - nt, nv, nt


def task_metadata(
    task: str, design: dict, version: str, description: str, seed: int, mode: str = "full"
) -> dict:
    """HEAR 2021's task_metadata.json for a task ``design`` (its embedding and prediction types, clip
    duration, evaluation metrics) with train/valid/test splits."""
    return {
        "task_name": task,
        "version": version,
        "mode": mode,
        "default_mode": "full",
        "embedding_type": design["embedding_type"],
        "prediction_type": design["prediction_type"],
        "split_mode": "trainvaltest",
        "splits": list(SPLITS),
        "sample_duration": design["sample_duration"],
        "sample_rate": SAMPLE_RATE,
        "evaluation": design["evaluation"],
        "description": description,
        "seed": seed,
    }


def write_task_files(task_dir: Path, entries: dict, labels: list[str], metadata: dict) -> None:
    """The HEAR 2021 files beside ``task_dir/16000``: the split label files (``entries[split]``: file
    name -> labels, for each split or fold), ``labelvocabulary.csv`` and ``task_metadata.json`` (also
    used by abt_eval.realsuite)."""
    for split, labels_of in entries.items():
        atomic_write_text(task_dir / f"{split}.json", json.dumps(labels_of, indent=1))
    with atomic_open(task_dir / "labelvocabulary.csv", "w") as f:
        w = csv.writer(f)
        w.writerow(["idx", "label"])
        for i, lab in enumerate(labels):
            w.writerow([i, lab])
    atomic_write_text(task_dir / "task_metadata.json", json.dumps(metadata, indent=1))


def split_items(items: list, rng: np.random.Generator, fracs=(1 / 6, 1 / 6)) -> dict[str, list]:
    """``items`` shuffled by ``rng`` into train / valid / test (valid and test each ``fracs`` of them)."""
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
    rng = np.random.default_rng(seed_for(seed, "speech-words"))
    spk = speakers(6 if small else 30, rng)
    by_split = split_items(spk, rng)
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
                    "seed": seed_for(seed, "speech-words", split, i),
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
                "seed": seed_for(seed, task, split, i),
            }
        )
    return jobs


def design_instrument(seed: int, small: bool) -> dict:
    rng = np.random.default_rng(seed_for(seed, "instrument"))
    pitches = list(range(60, 66)) if small else list(range(48, 84))
    by_split = split_items(pitches, rng)
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
    rng = np.random.default_rng(seed_for(seed, "pitch"))
    pitches = list(range(60, 72)) if small else list(range(48, 72))  # start at a C: label idx % 12 == chroma
    programs = [0, 24, 56, 11] if small else PITCH_PROGRAMS
    by_split = split_items(programs, rng)
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
    rng = np.random.default_rng(seed_for(seed, "events"))
    spk = split_items(speakers(6 if small else 12, rng), rng)
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
                    "seed": seed_for(seed, "events", split, i),
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
        x, _ = read_mono(
            espeak_word(
                job["word"], job["voice"], Path(tmp, "w.wav"), SAMPLE_RATE, job["speed"], job["pitch"]
            )
        )
    a, b = active_span(x)
    margin = SAMPLE_RATE // 100  # keep 10 ms around the speech
    x = x[max(0, a - margin) : b + margin]
    n = int(round(duration * SAMPLE_RATE))
    slack = max(0, n - len(x))
    return place(x, n, int(rng.integers(0, slack + 1)))


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
    n = int(round(duration * SAMPLE_RATE))
    placed = [place(x, n, int(round(j["offset"] * SAMPLE_RATE))) for j, x in zip(notes, xs)]
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
    n = int(round(duration * SAMPLE_RATE))
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
    gap = int(0.15 * SAMPLE_RATE)
    free = n - sum(len(s) for _, s in sounds) - gap * (len(sounds) + 1)
    if free < 0:
        raise RuntimeError(f"events do not fit in {duration} s: {job['filename']}")
    # Split the free time into len+1 random shares: before, between and after the events.
    shares = np.floor(rng.dirichlet(np.ones(len(sounds) + 1)) * free).astype(int)
    mix = noise(duration, SAMPLE_RATE, seed=job["seed"] % 2**32, amplitude=float(rng.uniform(0.002, 0.01)))
    pos, labels = gap, []
    for (label, x), share in zip(sounds, shares):
        pos += int(share)
        mix[pos : pos + len(x)] += x
        labels.append(
            {
                "label": label,
                "start": round(1000 * pos / SAMPLE_RATE, 3),
                "end": round(1000 * (pos + len(x)) / SAMPLE_RATE, 3),
            }
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

    pool = process_pool(jobs)
    futures: dict[str, list] = {s: [] for s in SPLITS}

    def submit(split, fn, *args):
        if pool is None:
            futures[split].append(fn(*args))
        else:
            futures[split].append(pool.submit(fn, *args))

    try:
        for split in SPLITS:
            audio_dir = task_dir / str(SAMPLE_RATE) / split
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

    entries: dict = {split: {} for split in SPLITS}
    for split in SPLITS:
        for r in results[split]:
            entries[split].update(r)

    metadata = task_metadata(
        task,
        design,
        f"devsuite-{SUITE_VERSION}",
        f"abt_eval.devsuite synthetic task; held out across splits: {design['held_out']}",
        seed,
        mode="small" if small else "full",
    )
    write_task_files(task_dir, entries, design["labels"], metadata)
    generation = {"metadata": metadata, "clips": design["clips"]}
    atomic_write_text(task_dir / "generation.json", json.dumps(generation, indent=1))
    atomic_write_text(task_dir / ".complete", json.dumps(_marker(task, seed, small)))  # last: the marker
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
    ap = argparse.ArgumentParser(prog="python -m abt_eval.devsuite", description=__doc__.split("\n\n")[0])
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
