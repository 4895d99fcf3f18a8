"""hear_abt.dataset_embed: datasets of files embedded in batches equal one-by-one embedding (files,
order, failures and their reasons, embeddings), memory stays bounded, and bad inputs to its entry points
get the HEAR API's errors."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_abt
import hear_abt.dataset_embed as dataset_embed
from hear_abt import AudioInputError
from hear_abt.cli import main
from hear_abt.config import ModelConfig, NormStats
from hear_abt.dataset_embed import Progress, embed_clips, embed_files
from hear_abt.embed_processes import WorkerDied
from hear_abt.embedder import ABTEmbedder
from hear_abt.embeddings_io import FolderWriter, NpzWriter, RunInfo, open_embeddings, read_npz
from hear_abt.streaming import embed_file
from hear_abt.weights import save_pretrained

SR = 16000
NORM = NormStats(-5.0, 4.0)


def _model(encoder="audiontt", mode="faithful"):
    torch.manual_seed(0)
    kwargs = {"channels": 8, "mlp_dim": 32} if encoder == "audiontt" else {"depth": 1}
    return ABTEmbedder(ModelConfig(encoder=encoder, encoder_kwargs=kwargs, norm=NORM), timestamp_mode=mode)


def _clip(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.2 * rng.standard_normal(n) * np.abs(np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    x += 0.1 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)
    return x.astype(np.float32)


def _info(model, what="both"):
    return RunInfo(
        "audiontt",
        "test",
        what,
        model.timestamp_mode,
        SR,
        50.0,
        model.scene_embedding_size,
        model.timestamp_embedding_size,
    )


def _one_by_one(files, model, writer, chunk_seconds):
    """Today's `hear-abt embed` loop (one embed_file per file), the reference."""
    failures = []
    for path in files:
        try:
            with writer.file() as sink:
                result = embed_file(
                    path,
                    model,
                    scene=writer.info.scene,
                    timestamps=writer.info.timestamps,
                    on_timestamps=sink,
                    chunk_seconds=chunk_seconds,
                )
        except Exception as err:
            reason = str(err) if str(path) in str(err) else f"{path}: {type(err).__name__}: {err}"
            failures.append((str(path), reason))
            continue
        writer.add(path, result, sink)
    writer.finish(failures)
    return failures


@pytest.fixture
def dataset(tmp_path):
    """Clips of three lengths interleaved (some 44.1 kHz stereo), a long file, and bad files between."""
    folder = tmp_path / "audio"
    folder.mkdir()
    files = []
    lengths = [8000, 12345, 8000, 8000, 4000, 12345, 8000, 8000, 12345, 8000]
    for i, n in enumerate(lengths):
        path = folder / f"c{i:02d}.wav"
        sf.write(path, _clip(n, i), SR, subtype="FLOAT")
        files.append(path)
    stereo = folder / "stereo44k.flac"  # resampled: its 16 kHz length is found by decoding
    sf.write(stereo, np.stack([_clip(44100, 50), _clip(44100, 51)], axis=1), 44100)
    long = folder / "long.wav"  # streamed in chunks with chunk_seconds=1
    sf.write(long, _clip(SR * 4 + 321, 60), SR, subtype="FLOAT")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wav")
    nan = _clip(8000, 70)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(folder / "huge.wav", _clip(8000, 71) * 1e12, SR, subtype="FLOAT")
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), SR)
    bad = [folder / n for n in ("broken.wav", "nan.wav", "huge.wav", "empty.wav")]
    order = files[:3] + [stereo, bad[0]] + files[3:6] + [long, bad[1]] + files[6:8] + bad[2:] + files[8:]
    return order


def _rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) if a.size else 0.0


