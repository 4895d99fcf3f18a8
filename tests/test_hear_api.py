"""HEAR API contracts: shapes, dtypes, timestamps, batch independence, numerics against a hand-built
pipeline, and clear errors on bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoints import make_checkpoint

import hear_abt
import hear_abt.audiontt
import hear_abt.vitc_b
from hear_abt import AudioInputError
from hear_abt.embedder import ABTEmbedder

SR = 16000


@pytest.fixture(scope="module")
def ntt_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ntt"))


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("vit"), encoder="vitc_t", depth=2)


@pytest.fixture(scope="module")
def ntt(ntt_dir):
    return hear_abt.load_model(ntt_dir)


@pytest.fixture(scope="module")
def vit(vit_dir):
    return hear_abt.load_model(vit_dir)


def audio_batch(n=3, seconds=1.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tones = torch.stack([torch.sin(2 * torch.pi * (200 + 150 * i) * t) for i in range(n)])
    return 0.3 * tones + 0.02 * torch.randn(n, t.numel(), generator=g)


def test_model_attributes_are_ints(ntt, vit):
    for model, dim in [(ntt, 3072), (vit, 192)]:
        assert model.sample_rate == 16000 and isinstance(model.sample_rate, int)
        assert model.scene_embedding_size == model.timestamp_embedding_size == dim
        assert isinstance(model.scene_embedding_size, int) and isinstance(model.timestamp_embedding_size, int)
        assert not model.training


@pytest.mark.parametrize(
    "n_samples,expected", [(1, 1), (800, 1), (801, 2), (16000, 20), (16001, 21), (17123, 22)]
)
def test_timestamps_every_50ms_from_zero_never_past_end(ntt, n_samples, expected):
    emb, ts = hear_abt.get_timestamp_embeddings(torch.zeros(2, n_samples), ntt)
    assert emb.shape == (2, expected, 3072) and emb.dtype == torch.float32
    assert ts.shape == (2, expected) and ts.dtype == torch.float32
    assert torch.equal(ts[0], torch.arange(expected, dtype=torch.float32) * 50.0)
    assert ts[0, -1] * SR / 1000 < n_samples  # in ms, and before the last sample


def test_timestamps_do_not_drift_on_long_audio(ntt):
    model = ABTEmbedder(ntt.config)
    ts = model.timestamps_ms(SR * 3600, torch.device("cpu"))
    assert ts[-1] == 3600 * 1000 - 50 and torch.all(ts.diff() == 50.0)


def test_scene_embeddings_shape_dtype(ntt, vit):
    audio = audio_batch()
    for model in (ntt, vit):
        emb = hear_abt.get_scene_embeddings(audio, model)
        assert emb.shape == (3, model.scene_embedding_size) and emb.dtype == torch.float32
        assert torch.isfinite(emb).all()


@pytest.mark.parametrize("which", ["ntt", "vit"])
def test_batch_of_one_equals_batch_of_many_and_is_deterministic(which, request):
    model = request.getfixturevalue(which)
    audio = audio_batch(n=4)
    scene = hear_abt.get_scene_embeddings(audio, model)
    emb, _ = hear_abt.get_timestamp_embeddings(audio, model)
    for i in range(4):
        torch.testing.assert_close(
            hear_abt.get_scene_embeddings(audio[i : i + 1], model)[0], scene[i], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            hear_abt.get_timestamp_embeddings(audio[i : i + 1], model)[0][0], emb[i], atol=1e-5, rtol=1e-5
        )
    assert torch.equal(hear_abt.get_scene_embeddings(audio, model), scene)


def test_float64_and_numpy_input_equal_float32(ntt):
    audio = audio_batch(n=2)
    ref = hear_abt.get_scene_embeddings(audio, ntt)
    assert torch.equal(hear_abt.get_scene_embeddings(audio.double(), ntt), ref)
    assert torch.equal(hear_abt.get_scene_embeddings(audio.numpy(), ntt), ref)


def hand_window(model, clip, k):
    """Window k built by hand: 48 frames of silence-padded audio before the timestamp, 47 after."""
    hop = 160
    padded = F.pad(clip, (48 * hop, 48 * hop))
    mel = model.frontend(padded[None])[0]
    return mel[:, 5 * k : 5 * k + 96]


def test_faithful_timestamp_embedding_equals_encoder_on_the_window(ntt):
    clip = audio_batch(n=1, seconds=2.0)[0]
    emb, ts = hear_abt.get_timestamp_embeddings(clip[None], ntt)
    for k in (0, 7, emb.shape[1] - 1):
        window = hand_window(ntt, clip, k)
        x = ((window - (-6.0)) / 3.5)[None, None]
        with torch.no_grad():
            expected = ntt.encoder(x)[0]
        torch.testing.assert_close(emb[0, k], expected, atol=1e-4, rtol=1e-4)
        # The timestamp sits at the centre of its window (frame 48 of 96).
        assert ts[0, k] == k * 50.0


def test_audiontt_scene_is_whole_clip_mean_plus_max(ntt_dir):
    model = hear_abt.load_model(ntt_dir, window_batch=2)  # tiny budget: forces chunked passes
    clip = audio_batch(n=1, seconds=6.0)[0]
    emb = hear_abt.get_scene_embeddings(clip[None], model)[0]
    x = ((model.frontend(clip[None]) + 6.0) / 3.5)[:, None]
    with torch.no_grad():
        frames = model.encoder.frame_features(x)
    torch.testing.assert_close(emb, frames.mean(1)[0] + frames.amax(1)[0], atol=1e-4, rtol=1e-4)


def test_vit_scene_averages_cls_over_chunks_without_phantom_chunk(vit):
    n = 191 * 160  # exactly 192 frames: two chunks, not three
    clip = audio_batch(n=1, seconds=n / SR)[0][:n]
    emb = hear_abt.get_scene_embeddings(clip[None], vit)[0]
    x = ((vit.frontend(clip[None]) + 6.0) / 3.5)[0]
    assert x.shape[-1] == 192
    with torch.no_grad():
        cls = vit.encoder(torch.stack([x[:, :96], x[:, 96:]])[:, None])
    torch.testing.assert_close(emb, cls.mean(0), atol=1e-4, rtol=1e-4)


def test_short_clip_is_padded_to_one_window(ntt, vit):
    for model in (ntt, vit):
        emb = hear_abt.get_scene_embeddings(torch.full((1, 100), 0.1), model)
        assert emb.shape == (1, model.scene_embedding_size) and torch.isfinite(emb).all()


def test_fast_mode_close_to_faithful_and_vit_has_no_fast_mode(ntt_dir, vit_dir):
    fast = hear_abt.load_model(ntt_dir, timestamp_mode="fast")
    faithful = hear_abt.load_model(ntt_dir)
    audio = audio_batch(n=2, seconds=3.0)
    e_fast, ts_fast = hear_abt.get_timestamp_embeddings(audio, fast)
    e_slow, ts_slow = hear_abt.get_timestamp_embeddings(audio, faithful)
    assert e_fast.shape == e_slow.shape and torch.equal(ts_fast, ts_slow)
    cos = F.cosine_similarity(e_fast, e_slow, dim=-1)
    assert cos.mean() > 0.9, cos.mean()
    with pytest.raises(ValueError, match="fast"):
        hear_abt.load_model(vit_dir, timestamp_mode="fast")


def test_output_is_float32_under_autocast(ntt):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb, _ = hear_abt.get_timestamp_embeddings(audio_batch(n=1), ntt)
        scene = hear_abt.get_scene_embeddings(audio_batch(n=1), ntt)
    assert emb.dtype == scene.dtype == torch.float32


def test_no_autograd_graph(ntt):
    audio = audio_batch(n=1).requires_grad_(True)
    assert not hear_abt.get_scene_embeddings(audio, ntt).requires_grad


@pytest.mark.parametrize(
    "audio,match",
    [
        (torch.zeros(16000), "2-D"),
        (torch.zeros(1, 1, 16000), "2-D"),
        (torch.zeros(1, 16000, dtype=torch.int16), "int16"),
        (np.zeros((1, 16000), dtype=np.int16), "int16"),
        (torch.zeros(1, 16000, dtype=torch.complex64), "real"),
        (torch.zeros(0, 16000), "empty batch"),
        (torch.zeros(2, 0), "zero length"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), "NaN"),
        (torch.tensor([[0.0, 0.0], [0.0, float("inf")]]), r"NaN or Inf samples in sound\(s\) \[1\]"),
        ([[0.0, 0.1]], "torch.Tensor or numpy"),
    ],
)
def test_bad_audio_gives_clear_errors(ntt, audio, match):
    for fn in (hear_abt.get_scene_embeddings, hear_abt.get_timestamp_embeddings):
        with pytest.raises(AudioInputError, match=match):
            fn(audio, ntt)


def test_bad_options_are_rejected(ntt_dir):
    with pytest.raises(ValueError, match="timestamp_mode"):
        hear_abt.load_model(ntt_dir, timestamp_mode="quick")
    with pytest.raises(TypeError, match="unexpected options"):
        hear_abt.load_model(ntt_dir, batch=3)


def test_family_modules_check_the_encoder(ntt_dir, vit_dir, tmp_path):
    assert hear_abt.audiontt.load_model(ntt_dir).config.encoder == "audiontt"
    with pytest.raises(hear_abt.WeightsError, match="hear_abt.audiontt"):
        hear_abt.vitc_b.load_model(ntt_dir)
    vitc_b_dir = make_checkpoint(tmp_path / "b", encoder="vitc_b", depth=1)
    model = hear_abt.vitc_b.load_model(vitc_b_dir)
    assert model.scene_embedding_size == 768


def test_fast_mode_streaming_equals_pooling_whole_clip_frame_features(ntt_dir):
    model = hear_abt.load_model(ntt_dir, timestamp_mode="fast", window_batch=2)  # many small chunks
    clip = audio_batch(n=1, seconds=4.0)[0]
    emb, _ = hear_abt.get_timestamp_embeddings(clip[None], model)
    mel = F.pad(
        model.frontend(F.pad(clip, (48 * 160, 48 * 160))[None]),
        (0, 4),
        value=model.config.frontend.silence_value,
    )
    with torch.no_grad():
        frames = model.encoder.frame_features(((mel + 6.0) / 3.5)[:, None])[0]
    for k in (0, 13, emb.shape[1] - 1):
        start = (5 * k + 2) // 4  # feature frame nearest to the window's first mel frame
        span = frames[start : start + 24]
        torch.testing.assert_close(emb[0, k], span.mean(0) + span.amax(0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "bad",
    [
        np.array([[0.0, np.nan, 0.0] * 400], dtype=np.float32),
        np.array([[0.0, 1e12, 0.0] * 400], dtype=np.float32),
        np.zeros((1, 1200), dtype=np.int16),
    ],
)
def test_one_audio_check_for_the_api_the_logmel_reference_and_streaming(ntt, bad):
    """hear_abt's API, abt_eval.logmel and streaming (block by block) all raise check_audio's message;
    streaming's names no sound (it is one file, which the command line names)."""
    from abt_eval import logmel
    from hear_abt.hear_api import check_audio
    from hear_abt.streaming import embed_file

    def message(call):
        with pytest.raises(AudioInputError) as err:
            call()
        return str(err.value)

    want = message(lambda: check_audio(bad))
    assert message(lambda: hear_abt.get_scene_embeddings(bad, ntt)) == want
    assert message(lambda: hear_abt.get_timestamp_embeddings(bad, ntt)) == want
    assert message(lambda: logmel.get_scene_embeddings(bad, logmel.load_model())) == want
    streamed = message(lambda: embed_file(None, ntt, blocks=[bad[0, :600], bad[0, 600:]]))
    assert streamed == message(lambda: check_audio(bad, per_sound=False))
    assert streamed == want.replace(" in sound(s) [0]", "")


