"""abt_eval.ablate: two variants trained, scored, tabulated and charted; a rerun retrains nothing."""

from __future__ import annotations

import csv
import json
import math

import pytest
from test_linear_eval import write_tone_task
from test_sweep import TINY, prepared_corpus

from abt_eval import ablate


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    return prepared_corpus(root), write_tone_task(root / "tones")


def test_variant_sets():
    args = ablate.build_parser().parse_args(["--data", "d", "--task", "t", "--out", "o"])
    assert [v.name for v in ablate.select_variants(args)][:2] == ["rlf", "mixup+rlf"]
    args = ablate.build_parser().parse_args(
        [
            "--data",
            "d",
            "--task",
            "t",
            "--out",
            "o",
            "--set",
            "lambda",
            "--grid",
            "crop_frames=32,64",
            "--variant",
            "mine: augment.rlf=false lambd=0.01",
        ]
    )
    variants = ablate.select_variants(args)
    assert [v.name for v in variants][-3:] == ["mine", "crop_frames=32", "crop_frames=64"]
    assert variants[-3].overrides == ["augment.rlf=false", "lambd=0.01"]
    assert variants[0].overrides == ["lambd=0.0005"]


def test_two_variants_then_resume(setup, tmp_path, capsys):
    data, task = setup
    out = tmp_path / "out"
    argv = ["--data", str(data), "--task", str(task), "--out", str(out), *TINY, "checkpoint_every=3"]
    argv += ["--only", "rlf,mixup+rrc+rlf", "--eval-max-clips", "6"]
    assert ablate.main(argv) == 0
    with open(out / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["rlf", "mixup+rrc+rlf"]
    assert rows[0]["settings"] == "augment.mixup=false augment.rrc=false"
    assert all(0.0 <= float(r["linear eval (accuracy, test)"]) <= 1.0 and r["steps"] == "6" for r in rows)
    assert (out / "ablation.png").stat().st_size > 1000 and "| rlf |" in (out / "ablation.md").read_text()
    first = capsys.readouterr().out
    assert first.count(": trained,") == 2
    assert ablate.main(argv) == 0  # resumable per variant: nothing is retrained
    assert capsys.readouterr().out.count(": cached,") == 2
    # A variant killed after its checkpoint continues from it (here: already at its last step).
    (out / "variants" / "rlf" / "result.json").unlink()
    assert ablate.main(argv) == 0
    text = capsys.readouterr().out
    assert "rlf: trained" in text and "mixup+rrc+rlf: cached" in text


def test_several_tasks_are_scored_and_averaged(setup, tmp_path):
    data, task = setup
    other = write_tone_task(tmp_path / "tones-b", seed=1)
    out = tmp_path / "out"
    argv = ["--data", str(data), "--task", str(task), "--task", str(other), "--out", str(out), *TINY]
    assert ablate.main([*argv, "--only", "rlf", "--eval-max-clips", "6"]) == 0
    result = json.loads((out / "variants" / "rlf" / "result.json").read_text())
    per_task = {name: r["score"] for name, r in result["tasks"].items()}
    assert set(per_task) == {"tones", "tones-b"}
    assert result["score"] == pytest.approx(sum(per_task.values()) / 2)
    with open(out / "ablation.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["linear tones-b"]) == pytest.approx(per_task["tones-b"])


def test_hear_scores_join_the_table(setup, tmp_path, monkeypatch):
    """--hear-tasks: every variant's checkpoint goes through abt_eval.hear_eval (heareval faked here;
    the real runners are exercised by the heartools tests) and its scores become table columns."""
    from test_hear_eval import FakeHeareval

    data, task = setup
    fake = FakeHeareval(accuracy={"rlf": 0.7, "mixup+rrc+rlf": 0.3})
    fake.install(monkeypatch)
    out = tmp_path / "out"
    argv = ["--data", str(data), "--task", str(task), "--out", str(out), *TINY, "--eval-max-clips", "6"]
    argv += ["--only", "rlf,mixup+rrc+rlf", "--hear-tasks", str(task.parent), "--hear-grid", "faster"]
    assert ablate.main(argv) == 0
    preds = [c for c in fake.cmds if c[3] == "predictions"]
    assert len(preds) == 2 and all(c[-2:] == ["--grid", "faster"] for c in preds)
    embeds = [c for c in fake.cmds if c[3] == "embeddings"]
    checkpoints = {c[c.index("--model") + 1] for c in embeds}
    assert checkpoints == {
        json.loads((out / "variants" / v / "result.json").read_text())["checkpoint"]
        for v in ("rlf", "mixup+rrc+rlf")
    }
    with open(out / "ablation.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert float(rows["rlf"][f"HEAR {task.name}"]) == pytest.approx(0.7)
    assert float(rows["mixup+rrc+rlf"]["HEAR average"]) == pytest.approx(0.3)


def test_hear_tasks_without_heareval_are_refused_before_anything_trains(setup, tmp_path, monkeypatch, capsys):
    from abt_eval import hear_eval

    data, task = setup
    monkeypatch.setattr(
        hear_eval, "heareval_missing", lambda python: f"heareval is not installed for {python}"
    )
    out = tmp_path / "out"
    argv = ["--data", str(data), "--task", str(task), "--out", str(out), *TINY, "--only", "rlf"]
    assert ablate.main(argv + ["--hear-tasks", str(task.parent)]) == 2
    assert "error: --hear-tasks: heareval is not installed for" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written


def test_sweep_and_ablate_share_their_common_options():
    from abt_eval import sweep
    from abt_eval.search_args import shared_options

    common = ["--data", "d", "--task", "t", "--out", "o", "--preset", "cpu-tiny", "lambd=0.01"]
    common += ["--eval-max-clips", "6", "--no-eval-crop", "--device", "cpu"]
    a = ablate.build_parser().parse_intermixed_args(common)
    s = sweep.build_parser().parse_intermixed_args(common)
    shared = {action.dest for action in shared_options("", "")._actions}
    assert len(shared) == 9 and all(getattr(a, k) == getattr(s, k) for k in shared)
    assert a.probe_seeds == 1
    assert a.overrides == ["lambd=0.01"] and a.task == ["t"] and a.no_eval_crop


def seeded_result(name: str, seed_scores: list[float]) -> dict:
    """A result.json as run_variant writes it with --probe-seeds."""
    mean = sum(seed_scores) / len(seed_scores)
    return {
        "name": name,
        "overrides": [f"x={name}"],
        "metric": "accuracy",
        "score": mean,
        "valid_score": mean - 0.1,
        "seed_scores": seed_scores,
        "tasks": {"tones": {"score": mean, "valid_score": mean - 0.1}},
        "final_loss": 1.0,
        "steps": 6,
        "train_seconds": 3.0,
    }


def test_table_says_which_variants_are_indistinguishable_from_the_best(tmp_path):
    results = [
        seeded_result("a", [0.60, 0.62, 0.58]),  # the best mean, 0.6
        seeded_result("b", [0.59, 0.63, 0.55]),  # differences -0.01 +0.01 -0.03: indistinguishable
        seeded_result("c", [0.40, 0.41, 0.45]),  # differences -0.20 -0.21 -0.13: worse
    ]
    seeded = ablate.seed_columns(results)
    assert seeded["a"] == (pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6), "best")
    assert seeded["b"][1].startswith("indistinguishable at 95% (p=")
    se = math.sqrt(0.0019) / math.sqrt(3)  # the worked example of tests/test_stats.py, sign flipped
    t = 0.18 / se
    assert seeded["c"][1] == f"worse (p={1 - t / math.sqrt(2 + t * t):.2g})"
    ablate.write_table(tmp_path, results, None)
    with open(tmp_path / "ablation.csv", newline="") as f:
        rows = {r["variant"]: r for r in csv.DictReader(f)}
    assert rows["c"]["vs best"].startswith("worse") and rows["a"]["vs best"] == "best"
    assert float(rows["a"]["± 95%"]) == pytest.approx(0.049683, abs=1e-6)
    md = (tmp_path / "ablation.md").read_text()
    assert "| a | x=a | 0.6000 | 0.0497 | best |" in md
    assert "Indistinguishable from the best at 95%: a, b." in md
    # One seed (results scored before --probe-seeds, or N = 1): no such columns.
    assert ablate.seed_columns([seeded_result("a", [0.6]), seeded_result("b", [0.5])]) is None


def test_probe_seeds_score_each_variant_several_times(setup, tmp_path):
    data, task = setup
    out = tmp_path / "out"
    argv = ["--data", str(data), "--task", str(task), "--out", str(out), *TINY, "--eval-max-clips", "6"]
    assert ablate.main([*argv, "--only", "rlf", "--probe-seeds", "3"]) == 0
    result = json.loads((out / "variants" / "rlf" / "result.json").read_text())
    seed = result["settings"]["train"]["seed"]
    assert result["probe_seeds"] == [seed, seed + 1, seed + 2] and len(result["seed_scores"]) == 3
    assert result["score"] == pytest.approx(sum(result["seed_scores"]) / 3)
    assert result["eval"]["probe_seeds"] == 3
    with open(out / "ablation.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["vs best"] == "best" and row["± 95%"] != ""
    assert ablate.main([*argv, "--only", "rlf", "--probe-seeds", "0"]) == 2
