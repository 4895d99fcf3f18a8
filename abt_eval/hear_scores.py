"""What a ``hear_eval`` output folder holds, read back: where heareval puts each (model, task) and each
probe seed, the task's primary metric, the scores heareval wrote, its per-clip test predictions, and
"% vs random".

The layout and the score files: ``docs/evaluation.md`` ("One-command evaluation").
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .stats import Interval, mean_interval

SCORES_FILE = "test.predicted-scores.json"
# heareval's predictions runner seeds everything with 42 (task_predictions: seed_everything(42)); further
# probe seeds are 43, 44, ... so that --seeds 1 is exactly heareval's own run.
HEAREVAL_SEED = 42
# Metrics that are a mean over test clips of a per-clip score, so that clips can be resampled.
CLIP_MEAN_METRICS = frozenset({"top1_acc"})

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


def probe_seeds(n: int) -> list[int]:
    """The ``n`` probe seeds of ``--seeds n``: heareval's own 42, then 43, 44, ..."""
    return [HEAREVAL_SEED + i for i in range(n)]


def probe_task_dir(
    out_dir: Path,
    model: str,
    task: str,
    module: str = "hear_abt",
    model_options: Mapping | None = None,
    seed: int = HEAREVAL_SEED,
) -> Path:
    """Where the probe of ``seed`` writes its predictions and scores: heareval's own seed in the
    embeddings folder (as without seeds), any other in ``OUT/probes/<model>/<module><options>/<task>/
    seed-<seed>`` (links to the embeddings, its own predictions)."""
    if seed == HEAREVAL_SEED:
        return embed_task_dir(out_dir, model, task, module, model_options)
    folder = module + options_suffix(model_options)
    return Path(out_dir) / "probes" / model / folder / task / f"seed-{seed}"


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
    """Primary test score of one (model, task): the mean over probe ``seeds`` ((seed, score) pairs, when
    read by :func:`collect_scores`); ``std`` over folds for k-fold tasks read with one seed."""

    metric: str
    value: float
    std: float | None = None
    n_folds: int = 1
    seeds: tuple[tuple[int, float], ...] = ()

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    @property
    def interval(self) -> Interval | None:
        """Mean and 95 % Student-t interval over the probe seeds (None without per-seed scores)."""
        return mean_interval([v for _, v in self.seeds]) if self.seeds else None

    @property
    def half_width(self) -> float | None:
        iv = self.interval
        return None if iv is None else iv.half_width


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
    seeds: Sequence[int] = (HEAREVAL_SEED,),
) -> dict[str, dict[str, TaskScore]]:
    """``{model: {task: TaskScore}}`` for every pair with a ``test.predicted-scores.json`` for at least
    one of the probe ``seeds``; the score is the mean over the seeds found, each kept in ``seeds``.

    ``models``: NAMEs, or ``hear_eval.ModelSpec`` (whose own ``module`` takes no ``model_options``).
    The metric comes from the ``task_metadata.json`` heareval copies into the embeddings folder.
    """
    tasks = list(tasks)
    scores: dict[str, dict[str, TaskScore]] = {}
    for model in models:
        name, mod, opts = _model_folder(model, module, model_options)
        scores[name] = {}
        for task in tasks:
            found = []
            for seed in seeds:
                path = probe_task_dir(Path(out_dir), name, task, mod, opts, seed) / SCORES_FILE
                if path.is_file():
                    metric = primary_metric(embed_task_dir(Path(out_dir), name, task, mod, opts))
                    found.append((seed, read_primary_score(path, metric)))
            if found:
                scores[name][task] = _over_seeds(found)
    return scores


def _model_folder(model: str | ScoredModel, module: str, options: Mapping | None):
    """NAME, module and options of the folders of ``model`` (a module of its own takes no options)."""
    if isinstance(model, str):
        return model, module, options
    return model.name, model.module or module, None if model.module else options


def _over_seeds(found: list[tuple[int, TaskScore]]) -> TaskScore:
    first = found[0][1]
    values = tuple((seed, s.value) for seed, s in found)
    mean = sum(v for _, v in values) / len(values)
    return TaskScore(first.metric, mean, first.std if len(found) == 1 else None, first.n_folds, values)


@dataclass(frozen=True)
class ClipOutcomes:
    """Per-clip test outcomes of one (model, task) for a paired bootstrap: ``correct[i, j]`` = 1.0 if the
    probe of ``seeds[i]`` got clip j right; ``targets`` (class index per clip) pairs clips of two models."""

    seeds: tuple[int, ...]
    targets: tuple[int, ...]
    correct: tuple[tuple[float, ...], ...]


def read_clip_correct(probe_dir: Path) -> tuple[list[int], list[float]] | None:
    """(targets, correct) per test clip from heareval's ``<test split>.predictions.pkl`` (scene tasks:
    one-hot ``target`` and ``prediction`` tensors), every fold's test split in the order of the scores
    file; None when a file is missing or not of that shape."""
    import pickle

    scores = Path(probe_dir) / SCORES_FILE
    if not scores.is_file():
        return None
    folds = [
        k for k, v in json.loads(scores.read_text()).items() if k not in _NOT_FOLDS and isinstance(v, dict)
    ]
    targets: list[int] = []
    correct: list[float] = []
    for fold in folds:
        path = Path(probe_dir) / f"{fold}.predictions.pkl"
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)  # torch tensors: unpickling imports torch
            target, prediction = data["target"], data["prediction"]
            if target.ndim != 2 or target.shape != prediction.shape:
                return None
        except (FileNotFoundError, KeyError, TypeError, AttributeError, pickle.UnpicklingError):
            return None
        t, p = target.argmax(1).tolist(), prediction.argmax(1).tolist()
        targets += t
        correct += [float(a == b) for a, b in zip(t, p)]
    return targets, correct


def collect_clip_outcomes(
    out_dir: str | os.PathLike,
    models: Iterable[str | ScoredModel],
    tasks: Iterable[str],
    module: str = "hear_abt",
    model_options: Mapping | None = None,
    seeds: Sequence[int] = (HEAREVAL_SEED,),
) -> dict[str, dict[str, ClipOutcomes]]:
    """``{model: {task: ClipOutcomes}}`` for the tasks whose primary metric is a per-clip mean
    (``CLIP_MEAN_METRICS``) and whose seeds all left readable predictions of the same clips."""
    out: dict[str, dict[str, ClipOutcomes]] = {}
    for model in models:
        name, mod, opts = _model_folder(model, module, model_options)
        out[name] = {}
        for task in tasks:
            embed_dir = embed_task_dir(Path(out_dir), name, task, mod, opts)
            if (
                not (embed_dir / "task_metadata.json").is_file()
                or primary_metric(embed_dir) not in CLIP_MEAN_METRICS
            ):
                continue
            read = {
                s: read_clip_correct(probe_task_dir(Path(out_dir), name, task, mod, opts, s)) for s in seeds
            }
            read = {s: r for s, r in read.items() if r is not None}
            if read and len({tuple(t) for t, _ in read.values()}) == 1:
                targets = tuple(next(iter(read.values()))[0])
                out[name][task] = ClipOutcomes(
                    tuple(read), targets, tuple(tuple(c) for _, c in read.values())
                )
    return out


def pct_vs_random(score: float, random: float, lower_better: bool) -> float | None:
    """``(score - random) / |random| * 100``, negated for lower-is-better metrics: positive = better."""
    if random == 0 or is_nan(score) or is_nan(random):
        return None
    pct = (score - random) / abs(random) * 100.0
    return -pct if lower_better else pct
