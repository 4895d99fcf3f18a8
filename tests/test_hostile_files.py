"""Hostile and broken files: a full disk during an atomic write, and damaged prepared data folders."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import numpy as np
import pytest
import soundfile as sf

from hear_abt import fileio
from hear_abt.fileio import DiskFullError, atomic_open, atomic_write_bytes, atomic_write_text
from training import prepare as prep
from training.data import ShardDataError, ShardDataset


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------- full disk


@pytest.mark.parametrize("mode", ["wb", "w"])
def test_full_disk_at_fsync_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch, mode):
    target = tmp_path / "emb.npz"
    target.write_bytes(b"the previous, complete file")
    monkeypatch.setattr(fileio.os, "fsync", _enospc)
    with pytest.raises(DiskFullError) as err:
        with atomic_open(target, mode) as f:
            f.write(b"new" if mode == "wb" else "new")
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert err.value.filename == str(target)
    message = str(err.value)
    assert str(target) in message and "disk is full" in message and "No space left on device" in message
    assert target.read_bytes() == b"the previous, complete file"
    assert _only(tmp_path) == ["emb.npz"]  # no temporary left behind


def test_full_disk_during_a_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"partial")
        _enospc()

    with pytest.raises(OSError, match=r"disk is full") as err:
        with atomic_open(target) as f:
            write(f)
    assert err.value.errno == errno.ENOSPC and str(target) in str(err.value)
    assert target.read_bytes() == b"old" and _only(tmp_path) == ["out.bin"]


def test_full_disk_on_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio.os, "fsync", _enospc)
    with pytest.raises(DiskFullError):
        atomic_write_text(tmp_path / "new.json", "{}")
    with pytest.raises(DiskFullError):
        atomic_write_bytes(tmp_path / "new.bin", b"x")
    assert _only(tmp_path) == []


def test_other_os_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(PermissionError):
        with atomic_open(tmp_path / "x.bin") as f:
            f.write(b"x")
            raise PermissionError(errno.EACCES, "denied")
    assert _only(tmp_path) == []


def _noise(path, seconds=0.5, seed=0):
    wav = 0.1 * np.random.default_rng(seed).standard_normal(int(16000 * seconds))
    sf.write(path, wav.astype(np.float32), 16000)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i in range(3):
        _noise(root / f"clip{i}.wav", seconds=0.4 + 0.2 * i, seed=i)
    return root


def test_prepare_on_a_full_disk_stops_with_exit_2_and_a_message(src, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fileio.os, "fsync", _enospc)
    out = tmp_path / "out"
    assert prep.main([str(src), str(out), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "No space left on device" in err
    assert str(out / "shards" / "shard-000000.npy") in err  # the file being written
    assert "re-run the same command" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()
    assert _only(out / "shards") == []  # no temporaries, no half shard


# ------------------------------------------------------------------------------- damaged data


@pytest.fixture(scope="module")
def prepared(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    assert prep.main([str(src), str(out), "--workers", "1", "--clips-per-shard", "2", "--no-progress"]) == 0
    assert len(ShardDataset(out)) == 3
    return out


@pytest.fixture()
def data(prepared, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(prepared, copy)
    return copy


def _manifest(data):
    return json.loads((data / "manifest.json").read_text())


def _write_manifest(data, manifest):
    (data / "manifest.json").write_text(json.dumps(manifest))


def _refused(data, names, *also):
    with pytest.raises(ShardDataError) as err:
        ShardDataset(data)
    message = str(err.value)
    assert names in message, message
    assert "python -m training.prepare" in message, message
    for text in also:
        assert text in message, message
    return message


def _truncate(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


def test_truncated_shard_is_named(data):
    shard = data / "shards" / "shard-000000.npy"
    _truncate(shard, shard.stat().st_size - 100)
    _refused(data, str(shard), "truncated")


def test_truncated_shard_is_caught_without_the_recorded_sizes(data):
    manifest = _manifest(data)
    for record in manifest["shards"]:
        record.pop("data_bytes"), record.pop("index_bytes")
    _write_manifest(data, manifest)
    shard = data / "shards" / "shard-000000.npy"
    _truncate(shard, shard.stat().st_size - 100)
    _refused(data, str(shard), "not a readable .npy shard")
    _truncate(shard, 20)  # inside the header
    _refused(data, str(shard), "not a readable .npy shard")


@pytest.mark.parametrize("keep", [0, 20, -8])
def test_truncated_index_is_named(data, keep):
    manifest = _manifest(data)
    manifest["shards"][1].pop("index_bytes")
    _write_manifest(data, manifest)
    index = data / "shards" / "shard-000001.index.npy"
    _truncate(index, keep if keep >= 0 else index.stat().st_size + keep)
    _refused(data, str(index), "not a readable .npy index")


def test_index_pointing_past_its_shard_is_named(data):
    index_path = data / "shards" / "shard-000000.index.npy"
    index = np.load(index_path)
    index[-1, 1] += 1000  # same size on disk: only the bounds check can see it
    np.save(index_path, index)
    _refused(data, str(index_path), "clip 1 spans frames", "out of range")


def test_shard_whose_frame_count_disagrees_with_the_manifest_is_named(data):
    shard_path = data / "shards" / "shard-000000.npy"
    shard = np.load(shard_path)
    np.save(shard_path, shard[:-5])
    manifest = _manifest(data)
    manifest["shards"][0]["data_bytes"] = shard_path.stat().st_size
    _write_manifest(data, manifest)
    _refused(data, str(shard_path), f"holds {len(shard) - 5} frames, the manifest says {len(shard)}")


def test_index_with_the_wrong_clip_count_is_named(data):
    index_path = data / "shards" / "shard-000000.index.npy"
    np.save(index_path, np.load(index_path)[:1])
    manifest = _manifest(data)
    manifest["shards"][0]["index_bytes"] = index_path.stat().st_size
    _write_manifest(data, manifest)
    _refused(data, str(index_path), "lists 1 clips")


def test_shard_of_the_wrong_shape_is_named(data):
    shard_path = data / "shards" / "shard-000001.npy"
    np.save(shard_path, np.zeros((10, 3), dtype=np.float16))
    manifest = _manifest(data)
    manifest["shards"][1]["data_bytes"] = shard_path.stat().st_size
    _write_manifest(data, manifest)
    _refused(data, str(shard_path), "shape (10, 3)")


def test_missing_shard_file_is_named(data):
    (data / "shards" / "shard-000001.npy").unlink()
    _refused(data, str(data / "shards" / "shard-000001.npy"), "missing")


@pytest.mark.parametrize(
    "text,problem",
    [
        ('{"format_version": 1, "shards": [', "not valid JSON"),
        ("\xff\xfe garbage", "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
    ],
)
def test_manifest_that_is_not_a_json_object_is_named(data, text, problem):
    (data / "manifest.json").write_bytes(text.encode("latin-1"))
    _refused(data, str(data / "manifest.json"), problem)


@pytest.mark.parametrize(
    "edit,problem",
    [
        (lambda m: m.pop("norm"), "lacks ['norm']"),
        (lambda m: m.pop("shards"), "lacks ['shards']"),
        (lambda m: m.update(format_version="1"), "not an integer"),
        (lambda m: m.update(shards={"a": 1}), "'shards' is not a list"),
        (lambda m: m["shards"][0].pop("index"), "shard record 0 lacks ['index']"),
        (lambda m: m["shards"][1].update(clips="2"), "not a count"),
        (lambda m: m["shards"][0].update(data="../../etc/passwd"), "not a file inside the data folder"),
        (lambda m: m.update(frontend=[]), "'frontend' is not a JSON object"),
        (lambda m: m["frontend"].update(bogus=1), "invalid 'frontend' or 'norm'"),
        (lambda m: m["norm"].update(std=0.0), "invalid 'frontend' or 'norm'"),
    ],
)
def test_manifest_missing_or_bad_keys_is_named(data, edit, problem):
    manifest = _manifest(data)
    edit(manifest)
    _write_manifest(data, manifest)
    _refused(data, str(data / "manifest.json"), problem)


def test_newer_shard_format_says_upgrade(data):
    manifest = _manifest(data)
    manifest["format_version"] = prep.SHARD_FORMAT_VERSION + 1
    _write_manifest(data, manifest)
    _refused(data, "manifest.json", "upgrade hear-abt")


def test_pretrain_reports_damaged_data_as_an_error_line(data, tmp_path):
    from training import pretrain

    (data / "shards" / "shard-000000.index.npy").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        pretrain.main(["--preset", "cpu-tiny", "--data", str(data), "--run-dir", str(tmp_path / "run")])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "shard-000000.index.npy" in message
    assert "python -m training.prepare" in message


def test_atomic_writes_get_an_ordinary_files_mode_or_keep_the_old_one(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")  # mkstemp alone would give 0600
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    (tmp_path / "kept.txt").write_text("old")
    os.chmod(tmp_path / "kept.txt", 0o604)
    atomic_write_text(tmp_path / "kept.txt", "new")
    assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o604
    assert (tmp_path / "kept.txt").read_text() == "new"


def test_atomic_writes_make_missing_folders_and_never_clobber_a_leftover_temporary(tmp_path, monkeypatch):
    from hear_abt import fileio

    atomic_write_text(tmp_path / "a" / "b" / "new.txt", "x")  # folders made on the way
    assert (tmp_path / "a" / "b" / "new.txt").read_text() == "x"
    # A leftover of an earlier process that had this one's pid, at the name the counter gives next:
    monkeypatch.setattr(fileio, "_TEMP_COUNTER", __import__("itertools").count(7))
    leftover = tmp_path / f".out.txt.{os.getpid()}-7.tmp"
    leftover.write_text("someone else's")
    atomic_write_text(tmp_path / "out.txt", "mine")
    assert (tmp_path / "out.txt").read_text() == "mine"
    assert leftover.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a", "out.txt", leftover.name])
