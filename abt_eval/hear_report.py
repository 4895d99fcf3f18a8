"""The results table of a ``hear_eval`` run: scores (mean ± 95 % interval over probe seeds), "% vs
random", the averages, and paired tests against the random-init and log-mel baselines; written as
``results.md``, ``results.csv``, ``comparisons.csv`` and ``results.png`` (grouped bars, error bars).

What the columns and rows mean: ``docs/evaluation.md`` ("One-command evaluation").
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hear_abt.fileio import atomic_open, atomic_write_text

from .hear_scores import (
    LOGMEL_NAME,
    ClipOutcomes,
    EvalError,
    TaskScore,
    is_nan,
    lower_is_better,
    pct_vs_random,
)
from .mdtable import cell, markdown_table
from .stats import Comparison, mean_interval, paired_bootstrap, paired_t_test


@dataclass(frozen=True)
class ComparisonRow:
    """``model`` against ``reference`` on ``task`` (or the average); differences + = model better."""

    model: str
    reference: str
    task: str
    result: Comparison


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
    half_widths: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)
    average_half: dict[str, float | None] = dataclasses.field(default_factory=dict)
    n_seeds: int = 1  # the most probe seeds of any score
    comparisons: list[ComparisonRow] = dataclasses.field(default_factory=list)

    def pct_header(self, model: str) -> str:
        return f"{model}: % vs random (+ = better)"

    def header(self) -> list[str]:
        """Columns of the CSV (the markdown table shows the ± columns inside the score cells)."""
        halves = [f"{m}: ±95% ({self.n_seeds} seeds)" for m in self.models] if self.n_seeds > 1 else []
        return ["task", "metric", *self.models, *(self.pct_header(m) for m in self.baselines), *halves]

    def rows(self) -> list[list]:
        """Raw values, one list per row (tasks, then the average and the mean-% rows): scores, % vs
        random, then (with several probe seeds) the half-widths of the 95 % intervals."""

        def halves(values: dict[str, float | None]) -> list[float | None]:
            return [values.get(m) for m in self.models] if self.n_seeds > 1 else []

        out = []
        for task in self.tasks:
            out.append(
                [task, self.metrics[task]]
                + [self.scores[task].get(m) for m in self.models]
                + [self.pct[task].get(m) for m in self.baselines]
                + halves(self.half_widths.get(task, {}))
            )
        if self.tasks:
            out.append(
                [f"average ({len(self.average_tasks)} tasks)", "higher-is-better metrics"]
                + [self.average.get(m) for m in self.models]
                + [self.average_pct.get(m) for m in self.baselines]
                + halves(self.average_half)
            )
            if self.baselines:
                out.append(
                    ["mean of per-task %", "all tasks"]
                    + [None for _ in self.models]
                    + [self.mean_pct.get(m) for m in self.baselines]
                    + halves({})
                )
        return out

    def spread(self, row: list) -> list[float | None]:
        """The ± of each model's score cell in ``row``: the 95 % half-width over probe seeds or, in a
        table of one seed, the std over folds of a k-fold task."""
        task = row[0]
        if task in self.metrics:
            spreads = self.half_widths.get(task, {}) if self.n_seeds > 1 else self.stds[task]
            return [spreads.get(m) for m in self.models]
        if task.startswith("average"):
            return [self.average_half.get(m) for m in self.models]
        return [None] * len(self.models)

    def to_markdown(self) -> str:
        def arrow(metric: str) -> str:
            return f"{metric} {'↓' if lower_is_better(metric) else '↑'}"

        n_models, n_base = len(self.models), len(self.baselines)
        cells = []
        for row in self.rows():
            task, metric = row[0], row[1]
            if task in self.metrics:
                metric = arrow(metric)
            scores = [
                cell(v) + (f" ± {cell(s)}" if s is not None and v is not None else "")
                for v, s in zip(row[2 : 2 + n_models], self.spread(row))
            ]
            pcts = [cell(v, "+.1f", suffix="%") for v in row[2 + n_models : 2 + n_models + n_base]]
            cells.append([task, metric, *scores, *pcts])
        lines = markdown_table(self.header()[: 2 + n_models + n_base], cells)
        spread = (
            f"mean over {self.n_seeds} probe seeds (heareval's predictions, seeds 42, 43, ...) ± the "
            "half-width of its 95 % Student-t interval"
            if self.n_seeds > 1
            else "k-fold tasks: mean ± std over folds"
        )
        notes = [
            "",
            "Scores: primary test metric of each task (first in its task_metadata.json `evaluation`); "
            f"↑ higher is better, ↓ lower is better (error rate); {spread}.",
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
            f"({', '.join(self.average_tasks) or 'none'}); its % compares the averages"
            + ("; its ± is over the per-seed averages." if self.n_seeds > 1 else ".")
        )
        return "\n".join(lines + notes + self._comparisons_markdown()) + "\n"

    def _comparisons_markdown(self) -> list[str]:
        """The paired tests against the baselines, or what they need."""
        if not self.comparisons:
            if len(self.models) < 2:
                return []
            return [
                "",
                "Paired tests: none possible here (they need --seeds 2 or more, or a top1_acc task "
                "with heareval's per-clip predictions on disk).",
            ]
        header = ["model", "vs", "task", "test", "difference (+ = better)", "95% interval", "p", "verdict"]
        rows = [
            [
                c.model,
                c.reference,
                c.task,
                c.result.method,
                cell(c.result.mean_diff, "+.4f"),
                "-" if c.result.low is None else f"[{c.result.low:+.4f}, {c.result.high:+.4f}]",
                cell(c.result.p_value, ".3g"),
                c.result.verdict,
            ]
            for c in self.comparisons
        ]
        return [
            "",
            "Paired tests against the baselines (model − baseline, sign flipped for ↓ metrics): a paired "
            "t-test over probe seeds (the same seed for both) and, for top1_acc tasks, a paired bootstrap "
            "over test clips (2000 resamples of the same clips for both, averaged over the common seeds); "
            '"better"/"worse" when the 95 % interval of the difference excludes 0.',
            "",
            *markdown_table(header, rows),
        ]

    def comparisons_rows(self) -> list[list]:
        """``comparisons.csv``: one row per paired test."""
        return [
            [c.model, c.reference, c.task, c.result.method, c.result.n, c.result.mean_diff]
            + [c.result.low, c.result.high, c.result.p_value, c.result.verdict]
            for c in self.comparisons
        ]

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
    clips: Mapping[str, Mapping[str, ClipOutcomes]] | None = None,
) -> ResultsTable:
    """Build the table from ``collect_scores``' answer (and ``collect_clip_outcomes``' for the bootstrap).

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
    per_seed_average = {m: _average_by_seed(scores[m], average_tasks) for m in models}
    average_half = {
        m: mean_interval(list(v.values())).half_width if len(v) > 1 else None
        for m, v in per_seed_average.items()
    }
    table = ResultsTable(
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
        half_widths={
            t: {m: (scores[m][t].half_width if t in scores[m] else None) for m in models} for t in tasks
        },
        average_half=average_half,
        n_seeds=max([1] + [len(s.seeds) for per in scores.values() for s in per.values()]),
    )
    table.comparisons = _comparisons(scores, table, per_seed_average, clips or {})
    return table


