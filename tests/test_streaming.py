"""Files of any length from disk: block reading, chunked embedding equal to one-shot, .npy streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_abt
from hear_abt.audio import AudioFileError, iter_audio_blocks, load_audio
from hear_abt.cli import main
from hear_abt.config import ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.streaming import NpyWriter, embed_file, open_embeddings, timestamp_margin
from hear_abt.weights import save_pretrained

SR = 16000
NORM = NormStats(-5.0, 4.0)


def _model(encoder="audiontt", mode="faithful", **kwargs):
    torch.manual_seed(0)
    kwargs = kwargs or ({"channels": 8, "mlp_dim": 32} if encoder == "audiontt" else {"depth": 1})
    return ABTEmbedder(ModelConfig(encoder=encoder, encoder_kwargs=kwargs, norm=NORM), timestamp_mode=mode)


def _audio(n, seed=0):
    """Noise with a slow envelope and a few silent stretches (windows that see silence and sound)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float32)
    x = 0.2 * rng.standard_normal(n).astype(np.float32) * np.abs(np.sin(t / 7000.0)).astype(np.float32)
    x += 0.1 * np.sin(2 * np.pi * 440 * t / SR).astype(np.float32)
    x[n // 3 : n // 3 + 4000] = 0.0
    return x


def _streamed(model, x, chunk_seconds, block=7777):
    embs, tss = [], []
    blocks = (x[i : i + block] for i in range(0, len(x), block))
    result = embed_file(
        None,
        model,
        blocks=blocks,
        chunk_seconds=chunk_seconds,
        on_timestamps=lambda e, t: (embs.append(e), tss.append(t)),
    )
    return result, np.concatenate(embs), np.concatenate(tss)


def _one_shot(model, x):
    audio = torch.from_numpy(x)[None]
    emb, ts = hear_abt.get_timestamp_embeddings(audio, model)
    return emb[0].numpy(), ts[0].numpy(), hear_abt.get_scene_embeddings(audio, model)[0].numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ---- reading in blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rate,channels,fmt", [(16000, 1, "wav"), (44100, 2, "flac"), (22050, 1, "ogg"), (48001, 2, "wav")]
)
def test_blocks_equal_load_audio_bitwise(tmp_path, rate, channels, fmt):
    n = int(rate * 2.3) + 7
    rng = np.random.default_rng(1)
    data = (0.2 * rng.standard_normal((n, channels))).astype(np.float32)
    path = tmp_path / f"a.{fmt}"
    sf.write(path, data, rate)
    blocks = list(iter_audio_blocks(path, block_seconds=0.37))
    assert len(blocks) > 3
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))


@pytest.mark.parametrize("rate,channels", [(44100, 1), (48001, 2), (16000, 1)])
def test_a_file_of_one_block_is_one_block_equal_to_the_stream(tmp_path, rate, channels):
    """A clip shorter than a block is resampled in one call; its samples are the stream's bit for bit."""
    data = (0.2 * np.random.default_rng(2).standard_normal((int(rate * 1.7) + 3, channels))).astype(
        np.float32
    )
    path = tmp_path / "a.wav"
    sf.write(path, data, rate, subtype="FLOAT")
    whole = list(iter_audio_blocks(path, block_seconds=10.0))
    streamed = list(iter_audio_blocks(path, block_seconds=0.37))
    assert len(whole) == 1 and len(streamed) > 3
    assert whole[0].dtype == np.float32 and whole[0].flags.c_contiguous
    np.testing.assert_array_equal(whole[0], np.concatenate(streamed))
    np.testing.assert_array_equal(whole[0], load_audio(path))


def test_block_reader_errors_name_the_file(tmp_path):
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
    bad = np.zeros(8000, np.float32)
    bad[5000] = np.nan
    sf.write(tmp_path / "nan.wav", bad, SR, subtype="FLOAT")
    for name, why in [("broken.wav", "cannot read"), ("empty.wav", "no samples"), ("nan.wav", "NaN")]:
        with pytest.raises(AudioFileError, match=why) as err:
            list(iter_audio_blocks(tmp_path / name))
        assert name in str(err.value)
    with pytest.raises(AudioFileError, match="folder"):
        list(iter_audio_blocks(tmp_path))


