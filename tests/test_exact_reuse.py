"""Exact reuse in AudioNTT's faithful timestamp mode equals encoding every window on its own.

The reference is independent of the embedder's code: each 96-frame window of the normalised,
centred log-mel goes through ``encoder.forward`` (with its own zero padding), in float64 where the
comparison must show that the two paths compute the same function (differences ~1e-15), in
float32 through the public API where they differ by float32 rounding only.
"""

import pytest
import torch

import hear_abt
from hear_abt.config import ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import save_pretrained

SR = 16000


def trained_like(encoder_kwargs=None, seed=0):
    """An embedder whose BatchNorms are not the identity (perturbed statistics and affine terms)."""
    torch.manual_seed(seed)
    config = ModelConfig(encoder="audiontt", encoder_kwargs=encoder_kwargs or {}, norm=NormStats(-6.0, 3.5))
    model = ABTEmbedder(config)
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)  # negative scales too: pooling must not commute with BN
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def clips(n, n_samples, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n_samples) / SR
    tones = torch.stack([torch.sin(2 * torch.pi * (180 + 170 * i) * t) for i in range(n)])
    return 0.2 * tones + 0.05 * torch.randn(n, n_samples, generator=g)


def rel(a, b):
    return float((a - b).abs().max() / a.abs().max())


def per_window_reference(model, mel, n_ts):
    """Windows 0..n_ts-1 through ``encoder.forward``, each on its own: (g, n_ts, D), in mel's dtype."""
    x = model.normalize(mel)
    windows = x.unfold(-1, model.window_frames, model.hop_frames)  # (g, n_mels, >= n_ts, 96)
    return torch.stack([model.encoder(windows[:, :, k].unsqueeze(1)) for k in range(n_ts)], 1)


@torch.no_grad()
def test_only_the_first_and_last_output_frames_see_the_window_edges():
    """By experiment: which output frames differ from the clip-level ones, and what each one sees."""
    model = trained_like({"channels": 8, "mlp_dim": 16}).double()
    enc = model.encoder
    assert enc.WINDOW_EDGE_FRAMES == 1
    x = torch.randn(1, 1, 64, 400, dtype=torch.float64)
    for start in (40, 41, 42, 43, 45):  # all 4 grid phases
        window = enc.frame_features(x[..., start : start + 96])[0]  # (24, D)
        phase = start % 4
        clip = enc.frame_features(x[..., phase:])[0]  # clip-level frames on the window's phase
        base = (start - phase) // 4
        same = [rel(window[i], clip[base + i]) < 1e-12 for i in range(24)]
        assert same == [False] + [True] * 22 + [False], same
    # Receptive field: output i changes exactly when an input frame in [4i - 3, 4i + 7) changes.
    w = x[..., :96]
    ref = enc.frame_features(w)[0]
    for t in [*range(12), *range(42, 54), *range(84, 96)]:  # both edges and a stretch inside
        bumped = w.clone()
        bumped[..., t] += 1.0
        changed = {i for i in range(24) if (enc.frame_features(bumped)[0][i] - ref[i]).abs().max() > 0}
        assert changed == {i for i in range(24) if 4 * i - enc.CONTEXT_BEFORE < t < 4 * i + 7}, t


@pytest.mark.parametrize(
    "n_samples",
    [1, 100, 15199, 15200, 15201, 16000, 16001, 800 * 37, 800 * 37 + 1, 3 * SR + 17],
)
@torch.no_grad()
def test_reuse_equals_per_window_in_float64(n_samples):
    model = trained_like({"channels": 8, "mlp_dim": 32}).double()
    audio = clips(3, n_samples)
    mel = model._centred_logmel(audio).double()
    n_ts = model.num_timestamps(n_samples)
    out = torch.empty(3, n_ts, model.timestamp_embedding_size, dtype=torch.float64)
    model._reuse_windows(mel, out)
    ref = per_window_reference(model, mel, n_ts)
    assert ref.shape == out.shape
    assert rel(ref, out) < 1e-12
    for k in (0, n_ts - 1):  # the first and last windows, per clip
        for c in range(3):
            assert rel(ref[c, k], out[c, k]) < 1e-12


