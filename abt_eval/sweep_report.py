"""What ``abt_eval.sweep`` writes about a study: ``trials.csv``, ``importances.json`` (fANOVA over the
completed trials), ``best.json``, ``summary.md`` and Optuna's plots as PNG files (docs/search.md).
With ``--probe-seeds N`` each completed trial also gets its 95 % interval over the probe seeds and a
paired t-test against the best trial (same seeds), which says the trials the best is not better than."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hear_abt.fileio import atomic_write_text

from .mdtable import cell, markdown_table
from .stats import Comparison, mean_interval, paired_t_test


def per_run(values: list[float], runs: int) -> list[float]:
    """``objective_seeds`` of a trial pre-trained ``runs`` times (``--pretrain-seeds``) hold the probe
    seeds' scores run after run; each run's mean is one sample. The probe seeds of one run share its
    encoder, so testing all of them as independent pairs would overstate what the runs show."""
    if runs <= 1 or len(values) % runs:
        return values
    size = len(values) // runs
    return [sum(values[i : i + size]) / size for i in range(0, len(values), size)]


def vs_best(trials, runs: int = 1) -> dict[int, tuple[float | None, Comparison | None]]:
    """``{trial number: (95 % half-width, paired t-test against the best)}`` for the completed trials
    scored on several probe seeds (user attribute ``objective_seeds``); the best trial's test is None.
    Trials scored on another number of seeds than the best are not compared. With ``runs`` pre-training
    runs per trial, the interval and the test are over the runs' means (:func:`per_run`)."""
    from optuna.trial import TrialState

    seeded = {
        t.number: (t.value, per_run(list(t.user_attrs["objective_seeds"]), runs))
        for t in trials
        if t.state == TrialState.COMPLETE and len(t.user_attrs.get("objective_seeds") or []) > 1
    }
    if not seeded:
        return {}
    best = max(seeded, key=lambda n: seeded[n][0])
    out: dict[int, tuple[float | None, Comparison | None]] = {}
    for number, (_, values) in seeded.items():
        test = None
        if number != best and len(values) == len(seeded[best][1]):
            test = paired_t_test(values, seeded[best][1])
        out[number] = (mean_interval(values).half_width, test)
    return out


def verdict_text(result: tuple[float | None, Comparison | None] | None) -> str:
    if result is None:
        return ""
    _, test = result
    if test is None:
        return "best"
    return f"{test.verdict} (p={test.p_value:.2g})" if test.p_value is not None else test.verdict


