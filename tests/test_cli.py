"""`hear-abt embed` and `hear-abt info` on real files: formats, rates, channels, failures."""

import numpy as np
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
