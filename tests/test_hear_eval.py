"""abt_eval.hear_eval (and hear_scores, hear_report): score collection, the results table, resume and the
random-init baseline.

heareval itself is not run here (a real run takes about a minute per (model, task) pair): the subprocess
runner is replaced by a fake that writes what heareval writes, shaped as heareval 2021.1.3 writes it
(``heareval/predictions/task_predictions.py``: ``task_predictions`` / ``aggregate_test_results``).
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from sounds import needs_sound_programs

from abt_eval import hear_eval, hear_tools
from abt_eval.hear_report import results_table, write_outputs
from abt_eval.hear_scores import (
    EvalError,
    TaskScore,
    collect_scores,
    pct_vs_random,
    primary_metric,
    read_primary_score,
)
from hear_abt.config import ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import WEIGHTS_ENV, load_weights, save_pretrained

HPARAMS = {
    "batch_size": 1024,
    "hidden_dim": 64,
    "lr": 0.0001,
    "max_epochs": 10,
    "optim": "<class 'torch.optim.adam.Adam'>",
}


def split_results(metrics: dict[str, float], loss: float = 2.0) -> dict:
    """One test split's entry: trainer.test() logs + what task_predictions adds."""
    first = next(iter(metrics))
    out = {"test_loss": loss, "test_score": metrics[first]}
    out.update({f"test_{k}": v for k, v in metrics.items()})
    out.update({"validation_score": 0.5, "epoch": 3, "time_in_min": 0.05})
    return out


def scores_trainvaltest(metrics: dict[str, float], embedding_path: str = "/x") -> dict:
    return {
        "test": split_results(metrics),
        "hparams": HPARAMS,
        "postprocessing": [],
        "score_mode": "max",
        "embedding_path": embedding_path,
    }


def scores_kfold(per_fold: list[dict[str, float]], embedding_path: str = "/x") -> dict:
    """k folds ``fold00``.. plus aggregated_scores: ``<key>_mean``/``<key>_std`` (pandas, ddof=1)."""
    data = {f"fold{i:02d}": split_results(m) for i, m in enumerate(per_fold)}
    agg = {}
    for key in data["fold00"]:
        values = [data[f][key] for f in data]
        mean = sum(values) / len(values)
        agg[f"{key}_mean"] = mean
        agg[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    data["aggregated_scores"] = agg
    data.update(
        {"hparams": HPARAMS, "postprocessing": [], "score_mode": "max", "embedding_path": embedding_path}
    )
    return data


def write_task(folder: Path, evaluation: list[str], split_mode: str = "trainvaltest") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    splits = ["train", "valid", "test"] if split_mode == "trainvaltest" else ["fold00", "fold01", "fold02"]
    meta = {
        "task_name": folder.name,
        "embedding_type": "event" if any("fms" in e or "_er" in e for e in evaluation) else "scene",
        "prediction_type": "multiclass",
        "split_mode": split_mode,
        "splits": splits,
        "sample_duration": 1.0,
        "evaluation": evaluation,
    }
    (folder / "task_metadata.json").write_text(json.dumps(meta))
    return folder


# ---- primary metric, score files ----------------------------------------------------------------


def test_primary_metric_is_first_evaluation_entry(tmp_path):
    assert primary_metric(write_task(tmp_path / "ev", ["event_onset_200ms_fms", "segment_1s_er"])) == (
        "event_onset_200ms_fms"
    )
    assert primary_metric(write_task(tmp_path / "p", ["pitch_acc", "chroma_acc"])) == "pitch_acc"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "task_metadata.json").write_text(json.dumps({"evaluation": []}))
    with pytest.raises(EvalError, match="evaluation"):
        primary_metric(bad)
    with pytest.raises(EvalError, match="missing"):
        primary_metric(tmp_path / "nope")


def test_read_trainvaltest_scores(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(scores_trainvaltest({"pitch_acc": 0.25, "chroma_acc": 0.75}), indent=4))
    s = read_primary_score(path, "pitch_acc")
    assert (s.value, s.std, s.n_folds, s.lower_is_better) == (0.25, None, 1, False)
    assert read_primary_score(path, "chroma_acc").value == 0.75
    with pytest.raises(EvalError, match="test_top1_acc"):
        read_primary_score(path, "top1_acc")


def test_read_kfold_scores_use_the_mean_over_folds(tmp_path):
    path = tmp_path / "s.json"
    folds = [{"top1_acc": 0.5}, {"top1_acc": 0.6}, {"top1_acc": 0.7}]
    path.write_text(json.dumps(scores_kfold(folds)))
    s = read_primary_score(path, "top1_acc")
    assert s.value == pytest.approx(0.6) and s.std == pytest.approx(0.1) and s.n_folds == 3


def test_read_event_scores_pick_the_metric_not_its_subscores(tmp_path):
    # Tuple-valued scores log test_<metric> (the first subscore) and test_<metric>_<subscore>.
    metrics = {
        "event_onset_200ms_fms": 0.4,
        "event_onset_200ms_fms_f_measure": 0.4,
        "event_onset_200ms_fms_precision": 0.9,
        "event_onset_200ms_fms_recall": 0.1,
        "segment_1s_er": 0.8,
        "segment_1s_er_error_rate": 0.8,
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(scores_trainvaltest(metrics)))
    assert read_primary_score(path, "event_onset_200ms_fms").value == 0.4
    er = read_primary_score(path, "segment_1s_er")
    assert er.value == 0.8 and er.lower_is_better


