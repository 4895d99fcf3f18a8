"""Ablations of ABT pre-training (the paper's Appendix C): train named variants, everything else fixed.

    python -m abt_eval.ablate --data DATA --task TASK_DIR --out OUT [--preset P] [key=value ...]
        [--set augment|batch|lambda|projector-depth|projector-out|crop|masking] [--only a,b]
        [--variant "NAME: key=value key=value"] [--grid key=v1,v2,...]
        [--hear-tasks TASKS_DIR [--hear-grid faster]] [--probe-seeds N]

Every variant is a ``python -m training.pretrain`` run in ``OUT/variants/<NAME>/run`` (the preset, the
``key=value`` overrides, then the variant's own settings), scored by linear evaluation
(``training.linear_eval``) on TASK_DIR and, with ``--hear-tasks``, by the one-command heareval run
(``abt_eval.hear_eval``) on every task there. Output: ``OUT/ablation.md``, ``ablation.csv`` and
``ablation.png``. With ``--probe-seeds N`` every score is the mean over N probe seeds (the linear
classifier's; heareval's with ``--hear-tasks``), shown ± its 95 % interval, and the table says which
variants a paired t-test cannot tell from the best. Resumable per variant: a scored variant
(``result.json`` with the same settings) is not retrained, a killed one continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hear_abt.fileio import atomic_open, atomic_write_text
from training import pretrain
from training.config import PRESETS, build_config, parse_value
from training.linear_eval import HearTask, LinearEvalSettings, task_names

from .mdtable import cell, markdown_table
from .search_args import probe_seed_list, seeded_linear_eval, shared_options
from .stats import mean_interval, paired_t_test

# Fig. A-3: combinations of the audio augmentation blocks (Mixup, RRC, RLF; Gaussian noise; PPN).
AUGMENT = [
    ("rlf", ["augment.mixup=false", "augment.rrc=false"]),
    ("mixup+rlf", ["augment.rrc=false"]),
    ("noise+rlf", ["augment.mixup=false", "augment.rrc=false", "augment.noise=true"]),
    ("rrc+rlf", ["augment.mixup=false"]),
    ("mixup+rrc+rlf", []),
    ("mixup+rrc+rlf+noise", ["augment.noise=true"]),
    ("mixup+rrc+rlf+ppn", ["augment.ppn=true"]),
]
# Fig. A-4 / A-5 / C.3: one setting at several values (``--grid KEY=...`` replaces the values).
GRIDS = {
    "batch": ("batch_size", [64, 128, 256, 512]),
    "lambda": ("lambd", [0.0005, 0.002, 0.005, 0.02, 0.05]),
    "projector-depth": ("projector_depth", [1, 2, 3]),
    "projector-out": ("projector_out", [256, 1048, 4096]),
    "crop": ("crop_frames", [32, 96, 160, 320]),
    "masking": ("augment.mask_ratio", [0.0, 0.25, 0.5]),  # ViT_C only (encoder=vitc_b)
}
SETS = ["augment", *GRIDS]


class AblationError(ValueError):
    pass


@dataclass
class Variant:
    name: str
    overrides: list[str]


def grid_variants(key: str, values: list[Any]) -> list[Variant]:
    short = key.split(".")[-1]
    return [
        Variant(f"{short}={json.dumps(v) if not isinstance(v, str) else v}", [f"{key}={json.dumps(v)}"])
        for v in values
    ]


def parse_variant(text: str) -> Variant:
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise AblationError(f"--variant {text!r}: want 'NAME: key=value key=value'")
    return Variant(name.strip(), rest.split())


def parse_grid(text: str) -> list[Variant]:
    key, sep, values = text.partition("=")
    if not sep or not values:
        raise AblationError(f"--grid {text!r}: want KEY=V1,V2,...")
    return grid_variants(key.strip(), [parse_value(v) for v in values.split(",")])


def select_variants(args: argparse.Namespace) -> list[Variant]:
    variants: list[Variant] = []
    for name in args.set or []:
        if name == "augment":
            variants += [Variant(n, list(o)) for n, o in AUGMENT]
        elif name in GRIDS:
            variants += grid_variants(*GRIDS[name])
        else:
            raise AblationError(f"unknown --set {name!r}; known: {', '.join(SETS)}")
    for text in args.variant or []:
        variants.append(parse_variant(text))
    for text in args.grid or []:
        variants += parse_grid(text)
    if not args.set and not args.variant and not args.grid:
        variants = [Variant(n, list(o)) for n, o in AUGMENT]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        missing = [w for w in wanted if w not in {v.name for v in variants}]
        if missing:
            raise AblationError(f"--only {missing}: not among {[v.name for v in variants]}")
        variants = [v for v in variants if v.name in wanted]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise AblationError(f"variant names repeat: {names}")
    return variants


def _last_row(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return {}
    return rows[-1] if rows else {}


def run_variant(
    variant: Variant, args: argparse.Namespace, tasks: list[HearTask], out: Path
) -> dict[str, Any]:
    """Train (or finish) and score one variant; a scored variant with the same settings is read back."""
    folder = out / "variants" / variant.name
    run_dir = folder / "run"
    overrides = list(args.overrides) + variant.overrides
    cfg = build_config(args.preset, overrides)
    settings = {"preset": args.preset, "data": str(Path(args.data).resolve()), "train": cfg.to_dict()}
    settings = json.loads(json.dumps(settings, default=str))
    eval_settings = {
        "task": [str(t.task_dir) for t in tasks],
        "max_clips": args.eval_max_clips,
        "crop": not args.no_eval_crop,
    }
    if args.probe_seeds > 1:  # absent for one seed: results scored before the option stay cached
        eval_settings["probe_seeds"] = args.probe_seeds
    result_file = folder / "result.json"
    old = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if old and old.get("settings") == settings and old.get("eval") == eval_settings:
        old["status"] = "cached"
        return old
    folder.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.pt"
    argv = ["--run-dir", str(run_dir), "--no-progress"]
    argv += ["--resume"] if last.exists() else ["--preset", args.preset, "--data", str(args.data), *overrides]
    if args.device:
        argv += ["--device", args.device]
    t0 = time.perf_counter()
    rc = pretrain.main(argv, hint_next=False)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"pre-training exited with status {rc}")
    from hear_abt.hear_api import load_model

    model = load_model(last, family=None)
    ls = LinearEvalSettings(seed=cfg.seed, crop_frames=None if args.no_eval_crop else cfg.crop_frames)
    seeds = probe_seed_list(cfg.seed, args.probe_seeds)
    metrics = _last_row(run_dir / "metrics.csv")
    result = {
        "name": variant.name,
        "overrides": variant.overrides,
        "settings": settings,
        "eval": eval_settings,
        **linear_scores(model, tasks, ls, seeds, args.device or "cpu"),
        "final_loss": float(metrics["loss"]) if metrics.get("loss") else None,
        "steps": int(float(metrics["step"])) if metrics.get("step") else None,
        "train_seconds": round(seconds + (old.get("train_seconds") or 0.0), 1),
        "checkpoint": str(last),
    }
    atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
    result["status"] = "trained"
    return result


def linear_scores(
    model, tasks: list[HearTask], settings: LinearEvalSettings, seeds: list[int], device
) -> dict:
    """A variant's linear-evaluation fields of ``result.json``: with several tasks the mean over them (as
    abt_eval.sweep scores a trial), each one under ``tasks``; with several probe seeds the mean over
    them too, each seed's mean over the tasks under ``seed_scores`` / ``seed_valid_scores``."""
    per_task = {t.task_dir.name: seeded_linear_eval(model, t, settings, seeds, device) for t in tasks}
    metrics = sorted({runs[0].metric for runs in per_task.values()})

    def by_seed(field: str) -> list[float]:
        return [
            sum(getattr(runs[i], field) for runs in per_task.values()) / len(per_task)
            for i in range(len(seeds))
        ]

    test, valid = by_seed("score"), by_seed("valid_score")
    return {
        "metric": metrics[0] if len(metrics) == 1 else "mean of " + "/".join(metrics),
        "score": sum(test) / len(seeds),
        "valid_score": sum(valid) / len(seeds),
        "probe_seeds": seeds,
        "seed_scores": test,
        "seed_valid_scores": valid,
        "tasks": {
            name: {
                "score": sum(r.score for r in runs) / len(runs),
                "valid_score": sum(r.valid_score for r in runs) / len(runs),
                "seed_scores": [r.score for r in runs],
            }
            for name, runs in per_task.items()
        },
    }


