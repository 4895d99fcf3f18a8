import math

import pytest
import torch
import torch.nn.functional as F

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
def test_float64_input_gets_the_float32_draws(make):
    # The draws must not depend on the data's dtype: float64 in, float64 out, same augmentation.
    b32, b64 = make(), make()
    x = _batch()
    for _ in range(2):  # second call exercises a filled mixup bank
        y32, y64 = b32(x, _gen(9)), b64(x.double(), _gen(9))
        assert y64.dtype == torch.float64
        torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-4)


# --- per-sample draws: shared checks ----------------------------------------------------------------

N = 4000  # samples for the statistical checks (fixed seeds: deterministic, with wide margins)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _check_per_sample_uniform(v: torch.Tensor, low: float, high: float) -> None:
    """``v`` (N,): one draw per sample, documented as U(low, high), for a batch of identical inputs.

    A draw shared by the batch, or a function of the sample's index (e.g. a linspace), or a narrower
    or shifted range, fails one of these.
    """
    n, span = len(v), high - low
    tol = 1e-5 * max(span, 1.0)
    assert (v >= low - tol).all() and (v <= high + tol).all(), (v.min(), v.max())
    assert v.min() < low + 0.01 * span and v.max() > high - 0.01 * span  # covers the whole range
    assert abs(v.double().mean().item() - (low + high) / 2) < 0.03 * span
    assert abs(v.double().std().item() - span / math.sqrt(12)) < 0.03 * span
    assert len(torch.unique(v)) > 0.99 * n  # not shared across the batch
    index = torch.arange(n)
    assert abs(_corr(v, index)) < 0.1  # not a function of the index
    assert abs(_corr(v[:-1], v[1:])) < 0.1  # neighbours independent


def _check_seed_matters(draw, agree: float = 0.0) -> None:
    """``draw(seed)`` -> (N,) draws: another seed must give other draws at (almost) every index
    (``agree``: the chance that two independent draws are equal, for discrete ones)."""
    a, b = draw(1), draw(2)
    assert (a != b).float().mean() > 0.99 - 1.5 * agree


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


K_PARTNERS, A_HI, A_LO = 16, 3.0, 1.5


def _one_hot_bank(ratio: float) -> MixupBank:
    """A bank of K partners; partner k is A_HI at pixel k, A_LO at pixel K + k and 0 elsewhere."""
    partners = torch.zeros(K_PARTNERS, 1, F_ * T_)
    ks = torch.arange(K_PARTNERS)
    partners[ks, 0, ks] = A_HI
    partners[ks, 0, K_PARTNERS + ks] = A_LO
    bank = MixupBank(ratio=ratio, size=K_PARTNERS)
    bank.push(partners.view(K_PARTNERS, 1, F_, T_))
    return bank


