"""Evaluate ABT checkpoints with the real HEAR 2021 tools (heareval) and tabulate the results.

    python -m abt_eval.hear_eval --tasks-dir TASKS --out OUT_DIR --model NAME=SOURCE [--model NAME=SOURCE ...]
        [--module hear_abt] [--random-baseline] [--logmel-reference] [--grid default|fast|faster] [--tasks a,b]
        [--model-options JSON] [--seed 0] [--seeds 1] [--jobs N]

What it runs, the output layout, the scores and "% vs random", resuming: ``docs/evaluation.md``
("One-command evaluation"). This module runs heareval (and builds the random-init baselines);
``abt_eval.hear_scores`` reads the scores back, ``abt_eval.hear_report`` tabulates them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hear_abt.fileio import atomic_write_text
from hear_abt.weights import WEIGHTS_ENV, parse_hub_id

from .hear_report import results_table, write_outputs
from .hear_scores import (
    HEAREVAL_SEED,
    LOGMEL_MODULE,
    LOGMEL_NAME,
    LOGMEL_SOURCE,
    SCORES_FILE,
    EvalError,
    collect_clip_outcomes,
    collect_scores,
    embed_task_dir,
    probe_seeds,
    probe_task_dir,
)

DONE_EMBEDDINGS = ".done.embeddings"
PREDICTION_DONE = "prediction-done.json"
GRIDS = ("default", "fast", "faster")
RANDOM_SUFFIX = "-random"
COMPAT_MODULE = "abt_eval.heareval_compat"  # run as `python -m`: works from an installed wheel
SEEDED_MODULE = "abt_eval.seeded_predictions"  # the predictions runner with another probe seed
# What heareval's predictions runner writes into a task folder: not linked into another seed's folder.
PREDICTION_OUTPUTS = (SCORES_FILE, PREDICTION_DONE, "prediction.log")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
TAIL_LINES = 40


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


def log_path(out_dir: Path, model: str, task: str) -> Path:
    return Path(out_dir) / "logs" / f"{model}__{task}.log"


def list_tasks(tasks_dir: Path) -> list[str]:
    """Task folders (those with a task_metadata.json) in ``tasks_dir``, sorted."""
    return sorted(p.name for p in Path(tasks_dir).iterdir() if (p / "task_metadata.json").is_file())


# --------------------------------------------------------------------------------------------------
# Random-init baseline
# --------------------------------------------------------------------------------------------------


def make_random_baseline(source: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a freshly initialised encoder with ``source``'s ModelConfig to ``folder`` (save_pretrained).

    Same architecture, front-end and normalisation statistics; weights from ``torch.manual_seed(seed)``
    (the global random state is left untouched). BatchNorm running stats stay at their init (mean 0,
    var 1): no data has been seen. The provenance records that it is a random init and of what. A folder
    already holding weights saved with exactly this config (the seed and the source are in its
    provenance) is reused.
    """
    import torch

    from hear_abt.embedder import ABTEmbedder
    from hear_abt.weights import CONFIG_NAME, WEIGHTS_NAME, load_weights, save_pretrained

    config = load_weights(source).config
    provenance = dict(config.provenance)
    provenance["random_init"] = {"seed": seed, "architecture_of": str(source)}
    config = dataclasses.replace(config, provenance=provenance)
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file() and _saved_config(folder / CONFIG_NAME) == _as_json(
        config.to_dict()
    ):
        return folder.resolve()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ABTEmbedder(config)
    return save_pretrained(folder, config, model.encoder.state_dict())


def _saved_config(path: Path) -> dict | None:
    """The fields of a saved ``config.json`` without its two checksums (None: missing or unreadable)."""
    from hear_abt.weights import CONFIG_SHA_KEY, WEIGHTS_SHA_KEY

    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return {k: v for k, v in data.items() if k not in (CONFIG_SHA_KEY, WEIGHTS_SHA_KEY)}


def _as_json(fields: dict) -> dict:
    """``fields`` as ``config.json`` reads back (tuples become lists)."""
    return json.loads(json.dumps(fields))


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
    note: str = ""  # e.g. how many probe seeds ran


@dataclass
class EvalSettings:
    tasks_dir: Path
    out_dir: Path
    module: str = "hear_abt"
    grid: str = "default"
    model_options: dict = dataclasses.field(default_factory=dict)
    python: str = sys.executable
    jobs: int = 1  # (model, task) pairs evaluated at once
    seeds: list[int] = dataclasses.field(default_factory=lambda: [HEAREVAL_SEED])  # probe seeds


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


def predictions_command(task_dir: Path, s: EvalSettings, seed: int = HEAREVAL_SEED) -> list[str]:
    """heareval's predictions runner on ``task_dir``; another seed than heareval's own goes through
    ``abt_eval.seeded_predictions``."""
    args = [str(task_dir.resolve()), "--grid", s.grid]
    if seed == HEAREVAL_SEED:
        return compat_command(s, "predictions") + args
    return [s.python, "-m", SEEDED_MODULE, str(seed)] + args


