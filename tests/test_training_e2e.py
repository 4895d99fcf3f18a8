"""End to end on the CPU: prepare varied numpy-made sounds, pre-train cpu-tiny, loss goes down, a
SIGKILLed run resumes to identical weights, NaN stops cleanly, export loads through hear_abt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import signals
import soundfile as sf
import torch

import hear_abt
from training import engine, export, prepare, pretrain
from training.checkpoint import load_training_checkpoint

REPO = Path(__file__).resolve().parent.parent
TRAIN = ["--preset", "cpu-tiny", "batch_size=16", "log_every=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """56 clips of seven kinds of numpy-made sound (vowel-like pulses through formants, notes, chords,
    chirps, clicks, noise), 0.5-3 s long, prepared into shards: no system program needed."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for i in range(56):
        kind = signals.KINDS[i % len(signals.KINDS)]
        wave = signals.make_signal(kind, float(rng.uniform(0.5, 3.0)), rng)
        sf.write(root / "audio" / f"{kind}_{i:02d}.wav", wave, 16000)
    prepare.main([str(root / "audio"), str(root / "data"), "--workers", "1", "--no-progress"])
    return root / "data"


def run(corpus, run_dir, *extra, steps=40):
    args = [
        "--data",
        str(corpus),
        "--run-dir",
        str(run_dir),
        f"steps={steps}",
        "--no-progress",
        *TRAIN,
        *extra,
    ]
    return pretrain.main(args)


def losses(run_dir):
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return np.array([float(line.split(",")[2]) for line in lines])