def write_report(study, out: Path, seed: int = 0) -> dict[str, Path]:
    """trials.csv, importances.json (fANOVA over the completed trials), best.json, summary.md, plots."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    paths = {"csv": out / "trials.csv", "md": out / "summary.md"}
    runs = int((study.user_attrs.get("settings") or {}).get("pretrain_seeds") or 1)
    compared = vs_best(trials, runs)
    write_trials_csv(trials, names, paths["csv"], compared)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    importances, note = fanova_importances(study, len(complete), seed)
    paths["importances"] = out / "importances.json"
    atomic_write_text(
        paths["importances"], json.dumps({"fanova": importances, "note": note}, indent=2) + "\n"
    )
    best = None
    if complete:
        b = study.best_trial
        best = {
            "number": b.number,
            "value": b.value,
            "params": b.params,
            "seconds": b.user_attrs.get("seconds"),
        }
        if b.number in compared:
            best["probe_seed_scores"] = b.user_attrs["objective_seeds"]
            best["half_width_95"] = compared[b.number][0]
            best["indistinguishable_from_best"] = same_as_best(compared)
        paths["best"] = out / "best.json"
        atomic_write_text(paths["best"], json.dumps(best, indent=2) + "\n")
    plots = save_plots(study, out / "plots", importances_ok=bool(importances))
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    lines = [
        f"# Sweep {study.study_name}",
        "",
        "Trials: " + ", ".join(f"{k.lower()} {v}" for k, v in states.items() if v),
        "",
        f"Best: trial {best['number']}, score {best['value']:.4f}, {best['params']}"
        if best
        else "Best: none yet",
        "",
        *trials_table(trials, names, compared),
        "",
        *seed_summary(compared, runs),
        cost_line(trials),
        "",
        "fANOVA importances: " + (", ".join(f"{k} {v:.2f}" for k, v in importances.items()) or note),
        "",
        "Plots: " + ", ".join(p.name for p in plots),
    ]
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return paths


def cost_line(trials) -> str:
    """What the study cost in trial time, by state. A failed trial counts up to its last report (the
    ``report_seconds`` attribute; a kill loses the rest); waiting and running trials count nothing."""
    from optuna.trial import TrialState

    parts, total = [], 0.0
    for state, label in ((TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned")):
        group = [t for t in trials if t.state == state]
        hours = sum(float(t.user_attrs.get("seconds") or 0.0) for t in group) / 3600
        total += hours
        parts.append(f"{len(group)} {label} {hours:.2f} h")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    timed = [t.user_attrs["report_seconds"][-1] for t in failed if t.user_attrs.get("report_seconds")]
    if timed:
        total += sum(timed) / 3600
        parts.append(f"{len(timed)} failed {sum(timed) / 3600:.2f} h (to their last report)")
    if len(failed) > len(timed):
        parts.append(f"{len(failed) - len(timed)} failed with no time recorded")
    return f"Cost: {total:.2f} h of trial time ({', '.join(parts)})"


def same_as_best(compared: dict[int, tuple[float | None, Comparison | None]]) -> list[int]:
    """The trials a paired t-test cannot tell from the best (the best among them)."""
    return sorted(
        n for n, (_, test) in compared.items() if test is None or test.verdict.startswith("indistinguishable")
    )


def seed_summary(compared: dict[int, tuple[float | None, Comparison | None]], runs: int = 1) -> list[str]:
    if not compared:
        return []
    n_seeds = next((t.n for _, t in compared.values() if t is not None), None)
    unit = "pre-training seeds (each the mean over its probe seeds)" if runs > 1 else "probe seeds"
    seeds = f" over {n_seeds} {unit}" if n_seeds else ""
    return [
        f"Indistinguishable from the best at 95% (paired t{seeds}, the same seeds for every trial): "
        + ", ".join(f"trial {n}" for n in same_as_best(compared)),
        "",
    ]


def write_trials_csv(
    trials,
    names: list[str],
    path: Path,
    compared: dict[int, tuple[float | None, Comparison | None]] | None = None,
) -> None:
    """One row per trial; with probe seeds, the 95 % half-width and the verdict against the best."""
    compared = compared or {}
    extra = ["half_width_95", "vs_best"] if compared else []
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", *names, "reports", "seconds", "error", *extra])
        for t in trials:
            row = [t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}"]
            row += [t.params.get(n, "") for n in names]
            row += [
                len(t.intermediate_values),
                t.user_attrs.get("seconds", ""),
                t.user_attrs.get("error", ""),
            ]
            if compared:
                half = compared.get(t.number, (None, None))[0]
                row += ["" if half is None else f"{half:.6g}", verdict_text(compared.get(t.number))]
            w.writerow(row)


def fanova_importances(study, n_complete: int, seed: int) -> tuple[dict[str, float], str]:
    """fANOVA importance of each searched setting, or ``({}, why not)``."""
    import optuna

    if n_complete < 2:
        return {}, f"fANOVA importances need >= 2 completed (unpruned) trials; the study has {n_complete}"
    if all(rerun_origins(study.get_trials(deepcopy=False)).values()):
        return (
            {},
            "fANOVA importances not computed: every trial re-runs another study's (chosen, not sampled)",
        )
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except (RuntimeError, ValueError) as err:
        return {}, f"fANOVA importances not computed: {err}"


def ranked(trials) -> list:
    """Complete trials best first, then pruned ones by their last report, then the rest by number."""
    from optuna.trial import TrialState

    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}

    def key(t):
        return (order.get(t.state, 2), t.value is None, -(t.value or 0.0), t.number)

    return sorted(trials, key=key)


def trials_table(
    trials, names: list[str], compared: dict[int, tuple[float | None, Comparison | None]] | None = None
) -> list[str]:
    """The markdown table of ``summary.md``: one row per trial, best first (score ± 95 % and "vs best"
    with seeds), with every report's score in order, so that a pruned trial shows where it stopped."""
    compared = compared or {}
    header = ["trial", "state", "score", *names, "per task (last report)", "reports", "s", "error"]
    if compared:
        header.insert(3, "vs best")
    origins = rerun_origins(trials)
    if any(origins.values()):  # a confirmation study (--enqueue-top): which trial each one re-runs
        header.insert(1, "re-runs")
    rows = []
    for t in ranked(trials):
        last_tasks = (t.user_attrs.get("task_scores") or [{}])[-1]
        half = compared.get(t.number, (None, None))[0]
        score = cell(t.value, ".4f") + (f" ± {half:.4f}" if half is not None else "")
        verdict = [verdict_text(compared.get(t.number)) or "-"] if compared else []
        reports = [f"{t.intermediate_values[k]:.3f}" for k in sorted(t.intermediate_values)]
        origin = [origins[t.number] or "-"] if any(origins.values()) else []
        rows.append(
            [str(t.number), *origin, t.state.name, score, *verdict]
            + [cell(t.params.get(n), ".3g", missing="") for n in names]
            + [
                ", ".join(f"{k} {v:.3f}" for k, v in last_tasks.items()) or "-",
                " / ".join(reports) or "-",
                str(t.user_attrs.get("seconds", "")),
                str(t.user_attrs.get("error", ""))[:80],
            ]
        )
    return markdown_table(header, rows)