def hear_scores(
    args: argparse.Namespace, results: list[dict[str, Any]], out: Path
) -> dict[str, dict[str, float]]:
    """Run abt_eval.hear_eval on every variant's checkpoint; ``{variant: {task: score}}``."""
    from abt_eval import hear_eval
    from abt_eval.hear_scores import collect_scores

    hear_out = out / "hear"
    argv = ["--tasks-dir", str(args.hear_tasks), "--out", str(hear_out), "--grid", args.hear_grid]
    argv += ["--seeds", str(args.probe_seeds)]
    for r in results:
        argv += ["--model", f"{r['name']}={r['checkpoint']}"]
    hear_eval.main(argv)  # failures are reported there; the pairs that worked are still collected
    tasks = hear_eval.list_tasks(Path(args.hear_tasks))
    seeds = hear_eval.probe_seeds(args.probe_seeds)
    scores = collect_scores(hear_out, [r["name"] for r in results], tasks, seeds=seeds)
    return {m: {t: s.value for t, s in per.items()} for m, per in scores.items()}


def write_table(
    out: Path, results: list[dict[str, Any]], hear: dict[str, dict[str, float]] | None
) -> list[Path]:
    """``ablation.md``, ``ablation.csv`` and ``ablation.png``: one row per variant."""
    header, rows = table_rows(results, hear)
    eval_tasks = list(results[0].get("tasks", {})) if results else []
    md = markdown_table(header, [[cell(v) for v in row] for row in rows])
    md += [
        "",
        f"Linear evaluation (training.linear_eval) on the test split of {', '.join(eval_tasks) or 'the task'}"
        + (" (the mean over them)" if len(eval_tasks) > 1 else "")
        + f"; {len(results)} variants.",
    ]
    seeded = seed_columns(results)
    if seeded:
        n = len(results[0]["seed_scores"])
        md[-1] += (
            f" Scores: mean over {n} probe seeds; ± 95%: half-width of the Student-t interval over them; "
            "vs best: paired t-test over the probe seeds (the same seeds for every variant) against the "
            "variant with the best test mean. Indistinguishable from the best at 95%: "
            + ", ".join(name for name, (_, v) in seeded.items() if v == "best" or v.startswith("indist"))
            + "."
        )
    paths = [out / "ablation.md", out / "ablation.csv", out / "ablation.png"]
    atomic_write_text(paths[0], "\n".join(md) + "\n")
    with atomic_open(paths[1], "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in row] for row in rows])
    metric = results[0]["metric"] if results else "score"
    errors = [seeded[r["name"]][0] for r in results] if seeded else None
    series = [(f"linear eval ({metric})", [r[2] for r in rows], errors)]
    if header[-1] == "HEAR average":
        series.append(("HEAR average", [r[-1] for r in rows], None))
    _plot([r[0] for r in rows], series, paths[2])
    print("\n".join(md), flush=True)
    return paths


def seed_columns(results: list[dict[str, Any]]) -> dict[str, tuple[float | None, str]] | None:
    """``{variant: (95 % half-width of its test score, verdict against the best)}`` when the variants
    were scored on several probe seeds (None otherwise). The best: the highest test mean among those
    scored on as many seeds; a variant scored on another number of seeds gets no verdict."""
    seeds = {r["name"]: r.get("seed_scores") or [r["score"]] for r in results}
    if not any(len(v) > 1 for v in seeds.values()):
        return None
    n = max(len(v) for v in seeds.values())
    comparable = {name: v for name, v in seeds.items() if len(v) == n}
    best = max(comparable, key=lambda name: sum(comparable[name]) / n)
    out: dict[str, tuple[float | None, str]] = {}
    for name, values in seeds.items():
        verdict = "-"
        if name == best:
            verdict = "best"
        elif name in comparable:
            test = paired_t_test(values, comparable[best])
            verdict = f"{test.verdict} (p={test.p_value:.2g})"
        out[name] = (mean_interval(values).half_width, verdict)
    return out


def table_rows(
    results: list[dict[str, Any]], hear: dict[str, dict[str, float]] | None
) -> tuple[list[str], list[list[Any]]]:
    """The table's header and its rows (raw values; None: no value); with several probe seeds the test
    score is followed by its 95 % half-width and the verdict against the best variant."""
    tasks = sorted({t for per in (hear or {}).values() for t in per})
    metric = results[0]["metric"] if results else "score"
    seeded = seed_columns(results)
    header = [
        "variant",
        "settings",
        f"linear eval ({metric}, test)",
        *(["± 95%", "vs best"] if seeded else []),
        "valid",
        "final loss",
        "steps",
        "train s",
    ]
    eval_tasks = list(results[0].get("tasks", {})) if results else []
    if len(eval_tasks) > 1:  # the mean's parts
        header += [f"linear {t}" for t in eval_tasks]
    header += [f"HEAR {t}" for t in tasks] + (["HEAR average"] if tasks else [])
    rows = []
    for r in results:
        row = [
            r["name"],
            " ".join(r["overrides"]) or "(baseline)",
            r["score"],
            *(list(seeded[r["name"]]) if seeded else []),
            r["valid_score"],
            None if r["final_loss"] is None else f"{r['final_loss']:.2f}",
        ]
        row += [r["steps"], None if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"]
        if len(eval_tasks) > 1:
            row += [r.get("tasks", {}).get(t, {}).get("score") for t in eval_tasks]
        if tasks:
            per = (hear or {}).get(r["name"], {})
            vals = [per.get(t) for t in tasks]
            row += vals + [sum(vals) / len(vals) if all(v is not None for v in vals) else None]
        rows.append(row)
    return header, rows


def _plot(names: list[str], series: list[tuple[str, list[Any], list[Any] | None]], path: Path) -> None:
    """Grouped bars: one group per variant, one bar per series (label, values, error bars or None)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(names)), 4.0))
    x = np.arange(len(names))
    width = 0.8 / len(series)
    for i, (label, values, errors) in enumerate(series):
        yerr = [e or 0.0 for e in errors] if errors else None
        offset = x + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(offset, [v or 0.0 for v in values], width, label=label, yerr=yerr, capsize=2)
        for bar, v in zip(bars, values):
            ax.annotate(
                cell(v)[:5],
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("ABT ablation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    shared = shared_options(
        out_help="output folder (variants/, ablation.md, ablation.csv, ablation.png)",
        overrides_help="settings shared by every variant",
    )
    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.ablate",
        description=__doc__.split("\n\n")[0],
        epilog="Details: docs/search.md.",
        parents=[shared],
    )
    ap.add_argument("--set", action="append", help=f"a built-in set: {', '.join(SETS)} (default: augment)")
    ap.add_argument("--variant", action="append", help="'NAME: key=value key=value' (repeatable)")
    ap.add_argument("--grid", action="append", help="KEY=V1,V2,... : one variant per value (repeatable)")
    ap.add_argument("--only", default=None, help="comma-separated variant names to run")
    ap.add_argument(
        "--hear-tasks", type=Path, default=None, help="also run abt_eval.hear_eval on these tasks"
    )
    ap.add_argument("--hear-grid", default="faster", choices=("default", "fast", "faster"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    out = Path(args.out).resolve()
    try:
        if args.preset not in PRESETS:
            raise AblationError(f"unknown --preset {args.preset!r}; known: {', '.join(PRESETS)}")
        variants = select_variants(args)
        for v in variants:  # every variant's settings checked before anything trains
            build_config(args.preset, list(args.overrides) + v.overrides)
        task_names(args.task)
        probe_seed_list(0, args.probe_seeds)  # refuses N < 1 before anything trains
        tasks = [HearTask(t, args.eval_max_clips) for t in args.task]
        if args.hear_tasks:  # found out now, not after every variant has trained
            from abt_eval.hear_eval import heareval_missing

            missing = heareval_missing(sys.executable)
            if missing:
                raise AblationError(f"--hear-tasks: {missing}")
    except (AblationError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for i, v in enumerate(variants, 1):
        print(f"[{i}/{len(variants)}] {v.name}: {' '.join(v.overrides) or '(baseline)'}", flush=True)
        try:
            r = run_variant(v, args, tasks, out)
        except (Exception, SystemExit) as err:  # one variant must not stop the others
            print(f"[{i}/{len(variants)}] {v.name}: failed: {err}", flush=True)
            failed.append(v.name)
            continue
        results.append(r)
        print(f"[{i}/{len(variants)}] {v.name}: {r['status']}, {r['metric']} {r['score']:.4f}", flush=True)
    hear = hear_scores(args, results, out) if args.hear_tasks and results else None
    if results:
        write_table(out, results, hear)
    if failed:
        print(f"{len(failed)} variant(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
