"""The results table of a ``hear_eval`` run: scores, "% vs random", the averages; written as
``results.md``, ``results.csv`` and ``results.png`` (grouped bars).

What the columns and rows mean: ``docs/evaluation.md`` ("One-command evaluation").
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hear_abt.fileio import atomic_open, atomic_write_text

from .hear_scores import LOGMEL_NAME, EvalError, TaskScore, is_nan, lower_is_better, pct_vs_random
from .mdtable import cell, markdown_table


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
        cells = []
        for row in self.rows():
            task, metric = row[0], row[1]
            if task in self.metrics:
                metric = arrow(metric)
                stds = [self.stds[task].get(m) for m in self.models]
            else:
                stds = [None] * n_models
            scores = [
                cell(v) + (f" ± {cell(s)}" if s is not None and v is not None else "")
                for v, s in zip(row[2 : 2 + n_models], stds)
            ]
            pcts = [cell(v, "+.1f", suffix="%") for v in row[2 + n_models :]]
            cells.append([task, metric, *scores, *pcts])
        lines = markdown_table(self.header(), cells)
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
    metrics = {task: _task_metric(scores, task) for task in tasks}
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
    average = {m: _mean([table_scores[t][m] for t in average_tasks]) for m in models}
    average_pct = {
        m: (
            pct_vs_random(average[m], average[b], False)
            if average[m] is not None and average[b] is not None
            else None
        )
        for m, b in baselines.items()
    }
    mean_pct = {m: _mean([pct[t][m] for t in tasks if pct[t][m] is not None]) for m in baselines}
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


def _task_metric(scores: Mapping[str, Mapping[str, TaskScore]], task: str) -> str:
    """The one metric ``task`` was scored with ("?" if no model has a score for it)."""
    found = {s.metric for per_task in scores.values() for t, s in per_task.items() if t == task}
    if len(found) > 1:
        raise EvalError(f"task {task!r} was scored with different metrics {sorted(found)}")
    return found.pop() if found else "?"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


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
            writer.writerow(row[:2] + [hib] + ["" if v is None or is_nan(v) else f"{v:.6g}" for v in row[2:]])
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