def _assert_same_run(got, want, bitwise):
    assert [e["audio"] for e in got["files"]] == [e["audio"] for e in want["files"]]
    for key in ("n_samples", "n_timestamps", "streamed", "scene_row", "timestamp_embeddings"):
        if key in want["files"][0] and not isinstance(want["files"][0][key], np.ndarray):
            assert [e[key] for e in got["files"]] == [e[key] for e in want["files"]], key
    assert got["failed"] == want["failed"]  # the same files, in order, with the same reasons
    for g, w in zip(got["files"], want["files"]):
        np.testing.assert_array_equal(g["timestamps_ms"], w["timestamps_ms"])
        if bitwise:
            np.testing.assert_array_equal(g["timestamp_embeddings"], w["timestamp_embeddings"])
        assert _rel(g["timestamp_embeddings"], w["timestamp_embeddings"]) <= 1e-6
    for g, w in zip(got["scene_embeddings"], want["scene_embeddings"]):
        # Never bitwise promised: the scene reuses the timestamp pass's conv frames, and oneDNN's
        # convolution rounds differently by input width.
        assert _rel(g, w) <= 1e-6


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_batched_dataset_equals_one_by_one(tmp_path, dataset, mode, monkeypatch):
    model = _model(mode=mode)
    ref_failures = _one_by_one(dataset, model, FolderWriter(tmp_path / "ref", _info(model)), 1.0)
    reference = open_embeddings(tmp_path / "ref")
    assert len(reference["files"]) == 12 and len(ref_failures) == 4
    assert [e["streamed"] for e in reference["files"]].count(True) == 1

    settings = [
        dict(batch_size=4, decode_workers=2, model_workers=2),  # batches of 4 and of what is left
        dict(batch_size=3, decode_workers=1, max_queued_seconds=2.0),  # partial batches, memory full
        dict(batch_size=16, decode_workers=0, max_batch_seconds=1.2, model_workers=1),  # capped by audio
        dict(batch_size=1, decode_workers=2, model_workers=2),  # one clip per call: bitwise here
    ]
    threads = torch.get_num_threads()
    real_both = dataset_embed._scene_and_timestamps

    def spy(audio, model):  # both embeddings are wanted: one call per batch, one log-mel
        batches.append(tuple(audio.shape))
        return real_both(audio, model)

    monkeypatch.setattr(dataset_embed, "_scene_and_timestamps", spy)
    expected_batches = [
        [(4, 8000), (3, 12345), (1, 4000), (1, 16000), (2, 8000)],
        None,  # depends on the order in which the memory bound is reached
        [(2, 8000)] * 3 + [(1, 12345)] * 3 + [(1, 4000), (1, 16000)],  # 1.2 s: two 0.5-s clips
        None,
    ]
    for i, kwargs in enumerate(settings):
        batches = []
        out = tmp_path / f"run{i}"
        writer = FolderWriter(out, _info(model))
        failures = embed_files(dataset, model, writer, chunk_seconds=1.0, **kwargs)
        assert failures == ref_failures  # the same files, in order, with the same reasons
        writer.finish(failures)
        _assert_same_run(open_embeddings(out), reference, bitwise=kwargs["batch_size"] == 1)
        if expected_batches[i] is not None:
            assert sorted(batches) == sorted(expected_batches[i]), batches
        assert max(b for b, _ in batches) == [4, 2, 2, 1][i]  # run 1: 2 s of audio held at most
        assert torch.get_num_threads() == threads  # shared among the model workers only for the run

    # The .npz format: the same rows as the folder, as one by one
    writer = NpzWriter(tmp_path / "emb.npz", _info(model))
    writer.finish(embed_files(dataset, model, writer, chunk_seconds=1.0, batch_size=4))
    npz = read_npz(tmp_path / "emb.npz")
    assert [e["audio"] for e in npz["files"]] == [e["audio"] for e in reference["files"]]
    assert [f["audio"] for f in npz["failed"]] == [f["audio"] for f in reference["failed"]]
    for g, w in zip(npz["files"], reference["files"]):
        assert _rel(g["timestamp_embeddings"], w["timestamp_embeddings"]) <= 1e-6
    assert _rel(npz["scene_embeddings"], reference["scene_embeddings"]) <= 1e-6


