"""Optuna hyper-parameter sweeps of ABT pre-training, as in the paper's Appendix B.

    python -m abt_eval.sweep --data DATA --task TASK_DIR --out OUT [--preset P] [key=value ...]
        [--space-preset paper-lars|paper-adamw] [--space KEY=SPEC ...] [--space-file F.json|.yaml]
        [--n-trials 16] [--sampler tpe|random] [--pruner hyperband|median|none|threshold:X]
        [--report-unit epoch|steps] [--report-every N] [--probe-seeds N] [--pretrain-seeds N]
        [--storage URL] [--study-name NAME]

Each trial is a real pre-training run (``training.engine.build``/``train_step``, in this process) with
the trial's settings on top of the preset and the ``key=value`` overrides; after every epoch (or every
N steps) the encoder is scored by linear evaluation (``training.linear_eval``) on TASK_DIR and the score
is reported to Optuna, whose pruner may stop the trial there. The study lives in Optuna's RDB storage
(``sqlite:///OUT/study.db`` by default, any SQLAlchemy URL with ``--storage``), so the same command
continues a killed sweep and several workers may share one study. At the end: ``trials.csv``,
``importances.json`` (fANOVA), ``summary.md`` and Optuna's plots as PNG files. docs/search.md has more.
This module runs the study; ``abt_eval.sweep_space`` holds the search spaces, ``abt_eval.sweep_report``
the files written at the end, ``abt_eval.search_args`` the options shared with ``abt_eval.ablate``.

SPEC: ``log:LOW:HIGH`` (float, log scale), ``float:LOW:HIGH[:STEP]``, ``int:LOW:HIGH[:STEP]``,
``intlog:LOW:HIGH``, ``cat:A,B,C`` (values parsed as JSON where they can be: numbers, true/false).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hear_abt.config import ModelConfig
from hear_abt.fileio import atomic_write_text
from training import engine
from training.config import TrainConfig, flat_settings
from training.data import ShardDataset
from training.linear_eval import HearTask, LinearEvalSettings, embedder_copy, task_names
from training.loop import steps

from .search_args import probe_seed_list, seeded_linear_eval, shared_options
from .stats import mean_interval
from .sweep_archive import ArchiveError, load_study_file
from .sweep_report import write_report
from .sweep_space import (
    SPACE_PRESETS,
    Param,
    SweepError,
    build_space,
    check_space,
    parse_enqueue,
    top_enqueues,
    trial_config,
)

COUNTED = ("COMPLETE", "PRUNED")  # trials that count towards --n-trials


# --------------------------------------------------------------------------------------------------
# One trial: pre-training with reports
# --------------------------------------------------------------------------------------------------


def report_steps(total_steps: int, steps_per_epoch: int, unit: str, every: int) -> list[int]:
    """Steps after which the encoder is scored: every ``every`` epochs or steps, and at the end."""
    stride = every * (steps_per_epoch if unit == "epoch" else 1)
    return sorted(set(range(stride, total_steps + 1, stride)) | {total_steps})


# One task's scores of an encoder, one per probe seed.
SeedScoreFn = Callable[[torch.nn.Module, ModelConfig, TrainConfig], list[float]]


def linear_score_fn(
    task: HearTask,
    settings: LinearEvalSettings,
    split: str,
    crop: bool,
    device: torch.device,
    seeds: list[int] | None = None,
) -> SeedScoreFn:
    """Linear evaluation of a training encoder on ``task`` with each probe seed (default: the settings'
    one): the ``split`` scores ("test", the paper's, or "valid"), inputs cropped to the run's
    crop_frames when ``crop``, embedded once for all seeds."""

    def score(encoder: torch.nn.Module, model_config: ModelConfig, cfg: TrainConfig) -> list[float]:
        s = replace(settings, crop_frames=cfg.crop_frames if crop else None)
        model = embedder_copy(encoder, model_config, device)
        results = seeded_linear_eval(model, task, s, seeds or [s.seed], device)
        return [r.score if split == "test" else r.valid_score for r in results]

    return score


class MeanScore:
    """The mean over several tasks (the objective when ``--task`` is given more than once), probe seeds
    and pre-training runs: :meth:`run_scores` scores one encoder, :meth:`combine` averages the runs of a
    report and keeps its per-task means in ``last`` and its per-seed means in ``last_seeds``, for the
    trial's records."""

    def __init__(self, fns: dict[str, SeedScoreFn]):
        self.fns = fns
        self.last: dict[str, float] = {}
        self.last_seeds: list[float] = []

    def run_scores(
        self, encoder: torch.nn.Module, model_config: ModelConfig, cfg: TrainConfig
    ) -> dict[str, list[float]]:
        """One encoder's scores: per task, one per probe seed."""
        return {name: [float(v) for v in fn(encoder, model_config, cfg)] for name, fn in self.fns.items()}

    def combine(self, runs: list[dict[str, list[float]]]) -> float:
        """The mean over the :meth:`run_scores` of several pre-training runs (``--pretrain-seeds``): ``last``
        holds each task's mean over the runs, ``last_seeds`` the runs' per-probe-seed means, run after run
        (the values that sweep_report's paired tests match between trials)."""
        per_task: dict[str, list[float]] = {name: [] for name in self.fns}
        self.last_seeds = []
        for scores in runs:
            for name, values in scores.items():
                per_task[name] += values
            self.last_seeds += [sum(v) / len(v) for v in zip(*scores.values())]
        self.last = {name: sum(v) / len(v) for name, v in per_task.items()}
        return sum(self.last_seeds) / len(self.last_seeds)


def pretrain_with_reports(
    cfgs: list[TrainConfig],
    dataset: ShardDataset,
    device: torch.device,
    score_fn: MeanScore,
    unit: str,
    every: int,
    on_report: Callable[[int, int, float, float], None],
) -> tuple[list[engine.TrainState], ModelConfig]:
    """Pre-train each of ``cfgs`` (one per pre-training seed, the same schedule) on ``dataset``, in
    lockstep: after each report step every run is scored, and ``on_report(index, step, score, loss)`` gets
    the mean over the runs (1-based index; it may raise to stop them all, e.g. when the pruner says so).
    Each run draws only from its own generators, so it is the run it would be alone."""
    states, streams = [], []
    for cfg in cfgs:
        states.append(engine.build(cfg, dataset, device))  # seeds the process's generators
        streams.append(engine.rngs(states[-1]))
    model_config = ModelConfig(
        encoder=cfgs[0].encoder,
        encoder_kwargs=cfgs[0].encoder_kwargs,
        frontend=dataset.frontend,
        norm=dataset.norm,
    )
    when = report_steps(states[0].total_steps, states[0].steps_per_epoch, unit, every)
    runs = [steps(state) for state in states]
    for index, at in enumerate(when, start=1):
        losses, scores = [], []
        for i, (state, run, cfg) in enumerate(zip(states, runs, cfgs)):
            # The process's generators (dropout draws from torch's) as this run left them: each run
            # draws the numbers it would draw alone, scoring included.
            engine.set_rngs(state, streams[i])
            result = None
            while state.step < at:
                result = next(run)
            engine.check_finite(state)  # a NaN run fails the trial here (a device sync at reports only)
            losses.append(result.loss)
            scores.append(score_fn.run_scores(state.net.encoder, model_config, cfg))
            streams[i] = engine.rngs(state)
        on_report(index, at, score_fn.combine(scores), sum(losses) / len(losses))
    return states, model_config


def build_score_fn(args: argparse.Namespace, seed: int, device: torch.device) -> MeanScore:
    """The trials' objective: the mean score over the ``--task`` folders (each scored by ``--eval-protocol``)."""
    try:
        names = task_names(args.task)
    except ValueError as err:
        raise SweepError(f"--task: {err}") from err
    if args.probe_seeds > 1 and args.eval_protocol == "logreg":
        raise SweepError("--probe-seeds needs --eval-protocol linear (the logreg probe has no seed)")
    try:
        seeds = probe_seed_list(seed, args.probe_seeds)
    except ValueError as err:
        raise SweepError(str(err)) from err
    fns: dict[str, SeedScoreFn] = {}
    for name, task_dir in zip(names, args.task):
        if args.eval_protocol == "logreg":  # the cheap probe: logistic regression, accuracy on valid
            from training.probe import LinearProbe

            probe = LinearProbe(task_dir, args.eval_max_clips or 2000)
            fns[name] = lambda encoder, model_config, cfg, probe=probe: [
                probe.score(encoder, model_config, device)
            ]
        else:
            task = HearTask(task_dir, args.eval_max_clips, seed)
            settings = LinearEvalSettings(seed=seed)
            crop = not args.no_eval_crop
            fns[name] = linear_score_fn(task, settings, args.eval_split, crop, device, seeds)
    return MeanScore(fns)


class TrialReporter:
    """``on_report`` of one trial: writes ``reports.csv`` and the trial's user attributes, reports the
    score to Optuna, prints a line, and raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial, trial_dir: Path, score_fn: MeanScore, t0: float):
        self.trial, self.trial_dir, self.score_fn, self.t0 = trial, trial_dir, score_fn, t0
        self.names = list(score_fn.fns)
        self.rows = [",".join(["report", "step", "score", *self.names, "loss", "seconds"])]
        self.scores: list[float] = []
        self.per_task: list[dict[str, float]] = []
        self.per_seed: list[list[float]] = []  # per report: the score of each probe seed
        self.seconds: list[float] = []  # per report: since the trial started (what a kill keeps)

    def __call__(self, index: int, step: int, score: float, loss: float) -> None:
        import optuna

        trial = self.trial
        self.scores.append(score)
        self.per_task.append(dict(self.score_fn.last))
        self.per_seed.append(list(self.score_fn.last_seeds))
        self.seconds.append(round(time.perf_counter() - self.t0, 1))
        detail = ",".join(f"{self.per_task[-1][n]:.6g}" for n in self.names)
        self.rows.append(f"{index},{step},{score:.6g},{detail},{loss:.6g},{self.seconds[-1]:.1f}")
        atomic_write_text(self.trial_dir / "reports.csv", "\n".join(self.rows) + "\n")
        trial.set_user_attr("scores", self.scores)
        trial.set_user_attr("report_seconds", self.seconds)
        trial.set_user_attr("task_scores", self.per_task)
        if len(self.per_seed[-1]) > 1:
            trial.set_user_attr("seed_scores", self.per_seed)
        trial.report(score, index)
        tasks_text = (
            f" ({', '.join(f'{n} {v:.3f}' for n, v in self.per_task[-1].items())})"
            if len(self.names) > 1
            else ""
        )
        seeds = self.per_seed[-1]
        spread = mean_interval(seeds).half_width if len(seeds) > 1 else None
        seeds_text = f" ± {spread:.4f} ({len(seeds)} probe seeds)" if spread is not None else ""
        print(
            f"  trial {trial.number} report {index} (step {step}): score {score:.4f}{seeds_text}{tasks_text}, "
            f"loss {loss:.2f}",
            flush=True,
        )
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at report {index} (score {score:.4f})")


@dataclass
class Objective:
    """One trial: the trial's config pre-trained with reports, recorded in ``OUT/trials/NNNN``; its value
    is the last report's score (``objective="best"``: the best one)."""

    out: Path
    preset: str
    overrides: list[str]  # what the space fixes, then the command line's key=value
    params: list[Param]
    dataset: ShardDataset
    device: torch.device
    score_fn: MeanScore
    unit: str
    every: int
    objective: str = "last"
    save_models: bool = False
    pretrain_seeds: int = 1  # runs per trial, seeds cfg.seed, cfg.seed + 1, ...

    def __call__(self, trial) -> float:
        import optuna

        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        t0 = time.perf_counter()
        trial_dir = self.out / "trials" / f"{trial.number:04d}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        values = {p.name: p.suggest(trial) for p in self.params}
        try:
            cfg = trial_config(self.preset, self.overrides, values)
            atomic_write_text(
                trial_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str) + "\n"
            )
            reporter = TrialReporter(trial, trial_dir, self.score_fn, t0)
            cfgs = [replace(cfg, seed=cfg.seed + i) for i in range(self.pretrain_seeds)]
            states, model_config = pretrain_with_reports(
                cfgs, self.dataset, self.device, self.score_fn, self.unit, self.every, reporter
            )
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            if self.save_models:  # model/ (seed cfg.seed), model-seed1/, ... for the other runs
                from hear_abt.weights import save_pretrained

                for i, state in enumerate(states):
                    folder = trial_dir / ("model" if i == 0 else f"model-seed{i}")
                    save_pretrained(folder, model_config, state.net.encoder.state_dict())
            scores = reporter.scores
            chosen = scores.index(max(scores)) if self.objective == "best" else len(scores) - 1
            if len(reporter.per_seed[chosen]) > 1:  # what sweep_report's paired tests compare
                trial.set_user_attr("objective_seeds", reporter.per_seed[chosen])
            return scores[chosen]
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            print(f"  trial {trial.number} failed: {type(err).__name__}: {err}", flush=True)
            raise


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------