def rerun_origins(trials) -> dict[int, str]:
    """``{trial number: "STUDY trial N (value)"}`` for the trials queued by ``--enqueue-top`` and the
    retries of killed ones (followed back through ``retry_of``); "" for every other trial."""
    by_number = {t.number: t for t in trials}

    def origin(t) -> str:
        seen = set()
        while (
            "top_of" not in t.user_attrs
            and t.user_attrs.get("retry_of") in by_number
            and t.number not in seen
        ):
            seen.add(t.number)
            t = by_number[t.user_attrs["retry_of"]]
        top = t.user_attrs.get("top_of")
        return f"{top['study']} trial {top['trial']} ({top['value']:.4f})" if top else ""

    return {t.number: origin(t) for t in trials}


def save_plots(study, folder: Path, importances_ok: bool) -> list[Path]:
    """Optuna's matplotlib plots as PNG files (those the study has enough trials for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import optuna
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Callable[[], Any]] = {
        "history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study),
        "slice": lambda: vis.plot_slice(study),
    }
    if importances_ok:
        plots["importances"] = lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
        )
    written = []
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = np.atleast_1d(ax).ravel()[0].figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 6.0), max(fig.get_size_inches()[1], 4.0))
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(fig)
            written.append(path)
        except Exception as err:  # a plot that needs more trials than there are: skip it, say so
            print(f"plot {name} skipped: {type(err).__name__}: {err}", file=sys.stderr)
            plt.close("all")
    return written


def main(argv: list[str] | None = None) -> int:
    """The report of an archived study (``study.db`` or an exported journal), e.g. the committed
    ``docs/studies/*.jsonl`` on a machine where the sweep never ran."""
    import argparse

    import optuna

    from .sweep_archive import ArchiveError, load_study_file

    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.sweep_report",
        description="Write a study's summary.md, trials.csv, importances.json, best.json and plots.",
    )
    ap.add_argument("study", type=Path, help="a sweep's study.db or a journal from abt_eval.sweep_archive")
    ap.add_argument("out", type=Path, help="folder for the report (created; its files are replaced)")
    ap.add_argument("--study-name", default="abt-sweep")
    ap.add_argument("--seed", type=int, default=0, help="fANOVA's seed (default: %(default)s)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = load_study_file(args.study, args.study_name)
    except ArchiveError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(study, args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