# ---- chunked embedding equals the one-shot answer ------------------------------------------------


@pytest.mark.parametrize("mode", ["faithful", "fast"])
def test_chunked_audiontt_equals_one_shot_on_minutes_of_audio(mode):
    model = _model(mode=mode)
    x = _audio(SR * 100 + 123)  # 100 s, an odd length: the last timestamp sees the clip's end
    result, emb, ts = _streamed(model, x, chunk_seconds=20.0)
    want_emb, want_ts, want_scene = _one_shot(model, x)
    assert result.streamed and result.n_timestamps == len(want_ts) == len(emb)
    np.testing.assert_array_equal(ts, want_ts)
    assert _rel(emb, want_emb) <= 1e-6, _rel(emb, want_emb)
    for k in (0, 1, len(ts) - 2, len(ts) - 1):  # the clip's first and last timestamps
        assert _rel(emb[k], want_emb[k]) <= 1e-6
    assert _rel(result.scene, want_scene) <= 1e-6


def test_chunked_vit_equals_one_shot():
    model = _model("vitc_t")
    x = _audio(SR * 8 + 801)
    result, emb, ts = _streamed(model, x, chunk_seconds=2.0)
    want_emb, want_ts, want_scene = _one_shot(model, x)
    assert result.streamed
    np.testing.assert_array_equal(ts, want_ts)
    assert _rel(emb, want_emb) <= 1e-6
    assert _rel(result.scene, want_scene) <= 1e-6


def test_chunk_edges_and_odd_lengths():
    """Lengths around the switch to streaming and around chunk boundaries, tiny last chunks."""
    model = _model(mode="fast", channels=4, mlp_dim=16)
    hop, margin = model.hop_samples, timestamp_margin(model)
    chunk = 20  # 1 s
    limit = hop * (chunk + margin)  # from this many samples on, a file is streamed
    for n in (
        limit - 1,
        limit,
        limit + 1,
        hop * 3 * chunk,
        hop * 3 * chunk + 1,
        hop * 5 * chunk - 1,
        16000 * 7 + 3,
    ):
        x = _audio(n, seed=n)
        result, emb, ts = _streamed(model, x, chunk_seconds=1.0, block=3001)
        want_emb, want_ts, want_scene = _one_shot(model, x)
        assert result.streamed == (n >= limit)
        np.testing.assert_array_equal(ts, want_ts)
        assert _rel(emb, want_emb) <= 1e-6, n
        assert _rel(result.scene, want_scene) <= 1e-6, n


def test_short_file_is_the_one_shot_answer_bitwise():
    model = _model()
    for n in (1, 500, 16000):
        x = _audio(n)
        result, emb, ts = _streamed(model, x, chunk_seconds=60.0)
        want_emb, want_ts, want_scene = _one_shot(model, x)
        assert not result.streamed
        np.testing.assert_array_equal(emb, want_emb)
        np.testing.assert_array_equal(result.scene, want_scene)


def test_streaming_reads_lazily():
    """The first chunk is embedded after a bounded number of blocks, long before the file ends."""
    model = _model(mode="fast")
    x = _audio(SR * 60)
    read = []

    def blocks():
        for i in range(0, len(x), SR):
            read.append(i)
            yield x[i : i + SR]

    reads_at_first_chunk = []
    embed_file(
        None,
        model,
        blocks=blocks(),
        scene=False,
        chunk_seconds=5.0,
        on_timestamps=lambda e, t: reads_at_first_chunk.append(len(read)),
    )
    assert len(reads_at_first_chunk) == 12  # 60 s in 5 s chunks
    assert reads_at_first_chunk[0] <= 8  # 5 s + 1.4 s of margin, in 1 s blocks


def test_loud_or_nan_audio_is_refused_while_streaming():
    model = _model(mode="fast")
    x = _audio(SR * 10)
    x[SR * 8] = 1e12
    with pytest.raises(hear_abt.AudioInputError, match="beyond"):
        _streamed(model, x, chunk_seconds=1.0)


# ---- .npy written row by row ---------------------------------------------------------------------