def make_pruner(text: str, max_resource: int):
    import optuna

    if text == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, max_resource), reduction_factor=3
        )
    if text == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if text == "none":
        return optuna.pruners.NopPruner()
    if text.startswith("threshold:"):  # prune a trial whose score falls below X (e.g. a collapse)
        return optuna.pruners.ThresholdPruner(lower=float(text.split(":", 1)[1]))
    raise SweepError(f"--pruner {text!r}: use hyperband, median, none or threshold:X")


def make_sampler(text: str, seed: int, startup_trials: int = 10):
    """TPE samples at random for its first ``startup_trials`` trials (Optuna's default 10): a sweep
    of fewer trials than that is a random search."""
    import optuna

    if startup_trials < 1:
        raise SweepError(f"--startup-trials {startup_trials}: must be >= 1")
    if text == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if text == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SweepError(f"--sampler {text!r}: use tpe or random")


class RequeueOnce:
    """Queue a failed trial's parameters again, once: Optuna's ``RetryHeartbeatStaleTrialCallback``
    (``RetryFailedTrialCallback`` before Optuna 4.9) with ``max_retry=1``, given a copy of the trial whose
    user attributes are only ``retry_of`` (the failed run's records stay with it). The storage calls it
    for a trial whose heartbeat went stale; :func:`recover_killed_trials` for one of a killed worker."""

    def __init__(self):
        import optuna

        storages = optuna.storages
        retry = (
            getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
        )
        self._retry = retry(max_retry=1)

    def __call__(self, study, trial) -> None:
        fresh = copy.deepcopy(trial)
        fresh.user_attrs = {"retry_of": trial.number}
        self._retry(study, fresh)


