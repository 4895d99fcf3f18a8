"""`hear-abt embed` and `hear-abt info` on real files: formats, rates, channels, failures."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_abt
from hear_abt.cli import main
from hear_abt.config import ModelConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import save_pretrained


def make_weights(folder):
    torch.manual_seed(0)
    config = ModelConfig(encoder_kwargs={"channels": 8, "mlp_dim": 32})
    return save_pretrained(folder, config, ABTEmbedder(config).encoder.state_dict())


def test_embed_mixed_files_writes_aligned_arrays_and_reports_failures(tmp_path, capsys):
    weights = make_weights(tmp_path / "w")
    t44 = np.arange(int(44100 * 1.5)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t44), 0.5 * np.sin(2 * np.pi * 660 * t44)], axis=1)
    sf.write(tmp_path / "stereo44k.flac", (0.3 * stereo).astype(np.float32), 44100)
    mono = 0.2 * np.sin(2 * np.pi * 300 * np.arange(8000) / 16000)
    sf.write(tmp_path / "mono16k.wav", mono.astype(np.float32), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")

    files = [tmp_path / "stereo44k.flac", tmp_path / "broken.wav", tmp_path / "mono16k.wav"]
    out = tmp_path / "emb.npz"
    status = main(["embed", *map(str, files), "--out", str(out), "--weights", str(weights), "--quiet"])
    assert status == 1 and "broken.wav" in capsys.readouterr().err
    data = np.load(out)
    assert [p.split("/")[-1] for p in data["files"]] == ["stereo44k.flac", "mono16k.wav"]
    assert list(data["failed"]) == [str(tmp_path / "broken.wav")]
    assert data["scene_embeddings"].shape == (2, 8 * 16 + 32)
    offsets = data["timestamp_offsets"]
    # 1.5 s -> 24000 samples at 16 kHz -> 30 timestamps; 0.5 s -> 10.
    assert list(offsets) == [0, 30, 40]
    assert np.array_equal(data["timestamps_ms"][30:40], np.arange(10) * 50.0)

    # The mono file's row equals the Python API on the file's (16-bit PCM) samples.
    model = hear_abt.load_model(weights)
    pcm = torch.from_numpy(sf.read(tmp_path / "mono16k.wav", dtype="float32")[0])
    expected = hear_abt.get_scene_embeddings(pcm[None], model)[0]
    np.testing.assert_allclose(data["scene_embeddings"][1], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_embed_scene_only_and_bad_weights(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.zeros(4000, dtype=np.float32), 16000)
    weights = make_weights(tmp_path / "w")
    assert (
        main(
            [
                "embed",
                str(tmp_path / "a.wav"),
                "--out",
                str(tmp_path / "s.npz"),
                "--weights",
                str(weights),
                "--what",
                "scene",
                "--quiet",
            ]
        )
        == 0
    )
    assert "timestamp_embeddings" not in np.load(tmp_path / "s.npz")
    assert (
        main(
            [
                "embed",
                str(tmp_path / "a.wav"),
                "--out",
                str(tmp_path / "x.npz"),
                "--weights",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    assert "neither an existing file" in capsys.readouterr().err


def test_info_prints_the_config(tmp_path, capsys):
    weights = make_weights(tmp_path / "w")
    assert main(["info", str(weights)]) == 0
    printed = capsys.readouterr().out
    assert '"encoder": "audiontt"' in printed and "parameters:" in printed


def _tone_file(path, rate=16000, seconds=0.5, amplitude=0.2, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    subtype = "FLOAT" if str(path).endswith(".wav") else None
    sf.write(path, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, subtype=subtype)
    return path


def test_embed_a_folder_recursively_and_one_bad_file_never_aborts_the_others(tmp_path, capsys):
    weights = make_weights(tmp_path / "w")
    audio = tmp_path / "audio"
    (audio / "sub" / "deeper").mkdir(parents=True)
    _tone_file(audio / "b.wav")
    _tone_file(audio / "sub" / "odd48001.wav", rate=48001)  # the rate that took GBs to resample
    _tone_file(audio / "sub" / "deeper" / "odd44101.flac", rate=44101)
    (audio / "sub" / "broken.wav").write_bytes(b"RIFF not really a wav")
    huge = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 1e19
    sf.write(audio / "sub" / "huge.wav", huge, 16000, subtype="FLOAT")  # finite, but overflows float32 power
    (audio / "notes.txt").write_text("not audio")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    out = tmp_path / "emb.npz"
    status = main(["embed", str(audio), str(empty), "--out", str(out), "--weights", str(weights), "--quiet"])
    err = capsys.readouterr().err
    assert status == 1
    assert "broken.wav" in err and "huge.wav" in err and "empty_folder" in err and "holds no audio" in err
    assert "1e+19" in err or "beyond" in err  # the huge file's reason names the problem
    data = np.load(out)
    names = [p.split("/")[-1] for p in data["files"]]
    assert names == ["b.wav", "odd44101.flac", "odd48001.wav"]  # sorted by relative path; no .txt
    assert sorted(Path(p).name for p in data["failed"]) == ["broken.wav", "empty_folder", "huge.wav"]
    assert np.isfinite(data["scene_embeddings"]).all() and np.isfinite(data["timestamp_embeddings"]).all()
    assert list(data["timestamp_offsets"]) == [0, 10, 20, 30]  # 0.5 s each at 16 kHz


def test_non_finite_embeddings_are_reported_never_written(tmp_path, capsys, monkeypatch):
    """Whatever makes an embedding NaN (here: weights patched after loading), the file is reported."""
    weights = make_weights(tmp_path / "w")
    _tone_file(tmp_path / "a.wav")
    _tone_file(tmp_path / "b.wav")
    real_load = hear_abt.load_model

    def poisoned(*args, **kwargs):
        model = real_load(*args, **kwargs)
        with torch.no_grad():
            next(model.encoder.parameters()).fill_(float("nan"))
        return model

    monkeypatch.setattr(hear_abt, "load_model", poisoned)
    out = tmp_path / "nan.npz"
    assert (
        main(
            [
                "embed",
                str(tmp_path / "a.wav"),
                str(tmp_path / "b.wav"),
                "--out",
                str(out),
                "--weights",
                str(weights),
                "--quiet",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "a.wav" in err and "not finite" in err
    data = np.load(out)
    assert len(data["files"]) == 0 and len(data["failed"]) == 2 and "scene_embeddings" not in data


def test_unwritable_out_is_refused_before_any_work(tmp_path, monkeypatch):
    _tone_file(tmp_path / "a.wav")
    (tmp_path / "plainfile").write_text("x")
    calls = []
    monkeypatch.setattr(hear_abt, "load_model", lambda *a, **k: calls.append(a))
    for out, why in [
        (tmp_path / "plainfile" / "emb.npz", "not a folder"),
        (tmp_path / "adir.npz", "is a folder"),
        (tmp_path / "emb.txt", "must end in .npz"),
    ]:
        if out.name == "adir.npz":
            out.mkdir()
        with pytest.raises(SystemExit) as exc:
            main(["embed", str(tmp_path / "a.wav"), "--out", str(out), "--weights", "x/y"])
        assert why in str(exc.value)
    assert calls == []  # refused before the model was even loaded


def test_bogus_or_missing_device_is_a_clear_error(tmp_path):
    _tone_file(tmp_path / "a.wav")
    with pytest.raises(SystemExit, match="not a torch device"):
        main(["embed", str(tmp_path / "a.wav"), "--out", str(tmp_path / "e.npz"), "--device", "gpu9"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="sees no CUDA device"):
            main(["embed", str(tmp_path / "a.wav"), "--out", str(tmp_path / "e.npz"), "--device", "cuda"])


def test_interrupted_write_leaves_the_old_output_intact(tmp_path, monkeypatch):
    weights = make_weights(tmp_path / "w")
    _tone_file(tmp_path / "a.wav")
    out = tmp_path / "emb.npz"
    out.write_bytes(b"previous results")
    real_savez = np.savez

    def savez_then_ctrl_c(file, **arrays):
        real_savez(file, **arrays)
        file.write(b"half")  # bytes reached the temporary file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        main(["embed", str(tmp_path / "a.wav"), "--out", str(out), "--weights", str(weights), "--quiet"])
    assert out.read_bytes() == b"previous results"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "emb.npz", "w"]  # no temporary left


def test_sigkill_in_the_middle_of_writing_leaves_the_old_output_intact(tmp_path):
    """A real process, killed with SIGKILL after half of the .npz bytes were written."""
    weights = make_weights(tmp_path / "w")
    _tone_file(tmp_path / "a.wav", seconds=2.0)
    out = tmp_path / "emb.npz"
    out.write_bytes(b"previous results")
    script = textwrap.dedent(
        """
        import os, signal, sys
        import numpy as np
        real_savez = np.savez

        def savez_and_die(file, **arrays):
            import io
            buf = io.BytesIO()
            real_savez(buf, **arrays)
            file.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        np.savez = savez_and_die
        from hear_abt.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    args = ["embed", str(tmp_path / "a.wav"), "--out", str(out), "--weights", str(weights), "--quiet"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert out.read_bytes() == b"previous results"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".emb.npz.")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the half-written temporary, beside it
    # A complete run afterwards replaces the old file with a readable one.
    assert main(args) == 0
    assert np.load(out)["scene_embeddings"].shape == (1, 8 * 16 + 32)


