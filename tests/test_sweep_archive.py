"""abt_eval.sweep_archive: a study carried to another machine as a journal file, and continued there."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
from test_linear_eval import write_tone_task
from test_sweep import argv, prepared_corpus

from abt_eval import sweep, sweep_archive, sweep_report
from abt_eval.sweep_archive import RUNNING_WHEN_EXPORTED, ArchiveError, export_study, import_study

FIELDS = ("number", "state", "params", "distributions", "value", "intermediate_values", "user_attrs")


def fields(trial):
    return {name: getattr(trial, name) for name in FIELDS}


def study_in(db, name="abt-sweep"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def hand_made_study(db):
    """Trials in every state a sweep leaves: complete, pruned, failed, running (its worker gone) and
    waiting (enqueued)."""
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name="abt-sweep", direction="maximize")
    study.set_user_attr("settings", {"preset": "cpu-hour", "space": {"lambd": "log:0.001:0.02"}})
    for i, state in enumerate(["complete", "pruned", "failed", "running"]):
        trial = study.ask()
        trial.suggest_float("lambd", 0.001, 0.02, log=True)
        trial.suggest_categorical("augment.rrc_time_only", [True, False])
        trial.set_user_attr("worker", {"host": "elsewhere", "pid": 1000 + i})
        for step in (90, 180):
            trial.report(0.7 + 0.01 * i + step / 10000, step)
        if state == "complete":
            study.tell(trial, 0.761)
        elif state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "failed":
            trial.set_user_attr("error", "RuntimeError: boom")
            trial.set_user_attr("report_seconds", [300.0, 720.0])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial({"lambd": 0.005, "augment.rrc_time_only": False}, user_attrs={"enqueued": "BASE"})
    return study


def test_export_then_import_keeps_every_trial_and_requeues_the_running_one(tmp_path):
    src = hand_made_study(tmp_path / "a.db")
    journal = tmp_path / "study.jsonl"
    copied = export_study(tmp_path / "a.db", journal)
    assert copied.by_state == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 1, "RUNNING": 1, "WAITING": 1}
    assert copied.requeued == [3] and copied.trials == 5
    # The journal is JSON lines (git can hold and diff it); no temporary or lock file is left beside it.
    assert all(json.loads(line) for line in journal.read_text().splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.db", "study.jsonl"]

    imported = import_study(journal, tmp_path / "b" / "study.db")
    assert imported.requeued == [3]
    dst = study_in(tmp_path / "b" / "study.db")
    assert dst.user_attrs == src.user_attrs and dst.directions == src.directions
    before, after = src.get_trials(), dst.get_trials()
    for number in (0, 1, 2, 4):  # finished and waiting trials: identical
        assert fields(after[number]) == fields(before[number])
    assert after[0].value == 0.761 and after[0].intermediate_values == {90: 0.709, 180: 0.718}
    # The running trial: failed, with its reports and the reason, and queued again with its parameters.
    assert after[3].state.name == "FAIL" and after[3].user_attrs["error"] == RUNNING_WHEN_EXPORTED
    assert (
        after[3].params == before[3].params and after[3].intermediate_values == before[3].intermediate_values
    )
    retry = after[5]
    assert retry.state.name == "WAITING" and retry.params == before[3].params
    assert retry.user_attrs == {"retry_of": 3}
    # The source is untouched: its running trial still runs there.
    assert src.get_trials()[3].state.name == "RUNNING"


def test_export_replaces_an_older_journal(tmp_path):
    study = hand_made_study(tmp_path / "a.db")
    journal = tmp_path / "study.jsonl"
    export_study(tmp_path / "a.db", journal)
    study.tell(study.ask(), 0.5)  # the enqueued trial 4 runs after the first export
    export_study(tmp_path / "a.db", journal)
    import_study(journal, tmp_path / "b.db")
    trials = study_in(tmp_path / "b.db").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL", "COMPLETE", "WAITING"]
    assert trials[4].value == 0.5


def test_errors_name_the_file_and_the_way_out(tmp_path, capsys):
    hand_made_study(tmp_path / "a.db")
    journal = tmp_path / "study.jsonl"
    with pytest.raises(ArchiveError, match="no such study database"):
        export_study(tmp_path / "missing.db", journal)
    with pytest.raises(ArchiveError, match=r"no study 'other' \(it holds: abt-sweep\)"):
        export_study(tmp_path / "a.db", journal, study_name="other")
    assert not journal.exists()
    export_study(tmp_path / "a.db", journal)
    # Importing over an existing study would mix two searches: refused, the target untouched.
    with pytest.raises(ArchiveError, match="already holds a study 'abt-sweep'"):
        import_study(journal, tmp_path / "a.db")
    assert len(study_in(tmp_path / "a.db").get_trials()) == 5
    assert sweep_archive.main(["import", str(tmp_path / "none.jsonl"), str(tmp_path / "c.db")]) == 2
    assert "no such study journal" in capsys.readouterr().err
    assert sweep_archive.main(["import", str(journal), str(tmp_path / "c.db")]) == 0
    out = capsys.readouterr().out
    assert "6 trials" in out and "trials [3] were running" in out


def test_report_of_a_journal_ranks_trials_and_shows_every_report(tmp_path, capsys):
    """``python -m abt_eval.sweep_report`` on an exported journal (the docs' tables come from it): best
    complete trial first, then pruned by their last report, then the rest; every report in order."""
    study = hand_made_study(tmp_path / "a.db")
    extra = study.ask()  # the enqueued trial 4 runs: complete, better than trial 0, reported once
    extra.suggest_float("lambd", 0.001, 0.02, log=True)
    extra.suggest_categorical("augment.rrc_time_only", [True, False])
    extra.report(0.8, 90)
    extra.set_user_attr("seconds", 1800.0)
    study.tell(extra, 0.8)
    journal = tmp_path / "study.jsonl"
    export_study(tmp_path / "a.db", journal)
    before = journal.read_bytes()
    assert sweep_report.main([str(journal), str(tmp_path / "report")]) == 0
    assert journal.read_bytes() == before  # reading a journal never writes to it
    lines = (tmp_path / "report" / "summary.md").read_text().splitlines()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln[:3].strip("| ").isdigit()]
    assert [r[:3] for r in rows] == [
        ["4", "COMPLETE", "0.8000"],
        ["0", "COMPLETE", "0.7610"],
        ["1", "PRUNED", "0.7280"],  # a pruned trial's value is its last report
        ["2", "FAIL", "-"],
        ["3", "FAIL", "-"],  # running when exported
        ["5", "WAITING", "-"],  # trial 3 queued again
    ]
    assert rows[1][-3] == "0.709 / 0.718" and rows[0][-3] == "0.800" and rows[5][-3] == "-"
    # 1800 s complete + 720 s to the failed trial's last report; the trial killed at export has no time.
    assert (
        "Cost: 0.70 h of trial time (2 complete 0.50 h, 1 pruned 0.00 h, 1 failed 0.20 h (to their last "
        "report), 1 failed with no time recorded)" in lines
    )
    assert (tmp_path / "report" / "plots" / "history.png").is_file()
    assert sweep_report.main([str(journal), str(tmp_path / "r2"), "--study-name", "other"]) == 2
    assert "holds no study 'other'" in capsys.readouterr().err


def test_a_sweep_continues_on_another_machine_from_its_journal(tmp_path):
    """A real sweep of two trials, exported, its folder removed (the machine is gone), imported into a
    new folder, and continued by the same command to three trials."""
    data = prepared_corpus(tmp_path / "corpus")
    task = write_tone_task(tmp_path / "tones")
    extra = ["--space", "lr_weights=log:1e-2:1", "--pruner", "none", "--report-unit", "steps"]
    extra += ["--report-every", "3", "--eval-max-clips", "6"]
    first = tmp_path / "machine-a"
    assert sweep.main(argv(data, task, first, *extra, "--n-trials", "2")) == 0
    journal = tmp_path / "study.jsonl"
    export_study(first / "study.db", journal)
    before = [fields(t) for t in study_in(first / "study.db").get_trials()]
    shutil.rmtree(first)

    second = tmp_path / "machine-b"
    import_study(journal, second / "study.db")
    assert sweep.main(argv(data, task, second, *extra, "--n-trials", "3")) == 0
    trials = study_in(second / "study.db").get_trials()
    assert [fields(t) for t in trials[:2]] == before
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[2].params != trials[0].params and len(trials[2].intermediate_values) == 2
    # Only the new trial ran here: the imported ones have no trial folder on this machine.
    assert sorted(p.name for p in (second / "trials").iterdir()) == ["0002"]


def test_the_best_trials_of_an_exported_study_rerun_with_several_seeds(tmp_path, capsys):
    """The search's last step: its best trials queued in a new study, each pre-trained with 2 seeds."""
    data = prepared_corpus(tmp_path / "corpus")
    task = write_tone_task(tmp_path / "tones")
    space = ["--space", "lr_weights=log:1e-3:1", "--pruner", "none", "--report-unit", "steps"]
    space += ["--report-every", "6", "--eval-max-clips", "6", "--eval-protocol", "linear"]
    search = tmp_path / "search"
    assert sweep.main(argv(data, task, search, *space, "--n-trials", "3", "--sampler", "random")) == 0
    journal = tmp_path / "study.jsonl"
    export_study(search / "study.db", journal)
    ranked = sorted(study_in(search / "study.db").get_trials(), key=lambda t: (-t.value, t.number))

    confirm = tmp_path / "confirm"
    extra = ["--enqueue-top", "2", "--top-of", str(journal), "--top-of-study", "abt-sweep"]
    extra += ["--study-name", "confirm", "--pretrain-seeds", "2", "--n-trials", "2"]
    assert sweep.main(argv(data, task, confirm, *space, *extra)) == 0
    assert f"queued: trial {ranked[0].number} of 'abt-sweep'" in capsys.readouterr().out
    trials = study_in(confirm / "study.db", "confirm").get_trials()
    assert [t.params for t in trials] == [ranked[0].params, ranked[1].params]
    assert [t.user_attrs["top_of"]["trial"] for t in trials] == [ranked[0].number, ranked[1].number]
    assert all(len(t.user_attrs["objective_seeds"]) == 2 for t in trials)  # 2 runs x 1 probe seed
    # Asking for more than the study has, or a study of another space, is refused with the reason.
    more = [*extra[:1], "4", *extra[2:]]
    assert sweep.main(argv(data, task, tmp_path / "c2", *space, *more)) == 2
    assert "has 3 complete trials" in capsys.readouterr().err
    other = [a.replace("lr_weights=log:1e-3:1", "lambd=log:1e-3:1e-2") for a in [*space, *extra]]
    assert sweep.main(argv(data, task, tmp_path / "c3", *other)) == 2
    assert "use KEY=VALUE with KEY one of ['lambd']" in capsys.readouterr().err
