"""Optuna hyper-parameter sweeps of ABT pre-training, as in the paper's Appendix B.

    python -m abt_eval.sweep --data DATA --task TASK_DIR --out OUT [--preset P] [key=value ...]
        [--space-preset paper-lars|paper-adamw] [--space KEY=SPEC ...] [--space-file F.json|.yaml]
        [--n-trials 16] [--sampler tpe|random] [--pruner hyperband|median|none|threshold:X]
        [--report-unit epoch|steps] [--report-every N] [--storage URL] [--study-name NAME]

Each trial is a real pre-training run (``training.engine.build``/``train_step``, in this process) with
the trial's settings on top of the preset and the ``key=value`` overrides; after every epoch (or every
N steps) the encoder is scored by linear evaluation (``training.linear_eval``) on TASK_DIR and the score
is reported to Optuna, whose pruner may stop the trial there. The study lives in Optuna's RDB storage
(``sqlite:///OUT/study.db`` by default, any SQLAlchemy URL with ``--storage``), so the same command
continues a killed sweep and several workers may share one study. At the end: ``trials.csv``,
``importances.json`` (fANOVA), ``summary.md`` and Optuna's plots as PNG files. docs/search.md has more.

SPEC: ``log:LOW:HIGH`` (float, log scale), ``float:LOW:HIGH[:STEP]``, ``int:LOW:HIGH[:STEP]``,
``intlog:LOW:HIGH``, ``cat:A,B,C`` (values parsed as JSON where they can be: numbers, true/false).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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
from training.config import PRESETS, TrainConfig, build_config, parse_value
from training.data import ShardDataset
from training.linear_eval import HearTask, LinearEvalSettings, evaluate_encoder, task_names
from training.loop import steps

# The paper's spaces (Appendix B), all log scale.
SPACE_PRESETS: dict[str, dict[str, Any]] = {
    "paper-lars": {
        "fixed": {"optimizer": "lars"},
        "space": {"lr_weights": "log:1e-3:1", "lr_biases": "log:1e-6:1e-2", "weight_decay": "log:1e-8:1e-4"},
    },
    # AdamW (ViT / ViT_C): one rate for weights and biases (lr_biases=None follows lr_weights).
    "paper-adamw": {
        "fixed": {"optimizer": "adamw", "lr_biases": None},
        "space": {"lr_weights": "log:1e-6:1e-2", "weight_decay": "log:1e-3:1"},
    },
    # Adam and SGD (Appendix B's other sweeps): one rate for all parameters, L2 weight decay.
    "paper-adam": {
        "fixed": {"optimizer": "adam", "lr_biases": None},
        "space": {"lr_weights": "log:1e-6:1e-2", "weight_decay": "log:1e-3:1"},
    },
    "paper-sgd": {
        "fixed": {"optimizer": "sgd", "lr_biases": None},
        "space": {"lr_weights": "log:1e-6:1e-2", "weight_decay": "log:1e-3:1"},
    },
}
KINDS = ("log", "float", "int", "intlog", "cat")
COUNTED = ("COMPLETE", "PRUNED")  # trials that count towards --n-trials


class SweepError(ValueError):
    """Bad arguments or a study that does not match them; the message says what to change."""


# --------------------------------------------------------------------------------------------------
# Search spaces
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str  # a TrainConfig setting, dotted for nested ones (augment.mixup_ratio)
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        if self.kind == "cat":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind in ("int", "intlog"):
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.kind == "intlog"
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.kind == "log")

    def describe(self) -> str:
        if self.kind == "cat":
            return "cat:" + ",".join(json.dumps(c) if not isinstance(c, str) else c for c in self.choices)
        return ":".join(
            [self.kind, repr(self.low), repr(self.high)] + ([repr(self.step)] if self.step else [])
        )


def parse_spec(name: str, spec: Any) -> Param:
    """``log:1e-3:1`` / ``{"type": "log", "low": 1e-3, "high": 1}`` / ``cat:lars,adamw`` -> Param."""
    if isinstance(spec, dict):
        kind = spec.get("type")
        if kind == "cat":
            return _checked(Param(name, "cat", choices=tuple(spec.get("choices", ()))))
        return _checked(Param(name, kind, spec.get("low"), spec.get("high"), spec.get("step")))
    if isinstance(spec, list):
        return _checked(Param(name, "cat", choices=tuple(spec)))
    text = str(spec).strip()
    kind, _, rest = text.partition(":")
    if kind == "cat":
        return _checked(
            Param(name, "cat", choices=tuple(parse_value(c.strip()) for c in rest.split(",") if c.strip()))
        )
    parts = rest.split(":")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise SweepError(f"search space {name}={text!r}: bounds must be numbers (e.g. log:1e-3:1)") from None
    if len(numbers) not in (2, 3):
        raise SweepError(f"search space {name}={text!r}: want KIND:LOW:HIGH[:STEP]")
    return _checked(Param(name, kind, numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None))


def _checked(p: Param) -> Param:
    if p.kind not in KINDS:
        raise SweepError(f"search space {p.name}: kind {p.kind!r} is not one of {', '.join(KINDS)}")
    if p.kind == "cat":
        if not p.choices:
            raise SweepError(f"search space {p.name}: cat needs at least one choice")
        bad = [c for c in p.choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise SweepError(f"search space {p.name}: choices must be numbers, strings, booleans: {bad}")
        return p
    if (
        p.low is None
        or p.high is None
        or not (math.isfinite(p.low) and math.isfinite(p.high) and p.low < p.high)
    ):
        raise SweepError(f"search space {p.name}: need finite LOW < HIGH, got {p.low}, {p.high}")
    if p.kind in ("log", "intlog") and p.low <= 0:
        raise SweepError(f"search space {p.name}: a log scale needs LOW > 0, got {p.low}")
    if p.kind in ("log", "intlog") and p.step:
        raise SweepError(f"search space {p.name}: a log scale takes no STEP")
    return p


def load_space_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(space, fixed) from a JSON or YAML file: ``{"space": {KEY: SPEC}, "fixed": {KEY: VALUE}}`` or a
    plain ``{KEY: SPEC}`` mapping."""
    text = Path(path).read_text()
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a search-space file holds a mapping")
    if "space" in data:
        return dict(data["space"]), dict(data.get("fixed") or {})
    return data, {}