def test_info_says_which_parameters_it_counts(tmp_path, capsys):
    weights = make_weights(tmp_path / "w")
    assert main(["info", str(weights)]) == 0
    printed = capsys.readouterr().out
    model = hear_abt.load_model(weights)
    learnable = sum(p.numel() for p in model.encoder.parameters())
    assert f"encoder parameters: {learnable:,}" in printed
    assert "projector" in printed and "not exported" in printed


def test_ctrl_c_in_the_middle_of_a_long_file_leaves_no_partial_arrays(tmp_path, monkeypatch):
    """--out-dir: the long (streamed) file being embedded when Ctrl-C comes leaves no .npy (final or
    temporary), and the folder has no index (an interrupted run); --out: the previous .npz stays."""
    import hear_abt.streaming

    weights = make_weights(tmp_path / "w")
    _tone_file(tmp_path / "a.wav")
    _tone_file(tmp_path / "b.wav", seconds=3.0)  # longer than a chunk of 0.5 s: streamed
    real_embed_file = hear_abt.streaming.embed_file

    def ctrl_c_in_b(path, model, **kwargs):
        if path.name == "b.wav":
            kwargs["on_timestamps"](
                np.zeros((3, model.timestamp_embedding_size), np.float32), np.zeros(3, np.float32)
            )
            raise KeyboardInterrupt
        return real_embed_file(path, model, **kwargs)

    monkeypatch.setattr(hear_abt.streaming, "embed_file", ctrl_c_in_b)
    files = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    (tmp_path / "emb.npz").write_bytes(b"previous results")
    for out in (["--out-dir", str(tmp_path / "emb")], ["--out", str(tmp_path / "emb.npz")]):
        with pytest.raises(KeyboardInterrupt):
            main(["embed", *files, *out, "--weights", str(weights), "--quiet", "--chunk-seconds", "0.5"])
    assert sorted(p.name for p in (tmp_path / "emb").rglob("*")) == [
        "000000.emb.npy",
        "000000.ms.npy",
        "timestamps",
    ]
    assert (tmp_path / "emb.npz").read_bytes() == b"previous results"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_while_a_batched_file_is_written_leaves_no_partial_arrays(tmp_path, monkeypatch, workers):
    """Short files, batched: Ctrl-C after the third file's rows reached its sink. The two files before it
    are complete, the third leaves nothing, no index; the decoding threads are stopped."""
    import threading

    from hear_abt.embeddings_io import MemorySink, NpySink

    weights = make_weights(tmp_path / "w")
    files = [str(_tone_file(tmp_path / f"{i}.wav", freq=300.0 + 50 * i)) for i in range(6)]
    calls = []
    for cls in (NpySink, MemorySink):
        real_call = cls.__call__

        def ctrl_c_at_the_third(self, emb, ts, real_call=real_call):
            real_call(self, emb, ts)
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt

        monkeypatch.setattr(cls, "__call__", ctrl_c_at_the_third)
    (tmp_path / "emb.npz").write_bytes(b"previous results")
    for out in (["--out-dir", str(tmp_path / "emb")], ["--out", str(tmp_path / "emb.npz")]):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            main(["embed", *files, *out, "--weights", str(weights), "--quiet", "--decode-workers", workers])
    names = sorted(p.name for p in (tmp_path / "emb").rglob("*"))
    assert names == [f"00000{i}.{k}.npy" for i in range(2) for k in ("emb", "ms")] + ["timestamps"]
    assert (tmp_path / "emb.npz").read_bytes() == b"previous results"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not [t for t in threading.enumerate() if t.name.startswith("hear-abt-decode")]


