"""AudioSet as downloaded: AAC (m4a/mp4/aac) and Opus (webm/mka/opus) through PyAV, MP3, and a folder
whose every file prepare does not prepare is accounted for (listed with its reason, or counted)."""

from __future__ import annotations

import fractions
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from hear_abt import audio
from hear_abt.audio import AudioFileError, iter_audio_blocks, load_audio
from training import prepare as prep
from training.data import ShardDataset

av = pytest.importorskip("av")

RATE = 48_000
BIT_RATE = 128_000  # YouTube's AAC is 128 kb/s; its Opus ~130 kb/s (stereo)


def _signal(seconds: float = 3.0) -> np.ndarray:
    """Broadband and changing (chirp, tremolo, noise bursts), so a misalignment shows in the log-mel."""
    t = np.arange(int(RATE * seconds)) / RATE
    rng = np.random.default_rng(0)
    chirp = 0.2 * np.sin(2 * np.pi * (200 * t + (6000 - 200) / (2 * seconds) * t**2))
    tremolo = 0.15 * (1 + np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 660 * t)
    bursts = 0.1 * rng.standard_normal(len(t)) * ((t * 4) % 1 < 0.3)
    floor = 0.01 * rng.standard_normal(len(t))
    return (chirp + tremolo + bursts + floor).astype(np.float32)