@pytest.mark.parametrize("window_batch", [1, 5, 64])
@torch.no_grad()
def test_public_faithful_equals_per_window_in_float32(tmp_path, window_batch):
    """Full-size AudioNTT through load_model; small window_batch values force many runs of windows.

    The float32 per-window path itself is ~6e-7 (of the largest value) from the float64 answer, so
    a 1e-6 bound on the two float32 paths' difference is float rounding, not a different function.
    """
    model = trained_like()
    folder = save_pretrained(tmp_path / "m", model.config, model.encoder.state_dict())
    audio = clips(2, int(1.03 * SR), seed=window_batch)
    fast = hear_abt.load_model(folder, window_batch=window_batch)
    slow = hear_abt.load_model(folder, timestamp_mode="per_window", window_batch=window_batch)
    assert fast._exact_reuse
    e1, t1 = hear_abt.get_timestamp_embeddings(audio, fast)
    e2, t2 = hear_abt.get_timestamp_embeddings(audio, slow)
    assert e1.dtype == torch.float32 and e1.shape == e2.shape and torch.equal(t1, t2)
    assert rel(e2, e1) < 1e-6
    # And each clip alone gives its row of the batch (within the same rounding).
    alone, _ = hear_abt.get_timestamp_embeddings(audio[1:], fast)
    assert rel(e1[1:], alone) < 1e-6


@torch.no_grad()
def test_long_clip_in_runs_equals_reference_float64():
    """A clip spanning many runs of windows (tiny budget), against the independent reference."""
    torch.manual_seed(1)
    config = ModelConfig(encoder="audiontt", encoder_kwargs={"channels": 4, "mlp_dim": 8})
    model = ABTEmbedder(config, window_batch=2).double()
    audio = clips(1, 7 * SR + 333)
    mel = model._centred_logmel(audio).double()
    out = torch.empty(
        1, model.num_timestamps(audio.shape[1]), model.timestamp_embedding_size, dtype=torch.float64
    )
    model._reuse_windows(mel, out)
    assert rel(per_window_reference(model, mel, out.shape[1]), out) < 1e-12


def test_modes():
    ntt = ABTEmbedder(ModelConfig(encoder="audiontt", encoder_kwargs={"channels": 4, "mlp_dim": 8}))
    assert ntt._exact_reuse
    vit = ABTEmbedder(ModelConfig(encoder="vitc_t", encoder_kwargs={"depth": 1}), timestamp_mode="per_window")
    assert not vit._exact_reuse  # ViTs: faithful is the per-window path
    with pytest.raises(ValueError, match="timestamp_mode"):
        ABTEmbedder(ModelConfig(), timestamp_mode="exact")


def test_maxpool_without_autograd_is_bitwise_maxpool2d_and_with_autograd_is_maxpool2d_itself():
    from hear_abt.encoders.audiontt import MaxPool2x2

    pool = MaxPool2x2()
    for shape in [(2, 3, 8, 10), (1, 4, 9, 11), (3, 2, 64, 601)]:
        x = torch.relu(torch.randn(*shape))  # ties at 0, as after the encoder's ReLU
        with torch.no_grad():
            assert torch.equal(pool(x), torch.nn.functional.max_pool2d(x, 2))
    x = torch.relu(torch.randn(2, 3, 8, 10)).requires_grad_()
    pool(x).sum().backward()
    want = x.detach().clone().requires_grad_()
    torch.nn.functional.max_pool2d(want, 2).sum().backward()
    assert torch.equal(x.grad, want.grad)  # one element of a tie gets the gradient, as MaxPool2d gives