def _mixup_draws(seed: int, ratio: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(partner, ratio, output) of each sample of N identical (all-zero) inputs, read off the output."""
    y = _one_hot_bank(ratio).mix(torch.zeros(N, 1, F_, T_), _gen(seed)).view(N, -1)
    partner = y[:, :K_PARTNERS].argmax(dim=1)
    # At partner k's A_HI pixel: y = log((1 - l) + l * exp(A_HI)), so l = (exp(y) - 1) / (exp(A_HI) - 1).
    lam = (y[torch.arange(N), partner].double().exp() - 1) / (math.exp(A_HI) - 1)
    return partner, lam, y


def test_mixup_ratio_is_per_sample_uniform_and_follows_log_mixup_exp():
    ratio = 0.2
    partner, lam, y = _mixup_draws(0, ratio)
    _check_per_sample_uniform(lam, 0.0, ratio)
    # Hand computation at the partner's second pixel, with the ratio read off the first one.
    expected = torch.log((1 - lam) + lam * math.exp(A_LO))
    torch.testing.assert_close(y[torch.arange(N), K_PARTNERS + partner].double(), expected, atol=1e-5, rtol=0)
    # Where neither input has energy, the mix is log(1 - l + l) = 0.
    rest = y.clone()
    rest[torch.arange(N), partner] = 0
    rest[torch.arange(N), K_PARTNERS + partner] = 0
    assert rest.abs().max() < 1e-5
    _check_seed_matters(lambda seed: _mixup_draws(seed, ratio)[1])


def test_mixup_partner_is_per_sample_uniform_over_the_bank():
    partner, lam, _ = _mixup_draws(0)
    counts = torch.bincount(partner, minlength=K_PARTNERS).double()
    expected = N / K_PARTNERS
    assert (counts > 0.75 * expected).all() and (counts < 1.25 * expected).all(), counts
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45  # 15 degrees of freedom: p < 1e-4 beyond this
    assert abs(_corr(partner, torch.arange(N))) < 0.1  # not a function of the index
    assert (partner[1:] != partner[:-1]).float().mean() > 0.85  # not shared by neighbours
    assert abs(_corr(partner, lam)) < 0.1  # partner and ratio drawn independently
    _check_seed_matters(lambda seed: _mixup_draws(seed)[0], agree=1 / K_PARTNERS)


# --- random resize crop --------------------------------------------------------------------------


def test_rrc_unit_scales_are_identity():
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 1.0), freq_scale=(1.0, 1.0), time_scale=(1.0, 1.0))
    x = _batch()
    torch.testing.assert_close(rrc(x, _gen()), x, rtol=0, atol=1e-5)


def _rrc_draws(seed: int, rrc: RandomResizeCrop, size=(64, 96)) -> tuple[torch.Tensor, ...]:
    return rrc.draw(N, size, _gen(seed), torch.device("cpu"))


def test_rrc_crop_scales_and_positions_are_per_sample_uniform():
    rrc = RandomResizeCrop()  # BYOL-A: canvas 1.0 x 1.5, scales U(0.6, 1.5) on both axes
    f_len, f_start, t_len, t_start = _rrc_draws(0, rrc)
    # Time: the canvas (1.5) holds every drawn length, so length / 96 ~ U(0.6, 1.5).
    _check_per_sample_uniform(t_len / 96, 0.6, 1.5)
    # ... and the start is uniform over the positions that keep the crop inside the canvas.
    _check_per_sample_uniform(t_start / (1.5 * 96 - t_len), 0.0, 1.0)
    # Frequency: the canvas is the input (1.0), so lengths above it are clamped to the full height.
    full = f_len == 64
    assert abs(full.double().mean().item() - 0.5 / 0.9) < 0.03
    _check_per_sample_uniform(f_len[~full] / 64, 0.6, 1.0)
    assert (f_start[full] == 0).all()
    _check_per_sample_uniform(f_start[~full] / (64 - f_len[~full]), 0.0, 1.0)
    # The four draws are independent of each other.
    t_rel = t_start / (1.5 * 96 - t_len)
    assert max(abs(_corr(f_len, t_len)), abs(_corr(t_len, t_rel)), abs(_corr(f_len, t_rel))) < 0.1
    for k in range(4):  # frequency draws agree where both seeds clamp to the full height
        _check_seed_matters(
            lambda seed, k=k: _rrc_draws(seed, rrc)[k], agree=(0.5 / 0.9) ** 2 if k < 2 else 0
        )


def test_rrc_call_applies_its_draws_and_each_sample_gets_its_own_crop():
    rrc = RandomResizeCrop()
    x = _batch(b=1).expand(8, -1, -1, -1).contiguous()  # eight identical inputs
    y = rrc(x, _gen(4))
    torch.testing.assert_close(y, rrc.warp(x, *rrc.draw(8, (F_, T_), _gen(4), x.device)), rtol=0, atol=0)
    flat = y.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i))


def test_rrc_bilinear_warp_reads_the_hand_computed_positions():
    # A ramp in time stays a ramp under bilinear resampling: output u of a crop of `length` pixels
    # starting at canvas position `start` reads input position start - pad + u (length - 1) / (T - 1).
    ramp = torch.arange(T_, dtype=torch.float32).expand(3, 1, F_, T_).clone()
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 1.5), interpolation="bilinear")
    pad = (1.5 * T_ - T_) / 2
    t_len, t_start = torch.tensor([12.0, 17.5, 20.0]), torch.tensor([pad, pad + 2.25, pad + 4.0])
    y = rrc.warp(ramp, torch.full((3,), float(F_)), torch.zeros(3), t_len, t_start)
    u = torch.arange(T_)
    expected = (t_start - pad)[:, None] + u[None] * ((t_len - 1) / (T_ - 1))[:, None]
    torch.testing.assert_close(y[:, 0], expected[:, None].expand(3, F_, T_), rtol=0, atol=1e-4)


def test_rrc_bicubic_matches_byol_a_style_resize_of_the_cut_out_crop():
    # BYOL-A cuts the crop out of a zero canvas and resizes it bicubically (align_corners=True).
    # Away from the crop's edges (where BYOL-A repeats the crop's edge pixels and we read the real
    # neighbours) the two must agree.
    x = _batch(3, b=1)
    rrc = RandomResizeCrop(virtual_crop_scale=(1.0, 1.5))
    canvas = torch.zeros(1, 1, F_, 36)
    canvas[..., 6:30] = x
    (fs, fl), (ts, tl) = (2, 10), (3, 20)
    crop = canvas[..., fs : fs + fl, ts : ts + tl]
    ref = F.interpolate(crop, size=(F_, T_), mode="bicubic", align_corners=True)
    ours = rrc.warp(x, *(torch.tensor([float(v)]) for v in (fl, fs, tl, ts)))

    def interior(length: int, size: int) -> torch.Tensor:
        c = torch.arange(size) * (length - 1) / (size - 1)
        return (c.floor() >= 1) & (c.floor() + 2 <= length - 1)

    keep = interior(fl, F_)[:, None] & interior(tl, T_)[None]
    assert keep.sum() > 100
    torch.testing.assert_close(ours[0, 0][keep], ref[0, 0][keep], rtol=0, atol=1e-4)
    # ... and bicubic is not bilinear (the default really is BYOL-A's interpolation).
    lin = RandomResizeCrop(virtual_crop_scale=(1.0, 1.5), interpolation="bilinear")
    assert not torch.allclose(lin.warp(x, *(torch.tensor([float(v)]) for v in (fl, fs, tl, ts))), ours)


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


def _fader_ends(seed: int, gain: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y = RandomLinearFader(gain)(torch.zeros(N, 1, 2, T_), _gen(seed))
    return y[:, 0, 0, 0], y[:, 0, 0, -1], y


def test_fader_ends_are_independent_per_sample_uniform_and_the_ramp_is_linear():
    gain = 0.7
    head, tail, y = _fader_ends(0, gain)
    _check_per_sample_uniform(head, -gain, gain)
    _check_per_sample_uniform(tail, -gain, gain)
    assert abs(_corr(head, tail)) < 0.1  # two independent ends, not tail = head or tail = -head
    # Hand computation: a straight line from head to tail over the T frames, the same in every bin.
    expected = head[:, None] + (tail - head)[:, None] * torch.arange(T_) / (T_ - 1)
    torch.testing.assert_close(y[:, 0], expected[:, None].expand(N, 2, T_), rtol=0, atol=1e-5)
    _check_seed_matters(lambda seed: _fader_ends(seed, gain)[0])
    _check_seed_matters(lambda seed: _fader_ends(seed, gain)[1])


def test_noise_zero_alpha_is_identity():
    x = _batch()
    torch.testing.assert_close(GaussianNoise(alpha=0.0)(x, _gen()), x, rtol=0, atol=0)


def test_noise_level_is_per_sample_uniform_and_the_noise_independent():
    alpha, n = 0.2, 600
    d = GaussianNoise(alpha)(torch.zeros(n, 1, 64, 96), _gen(1)).flatten(1).double()
    level = d.std(dim=1)  # 6144 values per sample: each level read to about 1 %
    assert level.max() < alpha * 1.03 and level.min() < 0.02 * alpha and level.max() > 0.95 * alpha
    assert abs(level.mean().item() - alpha / 2) < 0.05 * alpha
    assert abs(level.std().item() - alpha / math.sqrt(12)) < 0.05 * alpha
    assert len(torch.unique(level)) == n
    assert abs(_corr(level, torch.arange(n))) < 0.15 and abs(_corr(level[:-1], level[1:])) < 0.15
    assert d.mean(dim=1).abs().max() < 4 * alpha / math.sqrt(6144)  # zero-mean noise
    # Each sample's noise field is its own: unit-level fields of different samples are uncorrelated.
    unit = (d / level[:, None])[:50]
    cross = (unit @ unit.T) / unit.shape[1]
    assert (cross - torch.diag(torch.diag(cross))).abs().max() < 0.08
    # Gaussian: the standardised values' 4th moment is 3.
    assert abs(unit.pow(4).mean().item() - 3.0) < 0.1
    other = GaussianNoise(alpha)(torch.zeros(n, 1, 64, 96), _gen(2)).flatten(1).double().std(dim=1)
    assert (other != level).all()


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
