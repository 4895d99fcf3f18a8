"""End to end on the CPU: prepare real speech and tones, pre-train cpu-tiny, loss goes down, a
SIGKILLed run resumes to identical weights, NaN stops cleanly, export loads through hear_abt."""

import os
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
from training import export, prepare, pretrain
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
WORDS = ["hello", "water", "seven", "yellow", "music", "bird", "table", "window", "river", "quick"]
VOICES = ["en", "en+f3", "en-us+m3", "de"]
TRAIN = ["--preset", "cpu-tiny", "batch_size=16", "log_every=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 espeak-ng utterances + 16 tone/noise clips, prepared into shards."""
    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    audio.mkdir()
    for w in WORDS:
        for v in VOICES:
            subprocess.run(["espeak-ng", "-v", v, "-w", str(audio / f"{w}_{v}.wav"), f"{w}, {w}"], check=True)
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 16000
    for i in range(16):
        wave = (
            np.sin(2 * np.pi * 110 * 2 ** (i / 4) * t)
            if i % 2
            else rng.standard_normal(t.size) * np.exp(-3 * t)
        )
        sf.write(audio / f"synth_{i}.wav", (0.3 * wave).astype(np.float32), 16000)
    prepare.main([str(audio), str(root / "data"), "--workers", "1", "--no-progress"])
    return root / "data"


def run(corpus, run_dir, *extra, steps=40):
    args = [
        "--data",
        str(corpus),
        "--run-dir",
        str(run_dir),
        "--max-steps",
        str(steps),
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
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 60  # a checkpoint is written at the end whatever checkpoint_every says


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
        "--max-steps",
        str(steps),
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
    interrupted_at = load_checkpoint(ckpt)["step"]
    assert interrupted_at < steps, "the run finished before it could be killed"

    assert pretrain.main(["--run-dir", str(killed), "--resume", "--no-progress"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(ckpt)
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


def test_nan_loss_stops_with_last_good_checkpoint_intact(corpus, tmp_path, monkeypatch, capsys):
    real_loss = pretrain.BarlowTwinsLoss

    class PoisonedAfterTen(real_loss):
        calls = 0

        def forward(self, z1, z2):
            out = super().forward(z1, z2)
            PoisonedAfterTen.calls += 1
            return out._replace(loss=out.loss * float("nan")) if PoisonedAfterTen.calls > 10 else out

    monkeypatch.setattr(pretrain, "BarlowTwinsLoss", PoisonedAfterTen)
    assert run(corpus, tmp_path / "run", "checkpoint_every=4") == 3
    assert "loss is nan at step 10" in capsys.readouterr().err
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 8 and all(torch.isfinite(t).all() for t in state["encoder"].values())


def test_resume_refuses_changed_settings_and_new_runs_refuse_old_dirs(corpus, tmp_path):
    assert run(corpus, tmp_path / "run", steps=4) == 0
    with pytest.raises(SystemExit, match="already holds a run"):
        run(corpus, tmp_path / "run", steps=4)
    with pytest.raises(SystemExit, match="own settings"):
        pretrain.main(["--run-dir", str(tmp_path / "run"), "--resume", "lr_weights=1.0"])
    with pytest.raises(ValueError, match="unknown setting"):
        run(corpus, tmp_path / "other", "not_a_setting=1")


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


def test_linear_probe_monitor_logs_scores_and_keeps_the_best_checkpoint(corpus, tmp_path):
    from training import devsuite

    devsuite.main([str(tmp_path / "suite"), "--small", "--tasks", "speech-words", "--jobs", "1"])
    task = tmp_path / "suite" / "speech-words"
    assert run(corpus, tmp_path / "run", "probe_every=5", f"probe_task={task}", steps=10) == 0
    rows = (tmp_path / "run" / "probe.csv").read_text().splitlines()
    assert rows[0] == "step,task,score" and [r.split(",")[0] for r in rows[1:]] == ["5", "10"]
    scores = [float(r.split(",")[2]) for r in rows[1:]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["best_probe"] == max(scores) and best["step"] == 5 + 5 * int(scores[1] > scores[0])


def test_vit_preset_trains_with_adamw_and_view_masking(corpus, tmp_path):
    args = [
        "--data",
        str(corpus),
        "--run-dir",
        str(tmp_path / "vit"),
        "--max-steps",
        "3",
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
    state = load_checkpoint(tmp_path / "vit" / "checkpoints" / "last.pt")
    assert state["train_config"]["optimizer"] == "adamw" and state["step"] == 3
    assert np.isfinite(losses(tmp_path / "vit")).all()
    with pytest.raises(SystemExit, match="crop_frames=160"):
        pretrain.main([*args[:3], str(tmp_path / "vit2"), *args[4:], "crop_frames=160"])


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


def test_torchrun_two_cpu_processes_train_checkpoint_and_resume(corpus, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [
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
        "--max-steps",
        "4",
        "--no-progress",
        *TRAIN,
        "checkpoint_every=2",
    ]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["sampler"]) == 2  # one data position per rank
    assert state["sampler"][0] != state["sampler"][1]
    assert all(torch.isfinite(t).all() for t in state["encoder"].values())
    # Every rank restores its own state from the one checkpoint.
    resume = subprocess.run(
        cmd[:7] + ["--run-dir", str(run_dir), "--resume", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
