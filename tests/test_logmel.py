"""abt_eval.logmel: the no-learning reference follows hear_abt's HEAR rules (shapes, dtypes, timestamps,
input errors) and its numbers are log-mel mean + std computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abt_eval import logmel
from hear_abt import AudioInputError
from hear_abt.config import FrontendConfig, ModelConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.frontend import LogMelFrontend

SR = 16000


@pytest.fixture(scope="module")
def model():
    return logmel.load_model("ignored/path")


def tones(n=3, seconds=1.3):
    t = torch.arange(int(SR * seconds)) / SR
    return torch.stack([0.3 * torch.sin(2 * torch.pi * (200 + 300 * i) * t) for i in range(n)])


def test_attributes(model):
    assert model.sample_rate == SR and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == 128
    assert isinstance(model.scene_embedding_size, int) and not model.training
    with pytest.raises(TypeError, match="unexpected options"):
        logmel.load_model(timestamp_mode="fast")


@pytest.mark.parametrize(
    "n_samples,expected", [(1, 1), (800, 1), (801, 2), (16000, 20), (16001, 21), (17123, 22)]
)
def test_timestamps_match_hear_abt(model, n_samples, expected):
    emb, ts = logmel.get_timestamp_embeddings(torch.zeros(2, n_samples), model)
    assert emb.shape == (2, expected, 128) and emb.dtype == torch.float32
    assert ts.shape == (2, expected) and ts.dtype == torch.float32
    assert torch.equal(ts[0], torch.arange(expected, dtype=torch.float32) * 50.0)
    abt = ABTEmbedder(ModelConfig(encoder_kwargs={"channels": 8, "mlp_dim": 64}))
    assert torch.equal(ts[0], abt.timestamps_ms(n_samples, torch.device("cpu")))


def test_scene_is_mean_and_std_of_the_log_mel(model):
    audio = tones()
    emb = logmel.get_scene_embeddings(audio, model)
    assert emb.shape == (3, 128) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    mel = LogMelFrontend(FrontendConfig())(audio).double().numpy()
    np.testing.assert_allclose(emb[:, :64], mel.mean(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb[:, 64:], mel.std(-1), rtol=1e-4, atol=1e-4)
    # A batch of one equals the batch; float64 and numpy input give the float32 answer.
    assert torch.allclose(logmel.get_scene_embeddings(audio[1:2], model)[0], emb[1], atol=1e-6)
    assert torch.equal(logmel.get_scene_embeddings(audio.double().numpy(), model), emb)


def test_timestamp_window_is_mean_and_std_of_its_950ms(model):
    audio = tones(2, 2.0)
    emb, _ = logmel.get_timestamp_embeddings(audio, model)
    fe = FrontendConfig()
    k = 7  # window centred on 350 ms: samples [350 ms - 48 hops, ...) with silence padding
    padded = torch.nn.functional.pad(audio, (48 * 160, 48 * 160))
    mel = LogMelFrontend(fe)(padded).double()[:, :, k * 5 : k * 5 + 96].numpy()
    np.testing.assert_allclose(emb[:, k, :64], mel.mean(-1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(emb[:, k, 64:], mel.std(-1), rtol=1e-4, atol=1e-3)


def test_short_clip_padded_to_one_window(model):
    short = tones(1, 0.3)  # 31 frames, padded with 65 silence frames as hear_abt pads
    fe = FrontendConfig()
    mel = LogMelFrontend(fe)(short).double()
    mel = torch.nn.functional.pad(mel, (0, 96 - mel.shape[-1]), value=fe.silence_value).numpy()
    emb = logmel.get_scene_embeddings(short, model)
    np.testing.assert_allclose(emb[:, :64], mel.mean(-1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(emb[:, 64:], mel.std(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "audio,match",
    [
        (torch.zeros(16000), "2-D"),
        (torch.zeros(1, 16000, dtype=torch.int16), "int16"),
        (torch.zeros(0, 16000), "empty batch"),
        (torch.zeros(2, 0), "zero length"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), "NaN"),
        (torch.full((1, 100), 1e12), "beyond"),
    ],
)
def test_bad_audio_gives_the_same_errors_as_hear_abt(model, audio, match):
    for fn in (logmel.get_scene_embeddings, logmel.get_timestamp_embeddings):
        with pytest.raises(AudioInputError, match=match):
            fn(audio, model)


def test_long_clip_no_drift(model):
    emb, ts = logmel.get_timestamp_embeddings(torch.zeros(1, SR * 60) + 0.01, model)
    assert emb.shape == (1, 1200, 128) and ts[0, -1] == 59950.0 and torch.all(ts.diff() == 50.0)


def test_hear_eval_logmel_reference_goes_through_the_same_runner(tmp_path, monkeypatch, capsys):
    from test_hear_eval import TINY, FakeHeareval, write_task

    from abt_eval import hear_eval
    from hear_abt.weights import save_pretrained

    tasks = tmp_path / "tasks"
    write_task(tasks / "words", ["top1_acc"])
    weights = save_pretrained(tmp_path / "tiny", TINY, ABTEmbedder(TINY).encoder.state_dict())
    fake = FakeHeareval({"abt": 0.6, "logmel": 0.5})
    fake.install(monkeypatch)
    out = tmp_path / "out"
    argv = ["--tasks-dir", str(tasks), "--out", str(out), "--model", f"abt={weights}", "--logmel-reference"]
    assert hear_eval.main(argv) == 0
    embed_cmds = [c for c in fake.cmds if c[3] == "embeddings"]
    logmel_cmd = next(c for c in embed_cmds if c[4] == "abt_eval.logmel")
    assert "--model" not in logmel_cmd  # no weights
    settings = hear_eval.EvalSettings(tasks, out, model_options={"timestamp_mode": "fast"})
    spec = hear_eval.ModelSpec("logmel", hear_eval.LOGMEL_SOURCE, module=hear_eval.LOGMEL_MODULE)
    assert "--model-options" not in hear_eval.embeddings_command(spec, "words", settings)  # nor ABT's options
    assert (
        out / "embeddings" / "logmel" / "abt_eval.logmel" / "words" / "test.predicted-scores.json"
    ).is_file()
    md = (out / "results.md").read_text()
    assert md.splitlines()[0].startswith("| task | metric | abt | logmel |")
    assert "beats it: abt 1/1 (words)" in md
    assert "logmel" in (out / "results.csv").read_text().splitlines()[0]