@pytest.mark.parametrize("n_samples", [15000, 15360, 16000, 16160, 32123, 80000])
def test_scene_from_the_timestamp_pass_equals_the_scene_pass(n_samples, monkeypatch):
    """scene_and_timestamp_embeddings takes the scene's inner conv frames from the windows' pass.

    Lengths: under one window (96 frames: the scene's own pass), exactly a window, frame counts of
    every residue mod 4 (the right edge's real context differs), a 5-s clip. In float64 the two paths
    agree to ~1e-15; NaN planted in the reused frames must reach the scene, and NaN planted beyond
    them must not (so exactly the frames that see no padding are reused, and the edges are recomputed).
    """
    model = trained_like({"channels": 8, "mlp_dim": 32}).double()
    audio = clips(2, n_samples).double()
    encoder = model.encoder
    real = encoder.pooled_reusing
    seen = []

    def planted(x, conv_frames, offset, where=None):
        seen.append((x.shape[-1], conv_frames.shape[1], offset))
        if where is not None:
            conv_frames = conv_frames.clone()
            conv_frames[:, where] = float("nan")
        return real(x, conv_frames, offset)

    monkeypatch.setattr(encoder, "pooled_reusing", planted)
    with torch.no_grad():
        scene, emb, _ = model.scene_and_timestamp_embeddings(audio)
        want_scene = model.scene_embeddings(audio)
        want_emb, _ = model.timestamp_embeddings(audio)
    assert torch.equal(emb, want_emb)
    assert (scene - want_scene).abs().max() <= 1e-12 * want_scene.abs().max()
    n_frames = model.config.frontend.samples_to_frames(n_samples)
    if n_frames < model.window_frames:
        assert seen == []  # a clip under one window is padded: the scene takes its own pass
        return
    assert len(seen) == 1
    n_in, n_grid, offset = seen[0]
    assert n_in == n_frames and offset == model.window_frames // 2 // 4
    inner = range(offset + 1, offset + (n_frames - 7) // 4 + 1)  # frames m with 1 <= m, 4m + 7 <= T
    outside = [j for j in range(n_grid) if j not in inner]
    for where, poisoned in ((list(inner)[:1], True), (list(inner)[-1:], True), (outside, False)):
        monkeypatch.setattr(encoder, "pooled_reusing", lambda x, f, o, w=where: planted(x, f, o, w))
        with torch.no_grad():
            got = model.scene_and_timestamp_embeddings(audio)[0]
        assert bool(got.isnan().any()) == poisoned, where
        if not poisoned:
            assert (got - want_scene).abs().max() <= 1e-12 * want_scene.abs().max()


@pytest.mark.parametrize("shape", [(3, 4, 64, 591), (5, 2, 12, 3), (2, 3, 9, 7), (2, 3, 10, 17)])
@pytest.mark.parametrize("shift", [0, 1])
def test_pool2x2_equals_max_pool2d_bit_for_bit(shape, shift):
    """Both orders of _pool2x2's passes (wide inputs take the row pairs first) equal MaxPool2d(2) of the
    shifted input, odd sizes floored, NaN propagated, ties and signed values included."""
    from hear_abt.encoders.audiontt import _pool2x2

    g = torch.Generator().manual_seed(sum(shape) + shift)
    t = torch.randn(shape, generator=g).round(decimals=1)  # many ties
    t.view(-1)[::97] = float("nan")
    got = _pool2x2(t, shift)
    want = torch.nn.functional.max_pool2d(t[..., shift:], 2)
    assert got.shape == want.shape
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))


@pytest.mark.parametrize("shape", [(6, 3, 12, 2), (2, 8, 64, 2), (1, 1, 2, 2)])
def test_pool2x2_of_a_contiguous_two_frame_edge_equals_max_pool2d(shape):
    from hear_abt.encoders.audiontt import _pool2x2

    t = torch.randn(shape, generator=torch.Generator().manual_seed(0)).round(decimals=1)
    t.view(-1)[::13] = float("nan")
    got, want = _pool2x2(t), torch.nn.functional.max_pool2d(t, 2)
    assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
