"""Waveform-domain view augmentations, batched on the training device (ABT paper's future work).

Gain, random EQ and synthetic reverberation act on the (B, samples) waveform; pitch shift and time
stretch resample the STFT power spectrogram (the log-mel discards phase, so warping the power
spectrum's frequency axis shifts pitch and warping its time axis stretches time, with no phase
vocoder needed). Every draw is per sample, from the ``torch.Generator`` passed in, and every block
applies to a sample with its own probability. The log-mel is hear_abt's front-end
(:class:`hear_abt.frontend.LogMelFrontend`): called as is when nothing warps the spectrum, and
through :func:`power_spectrogram` / :func:`logmel_from_power` (its own buffers, the same operations;
``tests/test_augment.py`` checks they match it) when something does. ``docs/augmentations.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hear_abt.frontend import LogMelFrontend

from .augment import _rand, _uniform

Tensor = torch.Tensor
# Amplitude falls by 60 dB, a factor 1e-3 = exp(-6.908), over RT60 seconds.
_LN_1000 = math.log(1000.0)


@dataclass(frozen=True)
class WaveAugmentSettings:
    """Probabilities (0: off) and strengths; ``training.augment.AugmentConfig`` holds the same fields."""

    gain_p: float = 0.0
    gain_db: float = 6.0  # gain ~ U(-db, db)
    eq_p: float = 0.0
    eq_db: float = 6.0  # each band's gain ~ U(-db, db)
    eq_bands: int = 8  # control points, log-spaced over 50 Hz .. Nyquist
    reverb_p: float = 0.0
    reverb_rt60: tuple[float, float] = (0.2, 1.0)  # seconds, uniform
    reverb_drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant energy ratio, uniform
    pitch_p: float = 0.0
    pitch_semitones: float = 2.0  # shift ~ U(-s, s)
    stretch_p: float = 0.0
    stretch_rate: tuple[float, float] = (0.8, 1.25)  # playback rate ~ U: > 1 is faster (shorter)

    def __post_init__(self) -> None:
        for name in ("gain_p", "eq_p", "reverb_p", "pitch_p", "stretch_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"wave_{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("gain_db", "eq_db", "pitch_semitones"):
            if getattr(self, name) < 0:
                raise ValueError(f"wave_{name} must be >= 0, got {getattr(self, name)}")
        if self.eq_bands < 2:
            raise ValueError(f"wave_eq_bands must be >= 2, got {self.eq_bands}")
        for name in ("reverb_rt60", "stretch_rate"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"wave_{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.reverb_drr_db[0] > self.reverb_drr_db[1]:
            raise ValueError(f"wave_reverb_drr_db must satisfy low <= high, got {self.reverb_drr_db}")

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.gain_p, self.eq_p, self.reverb_p, self.pitch_p, self.stretch_p))

    @property
    def max_rate(self) -> float:
        """The fastest playback a view may read: how much longer than the crop the input must be."""
        return max(1.0, self.stretch_rate[1]) if self.stretch_p > 0 else 1.0


def wave_settings(cfg) -> WaveAugmentSettings:
    """The ``wave_*`` fields of a ``training.augment.AugmentConfig`` (checked)."""
    names = [f.name for f in dataclasses.fields(WaveAugmentSettings)]
    return WaveAugmentSettings(**{name: getattr(cfg, f"wave_{name}") for name in names})


def _applied(n: int, p: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n,) bool: which samples a block with probability ``p`` applies to."""
    return _rand((n,), gen, device) < p


def apply_gain(wav: Tensor, gain_db: Tensor) -> Tensor:
    """Scale each sample by ``gain_db`` (B,) decibels: the log-mel moves by ``gain_db * ln(10) / 10``."""
    return wav * torch.pow(10.0, gain_db / 20.0).to(wav.dtype)[:, None]


