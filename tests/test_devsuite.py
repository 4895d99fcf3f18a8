"""training.devsuite: HEAR task layout built from real synthesised sounds."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
import sounds

from training import devsuite

HEAR_METADATA_KEYS = {  # what heareval's embeddings and predictions runners read
    "task_name",
    "mode",
    "embedding_type",
    "prediction_type",
    "split_mode",
    "splits",
    "sample_duration",
    "evaluation",
}


@pytest.fixture(scope="module")
def speech_task(tmp_path_factory):
    out = tmp_path_factory.mktemp("devsuite")
    return devsuite.build_task(out, "speech-words", small=True, seed=0, jobs=2)


def _vocab(task_dir):
    with open(task_dir / "labelvocabulary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["idx"]) for r in rows] == list(range(len(rows)))
    return [r["label"] for r in rows]


def test_speech_task_layout_and_metadata(speech_task):
    names = sorted(p.name for p in speech_task.iterdir())
    assert names == sorted(
        [
            ".complete",
            "16000",
            "generation.json",
            "labelvocabulary.csv",
            "task_metadata.json",
            "train.json",
            "valid.json",
            "test.json",
        ]
    )
    meta = json.loads((speech_task / "task_metadata.json").read_text())
    assert HEAR_METADATA_KEYS <= meta.keys()
    assert meta["task_name"] == "speech-words" and meta["mode"] == "small"
    assert (meta["embedding_type"], meta["prediction_type"]) == ("scene", "multiclass")
    assert meta["split_mode"] == "trainvaltest" and meta["splits"] == ["train", "valid", "test"]
    assert meta["sample_duration"] == 1.0 and meta["evaluation"] == ["top1_acc"]
    assert _vocab(speech_task) == devsuite.WORDS


def test_speech_task_labels_and_audio(speech_task):
    vocab = set(_vocab(speech_task))
    total = 0
    for split in ("train", "valid", "test"):
        entries = json.loads((speech_task / f"{split}.json").read_text())
        wavs = sorted(os.listdir(speech_task / "16000" / split))
        assert sorted(entries) == wavs
        seen = set()
        for name, labels in entries.items():
            assert isinstance(labels, list) and len(labels) == 1 and labels[0] in vocab
            seen.add(labels[0])
            info = sf.info(str(speech_task / "16000" / split / name))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == 16000  # sample_duration 1.0 s exactly
        assert seen == vocab  # every word in every split
        total += len(entries)
    assert 50 <= total <= 80


def test_speech_clips_are_speech_not_silence(speech_task):
    name, _ = next(iter(json.loads((speech_task / "test.json").read_text()).items()))
    x, _ = sf.read(str(speech_task / "16000" / "test" / name))
    a, b = devsuite.active_span(x.astype(np.float32))
    assert 0.15 < (b - a) / 16000 < 1.0
    assert np.abs(x).max() > 0.2


def test_speech_splits_hold_out_voices(speech_task):
    gen = json.loads((speech_task / "generation.json").read_text())
    voices = {s: {c["voice"] for c in gen["clips"][s]} for s in ("train", "valid", "test")}
    assert all(voices.values())
    assert not voices["train"] & voices["test"]
    assert not voices["train"] & voices["valid"]
    assert not voices["valid"] & voices["test"]


def test_build_is_idempotent(speech_task):
    stamp = (speech_task / "task_metadata.json").stat().st_mtime_ns
    again = devsuite.build_task(speech_task.parent, "speech-words", small=True, seed=0, jobs=1)
    assert again == speech_task
    assert (speech_task / "task_metadata.json").stat().st_mtime_ns == stamp


def test_designs_are_deterministic_and_hold_out():
    for task, design in devsuite.DESIGNS.items():
        assert json.dumps(design(3, True)) == json.dumps(design(3, True)), task
        assert json.dumps(design(3, True)) != json.dumps(design(4, True)), task
    inst = devsuite.design_instrument(0, False)
    pitches = {s: {c["pitch"] for c in inst["clips"][s]} for s in ("train", "valid", "test")}
    assert not pitches["train"] & pitches["test"]
    pitch = devsuite.design_pitch(0, False)
    programs = {s: {c["program"] for c in pitch["clips"][s]} for s in ("train", "valid", "test")}
    assert not programs["train"] & programs["test"]
    assert pitch["labels"][0] == "48"  # idx % 12 is the chroma, as heareval's chroma_acc assumes


def test_metric_names_are_heareval_scores():
    score = pytest.importorskip(
        "heareval.score", reason="HEAR tools not installed (scripts/install_hear_tools.sh)"
    )
    for task, design in devsuite.DESIGNS.items():
        for metric in design(0, True)["evaluation"]:
            assert metric in score.available_scores, (task, metric)


def test_small_event_task(tmp_path):
    task_dir = devsuite.build_task(tmp_path, "events", small=True, seed=1, jobs=2)
    meta = json.loads((task_dir / "task_metadata.json").read_text())
    assert (meta["embedding_type"], meta["prediction_type"]) == ("event", "multilabel")
    vocab = set(_vocab(task_dir))
    for split in ("train", "valid", "test"):
        for name, events in json.loads((task_dir / f"{split}.json").read_text()).items():
            assert 1 <= len(events) <= 3
            info = sf.info(str(task_dir / "16000" / split / name))
            assert info.frames == int(meta["sample_duration"] * 16000)
            prev_end = 0.0
            for ev in events:
                assert set(ev) == {"label", "start", "end"} and ev["label"] in vocab
                assert prev_end < ev["start"] < ev["end"] <= 1000 * meta["sample_duration"]
                prev_end = ev["end"]


def test_sound_helpers(tmp_path):
    w = sounds.espeak_word("hello", "en-us", tmp_path / "hello.wav")
    info = sf.info(str(w))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16") and info.frames > 4000

    n = sounds.fluidsynth_note(0, 69, tmp_path / "a4.wav", seconds=0.75)
    x, sr = sounds.read_wav(n)
    assert sr == 16000 and len(x) == 12000
    spec = np.abs(np.fft.rfft(x[:8000] * np.hanning(8000)))
    f0 = np.argmax(spec[: 8000 * 600 // 16000]) * 16000 / 8000  # strongest peak below 600 Hz
    assert abs(f0 - 440) < 10

    assert sounds.tone(440, 0.5).shape == (8000,) and sounds.tone(440, 0.5).dtype == np.float32
    assert np.array_equal(sounds.noise(0.1, seed=3), sounds.noise(0.1, seed=3))