def build_space(
    preset: str | None, specs: list[str], space_file: Path | None
) -> tuple[list[Param], dict[str, Any]]:
    """The search space (a preset, then a file, then ``--space`` items; later ones override) and the
    settings a preset or file fixes."""
    space: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    if preset:
        if preset not in SPACE_PRESETS:
            raise SweepError(f"unknown --space-preset {preset!r}; known: {', '.join(SPACE_PRESETS)}")
        space.update(SPACE_PRESETS[preset]["space"])
        fixed.update(SPACE_PRESETS[preset]["fixed"])
    if space_file is not None:
        file_space, file_fixed = load_space_file(space_file)
        space.update(file_space)
        fixed.update(file_fixed)
    for item in specs:
        key, sep, spec = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--space {item!r} is not KEY=SPEC (e.g. lr_weights=log:1e-3:1)")
        space[key.strip()] = spec.strip()
    for key in space:
        fixed.pop(key, None)
    params = [parse_spec(k, v) for k, v in space.items()]
    if not params:
        raise SweepError("empty search space: give --space-preset, --space-file or --space KEY=SPEC")
    return params, fixed


def trial_config(preset: str, overrides: list[str], values: dict[str, Any]) -> TrainConfig:
    """The preset + ``key=value`` overrides + the trial's values (JSON-encoded, so strings stay strings)."""
    return build_config(preset, list(overrides) + [f"{k}={json.dumps(v)}" for k, v in values.items()])


# --------------------------------------------------------------------------------------------------
# One trial: pre-training with reports
# --------------------------------------------------------------------------------------------------


def report_steps(total_steps: int, steps_per_epoch: int, unit: str, every: int) -> list[int]:
    """Steps after which the encoder is scored: every ``every`` epochs or steps, and at the end."""
    stride = every * (steps_per_epoch if unit == "epoch" else 1)
    return sorted(set(range(stride, total_steps + 1, stride)) | {total_steps})


ScoreFn = Callable[[torch.nn.Module, ModelConfig, TrainConfig], float]


def linear_score_fn(
    task: HearTask, settings: LinearEvalSettings, split: str, crop: bool, device: torch.device
) -> ScoreFn:
    """Linear evaluation of a training encoder on ``task``: the ``split`` score ("test", the paper's, or
    "valid"), inputs cropped to the run's crop_frames when ``crop``."""

    def score(encoder: torch.nn.Module, model_config: ModelConfig, cfg: TrainConfig) -> float:
        s = replace(settings, crop_frames=cfg.crop_frames if crop else None)
        result = evaluate_encoder(encoder, model_config, task, s, device)
        return result.score if split == "test" else result.valid_score

    return score