def test_collect_scores_reads_each_models_folder(tmp_path):
    out = tmp_path / "out"
    for model, acc in [("a", 0.5), ("b", 0.25)]:
        d = write_task(hear_eval.embed_task_dir(out, model, "words"), ["top1_acc"])
        (d / "test.predicted-scores.json").write_text(json.dumps(scores_trainvaltest({"top1_acc": acc})))
        d = write_task(hear_eval.embed_task_dir(out, model, "kf"), ["mAP"], "new_split_kfold")
        folds = [{"mAP": acc}, {"mAP": acc + 0.1}]
        (d / "test.predicted-scores.json").write_text(json.dumps(scores_kfold(folds)))
    write_task(hear_eval.embed_task_dir(out, "a", "unfinished"), ["top1_acc"])  # no scores yet
    scores = collect_scores(out, ["a", "b"], ["words", "kf", "unfinished"])
    assert scores["a"]["words"] == TaskScore("top1_acc", 0.5, seeds=((42, 0.5),))
    assert scores["b"]["kf"].value == pytest.approx(0.3) and scores["b"]["kf"].metric == "mAP"
    assert "unfinished" not in scores["a"]


def test_options_change_the_folder_as_heareval_does(tmp_path):
    d = hear_eval.embed_task_dir(
        tmp_path, "m", "t", "hear_abt", {"timestamp_mode": "fast", "window_batch": 8}
    )
    assert d == tmp_path / "embeddings" / "m" / "hear_abt-timestamp-mode=fast-window-batch=8" / "t"


# ---- % vs random and the table -------------------------------------------------------------------


def test_pct_vs_random_sign():
    assert pct_vs_random(0.6, 0.4, False) == pytest.approx(50.0)
    assert pct_vs_random(0.3, 0.4, False) == pytest.approx(-25.0)
    # error rate: 0.5 vs random 0.8 is better: (0.5 - 0.8) / 0.8 = -37.5 %, reported as +37.5 %
    assert pct_vs_random(0.5, 0.8, True) == pytest.approx(37.5)
    assert pct_vs_random(1.0, 0.8, True) == pytest.approx(-25.0)
    assert pct_vs_random(0.5, 0.0, False) is None


def example_scores():
    return {
        "abt": {
            "words": TaskScore("top1_acc", 0.6),
            "pitch": TaskScore("pitch_acc", 0.3),
            "events": TaskScore("segment_1s_er", 0.5),
        },
        "abt-random": {
            "words": TaskScore("top1_acc", 0.4),
            "pitch": TaskScore("pitch_acc", 0.2),
            "events": TaskScore("segment_1s_er", 0.8),
        },
    }


def test_results_table_numbers():
    table = results_table(example_scores(), {"abt": "abt-random"}, ["words", "pitch", "events"])
    assert table.pct["words"]["abt"] == pytest.approx(50.0)
    assert table.pct["pitch"]["abt"] == pytest.approx(50.0)
    assert table.pct["events"]["abt"] == pytest.approx(37.5)
    # the average is over higher-is-better tasks only: (0.6 + 0.3) / 2 vs (0.4 + 0.2) / 2
    assert table.average_tasks == ["words", "pitch"]
    assert table.average["abt"] == pytest.approx(0.45) and table.average["abt-random"] == pytest.approx(0.3)
    assert table.average_pct["abt"] == pytest.approx(50.0)
    assert table.mean_pct["abt"] == pytest.approx((50 + 50 + 37.5) / 3)
    md = table.to_markdown()
    assert "abt: % vs random (+ = better)" in md.splitlines()[0]
    assert "| events | segment_1s_er ↓ | 0.5000 | 0.8000 | +37.5% |" in md
    assert "| words | top1_acc ↑ | 0.6000 | 0.4000 | +50.0% |" in md
    assert "sign is flipped" in md


def test_results_table_missing_scores_and_no_baseline():
    scores = {"a": {"t1": TaskScore("top1_acc", 0.5)}, "b": {}}
    table = results_table(scores, {}, ["t1"])
    assert table.scores["t1"]["b"] is None and table.average_tasks == []
    assert "| t1 | top1_acc ↑ | 0.5000 | - |" in table.to_markdown()


def test_write_outputs(tmp_path):
    table = results_table(example_scores(), {"abt": "abt-random"}, ["words", "pitch", "events"])
    paths = write_outputs(tmp_path / "o", table)
    assert paths["md"].read_text() == table.to_markdown()
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == [
        "task",
        "metric",
        "higher_is_better",
        "abt",
        "abt-random",
        "abt: % vs random (+ = better)",
    ]
    assert rows[3][:3] == ["events", "segment_1s_er", "false"]
    assert float(rows[3][5]) == pytest.approx(37.5)
    assert rows[4][0].startswith("average") and float(rows[4][3]) == pytest.approx(0.45)
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


