"""Evaluate ABT checkpoints with the real HEAR 2021 tools (heareval) and tabulate the results.

    python -m abt_eval.hear_eval --tasks-dir TASKS --out OUT_DIR --model NAME=SOURCE [--model NAME=SOURCE ...]
        [--module hear_abt] [--random-baseline] [--logmel-reference] [--grid default|fast|faster] [--tasks a,b]
        [--model-options JSON] [--seed 0] [--jobs N]

What it runs, the output layout, the scores and "% vs random", resuming: ``docs/evaluation.md``
("One-command evaluation").
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hear_abt.fileio import atomic_open, atomic_write_text
from hear_abt.weights import WEIGHTS_ENV, parse_hub_id

SCORES_FILE = "test.predicted-scores.json"
DONE_EMBEDDINGS = ".done.embeddings"
PREDICTION_DONE = "prediction-done.json"
GRIDS = ("default", "fast", "faster")
RANDOM_SUFFIX = "-random"
COMPAT_MODULE = "abt_eval.heareval_compat"  # run as `python -m`: works from an installed wheel

# heareval 2021.1.3's score functions declared with maximize=False (heareval/score.py). Anything else
# that looks like an error rate or a loss is treated the same way.
LOWER_IS_BETTER = frozenset({"segment_1s_er"})
_LOWER_PATTERN = re.compile(r"(^|_)(er|wer|error|loss)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
TAIL_LINES = 40


class EvalError(RuntimeError):
    """Bad arguments or an inconsistent output folder."""


# --------------------------------------------------------------------------------------------------
# Models, paths
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate. ``baseline_of``: the NAME this is the random-init baseline of."""

    name: str
    source: str
    baseline_of: str | None = None
    module: str | None = None  # a HEAR module of its own (the log-mel reference); None: --module


# The no-learning reference (--logmel-reference): a HEAR module without weights.
LOGMEL_NAME = "logmel"
LOGMEL_MODULE = "abt_eval.logmel"
LOGMEL_SOURCE = "(no weights: abt_eval.logmel)"


def parse_model_arg(text: str) -> ModelSpec:
    """``NAME=SOURCE`` -> ModelSpec (NAME: letters, digits, ``_.+-``; used as a folder name)."""
    name, sep, source = text.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not name or not source:
        raise EvalError(f"--model wants NAME=SOURCE (e.g. abt=runs/export), got {text!r}")
    if not _NAME.match(name):
        raise EvalError(f"model NAME {name!r} must be letters, digits and _.+- (it names folders)")
    return ModelSpec(name, source)


def _import_root() -> Path:
    """The folder this package was imported from (a checkout, or site-packages for an installed wheel)."""
    return Path(__file__).resolve().parent.parent


def is_local_source(source: str) -> bool:
    return Path(source).expanduser().exists()


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


def log_path(out_dir: Path, model: str, task: str) -> Path:
    return Path(out_dir) / "logs" / f"{model}__{task}.log"


def list_tasks(tasks_dir: Path) -> list[str]:
    """Task folders (those with a task_metadata.json) in ``tasks_dir``, sorted."""
    return sorted(p.name for p in Path(tasks_dir).iterdir() if (p / "task_metadata.json").is_file())


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
        std = float(std) if std is not None and not _isnan(std) else None
        return TaskScore(metric, float(agg[f"{key}_mean"]), std, max(len(folds), 2))
    if len(folds) != 1:
        raise EvalError(f"{path}: expected one test split or aggregated_scores, found {sorted(folds)}")
    (fold,) = folds.values()
    if key not in fold:
        raise EvalError(f"{path}: no {key} in its test results (has {sorted(fold)})")
    return TaskScore(metric, float(fold[key]))