def test_bad_files_are_reported_with_the_hear_api_words(tmp_path, dataset):
    model = _model()
    writer = FolderWriter(tmp_path / "emb", _info(model))
    failures = embed_files(dataset, model, writer, batch_size=4)
    by_name = {path.rsplit("/", 1)[-1]: reason for path, reason in failures}
    assert sorted(by_name) == ["broken.wav", "empty.wav", "huge.wav", "nan.wav"]
    clip = _clip(8000, 71) * 1e12
    with pytest.raises(AudioInputError) as hear:
        hear_abt.get_scene_embeddings(clip[None], model)
    hear_words = str(hear.value).replace(" in sound(s) [0]", "")
    assert by_name["huge.wav"].endswith(f"AudioInputError: {hear_words}")
    assert "NaN" in by_name["nan.wav"] and "no samples" in by_name["empty.wav"]
    assert all(str(tmp_path) in reason for reason in by_name.values())  # each names its file


class Recorder(Progress):
    """Counts the files and audio seconds a run reports done."""

    def __init__(self):
        self.files, self.seconds = 0, 0.0

    def file_done(self, seconds):
        self.files += 1
        self.seconds += seconds


def _fail_batches_and_clips_of_12345(monkeypatch):
    """Every batch of 2+ clips raises; a clip of 12345 samples gets a NaN timestamp embedding."""
    real = dataset_embed._scene_and_timestamps

    def flaky(audio, model):
        if audio.shape[0] > 1:
            raise RuntimeError("out of memory (pretend)")
        scene, emb, ts = real(audio, model)
        if audio.shape[1] == 12345:
            emb[:, 3] = float("nan")
        return scene, emb, ts

    monkeypatch.setattr(dataset_embed, "_scene_and_timestamps", flaky)


@pytest.mark.parametrize("model_workers", [1, 2])
def test_a_clip_with_non_finite_embeddings_fails_alone(tmp_path, dataset, monkeypatch, model_workers):
    """A batch whose call raises is retried clip by clip; a clip whose embedding is not finite fails
    with the reason one by one gives, and its batch mates are written."""
    model = _model()
    good = [p for p in dataset if p.name.startswith("c")]
    _fail_batches_and_clips_of_12345(monkeypatch)
    writer = FolderWriter(tmp_path / "emb", _info(model))
    failures = embed_files(good, model, writer, batch_size=4, model_workers=model_workers)
    writer.finish(failures)
    failed = [p for p in good if len(sf.read(p)[0]) == 12345]
    assert [a for a, _ in failures] == [str(p) for p in failed]
    assert all("FloatingPointError: its timestamp embedding is not finite" in r for _, r in failures)
    index = open_embeddings(tmp_path / "emb")
    assert [e["audio"] for e in index["files"]] == [str(p.resolve()) for p in good if p not in failed]


def test_a_long_file_with_a_short_header_is_streamed(tmp_path):
    model = _model()
    path = tmp_path / "long.wav"
    x = _clip(SR * 3 + 7, 1)
    sf.write(path, x, SR, subtype="FLOAT")
    writer = FolderWriter(tmp_path / "emb", _info(model))
    writer.finish(embed_files([path], model, writer, chunk_seconds=0.5, header_seconds=[0.1]))
    entry = open_embeddings(tmp_path / "emb")["files"][0]
    assert entry["streamed"] and entry["n_samples"] == len(x)


def test_memory_stays_bounded_and_progress_counts_files_and_seconds(tmp_path, monkeypatch):
    model = _model()
    files = []
    for i in range(24):
        files.append(tmp_path / f"{i:02d}.wav")
        sf.write(files[-1], _clip(8000 + 800 * (i % 3), i), SR, subtype="FLOAT")
    held, written, most = [0], [0], [0]
    real_decode = dataset_embed._decode_short

    def counting_decode(*args):
        out = real_decode(*args)
        held[0] += 1
        most[0] = max(most[0], held[0] - written[0])
        return out

    class Counting(FolderWriter):
        def add(self, *args):
            written[0] += 1
            super().add(*args)

    monkeypatch.setattr(dataset_embed, "_decode_short", counting_decode)
    progress = Recorder()
    writer = Counting(tmp_path / "emb", _info(model))
    # 2.2 s of audio held at most: four clips of 0.5-0.6 s (and the one being decoded)
    writer.finish(
        embed_files(
            files, model, writer, batch_size=8, decode_workers=2, max_queued_seconds=2.2, progress=progress
        )
    )
    assert written[0] == 24 and 3 <= most[0] <= 5, most[0]  # read ahead, within the bound
    assert progress.files == 24
    assert progress.seconds == pytest.approx(sum(sf.info(str(p)).duration for p in files))