def test_loss_goes_down_and_outputs_are_written(corpus, tmp_path):
    assert run(corpus, tmp_path / "run", "checkpoint_every=1000", steps=60) == 0
    curve = losses(tmp_path / "run")
    assert len(curve) == 60
    assert curve[-10:].mean() < 0.8 * curve[:10].mean(), curve
    assert (tmp_path / "run" / "images" / "loss_curve.png").stat().st_size > 1000
    assert list((tmp_path / "run" / "images").glob("crosscorr_step*.png"))
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    state = load_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 60  # a checkpoint is written at the end whatever checkpoint_every says


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    steps, every = 48, 8
    assert run(corpus, tmp_path / "straight", f"checkpoint_every={every}", steps=steps) == 0

    killed = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "training.pretrain",
        "--data",
        str(corpus),
        "--run-dir",
        str(killed),
        f"steps={steps}",
        "--no-progress",
        *TRAIN,
        f"checkpoint_every={every}",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = load_training_checkpoint(ckpt)["step"]
    assert interrupted_at < steps, "the run finished before it could be killed"

    assert pretrain.main(["--run-dir", str(killed), "--resume", "--no-progress"]) == 0
    a = load_training_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_training_checkpoint(ckpt)
    assert a["step"] == b["step"] == steps
    for part in ("encoder", "projector"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (
                f"{part}.{key} differs after resume from step {interrupted_at}"
            )
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The metrics log has each step once, the redone ones included.
    assert [int(r.split(",")[0]) for r in (killed / "metrics.csv").read_text().splitlines()[1:]] == list(
        range(1, steps + 1)
    )


def test_resume_restores_the_streams_after_set_up_that_draws_from_them(corpus, tmp_path, monkeypatch):
    """Set-up code that draws from the global RNGs must not shift a resumed run's streams.

    Found for real: with TensorFlow installed (the HEAR tools bring it), TensorBoard's writer imports it,
    which imports `rich`, which calls `random.getrandbits` on import, on rank 0 only and after seeding.
    """
    import random
    import shutil

    from training.monitor import Monitor

    init = Monitor.__init__

    def drawing_init(self, *args, **kwargs):
        random.getrandbits(24)
        torch.rand(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(Monitor, "__init__", drawing_init)
    from training import checkpoint

    real_save = checkpoint.save_checkpoint

    def save_and_keep_step_4(path, state):
        real_save(path, state)
        if state["step"] == 4:
            shutil.copyfile(path, tmp_path / "step4.pt")

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_and_keep_step_4)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(corpus, straight, "checkpoint_every=4", steps=8) == 0
    shutil.copytree(straight, resumed)
    shutil.copyfile(tmp_path / "step4.pt", resumed / "checkpoints" / "last.pt")  # as if killed after step 4
    assert pretrain.main(["--run-dir", str(resumed), "--resume", "--no-progress"]) == 0
    a = load_training_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_training_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    for part in ("encoder", "projector", "optimizer", "ranks"):
        assert_same_tree(a[part], b[part], part)


def test_nan_loss_stops_with_last_good_checkpoint_intact(corpus, tmp_path, monkeypatch, capsys):
    real_loss = engine.BarlowTwinsLoss

    class PoisonedAfterTen(real_loss):
        calls = 0

        def forward(self, z1, z2):
            out = super().forward(z1, z2)
            PoisonedAfterTen.calls += 1
            return out._replace(loss=out.loss * float("nan")) if PoisonedAfterTen.calls > 10 else out

    monkeypatch.setattr(engine, "BarlowTwinsLoss", PoisonedAfterTen)
    assert run(corpus, tmp_path / "run", "checkpoint_every=4") == 3
    err = capsys.readouterr().err
    assert "loss is nan at step 10" in err and "last good checkpoint" in err and "step 8) is intact" in err
    state = load_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 8 and all(torch.isfinite(t).all() for t in state["encoder"].values())

    # NaN before any checkpoint exists: the message says so instead of naming a checkpoint.
    PoisonedAfterTen.calls = 10
    assert run(corpus, tmp_path / "early", "checkpoint_every=100") == 3
    err = capsys.readouterr().err
    assert "loss is nan at step 0" in err and "no checkpoint had been written yet" in err
    assert not (tmp_path / "early" / "checkpoints" / "last.pt").exists()


def test_resume_from_a_corrupt_checkpoint_and_bad_devices_are_clear_errors(corpus, tmp_path):
    assert run(corpus, tmp_path / "run", steps=2) == 0
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # cut short, as by a full disk or a broken copy
    with pytest.raises(SystemExit, match=r"cannot resume from .*last.pt.*restore it from a backup"):
        pretrain.main(["--run-dir", str(tmp_path / "run"), "--resume", "--no-progress"])
    with pytest.raises(SystemExit, match="is not a torch device"):
        run(corpus, tmp_path / "other", "--device", "warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="torch sees no CUDA device"):
            run(corpus, tmp_path / "other", "--device", "cuda")


def test_resume_refuses_changed_settings_and_new_runs_refuse_old_dirs(corpus, tmp_path):
    assert run(corpus, tmp_path / "run", steps=4) == 0
    with pytest.raises(SystemExit, match="already holds a run"):
        run(corpus, tmp_path / "run", steps=4)
    with pytest.raises(SystemExit, match=r"own settings.*lr_weights \(run: None, given: 1.0\)"):
        pretrain.main(["--run-dir", str(tmp_path / "run"), "--resume", "lr_weights=1.0"])
    with pytest.raises(SystemExit, match="trains on"):
        pretrain.main(["--run-dir", str(tmp_path / "run"), "--resume", "--data", str(tmp_path)])
    # The run's own settings repeated are accepted (the same command line plus --resume).
    assert run(corpus, tmp_path / "run", "--resume", steps=4) == 0
    with pytest.raises(SystemExit, match="unknown setting"):
        run(corpus, tmp_path / "other", "not_a_setting=1")
    with pytest.raises(SystemExit, match="batch_size=0.*out of range"):
        run(corpus, tmp_path / "other", "batch_size=0")


def test_small_data_says_how_to_fit_a_batch(corpus, tmp_path):
    with pytest.raises(
        SystemExit, match=r"56 clips do not fill one batch of 64: pass a smaller batch_size= \(at most 56\)"
    ):
        run(corpus, tmp_path / "run", "batch_size=64")


def test_run_length_is_the_steps_setting_not_an_epoch_cap(corpus, tmp_path):
    # 56 clips at batch 16 are 3 steps per epoch: 10 steps run into the fourth epoch.
    assert run(corpus, tmp_path / "run", "checkpoint_every=1000", steps=10) == 0
    state = load_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == state["total_steps"] == 10
    assert state["ranks"][0]["sampler"]["epoch"] == 3 and state["ranks"][0]["sampler"]["batch"] == 1


def test_a_second_process_on_the_same_run_dir_is_refused(corpus, tmp_path):
    from training.run_dir import RunDir

    with RunDir(tmp_path / "run").lock():  # as a running pretrain holds it
        with pytest.raises(SystemExit, match="is in use by pid"):
            run(corpus, tmp_path / "run", steps=2)
    assert run(corpus, tmp_path / "run", steps=2) == 0  # released: the run goes ahead


def test_export_loads_through_hear_abt_and_embeds(corpus, tmp_path):
    assert run(corpus, tmp_path / "run", steps=6) == 0
    out = export.export(tmp_path / "run", tmp_path / "model")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    model = hear_abt.load_model(out)
    assert model.config.provenance["step"] == 6
    emb, ts = hear_abt.get_timestamp_embeddings(torch.randn(2, 20000) * 0.1, model)
    assert emb.shape == (2, 25, model.timestamp_embedding_size) and torch.isfinite(emb).all()
    # The training checkpoint itself also loads, and gives the same encoder.
    same = hear_abt.load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    x = torch.randn(1, 16000)
    torch.testing.assert_close(
        hear_abt.get_scene_embeddings(x, same), hear_abt.get_scene_embeddings(x, model)
    )


def test_weights_kept_along_the_way_load_and_the_last_equals_the_checkpoint(corpus, tmp_path):
    assert run(corpus, tmp_path / "run", "keep_weights_at=[0.5, 1.0]", steps=6) == 0
    kept = sorted(p.name for p in (tmp_path / "run" / "weights").iterdir())
    assert kept == ["step-000003", "step-000006"]
    half = hear_abt.load_model(tmp_path / "run" / "weights" / "step-000003")
    end = hear_abt.load_model(tmp_path / "run" / "weights" / "step-000006")
    assert half.config.provenance["step"] == 3 and end.config.provenance["step"] == 6
    last = load_training_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["encoder"]
    assert all(torch.equal(end.encoder.state_dict()[k], v) for k, v in last.items())
    assert not all(torch.equal(half.encoder.state_dict()[k], v) for k, v in last.items())
    with pytest.raises(SystemExit, match=r"keep_weights_at=\(0,\) is out of range"):
        run(corpus, tmp_path / "bad", "keep_weights_at=[0]", steps=2)


def test_linear_probe_monitor_logs_scores_and_keeps_the_best_checkpoint(corpus, tmp_path):
    from test_linear_eval import write_tone_task

    task = write_tone_task(tmp_path / "tones", per_class={"train": 6, "valid": 3, "test": 3})
    assert run(corpus, tmp_path / "run", "probe_every=5", f"probe_task={task}", steps=10) == 0
    rows = (tmp_path / "run" / "probe.csv").read_text().splitlines()
    assert rows[0] == "step,task,score" and [r.split(",")[0] for r in rows[1:]] == ["5", "10"]
    scores = [float(r.split(",")[2]) for r in rows[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    best = load_training_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["best_probe"] == max(scores) and best["step"] == 5 + 5 * int(scores[1] > scores[0])


def test_vit_preset_trains_with_adamw_and_view_masking(corpus, tmp_path):
    args = [
        "--data",
        str(corpus),
        "--run-dir",
        str(tmp_path / "vit"),
        "steps=3",
        "--no-progress",
        "--preset",
        "audioset-vitc-b",
        "encoder=vitc_t",
        'encoder_kwargs={"depth": 1}',
        "batch_size=8",
        "projector_hidden=64",
        "projector_out=32",
        "augment.mask_ratio=0.25",
        "precision=fp32",
        "log_every=1",
    ]
    assert pretrain.main(args) == 0
    state = load_training_checkpoint(tmp_path / "vit" / "checkpoints" / "last.pt")
    assert state["train_config"]["optimizer"] == "adamw" and state["step"] == 3
    assert np.isfinite(losses(tmp_path / "vit")).all()
    with pytest.raises(SystemExit, match="crop_frames=160"):
        pretrain.main([*args[:3], str(tmp_path / "vit2"), *args[4:], "crop_frames=160"])
    with pytest.raises(SystemExit, match="mask_ratio needs a patch-token encoder"):
        run(corpus, tmp_path / "ntt", "augment.mask_ratio=0.25", steps=1)


def test_export_push_to_hub_uploads_the_exported_folder(corpus, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class RecordingApi:  # the Hub's write API is not part of the local stand-in: record the calls
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload_folder", sorted(p.name for p in Path(folder_path).iterdir()), repo_id))
            return type("CommitInfo", (), {"oid": "c0ffee"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    assert run(corpus, tmp_path / "run", steps=2) == 0
    assert (
        export.main(
            [str(tmp_path / "run"), str(tmp_path / "model"), "--push-to-hub", "me/abt-tiny", "--private"]
        )
        == 0
    )
    assert calls[0] == ("create_repo", "me/abt-tiny", True, True)
    assert calls[1][0] == "upload_folder" and calls[1][2] == "me/abt-tiny"
    assert {"config.json", "model.safetensors", "README.md"} <= set(calls[1][1])
    assert "me/abt-tiny@c0ffee" in capsys.readouterr().out
    assert "load_model('me/abt-tiny')" in (tmp_path / "model" / "README.md").read_text()


def torchrun(corpus, run_dir, *extra, steps=4):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "training.pretrain",
        "--data",
        str(corpus),
        "--run-dir",
        str(run_dir),
        "--no-progress",
        *TRAIN,
        f"steps={steps}",
        *extra,
    ]


def run_to_end(cmd):
    """Run a training command to its end; its stderr's tail is the failure message."""
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_tree(a, b, where=""):
    """Bitwise equality of nested checkpoint contents (tensors, containers, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def processes_running(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (the launcher and every rank of one run)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_two_ranks_killed_with_sigkill_and_resumed_equal_the_uninterrupted_run_on_every_rank(
    corpus, tmp_path
):
    steps, every = 24, 4
    run_to_end(torchrun(corpus, tmp_path / "straight", f"checkpoint_every={every}", steps=steps))

    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        torchrun(corpus, killed, f"checkpoint_every={every}", steps=steps),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    # The launcher and both ranks at once (torchrun starts each rank in a session of its own).
    for pid in processes_running(str(killed)):
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while processes_running(str(killed)) and time.time() < deadline:
        time.sleep(0.05)
    assert not processes_running(str(killed)), "a rank survived the kill"
    interrupted_at = load_training_checkpoint(ckpt)["step"]
    assert interrupted_at < steps, "the run finished before it could be killed"

    run_to_end(torchrun(corpus, killed, f"checkpoint_every={every}", "--resume", steps=steps))
    logged = [int(r.split(",")[0]) for r in (killed / "metrics.csv").read_text().splitlines()[1:]]
    assert logged == list(range(1, steps + 1))  # each step once: the redone ones replaced
    a = load_training_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_training_checkpoint(ckpt)
    assert a["step"] == b["step"] == steps and a["world_size"] == b["world_size"] == 2
    for part in ("encoder", "projector", "optimizer", "scaler"):
        assert_same_tree(a[part], b[part], part)
    # Every rank's own streams: data position, augmentation generator, mixup bank, torch/Python RNG.
    for rank in range(2):
        assert a["ranks"][rank]["rank"] == rank
        assert_same_tree(
            a["ranks"][rank], b["ranks"][rank], f"rank {rank} (resumed from step {interrupted_at})"
        )
    # ... and they are each rank's own, not copies of rank 0's.
    r0, r1 = a["ranks"]
    assert r0["sampler"]["rank"] == 0 and r1["sampler"]["rank"] == 1
    assert not torch.equal(r0["rng"]["torch"], r1["rng"]["torch"])  # dropout masks differ
    assert not torch.equal(r0["rng"]["augment"], r1["rng"]["augment"])
    # Each mixup bank is saved as the batch positions that filled it and rebuilt from the rank's own
    # data: the same positions, different crops on each rank.
    h0, h1 = r0["augment"]["mixup"]["history"], r1["augment"]["mixup"]["history"]
    assert h0 and h0 == h1 and "bank" not in r0["augment"]["mixup"]
    from training.data import CropSampler, ShardDataset

    dataset = ShardDataset(corpus)
    tag = h0[-1][0]
    crops = [CropSampler(dataset, 8, rank=r, world_size=2).batch_at(*tag).frames for r in range(2)]
    assert not torch.equal(*crops)


def rows_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def wait_for_rows(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while rows_logged(run_dir) < n and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"


@pytest.mark.slow
def test_sigterm_stops_after_a_step_with_its_checkpoint_and_the_same_command_continues_bitwise(
    corpus, tmp_path
):
    steps = 40
    assert run(corpus, tmp_path / "straight", "checkpoint_every=1000", steps=steps) == 0
    stopped = tmp_path / "stopped"
    # One command line for the first start and the requeue, as in a scheduler's job script.
    cmd = [sys.executable, "-m", "training.pretrain", "--data", str(corpus), "--run-dir", str(stopped)]
    cmd += ["--no-progress", "--auto-resume", *TRAIN, f"steps={steps}", "checkpoint_every=1000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(stopped, 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    at = load_training_checkpoint(stopped / "checkpoints" / "last.pt")["step"]
    assert 5 <= at < steps
    assert f"stopped by SIGTERM after step {at} of {steps}" in err and "--auto-resume" in err
    assert rows_logged(stopped) == at  # it stopped at the end of the step it checkpointed

    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_training_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_training_checkpoint(stopped / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for part in ("encoder", "projector", "optimizer", "ranks"):
        assert_same_tree(a[part], b[part], f"{part} (stopped at step {at})")


def rank_pids(marker: str) -> dict[int, int]:
    """{rank: pid} of the torchrun workers whose command line contains ``marker``."""
    ranks = {}
    for pid in processes_running(marker):
        try:
            env = dict(
                item.split(b"=", 1)
                for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if b"=" in item
            )
        except OSError:
            continue
        if b"RANK" in env and b"LOCAL_RANK" in env:
            ranks[int(env[b"RANK"])] = pid
    return ranks


@pytest.mark.slow
def test_sigterm_to_one_of_two_ranks_stops_both_at_one_step_and_the_same_command_continues_bitwise(
    corpus, tmp_path
):
    steps = 24
    run_to_end(torchrun(corpus, tmp_path / "straight", "checkpoint_every=1000", steps=steps))
    stopped = tmp_path / "stopped"
    cmd = torchrun(corpus, stopped, "checkpoint_every=1000", "--auto-resume", steps=steps)
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    wait_for_rows(stopped, 4, proc)
    pids = rank_pids(str(stopped))
    assert sorted(pids) == [0, 1], pids
    # Only rank 1 hears it (a signal can reach ranks at different steps): both must stop at the same step.
    os.kill(pids[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "exitcode  : 75" in err, err[-3000:]  # torchrun reports each rank's 75
    assert not processes_running(str(stopped)), "a rank outlived the stop"
    saved = load_training_checkpoint(stopped / "checkpoints" / "last.pt")
    at = saved["step"]
    assert 4 <= at < steps and f"stopped by SIGTERM after step {at} of {steps}" in err
    assert [r["sampler"]["batch"] + r["sampler"]["epoch"] * 3 for r in saved["ranks"]] == [at % 1000] * 2

    run_to_end(cmd)
    a = load_training_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_training_checkpoint(stopped / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for part in ("encoder", "projector", "optimizer", "scaler", "ranks"):
        assert_same_tree(a[part], b[part], f"{part} (stopped at step {at})")

    # A checkpoint grows by a small per-rank record with the world, not by each rank's mixup bank
    # (cpu-tiny's is 256 x 64 x 96 float32 = 6.3 MB per rank).
    one = tmp_path / "one"
    assert run(corpus, one, "checkpoint_every=1000", steps=steps) == 0
    grown = (tmp_path / "straight" / "checkpoints" / "last.pt").stat().st_size - (
        one / "checkpoints" / "last.pt"
    ).stat().st_size
    assert 0 < grown < 64_000, grown
