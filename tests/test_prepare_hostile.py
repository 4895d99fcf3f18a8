"""training.prepare on hostile corpora: huge finite audio, all silence, FIFOs, non-finite statistics."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import soundfile as sf

from training import prepare as prep


def _noise(path, amplitude, n=8000, rate=16000):
    wav = amplitude * np.random.default_rng(0).standard_normal(n)
    sf.write(path, wav.astype(np.float32), rate, subtype="FLOAT")


def test_huge_finite_audio_is_skipped_by_name_and_statistics_stay_finite(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    _noise(src / "ok.wav", 0.1)
    _noise(src / "odd44101.wav", 0.1, n=44101, rate=44101)
    _noise(src / "huge.wav", 1e19)  # finite samples; the float32 power spectrum overflows
    with caplog.at_level("WARNING", logger="training.prepare"):
        assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    assert any("huge.wav" in r.getMessage() and "not finite" in r.getMessage() for r in caplog.records)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["path"] for s in manifest["skipped"]] == ["huge.wav"]
    assert "log-mel is not finite" in manifest["skipped"][0]["reason"]
    assert manifest["totals"]["clips"] == 2
    assert math.isfinite(manifest["norm"]["mean"]) and 0 < manifest["norm"]["std"] < 100


def test_only_unusable_files_is_an_error_and_writes_no_manifest(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _noise(src / "huge.wav", 1e20)
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 2
    assert "no audio frames" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_all_silence_corpus_is_refused_not_normalised_by_zero(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):
        sf.write(src / f"silence{i}.wav", np.zeros(8000, dtype=np.float32), 16000)
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 2
    assert "all silence" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_non_finite_shard_statistics_are_never_combined():
    records = [
        {"name": "shard-000000", "stats": {"count": 10, "sum": -50.0, "sumsq": 300.0}},
        {"name": "shard-000001", "stats": {"count": 10, "sum": float("nan"), "sumsq": float("inf")}},
    ]
    with pytest.raises(prep.PrepareError, match=r"not finite.*shard-000001.*--overwrite"):
        prep.combine_stats(records)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_wav_is_ignored_not_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _noise(src / "ok.wav", 0.1)
    os.mkfifo(src / "pipe.wav")  # opening it for reading would block forever
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["files"] == 1 and manifest["totals"]["clips"] == 1


def test_shards_are_written_through_the_shared_atomic_writer(tmp_path, monkeypatch):
    """An error while writing a shard leaves no shard file and no temporary behind."""
    src = tmp_path / "src"
    src.mkdir()
    _noise(src / "ok.wav", 0.1)

    def failing_save(f, array):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep.np, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        prep.prepare(src, tmp_path / "out", workers=1, progress=False)
    assert list((tmp_path / "out" / "shards").iterdir()) == []