def apply_eq(wav: Tensor, band_db: Tensor, sample_rate: int, f_low: float = 50.0) -> Tensor:
    """Zero-phase EQ: a gain curve through ``band_db`` (B, K) at K log-spaced frequencies from
    ``f_low`` to Nyquist, linear in log-frequency between them and flat beyond, applied to the
    spectrum of each (zero-padded, so the filter's short response does not wrap) waveform."""
    b, n = wav.shape
    k = band_db.shape[1]
    size = n + 2048
    spec = torch.fft.rfft(wav.float(), n=size)
    freqs = torch.fft.rfftfreq(size, 1.0 / sample_rate, device=wav.device).clamp_min(f_low)
    pos = (freqs.log() - math.log(f_low)) / (math.log(sample_rate / 2) - math.log(f_low)) * (k - 1)
    pos = pos.clamp(0, k - 1)
    lo = pos.floor().long().clamp(max=k - 2)
    frac = (pos - lo).to(band_db.dtype)
    curve_db = band_db[:, lo] * (1 - frac) + band_db[:, lo + 1] * frac  # (B, bins)
    out = torch.fft.irfft(spec * torch.pow(10.0, curve_db / 20.0), n=size)[:, :n]
    return out.to(wav.dtype)


def room_responses(
    rt60: Tensor, drr_db: Tensor, length: int, sample_rate: int, gen: torch.Generator
) -> Tensor:
    """(B, length) synthetic room impulse responses: a unit direct path at 0, then exponentially
    decaying Gaussian noise (amplitude -60 dB after ``rt60`` seconds) whose energy is ``drr_db``
    below the direct path's. Scaled so the expected output energy equals the input's."""
    b = rt60.shape[0]
    t = torch.arange(1, length, device=rt60.device, dtype=torch.float32) / sample_rate
    noise = torch.randn((b, length - 1), generator=gen, device=gen.device).to(rt60.device)
    tail = noise * torch.exp(-_LN_1000 * t[None] / rt60[:, None])
    tail = tail / tail.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    wet = torch.pow(10.0, -drr_db / 20.0)[:, None]
    direct = torch.ones((b, 1), device=rt60.device)
    return torch.cat([direct, wet * tail], dim=1) / (1 + wet.square()).sqrt()


def convolve(wav: Tensor, responses: Tensor) -> Tensor:
    """Causal FFT convolution of each waveform with its own response, cut to the input's length."""
    n = wav.shape[1]
    size = 1 << (n + responses.shape[1] - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(wav.float(), n=size) * torch.fft.rfft(responses, n=size), n=size)
    return out[:, :n].to(wav.dtype)


