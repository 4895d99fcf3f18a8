"""Carry a sweep's Optuna study to another machine as one text file (Optuna's journal format).

    python -m abt_eval.sweep_archive export OUT/study.db STUDY.jsonl [--study-name abt-sweep]
    python -m abt_eval.sweep_archive import STUDY.jsonl OUT/study.db [--study-name abt-sweep]

A search of 40 pre-training trials outlives the machine it started on: its SQLite file stays behind.
``export`` writes the study (settings, every trial's parameters, reports, value, state and attributes,
in trial order, numbers kept) as an Optuna journal: JSON lines that git can hold and diff. ``import``
recreates the study in a new SQLite file, from which ``python -m abt_eval.sweep`` with the same command
continues it. Where no sampler state is kept (Optuna keeps none), TPE rebuilds its model from the trials.

A trial that is running when exported is written as failed ("running when exported") and queued again
(``retry_of``), as the sweep itself does for a trial a kill left running; so a study can be exported
while its sweep runs, and the copy loses only that trial's unfinished work.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hear_abt.fileio import atomic_write_bytes

RUNNING_WHEN_EXPORTED = "running when exported"


class ArchiveError(RuntimeError):
    """The study cannot be exported or imported as asked."""


@dataclass(frozen=True)
class Copied:
    trials: int  # in the source
    by_state: dict[str, int]
    requeued: list[int]  # trials that were running, exported as failed and queued again

    def describe(self) -> str:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self.by_state.items()))
        text = f"{self.trials} trials ({states})"
        if self.requeued:
            text += f"; trials {self.requeued} were running: written as failed and queued again"
        return text


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _journal(path: Path):
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _load(storage, study_name: str, where: Path):
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if study_name not in names:
        raise ArchiveError(f"{where} holds no study {study_name!r} (it holds: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=storage)


def load_study_file(path: Path, study_name: str):
    """A study from a sweep's SQLite file or from a journal this module wrote (``.jsonl``), by suffix."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: no such study file")
    storage = _journal(path) if path.suffix == ".jsonl" else _sqlite_url(path)
    return _load(storage, study_name, path)


def _by_state(trials) -> dict[str, int]:
    return dict(Counter(t.state.name for t in trials))


def export_study(db: Path, out: Path, study_name: str = "abt-sweep") -> Copied:
    """Write study ``study_name`` of the SQLite file ``db`` to the journal ``out`` (replaced atomically:
    a reader never sees a half-written file)."""
    import optuna
    from optuna.trial import TrialState

    from .sweep import RequeueOnce

    if not db.is_file():
        raise ArchiveError(f"{db}: no such study database")
    src = _load(_sqlite_url(db), study_name, db)
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        journal = _journal(tmp)
        optuna.copy_study(from_study_name=study_name, from_storage=_sqlite_url(db), to_storage=journal)
        dst = optuna.load_study(study_name=study_name, storage=journal)
        running = [t.number for t in dst.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        requeue = RequeueOnce()
        study_id = journal.get_study_id_from_name(study_name)
        for number in running:
            trial_id = journal.get_trial_id_from_study_id_trial_number(study_id, number)
            journal.set_trial_user_attr(trial_id, "error", RUNNING_WHEN_EXPORTED)
            journal.set_trial_state_values(trial_id, TrialState.FAIL)
            requeue(dst, journal.get_trial(trial_id))
        atomic_write_bytes(out, tmp.read_bytes())  # the journal is small: a few kB per trial
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.lock").unlink(missing_ok=True)
    trials = src.get_trials(deepcopy=False)
    return Copied(len(trials), _by_state(trials), running)


def import_study(journal: Path, db: Path, study_name: str = "abt-sweep") -> Copied:
    """Recreate study ``study_name`` of the journal in the SQLite file ``db`` (created if missing; a
    study of that name already there is an error, never merged)."""
    import optuna

    if not journal.is_file():
        raise ArchiveError(f"{journal}: no such study journal")
    storage = _journal(journal)
    src = _load(storage, study_name, journal)
    db.parent.mkdir(parents=True, exist_ok=True)
    try:
        optuna.copy_study(from_study_name=study_name, from_storage=storage, to_storage=_sqlite_url(db))
    except optuna.exceptions.DuplicatedStudyError:
        raise ArchiveError(
            f"{db} already holds a study {study_name!r}: import into a new sweep folder, or remove it first"
        ) from None
    requeued = [t.number for t in src.trials if t.user_attrs.get("error") == RUNNING_WHEN_EXPORTED]
    return Copied(len(src.trials), _by_state(src.trials), requeued)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.sweep_archive",
        description=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="SQLite study -> journal file")
    exp.add_argument("db", type=Path, help="the sweep's study.db")
    exp.add_argument("journal", type=Path, help="the journal to write (replaced)")
    imp = sub.add_parser("import", help="journal file -> SQLite study")
    imp.add_argument("journal", type=Path)
    imp.add_argument(
        "db", type=Path, help="the study.db to create, e.g. OUT/study.db of the sweep to continue"
    )
    for p in (exp, imp):
        p.add_argument("--study-name", default="abt-sweep")
    args = ap.parse_args(argv)
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.command == "export":
            copied = export_study(args.db, args.journal, args.study_name)
        else:
            copied = import_study(args.journal, args.db, args.study_name)
    except ArchiveError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.command}: study {args.study_name!r}, {copied.describe()}: {args.db} <-> {args.journal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