def test_encode_windows_is_the_encoder_on_each_window_in_batches_of_window_batch(ntt_dir):
    small = hear_abt.load_model(ntt_dir, window_batch=3)
    big = hear_abt.load_model(ntt_dir)
    assert small.budget_frames == 3 * small.window_frames and big.budget_frames == 64 * big.window_frames
    windows = (
        small.logmel(audio_batch(n=1, seconds=8.0)).unfold(-1, 96, 96)[0].permute(1, 0, 2)
    )  # (k, 64, 96)
    assert len(windows) > 3
    with torch.no_grad():
        batched, whole = small.encode_windows(windows), big.encode_windows(windows)
        alone = torch.cat([big.encoder(((w + 6.0) / 3.5)[None, None]) for w in windows])
    assert (
        batched.shape == (len(windows), 3072) and batched.dtype == torch.float32 and batched.is_contiguous()
    )
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("which,mode", [("ntt", "faithful"), ("ntt", "fast"), ("vit", "faithful")])
@pytest.mark.parametrize("n_samples", [3, 7000, 16000, 80123])
def test_scene_and_timestamps_from_one_logmel_equal_the_two_calls(ntt_dir, vit_dir, which, mode, n_samples):
    """ABTEmbedder.scene_and_timestamp_embeddings (hear-abt embed's path when both are wanted) takes the
    scene's frames from the timestamp grid's log-mel: timestamps bitwise, scenes to float rounding."""
    model = hear_abt.load_model(ntt_dir if which == "ntt" else vit_dir, timestamp_mode=mode)
    audio = torch.randn(2, n_samples, generator=torch.Generator().manual_seed(n_samples)) * 0.1
    with torch.no_grad():
        scene, emb, ts = model.scene_and_timestamp_embeddings(audio)
    want_emb, want_ts = hear_abt.get_timestamp_embeddings(audio, model)
    assert torch.equal(emb, want_emb) and torch.equal(ts, want_ts)
    want_scene = hear_abt.get_scene_embeddings(audio, model)
    assert ((scene - want_scene).abs().max() / want_scene.abs().max()).item() <= 1e-6
