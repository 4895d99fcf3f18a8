"""abt_eval.devsuite: HEAR task layout built from real synthesised sounds (and abt_eval.sounds)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf
from sounds import needs_sound_programs

from abt_eval import devsuite, sounds
from hear_abt.config import SAMPLE_RATE

SR = SAMPLE_RATE
pytestmark = needs_sound_programs()

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
            str(SR),
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
    assert _vocab(speech_task) == devsuite.WORDS[: devsuite.SMALL_WORDS]


def test_speech_task_labels_and_audio(speech_task):
    vocab = set(_vocab(speech_task))
    total = 0
    for split in ("train", "valid", "test"):
        entries = json.loads((speech_task / f"{split}.json").read_text())
        wavs = sorted(os.listdir(speech_task / str(SR) / split))
        assert sorted(entries) == wavs
        seen = set()
        for name, labels in entries.items():
            assert isinstance(labels, list) and len(labels) == 1 and labels[0] in vocab
            seen.add(labels[0])
            info = sf.info(str(speech_task / str(SR) / split / name))
            assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
            assert info.frames == SR  # sample_duration 1.0 s exactly
        assert seen == vocab  # every word in every split
        total += len(entries)
    assert 50 <= total <= 80


def _frame_rms(x, hop=160):
    n = len(x) // hop
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))


def test_speech_clips_are_noisy_speech_at_a_random_gain(speech_task):
    gen = json.loads((speech_task / "generation.json").read_text())
    lo, hi = devsuite.SCENE_CONDITIONS["speech-words"]["snr_db"]
    peaks = []
    for split in ("train", "valid", "test"):
        for clip in gen["clips"][split]:
            assert lo <= clip["snr_db"] <= hi and devsuite.GAIN_DB[0] <= clip["gain_db"] <= 0
            assert sum(clip["noise"].values()) == pytest.approx(1.0, abs=0.01)
        for clip in gen["clips"][split][:10]:
            x, _ = sf.read(str(speech_task / str(SR) / split / clip["filename"]), dtype="float32")
            peak = float(np.abs(x).max())
            # peak 0.9 at 0 dB gain (within 16-bit rounding)
            assert peak == pytest.approx(0.9 * 10 ** (clip["gain_db"] / 20), rel=0.01)
            rms = _frame_rms(x)
            assert rms.min() > 1e-3 * peak  # a noise floor everywhere, no digital silence
            assert rms.max() > 2 * np.median(rms)  # and a word above it
            peaks.append(peak)
    assert max(peaks) / min(peaks) > 3  # gains really vary


def test_speech_clip_is_the_clean_word_plus_noise_at_the_snr(speech_task):
    gen = json.loads((speech_task / "generation.json").read_text())
    clip = next(c for c in gen["clips"]["test"] if c["distractor"] is None)
    clean = devsuite._speech_clip(clip, 1.0)  # the same word at the same offset, before mixing
    y, _ = sf.read(str(speech_task / str(SR) / "test" / clip["filename"]), dtype="float32")
    scale = float(np.dot(y, clean) / np.dot(clean, clean))
    residual = y - scale * clean
    assert not np.allclose(y, scale * clean, atol=1e-3)
    snr = 10 * np.log10(sounds.active_power(scale * clean) / np.mean(residual**2))
    assert snr == pytest.approx(clip["snr_db"], abs=1.0)


def test_scene_mix_levels_and_determinism():
    x = sounds.place(sounds.tone(440, 0.4), SR, SR // 4)
    d = sounds.place(sounds.tone(660, 0.3), SR, SR // 2)
    cond = {"snr_db": 10.0, "gain_db": -6.0, "noise": {"white": 0.2, "pink": 0.3, "brown": 0.5}}

    def mix(seed, **kw):
        return devsuite.scene_mix(x, cond, np.random.default_rng(seed), **kw)

    a = mix(5)
    assert np.array_equal(a, mix(5)) and not np.array_equal(a, mix(6))
    assert np.abs(a).max() == pytest.approx(0.9 * 10 ** (-6 / 20), rel=1e-4)
    # the noise before the tone is 10 dB below the tone's power
    pre = np.mean(a[: SR // 4 - 1000] ** 2)
    tone_power = sounds.active_power(a[SR // 4 : SR // 4 + int(0.4 * SR)])
    assert 10 * np.log10(tone_power / pre) == pytest.approx(10.0, abs=1.5)
    with_d = mix(5, distractor=d, distractor_db=-10.0)
    assert not np.array_equal(with_d, a)

    white = sounds.coloured_noise(SR, {"white": 1.0}, np.random.default_rng(0))
    brown = sounds.coloured_noise(SR, {"brown": 1.0}, np.random.default_rng(0))
    for n in (white, brown):
        assert np.sqrt(np.mean(n**2)) == pytest.approx(1.0, rel=1e-3)

    def low_share(n):  # power below 500 Hz (1 s of noise: 1 Hz per bin)
        p = np.abs(np.fft.rfft(n)) ** 2
        return p[:500].sum() / p.sum()

    assert low_share(white) < 0.1 < 0.9 < low_share(brown)


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


def test_class_lists():
    assert len(devsuite.WORDS) == len(set(devsuite.WORDS)) == 20 and devsuite.SMALL_WORDS == 10
    assert 12 <= len(devsuite.INSTRUMENTS) <= 16
    assert len(set(devsuite.INSTRUMENTS.values())) == len(devsuite.INSTRUMENTS)
    for confusable in (("violin", "viola", "cello"), ("trumpet", "trombone"), ("flute", "piccolo")):
        assert set(confusable) <= set(devsuite.INSTRUMENTS)
    assert devsuite.design_speech_words(0, False)["labels"] == devsuite.WORDS
    assert devsuite.design_instrument(0, False)["labels"] == list(devsuite.INSTRUMENTS)


def test_distractors_keep_the_splits_held_out():
    speech = devsuite.design_speech_words(0, False)
    voices = {s: {c["voice"] for c in speech["clips"][s]} for s in ("train", "valid", "test")}
    n = 0
    for split, clips in speech["clips"].items():
        for c in clips:
            d = c["distractor"]
            if d:
                n += 1
                assert d["voice"] in voices[split] and d["voice"] != c["voice"] and d["word"] != c["word"]
                assert d["level_db"] < 0
    assert 0.2 < n / sum(len(c) for c in speech["clips"].values()) < 0.6

    inst = devsuite.design_instrument(0, False)
    pitches = {s: {c["pitch"] for c in inst["clips"][s]} for s in ("train", "valid", "test")}
    n = 0
    for split, clips in inst["clips"].items():
        for c in clips:
            assert 0 <= c["offset"] and c["offset"] + c["hold"] < 1.0
            d = c["distractor"]
            if d:
                n += 1
                assert d["pitch"] in pitches[split] and d["label"] != c["label"] and d["level_db"] < 0
    assert n > 0
    pitch = devsuite.design_pitch(0, False)
    assert all(c["distractor"] is None for cs in pitch["clips"].values() for c in cs)


def test_note_clips_are_deterministic_and_noisy(tmp_path):
    design = devsuite.design_instrument(0, True)
    jobs = [c for c in design["clips"]["test"] if c["distractor"]][:1]
    jobs += [c for c in design["clips"]["test"] if not c["distractor"]][:1]
    a = devsuite._work_notes(jobs, str(tmp_path / "a"), 1.0, sounds.DEFAULT_SOUNDFONT)
    b = devsuite._work_notes(jobs, str(tmp_path / "b"), 1.0, sounds.DEFAULT_SOUNDFONT)
    assert a == {j["filename"]: [j["label"]] for j in jobs} == b
    for j in jobs:
        x, _ = sf.read(str(tmp_path / "a" / j["filename"]), dtype="float32")
        y, _ = sf.read(str(tmp_path / "b" / j["filename"]), dtype="float32")
        assert np.array_equal(x, y)
        rms = _frame_rms(x)
        assert rms.min() > 1e-3 * np.abs(x).max()  # a noise floor everywhere
    # the note starts at its offset: before it, only noise (at least 5 dB below the note)
    j = jobs[1]
    x, _ = sf.read(str(tmp_path / "a" / j["filename"]), dtype="float32")
    k = int(j["offset"] * SR)
    assert k > SR // 10 and np.mean(x[k : k + SR // 5] ** 2) > 2 * np.mean(x[: k - SR // 100] ** 2)


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


@pytest.mark.heartools
def test_metric_names_are_heareval_scores():
    score = pytest.importorskip(
        "heareval.score", reason="HEAR tools not installed (.venv/bin/python -m abt_eval.hear_tools install)"
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
            info = sf.info(str(task_dir / str(SR) / split / name))
            assert info.frames == int(meta["sample_duration"] * SR)
            prev_end = 0.0
            for ev in events:
                assert set(ev) == {"label", "start", "end"} and ev["label"] in vocab
                assert prev_end < ev["start"] < ev["end"] <= 1000 * meta["sample_duration"]
                prev_end = ev["end"]


def test_sound_helpers(tmp_path):
    w = sounds.espeak_word("hello", "en-us", tmp_path / "hello.wav")
    info = sf.info(str(w))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16") and info.frames > SR // 4

    n = sounds.fluidsynth_note(0, 69, tmp_path / "a4.wav", seconds=0.75)
    x, sr = sounds.read_mono(n)
    assert sr == SR and len(x) == int(0.75 * SR)
    m = SR // 2  # a 0.5 s window: 2 Hz per bin
    spec = np.abs(np.fft.rfft(x[:m] * np.hanning(m)))
    f0 = np.argmax(spec[: m * 600 // SR]) * SR / m  # strongest peak below 600 Hz
    assert abs(f0 - 440) < 10

    assert sounds.tone(440, 0.5).shape == (SR // 2,) and sounds.tone(440, 0.5).dtype == np.float32
    assert np.array_equal(sounds.noise(0.1, seed=3), sounds.noise(0.1, seed=3))


def test_write_wav_replaces_atomically_and_seeds_are_stable(tmp_path):
    path = sounds.write_wav(tmp_path / "a.wav", sounds.tone(440, 0.1))
    sounds.write_wav(path, sounds.noise(0.2))
    x, sr = sounds.read_mono(path)
    assert sr == SR and len(x) == SR // 5
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]  # no temporary file left beside it
    assert sounds.seed_for(0, "a", 1) == sounds.seed_for(0, "a", 1) != sounds.seed_for(0, "a", 2)
    # pinned: a change here changes every suite and corpus built from a seed
    assert sounds.seed_for(0, "speech-words") == 10194251598797333982
