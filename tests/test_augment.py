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


# --- pitch-preserving random resize crop ----------------------------------------------------------


def _tone_logmel(freq_hz: float, batch: int = 32) -> torch.Tensor:
    """(batch, 1, 64, 96) standardised log-mel of a pure tone, through hear_abt's front-end."""
    from hear_abt.config import FrontendConfig
    from hear_abt.frontend import LogMelFrontend

    t = torch.arange(16000) / 16000
    mel = LogMelFrontend(FrontendConfig())(torch.sin(2 * math.pi * freq_hz * t)[None])[..., :96]
    mel = (mel - mel.mean()) / mel.std()
    return mel[:, None].expand(batch, 1, -1, -1).contiguous()


def _peak_bins(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=-1)[:, 0].argmax(dim=-1)  # per sample: mel bin of most energy over time


def test_rrc_time_only_keeps_a_tones_peak_mel_bin_and_the_paper_default_moves_it():
    x = _tone_logmel(880.0)
    peak = _peak_bins(x)[0]
    time_only = AugmentConfig(mixup=False, rlf=False, rrc_time_only=True)
    v1, v2 = ViewAugmenter(time_only)(x, _gen(3))
    assert (_peak_bins(v1) == peak).all() and (_peak_bins(v2) == peak).all()
    paper = ViewAugmenter(AugmentConfig(mixup=False, rlf=False))
    moved = torch.cat([_peak_bins(v) for v in paper(x, _gen(3))])
    assert (moved != peak).sum() > len(moved) // 4  # most frequency crops shift or scale the bin


def test_rrc_time_only_is_exact_on_the_frequency_axis_and_still_crops_time():
    # Frequency settings that would crop hard are ignored; with time untouched too, it is the identity.
    frozen = RandomResizeCrop((2.0, 1.0), freq_scale=(0.5, 0.5), time_scale=(1.0, 1.0), time_only=True)
    x = _batch()
    torch.testing.assert_close(frozen(x, _gen(6)), x, rtol=0, atol=1e-5)
    rrc = RandomResizeCrop((2.0, 1.5), freq_scale=(0.5, 0.5), time_only=True)
    f_len, f_start, t_len, t_start = rrc.draw(N, (F_, T_), _gen(6), torch.device("cpu"))
    assert (f_len == F_).all() and (f_start == 0).all() and t_len.std() > 0 and t_start.std() > 0


def test_rrc_narrow_frequency_scale_bounds_the_peak_shift():
    x = _tone_logmel(880.0)
    peak = _peak_bins(x)[0]
    rrc = RandomResizeCrop(freq_scale=(0.95, 1.05))
    shift = (_peak_bins(rrc(x, _gen(7))) - peak).abs()
    assert shift.max() <= 2  # within 5% of the bin index plus interpolation


# --- waveform augmentations -----------------------------------------------------------------------


def _frontend():
    from hear_abt.config import FrontendConfig
    from hear_abt.frontend import LogMelFrontend

    return LogMelFrontend(FrontendConfig())


def _wave_augmenter(frames: int = 96, **settings):
    from training.augment_wave import WaveAugmenter, WaveAugmentSettings, context_hops

    frontend = _frontend()
    return WaveAugmenter(WaveAugmentSettings(**settings), frontend, frames, context_hops(1024, 160))


def _tone(freq_hz: float, seconds: float, batch: int = 1, start: float = 0.0, length: float | None = None):
    t = torch.arange(round(seconds * 16000)) / 16000
    wav = 0.5 * torch.sin(2 * math.pi * freq_hz * t)
    if length is not None:
        wav = wav * ((t >= start) & (t < start + length))
    return wav[None].expand(batch, -1).contiguous()


def test_wave_power_path_matches_hear_abt_frontend():
    from training.augment_wave import logmel_from_power, power_spectrogram

    frontend = _frontend()
    wav = torch.randn(3, 8000, generator=_gen(2)) * 0.1
    assert torch.equal(logmel_from_power(frontend, power_spectrogram(frontend, wav)), frontend(wav))


def test_wave_all_off_is_the_clean_logmel():
    aug = _wave_augmenter()
    wav = torch.randn(2, 104 * 160, generator=_gen(3)) * 0.1
    gen = _gen(4)
    state = gen.get_state()
    assert torch.equal(aug(wav, gen), aug.clean(wav)) and not aug.settings.enabled
    assert torch.equal(gen.get_state(), state)  # nothing drawn


