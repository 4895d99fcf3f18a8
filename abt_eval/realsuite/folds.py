"""A k-fold selection task from a built scene task's train and valid splits (its test split left out).

``drums`` and ``sfx`` have about 100 validation clips (one clip per recording; the packages hold no
more), so a validation score moves by about 0.04 and a search on it ranks noise. Cross-validation scores
every clip that is not a test clip: ``drums-folds`` (477 clips) and ``sfx-folds`` (516) in 5 folds, each
fold the test split once (``training.linear_eval`` and heareval score k-fold tasks as the mean over
folds). The test split stays unseen by anything that chooses a recipe.

Folds keep the task's groups whole (a kit piece, a take: never in two folds) and balance each label
over the folds: a label's groups, largest first, each go to the fold that holds fewest clips of that
label (ties: fewest clips in all, then a seeded order). Clips are hard links to the task's files. The
task is built beside its folder and renamed into place, so it is there whole or not at all.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path

from hear_abt.fileio import atomic_write_text

from ..devsuite import write_task_files

SOURCE_SPLITS = ("train", "valid")
MADE_FROM = "made_from"  # the provenance key that marks a folds task (no recordings of its own)


class FoldsError(ValueError):
    """The task cannot be made into folds as asked."""


def _clip_groups(task_dir: Path, prov: dict, split: str) -> dict[str, str]:
    """clip file -> group, through the clip's source file."""
    group_of = {f"{f['package']}/{f['path']}": f["group"] for f in prov["source_files"][split]}
    try:
        return {clip: group_of[info["source"]] for clip, info in prov["clips"][split].items()}
    except KeyError as err:
        raise FoldsError(f"{task_dir}/provenance.json: clip source {err} has no source file entry") from None


def assign_folds(clips: dict[str, tuple[str, str]], k: int, seed: int) -> list[list[str]]:
    """``clips``: clip -> (label, group). k lists of clips; a group's clips share a fold."""
    groups: dict[str, list[str]] = defaultdict(list)
    label_of: dict[str, str] = {}
    for clip, (label, group) in sorted(clips.items()):
        groups[group].append(clip)
        if label_of.setdefault(group, label) != label:
            raise FoldsError(f"group {group!r} holds clips of two labels ({label_of[group]!r}, {label!r})")
    if len(groups) < k:
        raise FoldsError(f"{len(groups)} groups cannot fill {k} folds")
    rng = random.Random(seed)
    order = rng.sample(range(k), k)  # a seeded tie-break between folds
    folds: list[list[str]] = [[] for _ in range(k)]
    per_label: dict[str, list[int]] = defaultdict(lambda: [0] * k)
    names = sorted(groups)
    rng.shuffle(names)
    for group in sorted(names, key=lambda g: -len(groups[g])):  # stable: equal sizes keep the shuffle
        counts = per_label[label_of[group]]
        best = min(range(k), key=lambda i: (counts[i], len(folds[i]), order[i]))
        folds[best].extend(groups[group])
        counts[best] += len(groups[group])
    return [sorted(f) for f in folds]


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def make_folds(task_dir: str | Path, out_dir: str | Path, k: int = 5, seed: int = 0) -> dict:
    """Write the k-fold task ``out_dir`` from the built task ``task_dir``; returns its metadata. A complete
    one made from the same task with the same ``k`` and ``seed`` is kept; anything else in a non-empty
    ``out_dir`` is an error (never overwritten)."""
    task_dir, out_dir = Path(task_dir).resolve(), Path(out_dir).resolve()
    if k < 3:
        raise FoldsError(f"k={k}: a k-fold task needs at least 3 folds (one test, one valid, one train)")
    if not (task_dir / ".complete").is_file():
        raise FoldsError(f"{task_dir} is not a complete realsuite task (no .complete marker)")
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    if meta.get("embedding_type") != "scene" or meta.get("split_mode") != "trainvaltest":
        raise FoldsError(f"{task_dir}: folds are made from a scene task with train/valid/test splits")
    made_from = {
        "task": str(task_dir),
        "k": k,
        "seed": seed,
        "complete": (task_dir / ".complete").read_text(),
    }
    marker = out_dir / ".complete"
    if marker.is_file():
        if json.loads(marker.read_text()) == made_from:
            return json.loads((out_dir / "task_metadata.json").read_text())
        raise FoldsError(f"{out_dir} holds folds made otherwise ({marker.read_text()}): remove it first")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FoldsError(f"{out_dir} exists and is not a folds task: choose another folder or remove it")

    prov = json.loads((task_dir / "provenance.json").read_text())
    clips: dict[str, tuple[str, str]] = {}
    origin: dict[str, str] = {}
    for split in SOURCE_SPLITS:
        labels = json.loads((task_dir / f"{split}.json").read_text())
        groups = _clip_groups(task_dir, prov, split)
        for clip, label in labels.items():
            key = f"{split}-{clip}"  # clip names are unique per split only
            clips[key] = (label[0] if isinstance(label, list) else label, groups[clip])
            origin[key] = split
    folds = assign_folds(clips, k, seed)

    names = [f"fold{i:02d}" for i in range(k)]
    # Built beside the target and renamed into place: a killed run leaves no half-made task.
    building = out_dir.with_name(f".{out_dir.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    rate = str(meta["sample_rate"])
    for name, fold in zip(names, folds):
        (building / rate / name).mkdir(parents=True)
        for key in fold:
            split = origin[key]
            _link(task_dir / rate / split / key[len(split) + 1 :], building / rate / name / key)
    with open(task_dir / "labelvocabulary.csv", newline="") as f:
        vocabulary = [row["label"] for row in sorted(csv.DictReader(f), key=lambda r: int(r["idx"]))]
    fold_meta = {
        **meta,
        "task_name": out_dir.name,
        "split_mode": "new_split_kfold",
        "nfolds": k,
        "splits": names,
        "description": f"{k} folds of {task_dir.name}'s train and valid splits (its test split left out), "
        f"groups kept whole: {prov['held_out']}",
    }
    entries = {name: {c: [clips[c][0]] for c in fold} for name, fold in zip(names, folds)}
    write_task_files(building, entries, vocabulary, fold_meta)
    fold_prov = {
        MADE_FROM: made_from,
        "held_out": prov["held_out"],
        "folds": {
            name: {"clips": len(fold), "groups": sorted({clips[c][1] for c in fold})}
            for name, fold in zip(names, folds)
        },
        "clips": {
            name: {c: {"split": origin[c], "group": clips[c][1]} for c in fold}
            for name, fold in zip(names, folds)
        },
    }
    atomic_write_text(building / "provenance.json", json.dumps(fold_prov, indent=1))
    atomic_write_text(building / ".complete", json.dumps(made_from))
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked above)
    os.replace(building, out_dir)
    return fold_meta