class MeanScore:
    """The mean of several tasks' scores (the objective when ``--task`` is given more than once); the
    last call's per-task scores stay in ``last`` for the trial's records."""

    def __init__(self, fns: dict[str, ScoreFn]):
        self.fns = fns
        self.last: dict[str, float] = {}

    def __call__(self, encoder: torch.nn.Module, model_config: ModelConfig, cfg: TrainConfig) -> float:
        self.last = {name: float(fn(encoder, model_config, cfg)) for name, fn in self.fns.items()}
        return sum(self.last.values()) / len(self.last)


def pretrain_with_reports(
    cfg: TrainConfig,
    dataset: ShardDataset,
    device: torch.device,
    score_fn: ScoreFn,
    unit: str,
    every: int,
    on_report: Callable[[int, int, float, float], None],
) -> tuple[engine.TrainState, ModelConfig]:
    """Pre-train ``cfg`` on ``dataset``; after each report step score the encoder with ``score_fn`` and
    call ``on_report(index, step, score, loss)`` (1-based index; it may raise to stop the run)."""
    state = engine.build(cfg, dataset, device)
    model_config = ModelConfig(
        encoder=cfg.encoder, encoder_kwargs=cfg.encoder_kwargs, frontend=dataset.frontend, norm=dataset.norm
    )
    when = report_steps(state.total_steps, state.steps_per_epoch, unit, every)
    index = 0
    for result in steps(state):
        if state.step in when:
            engine.check_finite(state)  # a NaN run fails the trial here (a device sync at reports only)
            index += 1
            on_report(index, state.step, score_fn(state.net.encoder, model_config, cfg), result.loss)
    engine.check_finite(state)
    return state, model_config


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


def make_storage(url: str, heartbeat: int):
    """Optuna RDB storage with heartbeats: a trial whose worker stops beating for 2 heartbeats is failed
    (and re-queued once) by the next worker that starts a trial, on any machine."""
    import optuna

    storages = optuna.storages
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
        callback = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:
        callback = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
    return storages.RDBStorage(url, heartbeat_interval=heartbeat, **callback)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_killed_trials(study, on_killed: str = "rerun") -> list[int]:
    """Trials left RUNNING by a worker of this machine that is gone (killed): marked FAIL with the error;
    with ``on_killed="rerun"`` their parameters are queued again (once). Trials of live workers, or of
    other machines, are left to them (and to the storage's heartbeat). Returns the numbers failed."""
    from optuna.trial import TrialState

    storage = study._storage
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") != socket.gethostname() or _pid_alive(int(worker.get("pid", -1))):
            continue
        try:
            storage.set_trial_user_attr(
                t._trial_id, "error", f"killed: worker pid {worker.get('pid')} is gone"
            )
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except RuntimeError:  # finished meanwhile
            continue
        failed.append(t.number)
        if on_killed == "rerun" and "retry_of" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
    return failed