def test_wave_gain_moves_the_logmel_by_a_constant():
    from training.augment_wave import apply_gain

    frontend = _frontend()
    wav = torch.randn(2, 16000, generator=_gen(5)) * 0.1
    db = torch.tensor([6.0, -9.0])
    diff = frontend(apply_gain(wav, db)) - frontend(wav)
    expected = db * math.log(10) / 10
    torch.testing.assert_close(diff, expected[:, None, None].expand_as(diff), rtol=0, atol=1e-3)
    aug = _wave_augmenter(gain_p=1.0, gain_db=6.0)
    shifts = (aug(wav, _gen(6)) - aug.clean(wav)).flatten(1)
    assert (shifts.std(dim=1) < 1e-3).all() and (shifts.mean(dim=1).abs() <= 6 * math.log(10) / 10).all()


def test_wave_reverb_lengthens_the_decay_after_a_tone_burst():
    aug = _wave_augmenter(reverb_p=1.0, reverb_rt60=(0.8, 0.8), reverb_drr_db=(0.0, 0.0))
    wav = _tone(1000.0, 104 * 160 / 16000, batch=4, start=0.1, length=0.3)
    dry, wet = aug.clean(wav), aug(wav, _gen(7))
    after = slice(50, 70)  # 0.1-0.3 s after the burst ends (frame 40)
    assert (wet[..., after].mean(dim=(1, 2)) > dry[..., after].mean(dim=(1, 2)) + 5).all()
    # and the tail decays: louder just after the burst than later
    assert (wet[..., 45:50].mean(dim=(1, 2)) > wet[..., 85:95].mean(dim=(1, 2))).all()


def test_wave_eq_shapes_the_spectrum_per_band():
    from training.augment_wave import apply_eq

    frontend = _frontend()
    wav = torch.randn(1, 16000, generator=_gen(8)) * 0.1
    bands = torch.tensor([[-12.0, -12.0, 12.0, 12.0]])  # cut below ~400 Hz... boost above ~1.4 kHz
    diff = (frontend(apply_eq(wav, bands, 16000)) - frontend(wav)).mean(dim=-1)[0]
    assert diff[:4].mean() < -2 and diff[-10:].mean() > 2
    flat = apply_eq(wav, torch.zeros(1, 4), 16000)
    torch.testing.assert_close(flat, wav, rtol=0, atol=1e-5)


def test_wave_pitch_up_an_octave_moves_a_tones_peak_to_the_octaves_bin():
    aug = _wave_augmenter(pitch_p=1.0, pitch_semitones=12.0)
    wav = _tone(440.0, 104 * 160 / 16000)
    octave = _peak_bins(aug.clean(_tone(880.0, 104 * 160 / 16000))[:, None])
    from training.augment_wave import logmel_from_power, power_spectrogram, warp_power

    power = power_spectrogram(aug.frontend, wav)
    up = logmel_from_power(aug.frontend, warp_power(power, torch.tensor([2.0]), torch.ones(1), 4, 96))
    assert _peak_bins(up[:, None]) == octave
    assert _peak_bins(aug.clean(wav)[:, None]) < octave
    # the drawn shifts lie within +-12 semitones: peaks between the tone's and octaves around it
    peaks = _peak_bins(aug(wav.expand(16, -1), _gen(9))[:, None])
    below = _peak_bins(aug.clean(_tone(220.0, 104 * 160 / 16000))[:, None])
    assert ((peaks >= below) & (peaks <= octave)).all() and peaks.unique().numel() > 3


def test_wave_time_stretch_changes_a_bursts_duration():
    from training.augment_wave import input_hops

    hops = input_hops(96, 4, 2.0)
    wav = _tone(1000.0, hops * 160 / 16000, start=0.1, length=0.3)
    aug = _wave_augmenter(stretch_p=1.0, stretch_rate=(2.0, 2.0))
    aug_slow = _wave_augmenter(stretch_p=1.0, stretch_rate=(0.5, 0.5))

    def loud_frames(logmel):
        energy = logmel.mean(dim=1)[0]
        return int((energy > energy.max() - 3).sum())

    base = loud_frames(aug.clean(wav))
    assert abs(loud_frames(aug(wav, _gen(1))) - base / 2) <= 2
    assert abs(loud_frames(aug_slow(wav, _gen(1))) - min(2 * base, 96 - 2 * 10)) <= 3