def test_npy_writer_roundtrip_and_abort(tmp_path):
    rows = np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32)
    with NpyWriter(tmp_path / "a.npy", (7,)) as w:
        for i in range(0, 10, 3):
            w.append(rows[i : i + 3])
        assert not (tmp_path / "a.npy").exists()  # only renamed into place when complete
    loaded = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert isinstance(loaded, np.memmap) and loaded.shape == (10, 7)
    np.testing.assert_array_equal(loaded, rows)
    with NpyWriter(tmp_path / "empty.npy", ()) as w:
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0,)
    with pytest.raises(RuntimeError):
        with NpyWriter(tmp_path / "b.npy", (7,)) as w:
            w.append(rows)
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "empty.npy"]  # no temporary left


# ---- the command line's folder layout ------------------------------------------------------------


def test_out_dir_layout_equals_npz_and_the_api(tmp_path, capsys):
    torch.manual_seed(0)
    config = ModelConfig(encoder_kwargs={"channels": 8, "mlp_dim": 32}, norm=NORM)
    weights = save_pretrained(tmp_path / "w", config, ABTEmbedder(config).encoder.state_dict())
    long_x = _audio(SR * 40 + 321)
    sf.write(tmp_path / "long.wav", long_x, SR, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", _audio(12345, seed=3), SR, subtype="FLOAT")
    (tmp_path / "broken.wav").write_bytes(b"RIFF nope")
    files = [str(tmp_path / n) for n in ("long.wav", "broken.wav", "short.wav")]
    common = ["--weights", str(weights), "--quiet", "--chunk-seconds", "6"]
    assert main(["embed", *files, "--out-dir", str(tmp_path / "emb"), *common]) == 1
    assert main(["embed", *files, "--out", str(tmp_path / "emb.npz"), *common]) == 1

    index = open_embeddings(tmp_path / "emb")
    npz = np.load(tmp_path / "emb.npz")
    assert [e["audio"] for e in index["files"]] == list(npz["files"])
    assert [f["audio"] for f in index["failed"]] == list(npz["failed"]) and "broken" in index["failed"][0][
        "audio"
    ]
    assert index["files"][0]["streamed"] and not index["files"][1]["streamed"]
    np.testing.assert_array_equal(index["scene_embeddings"], npz["scene_embeddings"])
    offsets = npz["timestamp_offsets"]
    for i, entry in enumerate(index["files"]):
        assert isinstance(entry["timestamp_embeddings"], np.memmap)
        np.testing.assert_array_equal(
            entry["timestamp_embeddings"], npz["timestamp_embeddings"][offsets[i] : offsets[i + 1]]
        )
        np.testing.assert_array_equal(
            entry["timestamps_ms"], npz["timestamps_ms"][offsets[i] : offsets[i + 1]]
        )
        assert entry["n_timestamps"] == offsets[i + 1] - offsets[i]

    model = hear_abt.load_model(weights)
    want_emb, want_ts, want_scene = _one_shot(model, long_x)
    assert _rel(np.asarray(index["files"][0]["timestamp_embeddings"]), want_emb) <= 1e-6
    assert _rel(np.asarray(index["scene_embeddings"][0]), want_scene) <= 1e-6

    # A second run into the same folder replaces it: stale per-file arrays are removed.
    assert main(["embed", files[2], "--out-dir", str(tmp_path / "emb"), *common]) == 0
    again = json.loads((tmp_path / "emb" / "index.json").read_text())
    assert len(again["files"]) == 1 and again["files"][0]["audio"].endswith("short.wav")
    assert sorted(p.name for p in (tmp_path / "emb" / "timestamps").iterdir()) == [
        "000000.emb.npy",
        "000000.ms.npy",
    ]


def test_out_dir_refuses_a_foreign_folder_or_a_file(tmp_path):
    sf.write(tmp_path / "a.wav", _audio(4000), SR)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(SystemExit, match="non-empty folder"):
        main(["embed", str(tmp_path / "a.wav"), "--out-dir", str(foreign), "--weights", "x/y"])
    with pytest.raises(SystemExit, match="not a folder"):
        main(["embed", str(tmp_path / "a.wav"), "--out-dir", str(tmp_path / "a.wav"), "--weights", "x/y"])
    with pytest.raises(SystemExit, match="exactly one"):
        main(["embed", str(tmp_path / "a.wav"), "--weights", "x/y"])
    assert (foreign / "thesis.tex").read_text() == "precious"