def test_batch_options_are_checked_before_any_work(tmp_path, monkeypatch):
    _tone_file(tmp_path / "a.wav")
    calls = []
    monkeypatch.setattr(hear_abt, "load_model", lambda *a, **k: calls.append(a))
    for option, why in [
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--decode-workers", "-1"], "--decode-workers must be 0 or more"),
        (["--model-workers", "0"], "--model-workers must be at least 1"),
        (["--processes", "-1"], "--processes must be 0 or more"),
    ]:
        with pytest.raises(SystemExit, match=why):
            main(["embed", str(tmp_path / "a.wav"), "--out", str(tmp_path / "e.npz"), *option])
    with pytest.raises(SystemExit):  # argparse: not an integer
        main(["embed", str(tmp_path / "a.wav"), "--out", str(tmp_path / "e.npz"), "--batch-size", "2.5"])
    assert calls == []


def test_worker_processes_are_refused_on_a_gpu(tmp_path, monkeypatch):
    """Forked workers must not touch CUDA: --processes with a GPU device is an error before any work
    (this machine may have no GPU: the device parser is told there is one)."""
    import hear_abt.cli as cli

    _tone_file(tmp_path / "a.wav")
    monkeypatch.setattr(cli, "parse_device", lambda name: torch.device("cuda:0"))
    monkeypatch.setattr(hear_abt, "load_model", lambda *a, **k: pytest.fail("no work expected"))
    with pytest.raises(SystemExit, match="--processes must be 0 with --device cuda"):
        main(
            [
                "embed",
                str(tmp_path / "a.wav"),
                "--out",
                str(tmp_path / "e.npz"),
                "--device",
                "cuda",
                "--processes",
                "2",
            ]
        )
    assert cli.default_processes(torch.device("cuda:0")) == 0  # the default on a GPU: none