# ---- running (with a fake heareval) ---------------------------------------------------------------


class FakeHeareval:
    """Stands in for ``run_logged``: does what the two runners leave on disk."""

    def __init__(self, accuracy: dict[str, float] | None = None, fail_tasks=(), seed_effect=None):
        self.calls: list[tuple[str, str, dict]] = []  # (mode, task, env)
        self.cmds: list[list[str]] = []
        self.accuracy = accuracy or {}
        self.fail_tasks = set(fail_tasks)
        # (model, probe seed) -> what that seed adds to the model's accuracy (default: nothing)
        self.seed_effect = seed_effect or (lambda model, seed: 0.0)

    def install(self, monkeypatch) -> FakeHeareval:
        """Stand in for heareval: its runners, and the check that it is installed."""
        monkeypatch.setattr(hear_eval, "run_logged", self)
        monkeypatch.setattr(hear_eval, "heareval_missing", lambda python: None)
        return self

    def __call__(self, cmd, log_file, env, cwd):
        cmd = list(cmd)
        self.cmds.append(cmd)
        if cmd[:3] == [sys.executable, "-m", hear_eval.SEEDED_MODULE]:  # another probe seed
            return self.predict(Path(cmd[4]), int(cmd[3]), log_file, env)
        assert cmd[:3] == [sys.executable, "-m", "abt_eval.heareval_compat"]
        mode = cmd[3]
        if mode == "embeddings":
            opt = {cmd[i]: cmd[i + 1] for i in range(5, len(cmd) - 1) if cmd[i].startswith("--")}
            task = opt["--task"]
            self.calls.append((mode, task, dict(env)))
            log_file.open("a").write("embedding...\n")
            d = Path(opt["--embeddings-dir"]) / cmd[4] / task
            d.mkdir(parents=True, exist_ok=True)
            (d / "task_metadata.json").write_text(
                (Path(opt["--tasks-dir"]) / task / "task_metadata.json").read_text()
            )
            (d / ".done.embeddings").touch()
            return 0
        return self.predict(Path(cmd[4]), 42, log_file, env)

    def predict(self, d: Path, seed: int, log_file, env) -> int:
        """The predictions runner on ``d``: heareval's own seed in the embeddings folder, others in
        OUT/probes/<model>/<module>/<task>/seed-<seed>, whose embeddings must be links."""
        task_dir = d if seed == 42 else d.parent
        if seed != 42:
            assert d.name == f"seed-{seed}" and (d / "task_metadata.json").is_symlink()
        self.calls.append(("predictions", task_dir.name, dict(env)))
        if task_dir.name in self.fail_tasks:
            log_file.open("a").write("Traceback ...\nValueError: boom from the probe\n")
            return 1
        model = task_dir.parent.parent.name
        acc = self.accuracy.get(model, 0.5) + self.seed_effect(model, seed)
        (d / "test.predicted-scores.json").write_text(json.dumps(scores_trainvaltest({"top1_acc": acc})))
        (d / "prediction-done.json").write_text("{}")
        return 0