def _isnan(x) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def collect_scores(
    out_dir: str | os.PathLike,
    models: Iterable[str | ModelSpec],
    tasks: Iterable[str],
    module: str = "hear_abt",
    model_options: Mapping | None = None,
) -> dict[str, dict[str, TaskScore]]:
    """``{model: {task: TaskScore}}`` for every pair whose ``test.predicted-scores.json`` exists.

    The metric comes from the ``task_metadata.json`` heareval copies into the embeddings folder.
    """
    tasks = list(tasks)
    scores: dict[str, dict[str, TaskScore]] = {}
    for model in models:
        name = model.name if isinstance(model, ModelSpec) else model
        own = model.module if isinstance(model, ModelSpec) else None
        scores[name] = {}
        for task in tasks:
            folder = embed_task_dir(Path(out_dir), name, task, own or module, None if own else model_options)
            if (folder / SCORES_FILE).is_file():
                scores[name][task] = read_primary_score(folder / SCORES_FILE, primary_metric(folder))
    return scores


def pct_vs_random(score: float, random: float, lower_better: bool) -> float | None:
    """``(score - random) / |random| * 100``, negated for lower-is-better metrics: positive = better."""
    if random == 0 or _isnan(score) or _isnan(random):
        return None
    pct = (score - random) / abs(random) * 100.0
    return -pct if lower_better else pct


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


@dataclass
class ResultsTable:
    """Rows of the results table; ``None`` = no score. See :func:`results_table`."""

    models: list[str]
    baselines: dict[str, str]  # model -> its random-init baseline (only models that have one)
    tasks: list[str]
    metrics: dict[str, str]  # task -> primary metric
    scores: dict[str, dict[str, float | None]]  # task -> model -> score
    stds: dict[str, dict[str, float | None]]
    pct: dict[str, dict[str, float | None]]  # task -> model -> % vs random
    average_tasks: list[str]  # tasks in the average (higher-is-better, scored for every model)
    average: dict[str, float | None]
    average_pct: dict[str, float | None]  # % vs random of the averages
    mean_pct: dict[str, float | None]  # mean of the per-task % vs random (all tasks)

    def pct_header(self, model: str) -> str:
        return f"{model}: % vs random (+ = better)"

    def header(self) -> list[str]:
        return ["task", "metric", *self.models, *(self.pct_header(m) for m in self.baselines)]

    def rows(self) -> list[list]:
        """Raw values, one list per row (tasks, then the average and the mean-% rows)."""
        out = []
        for task in self.tasks:
            out.append(
                [task, self.metrics[task]]
                + [self.scores[task].get(m) for m in self.models]
                + [self.pct[task].get(m) for m in self.baselines]
            )
        if self.tasks:
            out.append(
                [f"average ({len(self.average_tasks)} tasks)", "higher-is-better metrics"]
                + [self.average.get(m) for m in self.models]
                + [self.average_pct.get(m) for m in self.baselines]
            )
            if self.baselines:
                out.append(
                    ["mean of per-task %", "all tasks"]
                    + [None for _ in self.models]
                    + [self.mean_pct.get(m) for m in self.baselines]
                )
        return out

    def to_markdown(self) -> str:
        def arrow(metric: str) -> str:
            return f"{metric} {'↓' if lower_is_better(metric) else '↑'}"

        n_models = len(self.models)
        lines = ["| " + " | ".join(self.header()) + " |", "|" + "---|" * len(self.header())]
        for row in self.rows():
            task, metric = row[0], row[1]
            if task in self.metrics:
                metric = arrow(metric)
                stds = [self.stds[task].get(m) for m in self.models]
            else:
                stds = [None] * n_models
            cells = [
                _fmt(v) + (f" ± {_fmt(s)}" if s is not None and v is not None else "")
                for v, s in zip(row[2 : 2 + n_models], stds)
            ]
            cells += [_fmt_pct(v) for v in row[2 + n_models :]]
            lines.append("| " + " | ".join([task, metric, *cells]) + " |")
        notes = [
            "",
            "Scores: primary test metric of each task (first in its task_metadata.json `evaluation`); "
            "↑ higher is better, ↓ lower is better (error rate); k-fold tasks: mean ± std over folds.",
        ]
        if self.baselines:
            notes.append(
                "% vs random = (score - random) / |random| × 100 against the random-init model of the same "
                "architecture and front-end/normalisation config (BatchNorm running stats at their init: "
                "mean 0, var 1); the sign is flipped for ↓ metrics, so positive always means better than "
                "random."
            )
        if LOGMEL_NAME in self.models:
            notes.append(self._logmel_note())
        notes.append(
            f"average: mean over the {len(self.average_tasks)} tasks with a ↑ metric scored for every model "
            f"({', '.join(self.average_tasks) or 'none'}); its % compares the averages."
        )
        return "\n".join(lines + notes) + "\n"

    def _logmel_note(self) -> str:
        """Per model: on how many tasks it beats the log-mel reference (a trivial, no-learning one)."""
        parts = []
        for m in self.models:
            if m == LOGMEL_NAME:
                continue
            pairs = [
                (t, self.scores[t][m], self.scores[t][LOGMEL_NAME])
                for t in self.tasks
                if self.scores[t].get(m) is not None and self.scores[t].get(LOGMEL_NAME) is not None
            ]
            wins = [t for t, a, b in pairs if (a < b if lower_is_better(self.metrics[t]) else a > b)]
            parts.append(f"{m} {len(wins)}/{len(pairs)}" + (f" ({', '.join(wins)})" if wins else ""))
        return (
            "logmel: the no-learning reference (abt_eval.logmel, log-mel mean + std over time); tasks on which "
            "each model beats it: " + ("; ".join(parts) or "none scored") + "."
        )