def _average_by_seed(scores: Mapping[str, TaskScore], tasks: Sequence[str]) -> dict[int, float]:
    """``{probe seed: mean over tasks}`` for the seeds scored on every one of ``tasks``."""
    if not tasks:
        return {}
    per_task = [dict(scores[t].seeds) for t in tasks if t in scores]
    if len(per_task) != len(tasks):
        return {}
    common = set.intersection(*(set(p) for p in per_task))
    return {seed: sum(p[seed] for p in per_task) / len(per_task) for seed in sorted(common)}


def _references(table: ResultsTable) -> list[tuple[str, str]]:
    """(model, reference) pairs to test: each model against its random-init baseline and the log-mel
    reference (neither baseline against anything)."""
    bases = set(table.baselines.values()) | {LOGMEL_NAME}
    pairs = [(m, b) for m, b in table.baselines.items()]
    if LOGMEL_NAME in table.models:
        pairs += [(m, LOGMEL_NAME) for m in table.models if m not in bases]
    return pairs


def _comparisons(
    scores: Mapping[str, Mapping[str, TaskScore]],
    table: ResultsTable,
    per_seed_average: Mapping[str, Mapping[int, float]],
    clips: Mapping[str, Mapping[str, ClipOutcomes]],
) -> list[ComparisonRow]:
    """Paired t over the common probe seeds (2 or more) and, where per-clip outcomes of the same clips
    exist, a paired bootstrap over clips; per task, then on the per-seed averages."""
    rows: list[ComparisonRow] = []
    for model, ref in _references(table):
        for task in table.tasks:
            if task not in scores[model] or task not in scores[ref]:
                continue
            sign = -1.0 if lower_is_better(table.metrics[task]) else 1.0
            a, b = dict(scores[model][task].seeds), dict(scores[ref][task].seeds)
            common = sorted(set(a) & set(b))
            if len(common) > 1:
                test = paired_t_test([sign * a[s] for s in common], [sign * b[s] for s in common])
                rows.append(ComparisonRow(model, ref, task, test))
            boot = _clip_bootstrap(clips.get(model, {}).get(task), clips.get(ref, {}).get(task))
            if boot is not None:
                rows.append(ComparisonRow(model, ref, task, boot))
        a, b = per_seed_average[model], per_seed_average[ref]
        common = sorted(set(a) & set(b))
        if len(common) > 1:
            average = f"average ({len(table.average_tasks)} tasks)"
            rows.append(
                ComparisonRow(
                    model, ref, average, paired_t_test([a[s] for s in common], [b[s] for s in common])
                )
            )
    return rows


