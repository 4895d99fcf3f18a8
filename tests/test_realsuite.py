"""abt_eval.realsuite: HEAR tasks and a disjoint corpus from (here: fake) unpacked Debian packages.

The fake packages are folders laid out like the real ones (same paths under the package root, numpy
sounds as wav), marked unpacked, so nothing is fetched. Tests on the real packages skip unless they are
unpacked in ``$REALSUITE_CACHE`` (``python -m abt_eval.realsuite build ... --cache DIR`` does that).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from abt_eval import realsuite
from abt_eval.realsuite import sources
from abt_eval.realsuite.__main__ import main
from abt_eval.realsuite.corpus import suite_hashes_from_folder
from abt_eval.realsuite.folds import FoldsError, assign_folds, make_folds
from hear_abt.config import SAMPLE_RATE
from training.linear_eval import HearTask

SPLITS = ("train", "valid", "test")
LANGS = ("fr", "ru", "es")
STAMPS = [f"animals/stamp{i:02d}" for i in range(12)]
KITS = ["KitA", "KitB", "KitC", "KitD"]
EFFECTS = {  # 0ad-data path under audio/ -> its sfx class; swordhit_1{0,0a} are one take
    **{f"actor/singlesteps/fs_grass{i}.wav": "footsteps" for i in range(1, 7)},
    **{f"attack/weapon/swordhit_1{i}.wav": "sword-clash" for i in range(5)},
    "attack/weapon/swordhit_10a.wav": "sword-clash",
    **{f"resource/mining/mine_stone_0{i}.wav": "mining" for i in range(1, 7)},
    "interface/ui/chat_alert.wav": None,  # no class: not used
}
AMBIENCES = [f"ambient/weather/rain_1{i}.wav" for i in range(6)]


def _sound(seconds: float, freq: float, seed: int, sr: int = 22050) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-3 * t) + 0.01 * rng.standard_normal(len(t))
    return np.concatenate([np.zeros(sr // 10), x, np.zeros(sr // 10)]).astype(np.float32)


def _write(path: Path, x: np.ndarray, sr: int = 22050) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr)


def _package(cache: Path, name: str) -> Path:
    root = sources.package_dir(cache, name)
    root.mkdir(parents=True, exist_ok=True)
    sources.mark_unpacked(root, name, "0.test")
    return root


def _drumkit_xml(kit: str, instruments: dict[str, list[str]]) -> str:
    body = "".join(
        f"<instrument><id>{i}</id><name>{name}</name>"
        + "".join(f"<layer><filename>{f}</filename></layer>" for f in files)
        + "</instrument>"
        for i, (name, files) in enumerate(instruments.items())
    )
    return (
        f'<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit"><name>{kit}</name>{body}</drumkit_info>'
    )


def make_suite_packages(cache: Path) -> None:
    tux = _package(cache, "tuxpaint-stamps-default") / "usr/share/tuxpaint/stamps"
    for i, stamp in enumerate(STAMPS):
        _write(tux / f"{stamp}.wav", _sound(0.5, 900, i))  # the stamp's own sound: not speech, not used
        for j, lang in enumerate(LANGS):
            _write(tux / f"{stamp}_desc_{lang}.wav", _sound(0.8 + 0.1 * j, 200 + 100 * j, 10 * i + j))
    _write(tux / "animals/stamp00_desc_bg.wav", _sound(0.5, 300, 99))  # no unseen voice speaks it: not used
    for j, lang in enumerate(LANGS):  # the unseen voices: 4 prompts each, one long enough for 2 clips
        root = _package(cache, f"asterisk-core-sounds-{lang}-wav") / f"usr/share/asterisk/sounds/{lang}"
        for k, seconds in enumerate([0.7, 1.0, 1.2, 4.3]):
            x = _sound(seconds, 250 + 100 * j + 20 * k, 500 + 10 * j + k, sr=8000)
            _write(root / f"prompt{k}.wav", x, sr=8000)
        _write(root / "empty.wav", np.zeros(0, np.float32), sr=8000)  # asterisk has some: left out

    kits = _package(cache, "hydrogen-drumkits") / "usr/share/hydrogen/data/drumkits"
    for k, kit in enumerate(KITS + ["ElectricEmpireKit"]):
        pieces = {"Kick": ["kick-soft.wav", "kick-hard.wav"], "Snare Rock": ["snare.flac"]}
        pieces.update({"Closed HH": ["hh.wav"], "Zap": ["zap.wav"]})
        (kits / kit).mkdir(parents=True)
        (kits / kit / "drumkit.xml").write_text(_drumkit_xml(kit, pieces))
        for n, files in enumerate(pieces.values()):
            for f in files:
                _write(kits / kit / f, _sound(0.3 + 0.7 * (f.startswith("snare")), 60 + 500 * n, k * 10 + n))

    audio = _package(cache, "0ad-data") / "audio"
    for i, rel in enumerate(EFFECTS):
        _write(audio / rel, _sound(0.4, 400 + 300 * (i % 3), 100 + i))
    for i, rel in enumerate(AMBIENCES):
        _write(
            audio / rel, 0.05 * np.random.default_rng(200 + i).standard_normal(22050 * 7).astype(np.float32)
        )


def make_corpus_packages(cache: Path) -> tuple[str, str]:
    sonic = _package(cache, "sonic-pi-samples") / "usr/share/sonic-pi/samples"
    for i in range(5):
        _write(sonic / f"drum_{i}.flac", _sound(0.5 + i, 100 + 50 * i, 300 + i))
    lmms = _package(cache, "lmms-common") / "usr/share/lmms/samples"
    _write(
        lmms / "long.ogg", _sound(23.0, 440, 400, sr=16000), sr=16000
    )  # longer than a clip: cut into pieces
    (lmms / "broken.ogg").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")  # no decoder reads it
    return "sonic-pi-samples", "lmms-common"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("realsuite")
    cache, out = root / "cache", root / "suite"
    make_suite_packages(cache)
    realsuite.build_suite(
        out, cache, fetch=False, jobs=1, progress=False, event_clips={"train": 8, "valid": 4, "test": 4}
    )
    return cache, out


def _json(path: Path):
    return json.loads(path.read_text())


def _vocab(task_dir: Path) -> list[str]:
    with open(task_dir / "labelvocabulary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["idx"]) for r in rows] == list(range(len(rows)))
    return [r["label"] for r in rows]


@pytest.mark.parametrize("task", ["speech-language", "drums", "sfx", "events"])
def test_hear_layout_and_audio(built, task):
    _, out = built
    task_dir = out / task
    names = {p.name for p in task_dir.iterdir()}
    assert names == {".complete", "16000", "labelvocabulary.csv", "task_metadata.json", "provenance.json"} | {
        f"{s}.json" for s in SPLITS
    }
    meta = _json(task_dir / "task_metadata.json")
    n = int(round(meta["sample_duration"] * SAMPLE_RATE))
    vocab = set(_vocab(task_dir))
    for split in SPLITS:
        labels = _json(task_dir / f"{split}.json")
        assert labels, f"{task}/{split} is empty"
        assert set(labels) == {p.name for p in (task_dir / "16000" / split).iterdir()}
        for name, value in labels.items():
            info = sf.info(task_dir / "16000" / split / name)
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (
                SAMPLE_RATE,
                1,
                n,
                "PCM_16",
            )
            found = {v["label"] for v in value} if meta["embedding_type"] == "event" else set(value)
            assert found <= vocab


@pytest.mark.parametrize("task", ["speech-language", "drums", "sfx"])
def test_scene_tasks_read_by_linear_eval(built, task):
    hear = HearTask(built[1] / task)
    assert hear.labels == _vocab(built[1] / task)
    for split in SPLITS:
        assert len(hear.splits[split].audio) == len(_json(built[1] / task / f"{split}.json"))
        assert all(np.abs(x).max() > 0.01 for x in hear.splits[split].audio)  # not silent


def test_labels_and_clip_counts(built):
    _, out = built
    speech = {s: _json(out / "speech-language" / f"{s}.json") for s in SPLITS}
    assert _vocab(out / "speech-language") == sorted(LANGS)  # "bg" has no unseen voice
    assert len(speech["train"]) == len(STAMPS) * len(LANGS)  # one clip per spoken name
    assert len(speech["valid"]) + len(speech["test"]) == len(LANGS) * 5  # the 4.3 s prompts give 2 clips
    for split in ("valid", "test"):
        assert {v[0] for v in speech[split].values()} == set(LANGS)
    # 4 acoustic kits x (2 kick layers + snare + hihat); the electronic kit and "Zap" are left out
    drums = {s: _json(out / "drums" / f"{s}.json") for s in SPLITS}
    assert _vocab(out / "drums") == ["hihat", "kick", "snare"]
    assert sum(map(len, drums.values())) == len(KITS) * 4
    sfx = {s: _json(out / "sfx" / f"{s}.json") for s in SPLITS}
    assert sum(map(len, sfx.values())) == sum(1 for v in EFFECTS.values() if v)
    for split in SPLITS:  # stratified: every class in every split
        assert {v[0] for v in sfx[split].values()} == {"footsteps", "sword-clash", "mining"}
    events = {s: _json(out / "events" / f"{s}.json") for s in SPLITS}
    assert [len(events[s]) for s in SPLITS] == [8, 4, 4]


def test_splits_disjoint_by_source_file_and_group(built):
    cache, out = built
    for task in realsuite.TASKS:
        record = _json(out / task / "provenance.json")
        files = {s: {f["package"] + "/" + f["path"] for f in record["source_files"][s]} for s in SPLITS}
        groups = {s: {f["group"] for f in record["source_files"][s]} for s in SPLITS}
        for a, b in [("train", "valid"), ("train", "test"), ("valid", "test")]:
            assert not files[a] & files[b], f"{task}: a recording in {a} and {b}"
            assert not groups[a] & groups[b], f"{task}: a group in {a} and {b}"
        for split in SPLITS:  # every clip comes from its own split's recordings
            for clip in record["clips"][split].values():
                used = [clip["source"]] if "source" in clip else [clip["background"]]
                used += [ev["source"] for ev in clip.get("events", [])]
                assert set(used) <= files[split], (task, split, used)
    # speech: the translators train, the asterisk voices validate and test (no voice in two splits)
    speech = _json(out / "speech-language" / "provenance.json")["source_files"]
    assert {f["package"] for f in speech["train"]} == {"tuxpaint-stamps-default"}
    for split in ("valid", "test"):
        assert {f["package"] for f in speech[split]} == {f"asterisk-core-sounds-{x}-wav" for x in LANGS}
    # the two cuts of one sword take share a group
    sfx = _json(out / "sfx" / "provenance.json")["source_files"]
    group = {f["path"]: f["group"] for s in SPLITS for f in sfx[s]}
    assert group["audio/attack/weapon/swordhit_10.wav"] == group["audio/attack/weapon/swordhit_10a.wav"]
    assert len(set(group.values())) == len(group) - 1  # every other file is its own take


def test_event_labels(built):
    cache, out = built
    sfx_split = {
        f["path"]: s for s in SPLITS for f in _json(out / "sfx" / "provenance.json")["source_files"][s]
    }
    record = _json(out / "events" / "provenance.json")
    for split in SPLITS:
        labels = _json(out / "events" / f"{split}.json")
        for name, events in labels.items():
            assert 1 <= len(events) <= 3
            spans = sorted((e["start"], e["end"]) for e in events)
            assert all(0 <= a < b <= 5000 for a, b in spans)
            assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:])), "events overlap"
            for ev in record["clips"][split][name]["events"]:  # an event file keeps its sfx split
                assert sfx_split[ev["source"].split("/", 1)[1]] == split


def test_speech_is_band_limited_in_every_split(built):
    _, out = built
    for split in SPLITS:  # studio (22 kHz here) and telephone (8 kHz) recordings end up alike: < 4 kHz
        name = sorted(_json(out / "speech-language" / f"{split}.json"))[0]
        x, sr = sf.read(out / "speech-language" / "16000" / split / name)
        power = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / sr)
        assert power[freqs > 4200].sum() < 1e-4 * power.sum()


def test_provenance_records_packages_and_hashes(built):
    cache, out = built
    record = _json(out / "drums" / "provenance.json")
    assert record["packages"]["hydrogen-drumkits"]["version"] == "0.test"
    assert record["packages"]["hydrogen-drumkits"]["licence"]
    assert record["synthesis"].startswith("none")
    some = record["source_files"]["train"][0]
    assert some["sha256"] == sources.file_sha256(sources.package_dir(cache, some["package"]) / some["path"])
    assert some["label"] in _vocab(out / "drums")


def test_rebuild_is_skipped_and_identical(built, tmp_path):
    cache, out = built
    before = (out / "sfx" / "train.json").stat().st_mtime_ns
    realsuite.build_task(out, "sfx", cache, fetch=False, jobs=1, progress=False)
    assert (out / "sfx" / "train.json").stat().st_mtime_ns == before  # complete: not rebuilt
    again = realsuite.build_task(tmp_path, "sfx", cache, fetch=False, jobs=2, progress=False)
    for split in SPLITS:  # same seed: same clips, whatever the number of workers
        assert _json(again / f"{split}.json") == _json(out / "sfx" / f"{split}.json")
        name = sorted(_json(again / f"{split}.json"))[0]
        a, _ = sf.read(again / "16000" / split / name)
        b, _ = sf.read(out / "sfx" / "16000" / split / name)
        np.testing.assert_array_equal(a, b)


def test_corpus_is_built_from_other_packages(built, tmp_path):
    cache, out = built
    packages = make_corpus_packages(cache)
    corpus = realsuite.build_corpus(
        tmp_path / "corpus", cache, packages=packages, suite_dir=out, progress=False
    )
    record = _json(corpus / "corpus.json")
    wavs = sorted((corpus / "audio").iterdir())
    assert len(wavs) == len(record["clips"]) >= 4
    assert all(sf.info(w).frames == 10 * SAMPLE_RATE for w in wavs)
    assert {c["package"] for c in record["clips"]} == set(packages)
    assert record["suite_check"]["shared"] == 0 and record["suite_check"]["suite_files"] > 0
    assert record["unreadable"] == ["lmms-common/usr/share/lmms/samples/broken.ogg"]
    # a rerun completes a killed build with the same bytes; other settings are refused
    first = sf.read(wavs[0])[0]
    wavs[0].unlink()
    realsuite.build_corpus(corpus, cache, packages=packages, suite_dir=out, progress=False, jobs=2)
    np.testing.assert_array_equal(sf.read(wavs[0])[0], first)
    with pytest.raises(ValueError, match="other settings"):
        realsuite.build_corpus(corpus, cache, packages=packages, suite_dir=out, progress=False, seed=1)
    pieces = [p for c in record["clips"] if c["package"] == "lmms-common" for p in c["pieces"]]
    assert max(p["to_s"] - p["from_s"] for p in pieces) <= 10.0 and len(pieces) == 3  # 23 s in 3 pieces


def test_corpus_refuses_a_suite_recording(built, tmp_path):
    cache, out = built
    packages = make_corpus_packages(cache)
    stolen = sources.package_dir(cache, "hydrogen-drumkits") / "usr/share/hydrogen/data/drumkits/KitB/hh.wav"
    copy = sources.package_dir(cache, "lmms-common") / "usr/share/lmms/samples/renamed.wav"
    shutil.copyfile(stolen, copy)
    try:
        for suite_dir in (out, None):  # from the built suite's provenance, and from the packages
            with pytest.raises(realsuite.OverlapError, match="KitB/hh.wav"):
                realsuite.build_corpus(
                    tmp_path / "c", cache, packages=packages, suite_dir=suite_dir, fetch=False, progress=False
                )
        assert not (tmp_path / "c" / "audio").exists()  # refused before writing anything
    finally:
        copy.unlink()
    half_built = tmp_path / "half-built"
    shutil.copytree(out / "drums", half_built / "drums")
    (half_built / "sfx").mkdir()  # a task still being built: its recordings are unknown
    with pytest.raises(realsuite.OverlapError, match="unfinished: sfx"):
        realsuite.build_corpus(tmp_path / "e", cache, packages=packages, suite_dir=half_built, progress=False)
    with pytest.raises(realsuite.OverlapError, match="0ad-data"):  # a suite package is never corpus
        realsuite.build_corpus(tmp_path / "d", cache, packages=["0ad-data"], suite_dir=out, progress=False)


def test_check_disjoint_by_hash():
    realsuite.check_disjoint({"h1": "a/x.wav"}, {"h2": "b/x.wav"})
    with pytest.raises(realsuite.OverlapError, match="b/y.wav = a/x.wav"):
        realsuite.check_disjoint({"h1": "a/x.wav"}, {"h1": "b/y.wav"})


def test_drum_classes_from_instrument_names():
    expected = {
        "Pearl Kick": "kick",
        "c3 - bass drum 1": "kick",
        "Sabian Hat Semi-Open": "hihat",
        "Pedal HH": "hihat",
        "Snare Rimshot (Pearl Free Floating Maple 14x3.5)": "snare",
        "Pearl Side Stick": "rim",
        "Tom Low": "tom",
        "Paiste Bell": "cymbal",
        "ride-crash20inch": "cymbal",
        "Cowbell": "hand-percussion",
        "Djembe1 Slap": "hand-percussion",
        "Hand Clap": "clap",
        "Zap 1": None,
    }
    assert {name: sources.drum_class(name) for name in expected} == expected


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(realsuite.FetchError, match="hydrogen-drumkits is not unpacked"):
        realsuite.build_task(tmp_path / "out", "drums", tmp_path / "cache", fetch=False)
    # apt-get cannot fetch it (no network, unknown name, ...): the error names the package and the cause
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Unable to locate package' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = main(["build", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--tasks", "drums"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot fetch Debian package hydrogen-drumkits" in err and "Unable to locate package" in err


def test_command_line_builds_from_the_cache(built, tmp_path):
    cache, _ = built
    args = ["build", str(tmp_path), "--cache", str(cache), "--no-fetch", "--no-progress", "--jobs", "1"]
    assert main(args + ["--tasks", "drums"]) == 0
    assert (tmp_path / "drums" / ".complete").is_file() and not (tmp_path / "sfx").exists()
    with pytest.raises(SystemExit):
        main(args + ["--tasks", "nope"])


REAL_CACHE = os.environ.get("REALSUITE_CACHE", "")
REAL_PACKAGES = realsuite.TASK_PACKAGES["speech-language"] + ["hydrogen-drumkits", "0ad-data"]


@pytest.mark.skipif(
    not REAL_CACHE or any(sources.package_info(REAL_CACHE, p) is None for p in REAL_PACKAGES),
    reason="needs the Debian packages tuxpaint-stamps-default, asterisk-core-sounds-{es,fr,ru}-wav, "
    "hydrogen-drumkits and 0ad-data unpacked in "
    "$REALSUITE_CACHE (python -m abt_eval.realsuite build OUT --cache DIR; about 1.7 GB of downloads)",
)
def test_real_packages_give_the_documented_sources():
    cache = Path(REAL_CACHE)
    speech = sources.list_spoken_names(cache)
    assert {f.label for f in speech} == set(sources.TUXPAINT_LANGUAGES) and len(speech) > 7000
    prompts = sources.list_prompts(cache)
    assert {f.label for f in prompts} == set(sources.SPEECH_LANGUAGES) and len(prompts) > 1500
    drums = sources.list_drum_samples(cache)
    assert {"kick", "snare", "hihat", "tom", "cymbal"} <= {f.label for f in drums} and len(drums) > 500
    assert not any(Path(f.path).parts[5] in sources.ELECTRONIC_KITS for f in drums)
    effects = sources.list_effects(cache)
    assert {lab for lab, _ in sources.SFX_CLASSES} == {f.label for f in effects} and len(effects) > 500
    assert len(sources.list_ambiences(cache)) >= 30


# ---- k-fold selection tasks -------------------------------------------------------------------------


def test_assign_folds_keeps_groups_whole_and_balances_labels():
    rng = np.random.default_rng(0)
    clips, g = {}, 0
    for label, n_groups in (("a", 40), ("b", 23), ("c", 7)):
        for _ in range(n_groups):
            for j in range(int(rng.integers(1, 5))):  # 1-4 clips per group (velocity layers, cuts)
                clips[f"{label}{g}-{j}.wav"] = (label, f"g{g}")
            g += 1
    folds = assign_folds(clips, 5, seed=0)
    assert sorted(c for f in folds for c in f) == sorted(clips)  # every clip once
    fold_of = {c: i for i, f in enumerate(folds) for c in f}
    for group in {grp for _, grp in clips.values()}:
        assert len({fold_of[c] for c, (_, grp) in clips.items() if grp == group}) == 1
    for label in "abc":
        counts = [sum(clips[c][0] == label for c in f) for f in folds]
        assert max(counts) - min(counts) <= 4, (label, counts)  # at most one group's worth apart
    assert assign_folds(clips, 5, seed=0) == folds and assign_folds(clips, 5, seed=1) != folds
    with pytest.raises(FoldsError, match="two labels"):
        assign_folds({"x.wav": ("a", "g"), "y.wav": ("b", "g"), "z.wav": ("b", "h")}, 2, 0)
    with pytest.raises(FoldsError, match="cannot fill 5 folds"):
        assign_folds({"x.wav": ("a", "g")}, 5, 0)


@pytest.mark.parametrize("task", ["drums", "sfx"])
def test_folds_hold_train_and_valid_never_test(built, task, tmp_path):
    _, out = built
    src, dst = out / task, tmp_path / f"{task}-folds"
    assert main(["folds", str(src), str(dst), "--k", "3"]) == 0
    meta = _json(dst / "task_metadata.json")
    assert (meta["split_mode"], meta["nfolds"], meta["splits"]) == (
        "new_split_kfold",
        3,
        ["fold00", "fold01", "fold02"],
    )
    folds = {s: _json(dst / f"{s}.json") for s in meta["splits"]}
    # Exactly the train and valid clips, same audio and label; no test clip.
    expected = {}
    for split in ("train", "valid"):
        for name, label in _json(src / f"{split}.json").items():
            expected[(src / "16000" / split / name).read_bytes()] = label
    got = {(dst / "16000" / s / name).read_bytes(): label for s in folds for name, label in folds[s].items()}
    assert got == expected
    test_audio = {p.read_bytes() for p in (src / "16000" / "test").iterdir()}
    assert not test_audio & set(got)
    # A group (take, kit piece) never spans two folds.
    prov = _json(dst / "provenance.json")
    groups = [set(prov["folds"][s]["groups"]) for s in meta["splits"]]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1 :])
    # linear_eval reads it as 3 rotations: test fold i, valid fold i+1, train the rest.
    hear = HearTask(dst)
    assert [(f.test, f.valid) for f in hear.folds] == [
        ("fold00", "fold01"),
        ("fold01", "fold02"),
        ("fold02", "fold00"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [dst.name]  # built beside it, renamed into place
    # Made again with the same settings: kept; with others: refused, untouched.
    stamp = (dst / "fold00.json").stat().st_mtime_ns
    assert main(["folds", str(src), str(dst), "--k", "3"]) == 0
    assert (dst / "fold00.json").stat().st_mtime_ns == stamp
    with pytest.raises(FoldsError, match="made otherwise"):
        make_folds(src, dst, k=3, seed=1)


def test_folds_refuse_what_they_cannot_split(built, tmp_path, capsys):
    _, out = built
    assert main(["folds", str(out / "events"), str(tmp_path / "e")]) == 1
    assert "scene task with train/valid/test splits" in capsys.readouterr().err
    assert main(["folds", str(out / "drums"), str(tmp_path / "d"), "--k", "2"]) == 1
    assert "at least 3 folds" in capsys.readouterr().err
    # A folder that holds something else is never overwritten.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["folds", str(out / "drums"), str(other), "--k", "3"]) == 1
    assert "is not a folds task" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    half = tmp_path / "half"
    shutil.copytree(out / "drums", half)
    (half / ".complete").unlink()
    with pytest.raises(FoldsError, match="not a complete realsuite task"):
        make_folds(half, tmp_path / "h")


def test_a_suite_holding_folds_is_still_checked_against_the_corpus(built, tmp_path):
    _, out = built
    suite = tmp_path / "suite"
    shutil.copytree(out, suite)
    make_folds(suite / "sfx", suite / "sfx-folds", k=3)
    assert suite_hashes_from_folder(suite) == suite_hashes_from_folder(out)  # the same recordings