def test_wave_blocks_apply_with_their_probability_and_bad_settings_are_refused():
    from training.augment_wave import WaveAugmentSettings

    aug = _wave_augmenter(gain_p=0.5)
    wav = torch.randn(64, 104 * 160, generator=_gen(10)) * 0.1
    changed = (aug(wav, _gen(11)) - aug.clean(wav)).abs().flatten(1).amax(dim=1) > 1e-4
    assert 16 < changed.sum() < 48
    for bad in ({"gain_p": 1.5}, {"eq_bands": 1}, {"stretch_rate": (0.0, 1.0)}, {"gain_db": -1.0}):
        with pytest.raises(ValueError):
            WaveAugmentSettings(**bad)


def test_view_inputs_equal_to_the_input_draw_as_before():
    x = _batch()
    plain = ViewAugmenter(AugmentConfig(mixup_bank_size=8))(x, _gen(12))
    split = ViewAugmenter(AugmentConfig(mixup_bank_size=8))(x, _gen(12), view_inputs=(x, x))
    assert all(torch.equal(a, b) for a, b in zip(plain, split))
    assert all(
        getattr(AugmentConfig(), f"wave_{b}_p") == 0 for b in ("gain", "eq", "reverb", "pitch", "stretch")
    )


# --- training on waveform shards ------------------------------------------------------------------

WAVE_ON = [
    "augment.wave_gain_p=0.5",
    "augment.wave_eq_p=0.5",
    "augment.wave_reverb_p=0.5",
    "augment.wave_pitch_p=0.5",
    "augment.wave_stretch_p=0.5",
]


@pytest.fixture(scope="module")
def wave_corpus(tmp_path_factory):
    import numpy as np
    import signals
    import soundfile as sf

    from training import prepare

    root = tmp_path_factory.mktemp("wave_corpus")
    (root / "audio").mkdir()
    rng = np.random.default_rng(2)
    for i in range(20):
        kind = signals.KINDS[i % len(signals.KINDS)]
        sf.write(root / "audio" / f"{i:02d}.wav", signals.make_signal(kind, 1.2, rng), 16000)
    for store in ("waveform", "logmel"):
        argv = [str(root / "audio"), str(root / store), "--workers", "1", "--no-progress"]
        prepare.main([*argv, "--store", store])
    return root


def _state(data, overrides):
    from training import engine
    from training.config import build_config
    from training.data import ShardDataset

    cfg = build_config("cpu-tiny", ["batch_size=8", "augment.mixup_bank_size=16", *overrides])
    return engine.build(cfg, ShardDataset(data), torch.device("cpu"), prefetch=0)


def _train(state, steps):
    from training import engine

    while state.step < steps:
        for crops in state.sampler:
            engine.train_step(state, crops)
            if state.step >= steps:
                break
    engine.check_finite(state)


def test_waveform_training_with_every_block_resumes_bitwise(wave_corpus):
    from training import engine

    straight = _state(wave_corpus / "waveform", WAVE_ON)
    assert straight.sampler.crop_frames == 4 + 119 + 1 + 4  # context, 96 frames at rate 1.25, context
    _train(straight, 4)
    first = _state(wave_corpus / "waveform", WAVE_ON)
    _train(first, 2)
    saved = engine.checkpoint_state(first, {}, [engine.rank_state(first)])
    resumed = _state(wave_corpus / "waveform", WAVE_ON)
    engine.load_checkpoint_state(resumed, saved)
    _train(resumed, 4)
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)


def test_waveform_blocks_need_waveform_shards_and_off_reads_them_clean(wave_corpus):
    from training import engine

    with pytest.raises(engine.TrainingSetupError, match="--store waveform"):
        _state(wave_corpus / "logmel", ["augment.wave_gain_p=1.0"])
    plain = _state(wave_corpus / "waveform", [])
    crops = plain.sampler.batch_at(0, 0)
    x, views = engine.view_inputs(plain, crops)
    assert views is None and x.shape == (8, 1, 64, 96) and plain.sampler.crop_frames == 104
    assert 1.0 <= engine.health_figures(plain)["rankme_encoder"] <= 8 * 64  # the monitor reads waveforms too
    logmel = _state(wave_corpus / "logmel", [])
    x, views = engine.view_inputs(logmel, logmel.sampler.batch_at(0, 0))
    assert views is None and x.shape == (8, 1, 64, 96) and logmel.wave is None
