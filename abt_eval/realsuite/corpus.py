"""A pre-training corpus of recordings from packages that no real-suite task reads, refused on any overlap.

Disjointness is checked twice: by package (no corpus package is a suite package) and by content (no
source file of the corpus has the SHA-256 of a suite source file, which catches a recording shipped by two
packages, as game packages that share Freesound samples do, byte for byte).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hear_abt.audio import AudioFileError, load_audio, to_mono_16k
from hear_abt.config import SAMPLE_RATE
from hear_abt.fileio import atomic_write_text

from ..devsuite import SPLITS
from ..sounds import active_span, fade, normalise, process_pool, seed_for, write_wav
from .folds import MADE_FROM
from .sources import (
    EVENT_CLASSES,
    SPEECH_LANGUAGES,
    SourceFile,
    audio_files,
    fetch_package,
    file_sha256,
    list_ambiences,
    list_effects,
    list_prompts,
    list_spoken_names,
    package_dir,
    package_info,
)
from .tasks import SCENES, TASK_PACKAGES, TASKS

CORPUS_PACKAGES = (
    "asterisk-core-sounds-it-wav",
    "hedgewars-data",
    "wesnoth-1.16-data",
    "sonic-pi-samples",
    "lmms-common",
    "hydrogen-drumkits-effects",
)
CLIP_S = 10.0
MIN_PIECE_S = 0.1  # shorter recordings (or tails of long ones) are left out
GAP_S = (0.1, 0.4)  # silence between the recordings of one clip


class OverlapError(RuntimeError):
    """The corpus would share a package or a recording with the suite."""


def suite_sources(cache: Path, tasks=TASKS, *, fetch: bool = True, log=print) -> list[SourceFile]:
    """Every source file the suite's ``tasks`` read, from the packages in ``cache``."""
    out: list[SourceFile] = []
    for task in tasks:
        for p in TASK_PACKAGES[task]:
            fetch_package(cache, p, fetch=fetch, log=log)
        if task == "events":
            out += [f for f in list_effects(cache) if f.label in EVENT_CLASSES] + list_ambiences(cache)
        elif task == "speech-language":
            out += list_spoken_names(cache, SPEECH_LANGUAGES) + list_prompts(cache)
        else:
            out += SCENES[task].lister(cache)
    return out


