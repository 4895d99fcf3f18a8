"""hear_abt.embeddings_io: each format's writer and reader round trip, failed files leave nothing,
and the files written are today's (keys, names, index fields and their order)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from hear_abt.embeddings_io import (
    INDEX_NAME,
    FolderWriter,
    NpzWriter,
    RunInfo,
    open_embeddings,
    read_npz,
)

D, SCENE_D = 6, 5


@dataclass
class Result:  # what embed_file returns, as far as the writers read it
    n_samples: int
    n_timestamps: int
    scene: Optional[np.ndarray]
    streamed: bool


def info(what="both"):
    return RunInfo("audiontt", "w/", what, "faithful", 16000, 50.0, SCENE_D, D)


def fake_file(seed, n_ts):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_ts, D)).astype(np.float32)
    ms = (np.arange(n_ts) * 50.0).astype(np.float32)
    return emb, ms, rng.standard_normal(SCENE_D).astype(np.float32)


def write_run(writer, tmp_path, lengths=(7, 3, 11), fail_at=1):
    """Files with ``lengths`` timestamps (fed in chunks of 4); the one at ``fail_at`` fails part-way."""
    expected = []
    for i, n_ts in enumerate(lengths):
        emb, ms, scene = fake_file(i, n_ts)
        audio = tmp_path / f"a{i}.wav"
        try:
            with writer.file() as sink:
                for k in range(0, n_ts, 4):
                    sink(emb[k : k + 4], ms[k : k + 4])
                if i == fail_at:
                    raise RuntimeError("unreadable part-way")
        except RuntimeError:
            continue
        writer.add(audio, Result(n_ts * 800, n_ts, scene, streamed=n_ts > 10), sink)
        expected.append((str(audio.resolve()), emb, ms, scene))
    failures = [(str(tmp_path / f"a{fail_at}.wav"), "unreadable part-way")] if fail_at is not None else []
    writer.finish(failures)
    return expected, failures


@pytest.mark.parametrize("what", ["both", "scene", "timestamp"])
def test_each_format_round_trips_and_both_read_alike(tmp_path, what):
    want_ts = what != "scene"
    npz_expected, failures = write_run(NpzWriter(tmp_path / "emb.npz", info(what)), tmp_path)
    dir_expected, _ = write_run(FolderWriter(tmp_path / "emb", info(what)), tmp_path)
    npz, folder = read_npz(tmp_path / "emb.npz"), open_embeddings(tmp_path / "emb")
    for got in (npz, folder):
        assert [f["audio"] for f in got["failed"]] == [a for a, _ in failures]
        assert [f["audio"] for f in got["files"]] == [a for a, *_ in npz_expected]
        for i, (entry, (_, emb, ms, scene)) in enumerate(zip(got["files"], npz_expected)):
            if want_ts:
                assert entry["n_timestamps"] == len(emb)
                np.testing.assert_array_equal(entry["timestamp_embeddings"], emb)
                np.testing.assert_array_equal(entry["timestamps_ms"], ms)
            else:
                assert "timestamp_embeddings" not in entry
            if what != "timestamp":
                assert entry["scene_row"] == i
                np.testing.assert_array_equal(got["scene_embeddings"][entry["scene_row"]], scene)
        if what == "timestamp":
            assert got["scene_embeddings"] is None
    assert folder["failed"][0]["reason"] == "unreadable part-way"  # the .npz keeps no reasons
    if want_ts:  # the folder's arrays are memory-mapped, and the failed file's number was reused
        assert isinstance(folder["files"][0]["timestamp_embeddings"], np.memmap)
        names = sorted(p.name for p in (tmp_path / "emb" / "timestamps").iterdir())
        assert names == [f"{i:06d}.{k}.npy" for i in range(2) for k in ("emb", "ms")]
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # every file renamed into place, the failed one's temporaries removed


def test_the_files_written_are_todays(tmp_path):
    write_run(NpzWriter(tmp_path / "emb.npz", info()), tmp_path)
    with np.load(tmp_path / "emb.npz") as data:
        assert data.files == [
            "files",
            "failed",
            "scene_embeddings",
            "timestamp_embeddings",
            "timestamps_ms",
            "timestamp_offsets",
        ]
        assert list(data["timestamp_offsets"]) == [0, 7, 18]
    write_run(FolderWriter(tmp_path / "emb", info()), tmp_path)
    index = json.loads((tmp_path / "emb" / INDEX_NAME).read_text())
    assert list(index) == [
        "format",
        "version",
        "encoder",
        "weights",
        "what",
        "timestamp_mode",
        "sample_rate",
        "timestamp_hop_ms",
        "scene_embedding_size",
        "timestamp_embedding_size",
        "scene_embeddings",
        "files",
        "failed",
    ]
    assert index["format"] == "hear-abt-embeddings" and index["version"] == 1
    assert list(index["files"][1]) == [
        "audio",
        "seconds",
        "n_samples",
        "n_timestamps",
        "streamed",
        "scene_row",
        "timestamp_embeddings",
        "timestamps_ms",
    ]
    assert index["files"][1]["timestamp_embeddings"] == "timestamps/000001.emb.npy"
    assert index["scene_embeddings"] == "scene_embeddings.npy" and index["files"][1]["seconds"] == 0.55


def test_an_interrupted_file_leaves_nothing_and_no_index(tmp_path):
    writer = FolderWriter(tmp_path / "emb", info())
    with pytest.raises(KeyboardInterrupt):
        with writer.file() as sink:
            sink(*fake_file(0, 4)[:2])
            raise KeyboardInterrupt
    assert list((tmp_path / "emb" / "timestamps").iterdir()) == []
    assert not (tmp_path / "emb" / INDEX_NAME).exists()  # an interrupted run: no index


def test_a_rewritten_folder_drops_the_old_per_file_arrays(tmp_path):
    write_run(FolderWriter(tmp_path / "emb", info()), tmp_path, lengths=(2, 2, 2, 2), fail_at=None)
    write_run(FolderWriter(tmp_path / "emb", info("scene")), tmp_path, lengths=(2,), fail_at=None)
    assert list((tmp_path / "emb" / "timestamps").iterdir()) == []
    index = open_embeddings(tmp_path / "emb")
    assert len(index["files"]) == 1 and index["scene_embeddings"].shape == (1, SCENE_D)


SYNC_MODES = ["fsync"] + (["syncfs"] if __import__("hear_abt.fileio").fileio._SYNCFS is not None else [])


@pytest.fixture(params=SYNC_MODES)
def sync_mode(request, monkeypatch):
    """Both ways FileSyncer makes files durable: one syncfs per file system (Linux), or an fsync per
    file in a background thread (elsewhere: forced here by hiding syncfs)."""
    from hear_abt import fileio

    if request.param == "fsync":
        monkeypatch.setattr(fileio, "_SYNCFS", None)
    return request.param


def test_per_file_arrays_are_durable_before_the_index_lists_them(tmp_path, monkeypatch, sync_mode):
    """--out-dir leaves the per-file arrays' durability to a FileSyncer, but every one of them (and
    their folder) is made durable before index.json is written; the index itself and the scene file
    are fsynced as ever."""
    import os

    from hear_abt import embeddings_io, fileio

    synced: list[str] = []  # fsynced paths, and "syncfs:<folder>" for each syncfs, in order
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    if sync_mode == "syncfs":
        real_syncfs = fileio._SYNCFS

        def recording_syncfs(fd):
            synced.append("syncfs:" + os.path.realpath(f"/proc/self/fd/{fd}"))
            return real_syncfs(fd)

        monkeypatch.setattr(fileio, "_SYNCFS", recording_syncfs)
    index_written_after: list[list[str]] = []
    real_write = embeddings_io.atomic_write_text

    def recording_write(path, text):
        index_written_after.append(list(synced))
        real_write(path, text)

    monkeypatch.setattr(embeddings_io, "atomic_write_text", recording_write)
    out = tmp_path / "emb"
    writer = FolderWriter(out, info())
    assert isinstance(writer.syncer, fileio.FileSyncer)
    for i in range(3):
        emb, ms, scene = fake_file(i, 4)
        with writer.file() as sink:
            sink(emb, ms)
        writer.add(tmp_path / f"a{i}.wav", Result(4 * 800, 4, scene, streamed=False), sink)
    writer.finish([])

    arrays = sorted(str(p.resolve()) for p in (out / "timestamps").iterdir())
    assert len(arrays) == 6
    (before_index,) = index_written_after
    timestamps_folder = str((out / "timestamps").resolve())
    if sync_mode == "syncfs":  # one call for the file system, after every array was renamed into place
        assert [s for s in before_index if s.startswith("syncfs:")] == ["syncfs:" + timestamps_folder]
        assert not set(arrays) & set(before_index)  # and no fsync per file
    else:
        assert set(arrays) <= set(before_index)
        assert timestamps_folder in before_index  # the renames, too
    scene_tmp = str((out / ".scene_embeddings.npy.").resolve())  # fsynced before its rename, as before
    assert any(path.startswith(scene_tmp) for path in before_index)
    assert synced[-1].startswith(str(out.resolve()))  # the index's own temporary file, then renamed


def test_a_file_that_cannot_be_made_durable_fails_the_run_naming_it(tmp_path, sync_mode):
    from hear_abt.fileio import file_syncer

    syncer = file_syncer()
    good = tmp_path / "good.npy"
    good.write_bytes(b"x")
    gone = tmp_path / "vanished.npy"
    gone.write_bytes(b"x")
    syncer.add(good)
    syncer.add(gone)
    gone.unlink()  # e.g. removed by someone else before it was made durable
    with pytest.raises(OSError, match="vanished.npy"):
        syncer.wait()
    syncer.add(good)  # usable again after the error was reported
    syncer.wait()


@pytest.mark.skipif("syncfs" not in SYNC_MODES, reason="no syncfs here")
def test_a_failing_syncfs_fails_the_run_naming_the_folder(tmp_path, monkeypatch):
    import ctypes
    import errno

    from hear_abt import fileio

    def failing_syncfs(fd):
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(fileio, "_SYNCFS", failing_syncfs)
    syncer = fileio.file_syncer()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.npy").write_bytes(b"x")
    syncer.add(tmp_path / "sub" / "a.npy")
    with pytest.raises(OSError, match=r"sub durable \(syncfs\): Input/output error") as err:
        syncer.wait()
    assert err.value.errno == errno.EIO
    syncer.wait()  # nothing left to do


def test_the_index_names_each_audio_file_by_its_resolved_path(tmp_path, monkeypatch):
    """Folders are resolved once and reused; a symbolic link to a file is still followed to its target,
    and relative paths, links to folders and '..' give what Path.resolve() gives."""
    real = tmp_path / "real"
    real.mkdir()
    for name in ("a.wav", "b.wav", "target.wav"):
        (real / name).write_bytes(b"")
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    (real / "link.wav").symlink_to(real / "target.wav")
    monkeypatch.chdir(real)
    audio = [
        tmp_path / "linked" / "a.wav",
        tmp_path / "linked" / "b.wav",  # the folder's resolution reused
        real / "link.wav",  # -> target.wav
        tmp_path / "linked" / "link.wav",
        real / ".." / "real" / "a.wav",
        "b.wav",
    ]
    writer = FolderWriter(tmp_path / "emb", info("scene"))
    for i, a in enumerate(audio):
        writer.add(a, Result(800, 1, fake_file(i, 1)[2], streamed=False), writer.file().__enter__())
    got = [e["audio"] for e in writer.entries]
    assert got == [str(Path(a).resolve()) for a in audio]
    assert got[2] == got[3] == str(real / "target.wav")


@pytest.mark.skipif("syncfs" not in SYNC_MODES, reason="no syncfs here")
def test_an_abandoned_syncer_closes_the_folder_descriptors_it_opened(tmp_path):
    """(syncfs mode: the folders' descriptors are held from their first file until wait())"""
    import gc
    import os

    from hear_abt.fileio import file_syncer

    before = len(os.listdir("/proc/self/fd"))
    syncer = file_syncer()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.npy").write_bytes(b"x")
        syncer.add(tmp_path / name / "x.npy")
    assert len(os.listdir("/proc/self/fd")) == before + 2  # held until wait()
    del syncer  # never waited for, as when a run is interrupted
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