# ---- in-memory clips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoder,mode", [("audiontt", "faithful"), ("audiontt", "fast"), ("vitc_t", "faithful")]
)
def test_embed_clips_equals_the_hear_api_per_clip(encoder, mode):
    model = _model(encoder, mode)
    lengths = [16000, 7000, 16000, 16000, 7000, 3, 16000, 24000]
    clips = [_clip(n, i) for i, n in enumerate(lengths)]
    clips[1] = torch.from_numpy(clips[1])  # tensors too
    results = embed_clips(clips, model, batch_size=3)
    assert len(results) == len(clips)
    for clip, result in zip(clips, results):
        audio = torch.as_tensor(clip)[None]
        scene = hear_abt.get_scene_embeddings(audio, model)[0].numpy()
        emb, ts = hear_abt.get_timestamp_embeddings(audio, model)
        assert result.n_samples == len(clip) and result.n_timestamps == emb.shape[1]
        np.testing.assert_array_equal(result.timestamps_ms, ts[0].numpy())
        assert _rel(result.timestamp_embeddings, emb[0].numpy()) <= 1e-6
        assert _rel(result.scene, scene) <= 1e-6
    one = embed_clips(clips, model, batch_size=1)  # one clip per call: timestamps bitwise
    for a, clip in zip(one, clips):
        audio = torch.as_tensor(clip)[None]
        np.testing.assert_array_equal(
            a.timestamp_embeddings, hear_abt.get_timestamp_embeddings(audio, model)[0][0]
        )
        assert _rel(a.scene, hear_abt.get_scene_embeddings(audio, model)[0].numpy()) <= 1e-6
    scene_only = embed_clips(clips[:2], model, timestamps=False)
    assert scene_only[0].timestamp_embeddings is None and scene_only[0].scene is not None


def _hear_words(audio, model):
    with pytest.raises(AudioInputError) as err:
        hear_abt.get_scene_embeddings(audio, model)
    return re.sub(r" in sound\(s\) \[[\d, ]*\]", "", str(err.value))


def test_bad_clips_get_the_hear_api_errors_naming_the_clip():
    model = _model()
    good = _clip(4000, 0)
    nan, huge = good.copy(), good * 1e12
    nan[7] = np.nan
    for bad in (
        nan,
        huge,
        (good * 32768).astype(np.int16),
        good.astype(np.complex64),
        np.zeros(0, np.float32),
    ):
        with pytest.raises(AudioInputError) as err:
            embed_clips([good, bad], model)
        assert str(err.value) == f"clip 1: {_hear_words(bad[None], model)}"
    with pytest.raises(AudioInputError, match="clip 1 must be 1-D"):
        embed_clips([good, np.stack([good, good])], model)
    with pytest.raises(
        AudioInputError, match="clip 0: audio must be a torch.Tensor or numpy array, got list"
    ):
        embed_clips([[0.0, 0.1]], model)
    with pytest.raises(AudioInputError) as err:
        embed_clips([], model)
    assert str(err.value) == _hear_words(np.zeros((0, 10), np.float32), model)


