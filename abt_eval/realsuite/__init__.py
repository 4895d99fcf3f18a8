"""A HEAR-format suite and a disjoint pre-training corpus cut from real recordings in Debian packages.

    python -m abt_eval.realsuite build OUT_DIR [--tasks speech-language,drums,sfx,events] [--cache DIR]
    python -m abt_eval.realsuite corpus OUT_DIR [--suite SUITE_DIR] [--cache DIR]

The synthetic ``abt_eval.devsuite`` stays the fast smoke suite; this one is the one meant to predict unseen
tasks. Sources, tasks, sizes and the survey behind them: ``docs/realsuite.md``.
"""

from .build import build_suite, build_task, task_is_complete, task_summary
from .corpus import CORPUS_PACKAGES, OverlapError, build_corpus, check_disjoint
from .sources import PACKAGES, FetchError, SourceFile, fetch_package, mark_unpacked
from .tasks import EVENT_CLIPS, SCENES, SUITE_VERSION, TASK_PACKAGES, TASKS, assign_splits

__all__ = [
    "CORPUS_PACKAGES",
    "EVENT_CLIPS",
    "PACKAGES",
    "SCENES",
    "SUITE_VERSION",
    "TASKS",
    "TASK_PACKAGES",
    "FetchError",
    "OverlapError",
    "SourceFile",
    "assign_splits",
    "build_corpus",
    "build_suite",
    "build_task",
    "check_disjoint",
    "fetch_package",
    "mark_unpacked",
    "task_is_complete",
    "task_summary",
]