def _clip_bootstrap(model: ClipOutcomes | None, ref: ClipOutcomes | None) -> Comparison | None:
    """Paired bootstrap of per-clip correctness over the seeds both have (None: not the same clips)."""
    if model is None or ref is None or model.targets != ref.targets:
        return None
    common = [s for s in model.seeds if s in ref.seeds]
    if not common:
        return None

    def rows(outcomes: ClipOutcomes) -> list[tuple[float, ...]]:
        return [outcomes.correct[outcomes.seeds.index(s)] for s in common]

    return paired_bootstrap(rows(model), rows(ref))


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
    """Write ``results.md``, ``results.csv``, ``comparisons.csv`` (the paired tests) and ``results.png``
    (grouped bars, error bars: 95 % interval over seeds or std over folds) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    paths["comparisons"] = out_dir / "comparisons.csv"
    atomic_write_text(paths["md"], table.to_markdown())
    with atomic_open(paths["csv"], "w") as f:
        writer = csv.writer(f)
        writer.writerow(table.header()[:2] + ["higher_is_better"] + table.header()[2:])
        for row in table.rows():
            hib = "" if row[0] not in table.metrics else str(not lower_is_better(row[1])).lower()
            writer.writerow(row[:2] + [hib] + ["" if v is None or is_nan(v) else f"{v:.6g}" for v in row[2:]])
    with atomic_open(paths["comparisons"], "w") as f:
        writer = csv.writer(f)
        header = [
            "model",
            "reference",
            "task",
            "test",
            "n",
            "difference",
            "low",
            "high",
            "p_value",
            "verdict",
        ]
        writer.writerow(header)
        for row in table.comparisons_rows():
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v) for v in row])
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
        spreads = [table.spread([t])[i] for t in tasks]  # 95 % half-width over seeds, or std over folds
        errs = [s or 0.0 for s in spreads] if any(s is not None for s in spreads) else None
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
    ax.set_ylabel(
        "primary test score" + (f" (mean ± 95%, {table.n_seeds} seeds)" if table.n_seeds > 1 else "")
    )
    ax.set_title("HEAR evaluation (heareval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