def _fmt(v: float | None) -> str:
    return "-" if v is None or _isnan(v) else f"{v:.4f}"


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None or _isnan(v) else f"{v:+.1f}%"


def results_table(
    scores: Mapping[str, Mapping[str, TaskScore]],
    baselines: Mapping[str, str] | None = None,
    tasks: Sequence[str] | None = None,
) -> ResultsTable:
    """Build the table from ``collect_scores``' answer.

    ``baselines``: ``{model: baseline_model}`` (e.g. ``{"abt": "abt-random"}``). Models keep the order of
    ``scores``; ``tasks`` default: every task scored for some model, sorted.
    """
    baselines = {m: b for m, b in (baselines or {}).items() if m in scores and b in scores}
    models = list(scores)
    if tasks is None:
        tasks = sorted({t for per_task in scores.values() for t in per_task})
    tasks = list(tasks)
    metrics: dict[str, str] = {}
    for task in tasks:
        found = {s.metric for per_task in scores.values() for t, s in per_task.items() if t == task}
        if len(found) > 1:
            raise EvalError(f"task {task!r} was scored with different metrics {sorted(found)}")
        metrics[task] = found.pop() if found else "?"

    table_scores = {t: {m: _value(scores[m].get(t)) for m in models} for t in tasks}
    stds = {t: {m: (scores[m][t].std if t in scores[m] else None) for m in models} for t in tasks}
    pct: dict[str, dict[str, float | None]] = {}
    for t in tasks:
        pct[t] = {}
        for m, b in baselines.items():
            s, r = table_scores[t][m], table_scores[t][b]
            pct[t][m] = None if s is None or r is None else pct_vs_random(s, r, lower_is_better(metrics[t]))

    average_tasks = [
        t
        for t in tasks
        if not lower_is_better(metrics[t]) and all(table_scores[t][m] is not None for m in models)
    ]
    average = {
        m: (sum(table_scores[t][m] for t in average_tasks) / len(average_tasks) if average_tasks else None)
        for m in models
    }
    average_pct = {
        m: (
            pct_vs_random(average[m], average[b], False)
            if average[m] is not None and average[b] is not None
            else None
        )
        for m, b in baselines.items()
    }
    mean_pct = {}
    for m in baselines:
        values = [pct[t][m] for t in tasks if pct[t][m] is not None]
        mean_pct[m] = sum(values) / len(values) if values else None
    return ResultsTable(
        models,
        dict(baselines),
        tasks,
        metrics,
        table_scores,
        stds,
        pct,
        average_tasks,
        average,
        average_pct,
        mean_pct,
    )