def make_storage(url: str, heartbeat: int, requeue: RequeueOnce):
    """Optuna RDB storage with heartbeats: a trial whose worker stops beating for 2 heartbeats is failed
    (``optuna.storages.fail_stale_trials``) and handed to ``requeue`` by the next worker that starts a
    trial, on any machine."""
    import optuna

    storages = optuna.storages
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
        callback = {"heartbeat_stale_trial_callback": requeue}
    else:
        callback = {"failed_trial_callback": requeue}
    return storages.RDBStorage(url, heartbeat_interval=heartbeat, **callback)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_killed_trials(study, storage, requeue: RequeueOnce | None = None) -> list[int]:
    """Trials left RUNNING by a worker of this machine that is gone (killed): marked FAIL with the error
    and handed to ``requeue`` (None: not re-run), as ``optuna.storages.fail_stale_trials`` does for a
    stale heartbeat, but at once: a dead pid on this machine needs no wait of 2 heartbeats. Trials of
    live workers, or of other machines, are left to them (and to the heartbeat). ``storage``: the study's
    RDB storage. Returns the numbers failed."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != socket.gethostname() or _pid_alive(int(worker.get("pid", -1))):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_user_attr(trial_id, "error", f"killed: worker pid {worker.get('pid')} is gone")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except RuntimeError:  # finished meanwhile
            continue
        failed.append(t.number)
        if requeue is not None:
            requeue(study, storage.get_trial(trial_id))
    return failed


def count_trials(study, states=COUNTED) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(getattr(TrialState, s) for s in states)))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def base_settings(base: TrainConfig, params: list[Param]) -> dict[str, Any]:
    """Every resolved training setting the space does not search (dotted keys). A preset is a name whose
    values can change between releases; a continued study must run its trials on the same base."""
    searched = {p.name for p in params}
    return {k: v for k, v in sorted(flat_settings(base.to_dict()).items()) if k not in searched}


def settings_record(
    args: argparse.Namespace, params: list[Param], fixed: dict[str, Any], base: TrainConfig
) -> dict[str, Any]:
    """What a resumed sweep must repeat: the base settings, the space and how trials are scored."""
    record = {
        "preset": args.preset,
        "overrides": list(args.overrides),
        "fixed": fixed,
        "space": {p.name: p.describe() for p in params},
        "task": [str(Path(t).resolve()) for t in args.task],
        "data": str(Path(args.data).resolve()),
        "report": [args.report_unit, args.report_every],
        "eval": [args.eval_protocol, args.eval_split, args.eval_max_clips, not args.no_eval_crop],
        "objective": args.objective,
    }
    if args.probe_seeds > 1:  # absent for one seed: studies started before the option continue
        record["probe_seeds"] = args.probe_seeds
    if args.pretrain_seeds > 1:
        record["pretrain_seeds"] = args.pretrain_seeds
    record["base"] = base_settings(base, params)
    return _jsonable(record)


def settings_diff(known: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """The recorded settings a continued sweep would change, named; [] when it may continue. Studies
    started before ``base`` was recorded (2026-12-04) are compared on the rest."""
    diff = []
    for key, value in record.items():
        if key == "base" and key in known:
            old = known[key]
            diff += [
                f"{k}: {old.get(k, '(unset)')!r} -> {value.get(k, '(unset)')!r}"
                for k in sorted(set(old) | set(value))
                if old.get(k) != value.get(k)
            ]
        elif key != "base" and value != known.get(key):
            diff.append(key)
    return diff


def open_study(
    args: argparse.Namespace,
    storage,
    storage_url: str,
    params: list[Param],
    fixed: dict[str, Any],
    enqueued: list[tuple[dict[str, Any], dict[str, Any]]],
    base: TrainConfig,
    n_reports: int,
):
    """Create the study, or load it and check that it was started with the same settings; a new study
    gets the ``enqueued`` trials (values, user attributes) first."""
    import optuna

    study = optuna.create_study(
        storage=storage,
        study_name=args.study_name,
        direction="maximize",
        sampler=make_sampler(args.sampler, base.seed, args.startup_trials),
        pruner=make_pruner(args.pruner, n_reports),
        load_if_exists=True,
    )
    done = len(study.get_trials(deepcopy=False))
    if done:  # a continued study: a sampler seeded as at its start would draw its first points again
        study.sampler = make_sampler(args.sampler, base.seed + done, args.startup_trials)
    record = settings_record(args, params, fixed, base)
    known = study.user_attrs.get("settings")
    if known is None:
        study.set_user_attr("settings", record)
        for values, attrs in enqueued:  # e.g. today's recipe, or another study's best trials
            if "top_of" in attrs:
                top = attrs["top_of"]
                print(
                    f"queued: trial {top['trial']} of {top['study']!r} (value {top['value']:.4f}): {attrs['enqueued']}"
                )
            study.enqueue_trial(values, user_attrs=attrs)
    elif diff := settings_diff(known, record):
        raise SweepError(
            f"study {args.study_name!r} in {storage_url} was started with other settings ({'; '.join(diff)}): "
            "repeat them (a preset whose values changed: its old values as overrides) to continue it, or "
            "use another --study-name or --out"
        )
    elif "base" not in known:
        study.set_user_attr("settings", {**known, "base": record["base"]})
    return study


def optimize(study, objective: Objective, n_trials: int, timeout: float | None, max_failures: int) -> None:
    """Run trials one at a time until the study holds ``n_trials`` finished ones (every worker's), no new
    one after ``timeout`` seconds, or ``max_failures`` of them failed in this run."""
    failures = 0
    started = time.time()
    while count_trials(study) < n_trials:
        if timeout and time.time() - started > timeout:
            print(f"--timeout {timeout} s reached: no new trial started", flush=True)
            break
        before = count_trials(study, ("FAIL",))
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        if count_trials(study, ("FAIL",)) > before:
            failures += 1
            if failures >= max_failures:
                print(f"{failures} trials failed in this run (--max-failures): stopping", flush=True)
                break


def run_sweep(args: argparse.Namespace) -> int:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params, fixed = build_space(
        args.space_preset, args.space, Path(args.space_file) if args.space_file else None
    )
    enqueued = [(parse_enqueue(text, params), {"enqueued": text}) for text in args.enqueue or []]
    if args.enqueue_top:
        if not args.top_of:
            raise SweepError("--enqueue-top needs --top-of STUDY_FILE (a study.db or an exported .jsonl)")
        source = load_study_file(Path(args.top_of), args.top_of_study or args.study_name)
        for text, values, number, value in top_enqueues(source, args.enqueue_top, params):
            top_of = {"study": source.study_name, "trial": number, "value": value}
            enqueued.append((values, {"enqueued": text, "top_of": top_of}))
    overrides = [f"{k}={json.dumps(v)}" for k, v in fixed.items()] + list(args.overrides)
    base = check_space(args.preset, overrides, params)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = ShardDataset(args.data)
    score_fn = build_score_fn(args, base.seed, device)
    steps_per_epoch = max(1, len(dataset) // base.batch_size)
    total = engine.run_length(base, steps_per_epoch)
    n_reports = len(report_steps(total, steps_per_epoch, args.report_unit, args.report_every))

    storage_url = args.storage or f"sqlite:///{out / 'study.db'}"
    requeue = RequeueOnce()
    storage = make_storage(storage_url, args.heartbeat, requeue)
    study = open_study(args, storage, storage_url, params, fixed, enqueued, base, n_reports)
    killed = recover_killed_trials(study, storage, requeue if args.on_killed == "rerun" else None)
    if killed:
        print(
            f"trials {killed} were left running by a killed sweep: marked failed"
            + (" and queued again" if args.on_killed == "rerun" else ""),
            flush=True,
        )
    print(
        f"study {args.study_name!r} in {storage_url}: {count_trials(study)} of {args.n_trials} trials done; "
        f"{total} steps per trial, {n_reports} reports ({args.report_unit}), device {device}",
        flush=True,
    )
    objective = Objective(
        out,
        args.preset,
        overrides,
        params,
        dataset,
        device,
        score_fn,
        args.report_unit,
        args.report_every,
        objective=args.objective,
        save_models=args.save_models,
        pretrain_seeds=args.pretrain_seeds,
    )
    optimize(study, objective, args.n_trials, args.timeout, args.max_failures)
    write_report(study, out, seed=base.seed)
    return 0


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    shared = shared_options(
        out_help="output folder (study.db, trials/, plots/, summary.md)",
        overrides_help="fixed settings on top of the preset",
    )
    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.sweep",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[shared],
    )
    ap.add_argument(
        "--space", action="append", default=[], metavar="KEY=SPEC", help="a searched setting (repeatable)"
    )
    ap.add_argument(
        "--space-file", default=None, help="JSON or YAML: {KEY: SPEC} or {space: {...}, fixed: {...}}"
    )
    ap.add_argument("--space-preset", default=None, help=f"the paper's spaces: {', '.join(SPACE_PRESETS)}")
    ap.add_argument("--n-trials", type=int, default=16, help="finished (complete or pruned) trials wanted")
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    ap.add_argument(
        "--startup-trials",
        type=int,
        default=10,
        help="TPE's random trials before it models the space (default 10, Optuna's)",
    )
    ap.add_argument("--pruner", default="hyperband", help="hyperband (default), median, none or threshold:X")
    ap.add_argument("--report-unit", default="epoch", choices=("epoch", "steps"))
    ap.add_argument("--report-every", type=int, default=1, help="report every N epochs or steps")
    ap.add_argument("--eval-protocol", default="linear", choices=("linear", "logreg"))
    ap.add_argument(
        "--eval-split", default="test", choices=("test", "valid"), help="split scored (paper: test)"
    )
    ap.add_argument(
        "--objective", default="last", choices=("last", "best"), help="a trial's value: last or best report"
    )
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: sqlite:///OUT/study.db)")
    ap.add_argument("--study-name", default="abt-sweep")
    ap.add_argument(
        "--heartbeat", type=int, default=60, help="seconds between trial heartbeats in the storage"
    )
    ap.add_argument(
        "--on-killed", default="rerun", choices=("rerun", "skip"), help="a trial a kill left running"
    )
    ap.add_argument(
        "--max-failures",
        type=int,
        default=None,
        help="stop after this many failed trials (default: n-trials)",
    )
    ap.add_argument("--timeout", type=float, default=None, help="start no new trial after this many seconds")
    ap.add_argument(
        "--save-models", action="store_true", help="save each finished trial's encoder (trials/N/model)"
    )
    ap.add_argument(
        "--pretrain-seeds",
        type=int,
        default=1,
        help="pre-train each trial N times (seeds SEED, SEED+1, ..., in lockstep) and score the mean: "
        "the pre-training seed moves a score more than most settings do (docs/realsuite.md)",
    )
    ap.add_argument(
        "--enqueue",
        action="append",
        metavar="'K=V K=V'",
        help="a trial to run first in a new study (e.g. today's recipe as a reference; repeatable)",
    )
    ap.add_argument(
        "--enqueue-top",
        type=int,
        default=0,
        metavar="K",
        help="queue the K best complete trials of --top-of first in a new study (e.g. to re-run them with "
        "--pretrain-seeds 3)",
    )
    ap.add_argument(
        "--top-of", default=None, metavar="FILE", help="study.db or exported .jsonl for --enqueue-top"
    )
    ap.add_argument("--top-of-study", default=None, metavar="NAME", help="its study (default: --study-name)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.max_failures is None:
        args.max_failures = args.n_trials
    if args.n_trials < 1 or args.report_every < 1 or args.heartbeat < 1 or args.pretrain_seeds < 1:
        print(
            "error: --n-trials, --report-every, --heartbeat and --pretrain-seeds must be >= 1",
            file=sys.stderr,
        )
        return 2
    try:
        return run_sweep(args)
    except (SweepError, ArchiveError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except engine.TrainingSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
