"""training.linear_eval (the paper's linear-evaluation protocol) and the probe's two protocols.

``write_tone_task`` (also used by the sweep and ablation tests) writes a tiny HEAR-format scene task of
generated tones: no synthesiser needed, a few hundred KB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from hear_abt.config import ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import save_pretrained
from training import linear_eval
from training.config import build_config
from training.linear_eval import (
    HearTask,
    LinearEvalSettings,
    average_precision,
    evaluate,
    fit_and_score,
    mean_average_precision,
    score_embeddings,
)
from training.probe import LinearProbe

TONES = {"low": 220.0, "mid": 880.0, "high": 3000.0}
TINY = ModelConfig(
    encoder="audiontt", encoder_kwargs={"channels": 8, "mlp_dim": 64}, norm=NormStats(-8.0, 4.0)
)


def write_tone_task(
    folder: Path,
    per_class: dict[str, int] | None = None,
    multilabel: bool = False,
    kfold: int = 0,
    seconds: float = 1.0,
    seed: int = 0,
) -> Path:
    """A HEAR scene task: each clip holds one tone (multiclass) or a random non-empty set of them
    (multilabel) in noise. ``per_class``: clips per class and split (default train 4, valid 2, test 2);
    ``kfold=k``: k folds ``fold00``.. of 3 clips per class each instead."""
    rng = np.random.default_rng(seed)
    splits = [f"fold{i:02d}" for i in range(kfold)] if kfold else ["train", "valid", "test"]
    per_class = per_class or ({s: 3 for s in splits} if kfold else {"train": 4, "valid": 2, "test": 2})
    labels = list(TONES)
    t = np.arange(int(16000 * seconds)) / 16000
    for split in splits:
        (folder / "16000" / split).mkdir(parents=True, exist_ok=True)
        entries = {}
        for c, label in enumerate(labels):
            for i in range(per_class[split]):
                chosen = [label]
                if multilabel:
                    chosen = sorted({label} | {x for x in labels if rng.random() < 0.3})
                wave = 0.02 * rng.standard_normal(t.size)
                for lab in chosen:
                    wave += 0.3 * np.sin(2 * np.pi * TONES[lab] * (1 + 0.02 * rng.standard_normal()) * t)
                name = f"{split}_{c}_{i}.wav"
                sf.write(folder / "16000" / split / name, wave.astype(np.float32), 16000)
                entries[name] = chosen
        (folder / f"{split}.json").write_text(json.dumps(entries))
    (folder / "labelvocabulary.csv").write_text(
        "idx,label\n" + "".join(f"{i},{x}\n" for i, x in enumerate(labels))
    )
    meta = {
        "task_name": folder.name,
        "embedding_type": "scene",
        "prediction_type": "multilabel" if multilabel else "multiclass",
        "split_mode": "new_split_kfold" if kfold else "trainvaltest",
        "splits": splits,
        "sample_duration": seconds,
        "sample_rate": 16000,
        "evaluation": ["mAP"] if multilabel else ["top1_acc"],
    }
    (folder / "task_metadata.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def tone_task(tmp_path_factory):
    return write_tone_task(tmp_path_factory.mktemp("tasks") / "tones")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(3)
    return ABTEmbedder(TINY)


# ---- metrics ------------------------------------------------------------------------------------


def test_map_equals_sklearn_on_a_fixed_case_with_ties_and_an_empty_class():
    from sklearn.metrics import average_precision_score

    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.3],
            [0.8, 0.4, 0.5, 0.2],
            [0.3, 0.4, 0.2, 0.9],
            [0.3, 0.7, 0.9, 0.1],
            [0.1, 0.2, 0.5, 0.5],
        ]
    )
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    expected = [average_precision_score(targets[:, c], scores[:, c]) for c in range(3)]  # class 3: none
    for c in range(3):
        assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(expected[c], abs=1e-12)
    assert np.isnan(average_precision(scores[:, 3], targets[:, 3]))
    assert mean_average_precision(scores, targets) == pytest.approx(np.mean(expected), abs=1e-12)
    # By hand, class 0: positives at ranks 1, 3 (tied with rank 4), 5 -> (1 + 2/4 + 3/5) / 3.
    assert expected[0] == pytest.approx((1 + 0.5 + 0.6) / 3)


@pytest.mark.parametrize("dim,n_train", [(4, 40), (16, 2000)])
def test_separable_embeddings_reach_accuracy_one(dim, n_train):
    rng = np.random.default_rng(0)
    centres = np.eye(4, dim) * 5.0  # 4 classes, one informative dimension each

    def make(n):
        y = np.arange(n) % 4
        return (centres[y] + rng.standard_normal((n, dim)) * 0.3).astype(np.float32), y

    result = fit_and_score(make(n_train), make(40), make(40), "multiclass", 4)
    assert result.test_score == 1.0 and result.valid_score == 1.0


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience():
    rng = np.random.default_rng(2)

    def noise(n):  # labels unrelated to the embeddings: the validation loss only gets worse
        return rng.standard_normal((n, 32)).astype(np.float32), rng.integers(0, 3, n)

    result = fit_and_score(noise(400), noise(100), noise(100), "multiclass", 3)
    assert result.epochs == result.best_epoch + 10 < 100
    by_score = fit_and_score(
        noise(400), noise(100), noise(100), "multiclass", 3, LinearEvalSettings(stop_on="score")
    )
    assert by_score.epochs == by_score.best_epoch + 10


def test_multilabel_separable_case_reaches_map_one():
    rng = np.random.default_rng(1)

    def make(n):
        y = (rng.random((n, 3)) < 0.4).astype(np.float32)
        y[np.arange(n), np.arange(n) % 3] = 1.0
        return (y * 4.0 + rng.standard_normal((n, 3)) * 0.2).astype(np.float32), y

    result = fit_and_score(make(600), make(60), make(60), "multilabel", 3)
    assert result.test_score == pytest.approx(1.0)


# ---- tasks --------------------------------------------------------------------------------------


def test_task_loading_trainvaltest_kfold_and_multilabel(tmp_path, tone_task):
    task = HearTask(tone_task)
    assert task.kind == "multiclass" and task.labels == ["low", "mid", "high"]
    assert {k: len(v.names) for k, v in task.splits.items()} == {"train": 12, "valid": 6, "test": 6}
    assert [(f.train, f.valid, f.test) for f in task.folds] == [(["train"], "valid", "test")]
    assert HearTask(tone_task, max_clips=5).splits["train"].targets.shape == (5,)

    folds = HearTask(write_tone_task(tmp_path / "k", kfold=3)).folds
    assert [(f.train, f.valid, f.test) for f in folds] == [
        (["fold02"], "fold01", "fold00"),
        (["fold00"], "fold02", "fold01"),
        (["fold01"], "fold00", "fold02"),
    ]
    ml = HearTask(write_tone_task(tmp_path / "ml", multilabel=True))
    assert ml.kind == "multilabel" and ml.metric == "mAP"
    targets = ml.splits["train"].targets
    assert targets.shape == (12, 3) and (targets.sum(1) >= 1).all()

    meta = json.loads((tone_task / "task_metadata.json").read_text())
    event = tmp_path / "event"
    event.mkdir()
    (event / "task_metadata.json").write_text(json.dumps({**meta, "embedding_type": "event"}))
    with pytest.raises(linear_eval.TaskError, match="scene embeddings"):
        HearTask(event)


def test_score_embeddings_on_folds_and_without_a_valid_split(tmp_path):
    task = HearTask(write_tone_task(tmp_path / "k", kfold=3))
    emb = {n: np.eye(3, 8)[s.targets].astype(np.float32) * 3 for n, s in task.splits.items()}
    result = score_embeddings(emb, task)
    assert len(result.folds) == 3 and result.score == 1.0
    task.folds[0].valid = None  # carved out of train instead
    assert score_embeddings(emb, task).folds[0]["valid_split"] == "carved from train"


def test_evaluate_a_model_with_crops_is_deterministic_and_leaves_rng_alone(tone_task, tiny_model):
    task = HearTask(tone_task)
    settings = LinearEvalSettings(crop_frames=50, max_epochs=30)
    state = torch.get_rng_state()
    a = evaluate(tiny_model, task, settings)
    assert torch.equal(state, torch.get_rng_state())
    b = evaluate(tiny_model, task, settings)
    assert a.score == b.score and a.valid_score == b.valid_score
    assert (
        0.0 <= a.score <= 1.0
        and a.metric == "accuracy"
        and a.embedding_dim == tiny_model.scene_embedding_size
    )
    # Tones at 220/880/3000 Hz are separable even by a random encoder.
    assert a.score >= 0.8, a
    # Crops change what is embedded.
    emb_full = linear_eval.embed_task(tiny_model, task, torch.device("cpu"), LinearEvalSettings())
    emb_crop = linear_eval.embed_task(tiny_model, task, torch.device("cpu"), settings)
    assert not np.allclose(emb_full["train"], emb_crop["train"])


def test_probe_protocols_and_the_setting(tone_task, tiny_model):
    logreg = LinearProbe(tone_task, 100)  # what pretrain.py calls
    assert logreg.name == "tones" and logreg.protocol == "logreg"
    assert 0.0 <= logreg.score(tiny_model.encoder, TINY, torch.device("cpu")) <= 1.0
    linear = LinearProbe(tone_task, 100, protocol="linear", crop_frames=96)
    score = linear.score(tiny_model.encoder, TINY, torch.device("cpu"))
    expected = evaluate(tiny_model, linear.task, linear.settings).valid_score
    assert score == expected
    assert build_config("cpu-tiny", ["probe_protocol=linear"]).probe_protocol == "linear"
    assert build_config("cpu-tiny").probe_protocol == "logreg"
    with pytest.raises(ValueError, match="probe_protocol"):
        build_config("cpu-tiny", ["probe_protocol=svm"])
    with pytest.raises(ValueError, match="protocol"):
        LinearProbe(tone_task, 10, protocol="svm")


def test_command(tmp_path, tone_task, tiny_model, capsys):
    weights = save_pretrained(tmp_path / "model", TINY, tiny_model.encoder.state_dict())
    out = tmp_path / "result.json"
    argv = [str(tone_task), "--weights", str(weights), "--crop-frames", "96", "--max-epochs", "20"]
    assert linear_eval.main(argv + ["--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "tones" and result["crop_frames"] == 96
    assert "test accuracy" in capsys.readouterr().out
    assert linear_eval.main([str(tmp_path), "--weights", str(weights)]) == 2