def _value(score: TaskScore | None) -> float | None:
    return None if score is None else score.value


def write_outputs(out_dir: str | os.PathLike, table: ResultsTable) -> dict[str, Path]:
    """Write ``results.md``, ``results.csv`` and ``results.png`` (grouped bars) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    atomic_write_text(paths["md"], table.to_markdown())
    with atomic_open(paths["csv"], "w") as f:
        writer = csv.writer(f)
        writer.writerow(table.header()[:2] + ["higher_is_better"] + table.header()[2:])
        for row in table.rows():
            hib = "" if row[0] not in table.metrics else str(not lower_is_better(row[1])).lower()
            writer.writerow(row[:2] + [hib] + ["" if v is None or _isnan(v) else f"{v:.6g}" for v in row[2:]])
    _plot(table, paths["png"])
    return paths


def _plot(table: ResultsTable, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks, models = table.tasks, table.models
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(tasks) * (0.5 + 0.35 * len(models))), 4.0))
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        values = [table.scores[t][m] for t in tasks]
        heights = [0.0 if v is None else v for v in values]
        stds = [table.stds[t][m] for t in tasks]
        errs = [s or 0.0 for s in stds] if any(s is not None for s in stds) else None
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, heights, width, label=m, yerr=errs, capsize=2)
        for bar, v in zip(bars, values):
            label = "n/a" if v is None else f"{v:.2f}"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{t}\n{table.metrics[t]} {'↓' if lower_is_better(table.metrics[t]) else '↑'}" for t in tasks]
    )
    ax.set_ylabel("primary test score")
    ax.set_title("HEAR evaluation (heareval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Random-init baseline
# --------------------------------------------------------------------------------------------------


def make_random_baseline(source: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a freshly initialised encoder with ``source``'s ModelConfig to ``folder`` (save_pretrained).

    Same architecture, front-end and normalisation statistics; weights from ``torch.manual_seed(seed)``
    (the global random state is left untouched). BatchNorm running stats stay at their init (mean 0,
    var 1): no data has been seen. The provenance records that it is a random init and of what. A folder
    already holding exactly this config is reused.
    """
    import torch

    from hear_abt.embedder import ABTEmbedder
    from hear_abt.weights import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, save_pretrained

    config = load_checkpoint(source).config
    provenance = dict(config.provenance)
    provenance["random_init"] = {"seed": seed, "architecture_of": str(source)}
    config = dataclasses.replace(config, provenance=provenance)
    folder = Path(folder)
    existing = folder / CONFIG_NAME
    if existing.is_file() and (folder / WEIGHTS_NAME).is_file():
        data = json.loads(existing.read_text())
        data.pop("weights_sha256", None)
        if data == config.to_dict():
            return folder.resolve()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ABTEmbedder(config)
    return save_pretrained(folder, config, model.encoder.state_dict())


# --------------------------------------------------------------------------------------------------
# Running heareval
# --------------------------------------------------------------------------------------------------


