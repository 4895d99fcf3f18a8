"""training.prepare (shards, manifest, stats, resume) and training.data (ShardDataset, CropSampler)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import signals
import soundfile as sf
import soxr
import torch

from hear_abt.audio import load_audio
from hear_abt.config import FrontendConfig
from hear_abt.frontend import LogMelFrontend
from training import prepare as prep
from training.data import CropSampler, ShardDataset

GOOD = [
    "speech/hello.wav",
    "speech/nested/barlow.wav",
    "speech/twins.wav",
    "tone_stereo_44k.wav",
    "blip.flac",
]
BAD = ["corrupt.wav", "empty.wav"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "speech/nested").mkdir(parents=True)
    rng = np.random.default_rng(1)
    # Speech-like pulses through formants at 22.05 kHz (espeak-ng's rate): resampled on the way in.
    for rel, seconds in zip(GOOD[:3], [0.6, 1.4, 0.8]):
        vowel = signals.make_signal("vowel", seconds, rng)
        sf.write(root / rel, soxr.resample(vowel, 16_000, 22_050).astype(np.float32), 22_050)
    t = np.arange(int(44_100 * 2.0)) / 44_100
    left, right = 0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1500 * t)
    sf.write(root / "tone_stereo_44k.wav", np.stack([left, right], 1).astype(np.float32), 44_100)
    sf.write(
        root / "blip.flac", (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32), 16_000
    )
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage, not audio")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    (root / "notes.txt").write_text("not audio, must be ignored")
    return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    # Two spawned workers here; the resume test below decodes inline and must agree bit for bit.
    assert (
        prep.main([str(corpus), str(out), "--workers", "2", "--clips-per-shard", "3", "--no-progress"]) == 0
    )
    return out


def _direct_stats(corpus) -> tuple[float, float]:
    frontend = LogMelFrontend(FrontendConfig())
    with torch.inference_mode():
        values = [
            frontend(torch.from_numpy(load_audio(corpus / rel))[None]).double().flatten() for rel in GOOD
        ]
    allv = torch.cat(values)
    return allv.mean().item(), allv.std(unbiased=False).item()


def test_manifest_counts_stats_and_shards(corpus, prepared, capsys):
    manifest = json.loads((prepared / "manifest.json").read_text())
    totals = manifest["totals"]
    assert (totals["files"], totals["clips"], totals["skipped"], totals["shards"]) == (7, 5, 2, 3)
    assert sorted(s["path"] for s in manifest["skipped"]) == BAD
    assert all("AudioFileError" in s["reason"] and s["path"] in s["reason"] for s in manifest["skipped"])
    assert sorted(src for shard in manifest["shards"] for src in shard["sources"]) == sorted(GOOD)
    assert manifest["frontend"] == FrontendConfig().__dict__

    mean, std = _direct_stats(corpus)
    assert manifest["norm"]["mean"] == pytest.approx(mean, abs=1e-3)
    assert manifest["norm"]["std"] == pytest.approx(std, abs=1e-3)

    for shard in manifest["shards"]:
        data = np.load(prepared / shard["data"], mmap_mode="r")
        assert isinstance(data, np.memmap) and data.dtype == np.float16
        assert data.shape == (shard["frames"], 64)
        index = np.load(prepared / shard["index"])
        assert index.shape == (shard["clips"], 2) and index[:, 1].sum() == shard["frames"]


def test_summary_line(corpus, tmp_path, capsys):
    prep.main([str(corpus), str(tmp_path / "o"), "--workers", "1", "--clips-per-shard", "7", "--no-progress"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("prepared 5 clips (") and line.endswith(
        "in 1 shards; skipped 2 files (see manifest.json); ignored 1 files that are not audio (.txt: 1)"
    )


def test_resume_rebuilds_only_missing_shards(corpus, prepared, tmp_path):
    out = tmp_path / "out"
    first = prep.prepare(corpus, out, workers=1, clips_per_shard=3, progress=False)
    assert first.built_shards == [0, 1, 2] and first.reused_shards == []
    manifest_bytes = (out / "manifest.json").read_bytes()
    # Same result whether decoded by spawned workers or inline.
    assert manifest_bytes == (prepared / "manifest.json").read_bytes()
    shard_files = sorted((out / "shards").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in shard_files}

    again = prep.prepare(corpus, out, workers=1, clips_per_shard=3, progress=False)
    assert again.built_shards == [] and again.reused_shards == [0, 1, 2]
    assert {p: p.stat().st_mtime_ns for p in shard_files} == mtimes

    (out / "shards" / "shard-000001.npy").unlink()
    resumed = prep.prepare(corpus, out, workers=1, clips_per_shard=3, progress=False)
    assert resumed.built_shards == [1]
    changed = {p.name for p in shard_files if p.stat().st_mtime_ns != mtimes[p]}
    assert changed <= {"shard-000001.npy", "shard-000001.index.npy", "shard-000001.json"}
    assert (out / "manifest.json").read_bytes() == manifest_bytes


def test_manifest_file_source(corpus, tmp_path):
    listing = tmp_path / "list.txt"
    lines = ["# comment", f"{corpus / GOOD[0]}", "", "missing.wav"]
    listing.write_text("\n".join(lines) + "\n")
    shutil.copy(corpus / GOOD[3], tmp_path / "local.wav")
    listing.write_text(listing.read_text() + "local.wav\n")
    summary = prep.prepare(listing, tmp_path / "out", workers=1, progress=False)
    manifest = json.loads(summary.manifest_path.read_text())
    assert summary.clips == 2 and summary.skipped == 1
    assert manifest["shards"][0]["sources"] == [str(corpus / GOOD[0]), "local.wav"]
    assert manifest["skipped"][0]["path"] == "missing.wav"


# ------------------------------------------------------------------------------------ sampler


def test_dataset_and_crop_shapes(prepared):
    ds = ShardDataset(prepared)
    assert len(ds) == 5 and ds.norm.std > 0 and ds.frontend == FrontendConfig()
    sampler = CropSampler(ds, batch_size=2, crop_frames=96, seed=1)
    assert len(sampler) == 2
    batches = list(sampler)
    assert len(batches) == 2 and sampler.state_dict()["epoch"] == 1
    for raw in batches:  # stored float16 frames, made model input on the training device
        assert raw.frames.shape == (2, 96, 64) and raw.frames.dtype == torch.float16
        x = raw.to_input(torch.device("cpu"))
        assert x.shape == (2, 1, 64, 96) and x.dtype == torch.float32 and torch.isfinite(x).all()
    wide = CropSampler(ds, batch_size=5, crop_frames=480, seed=1, prefetch=0).batch_at(0, 0)
    assert wide.to_input(torch.device("cpu")).shape == (5, 1, 64, 480)


def test_short_clip_padded_with_silence(prepared):
    ds = ShardDataset(prepared)
    silence = math.log(FrontendConfig().log_offset)
    assert ds.frontend.silence_value == silence
    short = int(np.argmin(ds.clip_length))
    length = int(ds.clip_length[short])
    assert length < 96
    crop = ds.gather_crops(np.array([short]), np.array([-10]), 96)[0]
    np.testing.assert_array_equal(crop[:, 10 : 10 + length], ds[short].astype(np.float32))
    assert (crop[:, :10] == silence).all() and (crop[:, 10 + length :] == silence).all()

    long = int(np.argmax(ds.clip_length))
    crop = ds.gather_crops(np.array([long]), np.array([7]), 96)[0]
    np.testing.assert_array_equal(crop, ds[long][:, 7:103].astype(np.float32))


def test_determinism_and_normalize(prepared):
    ds = ShardDataset(prepared)

    def take(sampler, n):
        out = []
        while len(out) < n:
            out.extend(sampler)
        return out[:n]

    def inputs(batches):
        return [raw.to_input(torch.device("cpu")) for raw in batches]

    a = inputs(take(CropSampler(ds, batch_size=2, seed=3), 6))
    b = inputs(take(CropSampler(ds, batch_size=2, seed=3, prefetch=0), 6))
    c = inputs(take(CropSampler(ds, batch_size=2, seed=4), 6))
    threads = inputs(take(CropSampler(ds, batch_size=2, seed=3, prefetch=3, threads=3), 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a, threads))  # the thread count changes nothing
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    normed = CropSampler(ds, batch_size=2, seed=3).batch_at(0, 0).to_input(torch.device("cpu"), ds.norm)
    torch.testing.assert_close(normed, (a[0] - ds.norm.mean) / ds.norm.std)


def test_state_dict_round_trip(prepared):
    ds = ShardDataset(prepared)
    sampler = CropSampler(ds, batch_size=2, seed=5, prefetch=2)
    seen = []
    for x in sampler:  # stop mid-epoch: the prefetched-but-unconsumed batch must not count
        seen.append(x)
        break
    state = sampler.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 1)
    expected = list(sampler) + list(sampler)  # rest of epoch 0, then epoch 1

    restored = CropSampler(ds, batch_size=2, seed=5, prefetch=0)
    restored.load_state_dict(json.loads(json.dumps(state)))
    got = list(restored) + list(restored)
    assert len(got) == len(expected) == 3
    assert all(
        torch.equal(x.frames, y.frames) and torch.equal(x.inside, y.inside) for x, y in zip(got, expected)
    )
    assert [(x.epoch, x.batch) for x in got] == [(0, 1), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="seed"):
        CropSampler(ds, batch_size=2, seed=6).load_state_dict(state)


def test_rank_split_is_disjoint(prepared):
    ds = ShardDataset(prepared)
    ranks = [CropSampler(ds, batch_size=1, seed=0, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        ids = [set(s.epoch_indices(epoch).tolist()) for s in ranks]
        assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]
    assert len(ranks[0]) == len(ranks[1]) == 2


def test_max_seconds_per_clip_truncates(corpus, tmp_path):
    (tmp_path / "src").mkdir()
    shutil.copy(corpus / GOOD[3], tmp_path / "src" / "tone.wav")
    prep.main(
        [str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "1", "--max-seconds-per-clip", "0.5"]
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["seconds"] == 0.5
    assert manifest["totals"]["frames"] == FrontendConfig().samples_to_frames(8000)


# --- waveform shards (--store waveform) ------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_wave(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared_wave")
    argv = [str(corpus), str(out), "--workers", "1", "--clips-per-shard", "3", "--no-progress"]
    assert prep.main([*argv, "--store", "waveform"]) == 0
    return out


def test_waveform_shards_hold_the_samples_and_the_log_mel_statistics(corpus, prepared, prepared_wave):
    manifest = json.loads((prepared_wave / "manifest.json").read_text())
    logmel_manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["store"] == "waveform" and manifest["format_version"] == prep.SHARD_FORMAT_VERSION
    assert logmel_manifest["store"] == "logmel" and logmel_manifest["format_version"] == 1
    assert manifest["norm"] == pytest.approx(logmel_manifest["norm"])  # statistics of the log-mel
    ds = ShardDataset(prepared_wave)
    assert ds.store == "waveform" and ds.row_width == 160 and ds.silence == 0.0
    i = ds.sources.index("blip.flac")
    wav = load_audio(corpus / "blip.flac", 16_000)
    stored = ds[i].T.reshape(-1).astype(np.float32)
    assert len(stored) == math.ceil(len(wav) / 160) * 160 and not stored[len(wav) :].any()
    np.testing.assert_allclose(stored[: len(wav)], wav, rtol=1e-3, atol=1e-4)  # float16 samples
    with pytest.raises(ValueError, match="gather_crops reads log-mel folders"):
        ds.gather_crops(np.array([i]), np.array([0]), 96)


def test_waveform_crop_log_mel_matches_the_log_mel_shards(prepared, prepared_wave):
    from training.augment_wave import WaveAugmenter, WaveAugmentSettings

    logmel_ds, wave_ds = ShardDataset(prepared), ShardDataset(prepared_wave)
    i = logmel_ds.sources.index("speech/nested/barlow.wav")
    assert wave_ds.sources[i] == "speech/nested/barlow.wav"
    frames, context = 96, 4
    sampler = CropSampler(wave_ds, 1, frames + 2 * context, prefetch=0)
    rows, inside = wave_ds.gather_rows(np.array([i]), np.array([-10 - context]), sampler.crop_frames)
    from training.data import RawCrops

    wav = RawCrops(torch.from_numpy(rows), torch.from_numpy(inside), 0.0).to_wave(torch.device("cpu"))
    aug = WaveAugmenter(WaveAugmentSettings(), LogMelFrontend(FrontendConfig()), frames, context)
    expected = logmel_ds.gather_crops(np.array([i]), np.array([-10]), frames)  # the clip starts inside
    got = aug.clean(wav).numpy()
    # Within 40 dB of the peak they agree to float16 rounding; float16 samples add a quantisation
    # floor ~66 dB below the signal, which only lifts bins that hold (nearly) nothing.
    loud = expected > expected.max() - math.log(1e4)
    assert loud.sum() > 300
    np.testing.assert_allclose(got[loud], expected[loud], atol=0.05)
    assert (got[~loud] > expected[~loud] - 0.1).all()
    off_by_one = logmel_ds.gather_crops(np.array([i]), np.array([-9]), frames)
    assert np.abs(got - off_by_one)[loud].max() > 0.5  # the frames line up, not just the spectrum


def test_waveform_and_log_mel_shards_are_different_builds(corpus, prepared_wave, tmp_path):
    # Same folder, other store: every shard is rebuilt (the fingerprint includes the store).
    shutil.copytree(prepared_wave, tmp_path / "data")
    summary = prep.prepare(corpus, tmp_path / "data", clips_per_shard=3, progress=False)
    assert summary.reused_shards == [] and ShardDataset(tmp_path / "data").store == "logmel"
    with pytest.raises(ValueError, match="store must be one of"):
        prep.prepare(corpus, tmp_path / "other", store="mp3", progress=False)


def test_waveform_store_skips_audio_that_overflows_float16(tmp_path):
    sf.write(tmp_path / "loud.wav", np.full(4000, 1e5, dtype=np.float32), 16_000, subtype="FLOAT")
    with prep._single_thread():  # the worker's set-up, undone after
        result = prep._process_file((str(tmp_path), "loud.wav", None, "waveform"))
        assert result.data is None and "overflows float16" in result.error
        assert prep._process_file((str(tmp_path), "loud.wav", None, "logmel")).data is not None