def suite_hashes_from_folder(suite_dir: Path) -> dict[str, str]:
    """SHA-256 -> source of every source file recorded in the ``provenance.json`` files of a built suite."""
    out = {}
    # Hidden folders are not tasks (a folds task being built is one, folds.py).
    tasks = sorted(p for p in Path(suite_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    unfinished = [p.name for p in tasks if not (p / ".complete").is_file()]
    if unfinished or not tasks:  # a half-built task's recordings would go unchecked
        raise OverlapError(
            f"{suite_dir} is not a built real suite (unfinished: {', '.join(unfinished) or 'all'})"
        )
    found = [p / "provenance.json" for p in tasks]
    for path in found:
        record = json.loads(path.read_text())
        if MADE_FROM in record:  # k folds of another task: no recordings of their own
            continue
        for split in SPLITS:
            for f in record["source_files"][split]:
                out[f["sha256"]] = f"{f['package']}/{f['path']}"
    return out


def check_disjoint(suite: dict[str, str], corpus: dict[str, str]) -> None:
    """Refuse (``OverlapError``) a corpus that shares a package or a file's content with the suite.

    Both map SHA-256 -> ``package/path``."""
    package = lambda key: key.split("/", 1)[0]  # noqa: E731
    shared_packages = sorted({package(k) for k in suite.values()} & {package(k) for k in corpus.values()})
    if shared_packages:
        raise OverlapError(f"corpus and suite both read package(s) {', '.join(shared_packages)}")
    shared = sorted(set(suite) & set(corpus))
    if shared:
        pairs = "; ".join(f"{corpus[h]} = {suite[h]}" for h in shared[:5])
        raise OverlapError(f"{len(shared)} corpus recording(s) are suite recordings: {pairs}")


def readable_seconds(path: Path) -> float | None:
    """The duration of ``path``, or None when no decoder here reads it (lmms-common ships a few files
    named .ogg that hold WAV data in a codec neither libsndfile nor this FFmpeg decodes)."""
    try:
        return sf.info(path).duration
    except (sf.LibsndfileError, RuntimeError):
        pass
    try:
        return len(load_audio(path)) / SAMPLE_RATE
    except AudioFileError:
        return None


def plan_clips(cache: Path, packages, seed: int, skipped: list[str]) -> list[dict]:
    """Clips of at most ``CLIP_S`` seconds, each from the recordings of one package in a seeded order; a
    recording longer than a clip is cut into pieces of one clip each; unreadable ones go to ``skipped``."""
    clips = []
    for pkg in packages:
        root = package_dir(cache, pkg)
        files = audio_files(root)
        rng = np.random.default_rng(seed_for(seed, "realcorpus", pkg))
        pieces, current, used = [], [], 0.0
        for i in rng.permutation(len(files)):
            seconds = readable_seconds(files[i])
            rel = files[i].relative_to(root).as_posix()
            if seconds is None:
                skipped.append(f"{pkg}/{rel}")
                continue
            spans = [(rel, t, min(seconds, t + CLIP_S)) for t in np.arange(0.0, seconds, CLIP_S)]
            pieces += [p for p in spans if p[2] - p[1] >= MIN_PIECE_S]
        for rel, a, b in pieces:
            if current and used + (b - a) + GAP_S[1] > CLIP_S:
                clips.append({"package": pkg, "pieces": current})
                current, used = [], 0.0
            current.append({"path": rel, "from_s": round(float(a), 3), "to_s": round(float(b), 3)})
            used += (b - a) + GAP_S[1]
        if current:
            clips.append({"package": pkg, "pieces": current})
    for i, clip in enumerate(clips):
        clip["file"] = f"r{i:06d}-{clip['package']}.wav"
        clip["seed"] = seed_for(seed, "realcorpus", i)
    return clips


def read_span(path: Path, from_s: float, to_s: float) -> np.ndarray:
    """Seconds ``from_s``..``to_s`` of ``path`` at 16 kHz mono; only that span is decoded where the
    format can seek (a long track is cut into many pieces: decoding it whole for each is quadratic)."""
    try:
        with sf.SoundFile(path) as f:
            f.seek(int(from_s * f.samplerate))
            data = f.read(int((to_s - from_s) * f.samplerate), dtype="float32", always_2d=True)
            return to_mono_16k(data, f.samplerate)
    except (sf.LibsndfileError, RuntimeError):
        x = load_audio(path)
        return x[int(from_s * SAMPLE_RATE) : int(to_s * SAMPLE_RATE)]


def work_corpus_clip(clip: dict, root: str, audio_dir: str) -> str:
    """The pieces of ``clip`` (silence trimmed) one after the other with short gaps, padded to CLIP_S."""
    rng = np.random.default_rng(clip["seed"])
    n = int(CLIP_S * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    pos = 0
    for piece in clip["pieces"]:
        x = read_span(Path(root, piece["path"]), piece["from_s"], piece["to_s"])
        if len(x) < SAMPLE_RATE // 50:  # nothing to trim or hear (a file's last few ms)
            continue
        a, b = active_span(x, threshold_db=-50.0)
        x = normalise(fade(x[a:b]), float(rng.uniform(0.3, 0.9)))[: n - pos]
        out[pos : pos + len(x)] = x
        pos += len(x) + int(rng.uniform(*GAP_S) * SAMPLE_RATE)
        if pos >= n:
            break
    write_wav(Path(audio_dir, clip["file"]), out)
    return clip["file"]


def _hashes(cache: Path, packages) -> dict[str, str]:
    """SHA-256 -> ``package/path`` of every audio file of ``packages``."""
    out = {}
    for p in packages:
        root = package_dir(cache, p)
        for f in audio_files(root):
            out[file_sha256(f)] = f"{p}/{f.relative_to(root).as_posix()}"
    return out


def _write_clips(todo: list[dict], cache: Path, audio_dir: Path, jobs: int, progress: bool) -> None:
    pool = process_pool(jobs)
    try:
        args = [(c, str(package_dir(cache, c["package"])), str(audio_dir)) for c in todo]
        results = (
            (work_corpus_clip(*a) for a in args)
            if pool is None
            else (f.result() for f in [pool.submit(work_corpus_clip, *a) for a in args])
        )
        for _ in tqdm(results, total=len(todo), unit="clip", desc="corpus", disable=not progress):
            pass
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def build_corpus(
    out_dir: str | Path,
    cache: str | Path,
    *,
    packages=CORPUS_PACKAGES,
    suite_dir: str | Path | None = None,
    suite_tasks=TASKS,
    seed: int = 0,
    max_clips: int | None = None,
    jobs: int = 1,
    fetch: bool = True,
    progress: bool = True,
    log=print,
) -> Path:
    """Write ``out_dir/audio/*.wav`` (10 s clips) and ``out_dir/corpus.json`` from ``packages``, after
    checking them against the suite (the built ``suite_dir`` if given, else the suite's sources in
    ``cache``). The manifest is written before the clips: a rerun of a killed build completes it."""
    t0 = time.time()
    cache, out_dir = Path(cache), Path(out_dir)
    for p in packages:
        fetch_package(cache, p, fetch=fetch, log=log)
    corpus = _hashes(cache, packages)
    if suite_dir is not None:
        suite = suite_hashes_from_folder(Path(suite_dir))
    else:
        files = suite_sources(cache, suite_tasks, fetch=fetch, log=log)
        suite = {file_sha256(f.absolute(cache)): f.key for f in files}
    check_disjoint(suite, corpus)
    settings = {"seed": seed, "packages": list(packages), "clip_s": CLIP_S, "max_clips": max_clips}
    manifest = out_dir / "corpus.json"
    if manifest.is_file() and json.loads(manifest.read_text())["settings"] != settings:
        raise ValueError(f"{out_dir} holds a corpus made with other settings; use another folder")
    skipped: list[str] = []
    clips = plan_clips(cache, packages, seed, skipped)[:max_clips]
    record = {
        "settings": settings,
        "packages": {p: package_info(cache, p) for p in packages},
        "suite_check": {"suite_files": len(suite), "corpus_files": len(corpus), "shared": 0},
        "unreadable": skipped,
        "sources": [{"sha256": h, "source": k} for h, k in sorted(corpus.items(), key=lambda kv: kv[1])],
        "clips": clips,
    }
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest, json.dumps(record, indent=1))
    _write_clips(
        [c for c in clips if not (audio_dir / c["file"]).is_file()], cache, audio_dir, jobs, progress
    )
    log(f"corpus: {len(clips)} clips of {CLIP_S:.0f} s ({len(clips) * CLIP_S / 3600:.2f} h) from "
        f"{len(corpus)} recordings in {time.time() - t0:.0f} s -> {out_dir}")  # fmt: skip
    return out_dir
