"""Search spaces of ``abt_eval.sweep``: the SPEC grammar, the paper's spaces, space files, trial configs.

SPEC: ``log:LOW:HIGH`` (float, log scale), ``float:LOW:HIGH[:STEP]``, ``int:LOW:HIGH[:STEP]``,
``intlog:LOW:HIGH``, ``cat:A,B,C`` (values parsed as JSON where they can be: numbers, true/false); in a
space file also ``{"type": KIND, "low": ..., "high": ..., "step": ...}`` or a list of choices.
docs/search.md ("Sweeps") has more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import PRESETS, TrainConfig, build_config, parse_value

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


class SweepError(ValueError):
    """Bad arguments or a study that does not match them; the message says what to change."""


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


def top_enqueues(study, k: int, params: list[Param]) -> list[tuple[str, dict[str, Any], int, float]]:
    """The ``k`` best complete trials of ``study`` (best first; ties: the earlier trial) as ``--enqueue``
    text and values, with trial number and value; each must be a point of ``params``' space."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < k:
        raise SweepError(f"--enqueue-top {k}: study {study.study_name!r} has {len(done)} complete trials")
    best = sorted(done, key=lambda t: (-t.value, t.number))[:k]
    out = []
    for t in best:
        text = " ".join(f"{key}={json.dumps(value)}" for key, value in sorted(t.params.items()))
        out.append((text, parse_enqueue(text, params), t.number, t.value))  # refuses another space
    return out


def check_space(preset: str, overrides: list[str], params: list[Param]) -> TrainConfig:
    """Check every setting before anything runs (a space over a setting that does not exist fails here);
    returns the config at the space's low corner, whose seed, batch and length every trial shares."""
    if preset not in PRESETS:
        raise SweepError(f"unknown --preset {preset!r}; known: {', '.join(PRESETS)}")
    try:
        # a point of the space: settings such as optimizer=adam are only valid with the searched ones
        low = {p.name: p.choices[0] if p.kind == "cat" else p.low for p in params}
        base = trial_config(preset, overrides, low)
        for p in params:  # each setting's ends (every choice), the others at their low end
            for value in p.choices if p.kind == "cat" else (p.high,):
                trial_config(preset, overrides, {**low, p.name: value})
    except ValueError as err:
        raise SweepError(str(err)) from err
    return base
