"""Building the real suite's tasks into a HEAR tasks folder (one folder per task, written atomically)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from hear_abt.config import SAMPLE_RATE
from hear_abt.fileio import atomic_write_text

from ..devsuite import SPLITS, task_metadata, write_task_files
from ..sounds import process_pool
from .sources import fetch_package, package_info
from .tasks import (
    EVENT_CLIPS,
    SUITE_VERSION,
    TASK_PACKAGES,
    TASKS,
    design_events,
    design_scene,
    design_speech_language,
    provenance,
    work_event_mix,
    work_scene,
)


def _marker(task: str, seed: int, cache: Path, event_clips: dict) -> dict:
    versions = {p: (package_info(cache, p) or {}).get("version") for p in TASK_PACKAGES[task]}
    marker = {"task": task, "seed": seed, "version": SUITE_VERSION, "packages": versions}
    return {**marker, "event_clips": event_clips} if task == "events" else marker


def task_is_complete(task_dir: Path, marker: dict) -> bool:
    try:
        return json.loads((task_dir / ".complete").read_text()) == marker
    except (OSError, ValueError):
        return False


def _run_jobs(design: dict, task_dir: Path, task: str, jobs: int, progress: bool):
    """Every clip of every split through the pool; (label entries, clip info) per split."""
    worker = work_event_mix if task == "events" else work_scene
    duration = design["sample_duration"]
    total = sum(len(design["clips"][s]) for s in SPLITS)
    pool = process_pool(jobs)
    entries: dict = {s: {} for s in SPLITS}
    info: dict = {s: {} for s in SPLITS}
    try:
        with tqdm(total=total, unit="clip", desc=task, disable=not progress, dynamic_ncols=True) as bar:
            for split in SPLITS:
                audio_dir = task_dir / str(SAMPLE_RATE) / split
                audio_dir.mkdir(parents=True, exist_ok=True)
                args = [(job, str(audio_dir), duration) for job in design["clips"][split]]
                if pool is None:
                    results = (worker(*a) for a in args)
                else:
                    results = (f.result() for f in [pool.submit(worker, *a) for a in args])
                for labels, clip in results:
                    entries[split].update(labels)
                    info[split].update(clip)
                    bar.update()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return entries, info


def build_task(
    out_dir: str | Path,
    task: str,
    cache: str | Path,
    *,
    seed: int = 0,
    jobs: int | None = None,
    fetch: bool = True,
    event_clips: dict[str, int] | None = None,
    force: bool = False,
    progress: bool = True,
    log=print,
) -> Path:
    """Build ``out_dir/task`` from the packages in ``cache`` (fetched when missing and ``fetch``)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    cache = Path(cache)
    for p in TASK_PACKAGES[task]:
        fetch_package(cache, p, fetch=fetch, log=log)
    event_clips = dict(event_clips or EVENT_CLIPS)
    task_dir = Path(out_dir) / task
    marker = _marker(task, seed, cache, event_clips)
    if not force and task_is_complete(task_dir, marker):
        return task_dir
    shutil.rmtree(task_dir, ignore_errors=True)
    if task == "events":
        design = design_events(cache, seed, event_clips)
    elif task == "speech-language":
        design = design_speech_language(cache, seed)
    else:
        design = design_scene(task, cache, seed)
    jobs = (os.cpu_count() or 1) if jobs is None else jobs
    entries, info = _run_jobs(design, task_dir, task, jobs, progress)
    metadata = task_metadata(
        task,
        design,
        f"realsuite-{SUITE_VERSION}",
        f"abt_eval.realsuite task from recordings; held out across splits: {design['held_out']}",
        seed,
    )
    write_task_files(task_dir, entries, design["labels"], metadata)
    record = provenance(task, design, cache, seed, info)
    atomic_write_text(task_dir / "provenance.json", json.dumps(record, indent=1))
    atomic_write_text(task_dir / ".complete", json.dumps(marker))  # last: the marker
    return task_dir


def task_summary(task_dir: Path) -> dict:
    """Classes, clips per split, audio seconds and bytes on disk of a built task."""
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    clips = {s: len(json.loads((task_dir / f"{s}.json").read_text())) for s in SPLITS}
    size = sum(p.stat().st_size for p in task_dir.rglob("*") if p.is_file())
    classes = sum(1 for _ in (task_dir / "labelvocabulary.csv").open()) - 1
    seconds = sum(clips.values()) * meta["sample_duration"]
    return {"task": task_dir.name, "classes": classes, "clips": clips, "hours": seconds / 3600, "bytes": size}


def build_suite(
    out_dir: str | Path,
    cache: str | Path,
    *,
    tasks: list[str] | tuple[str, ...] = TASKS,
    log=print,
    **kw,
) -> dict[str, Path]:
    out = {}
    for task in tasks:
        t0 = time.time()
        out[task] = build_task(out_dir, task, cache, log=log, **kw)
        s = task_summary(out[task])
        clips = ", ".join(f"{k} {v}" for k, v in s["clips"].items())
        log(
            f"{task}: {s['classes']} classes, {clips}, {s['hours']:.2f} h, {s['bytes'] / 1e6:.0f} MB, "
            f"{time.time() - t0:.0f} s -> {out[task]}"
        )
    return out
