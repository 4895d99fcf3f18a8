"""abt_eval.sweep (and sweep_space, sweep_report): search spaces, a 2-trial study with pruning, failures recorded, and kill + resume.

Tiny everything: 30 generated 2 s clips prepared with training.prepare, an 8-channel AudioNTT, a few
steps per trial, a tone task of 24 clips (``test_linear_eval.write_tone_task``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import soundfile as sf
import torch
from test_linear_eval import write_tone_task

from abt_eval import sweep, sweep_report, sweep_space
from hear_abt.weights import load_weights
from training import prepare
from training.config import PRESETS, build_config

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "--preset",
    "cpu-tiny",
    'encoder_kwargs={"channels": 8, "mlp_dim": 64}',
    "projector_hidden=128",
    "projector_out=64",
    "batch_size=8",
    "augment.mixup_bank_size=32",
    "steps=6",
]


def prepared_corpus(root: Path, n: int = 30) -> Path:
    """``n`` short clips (tones, chirps, noise bursts) prepared into shards under ``root/data``."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    for i in range(n):
        kind = i % 3
        if kind == 0:
            wave = np.sin(2 * np.pi * 150 * 2 ** (i / 6) * t)
        elif kind == 1:
            wave = np.sin(2 * np.pi * (300 + 1500 * t) * t) * np.exp(-t)
        else:
            wave = rng.standard_normal(t.size) * np.exp(-4 * (t % 0.5))
        sf.write(audio / f"c{i:02d}.wav", (0.3 * wave).astype(np.float32), 16000)
    prepare.prepare(audio, root / "data", workers=1, progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return prepared_corpus(root), write_tone_task(root / "tones")


def argv(data, task, out, *extra):
    return ["--data", str(data), "--task", str(task), "--out", str(out), *TINY, *extra]


def load(out, name="abt-sweep"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def test_space_specs_and_presets(tmp_path):
    p = sweep_space.parse_spec("lr_weights", "log:1e-3:1")
    assert (p.kind, p.low, p.high) == ("log", 1e-3, 1.0)
    assert sweep_space.parse_spec("optimizer", "cat:lars,adamw").choices == ("lars", "adamw")
    assert sweep_space.parse_spec("augment.mixup", "cat:true,false").choices == (True, False)
    assert sweep_space.parse_spec("batch_size", "int:16:64:16").step == 16
    for bad in ("log:0:1", "float:1:0", "log:a:b", "beta:0:1", "cat:"):
        with pytest.raises(sweep_space.SweepError):
            sweep_space.parse_spec("x", bad)
    params, fixed = sweep_space.build_space("paper-lars", ["lr_biases=log:1e-5:1e-3"], None)
    assert {p.name: (p.low, p.high) for p in params} == {
        "lr_weights": (1e-3, 1.0),
        "lr_biases": (1e-5, 1e-3),
        "weight_decay": (1e-8, 1e-4),
    }
    assert fixed == {"optimizer": "lars"}
    params, fixed = sweep_space.build_space("paper-adamw", [], None)
    assert fixed["optimizer"] == "adamw" and {p.name for p in params} == {"lr_weights", "weight_decay"}
    for preset, optimizer in (("paper-adam", "adam"), ("paper-sgd", "sgd")):
        params, fixed = sweep_space.build_space(preset, [], None)
        assert fixed["optimizer"] == optimizer
        assert {p.name: (p.kind, p.low, p.high) for p in params} == {
            "lr_weights": ("log", 1e-6, 1e-2),
            "weight_decay": ("log", 1e-3, 1.0),
        }
        cfg = sweep_space.trial_config(
            "cpu-tiny", [f"optimizer={optimizer}"], {"lr_weights": 1e-4, "weight_decay": 0.1}
        )
        assert (cfg.optimizer, cfg.lr_weights, cfg.weight_decay) == (optimizer, 1e-4, 0.1)
    space_file = tmp_path / "space.yaml"
    space_file.write_text("space:\n  augment.mixup_ratio: float:0:0.5\nfixed:\n  optimizer: adamw\n")
    params, fixed = sweep_space.build_space(None, [], space_file)
    assert params[0].name == "augment.mixup_ratio" and fixed == {"optimizer": "adamw"}
    cfg = sweep_space.trial_config("cpu-tiny", [], {"augment.mixup_ratio": 0.3, "optimizer": "adamw"})
    assert cfg.augment.mixup_ratio == 0.3 and cfg.optimizer == "adamw"
    assert sweep.make_sampler("tpe", 0, 3)._n_startup_trials == 3
    with pytest.raises(sweep_space.SweepError, match="startup-trials"):
        sweep.make_sampler("tpe", 0, 0)
    assert sweep.report_steps(10, 4, "epoch", 1) == [4, 8, 10]
    assert sweep.report_steps(10, 4, "steps", 3) == [3, 6, 9, 10]


def test_two_trials_pruned_and_reported(setup, tmp_path):
    data, task = setup
    out = tmp_path / "out"
    extra = ["--space", "lr_weights=log:1e-2:1", "--n-trials", "2", "--report-unit", "steps"]
    extra += ["--report-every", "3", "--pruner", "threshold:1.01", "--eval-max-clips", "6"]
    assert sweep.main(argv(data, task, out, *extra)) == 0
    study = load(out)
    trials = study.get_trials()
    # Every score is below 1.01: each trial is pruned at its first report (step 3 of 6).
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert all(list(t.intermediate_values) == [1] for t in trials)
    assert (out / "trials" / "0000" / "reports.csv").read_text().count("\n") == 2
    # The time of each report is kept with the trial (what a killed trial's cost is counted from).
    for t in trials:
        (at,) = t.user_attrs["report_seconds"]
        last = (out / "trials" / f"{t.number:04d}" / "reports.csv").read_text().splitlines()[-1]
        assert 0 < at <= t.user_attrs["seconds"] and float(last.split(",")[-1]) == at
    summary = (out / "summary.md").read_text()
    assert "PRUNED" in summary and "Cost: " in summary and "(0 complete 0.00 h, 2 pruned " in summary


def test_several_tasks_score_their_mean(setup, tmp_path):
    data, task = setup
    other = write_tone_task(tmp_path / "tones-b", seed=1)
    out = tmp_path / "out"
    extra = ["--task", str(other), "--space", "lr_weights=log:1e-2:1", "--n-trials", "1"]
    extra += ["--enqueue", "lr_weights=0.4"]
    extra += ["--report-unit", "steps", "--report-every", "6", "--pruner", "none", "--eval-max-clips", "6"]
    assert sweep.main(argv(data, task, out, *extra)) == 0
    (trial,) = load(out).get_trials()
    per_task = trial.user_attrs["task_scores"][-1]
    assert set(per_task) == {"tones", "tones-b"}
    assert trial.value == pytest.approx(sum(per_task.values()) / 2)
    assert trial.params == {"lr_weights": 0.4} and trial.user_attrs["enqueued"] == "lr_weights=0.4"
    header = (out / "trials" / "0000" / "reports.csv").read_text().splitlines()[0]
    assert header == "report,step,score,tones,tones-b,loss,seconds"
    # Two folders of one name cannot be told apart in the records: refused.
    assert sweep.main(argv(data, task, tmp_path / "o2", "--task", str(task), *extra[2:])) == 2


def test_a_continued_study_refuses_a_preset_whose_values_changed(setup, tmp_path, monkeypatch, capsys):
    """The record holds the resolved settings, not only the preset's name: a release that changes
    cpu-tiny's projector would silently change a continued study's trials. Searched settings may
    change (the space overrides them), and a study recorded before the base was kept continues."""
    data, task = setup
    out = tmp_path / "out"
    extra = ["--space", "lr_weights=log:1e-2:1", "--report-unit", "steps", "--report-every", "6"]
    extra += ["--pruner", "none", "--eval-max-clips", "6", "--sampler", "random"]
    assert sweep.main(argv(data, task, out, *extra, "--n-trials", "1")) == 0
    base = load(out).user_attrs["settings"]["base"]
    assert base["projector_depth"] == build_config("cpu-tiny").projector_depth == 2
    assert "lr_weights" not in base and base["augment.mixup_bank_size"] == 32

    tiny = dict(PRESETS["cpu-tiny"])
    monkeypatch.setitem(PRESETS, "cpu-tiny", {**tiny, "projector_depth": 3})
    assert sweep.main(argv(data, task, out, *extra, "--n-trials", "2")) == 2
    err = capsys.readouterr().err
    assert "started with other settings (projector_depth: 2 -> 3)" in err and "as overrides" in err
    assert len(load(out).get_trials()) == 1

    monkeypatch.setitem(PRESETS, "cpu-tiny", {**tiny, "lr_weights": 0.5})
    study = load(out)
    settings = study.user_attrs["settings"]
    study.set_user_attr("settings", {k: v for k, v in settings.items() if k != "base"})  # an older study
    assert sweep.main(argv(data, task, out, *extra, "--n-trials", "2")) == 0
    assert load(out).user_attrs["settings"] == settings  # the base is kept from now on
    assert len(load(out).get_trials()) == 2


def test_a_sweep_over_the_papers_sgd_space_trains(setup, tmp_path):
    # optimizer=sgd is only valid with a rate and a decay: the space supplies them.
    data, task = setup
    out = tmp_path / "out"
    extra = ["--space-preset", "paper-sgd", "--n-trials", "1", "--report-unit", "steps"]
    extra += ["--report-every", "6", "--pruner", "none", "--eval-max-clips", "6"]
    assert sweep.main(argv(data, task, out, *extra)) == 0
    (trial,) = load(out).get_trials()
    assert trial.state.name == "COMPLETE" and set(trial.params) == {"lr_weights", "weight_decay"}
    config = json.loads((out / "trials" / "0000" / "config.json").read_text())
    assert config["optimizer"] == "sgd" and config["lr_weights"] == trial.params["lr_weights"]


def test_enqueued_trials_must_be_points_of_the_space():
    params, _ = sweep_space.build_space(None, ["lr_weights=log:1e-2:1", "optimizer=cat:lars,adamw"], None)
    assert sweep_space.parse_enqueue("lr_weights=0.4 optimizer=adamw", params) == {
        "lr_weights": 0.4,
        "optimizer": "adamw",
    }
    for bad, why in [
        ("lr_weights=2 optimizer=lars", "outside"),
        ("lr_weights=0.4 optimizer=sgd", "outside"),
        ("lr_weights=0.4", "no value"),
        ("lr_weights=0.4 optimizer=lars lambd=0.1", "KEY one of"),
    ]:
        with pytest.raises(sweep_space.SweepError, match=why):
            sweep_space.parse_enqueue(bad, params)


@pytest.mark.slow
def test_hyperband_study_writes_db_importances_and_plots(setup, tmp_path):
    data, task = setup
    out = tmp_path / "out"
    extra = ["--space", "lr_weights=log:1e-2:1", "--space", "augment.mixup_ratio=float:0:0.4"]
    extra += ["--n-trials", "2", "--report-unit", "steps", "--report-every", "3", "--eval-max-clips", "6"]
    assert sweep.main(argv(data, task, out, *extra)) == 0
    study = load(out)
    assert isinstance(study.pruner, optuna.pruners.BasePruner)
    done = [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2 and all(t.intermediate_values for t in done)
    assert (out / "study.db").stat().st_size > 0
    assert (out / "plots" / "history.png").stat().st_size > 1000
    assert "fanova" in json.loads((out / "importances.json").read_text())
    # The same command again: the study is complete, nothing new runs.
    assert sweep.main(argv(data, task, out, *extra)) == 0
    assert len(load(out).get_trials()) == 2
    # Other settings on the same study are refused.
    assert sweep.main(argv(data, task, out, *extra[:2], "--n-trials", "2")) == 2


def test_report_has_fanova_importances_and_plots(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    dists = {
        "lr_weights": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(1e-8, 1e-4, log=True),
    }
    rng = np.random.default_rng(0)
    for _ in range(12):  # the score depends on lr_weights only
        lr, wd = 10 ** rng.uniform(-3, 0), 10 ** rng.uniform(-8, -4)
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr_weights": lr, "weight_decay": wd},
                distributions=dists,
                value=float(np.log10(lr)),
                intermediate_values={1: float(np.log10(lr)) - 0.1, 2: float(np.log10(lr))},
            )
        )
    paths = sweep_report.write_report(study, tmp_path)
    imp = json.loads(paths["importances"].read_text())["fanova"]
    assert imp["lr_weights"] > 0.8 > imp["weight_decay"]
    for name in ("history", "importances", "parallel_coordinate", "slice", "intermediate_values"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000, name
    assert json.loads(paths["best"].read_text())["params"]["lr_weights"] == study.best_params["lr_weights"]


def test_failed_trial_is_recorded_and_does_not_stop_the_study(setup, tmp_path):
    data, task = setup
    out = tmp_path / "out"
    extra = [
        "--space",
        "batch_size=cat:8,1000",
        "--n-trials",
        "1",
        "--max-failures",
        "3",
        "--sampler",
        "random",
    ]
    extra += ["--report-unit", "steps", "--report-every", "6", "--eval-max-clips", "6", "--pruner", "none"]
    assert sweep.main(argv(data, task, out, *extra)) == 0
    trials = load(out).get_trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert all("do not fill one batch" in t.user_attrs["error"] for t in failed)
    assert [t.state.name for t in trials].count("COMPLETE") == 1  # the study went on after each failure


@pytest.mark.slow
def test_sigkill_mid_study_then_resume(setup, tmp_path):
    data, task = setup
    out = tmp_path / "out"
    extra = ["--space", "lr_weights=log:1e-2:1", "--n-trials", "3", "--pruner", "none"]
    extra += ["--report-unit", "steps", "--report-every", "3", "--eval-max-clips", "6"]
    cmd = [sys.executable, "-m", "abt_eval.sweep", *argv(data, task, out, *extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out / "trials" / "0001" / "config.json"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = load(out).get_trials()
    assert [t.state.name for t in killed] == ["COMPLETE", "RUNNING"]

    assert sweep.main(argv(data, task, out, *extra)) == 0
    trials = load(out).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states[1] == "FAIL"
    assert "killed" in trials[1].user_attrs["error"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == trials[1].params and retry[0].state.name == "COMPLETE"


# ---- probe seeds -----------------------------------------------------------------------------------


def test_seeded_linear_eval_embeds_once_and_scores_each_seed(setup, monkeypatch):
    import torch
    from test_linear_eval import TINY as TINY_MODEL

    from abt_eval import search_args
    from hear_abt.embedder import ABTEmbedder
    from training import linear_eval

    _, task_dir = setup
    torch.manual_seed(3)
    model = ABTEmbedder(TINY_MODEL)
    task = linear_eval.HearTask(task_dir)
    settings = linear_eval.LinearEvalSettings(seed=5, crop_frames=50, max_epochs=20)
    alone = linear_eval.evaluate(model, task, settings)
    embeds, seeds_scored = [], []
    real_embed, real_score = linear_eval.embed_task, linear_eval.score_embeddings
    monkeypatch.setattr(linear_eval, "embed_task", lambda *a: embeds.append(a[3].seed) or real_embed(*a))
    monkeypatch.setattr(
        linear_eval, "score_embeddings", lambda e, t, s: seeds_scored.append(s.seed) or real_score(e, t, s)
    )
    results = search_args.seeded_linear_eval(model, task, settings, [5, 6, 7], "cpu")
    assert embeds == [5] and seeds_scored == [5, 6, 7]  # crops of the run's seed, one classifier per seed
    # The first seed is exactly the one-seed evaluation.
    assert (results[0].score, results[0].valid_score) == (alone.score, alone.valid_score)
    assert search_args.probe_seed_list(5, 3) == [5, 6, 7]
    with pytest.raises(ValueError):
        search_args.probe_seed_list(5, 0)


def test_probe_seeds_are_recorded_and_averaged(setup, tmp_path):
    data, task = setup
    out = tmp_path / "out"
    extra = ["--space", "lr_weights=log:1e-2:1", "--n-trials", "1", "--probe-seeds", "3"]
    extra += ["--report-unit", "steps", "--report-every", "6", "--pruner", "none", "--eval-max-clips", "6"]
    assert sweep.main(argv(data, task, out, *extra)) == 0
    (trial,) = load(out).get_trials()
    values = trial.user_attrs["objective_seeds"]
    assert len(values) == 3 and trial.user_attrs["seed_scores"] == [values]
    assert trial.value == pytest.approx(sum(values) / 3)
    assert json.loads((out / "best.json").read_text())["indistinguishable_from_best"] == [0]
    assert load(out).user_attrs["settings"]["probe_seeds"] == 3
    # The logistic-regression probe has no seed to vary.
    logreg = argv(data, task, tmp_path / "o2", *extra, "--eval-protocol", "logreg")
    assert sweep.main(logreg) == 2


def scored_study(folder: Path, name: str, per_seed: dict, settings: dict | None = None):
    """A study of completed trials, one per ``{value of setting name: probe-seed scores}`` entry, each
    scored as the sweep records it (``objective_seeds``, value their mean)."""
    study = optuna.create_study(storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    if settings:
        study.set_user_attr("settings", settings)
    dist = {name: optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    for x, values in per_seed.items():
        study.add_trial(
            optuna.trial.create_trial(
                params={name: x},
                distributions=dist,
                value=sum(values) / len(values),
                user_attrs={"objective_seeds": values},
            )
        )
    return study


def test_report_says_which_trials_are_indistinguishable_from_the_best(tmp_path):
    per_seed = {
        0.1: [0.60, 0.62, 0.58],  # the best mean, 0.6
        0.2: [0.59, 0.63, 0.55],  # differences -0.01 +0.01 -0.03: indistinguishable
        0.3: [0.40, 0.41, 0.45],  # differences -0.20 -0.21 -0.13: worse
    }
    study = scored_study(tmp_path, "lr_weights", per_seed)
    compared = sweep_report.vs_best(study.get_trials())
    assert compared[0] == (pytest.approx(4.302653 * 0.02 / np.sqrt(3), rel=1e-6), None)
    assert compared[1][1].verdict == "indistinguishable at 95%"
    assert compared[2][1].verdict == "worse" and compared[2][1].mean_diff == pytest.approx(-0.18)
    assert sweep_report.same_as_best(compared) == [0, 1]
    paths = sweep_report.write_report(study, tmp_path)
    md = paths["md"].read_text()
    assert "| 0 | COMPLETE | 0.6000 ± 0.0497 | best |" in md
    assert "| 2 | COMPLETE | 0.4200 ± 0.0657 | worse (p=0.019) |" in md
    assert "Indistinguishable from the best at 95% (paired t over 3 probe seeds" in md
    assert md.count("trial 0, trial 1") == 1
    best = json.loads(paths["best"].read_text())
    assert best["number"] == 0 and best["indistinguishable_from_best"] == [0, 1]
    header = paths["csv"].read_text().splitlines()[0]
    assert header.endswith("half_width_95,vs_best")


def test_report_tests_pretrained_trials_over_their_runs_not_their_probe_seeds(tmp_path):
    """--pretrain-seeds 2 with 2 probe seeds: 4 scores per trial, run after run. The probe seeds of a
    run share its encoder, so the interval and the test take the 2 runs' means as the samples."""
    per_seed = {
        0.002: [0.70, 0.72, 0.80, 0.78],  # runs 0.71, 0.79: mean 0.75
        0.004: [0.69, 0.71, 0.77, 0.75],  # runs 0.70, 0.76: 0.01 and 0.03 below
    }
    study = scored_study(tmp_path, "lambd", per_seed, {"pretrain_seeds": 2, "probe_seeds": 2})
    assert sweep_report.per_run([0.70, 0.72, 0.80, 0.78], 2) == pytest.approx([0.71, 0.79])
    assert sweep_report.per_run([0.1, 0.2, 0.3], 2) == [0.1, 0.2, 0.3]  # not run after run: as given
    compared = sweep_report.vs_best(study.get_trials(), runs=2)
    # t(0.975, 1 df) = 12.7062; the runs' sd is 0.08 / sqrt(2), so the half-width is 12.7062 * 0.04.
    assert compared[0][0] == pytest.approx(12.7062047 * 0.04, rel=1e-6)
    test = compared[1][1]
    assert test.n == 2 and test.mean_diff == pytest.approx(-0.02)
    # Over the 4 probe-seed pairs (differences -0.01 -0.01 -0.03 -0.03) the same trials look "worse".
    assert sweep_report.vs_best(study.get_trials())[1][1].verdict == "worse"
    assert test.verdict == "indistinguishable at 95%"
    md = sweep_report.write_report(study, tmp_path)["md"].read_text()
    assert "paired t over 2 pre-training seeds (each the mean over its probe seeds)" in md


def test_report_of_a_confirmation_names_the_trials_it_re_runs(tmp_path):
    """--enqueue-top trials carry top_of; a retry of a killed one carries retry_of. The table says which
    trial of the other study each re-runs, and fANOVA is not computed over chosen points."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    dist = {"lambd": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    top = {"study": "search", "trial": 10, "value": 0.7314}
    attrs = [{"top_of": top}, {"top_of": {**top, "trial": 17, "value": 0.725}}, {"retry_of": 0}]
    for i, (lambd, a) in enumerate(zip((0.003, 0.009, 0.003), attrs)):
        state = optuna.trial.TrialState.FAIL if i == 0 else optuna.trial.TrialState.COMPLETE
        study.add_trial(
            optuna.trial.create_trial(
                params={"lambd": lambd},
                distributions=dist,
                value=None if i == 0 else 0.7 + i / 100,
                user_attrs=a,
                state=state,
            )
        )
    md = sweep_report.write_report(study, tmp_path)["md"].read_text()
    assert "| trial | re-runs | state |" in md
    assert "| 2 | search trial 10 (0.7314) | COMPLETE |" in md  # the retry of trial 0
    assert "| 1 | search trial 17 (0.7250) | COMPLETE |" in md
    assert "every trial re-runs another study's" in md


def test_pretrain_seeds_run_in_lockstep_each_as_it_would_alone(setup, tmp_path):
    """--pretrain-seeds 2: two runs (seeds S, S+1) per trial, each the run a sweep with that seed trains
    alone (weights bit for bit), the trial's scores their mean, the per-seed records run after run."""
    data, task = setup
    common = ["--n-trials", "1", "--report-unit", "steps", "--report-every", "3", "--pruner", "none"]
    common += ["--eval-max-clips", "6", "--probe-seeds", "2", "--save-models"]
    common += ["--space", "lr_weights=log:1e-2:1", "--enqueue", "lr_weights=0.1"]
    assert sweep.main(argv(data, task, tmp_path / "both", *common, "--pretrain-seeds", "2")) == 0
    (both,) = load(tmp_path / "both").get_trials()
    seed = json.loads((tmp_path / "both" / "trials" / "0000" / "config.json").read_text())["seed"]
    assert load(tmp_path / "both").user_attrs["settings"]["pretrain_seeds"] == 2
    assert len(both.user_attrs["objective_seeds"]) == 4  # 2 runs x 2 probe seeds
    assert both.value == pytest.approx(sum(both.user_attrs["objective_seeds"]) / 4, rel=1e-12)
    assert list(both.intermediate_values) == [1, 2]
    assert both.intermediate_values[2] == both.value

    assert sweep.main(argv(data, task, tmp_path / "alone0", *common)) == 0
    assert sweep.main(argv(data, task, tmp_path / "alone1", *common, f"seed={seed + 1}")) == 0
    for i, name in ((0, "model"), (1, "model-seed1")):
        got = load_weights(tmp_path / "both" / "trials" / "0000" / name).state_dict
        want = load_weights(tmp_path / f"alone{i}" / "trials" / "0000" / "model").state_dict
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), name
    # Run 0 is scored with the same probe seeds as the run alone with seed S: the same scores.
    (alone0,) = load(tmp_path / "alone0").get_trials()
    assert both.user_attrs["objective_seeds"][:2] == alone0.user_attrs["objective_seeds"]
    assert not (tmp_path / "alone0" / "trials" / "0000" / "model-seed1").exists()
    assert sweep.main(argv(data, task, tmp_path / "bad", *common, "--pretrain-seeds", "0")) == 2