def test_bad_arguments_are_refused_like_the_hear_api(tmp_path):
    model = _model()
    with pytest.raises(TypeError) as hear:
        hear_abt.get_scene_embeddings(np.zeros((1, 100), np.float32), "model.pt")
    for call in (
        lambda: embed_clips([np.zeros(100, np.float32)], "model.pt"),
        lambda: embed_files([], "model.pt", NpzWriter(tmp_path / "e.npz", _info(model))),
    ):
        with pytest.raises(TypeError) as err:
            call()
        assert str(err.value) == str(hear.value)
    writer = NpzWriter(tmp_path / "e.npz", _info(model))
    for kwargs, name in [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"decode_workers": -1}, "decode_workers"),
        ({"model_workers": 0}, "model_workers"),
        ({"chunk_seconds": 0}, "chunk_seconds"),
        ({"max_queued_seconds": float("nan")}, "max_queued_seconds"),
    ]:
        with pytest.raises(ValueError, match=name):
            embed_files([], model, writer, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        embed_clips([np.zeros(100, np.float32)], model, batch_size=0)
    assert embed_files([], model, writer) == []  # no files: nothing to do, no error


# ---- worker processes ----------------------------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers, /proc")


@linux_only
def test_worker_processes_equal_one_by_one_and_do_the_work(tmp_path, dataset, monkeypatch):
    """Parts of the dataset go to two worker processes (the batches are embedded there, not here); the
    run equals one-by-one embedding: files, order, failures with their reasons, embeddings; the long
    file is streamed here."""
    model = _model()
    ref_failures = _one_by_one(dataset, model, FolderWriter(tmp_path / "ref", _info(model)), 1.0)
    reference = open_embeddings(tmp_path / "ref")
    pids = tmp_path / "pids"
    pids.mkdir()
    real_both = dataset_embed._scene_and_timestamps

    def spy(audio, model):  # inherited by the forked workers: each leaves its pid behind
        (pids / str(os.getpid())).touch()
        return real_both(audio, model)

    monkeypatch.setattr(dataset_embed, "_scene_and_timestamps", spy)
    threads = torch.get_num_threads()
    for i, kwargs in enumerate([dict(batch_size=2), dict(batch_size=4, max_queued_seconds=2.0)]):
        out = tmp_path / f"run{i}"
        writer = FolderWriter(out, _info(model))
        failures = embed_files(dataset, model, writer, chunk_seconds=1.0, processes=2, **kwargs)
        assert failures == ref_failures
        writer.finish(failures)
        got = open_embeddings(out)
        _assert_same_run(got, reference, bitwise=False)
        assert [e["streamed"] for e in got["files"]].count(True) == 1
        workers = {int(p.name) for p in pids.iterdir()}
        assert workers and os.getpid() not in workers  # the clips were embedded by other processes
        assert torch.get_num_threads() == threads  # this process keeps its threads


def test_spawned_workers_give_the_same_answers(tmp_path, dataset, monkeypatch):
    """Where workers are spawned (macOS, Windows): the model is pickled to them, and the run equals one
    process's."""
    import hear_abt.embed_processes as embed_processes

    model = _model()
    writer = FolderWriter(tmp_path / "one", _info(model))
    ref_failures = embed_files(dataset, model, writer, chunk_seconds=1.0, batch_size=4)
    writer.finish(ref_failures)
    monkeypatch.setattr(embed_processes, "start_method", lambda: "spawn")
    writer = FolderWriter(tmp_path / "spawned", _info(model))
    failures = embed_files(dataset, model, writer, chunk_seconds=1.0, batch_size=4, processes=2)
    writer.finish(failures)
    assert failures == ref_failures
    _assert_same_run(open_embeddings(tmp_path / "spawned"), open_embeddings(tmp_path / "one"), bitwise=False)


@linux_only
@pytest.mark.parametrize("header", [0.1, 0.0])
def test_a_worker_hands_a_file_longer_than_its_header_back_to_be_streamed(tmp_path, header):
    model = _model()
    path = tmp_path / "long.wav"
    x = _clip(SR * 3 + 7, 1)
    sf.write(path, x, SR, subtype="FLOAT")
    short = tmp_path / "short.wav"
    sf.write(short, _clip(8000, 2), SR, subtype="FLOAT")
    writer = FolderWriter(tmp_path / "emb", _info(model))
    failures = embed_files(
        [short, path, short], model, writer, chunk_seconds=0.5, header_seconds=[0.5, header, 0.5], processes=2
    )
    writer.finish(failures)
    entries = open_embeddings(tmp_path / "emb")["files"]
    assert [(e["streamed"], e["n_samples"]) for e in entries] == [
        (False, 8000),
        (True, len(x)),
        (False, 8000),
    ]


@linux_only
def test_failures_in_workers_are_each_files_own_and_progress_counts_everything(
    tmp_path, dataset, monkeypatch
):
    """In a worker, a failing batch is retried clip by clip and a non-finite clip fails alone, with the
    reason one process gives; the progress (in this process) counts every file and second."""
    model = _model()
    good = [p for p in dataset if p.name.startswith("c")]
    _fail_batches_and_clips_of_12345(monkeypatch)
    runs = {}
    for processes in (0, 2):
        writer = FolderWriter(tmp_path / f"emb{processes}", _info(model))
        progress = Recorder()
        failures = embed_files(good, model, writer, batch_size=4, processes=processes, progress=progress)
        writer.finish(failures)
        runs[processes] = failures, progress.files, progress.seconds
    failed = [str(p) for p in good if len(sf.read(p)[0]) == 12345]
    assert [a for a, _ in runs[2][0]] == failed
    assert all("FloatingPointError: its timestamp embedding is not finite" in r for _, r in runs[2][0])
    assert runs[2][0] == runs[0][0]  # the same failures, with the same reasons, as in one process
    assert runs[2][1] == runs[0][1] == len(good)
    assert runs[2][2] == pytest.approx(sum(sf.info(str(p)).duration for p in good))


@linux_only
def test_a_worker_killed_stops_the_run_with_a_clear_error(tmp_path, dataset, monkeypatch, capsys):
    model = _model()
    good = [p for p in dataset if p.name.startswith("c")]
    real_decode = dataset_embed._decode_short

    def deadly(path, *args):
        if path.name == "c05.wav" and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return real_decode(path, *args)

    parent = os.getpid()
    monkeypatch.setattr(dataset_embed, "_decode_short", deadly)
    writer = FolderWriter(tmp_path / "emb", _info(model))
    with pytest.raises(WorkerDied, match=r"a worker process of hear-abt embed died .*--processes 0") as err:
        embed_files(good, model, writer, batch_size=2, processes=2)
    assert "its part held 8 file(s)" in str(err.value)  # parts of 4 x batch_size files
    part = good[:8] if "c05.wav" in [p.name for p in good[:8]] else good[8:]
    assert f"{part[0]} ... {part[-1]}" in str(err.value)

    # The command says so in one line, without a traceback, and fails
    weights = save_pretrained(tmp_path / "model", model.config, model.encoder.state_dict())
    folder = tmp_path / "emb_cli"
    assert (
        main(["embed", *map(str, good), "--weights", str(weights), "--out-dir", str(folder), "--quiet"]) == 1
    )
    assert "error: a worker process of hear-abt embed died" in capsys.readouterr().err
    assert not (folder / "index.json").exists()


def _children(pid):
    """Pids of the live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@linux_only
def test_no_worker_outlives_the_main_process_killed_with_sigkill(tmp_path):
    """`hear-abt embed` killed with SIGKILL mid-run (as a scheduler's last resort): its worker processes,
    busy or waiting, are gone within seconds, never left running."""
    folder = tmp_path / "audio"
    folder.mkdir()
    for i in range(40):
        sf.write(folder / f"{i:02d}.wav", _clip(8000, i), SR, subtype="FLOAT")
    model = _model()
    save_pretrained(tmp_path / "model", model.config, model.encoder.state_dict())
    script = f"""
import sys, time
import hear_abt.dataset_embed as d
real = d._decode_short
def slow(*args):
    time.sleep(0.5)
    return real(*args)
d._decode_short = slow
from hear_abt.cli import main
sys.exit(main(["embed", {str(folder)!r}, "--out-dir", {str(tmp_path / "emb")!r}, "--weights", {str(tmp_path / "model")!r},
               "--processes", "2", "--batch-size", "2", "--quiet"]))
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no worker processes started"
            time.sleep(0.1)
        workers = _children(proc.pid)
        time.sleep(1.0)  # busy decoding
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [w for w in workers if _state(w) != "Z"]  # gone, or dead and not yet reaped
        assert not alive, f"workers {alive} outlived the main process"
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers or _children(proc.pid):  # never leave one behind, whatever failed
            with contextlib.suppress(OSError):
                os.kill(w, signal.SIGKILL)


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_processes_is_refused_off_the_cpu_and_below_zero(tmp_path):
    model = _model()
    writer = NpzWriter(tmp_path / "e.npz", _info(model))
    with pytest.raises(ValueError, match="processes must be an integer >= 0"):
        embed_files([], model, writer, processes=-1)
    with pytest.raises(ValueError, match=r"processes must be 0 on cuda"):
        embed_files([], model, writer, processes=2, device="cuda")