def run_logged(cmd: Sequence[str], log_file: Path, env: Mapping[str, str], cwd: Path) -> int:
    """Run ``cmd`` with stdout+stderr appended to ``log_file``; return its exit status."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd)
    with open(log_file, "a") as log:
        log.write(f"[exit status {proc.returncode}]\n")
    return proc.returncode


def tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class PairResult:
    model: str
    task: str
    status: str  # "cached", "ok" or "failed"
    seconds: float = 0.0
    error: str = ""


@dataclass
class EvalSettings:
    tasks_dir: Path
    out_dir: Path
    module: str = "hear_abt"
    grid: str = "default"
    model_options: dict = dataclasses.field(default_factory=dict)
    python: str = sys.executable
    jobs: int = 1  # (model, task) pairs evaluated at once


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _subprocess_env(source: str, jobs: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    if jobs > 1:  # share the cores between the pairs run at once, unless the user already chose
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(_threads_per_job(jobs)))
    # The runners must import this package and hear_abt as we did: from a checkout that is not installed,
    # that needs its folder on the path (for an installed package the interpreter finds it already).
    root = str(_import_root())
    if root not in _site_dirs():
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if is_local_source(source):
        env.pop(WEIGHTS_ENV, None)
    else:  # a Hub id: heareval's --model must exist on disk, so load_model() reads it from the env
        env[WEIGHTS_ENV] = source
    return env


def _site_dirs() -> set[str]:
    import sysconfig

    return {str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("purelib", "platlib")}


def compat_command(s: EvalSettings, mode: str) -> list[str]:
    """``python -m abt_eval.heareval_compat MODE``: heareval's runner ``MODE`` with the fixes it needs."""
    return [s.python, "-m", COMPAT_MODULE, mode]


def embeddings_command(spec: ModelSpec, task: str, s: EvalSettings) -> list[str]:
    cmd = compat_command(s, "embeddings") + [spec.module or s.module]
    if is_local_source(spec.source) and not spec.module:
        cmd += ["--model", str(Path(spec.source).expanduser().resolve())]
    cmd += [
        "--tasks-dir",
        str(Path(s.tasks_dir).resolve()),
        "--task",
        task,
        "--embeddings-dir",
        str((Path(s.out_dir) / "embeddings" / spec.name).resolve()),
    ]
    if s.model_options and not spec.module:
        cmd += ["--model-options", json.dumps(s.model_options)]
    return cmd


def predictions_command(task_dir: Path, s: EvalSettings) -> list[str]:
    return compat_command(s, "predictions") + [str(task_dir.resolve()), "--grid", s.grid]


def evaluate_pair(spec: ModelSpec, task: str, s: EvalSettings) -> PairResult:
    """Embeddings then predictions for one (model, task), skipping what is already done."""
    start = time.time()
    folder = embed_task_dir(
        s.out_dir, spec.name, task, spec.module or s.module, None if spec.module else s.model_options
    )
    if (folder / SCORES_FILE).is_file():
        return PairResult(spec.name, task, "cached")
    log = log_path(s.out_dir, spec.name, task)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"# abt_eval.hear_eval: {spec.name} ({spec.source}) on {task}\n")
    env = _subprocess_env(spec.source, s.jobs)
    if spec.module:  # a module of its own takes no weights
        env.pop(WEIGHTS_ENV, None)
    cwd = Path(s.out_dir).resolve()

    def failed(msg: str) -> PairResult:
        return PairResult(spec.name, task, "failed", time.time() - start, msg)

    if not (folder / DONE_EMBEDDINGS).is_file():
        rc = run_logged(embeddings_command(spec, task, s), log, env, cwd)
        if rc != 0 or not (folder / DONE_EMBEDDINGS).is_file():
            return failed(f"embeddings runner failed (exit status {rc})")
    # heareval skips a task with prediction-done.json: stale without the scores file.
    (folder / PREDICTION_DONE).unlink(missing_ok=True)
    rc = run_logged(predictions_command(folder, s), log, env, cwd)
    if rc != 0 or not (folder / SCORES_FILE).is_file():
        return failed(f"predictions runner failed (exit status {rc})")
    return PairResult(spec.name, task, "ok", time.time() - start)


