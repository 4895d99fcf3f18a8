"""load_audio: decoding, down-mixing, resampling and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from hear_abt.audio import AudioFileError, load_audio, to_mono_16k


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