def count_trials(study, states=COUNTED) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(getattr(TrialState, s) for s in states)))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def settings_record(args: argparse.Namespace, params: list[Param], fixed: dict[str, Any]) -> dict[str, Any]:
    """What a resumed sweep must repeat: the base settings, the space and how trials are scored."""
    return _jsonable(
        {
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
    )


def parse_enqueue(text: str, params: list[Param]) -> dict[str, Any]:
    """``"k=v k=v"``: values for a trial to run first. Every searched setting needs a value (a trial
    is one point of the space) and values must lie in it, else TPE would learn from a point it cannot
    sample."""
    by_name = {p.name: p for p in params}
    values: dict[str, Any] = {}
    for item in text.split():
        key, sep, raw = item.partition("=")
        if not sep or key not in by_name:
            raise SweepError(f"--enqueue {item!r}: use KEY=VALUE with KEY one of {sorted(by_name)}")
        p, value = by_name[key], parse_value(raw)
        inside = (
            value in p.choices
            if p.kind == "cat"
            else isinstance(value, (int, float)) and p.low <= value <= p.high
        )
        if not inside:
            raise SweepError(f"--enqueue {item!r}: outside the space {p.describe()}")
        values[key] = value
    missing = sorted(set(by_name) - set(values))
    if missing:
        raise SweepError(f"--enqueue {text!r}: no value for {missing}")
    return values


def run_sweep(args: argparse.Namespace) -> int:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params, fixed = build_space(
        args.space_preset, args.space, Path(args.space_file) if args.space_file else None
    )
    enqueued = [parse_enqueue(text, params) for text in args.enqueue or []]
    fixed_overrides = [f"{k}={json.dumps(v)}" for k, v in fixed.items()]
    base_overrides = fixed_overrides + list(args.overrides)
    if args.preset not in PRESETS:
        raise SweepError(f"unknown --preset {args.preset!r}; known: {', '.join(PRESETS)}")
    try:  # every setting checked before anything runs; a space over a setting that does not exist fails here
        # a point of the space: settings such as optimizer=adam are only valid with the searched ones
        low = {p.name: p.choices[0] if p.kind == "cat" else p.low for p in params}
        base = trial_config(args.preset, base_overrides, low)
        for p in params:  # each setting's ends (every choice), the others at their low end
            for value in p.choices if p.kind == "cat" else (p.high,):
                trial_config(args.preset, base_overrides, {**low, p.name: value})
    except ValueError as err:
        raise SweepError(str(err)) from err
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dataset = ShardDataset(args.data)
    try:
        names = task_names(args.task)
    except ValueError as err:
        raise SweepError(f"--task: {err}") from err
    fns: dict[str, ScoreFn] = {}
    for name, task_dir in zip(names, args.task):
        if args.eval_protocol == "logreg":  # the cheap probe: logistic regression, accuracy on valid
            from training.probe import LinearProbe

            probe = LinearProbe(task_dir, args.eval_max_clips or 2000)
            fns[name] = lambda encoder, model_config, cfg, probe=probe: probe.score(
                encoder, model_config, device
            )
        else:
            task = HearTask(task_dir, args.eval_max_clips, base.seed)
            settings = LinearEvalSettings(seed=base.seed)
            fns[name] = linear_score_fn(task, settings, args.eval_split, not args.no_eval_crop, device)
    score_fn = MeanScore(fns)
    steps_per_epoch = len(dataset) // base.batch_size
    total = engine.run_length(base, max(1, steps_per_epoch))
    n_reports = len(report_steps(total, max(1, steps_per_epoch), args.report_unit, args.report_every))

    storage_url = args.storage or f"sqlite:///{out / 'study.db'}"
    storage = make_storage(storage_url, args.heartbeat)
    study = optuna.create_study(
        storage=storage,
        study_name=args.study_name,
        direction="maximize",
        sampler=make_sampler(args.sampler, base.seed, args.startup_trials),
        pruner=make_pruner(args.pruner, n_reports),
        load_if_exists=True,
    )
    record = settings_record(args, params, fixed)
    known = study.user_attrs.get("settings")
    if known is None:
        study.set_user_attr("settings", record)
    elif known != record:
        diff = [k for k in record if record[k] != known.get(k)]
        raise SweepError(
            f"study {args.study_name!r} in {storage_url} was started with other settings ({', '.join(diff)}): "
            "repeat them to continue it, or use another --study-name or --out"
        )
    if known is None:  # a new study: the trials the user wants run first (e.g. today's recipe)
        for text, values in zip(args.enqueue or [], enqueued):
            study.enqueue_trial(values, user_attrs={"enqueued": text})
    killed = recover_killed_trials(study, args.on_killed)
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

    def objective(trial) -> float:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        t0 = time.perf_counter()
        trial_dir = out / "trials" / f"{trial.number:04d}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        values = {p.name: p.suggest(trial) for p in params}
        scores: list[float] = []
        try:
            cfg = trial_config(args.preset, base_overrides, values)
            atomic_write_text(
                trial_dir / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str) + "\n"
            )
            rows = [",".join(["report", "step", "score", *names, "loss", "seconds"])]
            per_task: list[dict[str, float]] = []

            def on_report(index: int, step: int, score: float, loss: float) -> None:
                scores.append(score)
                per_task.append(dict(score_fn.last))
                detail = ",".join(f"{per_task[-1][n]:.6g}" for n in names)
                rows.append(f"{index},{step},{score:.6g},{detail},{loss:.6g},{time.perf_counter() - t0:.1f}")
                atomic_write_text(trial_dir / "reports.csv", "\n".join(rows) + "\n")
                trial.set_user_attr("scores", scores)
                trial.set_user_attr("task_scores", per_task)
                trial.report(score, index)
                tasks_text = (
                    f" ({', '.join(f'{n} {v:.3f}' for n, v in per_task[-1].items())})"
                    if len(names) > 1
                    else ""
                )
                print(
                    f"  trial {trial.number} report {index} (step {step}): score {score:.4f}{tasks_text}, "
                    f"loss {loss:.2f}",
                    flush=True,
                )
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at report {index} (score {score:.4f})")

            state, model_config = pretrain_with_reports(
                cfg, dataset, device, score_fn, args.report_unit, args.report_every, on_report
            )
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            if args.save_models:
                from hear_abt.weights import save_pretrained

                save_pretrained(trial_dir / "model", model_config, state.net.encoder.state_dict())
            return max(scores) if args.objective == "best" else scores[-1]
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            print(f"  trial {trial.number} failed: {type(err).__name__}: {err}", flush=True)
            raise

    failures = 0
    started = time.time()
    while count_trials(study) < args.n_trials:
        if args.timeout and time.time() - started > args.timeout:
            print(f"--timeout {args.timeout} s reached: no new trial started", flush=True)
            break
        before = count_trials(study, ("FAIL",))
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
        if count_trials(study, ("FAIL",)) > before:
            failures += 1
            if failures >= args.max_failures:
                print(f"{failures} trials failed in this run (--max-failures): stopping", flush=True)
                break
    write_report(study, out, seed=base.seed)
    return 0


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


