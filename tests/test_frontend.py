"""The log-mel front-end against an independent numpy computation, and its chunked form."""

import numpy as np
import pytest
import torch

from hear_abt.config import FrontendConfig, ModelConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.frontend import LogMelFrontend


def htk_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def numpy_logmel(wav: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Textbook log-mel: zero-padded centred frames, periodic Hann, |rfft|^2, triangular HTK filters."""
    half = cfg.n_fft // 2
    padded = np.concatenate([np.zeros(half), wav.astype(np.float64), np.zeros(half)])
    n_frames = 1 + len(wav) // cfg.hop_length
    n = np.arange(cfg.win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.win_length)
    frames = np.stack(
        [padded[i * cfg.hop_length : i * cfg.hop_length + cfg.n_fft] * window for i in range(n_frames)]
    )
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, n_fft/2+1)
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    mel_points = np.linspace(htk_mel(cfg.f_min), htk_mel(cfg.f_max), cfg.n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    fb = np.zeros((len(freqs), cfg.n_mels))
    for m in range(cfg.n_mels):
        lo, centre, hi = hz_points[m : m + 3]
        rising = (freqs - lo) / (centre - lo)
        falling = (hi - freqs) / (hi - centre)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    return np.log(power @ fb + cfg.log_offset).T


def test_logmel_matches_numpy_reference():
    cfg = FrontendConfig()
    rng = np.random.default_rng(0)
    t = np.arange(8000) / cfg.sample_rate
    wav = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    ours = LogMelFrontend(cfg)(torch.tensor(wav, dtype=torch.float32)[None])[0].numpy()
    ref = numpy_logmel(wav, cfg)
    assert ours.shape == ref.shape == (64, 1 + 8000 // 160)
    # Compare where there is energy; float32 STFT vs float64 reference.
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3)


def test_tone_lands_in_the_right_mel_bin():
    cfg = FrontendConfig()
    t = np.arange(16000) / cfg.sample_rate
    mel = LogMelFrontend(cfg)(torch.tensor(np.sin(2 * np.pi * 1000 * t), dtype=torch.float32)[None])[0]
    centres = 700.0 * (10 ** (np.linspace(htk_mel(60), htk_mel(7800), 66)[1:-1] / 2595.0) - 1.0)
    assert int(mel[:, 50].argmax()) == int(np.abs(centres - 1000).argmin())


def test_silence_is_log_offset_and_frames_count():
    cfg = FrontendConfig()
    out = LogMelFrontend(cfg)(torch.zeros(1, 15200))
    assert out.shape[-1] == 96 == cfg.window_frames  # 950 ms -> 96 frames
    # log(0 + float32 eps), by hand: the value every frame-domain padding uses.
    assert cfg.silence_value == pytest.approx(-15.942385152878742, abs=1e-9)
    assert torch.allclose(out, torch.full_like(out, cfg.silence_value))


def test_chunked_logmel_equals_whole_clip():
    model = ABTEmbedder(ModelConfig())
    audio = torch.randn(2, 16000 * 3) * 0.1
    whole = model.frontend(audio)
    chunked = model.logmel(audio, chunk_frames=37)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)


def test_frontend_runs_float32_under_autocast():
    fe = LogMelFrontend(FrontendConfig())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fe(torch.randn(1, 4000))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("bad", [dict(win_length=2048), dict(f_max=9000.0)])
def test_frontend_config_rejects_inconsistent_settings(bad):
    with pytest.raises(ValueError):
        FrontendConfig(**bad)
