"""training.prepare on hostile corpora and conditions: huge finite audio, all silence, FIFOs, non-finite
statistics; parts running at once, jobs killed mid-shard (stale locks and temporaries)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from training import file_locks
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
def test_a_fifo_named_wav_is_listed_not_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _noise(src / "ok.wav", 0.1)
    os.mkfifo(src / "pipe.wav")  # opening it for reading would block forever
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["files"] == 2 and manifest["totals"]["clips"] == 1
    assert manifest["skipped"] == [
        {"path": "pipe.wav", "reason": "not a regular file (a FIFO: reading it would block)"}
    ]


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


# ------------------------------------------------------------------ --part and concurrent jobs


def _corpus(src, n=7):
    """n short files at assorted rates and one that cannot be read: records with skipped entries."""
    src.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        rate = (16000, 22050, 44100)[i % 3]
        sf.write(src / f"clip{i}.wav", (0.1 * rng.standard_normal(rate // 2)).astype(np.float32), rate)
    (src / "clip3.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage, not audio")
    return src


def _shard_files(out):
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


def _cli(*args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "training.prepare", *map(str, args), "--workers", "1", "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_parts_run_at_once_then_the_plain_command_equals_one_process(tmp_path):
    src = _corpus(tmp_path / "src")
    one = tmp_path / "one"
    reference = prep.prepare(src, one, workers=1, clips_per_shard=2, progress=False)
    assert (reference.shards, reference.clips, reference.skipped) == (4, 6, 1)

    out = tmp_path / "parts"
    jobs = [_cli(src, out, "--clips-per-shard", "2", "--part", f"{i}/2") for i in (1, 2)]  # started together
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (_stdout, stderr) in zip(jobs, outputs):
        assert job.returncode == 0, stderr
    assert outputs[0][0].strip().startswith("part 1/2: built 2 shards and reused 0 (3 clips")
    assert outputs[1][0].strip().startswith("part 2/2: built 2 shards and reused 0 (3 clips")
    assert "run the same command without --part to write manifest.json" in outputs[0][0]
    assert not (out / "manifest.json").exists()  # parts never write it

    final = prep.prepare(src, out, workers=1, clips_per_shard=2, progress=False)
    assert (final.built_shards, final.reused_shards) == ([], [0, 1, 2, 3])
    assert (out / "manifest.json").read_bytes() == (one / "manifest.json").read_bytes()
    assert _shard_files(out) == _shard_files(one)  # no lock or temporary left behind either


def test_the_plain_command_builds_what_no_part_built(tmp_path):
    src = _corpus(tmp_path / "src")
    out = tmp_path / "out"
    part = prep.prepare(src, out, workers=1, clips_per_shard=2, progress=False, part=(2, 3))
    assert (part.built_shards, part.manifest_path) == ([1], None)
    assert prep.prepare(
        src, out, workers=1, clips_per_shard=2, progress=False, part=(2, 3)
    ).reused_shards == [1]
    final = prep.prepare(src, out, workers=1, clips_per_shard=2, progress=False)
    assert (final.built_shards, final.reused_shards) == ([0, 2, 3], [1])
    # More parts than shards: some parts have nothing to do (the 4 shards go to parts 3, 5, 7 and 9 of 9).
    idle = prep.prepare(src, out, workers=1, clips_per_shard=2, progress=False, part=(1, 9))
    assert (idle.shards, idle.built_shards, idle.reused_shards) == (0, [], [])
    assert [list(prep.part_shards((i, 9), 4)) for i in range(1, 10)] == [
        [],
        [],
        [0],
        [],
        [1],
        [],
        [2],
        [],
        [3],
    ]


@pytest.mark.parametrize(
    "value, problem",
    [
        ("0/2", r"1 <= I <= N, got 0/2 \(parts are numbered from 1\)"),
        ("3/2", r"1 <= I <= N, got 3/2"),
        ("1/0", r"N >= 1 parts, got 1/0"),
        ("-1/2", r"1 <= I <= N, got -1/2"),
        ("1", r"must be I/N, e.g. 1/4 \(the first of 4 parts\), got '1'"),
        ("a/b", r"must be I/N"),
        ("1/2/3", r"must be I/N"),
    ],
)
def test_invalid_part_values_are_clear_errors(tmp_path, capsys, value, problem):
    with pytest.raises(SystemExit) as exit_info:
        prep.main([str(tmp_path), str(tmp_path / "out"), f"--part={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --part" in err and re.search(problem, err), err
    with pytest.raises(ValueError, match=problem.replace("must be", "--part must be")):
        prep.parse_part(value)


def _lock(path, pid, start, **machine):
    record = {
        **file_locks._this_machine(),
        "pid": pid,
        "start": start,
        "since": "earlier",
        "token": path.name,
    }
    path.write_text(json.dumps({**record, **machine}))
    return path.read_text()


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to tell live processes")
def test_stale_locks_and_temporaries_are_cleaned_live_ones_are_left_alone(tmp_path, capsys):
    src = _corpus(tmp_path / "src", n=6)
    out = tmp_path / "out"
    shards = out / "shards"
    shards.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        live_start = file_locks._proc_stat(live.pid)[1]
        _lock(shards / "shard-000000.lock", dead.pid, "1")  # a killed job's
        live_lock = _lock(shards / "shard-000001.lock", live.pid, live_start)  # a running job's
        remote_lock = _lock(shards / "shard-000002.lock", 4242, "1", host="another-machine")
        temps = {i: shards / f".shard-00000{i}.npy.x{i}y.tmp" for i in range(3)}
        for temp in temps.values():
            temp.write_bytes(b"half a shard")

        part = prep.prepare(src, out, workers=1, clips_per_shard=2, progress=False, part=(1, 1))
        assert (part.built_shards, part.busy_shards) == ([0], [1, 2])
        assert not temps[0].exists() and not (shards / "shard-000000.lock").exists()
        assert temps[1].exists() and temps[2].exists()  # the running (or unjudgeable) jobs' own files
        assert (shards / "shard-000001.lock").read_text() == live_lock
        assert (shards / "shard-000002.lock").read_text() == remote_lock

        # The command without --part will not write a manifest over shards still being built.
        assert (
            prep.main([str(src), str(out), "--workers", "1", "--clips-per-shard", "2", "--no-progress"]) == 2
        )
        err = capsys.readouterr().err
        assert "2 shards of" in err and "no manifest was written" in err
        assert f"shard-000001 (host {socket.gethostname()} pid {live.pid} since earlier)" in err
        assert "shard-000002 (host another-machine pid 4242" in err and "delete the lock files" in err
        assert temps[1].exists() and temps[2].exists() and not (out / "manifest.json").exists()
    finally:
        live.kill()
        live.wait()
    # The job on this machine is gone: its lock is taken over. The other machine's is removed by hand.
    (shards / "shard-000002.lock").unlink()
    summary = prep.prepare(src, out, workers=1, clips_per_shard=2, progress=False)
    assert (summary.built_shards, summary.reused_shards) == ([1, 2], [0])
    assert sorted(p.name for p in shards.iterdir() if not p.name.endswith((".npy", ".json"))) == []
    assert not any(p.name.endswith(".lock") for p in out.iterdir())


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc to tell live processes")
def test_holder_gone_only_when_provably_dead():
    machine = file_locks._this_machine()
    me = {**machine, "pid": os.getpid(), "start": file_locks._proc_stat(os.getpid())[1]}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not file_locks._holder_gone(me, machine)  # alive
    assert file_locks._holder_gone({**me, "pid": dead.pid}, machine)  # no such process
    assert file_locks._holder_gone({**me, "start": "0"}, machine)  # the pid now belongs to another process
    assert file_locks._holder_gone(
        {**me, "pid": dead.pid, "boot": "an earlier boot"}, machine
    )  # restarted since
    assert not file_locks._holder_gone({**me, "pid": dead.pid, "host": "another-machine"}, machine)
    assert not file_locks._holder_gone({**me, "pid": dead.pid, "pidns": "pid:[another container]"}, machine)
    assert not file_locks._holder_gone({}, machine)  # an empty lock file: being written, or unknown


def test_a_second_plain_command_is_refused_while_one_runs(tmp_path, capsys):
    src = _corpus(tmp_path / "src", n=2)
    (tmp_path / "out").mkdir()
    _lock(tmp_path / "out" / "manifest.lock", 4242, "1", host="another-machine")
    assert prep.main([str(src), str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "another prepare without --part is writing" in err and "another-machine pid 4242" in err


def test_workers_default_to_the_cpus_available(tmp_path):
    args = prep.build_parser().parse_args([str(tmp_path), str(tmp_path / "out")])
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert args.workers == expected


def test_a_part_stopped_with_sigterm_releases_its_locks(tmp_path):
    """SLURM ends a job at its time limit (or scancel) with SIGTERM: the locks must not outlive it."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(40):
        sf.write(src / f"long{i:02d}.wav", (0.1 * rng.standard_normal(16000 * 20)).astype(np.float32), 16000)
    out = tmp_path / "out"
    job = _cli(src, out, "--clips-per-shard", "4", "--part", "1/1")
    try:
        deadline = time.monotonic() + 120
        while not list((out / "shards").glob("*.lock")) and job.poll() is None:
            assert time.monotonic() < deadline, "no lock file appeared"
            time.sleep(0.05)
        assert job.poll() is None, "finished before it could be stopped: make the corpus longer"
        job.send_signal(signal.SIGTERM)
        _stdout, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 128 + signal.SIGTERM, stderr
    assert list((out / "shards").glob("*.lock")) == []
    assert not any(p.name.endswith(".tmp") for p in (out / "shards").iterdir())