def write_report(study, out: Path, seed: int = 0) -> dict[str, Path]:
    """trials.csv, importances.json (fANOVA over the completed trials), best.json, summary.md, plots."""
    import optuna
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    paths = {"csv": out / "trials.csv", "md": out / "summary.md"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "value", *names, "reports", "seconds", "error"])
        for t in trials:
            w.writerow(
                [t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}"]
                + [t.params.get(n, "") for n in names]
                + [len(t.intermediate_values), t.user_attrs.get("seconds", ""), t.user_attrs.get("error", "")]
            )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    importances: dict[str, float] = {}
    note = ""
    if len(complete) >= 2:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (RuntimeError, ValueError) as err:
            note = f"fANOVA importances not computed: {err}"
    else:
        note = f"fANOVA importances need >= 2 completed (unpruned) trials; the study has {len(complete)}"
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
        "| trial | state | score | "
        + " | ".join(names)
        + " | per task (last report) | reports | s | error |",
        "|" + "---|" * (len(names) + 7),
    ]
    for t in trials:
        cells = [str(t.number), t.state.name, "-" if t.value is None else f"{t.value:.4f}"]
        cells += [_fmt(t.params.get(n)) for n in names]
        last_tasks = (t.user_attrs.get("task_scores") or [{}])[-1]
        cells.append(", ".join(f"{k} {v:.3f}" for k, v in last_tasks.items()) or "-")
        cells += [
            str(len(t.intermediate_values)),
            str(t.user_attrs.get("seconds", "")),
            str(t.user_attrs.get("error", ""))[:80],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "fANOVA importances: " + (", ".join(f"{k} {v:.2f}" for k, v in importances.items()) or note),
    ]
    lines += ["", "Plots: " + ", ".join(p.name for p in plots)]
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return paths


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


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


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m abt_eval.sweep",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 3)[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", required=True, help="pre-training data (`python -m training.prepare`)")
    ap.add_argument(
        "--task",
        required=True,
        action="append",
        help="HEAR scene task folder for the linear evaluation; repeat it to score the mean over tasks",
    )
    ap.add_argument("--out", required=True, help="output folder (study.db, trials/, plots/, summary.md)")
    ap.add_argument(
        "--preset", default="fsd50k-ablation", help="base training preset (default: fsd50k-ablation, App. B)"
    )
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="fixed settings on top of the preset")
    ap.add_argument(
        "--space", action="append", default=[], metavar="KEY=SPEC", help="a searched setting (repeatable)"
    )
    ap.add_argument(
        "--space-file", default=None, help="JSON or YAML: {KEY: SPEC} or {space: {...}, fixed: {...}}"
    )
    ap.add_argument(
        "--space-preset",
        default=None,
        help=f"the paper's spaces: {', '.join(SPACE_PRESETS)}",
    )
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
    ap.add_argument("--eval-max-clips", type=int, default=None, help="at most this many clips per split")
    ap.add_argument(
        "--no-eval-crop", action="store_true", help="embed whole clips (default: crop to crop_frames)"
    )
    ap.add_argument(
        "--objective", default="last", choices=("last", "best"), help="a trial's value: last or best report"
    )
    ap.add_argument("--storage", default=None, help="SQLAlchemy URL (default: sqlite:///OUT/study.db)")
    ap.add_argument("--study-name", default="abt-sweep")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
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
        "--enqueue",
        action="append",
        metavar="'K=V K=V'",
        help="a trial to run first in a new study (e.g. today's recipe as a reference; repeatable)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.max_failures is None:
        args.max_failures = args.n_trials
    if args.n_trials < 1 or args.report_every < 1 or args.heartbeat < 1:
        print("error: --n-trials, --report-every and --heartbeat must be >= 1", file=sys.stderr)
        return 2
    try:
        return run_sweep(args)
    except (SweepError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except engine.TrainingSetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
