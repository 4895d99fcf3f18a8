"""load_audio: decoding, down-mixing, resampling and clear errors for bad files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from hear_abt.audio import AUDIO_EXTENSIONS, AudioFileError, find_audio_files, load_audio, to_mono_16k


def _tone(freq: float, sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[spectrum.argmax()])


def test_stereo_44k_mixes_to_mono_and_resamples(tmp_path):
    tone = _tone(1000.0, 44_100, 1.0)
    # Right channel silent: the mean of the channels halves the amplitude.
    sf.write(tmp_path / "stereo.wav", np.stack([tone, np.zeros_like(tone)], axis=1), 44_100)
    wav = load_audio(tmp_path / "stereo.wav")
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 16_000) <= 1
    assert abs(_peak_hz(wav, 16_000) - 1000.0) <= 1.0
    assert np.abs(wav[1000:-1000]).max() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
def test_reads_compressed_formats(tmp_path, fmt):
    path = tmp_path / f"tone.{fmt}"
    sf.write(path, _tone(440.0, 22_050, 0.5), 22_050)
    wav = load_audio(path)
    assert abs(len(wav) - 8_000) <= 1
    assert abs(_peak_hz(wav, 16_000) - 440.0) <= 2.0


def test_to_mono_16k_passthrough_and_shapes():
    mono = _tone(300.0, 16_000, 0.1)
    np.testing.assert_array_equal(to_mono_16k(mono, 16_000), mono)
    np.testing.assert_allclose(to_mono_16k(np.stack([mono, mono], 1), 16_000), mono)
    with pytest.raises(ValueError):
        to_mono_16k(np.zeros((2, 2, 2)), 16_000)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF this is not really a wave file")
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        load_audio(path)
    with pytest.raises(AudioFileError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


def test_empty_file_names_the_file(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioFileError, match="empty.wav.*no samples"):
        load_audio(tmp_path / "empty.wav")


def test_nan_audio_names_the_file(tmp_path):
    wav = _tone(300.0, 16_000, 0.1)
    wav[10] = np.nan
    sf.write(tmp_path / "nan.wav", wav, 16_000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="nan.wav"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize("rate", [44_101, 48_001, 8_000, 96_000])
def test_odd_and_common_rates_resample_to_the_right_frequency_and_length(tmp_path, rate):
    # 44101/48001 Hz share no useful gcd with 16 kHz: a sinc kernel sized by the ratio took GBs.
    path = tmp_path / f"tone{rate}.wav"
    sf.write(path, _tone(1000.0, rate, 2.0), rate, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.dtype == np.float32
    assert abs(len(wav) - round(2.0 * 16_000)) <= 1
    # Frequency kept (FFT bin 0.5 Hz) and level kept (0.5 peak, away from the edges).
    assert abs(_peak_hz(wav, 16_000) - 1000.0) <= 0.5
    assert np.abs(wav[2000:-2000]).max() == pytest.approx(0.5, abs=0.005)
    # Nothing but the tone: the residual after removing a fitted 1 kHz sine is tiny.
    t = np.arange(len(wav))[2000:-2000] / 16_000
    basis = np.stack([np.sin(2 * np.pi * 1000 * t), np.cos(2 * np.pi * 1000 * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, wav[2000:-2000], rcond=None)
    residual = wav[2000:-2000] - basis @ coef
    assert np.sqrt(np.mean(residual**2)) < 1e-3


def test_odd_rate_resampling_uses_little_memory(tmp_path):
    """Peak RSS grows by far less than the GBs torchaudio's kernel needed (measured in a fresh process)."""
    for rate in (44_101, 48_001):
        sf.write(tmp_path / f"{rate}.wav", _tone(1000.0, rate, 10.0), rate, subtype="FLOAT")
    script = textwrap.dedent(
        f"""
        import resource
        from hear_abt.audio import load_audio
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for rate in (44101, 48001):
            wav = load_audio({str(tmp_path)!r} + f"/{{rate}}.wav")
            assert abs(len(wav) - 160000) <= 1, len(wav)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 200, f"peak RSS grew by {grown_mb:.0f} MB resampling 10 s at 44101/48001 Hz"


def test_find_audio_files_is_recursive_sorted_and_skips_non_files(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for rel in ("z.wav", "b/a.FLAC", "b/deep/c.ogg", "notes.txt", "b/x.npy"):
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "folder.wav").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.wav")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["b/a.FLAC", "b/deep/c.ogg", "z.wav"]
    assert {"wav", "flac", "ogg"} <= set(AUDIO_EXTENSIONS)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_wav_is_an_error_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(AudioFileError, match="pipe.wav.*not a regular file"):
        load_audio(tmp_path / "pipe.wav")


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "AIFF"])
@pytest.mark.parametrize("channels", [1, 2])
def test_16_bit_files_read_as_integers_equal_libsndfiles_floats(tmp_path, fmt, channels):
    """16-bit files are read as int16 and scaled in numpy (much faster): bitwise libsndfile's own
    float conversion, then the channel mean as before; full-scale and odd values included."""
    rng = np.random.default_rng(channels)
    pcm = rng.integers(-32768, 32768, size=(20_000, channels)).astype(np.int16)
    pcm[:4, 0] = [-32768, 32767, 0, -1]
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, pcm, 16_000, format=fmt, subtype="PCM_16")
    floats = sf.read(path, dtype="float32", always_2d=True)[0]
    want = floats.mean(axis=1, dtype=np.float32)
    got = load_audio(path, 16_000)
    assert got.dtype == np.float32 and got.view(np.int32).tolist() == want.view(np.int32).tolist()


def test_one_channel_is_its_mean_bit_for_bit_including_negative_zero(tmp_path):
    """Mono is copied instead of averaged: the same bits as numpy's mean, -0.0 becoming 0.0 as there."""
    samples = np.array([-0.0, 0.0, 1e-40, -1e-40, 0.25, -0.5, 3.4e38], dtype=np.float32)
    sf.write(tmp_path / "m.wav", samples, 16_000, subtype="FLOAT")
    want = samples[:, None].mean(axis=1, dtype=np.float32)
    got = load_audio(tmp_path / "m.wav", 16_000)
    assert got.view(np.int32).tolist() == want.view(np.int32).tolist()
    assert np.signbit(got[0]) == np.signbit(want[0])
