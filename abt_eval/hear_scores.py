"""What a ``hear_eval`` output folder holds, read back: where heareval puts each (model, task), the
task's primary metric, the scores heareval wrote, and "% vs random".

The layout and the score files: ``docs/evaluation.md`` ("One-command evaluation").
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCORES_FILE = "test.predicted-scores.json"

# heareval 2021.1.3's score functions declared with maximize=False (heareval/score.py). Anything else
# that looks like an error rate or a loss is treated the same way.
LOWER_IS_BETTER = frozenset({"segment_1s_er"})
_LOWER_PATTERN = re.compile(r"(^|_)(er|wer|error|loss)$")

# The no-learning reference (--logmel-reference): a HEAR module without weights, a column of the table.
LOGMEL_NAME = "logmel"
LOGMEL_MODULE = "abt_eval.logmel"
LOGMEL_SOURCE = "(no weights: abt_eval.logmel)"


class EvalError(RuntimeError):
    """Bad arguments or an inconsistent output folder."""


class ScoredModel(Protocol):
    """A model of the output folder (``hear_eval.ModelSpec``): its NAME and, for a HEAR module of its
    own (the log-mel reference), that module."""

    name: str
    module: str | None


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def options_suffix(model_options: Mapping | None) -> str:
    """The suffix heareval's embeddings runner appends to the module name for ``--model-options``."""
    if not model_options:
        return ""
    from slugify import slugify  # python-slugify: what heareval itself uses

    return "-" + "-".join(f"{slugify(str(k))}={slugify(str(v))}" for k, v in model_options.items())


def embed_task_dir(
    out_dir: Path, model: str, task: str, module: str = "hear_abt", model_options: Mapping | None = None
) -> Path:
    """Where heareval puts (model, task): ``OUT/embeddings/<model>/<module><options>/<task>``."""
    return Path(out_dir) / "embeddings" / model / (module + options_suffix(model_options)) / task


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def primary_metric(task_dir: str | os.PathLike) -> str:
    """The first metric of the task's ``task_metadata.json`` ``evaluation`` list (heareval's target)."""
    path = Path(task_dir) / "task_metadata.json"
    try:
        evaluation = json.loads(path.read_text())["evaluation"]
    except FileNotFoundError as err:
        raise EvalError(f"{path} is missing: not a HEAR task folder") from err
    except (KeyError, json.JSONDecodeError) as err:
        raise EvalError(f"{path} has no readable 'evaluation' list ({err})") from err
    if not isinstance(evaluation, list) or not evaluation or not isinstance(evaluation[0], str):
        raise EvalError(f"{path}: 'evaluation' must be a non-empty list of metric names, got {evaluation!r}")
    return evaluation[0]


def lower_is_better(metric: str) -> bool:
    """True for error rates and losses (e.g. ``segment_1s_er``)."""
    return metric in LOWER_IS_BETTER or bool(_LOWER_PATTERN.search(metric))


@dataclass(frozen=True)
class TaskScore:
    """Primary test score of one (model, task); ``std`` over folds for k-fold tasks."""

    metric: str
    value: float
    std: float | None = None
    n_folds: int = 1

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)


_NOT_FOLDS = {"aggregated_scores", "hparams", "postprocessing", "score_mode", "embedding_path"}


def read_primary_score(scores_file: str | os.PathLike, metric: str) -> TaskScore:
    """Read ``metric`` from a heareval ``test.predicted-scores.json``.

    heareval writes ``{<test split(s)>: {"test_<metric>": ..., "test_score": ..., ...}, "hparams": ...,
    "postprocessing": ..., "score_mode": ..., "embedding_path": ...}``: one entry named ``test`` for a
    train/valid/test task; one per fold (``fold00`` ...) plus ``aggregated_scores`` with
    ``test_<metric>_mean`` and ``_std`` for a k-fold task.
    """
    path = Path(scores_file)
    data = json.loads(path.read_text())
    key = f"test_{metric}"
    folds = {k: v for k, v in data.items() if k not in _NOT_FOLDS and isinstance(v, dict)}
    if "aggregated_scores" in data:
        agg = data["aggregated_scores"]
        if f"{key}_mean" not in agg:
            raise EvalError(f"{path}: aggregated_scores has no {key}_mean (has {sorted(agg)})")
        std = agg.get(f"{key}_std")
        std = float(std) if std is not None and not is_nan(std) else None
        return TaskScore(metric, float(agg[f"{key}_mean"]), std, max(len(folds), 2))
    if len(folds) != 1:
        raise EvalError(f"{path}: expected one test split or aggregated_scores, found {sorted(folds)}")
    (fold,) = folds.values()
    if key not in fold:
        raise EvalError(f"{path}: no {key} in its test results (has {sorted(fold)})")
    return TaskScore(metric, float(fold[key]))


def is_nan(x) -> bool:
    """True for NaN and for anything that is not a number."""
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def collect_scores(
    out_dir: str | os.PathLike,
    models: Iterable[str | ScoredModel],
    tasks: Iterable[str],
    module: str = "hear_abt",
    model_options: Mapping | None = None,
) -> dict[str, dict[str, TaskScore]]:
    """``{model: {task: TaskScore}}`` for every pair whose ``test.predicted-scores.json`` exists.

    ``models``: NAMEs, or ``hear_eval.ModelSpec`` (whose own ``module`` takes no ``model_options``).
    The metric comes from the ``task_metadata.json`` heareval copies into the embeddings folder.
    """
    tasks = list(tasks)
    scores: dict[str, dict[str, TaskScore]] = {}
    for model in models:
        name = model if isinstance(model, str) else model.name
        own = None if isinstance(model, str) else model.module
        scores[name] = {}
        for task in tasks:
            folder = embed_task_dir(Path(out_dir), name, task, own or module, None if own else model_options)
            if (folder / SCORES_FILE).is_file():
                scores[name][task] = read_primary_score(folder / SCORES_FILE, primary_metric(folder))
    return scores


def pct_vs_random(score: float, random: float, lower_better: bool) -> float | None:
    """``(score - random) / |random| * 100``, negated for lower-is-better metrics: positive = better."""
    if random == 0 or is_nan(score) or is_nan(random):
        return None
    pct = (score - random) / abs(random) * 100.0
    return -pct if lower_better else pct