def test_batched_and_one_by_one_commands_write_the_same_rows_and_the_bar_counts_files_and_audio(
    tmp_path, capsys
):
    weights = make_weights(tmp_path / "w")
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(7):
        _tone_file(folder / f"{i}.wav", seconds=0.5 if i % 3 else 0.7, freq=200.0 + 60 * i)
    (folder / "broken.wav").write_bytes(b"RIFF nope")
    common = [str(folder), "--weights", str(weights)]
    assert main(["embed", *common, "--out", str(tmp_path / "one.npz"), "--batch-size", "1", "--quiet"]) == 1
    capsys.readouterr()
    assert main(["embed", *common, "--out", str(tmp_path / "many.npz"), "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    assert "8/8 files" in err and "4/4 s audio" in err and "broken.wav" in err  # 3 x 0.7 s + 4 x 0.5 s
    one, many = np.load(tmp_path / "one.npz"), np.load(tmp_path / "many.npz")
    assert one.files == many.files
    for key in ("files", "failed", "timestamps_ms", "timestamp_offsets"):
        np.testing.assert_array_equal(one[key], many[key])
    for key in ("scene_embeddings", "timestamp_embeddings"):
        np.testing.assert_allclose(many[key], one[key], rtol=0, atol=1e-6 * np.abs(one[key]).max())