def link_embeddings(embed_dir: Path, probe_dir: Path) -> None:
    """Give ``probe_dir`` (one probe seed's folder) symbolic links to the embeddings files of
    ``embed_dir`` (not the predictions of heareval's own seed), so each seed trains on the same
    embeddings and writes its predictions, checkpoints and scores into its own folder."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    for src in Path(embed_dir).iterdir():
        if not src.is_file() or src.name.startswith(".") or src.name in PREDICTION_OUTPUTS:
            continue
        if src.name.endswith(".predictions.pkl"):
            continue
        link = probe_dir / src.name
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(src.resolve())


def evaluate_pair(spec: ModelSpec, task: str, s: EvalSettings) -> PairResult:
    """Embeddings once, then one probe training per seed, skipping what is already done."""
    start = time.time()
    module, options = spec.module or s.module, None if spec.module else s.model_options
    folder = embed_task_dir(s.out_dir, spec.name, task, module, options)
    probes = {seed: probe_task_dir(s.out_dir, spec.name, task, module, options, seed) for seed in s.seeds}
    todo = [seed for seed, d in probes.items() if not (d / SCORES_FILE).is_file()]
    if not todo:
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
    for seed in todo:
        probe_dir = probes[seed]
        if seed != HEAREVAL_SEED:
            link_embeddings(folder, probe_dir)
        # heareval skips a task with prediction-done.json: stale without the scores file.
        (probe_dir / PREDICTION_DONE).unlink(missing_ok=True)
        rc = run_logged(predictions_command(probe_dir, s, seed), log, env, cwd)
        if rc != 0 or not (probe_dir / SCORES_FILE).is_file():
            which = f" for probe seed {seed}" if len(s.seeds) > 1 else ""
            return failed(f"predictions runner failed{which} (exit status {rc})")
    cached = len(s.seeds) - len(todo)
    note = f" ({len(todo)} probe seeds run, {cached} cached)" if len(s.seeds) > 1 else ""
    return PairResult(spec.name, task, "ok", time.time() - start, note=note)


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
        line = f"[{done}/{total}] {res.model} / {res.task}: {res.status}{res.note}"
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


def build_parser() -> argparse.ArgumentParser:
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
    ap.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="probe trainings per (model, task), seeds 42 (heareval's own), 43, ... on the same "
        "embeddings: the table gives mean ± 95%% interval and paired tests against the baselines",
    )
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
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        specs, baselines, tasks, settings = _evaluation_plan(args)
        check_manifest(args.out, args.grid, specs)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    missing = heareval_missing(settings.python)
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    random_failed = build_baselines(specs, args.seed)  # before any pair runs: their pairs need the weights
    results = run_pairs([(spec, task) for spec in specs for task in tasks], settings, random_failed)
    try:
        where = (args.out, specs, tasks, settings.module, settings.model_options, settings.seeds)
        scores = collect_scores(*where)
        table = results_table(scores, baselines, tasks, collect_clip_outcomes(*where))
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


def heareval_missing(python: str) -> str | None:
    """Why heareval's runners cannot start under ``python`` (None: they can). Checked once, before
    any baseline is built or pair is run, instead of a traceback per (model, task) pair."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('heareval') is None)"
    if subprocess.run([python, "-c", probe], stdin=subprocess.DEVNULL).returncode == 0:
        return None
    return (
        f"heareval is not installed for {python}: install the HEAR tools with "
        f"`{python} -m abt_eval.hear_tools install` (docs/evaluation.md)"
    )


def build_baselines(specs: Sequence[ModelSpec], seed: int) -> dict[str, str]:
    """Make (or reuse) every random-init baseline among ``specs``; ``{name: error}`` for those that failed."""
    failed: dict[str, str] = {}
    for spec in specs:
        if spec.baseline_of is not None:
            base = next(x for x in specs if x.name == spec.baseline_of)
            try:
                make_random_baseline(base.source, spec.source, seed=seed)
            except Exception as err:  # any load failure: report and go on with the others
                failed[spec.name] = f"cannot build the random-init baseline: {err}"
    return failed


def _evaluation_plan(args) -> tuple[list[ModelSpec], dict[str, str], list[str], EvalSettings]:
    """What to run, from the parsed arguments: the models (baselines and the log-mel reference included),
    ``{model: its baseline}``, the tasks and the settings."""
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
    if args.jobs < 1 or args.seeds < 1:
        raise EvalError(f"--jobs and --seeds must be >= 1, got {args.jobs} and {args.seeds}")
    settings = EvalSettings(args.tasks_dir, args.out, args.module, args.grid, options, jobs=args.jobs)
    settings.seeds = probe_seeds(args.seeds)
    return specs, baselines, tasks, settings


if __name__ == "__main__":
    sys.exit(main())