def encode(path, wav: np.ndarray, codec: str, container_format=None) -> None:
    """Write mono ``wav`` (at RATE) with PyAV's encoder ``codec``, as ffmpeg would."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=RATE, layout="mono")
        stream.bit_rate = BIT_RATE
        frame = av.AudioFrame.from_ndarray(wav[None], format="fltp", layout="mono")
        # A timestamp lets the encoder mark its priming samples, which the muxer writes down (mp4 edit
        # list, Opus pre-skip) and the decoder drops: the decoded audio lines up with the original.
        frame.sample_rate, frame.pts, frame.time_base = RATE, 0, fractions.Fraction(1, RATE)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


# name -> (encoder, container format, log-mel frames the decoded file lags the original by).
FORMATS = {
    "aac.m4a": ("aac", None, 0),
    "aac.mp4": ("aac", None, 0),
    "opus.webm": ("libopus", None, 0),
    "opus.mka": ("libopus", None, 0),
    "ogg.opus": ("libopus", None, 0),
    "lame.mp3": ("libmp3lame", None, 0),
    # Raw ADTS has nowhere to record the encoder's 1024 priming samples (21 ms = 2 frames at 48 kHz).
    "adts.aac": ("aac", "adts", 2),
}
# Mean |log-mel difference| to the wav original allowed, in natural-log units (the log-mel's std is
# 2.9 here). Measured with PyAV 18.1.0 (FFmpeg 8, libavcodec 62.28): m4a/mp4 0.178, webm/mka/opus
# 0.071, mp3 0.129, aac 0.201 (after its 2-frame lag). One frame (10 ms) of misalignment gives 0.545.
TOLERANCE = {"m4a": 0.25, "mp4": 0.25, "webm": 0.1, "mka": 0.1, "opus": 0.1, "mp3": 0.18, "aac": 0.28}


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    src = tmp_path_factory.mktemp("compressed")
    wav = _signal()
    sf.write(src / "original.wav", wav, RATE)
    for name, (codec, container_format, _lag) in FORMATS.items():
        encode(src / name, wav, codec, container_format)
    return src


@pytest.fixture(scope="module")
def prepared(compressed, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared_compressed")
    summary = prep.prepare(compressed, out, workers=2, clips_per_shard=4, progress=False)
    assert summary.skipped == 0
    return ShardDataset(out), json.loads(summary.manifest_path.read_text())


@pytest.mark.parametrize("name", FORMATS)
def test_compressed_files_are_prepared_close_to_the_wav_original(prepared, name):
    dataset, manifest = prepared
    sources = [s for shard in manifest["shards"] for s in shard["sources"]]
    original = dataset[sources.index("original.wav")].astype(np.float64)  # (n_mels, frames)
    decoded = dataset[sources.index(name)].astype(np.float64)
    lag = FORMATS[name][2]
    assert decoded.shape[1] - lag == original.shape[1]  # priming dropped: same length as the original
    difference = np.abs(decoded[:, lag:] - original).mean()
    assert difference < TOLERANCE[name.rsplit(".", 1)[1]], (
        f"{name}: mean |log-mel difference| {difference:.3f}"
    )


@pytest.mark.parametrize("name", ["aac.m4a", "opus.webm", "ogg.opus"])
def test_streamed_blocks_equal_the_whole_file(compressed, name):
    """`hear-abt embed` streams files (iter_audio_blocks): FFmpeg-decoded ones too, bit for bit."""
    blocks = list(iter_audio_blocks(compressed / name, block_seconds=0.37))
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(compressed / name))
    assert audio.audio_seconds(compressed / name) == pytest.approx(3.0, abs=0.05)


def test_mp3_through_ffmpeg_when_libsndfile_lacks_it(compressed, monkeypatch):
    via_libsndfile = load_audio(compressed / "lame.mp3")
    monkeypatch.setattr(audio, "FFMPEG_EXTENSIONS", (*audio.FFMPEG_EXTENSIONS, "mp3"))
    via_ffmpeg = load_audio(compressed / "lame.mp3")
    assert via_ffmpeg.shape == via_libsndfile.shape
    assert (
        np.abs(via_ffmpeg - via_libsndfile).max() < 1e-4
    )  # two MP3 decoders (mpg123, FFmpeg): 1.2e-6 measured


def test_a_file_libsndfile_cannot_open_falls_back_to_ffmpeg(compressed, tmp_path):
    (tmp_path / "really_aac.wav").write_bytes((compressed / "aac.m4a").read_bytes())
    np.testing.assert_array_equal(load_audio(tmp_path / "really_aac.wav"), load_audio(compressed / "aac.m4a"))


def test_hostile_compressed_files_are_clear_errors(compressed, tmp_path):
    whole = (compressed / "aac.m4a").read_bytes()
    (tmp_path / "truncated.m4a").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end
    (tmp_path / "garbage.m4a").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "empty.webm").write_bytes(b"")
    (tmp_path / "text.opus").write_text("not audio at all\n" * 100)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage, not audio")
    for name in ["truncated.m4a", "garbage.m4a", "empty.webm", "text.opus"]:
        with pytest.raises(AudioFileError, match=rf"cannot read audio file .*{name}: FFmpeg: Invalid data"):
            load_audio(tmp_path / name)
        with pytest.raises(AudioFileError, match=name):
            list(iter_audio_blocks(tmp_path / name))
    # Neither decoder could read it: both reasons are given.
    with pytest.raises(AudioFileError, match=r"garbage.wav: FFmpeg: .*\(libsndfile: .*Format not recognised"):
        load_audio(tmp_path / "garbage.wav")
    with pytest.raises(AudioFileError, match="missing.m4a: no such file"):
        load_audio(tmp_path / "missing.m4a")

    # A truncated stream decodes what is there, like a truncated wav.
    webm = (compressed / "opus.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(webm[: len(webm) // 2])
    assert 0 < len(load_audio(tmp_path / "cut.webm")) < 3 * 16_000


def test_video_without_audio_is_named(tmp_path):
    if "mpeg4" not in av.codecs_available:
        pytest.skip("no mpeg4 video encoder in this PyAV")
    with av.open(str(tmp_path / "silent_film.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 64, 48
        frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), dtype=np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(AudioFileError, match="silent_film.mp4: it holds no audio stream"):
        load_audio(tmp_path / "silent_film.mp4")


def test_without_pyav_the_error_says_how_to_install_it(compressed):
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["av"] = None  # as if PyAV were not installed
        from hear_abt.audio import AudioFileError, load_audio
        try:
            load_audio({str(compressed / "aac.m4a")!r})
        except AudioFileError as err:
            print(err)
        print(len(load_audio({str(compressed / "original.wav")!r})))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    error, samples = out.stdout.strip().splitlines()
    assert "aac.m4a" in error and ".m4a files are decoded by FFmpeg through PyAV" in error
    assert "pip install av" in error and "hear-abt[train]" in error
    assert int(samples) == 3 * 16_000  # libsndfile's formats need no PyAV


def test_every_file_not_prepared_is_reported(compressed, tmp_path, capsys):
    src = tmp_path / "downloads"
    (src / "nested").mkdir(parents=True)
    (src / ".cache").mkdir()
    for name in ["original.wav", "aac.m4a", "opus.webm", "ogg.opus", "lame.mp3"]:
        (src / "nested" / name).write_bytes((compressed / name).read_bytes())
    whole = (compressed / "aac.m4a").read_bytes()
    (src / "broken.m4a").write_bytes(whole[: len(whole) // 2])
    (src / "clip.m4a.part").write_bytes(whole[:1000])  # an unfinished download
    (src / "clip.wma").write_bytes((compressed / "original.wav").read_bytes())  # audio, unknown extension
    (src / "README").write_text("no extension")
    (src / "clip.info.json").write_text("{}")
    (src / "list.txt").write_text("nested/original.wav\n")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / ".cache" / "blob").write_bytes(b"x")
    if hasattr(os, "mkfifo"):
        os.mkfifo(src / "pipe.wav")

    assert prep.main([str(src), str(src / "prepared"), "--workers", "1", "--no-progress"]) == 0
    manifest = json.loads((src / "prepared" / "manifest.json").read_text())
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    expected = {
        "README": "not an audio file extension (none)",
        "clip.m4a.part": "not an audio file extension (.part)",
        "clip.wma": "not an audio file extension (.wma)",
    }
    if hasattr(os, "mkfifo"):
        expected["pipe.wav"] = "not a regular file (a FIFO: reading it would block)"
    assert {k: v for k, v in reasons.items() if k != "broken.m4a"} == expected
    assert reasons["broken.m4a"].startswith("AudioFileError: cannot read audio file ")
    assert reasons["broken.m4a"].endswith("broken.m4a: FFmpeg: Invalid data found when processing input")
    # Text, metadata and hidden files are counted, not listed; OUT_DIR inside SRC is not looked at.
    assert manifest["ignored"] == {".json": 1, ".txt": 1, "hidden": 2}
    totals = manifest["totals"]
    assert (totals["clips"], totals["skipped"], totals["ignored"]) == (5, len(expected) + 1, 4)
    assert totals["files"] == totals["clips"] + totals["skipped"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(
        f"in 1 shards; skipped {len(expected) + 1} files (see manifest.json); "
        "ignored 4 files that are not audio (.json: 1, .txt: 1, hidden: 2)"
    )

    # A list file names its files explicitly: each is decoded, whatever its extension.
    (src / "list.txt").write_text("clip.wma\nnested/aac.m4a\n")
    summary = prep.prepare(src / "list.txt", tmp_path / "from_list", workers=1, progress=False)
    assert (summary.clips, summary.skipped, summary.ignored) == (2, 0, {})


def test_a_folder_without_audio_says_what_it_holds(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.wma").write_bytes(b"x")
    (tmp_path / "src" / "b.wma").write_bytes(b"x")
    with pytest.raises(
        FileNotFoundError,
        match=r"no audio files .*2 other files \(2 x not an audio file extension \(\.wma\)\)",
    ):
        prep.prepare(tmp_path / "src", tmp_path / "out", progress=False)


def test_ffmpeg_shards_are_rebuilt_when_the_decoder_changes(compressed, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for name in ["original.wav", "aac.m4a"]:
        (src / name).write_bytes((compressed / name).read_bytes())
    first = prep.prepare(src, tmp_path / "out", workers=1, clips_per_shard=1, progress=False)
    assert first.built_shards == [0, 1]
    # A shard built without PyAV (its m4a skipped) or by another FFmpeg is rebuilt; wav shards are not.
    monkeypatch.setattr(prep, "ffmpeg_decoder_id", lambda: None)
    again = prep.prepare(src, tmp_path / "out", workers=1, clips_per_shard=1, progress=False)
    assert (again.built_shards, again.reused_shards) == ([0], [1])


def test_pyav_is_imported_only_when_a_file_needs_it():
    code = "import sys, hear_abt.audio, training.prepare; print('av' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