def power_spectrogram(frontend: LogMelFrontend, wav: Tensor) -> Tensor:
    """(B, n_freqs, frames) STFT power: the first half of ``frontend.forward``, same operations."""
    cfg = frontend.cfg
    spec = torch.stft(
        wav.float(),
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=frontend.window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    return spec.real.square() + spec.imag.square()


def logmel_from_power(frontend: LogMelFrontend, power: Tensor) -> Tensor:
    """(B, n_mels, frames) log-mel of a power spectrogram: the second half of ``frontend.forward``."""
    mel = torch.matmul(power.transpose(1, 2), frontend.fbanks).transpose(1, 2)
    return torch.log(mel + frontend.cfg.log_offset)


def warp_power(power: Tensor, pitch_ratio: Tensor, rate: Tensor, first: int, frames: int) -> Tensor:
    """Pitch shift and time stretch of a power spectrogram (B, n_freqs, T_in) -> (B, n_freqs, frames).

    Output bin ``k`` reads input bin ``k / pitch_ratio`` (a ratio of 2 is an octave up; bins above
    Nyquist read as zero) and output frame ``m`` reads input frame ``first + m * rate``, by bilinear
    interpolation. Power is divided by the ratio, so a shifted tone keeps its energy.
    """
    b, n_freqs, t_in = power.shape
    t_den = max(t_in - 1, 1)
    zero = torch.zeros_like(rate)
    # affine_grid's x is the time axis, y the frequency axis; align_corners maps pixel centres.
    a_t = rate * max(frames - 1, 1) / t_den
    o_t = (2 * first + rate * (frames - 1)) / t_den - 1
    a_f = 1 / pitch_ratio
    o_f = 1 / pitch_ratio - 1
    theta = torch.stack([torch.stack([a_t, zero, o_t], 1), torch.stack([zero, a_f, o_f], 1)], 1)
    grid = F.affine_grid(theta.to(power.dtype), [b, 1, n_freqs, frames], align_corners=True)
    out = F.grid_sample(power[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0] / pitch_ratio.to(power.dtype)[:, None, None]


class WaveAugmenter:
    """(B, samples) waveform crops -> (B, n_mels, frames) raw log-mel, augmented or clean.

    The waveform holds ``context`` hops before the crop (and enough after it for the fastest
    stretch), so that every kept frame's STFT window sees real samples, as in log-mel shards; frame
    ``context + m`` is the crop's frame ``m``.
    """

    def __init__(self, settings: WaveAugmentSettings, frontend: LogMelFrontend, frames: int, context: int):
        self.settings = settings
        self.frontend = frontend
        self.frames = frames
        self.context = context

    def clean(self, wav: Tensor) -> Tensor:
        """The crop's log-mel, straight through hear_abt's front-end."""
        return self.frontend(wav)[..., self.context : self.context + self.frames]

    def __call__(self, wav: Tensor, gen: torch.Generator) -> Tensor:
        """One augmented view's log-mel; blocks in order gain, EQ, reverb, pitch, stretch."""
        s, b, device = self.settings, wav.shape[0], wav.device
        sr = self.frontend.cfg.sample_rate
        if s.gain_p > 0:
            on = _applied(b, s.gain_p, gen, device)
            wav = apply_gain(wav, _uniform(b, -s.gain_db, s.gain_db, gen, device) * on)
        if s.eq_p > 0:
            on = _applied(b, s.eq_p, gen, device)
            bands = (2 * _rand((b, s.eq_bands), gen, device) - 1) * s.eq_db
            wav = apply_eq(wav, bands * on[:, None], sr)
        if s.reverb_p > 0:
            on = _applied(b, s.reverb_p, gen, device)
            rt60 = _uniform(b, *s.reverb_rt60, gen, device)
            drr = _uniform(b, *s.reverb_drr_db, gen, device)
            drr = torch.where(on, drr, torch.full_like(drr, math.inf))  # infinite DRR: no tail
            length = max(2, round(s.reverb_rt60[1] * sr))
            wav = convolve(wav, room_responses(rt60, drr, length, sr, gen))
        if s.pitch_p <= 0 and s.stretch_p <= 0:
            return self.clean(wav)
        ratio, rate = torch.ones(b, device=device), torch.ones(b, device=device)
        if s.pitch_p > 0:
            on = _applied(b, s.pitch_p, gen, device)
            semitones = _uniform(b, -s.pitch_semitones, s.pitch_semitones, gen, device) * on
            ratio = torch.pow(2.0, semitones / 12.0)
        if s.stretch_p > 0:
            on = _applied(b, s.stretch_p, gen, device)
            rate = torch.where(on, _uniform(b, *s.stretch_rate, gen, device), rate)
        power = warp_power(power_spectrogram(self.frontend, wav), ratio, rate, self.context, self.frames)
        return logmel_from_power(self.frontend, power)


def context_hops(frontend_n_fft: int, hop_length: int) -> int:
    """Hops of real audio needed before a frame so its centred STFT window never reads padding."""
    return math.ceil(frontend_n_fft / 2 / hop_length)


def input_hops(frames: int, context: int, max_rate: float) -> int:
    """Hops of waveform a view of ``frames`` log-mel frames needs: context, the crop read at the
    fastest rate, and context again after it."""
    return 2 * context + math.ceil((frames - 1) * max_rate) + 1