def run_pairs(
    pairs: Sequence[tuple[ModelSpec, str]], s: EvalSettings, random_failed: Mapping[str, str]
) -> list[PairResult]:
    """Evaluate the pairs, ``s.jobs`` at a time, printing each as it ends; results in ``pairs``' order."""
    total = len(pairs)
    t0 = time.time()
    done = 0

    def one(spec: ModelSpec, task: str) -> PairResult:
        if spec.name in random_failed:
            return PairResult(spec.name, task, "failed", error=random_failed[spec.name])
        try:
            return evaluate_pair(spec, task, s)
        except Exception as err:  # e.g. unreadable scores; one pair must not stop the rest
            return PairResult(spec.name, task, "failed", error=f"{type(err).__name__}: {err}")

    def report(res: PairResult) -> None:
        nonlocal done
        done += 1
        line = f"[{done}/{total}] {res.model} / {res.task}: {res.status}"
        if res.status != "cached":
            line += f" in {res.seconds:.1f} s (total {time.time() - t0:.0f} s)"
        if res.status == "failed":
            line += f": {res.error}; log: {log_path(s.out_dir, res.model, res.task)}"
        print(line, flush=True)
        text = tail(log_path(s.out_dir, res.model, res.task)) if res.status == "failed" else ""
        if text:
            print(
                f"---- last lines of {log_path(s.out_dir, res.model, res.task)} ----\n{text}\n----",
                flush=True,
            )

    if s.jobs <= 1:
        in_order: list[PairResult] = []
        for spec, task in pairs:
            print(f"[{done + 1}/{total}] {spec.name} / {task} ...", flush=True)
            in_order.append(one(spec, task))
            report(in_order[-1])
        return in_order
    from concurrent.futures import ThreadPoolExecutor, as_completed

    # Threads suffice: each pair's work happens in heareval's own processes.
    with ThreadPoolExecutor(max_workers=s.jobs) as pool:
        futures = {pool.submit(one, spec, task): i for i, (spec, task) in enumerate(pairs)}
        print(f"{total} (model, task) pairs, {s.jobs} at a time ...", flush=True)
        slots: list[PairResult | None] = [None] * total
        for fut in as_completed(futures):
            slots[futures[fut]] = res = fut.result()
            report(res)
    return [r for r in slots if r is not None]


def check_manifest(out_dir: Path, grid: str, specs: Sequence[ModelSpec]) -> None:
    """Refuse to mix cached results of another grid, or another source under the same NAME."""
    path = Path(out_dir) / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {"grid": grid, "models": {}}
    if manifest.get("grid") != grid:
        raise EvalError(
            f"{out_dir} holds results of --grid {manifest.get('grid')}: use another --out for --grid {grid}"
        )
    for spec in specs:
        known = manifest["models"].get(spec.name)
        if known is not None and known != spec.source:
            raise EvalError(
                f"{out_dir} holds results for {spec.name!r} from {known!r}, not {spec.source!r}: "
                "use another NAME or --out (or delete that model's folders)"
            )
        manifest["models"][spec.name] = spec.source
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.hear_eval",
        description=__doc__.split("\n\n")[0],
        epilog="Details: docs/evaluation.md (One-command evaluation).",
    )
    ap.add_argument(
        "--tasks-dir", required=True, type=Path, help="HEAR tasks (<task>/task_metadata.json, ...)"
    )
    ap.add_argument("--out", required=True, type=Path, help="output folder (embeddings, logs, results.*)")
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="repeatable; at least one unless --logmel-reference is given",
    )
    ap.add_argument("--module", default="hear_abt", help="HEAR module for heareval (default: hear_abt)")
    ap.add_argument("--random-baseline", action="store_true", help="also evaluate <NAME>-random per model")
    ap.add_argument(
        "--logmel-reference",
        action="store_true",
        help="also evaluate the no-learning log-mel reference (abt_eval.logmel) as model `logmel`",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the random-init baselines")
    ap.add_argument("--grid", default="default", choices=GRIDS, help="heareval probe grid")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of the tasks in --tasks-dir")
    ap.add_argument("--model-options", default="{}", help="JSON dict of load_model kwargs (heareval option)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(model, task) pairs evaluated at once, each in its own heareval processes with a share "
        "of the cores (OMP_NUM_THREADS, unless set); worth it where heareval leaves cores idle, e.g. "
        "event tasks' single-threaded post-processing",
    )
    args = ap.parse_args(argv)

    try:
        specs, baselines, tasks, settings = _prepare(args)
        check_manifest(args.out, args.grid, specs)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    random_failed: dict[str, str] = {}
    for spec in specs:  # before any pair runs: a baseline's pairs need its weights
        if spec.baseline_of is not None:
            base = next(x for x in specs if x.name == spec.baseline_of)
            try:
                make_random_baseline(base.source, spec.source, seed=args.seed)
            except Exception as err:  # any load failure: report and go on with the others
                random_failed[spec.name] = f"cannot build the random-init baseline: {err}"
    pairs = [(spec, task) for spec in specs for task in tasks]
    results = run_pairs(pairs, settings, random_failed)
    try:
        scores = collect_scores(args.out, specs, tasks, settings.module, settings.model_options)
        table = results_table(scores, baselines, tasks)
        paths = write_outputs(args.out, table)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print()
    print(table.to_markdown())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} (model, task) pairs failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.model} / {r.task}: {r.error}", file=sys.stderr)
        return 1
    return 0


