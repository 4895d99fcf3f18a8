"""Batched view augmentations for (B, 1, F, T) normalised log-mel, run on the training device.

BYOL-A's blocks as ABT uses them (mixup with past inputs, random resize crop, random linear fader,
plus the ablations' Gaussian noise and pre-/post-normalisation). Every draw is per sample and comes
from the ``torch.Generator`` passed to each call. Sources and choices: ``docs/augmentations.md``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _rand(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    """U[0, 1) float32 draws from ``gen``, delivered on ``device``."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """(n,) float32 draws from U[low, high); exactly ``low`` when low == high."""
    return low + (high - low) * _rand((n,), gen, device)


def _check_batch(x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"augmentations expect (B, C, F, T) spectrograms, got shape {tuple(x.shape)}")


class MixupBank:
    """BYOL-A's log-mixup-exp: blend each input with a random past input, in the linear-power domain.

    ``y = log((1 - l) * exp(x) + l * exp(b))`` with ``l ~ U(0, ratio)`` per sample and ``b`` drawn
    uniformly, per sample, from a FIFO bank of the last ``size`` un-augmented inputs. Evaluated as a
    ``logaddexp`` (stable; exactly ``x`` when ``l = 0``). An empty bank passes the input through.
    """

    def __init__(self, ratio: float = 0.2, size: int = 2048):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mixup ratio must be in [0, 1), got {ratio}")
        if size < 1:
            raise ValueError(f"bank size must be >= 1, got {size}")
        self.ratio = ratio
        self.size = size
        # Ring buffer (size, C, F, T); slots [0, count) are valid, ptr is the next slot to write.
        self._bank: Tensor | None = None
        self._ptr = 0
        self._count = 0
        # (tag, rows) of the pushes whose rows may still be in the bank, oldest first: with tags
        # naming where the inputs came from, the state is these few records, not the bank's data.
        self._history: collections.deque[tuple[Any, int]] = collections.deque()

    def __len__(self) -> int:
        return self._count

    def __call__(self, x: Tensor, gen: torch.Generator, update: bool = True, tag: Any = None) -> Tensor:
        y = self.mix(x, gen)
        if update:
            self.push(x, tag)
        return y

    def mix(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Mix ``x`` with bank samples without changing the bank."""
        _check_batch(x)
        if self._bank is None or self._count == 0:
            return x
        self._check_shape(x)
        b = x.shape[0]
        idx = torch.randint(0, self._count, (b,), generator=gen, device=gen.device).to(self._bank.device)
        partner = self._bank[idx].to(device=x.device, dtype=x.dtype)
        lam = _uniform(b, 0.0, self.ratio, gen, x.device).to(x.dtype).view(b, 1, 1, 1)
        return torch.logaddexp(torch.log1p(-lam) + x, torch.log(lam) + partner)

    def push(self, x: Tensor, tag: Any = None) -> None:
        """Append a batch of inputs, dropping the oldest beyond ``size``.

        ``tag`` (a list of ints, e.g. the batch's epoch and index) names the batch, so that
        :meth:`state_dict` can record the tags instead of the data and a resume rebuilds the bank.
        """
        _check_batch(x)
        x = x.detach()
        if self._bank is None:
            self._bank = torch.zeros((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self._check_shape(x)
        if self._bank.device != x.device:
            self._bank = self._bank.to(x.device)
        x = x[-self.size :]
        n = x.shape[0]
        slots = (self._ptr + torch.arange(n, device=x.device)) % self.size
        self._bank[slots] = x.to(self._bank.dtype)
        self._ptr = (self._ptr + n) % self.size
        self._count = min(self._count + n, self.size)
        self._history.append((tag, n))
        # Forget pushes that later ones have overwritten completely.
        while sum(rows for _, rows in self._history) - self._history[0][1] >= self.size:
            self._history.popleft()

    def _check_shape(self, x: Tensor) -> None:
        assert self._bank is not None
        if tuple(x.shape[1:]) != tuple(self._bank.shape[1:]):
            raise ValueError(f"bank holds {tuple(self._bank.shape[1:])} samples, got {tuple(x.shape[1:])}")

    def state_dict(self) -> dict[str, Any]:
        """The ring buffer's position and the tags of the pushes it holds, so that a resumed run
        rebuilds the same bank and draws the same partners. Without tags (pushes made without one),
        the bank's data itself, on the CPU."""
        state: dict[str, Any] = {"size": self.size, "ptr": self._ptr, "count": self._count}
        if all(tag is not None for tag, _ in self._history):
            state["history"] = [[list(tag), rows] for tag, rows in self._history]
        else:
            state["bank"] = None if self._bank is None else self._bank[: self._count].cpu().clone()
        return state

    def load_state_dict(
        self, state: dict[str, Any], inputs_for: Callable[[list[int]], Tensor] | None = None
    ) -> None:
        """Restore :meth:`state_dict`; a tag-recorded bank is rebuilt by pushing ``inputs_for(tag)`` again."""
        if state["size"] != self.size:
            raise ValueError(f"bank size mismatch: saved {state['size']}, configured {self.size}")
        ptr, count = int(state["ptr"]), int(state["count"])
        self._bank, self._history = None, collections.deque()
        if "history" in state:
            if state["history"] and inputs_for is None:
                raise ValueError("this mixup bank state lists batches: pass inputs_for to rebuild them")
            # Replaying the recorded pushes from where the first one started writes every slot as before.
            self._ptr = (ptr - sum(rows for _, rows in state["history"])) % self.size
            for tag, rows in state["history"]:
                x = inputs_for(tag)
                if min(x.shape[0], self.size) != rows:
                    raise ValueError(f"batch {tag} rebuilt with {x.shape[0]} rows; the bank recorded {rows}")
                self.push(x, tag)
            assert self._ptr == ptr, "mixup bank replay did not end where the saved bank did"
            self._count = count
            return
        bank = state["bank"]  # version-2 checkpoints: the data itself
        self._ptr, self._count = ptr, count
        if bank is not None:
            # Moved to the data's device on first use.
            self._bank = torch.zeros((self.size, *bank.shape[1:]), dtype=bank.dtype)
            self._bank[: self._count] = bank


class RandomResizeCrop:
    """BYOL-A's random resize crop, batched: each sample gets its own crop (``docs/augmentations.md``).

    The (F, T) input sits centred in a zero canvas ``virtual_crop_scale`` times larger (per axis:
    frequency, time); a region of ``freq_scale x time_scale`` times the input size (clamped to the
    canvas) is cropped at a uniformly random position and resized back to (F, T) with
    ``interpolation`` (BYOL-A: bicubic). All scales 1 give the identity (up to float rounding).

    ``time_only=True`` leaves the frequency axis exactly as it is (no resize, no shift, whatever
    ``freq_scale`` and the frequency canvas say): a pitch-preserving crop. Resizing or shifting the
    mel axis moves a tone's harmonics, trading pitch for timbre invariance; a narrow ``freq_scale``
    such as (0.95, 1.05) with a frequency canvas of 1 bounds that change instead.
    """

    INTERPOLATIONS = ("bicubic", "bilinear")

    def __init__(
        self,
        virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        interpolation: str = "bicubic",
        time_only: bool = False,
    ):
        if min(virtual_crop_scale) < 1.0:
            raise ValueError(f"virtual crop scales must be >= 1, got {virtual_crop_scale}")
        for lo, hi in (freq_scale, time_scale):
            if not 0 < lo <= hi:
                raise ValueError(f"scale ranges must satisfy 0 < low <= high, got {(lo, hi)}")
        if interpolation not in self.INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {self.INTERPOLATIONS}, got {interpolation!r}")
        self.virtual_crop_scale = tuple(virtual_crop_scale)
        self.freq_scale = tuple(freq_scale)
        self.time_scale = tuple(time_scale)
        self.interpolation = interpolation
        self.time_only = time_only

    def draw(self, n: int, size: tuple[int, int], gen: torch.Generator, device) -> tuple[Tensor, ...]:
        """Per-sample crops for (F, T) inputs: ``(f_length, f_start, t_length, t_start)``, each (n,).

        Lengths are in input pixels, ``U(scale) * size`` clamped to [1, canvas]; starts are canvas
        positions, uniform in [0, canvas - length]. ``time_only``: the frequency crop is the whole
        axis (length F, start 0) and draws nothing.
        """
        out = []
        for axis, (axis_size, canvas_scale, scale) in enumerate(
            zip(size, self.virtual_crop_scale, (self.freq_scale, self.time_scale))
        ):
            if axis == 0 and self.time_only:
                out += [torch.full((n,), float(axis_size), device=device), torch.zeros(n, device=device)]
                continue
            canvas = axis_size * canvas_scale
            length = (_uniform(n, *scale, gen, device) * axis_size).clamp(1.0, canvas)
            start = _rand((n,), gen, device) * (canvas - length)
            out += [length, start]
        return tuple(out)

    def warp(self, x: Tensor, f_length: Tensor, f_start: Tensor, t_length: Tensor, t_start: Tensor) -> Tensor:
        """Resize each sample's crop (as drawn by :meth:`draw`) back to the input size.

        One affine ``grid_sample`` reads straight from the input (its zero padding *is* the canvas).
        With ``align_corners=True`` the crop's first and last pixel centres map to the output's:
        output pixel ``u`` reads input position ``start - pad + u * (length - 1) / (size - 1)``.
        """
        _, _, f, t = x.shape

        def axis(size: int, canvas_scale: float, length: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
            pad = (size * canvas_scale - size) / 2
            denom = max(size - 1, 1)
            slope = (length - 1) / denom
            return slope, 2 * (start - pad) / denom + slope - 1

        a_f, o_f = axis(f, 1.0 if self.time_only else self.virtual_crop_scale[0], f_length, f_start)
        a_t, o_t = axis(t, self.virtual_crop_scale[1], t_length, t_start)
        zero = torch.zeros_like(a_f)
        # affine_grid's x is the last (time) axis, y the frequency axis.
        theta = torch.stack([torch.stack([a_t, zero, o_t], 1), torch.stack([zero, a_f, o_f], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros", align_corners=True)

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        _check_batch(x)
        return self.warp(x, *self.draw(x.shape[0], tuple(x.shape[-2:]), gen, x.device))


class RandomLinearFader:
    """Add a per-sample linear ramp over time from ``a`` to ``b``, ``a, b ~ U(-gain, gain)``.

    In the log domain a ramp is a gain that changes linearly in dB: a fade in or out (BYOL-A).
    """

    def __init__(self, gain: float = 1.0):
        if gain < 0:
            raise ValueError(f"fader gain must be >= 0, got {gain}")
        self.gain = gain

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        _check_batch(x)
        b, t = x.shape[0], x.shape[-1]
        head = _uniform(b, -self.gain, self.gain, gen, x.device)
        tail = _uniform(b, -self.gain, self.gain, gen, x.device)
        pos = torch.linspace(0.0, 1.0, t, device=x.device)
        ramp = head[:, None] + (tail - head)[:, None] * pos[None]  # (B, T)
        return x + ramp.to(x.dtype)[:, None, None, :]


class GaussianNoise:
    """``x + s * N(0, 1)`` with ``s ~ U(0, alpha)`` per sample (paper, footnote 21).

    The footnote writes N(0, lambda); we read lambda as the standard deviation, which with
    alpha = 0.2 means noise up to a fifth of the (unit) data std.
    """

    def __init__(self, alpha: float = 0.2):
        if alpha < 0:
            raise ValueError(f"noise alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        _check_batch(x)
        b = x.shape[0]
        std = _uniform(b, 0.0, self.alpha, gen, x.device).view(b, 1, 1, 1)
        noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)
        return x + (std * noise).to(x.dtype)


class PrePostNorm:
    """Standardise by the batch's own per-channel mean/std (BYOL-A's pre-/post-normalisation)."""

    def __init__(self, eps: float = 1e-7):
        self.eps = eps

    def __call__(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        _check_batch(x)
        dims = (0, 2, 3)
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True).clamp_min(self.eps)
        return (x - mean) / std


def random_keep_indices(batch: int, num_patches: int, ratio: float, gen: torch.Generator) -> Tensor:
    """MAE-style random masking: per sample, shuffle the patch indices and keep the first
    ``num_patches - round(ratio * num_patches)``. Returns (B, K) int64 indices, sorted ascending
    (order is irrelevant to the encoder, which adds positions before dropping; sorting makes the
    result easy to inspect). On the generator's device.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    keep = num_patches - round(ratio * num_patches)
    if keep < 1:
        raise ValueError(f"mask ratio {ratio} leaves no patch of {num_patches}")
    noise = torch.rand((batch, num_patches), generator=gen, device=gen.device)
    return torch.argsort(noise, dim=1)[:, :keep].sort(dim=1).values


def mask_ratio_at(
    step: int, total_steps: int, warmup_steps: int, final_ratio: float, schedule: str = "fixed"
) -> float:
    """Masking ratio at ``step`` (paper, C.3).

    ``"fixed"``: ``final_ratio`` throughout. ``"sine"``: 0 during the warm-up, then a half-period
    sinusoidal ramp ``final_ratio * (1 - cos(pi * p)) / 2`` over progress ``p`` in [0, 1] reaching
    ``final_ratio`` at ``total_steps`` (smooth at both ends, like the cosine LR schedule).
    """
    if schedule == "fixed":
        return final_ratio
    if schedule != "sine":
        raise ValueError(f"unknown mask schedule {schedule!r}; expected 'fixed' or 'sine'")
    if step < warmup_steps:
        return 0.0
    span = total_steps - warmup_steps
    progress = 1.0 if span <= 0 else min((step - warmup_steps) / span, 1.0)
    return final_ratio * 0.5 * (1.0 - math.cos(math.pi * progress))


@dataclass
class AugmentConfig:
    """Which blocks build each view, and their strengths (defaults: the paper's Mixup+RRC+RLF)."""

    mixup: bool = True
    mixup_ratio: float = 0.2  # BYOL-A v2 (TASLP 2023); v1 used 0.4
    mixup_bank_size: int = 2048
    rrc: bool = True
    rrc_virtual_crop_scale: tuple[float, float] = (1.0, 1.5)
    rrc_freq_scale: tuple[float, float] = (0.6, 1.5)
    rrc_time_scale: tuple[float, float] = (0.6, 1.5)
    rrc_interpolation: str = "bicubic"  # as BYOL-A; "bilinear" is a little faster
    # Pitch-preserving RRC: crop and resize time only (the frequency scale and canvas are ignored).
    rrc_time_only: bool = False
    rlf: bool = True
    rlf_gain: float = 1.0
    noise: bool = False
    noise_alpha: float = 0.2
    # Batch pre-/post-normalisation (C.1 "PPN"); the trainer then skips dataset normalisation.
    ppn: bool = False
    # View masking of the second view (C.3, ViT only); 0 disables it.
    mask_ratio: float = 0.0
    mask_schedule: str = "fixed"
    mask_warmup_fraction: float = 0.1  # of total steps; the paper warms up 10 of 100 epochs
    # Waveform-domain blocks (training.augment_wave), before the log-mel; they need a folder prepared
    # with --store waveform. Each applies to a sample with probability *_p; 0 (default) is off.
    wave_gain_p: float = 0.0
    wave_gain_db: float = 6.0  # U(-db, db)
    wave_eq_p: float = 0.0
    wave_eq_db: float = 6.0  # per band, U(-db, db)
    wave_eq_bands: int = 8  # log-spaced control points, 50 Hz .. Nyquist
    wave_reverb_p: float = 0.0
    wave_reverb_rt60: tuple[float, float] = (0.2, 1.0)  # seconds
    wave_reverb_drr_db: tuple[float, float] = (0.0, 12.0)  # direct-to-reverberant ratio
    wave_pitch_p: float = 0.0
    wave_pitch_semitones: float = 2.0  # U(-s, s)
    wave_stretch_p: float = 0.0
    wave_stretch_rate: tuple[float, float] = (0.8, 1.25)  # > 1 plays faster


class ViewAugmenter:
    """Two independently augmented views of a batch: ``v1, v2 = aug(x, gen)``.

    Each view: [pre-norm] -> [mixup] -> [RRC] -> [RLF] -> [noise] -> [post-norm], every block
    switchable by the config. The mixup bank receives the (pre-normalised) batch once, after both
    views are drawn, so neither view can mix a sample with itself.
    """

    def __init__(self, cfg: AugmentConfig | None = None):
        self.cfg = cfg = cfg or AugmentConfig()
        self.norm = PrePostNorm() if cfg.ppn else None
        self.mixup = MixupBank(cfg.mixup_ratio, cfg.mixup_bank_size) if cfg.mixup else None
        self.rrc = (
            RandomResizeCrop(
                cfg.rrc_virtual_crop_scale,
                cfg.rrc_freq_scale,
                cfg.rrc_time_scale,
                cfg.rrc_interpolation,
                cfg.rrc_time_only,
            )
            if cfg.rrc
            else None
        )
        self.rlf = RandomLinearFader(cfg.rlf_gain) if cfg.rlf else None
        self.noise = GaussianNoise(cfg.noise_alpha) if cfg.noise else None

    def _view(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if self.mixup is not None:
            x = self.mixup.mix(x, gen)
        for block in (self.rrc, self.rlf, self.noise):
            if block is not None:
                x = block(x, gen)
        return self.norm(x) if self.norm is not None else x

    @torch.no_grad()
    def __call__(
        self,
        x: Tensor,
        gen: torch.Generator,
        tag: Any = None,
        view_inputs: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``tag`` names the batch (see :meth:`MixupBank.push`): with it a checkpoint stays small.

        ``view_inputs``: each view's own input when the views already differ before these blocks
        (waveform augmentations); ``x`` is then the clean input, which only the mixup bank receives.
        """
        if self.norm is not None:
            x = self.norm(x)
        if view_inputs is None:
            v1, v2 = self._view(x, gen), self._view(x, gen)
        else:
            v1, v2 = (self._view(self.norm(v) if self.norm is not None else v, gen) for v in view_inputs)
        if self.mixup is not None:
            self.mixup.push(x, tag)
        return v1, v2

    def keep_indices(
        self, batch: int, num_patches: int, step: int, total_steps: int, gen: torch.Generator
    ) -> Tensor | None:
        """Patch indices to keep for the masked view at ``step``, or None when nothing is masked."""
        cfg = self.cfg
        warmup = round(cfg.mask_warmup_fraction * total_steps)
        ratio = mask_ratio_at(step, total_steps, warmup, cfg.mask_ratio, cfg.mask_schedule)
        if round(ratio * num_patches) == 0:
            return None
        return random_keep_indices(batch, num_patches, ratio, gen)

    def state_dict(self) -> dict[str, Any]:
        return {"mixup": self.mixup.state_dict() if self.mixup is not None else None}

    def load_state_dict(
        self, state: dict[str, Any], inputs_for: Callable[[list[int]], Tensor] | None = None
    ) -> None:
        """``inputs_for(tag)``: the batch that was passed with ``tag``, to rebuild the mixup bank."""
        if self.mixup is not None and state.get("mixup") is not None:
            prepared = None
            if inputs_for is not None:

                def prepared(tag: list[int]) -> Tensor:  # the bank holds inputs after pre-normalisation
                    x = inputs_for(tag)
                    return self.norm(x) if self.norm is not None else x

            self.mixup.load_state_dict(state["mixup"], prepared)