TINY = ModelConfig(
    encoder="audiontt", encoder_kwargs={"channels": 8, "mlp_dim": 64}, norm=NormStats(-5.0, 3.0)
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(7)
    model = ABTEmbedder(TINY)
    state = model.encoder.state_dict()
    for k, v in state.items():  # "trained": BatchNorm stats away from their init
        if k.endswith("running_mean"):
            v.add_(0.5)
    return save_pretrained(folder, TINY, state)


@pytest.fixture()
def tasks_dir(tmp_path):
    tasks = tmp_path / "tasks"
    write_task(tasks / "words", ["top1_acc"])
    write_task(tasks / "voices", ["top1_acc"])
    return tasks


def test_resume_skips_cached_pairs(tmp_path, tasks_dir, tiny_model, monkeypatch, capsys):
    fake = FakeHeareval({"abt": 0.6, "abt-random": 0.4})
    fake.install(monkeypatch)
    out = tmp_path / "out"
    argv = [
        "--tasks-dir",
        str(tasks_dir),
        "--out",
        str(out),
        "--model",
        f"abt={tiny_model}",
        "--random-baseline",
    ]
    assert hear_eval.main(argv + ["--grid", "faster"]) == 0
    assert len(fake.calls) == 8  # 2 models x 2 tasks x (embeddings + predictions)
    text = capsys.readouterr().out
    assert "| voices | top1_acc ↑ | 0.6000 | 0.4000 | +50.0% |" in text
    assert (out / "results.png").is_file() and (out / "results.csv").is_file()
    assert (out / "random-init" / "abt" / "model.safetensors").is_file()
    emb_cmd = fake.cmds[0]  # no repository path: the compat runner is a module of the installed package
    assert emb_cmd[3:5] == ["embeddings", "hear_abt"]
    assert emb_cmd[emb_cmd.index("--model") + 1] == str(tiny_model)
    assert fake.cmds[1][-2:] == ["--grid", "faster"]

    # Rerun: everything cached, nothing run.
    fake.calls.clear()
    assert hear_eval.main(argv + ["--grid", "faster"]) == 0
    assert fake.calls == []
    assert capsys.readouterr().out.count(": cached") == 4

    # Scores gone but embeddings done: only the predictions runner runs (for that pair).
    scores_file = hear_eval.embed_task_dir(out, "abt", "words") / "test.predicted-scores.json"
    scores_file.unlink()
    assert hear_eval.main(argv + ["--grid", "faster"]) == 0
    assert [(m, t) for m, t, _ in fake.calls] == [("predictions", "words")]

    # Another grid in the same folder is refused (the cached scores are of --grid faster).
    assert hear_eval.main(argv + ["--grid", "default"]) == 2


def test_failure_of_one_task_does_not_stop_the_others(tmp_path, tasks_dir, tiny_model, monkeypatch, capsys):
    fake = FakeHeareval(fail_tasks={"voices"})
    fake.install(monkeypatch)
    out = tmp_path / "out"
    rc = hear_eval.main(["--tasks-dir", str(tasks_dir), "--out", str(out), "--model", f"m={tiny_model}"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "m / voices: failed" in captured.out and "boom from the probe" in captured.out  # the log's tail
    assert "m / words: ok" in captured.out
    assert "| words | top1_acc ↑ | 0.5000 |" in captured.out
    assert "m / voices" in captured.err


class ConcurrentFake(FakeHeareval):
    """Each embeddings call waits for a second one: it succeeds only if two pairs really run at once."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.barrier = threading.Barrier(2, timeout=20)

    def __call__(self, cmd, log_file, env, cwd):
        if list(cmd)[3] == "embeddings":
            self.barrier.wait()
        return super().__call__(cmd, log_file, env, cwd)


def test_jobs_run_pairs_at_once_with_a_share_of_the_cores(
    tmp_path, tasks_dir, tiny_model, monkeypatch, capsys
):
    fake = ConcurrentFake(accuracy={"abt": 0.6, "abt-random": 0.4})
    fake.install(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hear_eval.os, "cpu_count", lambda: 8)
    out = tmp_path / "out"
    argv = ["--tasks-dir", str(tasks_dir), "--out", str(out), "--model", f"abt={tiny_model}"]
    assert hear_eval.main(argv + ["--random-baseline", "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert "| voices | top1_acc ↑ | 0.6000 | 0.4000 | +50.0% |" in text  # same table as one at a time
    assert len(fake.calls) == 8 and text.count(": ok in") == 4
    assert {env["OMP_NUM_THREADS"] for _, _, env in fake.calls} == {"4"}  # 8 cores / 2 jobs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins
    fake = ConcurrentFake()
    fake.install(monkeypatch)
    argv2 = ["--tasks-dir", str(tasks_dir), "--out", str(tmp_path / "out2"), "--model", f"a={tiny_model}"]
    assert hear_eval.main(argv2 + ["--model", f"b={tiny_model}", "--tasks", "words", "--jobs", "2"]) == 0
    assert {env["OMP_NUM_THREADS"] for _, _, env in fake.calls} == {"1"} and len(fake.calls) == 4
    assert hear_eval.main(argv + ["--jobs", "0"]) == 2


def test_log_mel_reference_alone(tmp_path, tasks_dir, monkeypatch, capsys):
    fake = FakeHeareval()
    fake.install(monkeypatch)
    out = tmp_path / "out"
    base = ["--tasks-dir", str(tasks_dir), "--out", str(out), "--tasks", "words"]
    assert hear_eval.main(base + ["--logmel-reference"]) == 0
    assert [c[4] for c in fake.cmds] == [
        hear_eval.LOGMEL_MODULE,
        str(hear_eval.embed_task_dir(out, "logmel", "words", hear_eval.LOGMEL_MODULE).resolve()),
    ]
    assert "| words | top1_acc ↑ | 0.5000 |" in capsys.readouterr().out
    assert hear_eval.main(base) == 2  # nothing to evaluate
    assert "nothing to evaluate" in capsys.readouterr().err


def test_hub_id_goes_through_the_environment(tmp_path, tasks_dir, monkeypatch):
    fake = FakeHeareval()
    fake.install(monkeypatch)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    out = tmp_path / "out"
    argv = ["--tasks-dir", str(tasks_dir), "--out", str(out), "--model", "hub=org/abt@v1", "--tasks", "words"]
    assert hear_eval.main(argv) == 0
    emb_cmd = fake.cmds[0]
    assert "--model" not in emb_cmd
    assert all(env[WEIGHTS_ENV] == "org/abt@v1" for _, _, env in fake.calls)
    # the embeddings of another NAME go to their own folder
    assert emb_cmd[emb_cmd.index("--embeddings-dir") + 1] == str((out / "embeddings" / "hub").resolve())


def test_bad_arguments(tmp_path, tasks_dir, tiny_model, monkeypatch):
    FakeHeareval().install(monkeypatch)
    base = ["--tasks-dir", str(tasks_dir), "--out", str(tmp_path / "o")]
    assert hear_eval.main(base + ["--model", f"a={tiny_model}", "--model", f"a={tiny_model}"]) == 2
    assert hear_eval.main(base + ["--model", f"a={tiny_model}", "--tasks", "nope"]) == 2
    assert hear_eval.main(base + ["--model", "a=./not/there"]) == 2
    assert hear_eval.main(base + ["--model", "a=not a/hub id"]) == 2  # neither a path nor a Hub id
    with pytest.raises(EvalError, match="NAME=SOURCE"):
        hear_eval.parse_model_arg("justapath")


def test_missing_heareval_is_one_clear_error_before_anything_runs(
    tmp_path, tasks_dir, tiny_model, monkeypatch, capsys
):
    # The check itself, on interpreters that certainly lack and certainly have a `heareval` package:
    # -S drops site-packages; PYTHONPATH then supplies a stand-in package.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    why = hear_eval.heareval_missing(str(python))
    assert (
        why and f"heareval is not installed for {python}" in why and "-m abt_eval.hear_tools install" in why
    )
    (tmp_path / "site" / "heareval").mkdir(parents=True)
    (tmp_path / "site" / "heareval" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    assert hear_eval.heareval_missing(str(python)) is None

    # In the command: exit 2 with that one line; no baseline built, no runner started.
    fake = FakeHeareval()
    monkeypatch.setattr(hear_eval, "run_logged", fake)
    monkeypatch.setattr(hear_eval, "heareval_missing", lambda python: "heareval is not installed for X")
    out = tmp_path / "o"
    argv = [
        "--tasks-dir",
        str(tasks_dir),
        "--out",
        str(out),
        "--model",
        f"a={tiny_model}",
        "--random-baseline",
    ]
    assert hear_eval.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: heareval is not installed for X"
    assert fake.cmds == [] and not (out / "random-init").exists()


def test_compat_runner_is_a_module_of_the_package():
    import importlib.util

    assert importlib.util.find_spec(hear_eval.COMPAT_MODULE) is not None
    proc = subprocess.run(
        [sys.executable, "-m", hear_eval.COMPAT_MODULE], capture_output=True, text=True, cwd="/"
    )
    assert proc.returncode != 0 and "usage: python -m abt_eval.heareval_compat" in proc.stderr


# ---- probe seeds: intervals, paired tests, reuse ----------------------------------------------------

# Probe seed -> what it adds to each model's accuracy: abt 0.60 0.62 0.58, abt-random 0.40 0.41 0.45
# (the worked example of tests/test_stats.py: paired differences 0.20 0.21 0.13).
SEED_EFFECT = {
    "abt": {42: 0.0, 43: 0.02, 44: -0.02, 45: 0.0},
    "abt-random": {42: 0.0, 43: 0.01, 44: 0.05, 45: 0.0},
}


def seeded_fake():
    return FakeHeareval({"abt": 0.6, "abt-random": 0.4}, seed_effect=lambda m, s: SEED_EFFECT[m][s])


def test_seeds_share_the_embeddings_and_a_rerun_reuses_finished_seeds(
    tmp_path, tasks_dir, tiny_model, monkeypatch, capsys
):
    fake = seeded_fake()
    fake.install(monkeypatch)
    out = tmp_path / "out"
    argv = ["--tasks-dir", str(tasks_dir), "--out", str(out), "--model", f"abt={tiny_model}"]
    argv += ["--random-baseline", "--seeds", "3"]
    assert hear_eval.main(argv) == 0
    modes = [m for m, _, _ in fake.calls]
    assert modes.count("embeddings") == 4 and modes.count("predictions") == 12  # 2 models x 2 tasks
    seeded = [c for c in fake.cmds if c[2] == hear_eval.SEEDED_MODULE]
    assert sorted({c[3] for c in seeded}) == ["43", "44"] and len(seeded) == 8
    # Each seed has its own scores; heareval's own (42) stays where it always was.
    files = {
        seed: hear_eval.probe_task_dir(out, "abt", "words", seed=seed) / "test.predicted-scores.json"
        for seed in (42, 43, 44)
    }
    assert files[42].parent == hear_eval.embed_task_dir(out, "abt", "words")
    assert files[43].parent == out / "probes" / "abt" / "hear_abt" / "words" / "seed-43"
    accs = {s: json.loads(f.read_text())["test"]["test_top1_acc"] for s, f in files.items()}
    assert accs == pytest.approx({42: 0.60, 43: 0.62, 44: 0.58})
    text = capsys.readouterr().out
    half = 4.302653 * 0.02 / math.sqrt(3)  # s = 0.02 over 3 seeds, t(0.975, 2)
    assert f"| words | top1_acc ↑ | 0.6000 ± {half:.4f} |" in text
    assert "(3 probe seeds run, 0 cached)" in text
    # Rerun: every seed cached, nothing runs.
    fake.calls.clear()
    assert hear_eval.main(argv) == 0
    assert fake.calls == [] and capsys.readouterr().out.count(": cached") == 4
    # One seed's scores gone: only that probe runs again, on the embeddings already there.
    files[43].unlink()
    assert hear_eval.main(argv) == 0
    assert [(m, t) for m, t, _ in fake.calls] == [("predictions", "words")]
    assert "(1 probe seeds run, 2 cached)" in capsys.readouterr().out
    # One more seed: only seed 45, once per pair.
    fake.calls.clear()
    fake.cmds.clear()
    assert hear_eval.main(argv[:-1] + ["4"]) == 0
    assert [c[3] for c in fake.cmds] == ["45"] * 4 and len(fake.calls) == 4
    scores = collect_scores(out, ["abt"], ["words"], seeds=hear_eval.probe_seeds(4))
    assert [seed for seed, _ in scores["abt"]["words"].seeds] == [42, 43, 44, 45]


def test_seed_folders_link_the_embeddings_not_the_predictions(tmp_path):
    embed = tmp_path / "emb"
    embed.mkdir()
    for name in ("task_metadata.json", "train.embeddings.npy", "test.target-labels.pkl", ".done.embeddings"):
        (embed / name).write_text(name)
    for name in (
        "test.predicted-scores.json",
        "prediction-done.json",
        "prediction.log",
        "test.predictions.pkl",
    ):
        (embed / name).write_text("heareval's own seed")
    (embed / "train").mkdir()  # per-clip embeddings: not read by the predictions runner
    probe = tmp_path / "probe" / "seed-43"
    hear_eval.link_embeddings(embed, probe)
    hear_eval.link_embeddings(embed, probe)  # again: nothing changes
    linked = sorted(p.name for p in probe.iterdir())
    assert linked == ["task_metadata.json", "test.target-labels.pkl", "train.embeddings.npy"]
    assert all((probe / n).is_symlink() and (probe / n).read_text() == n for n in linked)


def seed_scores(metric: str, values: dict[int, float]) -> TaskScore:
    return TaskScore(metric, sum(values.values()) / len(values), seeds=tuple(values.items()))


def test_table_shows_intervals_and_paired_verdicts(tmp_path):
    scores = {
        "abt": {
            "words": seed_scores("top1_acc", {42: 0.60, 43: 0.62, 44: 0.58}),
            "voices": seed_scores("top1_acc", {42: 0.50, 43: 0.55, 44: 0.45}),
            "events": seed_scores("segment_1s_er", {42: 0.50, 43: 0.52, 44: 0.51}),
        },
        "abt-random": {
            "words": seed_scores("top1_acc", {42: 0.40, 43: 0.41, 44: 0.45}),
            "voices": seed_scores("top1_acc", {42: 0.52, 43: 0.50, 44: 0.47}),
            "events": seed_scores("segment_1s_er", {42: 0.80, 43: 0.83, 44: 0.80}),
        },
    }
    table = results_table(scores, {"abt": "abt-random"}, ["words", "voices", "events"])
    verdicts = {(c.task, c.result.method): c.result for c in table.comparisons}
    words = verdicts[("words", "paired t over 3 seeds")]
    assert words.verdict == "better" and words.mean_diff == pytest.approx(0.18)
    assert verdicts[("voices", "paired t over 3 seeds")].verdict == "indistinguishable at 95%"
    # An error rate: lower is better, so 0.51 vs 0.81 is +0.30 for the model.
    events = verdicts[("events", "paired t over 3 seeds")]
    assert events.mean_diff == pytest.approx(0.30) and events.verdict == "better"
    # The average over the ↑ tasks, per seed: abt 0.55 0.585 0.515, random 0.46 0.455 0.46.
    average = verdicts[("average (2 tasks)", "paired t over 3 seeds")]
    assert average.mean_diff == pytest.approx((0.09 + 0.13 + 0.055) / 3)
    assert table.average_half["abt"] == pytest.approx(stats_half([0.55, 0.585, 0.515]))
    md = table.to_markdown()
    assert "| words | top1_acc ↑ | 0.6000 ± 0.0497 | 0.4200 ± 0.0657 | +42.9% |" in md
    assert "| abt | abt-random | words | paired t over 3 seeds | +0.1800 |" in md
    assert "indistinguishable at 95%" in md and "mean over 3 probe seeds" in md
    paths = write_outputs(tmp_path, table)
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0][-2:] == ["abt: ±95% (3 seeds)", "abt-random: ±95% (3 seeds)"]
    assert float(rows[1][-2]) == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    comparisons = list(csv.DictReader(paths["comparisons"].open()))
    assert {r["task"]: r["verdict"] for r in comparisons}["voices"] == "indistinguishable at 95%"
    assert float(comparisons[0]["p_value"]) == pytest.approx(words.p_value, rel=1e-5)


def stats_half(values: list[float]) -> float:
    mean = sum(values) / len(values)
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return 4.302653 * s / math.sqrt(len(values))


def test_one_seed_table_has_no_tests_but_says_what_they_need():
    table = results_table(example_scores(), {"abt": "abt-random"}, ["words", "pitch", "events"])
    assert table.comparisons == [] and table.n_seeds == 1
    assert "they need --seeds 2 or more" in table.to_markdown()


def write_probe(folder: Path, targets: list[int], predicted: list[int], n_classes: int = 3) -> None:
    """What heareval leaves for a scene task: scores and ``test.predictions.pkl`` (one-hot tensors)."""
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    correct = sum(a == b for a, b in zip(targets, predicted)) / len(targets)
    (folder / "test.predicted-scores.json").write_text(json.dumps(scores_trainvaltest({"top1_acc": correct})))
    eye = torch.eye(n_classes)
    data = {"target": eye[targets], "prediction": eye[predicted], "prediction_logit": eye[predicted]}
    with open(folder / "test.predictions.pkl", "wb") as f:
        pickle.dump(data, f)


def test_paired_bootstrap_over_heareval_clip_predictions(tmp_path):
    out = tmp_path / "out"
    targets = [i % 3 for i in range(60)]
    for model, n_wrong in [("abt", 6), ("logmel", 30)]:
        write_task(hear_eval.embed_task_dir(out, model, "words"), ["top1_acc"])
        for seed in (42, 43):
            predicted = [(t + 1) % 3 if i < n_wrong + (seed - 42) else t for i, t in enumerate(targets)]
            write_probe(hear_eval.probe_task_dir(out, model, "words", seed=seed), targets, predicted)
    write_task(hear_eval.embed_task_dir(out, "abt", "pitch"), ["pitch_acc"])  # not a per-clip mean
    where = (out, ["abt", "logmel"], ["words", "pitch"], "hear_abt", None, [42, 43])
    clips = hear_eval.collect_clip_outcomes(*where)
    assert set(clips["abt"]) == {"words"} and clips["abt"]["words"].seeds == (42, 43)
    assert sum(clips["abt"]["words"].correct[1]) == 60 - 7
    table = results_table(hear_eval.collect_scores(*where), {}, ["words"], clips)
    boot = [c for c in table.comparisons if c.result.method.startswith("paired bootstrap")]
    (row,) = boot
    assert (row.model, row.reference) == ("abt", "logmel") and row.result.n == 60
    assert row.result.mean_diff == pytest.approx((24 + 24) / 2 / 60) and row.result.verdict == "better"
    # Predictions of other clips (another test split) cannot be paired: no bootstrap.
    write_probe(hear_eval.probe_task_dir(out, "logmel", "words", seed=43), targets[::-1], targets[::-1])
    write_probe(hear_eval.probe_task_dir(out, "logmel", "words", seed=42), targets[::-1], targets[::-1])
    clips = hear_eval.collect_clip_outcomes(*where)
    table = results_table(hear_eval.collect_scores(*where), {}, ["words"], clips)
    assert not [c for c in table.comparisons if c.result.method.startswith("paired bootstrap")]


# ---- installing the HEAR tools ---------------------------------------------------------------------


def test_hear_tool_needs_come_from_the_extra():
    requires = [
        "torch>=2.1",
        'pytest; extra == "dev"',
        'pytorch-lightning<2; extra == "hear-tools"',
        "tensorflow-cpu; extra == 'hear_tools'",
        'pandas ; python_version >= "3.9" and extra == "hear-tools"',
    ]
    assert hear_tools.extra_requirements(requires) == ["pytorch-lightning<2", "tensorflow-cpu", "pandas"]
    assert hear_tools.requirement_name("pytorch_lightning<2") == "pytorch-lightning"
    needs = hear_tools.hear_tool_needs()  # the installed hear-abt's metadata
    assert "pytorch-lightning<2" in needs and "tensorflow-cpu" in needs
    assert "tensorflow-cpu" not in hear_tools.hear_tool_needs(no_tf=True)
    tools, rest = hear_tools.install_commands(python="py")
    assert tools[:3] == ["py", "-m", "pip"] and "--no-deps" in tools and "--ignore-requires-python" in tools
    assert tools[-2:] == ["hearvalidator==2021.0.6", "heareval==2021.1.3"]
    assert rest[-len(needs) :] == needs and "--no-deps" not in rest


def test_installed_hear_tools_extra_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    listed = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["hear-tools"]
    installed = hear_tools.hear_tool_needs()
    assert sorted(installed) == sorted(listed), 'reinstall: .venv/bin/pip install -e ".[dev]"'


# ---- the random-init baseline ---------------------------------------------------------------------


def test_random_baseline_same_config_different_weights(tmp_path, tiny_model):
    rng_before = torch.random.get_rng_state()
    folder = hear_eval.make_random_baseline(str(tiny_model), tmp_path / "rand", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    src, rnd = load_weights(tiny_model), load_weights(folder)
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "provenance"}  # noqa: E731
    assert strip(rnd.config) == strip(src.config) and rnd.config.norm == NormStats(-5.0, 3.0)
    assert rnd.config.provenance["random_init"] == {"seed": 0, "architecture_of": str(tiny_model)}
    assert src.state_dict.keys() == rnd.state_dict.keys()
    weights = [k for k in src.state_dict if k.endswith("weight") and src.state_dict[k].ndim > 1]
    assert weights and all(not torch.equal(src.state_dict[k], rnd.state_dict[k]) for k in weights)
    for k, v in rnd.state_dict.items():  # BatchNorm stats at their init
        if k.endswith("running_mean"):
            assert torch.all(v == 0)
        if k.endswith("running_var"):
            assert torch.all(v == 1)
    # fixed seed: the same weights again; another seed: others
    again = load_weights(hear_eval.make_random_baseline(str(tiny_model), tmp_path / "rand2", seed=0))
    other = load_weights(hear_eval.make_random_baseline(str(tiny_model), tmp_path / "rand3", seed=1))
    assert all(torch.equal(rnd.state_dict[k], again.state_dict[k]) for k in weights)
    assert not torch.equal(rnd.state_dict[weights[0]], other.state_dict[weights[0]])


def test_random_baseline_folder_is_reused_for_the_same_config(tmp_path, tiny_model, monkeypatch):
    from hear_abt import weights

    saves = []
    real_save = weights.save_pretrained
    monkeypatch.setattr(weights, "save_pretrained", lambda *a, **k: saves.append(a[0]) or real_save(*a, **k))
    folder = hear_eval.make_random_baseline(str(tiny_model), tmp_path / "rand", seed=0)
    before = (folder / "model.safetensors").stat()
    assert len(saves) == 1
    # The same source and seed: the folder holds exactly this baseline, nothing is rewritten.
    assert hear_eval.make_random_baseline(str(tiny_model), tmp_path / "rand", seed=0) == folder
    after = (folder / "model.safetensors").stat()
    assert len(saves) == 1 and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # Another seed is another baseline: rebuilt in place.
    hear_eval.make_random_baseline(str(tiny_model), tmp_path / "rand", seed=1)
    assert len(saves) == 2 and load_weights(folder).config.provenance["random_init"]["seed"] == 1


# ---- one real run ----------------------------------------------------------------------------------


@pytest.mark.heartools
@needs_sound_programs()  # the task is espeak-ng speech
def test_real_heareval_run_on_devsuite_small(tmp_path, capsys):
    """The real runners (through abt_eval.heareval_compat) on a tiny model and the log-mel reference,
    side by side (--jobs 2), then a second probe seed (abt_eval.seeded_predictions): about 1 min on 2 cores."""
    pytest.importorskip(
        "heareval", reason="HEAR tools not installed (.venv/bin/python -m abt_eval.hear_tools install)"
    )
    from abt_eval import devsuite

    devsuite.build_task(tmp_path / "tasks", "speech-words", small=True, seed=0, jobs=2)
    torch.manual_seed(0)
    model = save_pretrained(tmp_path / "tiny", TINY, ABTEmbedder(TINY).encoder.state_dict())
    out = tmp_path / "out"
    argv = ["--tasks-dir", str(tmp_path / "tasks"), "--out", str(out), "--model", f"tiny={model}"]
    argv += ["--logmel-reference", "--grid", "faster"]
    assert hear_eval.main(argv + ["--jobs", "2"]) == 0, capsys.readouterr()
    logmel = hear_eval.ModelSpec(
        hear_eval.LOGMEL_NAME, hear_eval.LOGMEL_SOURCE, module=hear_eval.LOGMEL_MODULE
    )
    scores = collect_scores(out, ["tiny", logmel], ["speech-words"])
    for name in ("tiny", "logmel"):
        score = scores[name]["speech-words"]
        assert score.metric == "top1_acc" and 0.0 <= score.value <= 1.0
        assert "heareval_compat" in hear_eval.log_path(out, name, "speech-words").read_text()
    assert "2 (model, task) pairs, 2 at a time" in capsys.readouterr().out
    assert hear_eval.main(argv) == 0
    text = capsys.readouterr().out
    assert "tiny / speech-words: cached" in text and "logmel / speech-words: cached" in text
    # A second probe seed: heareval's predictions again (seed 43) on the embeddings already there.
    assert hear_eval.main(argv + ["--seeds", "2", "--jobs", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("(1 probe seeds run, 1 cached)") == 2
    for name, module in (("tiny", "hear_abt"), ("logmel", hear_eval.LOGMEL_MODULE)):
        seed_dir = hear_eval.probe_task_dir(out, name, "speech-words", module, seed=43)
        assert (seed_dir / "test.predicted-scores.json").is_file()
        assert (seed_dir / "train.embeddings.npy").is_symlink()
        assert "probe seed 43" in hear_eval.log_path(out, name, "speech-words").read_text()
    scores = collect_scores(out, ["tiny", logmel], ["speech-words"], seeds=[42, 43])
    assert [seed for seed, _ in scores["tiny"]["speech-words"].seeds] == [42, 43]
    # heareval's clip predictions give back its own top1_acc, seed by seed.
    clips = hear_eval.collect_clip_outcomes(out, ["tiny"], ["speech-words"], seeds=[42, 43])
    outcomes = clips["tiny"]["speech-words"]
    for correct, (_, value) in zip(outcomes.correct, scores["tiny"]["speech-words"].seeds):
        assert sum(correct) / len(correct) == pytest.approx(value)
    results = (out / "results.md").read_text()
    assert "| tiny | logmel | speech-words | paired t over 2 seeds |" in results
    assert "| tiny | logmel | speech-words | paired bootstrap over " in results  # heareval's clip predictions