def _prepare(args) -> tuple[list[ModelSpec], dict[str, str], list[str], EvalSettings]:
    if not args.tasks_dir.is_dir():
        raise EvalError(f"--tasks-dir {args.tasks_dir} is not a folder")
    available = list_tasks(args.tasks_dir)
    if args.tasks:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        missing = [t for t in tasks if t not in available]
        if missing:
            raise EvalError(
                f"task(s) {missing} not in {args.tasks_dir} (has: {', '.join(available) or 'none'})"
            )
    else:
        tasks = available
    if not tasks:
        raise EvalError(f"{args.tasks_dir} holds no HEAR task (no */task_metadata.json)")
    try:
        options = json.loads(args.model_options)
    except json.JSONDecodeError as err:
        raise EvalError(f"--model-options is not JSON: {err}") from err
    if not isinstance(options, dict):
        raise EvalError("--model-options must be a JSON object")

    if not args.model and not args.logmel_reference:
        raise EvalError("nothing to evaluate: give --model NAME=SOURCE (repeatable) or --logmel-reference")
    specs: list[ModelSpec] = []
    baselines: dict[str, str] = {}
    for text in args.model:
        spec = parse_model_arg(text)
        if is_local_source(spec.source):  # absolute: the runners run elsewhere; the manifest compares it
            spec = ModelSpec(spec.name, str(Path(spec.source).expanduser().resolve()))
        elif parse_hub_id(spec.source) is None:
            raise EvalError(
                f"model {spec.name}: {spec.source!r} is neither an existing path nor a Hub id org/name"
            )
        specs.append(spec)
        if args.random_baseline:
            name = spec.name + RANDOM_SUFFIX
            folder = (args.out / "random-init" / spec.name).resolve()
            specs.append(ModelSpec(name, str(folder), baseline_of=spec.name))
            baselines[spec.name] = name
    if args.logmel_reference:
        specs.append(ModelSpec(LOGMEL_NAME, LOGMEL_SOURCE, module=LOGMEL_MODULE))
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EvalError(f"model names must be unique (a baseline is NAME{RANDOM_SUFFIX}): {dupes}")
    if args.jobs < 1:
        raise EvalError(f"--jobs must be >= 1, got {args.jobs}")
    settings = EvalSettings(args.tasks_dir, args.out, args.module, args.grid, options, jobs=args.jobs)
    return specs, baselines, tasks, settings


if __name__ == "__main__":
    sys.exit(main())
