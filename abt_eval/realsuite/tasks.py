"""The real suite's tasks: designs (files to splits, clips to make), the clip workers, and the HEAR writer.

Every random choice comes from ``seed`` through ``seed_for``, so a build is reproducible from the same
unpacked packages. See ``docs/realsuite.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from hear_abt.audio import load_audio, resample
from hear_abt.config import SAMPLE_RATE

from ..devsuite import SPLITS, split_items
from ..sounds import active_span, fade, normalise, place, seed_for, write_wav
from .sources import (
    EVENT_CLASSES,
    PACKAGES,
    SPEECH_LANGUAGES,
    SourceFile,
    list_ambiences,
    list_drum_samples,
    list_effects,
    list_prompts,
    list_spoken_names,
    package_info,
)

SUITE_VERSION = "1"
GAIN_DB = (-20.0, 0.0)  # clip level: real recordings come at very different levels
EVENT_SNR_DB = (2.0, 18.0)  # event active power over the background's power
EVENT_CLIPS = {"train": 1500, "valid": 500, "test": 500}
EVENT_GAP_S = 0.15  # between events, and before the first and after the last
EVENT_MAX_S = 2.0  # an event longer than this is cut (with a fade)
SPEECH_S = 2.0
SPEECH_WINDOWS = 3  # at most this many consecutive clips from one long recording
TELEPHONE_SR = 8000  # speech is band-limited to 4 kHz everywhere: the bandwidth must not tell the split


@dataclass(frozen=True)
class SceneSpec:
    lister: Callable[[Path], list[SourceFile]]
    duration: float
    stratify: bool  # split each label's groups separately, so every label is in every split
    held_out: str
    labels_from: str


SCENES = {
    "drums": SceneSpec(
        list_drum_samples,
        1.0,
        True,
        "kit pieces: all velocity layers of one drum of one kit share a split",
        "the instrument name in the kit's drumkit.xml, mapped to a drum class (sources.DRUM_CLASSES)",
    ),
    "sfx": SceneSpec(
        list_effects,
        2.0,
        True,
        "takes: files named <family>_<n>, <n>a, <n>b share a split",
        "the folder and file-name family under audio/ (sources.SFX_CLASSES)",
    ),
}
TASKS = ("speech-language", "drums", "sfx", "events")
TASK_PACKAGES = {
    "speech-language": ["tuxpaint-stamps-default"]
    + [f"asterisk-core-sounds-{x}-wav" for x in SPEECH_LANGUAGES],
    "drums": ["hydrogen-drumkits"],
}
TASK_PACKAGES.update(sfx=["0ad-data"], events=["0ad-data"])


# ------------------------------------------------------------------------------------------ design


def assign_splits(
    files: list[SourceFile], seed: int, name: str, stratify: bool
) -> tuple[dict[str, list[SourceFile]], list[str]]:
    """Files to splits by group (no group in two splits); also the labels dropped for having fewer than
    three groups (with ``stratify``, a label must reach every split)."""
    groups: dict[str, list[SourceFile]] = {}
    for f in sorted(files, key=lambda f: f.key):
        groups.setdefault(f.group, []).append(f)
    rng = np.random.default_rng(seed_for(seed, name, "splits"))
    if stratify:
        by_label: dict[str, list[str]] = {}
        for g, members in groups.items():
            by_label.setdefault(members[0].label, []).append(g)
        dropped = sorted(lab for lab, gs in by_label.items() if len(gs) < 3)
        parts = [split_items(gs, rng) for lab, gs in sorted(by_label.items()) if lab not in dropped]
    else:
        dropped, parts = [], [split_items(sorted(groups), rng)]
    out = {s: [f for part in parts for g in part[s] for f in groups[g]] for s in SPLITS}
    return out, dropped


def _gain(rng: np.random.Generator) -> float:
    return round(float(rng.uniform(*GAIN_DB)), 2)


def _windows(f: SourceFile, cache: Path, seconds: float) -> int:
    return int(min(SPEECH_WINDOWS, max(1, sf.info(f.absolute(cache)).duration // seconds)))


def _clip_jobs(
    task: str,
    files: list[SourceFile],
    cache: Path,
    seed: int,
    split: str,
    seconds: float | None = None,
    telephone: bool = False,
) -> list[dict]:
    """One job per clip: per recording one clip, or with ``seconds`` up to SPEECH_WINDOWS consecutive
    clips of that length (as many as the recording holds)."""
    rng = np.random.default_rng(seed_for(seed, task, "clips", split))
    extra = {"telephone": True} if telephone else {}
    jobs = []
    for f in files:
        for w in range(_windows(f, cache, seconds) if seconds else 1):
            i = len(jobs)
            jobs.append(
                {
                    "filename": f"{i:05d}-{f.label}.wav",
                    "label": f.label,
                    "source": f.key,
                    "path": str(f.absolute(cache)),
                    "window": w,
                    "seed": seed_for(seed, task, split, i),
                    "gain_db": _gain(rng),
                    **extra,
                }
            )
    return jobs


def _scene_design(
    files: dict, clips: dict, dropped: list[str], duration: float, held_out: str, labels_from: str
):
    return {
        "splits": files,
        "clips": clips,
        "labels": sorted({f.label for s in SPLITS for f in files[s]}),
        "dropped_labels": dropped,
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "evaluation": ["top1_acc"],
        "sample_duration": duration,
        "held_out": held_out,
        "labels_from": labels_from,
    }


def design_scene(task: str, cache: Path, seed: int) -> dict:
    spec = SCENES[task]
    files = spec.lister(cache)
    if not files:
        raise RuntimeError(f"{task}: no source files found in {', '.join(TASK_PACKAGES[task])}")
    splits, dropped = assign_splits(files, seed, task, spec.stratify)
    clips = {s: _clip_jobs(task, splits[s], cache, seed, s) for s in SPLITS}
    return _scene_design(splits, clips, dropped, spec.duration, spec.held_out, spec.labels_from)


def design_speech_language(cache: Path, seed: int) -> dict:
    """Train on tuxpaint's translators, validate and test on asterisk's voices (prompts halved): no voice
    is heard in two splits, and no split can be solved by recognising the one voice of a language."""
    train = sorted(list_spoken_names(cache, SPEECH_LANGUAGES), key=lambda f: f.key)
    unseen = sorted(list_prompts(cache), key=lambda f: f.key)
    if not train or not unseen:
        raise RuntimeError(
            "speech-language: no spoken names in tuxpaint-stamps-default or no asterisk prompts"
        )
    # a prompt's recordings in every language share a split (as a stamp's names do)
    prompts = sorted({f.group for f in unseen})
    order = np.random.default_rng(seed_for(seed, "speech-language", "splits")).permutation(len(prompts))
    valid = {prompts[i] for i in order[: len(prompts) // 2]}
    splits = {
        "train": train,
        "valid": [f for f in unseen if f.group in valid],
        "test": [f for f in unseen if f.group not in valid],
    }
    clips = {
        s: _clip_jobs("speech-language", splits[s], cache, seed, s, seconds=SPEECH_S, telephone=True)
        for s in SPLITS
    }
    return _scene_design(
        splits,
        clips,
        [],
        SPEECH_S,
        "speakers: train = tuxpaint-stamps-default's translators, valid/test = asterisk's voices (prompts "
        "halved; a prompt's recordings in all languages share a split)",
        "the language: <stamp>_desc_<lang> in tuxpaint, the package name in asterisk",
    )


def design_events(cache: Path, seed: int, counts: dict[str, int]) -> dict:
    """Mixtures of 1-3 sfx events over an ambience; events keep the split their file has in ``sfx``."""
    sfx, _ = assign_splits(list_effects(cache), seed, "sfx", SCENES["sfx"].stratify)
    events = {s: [f for f in sfx[s] if f.label in EVENT_CLASSES] for s in SPLITS}
    backgrounds, _ = assign_splits(list_ambiences(cache), seed, "events-background", False)
    for s in SPLITS:
        if not events[s] or not backgrounds[s]:
            raise RuntimeError(f"events: split {s} has no event files or no ambience files in 0ad-data")
    rng = np.random.default_rng(seed_for(seed, "events", "clips"))
    clips = {}
    for split in SPLITS:
        jobs = []
        for i in range(counts[split]):
            bg = backgrounds[split][int(rng.integers(len(backgrounds[split])))]
            picks = [events[split][int(j)] for j in rng.integers(len(events[split]), size=rng.integers(1, 4))]
            jobs.append(
                {
                    "filename": f"{i:05d}-{'-'.join(f.label for f in picks)}.wav",
                    "background": {"source": bg.key, "path": str(bg.absolute(cache))},
                    "events": [
                        {
                            "label": f.label,
                            "source": f.key,
                            "path": str(f.absolute(cache)),
                            "snr_db": round(float(rng.uniform(*EVENT_SNR_DB)), 2),
                        }
                        for f in picks
                    ],
                    "seed": seed_for(seed, "events", split, i),
                    "gain_db": round(float(rng.uniform(-12.0, 0.0)), 2),
                }
            )
        clips[split] = jobs
    splits = {s: sorted({*events[s], *backgrounds[s]}, key=lambda f: f.key) for s in SPLITS}
    return {
        "splits": splits,
        "clips": clips,
        "labels": list(EVENT_CLASSES),
        "dropped_labels": [],
        "embedding_type": "event",
        "prediction_type": "multilabel",
        "evaluation": ["event_onset_200ms_fms", "segment_1s_er"],
        "sample_duration": 5.0,
        "held_out": "event takes (as in sfx) and ambience recordings",
        "labels_from": "the sfx family of each placed event; onset and offset from its placement (ms)",
    }


# ------------------------------------------------------------------------------------------ workers


@functools.lru_cache(maxsize=64)
def _load(path: str) -> np.ndarray:
    # backgrounds are read by many clips: decode and resample each once per worker process
    return load_audio(path)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2))) + 1e-12


def work_scene(job: dict, out_dir: str, duration: float) -> tuple[dict, dict]:
    """One clip: window ``window`` (0: from the onset) of the recording's active part, cut at ``duration``,
    at a random offset; band-limited to telephone bandwidth with ``telephone``."""
    rng = np.random.default_rng(job["seed"])
    x = load_audio(job["path"])
    if job.get("telephone"):
        x = resample(resample(x, SAMPLE_RATE, TELEPHONE_SR), TELEPHONE_SR, SAMPLE_RATE)
    a, b = active_span(x, threshold_db=-40.0)
    n = int(round(duration * SAMPLE_RATE))
    a = min(a + job.get("window", 0) * n, max(a, b - n))  # window k of the active part
    x = fade(x[a : min(b, a + n)], ms=5.0)
    offset = int(rng.integers(0, n - len(x) + 1))
    y = normalise(place(x, n, offset), 0.9 * 10 ** (job["gain_db"] / 20))
    write_wav(Path(out_dir, job["filename"]), y)
    info = {
        "source": job["source"],
        "from_s": round(a / SAMPLE_RATE, 3),
        "seconds": round(len(x) / SAMPLE_RATE, 3),
    }
    return {job["filename"]: [job["label"]]}, {job["filename"]: {**info, "offset_s": offset / SAMPLE_RATE}}


def _event_sound(path: str) -> np.ndarray:
    x = _load(path)
    a, b = active_span(x, threshold_db=-30.0)
    return fade(x[a : min(b, a + int(EVENT_MAX_S * SAMPLE_RATE))])


def work_event_mix(job: dict, out_dir: str, duration: float) -> tuple[dict, dict]:
    """Events placed without overlap (>= EVENT_GAP_S apart) over a window of the ambience; labels in ms."""
    rng = np.random.default_rng(job["seed"])
    n = int(round(duration * SAMPLE_RATE))
    bg = _load(job["background"]["path"])
    if len(bg) < n:
        bg = np.tile(bg, -(-n // len(bg)))
    start = int(rng.integers(0, len(bg) - n + 1))
    mix = bg[start : start + n].astype(np.float64) / _rms(bg[start : start + n]) * 0.05
    events = list(job["events"])
    sounds = [_event_sound(ev["path"]) for ev in events]
    gap = int(EVENT_GAP_S * SAMPLE_RATE)
    while sum(map(len, sounds)) + gap * (len(sounds) + 1) > n:  # the last ones do not fit: drop them
        events, sounds = events[:-1], sounds[:-1]
    free = n - sum(map(len, sounds)) - gap * (len(sounds) + 1)
    shares = np.floor(rng.dirichlet(np.ones(len(sounds) + 1)) * free).astype(int)
    pos, labels = gap, []
    for ev, x, share in zip(events, sounds, shares):
        pos += int(share)
        level = 0.05 * 10 ** (ev["snr_db"] / 20) / _rms(x[slice(*active_span(x))])
        mix[pos : pos + len(x)] += x * level
        labels.append({"label": ev["label"], "start": round(1000 * pos / SAMPLE_RATE, 3),
                       "end": round(1000 * (pos + len(x)) / SAMPLE_RATE, 3)})  # fmt: skip
        pos += len(x) + gap
    write_wav(
        Path(out_dir, job["filename"]), normalise(mix.astype(np.float32), 0.9 * 10 ** (job["gain_db"] / 20))
    )
    info = {"background": job["background"]["source"], "background_from_s": start / SAMPLE_RATE,
            "events": [{**lab, "source": ev["source"], "snr_db": ev["snr_db"]} for lab, ev in zip(labels, events)]}  # fmt: skip
    return {job["filename"]: labels}, {job["filename"]: info}


# ------------------------------------------------------------------------------------------ writing


def provenance(task: str, design: dict, cache: Path, seed: int, clip_info: dict) -> dict:
    packages = {p: {**(package_info(cache, p) or {}), "licence": PACKAGES[p].licence,
                    "recorded": PACKAGES[p].recorded} for p in TASK_PACKAGES[task]}  # fmt: skip
    return {
        "task": task,
        "suite_version": SUITE_VERSION,
        "seed": seed,
        "packages": packages,
        "labels_from": design["labels_from"],
        "held_out": design["held_out"],
        "dropped_labels": design["dropped_labels"],
        "synthesis": "none: every clip is cut from recordings shipped in the packages above",
        "source_files": {s: [f.record(cache) for f in design["splits"][s]] for s in SPLITS},
        "clips": clip_info,
    }
