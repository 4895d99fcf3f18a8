import math

import pytest
import torch

from training.augment import (
    AugmentConfig,
    GaussianNoise,
    MixupBank,
    PrePostNorm,
    RandomLinearFader,
    RandomResizeCrop,
    ViewAugmenter,
    mask_ratio_at,
    random_keep_indices,
)

B, F_, T_ = 4, 16, 24


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int = 0, b: int = B) -> torch.Tensor:
    return torch.randn(b, 1, F_, T_, generator=_gen(1000 + seed))


@pytest.mark.parametrize("make", [MixupBank, RandomResizeCrop, RandomLinearFader, GaussianNoise, PrePostNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_keep_shape_and_dtype(make, dtype):
    block = make()
    x = _batch().to(dtype)
    for _ in range(2):  # second call exercises a filled mixup bank
        y = block(x, _gen())
        assert y.shape == x.shape and y.dtype == dtype
        assert torch.isfinite(y).all()


# --- mixup ---------------------------------------------------------------------------------------


def test_mixup_empty_bank_passes_through():
    x = _batch()
    assert torch.equal(MixupBank()(x, _gen()), x)


def test_mixup_zero_ratio_is_identity():
    bank = MixupBank(ratio=0.0, size=8)
    bank.push(_batch(1))
    x = _batch(2)
    torch.testing.assert_close(bank(x, _gen()), x, rtol=0, atol=1e-6)


def test_mixup_bounds_with_known_partner():
    ratio = 0.4
    bank = MixupBank(ratio=ratio, size=8)
    partner = _batch(1, b=1)  # the only bank entry: every sample mixes with it
    bank.push(partner)
    x = _batch(2)
    y = bank.mix(x, _gen())
    assert not torch.allclose(y, x)
    tol = 1e-5
    assert (y >= math.log(1 - ratio) + x - tol).all()
    assert (y >= torch.minimum(x, partner) - tol).all()  # a convex mix of powers
    assert (y <= torch.maximum(x, partner) + tol).all()


def test_mixup_bank_is_fifo_and_bounded():
    bank = MixupBank(size=3)
    samples = _batch(3, b=5)
    bank.push(samples[:2])
    bank.push(samples[2:4])
    assert len(bank) == 3
    stored = bank.state_dict()["bank"]
    assert sorted(stored[:, 0, 0, 0].tolist()) == sorted(samples[1:4, 0, 0, 0].tolist())
    bank.push(samples)  # larger than the bank: keeps the last 3
    assert sorted(bank.state_dict()["bank"][:, 0, 0, 0].tolist()) == sorted(samples[2:, 0, 0, 0].tolist())
    with pytest.raises(ValueError):
        bank.push(torch.zeros(1, 1, F_, T_ + 1))


def test_mixup_state_round_trip_reproduces_draws():
    bank = MixupBank(size=6)
    gen = _gen(5)
    for i in range(3):
        bank(_batch(i), gen)
    state, gen_state = bank.state_dict(), gen.get_state()
    restored = MixupBank(size=6)
    restored.load_state_dict(state)
    gen2 = torch.Generator()
    gen2.set_state(gen_state)
    for i in range(3, 5):
        torch.testing.assert_close(bank(_batch(i), gen), restored(_batch(i), gen2), rtol=0, atol=0)
    with pytest.raises(ValueError):
        MixupBank(size=7).load_state_dict(state)


# --- random resize crop --------------------------------------------------------------------------


def test_rrc_unit_scales_are_identity():
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 1.0), freq_scale=(1.0, 1.0), time_scale=(1.0, 1.0))
    x = _batch()
    torch.testing.assert_close(rrc(x, _gen()), x, rtol=0, atol=1e-5)


def test_rrc_time_crop_geometry():
    # A ramp in time stays a ramp under bilinear resampling: each output must read a window of
    # exactly half the input length, starting inside the input.
    ramp = torch.arange(T_, dtype=torch.float32).expand(B, 1, F_, T_).clone()
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 1.0), freq_scale=(1.0, 1.0), time_scale=(0.5, 0.5))
    y = rrc(ramp, _gen(3))
    length = 0.5 * T_
    slope = (y[..., -1] - y[..., 0]) / (T_ - 1)
    torch.testing.assert_close(slope, torch.full_like(slope, (length - 1) / (T_ - 1)), rtol=0, atol=1e-4)
    assert (y[..., 0] >= -1e-4).all() and (y[..., 0] <= T_ - length + 1e-4).all()
    torch.testing.assert_close(y, y[:, :, :1].expand_as(y))  # frequency untouched
    assert len({round(v, 3) for v in y[:, 0, 0, 0].tolist()}) > 1  # each sample its own crop


def test_rrc_virtual_canvas_pads_with_zeros():
    # The crop spans the whole 2x canvas: the input shows in the middle half, zeros around it.
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 2.0), freq_scale=(1.0, 1.0), time_scale=(2.0, 2.0))
    y = rrc(torch.ones(B, 1, F_, T_), _gen())
    assert torch.allclose(y[..., 0], torch.zeros(())) and torch.allclose(y[..., -1], torch.zeros(()))
    torch.testing.assert_close(y[..., T_ // 2], torch.ones_like(y[..., 0]))


# --- fader, noise, normalisation -----------------------------------------------------------------


def test_fader_zero_gain_is_identity():
    x = _batch()
    torch.testing.assert_close(RandomLinearFader(gain=0.0)(x, _gen()), x, rtol=0, atol=0)


def test_fader_adds_a_linear_ramp_within_gain():
    gain = 0.7
    x = _batch()
    d = RandomLinearFader(gain)(x, _gen(4)) - x
    torch.testing.assert_close(d, d[:, :, :1].expand_as(d), atol=1e-6, rtol=0)  # same for every bin
    ramp = d[:, 0, 0]  # (B, T)
    second_diff = ramp[:, 2:] - 2 * ramp[:, 1:-1] + ramp[:, :-2]
    assert second_diff.abs().max() < 1e-5
    assert (ramp[:, [0, -1]].abs() <= gain + 1e-6).all()
    assert ramp.abs().max() > 0.01


def test_noise_zero_alpha_is_identity_and_bounded_otherwise():
    x = _batch()
    torch.testing.assert_close(GaussianNoise(alpha=0.0)(x, _gen()), x, rtol=0, atol=0)
    big = torch.zeros(B, 1, 64, 96)
    d = GaussianNoise(alpha=0.2)(big, _gen(1))
    per_sample_std = d.flatten(1).std(dim=1)
    assert (per_sample_std < 0.2 * 1.1).all() and per_sample_std.max() > 0.0


def test_prepostnorm_standardises_the_batch():
    y = PrePostNorm()(_batch() * 5 + 3)
    assert abs(y.mean().item()) < 1e-5 and abs(y.std().item() - 1) < 1e-5


# --- view augmenter ------------------------------------------------------------------------------


def _run(aug: ViewAugmenter, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _gen(seed)
    aug(_batch(0), gen)  # fills the mixup bank
    return aug(_batch(1), gen)


@pytest.mark.parametrize("ppn", [False, True])
def test_views_deterministic_under_seed(ppn):
    cfg = AugmentConfig(noise=True, ppn=ppn)
    a1, a2 = _run(ViewAugmenter(cfg), 7)
    b1, b2 = _run(ViewAugmenter(cfg), 7)
    c1, _ = _run(ViewAugmenter(cfg), 8)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1)
    assert not torch.allclose(a1, a2)
    assert a1.shape == (B, 1, F_, T_) and a1.dtype == torch.float32


def test_views_all_off_are_the_input_and_bank_updates_once_per_batch():
    off = AugmentConfig(mixup=True, mixup_ratio=0.0, rrc=False, rlf=False, noise=False, ppn=False)
    aug = ViewAugmenter(off)
    x = _batch()
    v1, v2 = aug(x, _gen())
    assert torch.equal(v1, x) and torch.equal(v2, x)
    assert len(aug.mixup) == B
    aug(x, _gen())
    assert len(aug.mixup) == 2 * B


def test_view_augmenter_state_round_trip():
    cfg = AugmentConfig()
    aug = ViewAugmenter(cfg)
    gen = _gen(2)
    aug(_batch(0), gen)
    restored = ViewAugmenter(cfg)
    restored.load_state_dict(aug.state_dict())
    gen2 = torch.Generator()
    gen2.set_state(gen.get_state())
    for a, b in zip(aug(_batch(1), gen), restored(_batch(1), gen2)):
        assert torch.equal(a, b)


# --- view masking --------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,keep", [(0.0, 48), (0.2, 38), (0.3, 34), (0.9, 5)])
def test_keep_indices_count_unique_sorted(ratio, keep):
    idx = random_keep_indices(3, 48, ratio, _gen())
    assert idx.shape == (3, keep) and idx.dtype == torch.int64
    assert ((idx >= 0) & (idx < 48)).all()
    for row in idx:
        assert len(set(row.tolist())) == keep
        assert torch.equal(row, row.sort().values)
    if keep < 48:
        assert not torch.equal(idx[0], idx[1])
        assert torch.equal(idx, random_keep_indices(3, 48, ratio, _gen()))
    with pytest.raises(ValueError):
        random_keep_indices(3, 48, 1.0, _gen())


def test_mask_ratio_schedules():
    assert mask_ratio_at(0, 100, 10, 0.3, "fixed") == 0.3
    assert mask_ratio_at(5, 100, 10, 0.3, "sine") == 0.0
    assert mask_ratio_at(10, 100, 10, 0.3, "sine") == pytest.approx(0.0)
    assert mask_ratio_at(55, 100, 10, 0.3, "sine") == pytest.approx(0.15)
    assert mask_ratio_at(100, 100, 10, 0.3, "sine") == pytest.approx(0.3)
    values = [mask_ratio_at(s, 100, 10, 0.3, "sine") for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError):
        mask_ratio_at(0, 100, 10, 0.3, "linear")


def test_view_augmenter_keep_indices():
    assert ViewAugmenter(AugmentConfig(mask_ratio=0.0)).keep_indices(2, 48, 0, 100, _gen()) is None
    aug = ViewAugmenter(AugmentConfig(mask_ratio=0.25, mask_schedule="fixed"))
    assert aug.keep_indices(2, 48, 0, 100, _gen()).shape == (2, 36)
