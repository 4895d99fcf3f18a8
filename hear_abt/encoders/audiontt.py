"""AudioNTT encoder (BYOL-A v2 style), written from Niizumi et al. 2022 and Koizumi et al. 2020.

Two 3x3 conv/BN/ReLU/2x2-max-pool blocks turn a (1, 64, T) log-mel into 64 channels x 16 bins per
40 ms frame; each frame's 1024 conv features pass through an MLP to 2048 and both are concatenated
(3072 per frame). A clip embedding is the temporal mean plus the temporal max of the frame features.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .base import Encoder
from .registry import register_encoder


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class AudioNTT(Encoder):
    frame_features_supported = True
    KWARG_RANGES = {"n_mels": (4, 1024), "channels": (1, 4096), "mlp_dim": (1, 65536), "dropout": (0.0, 1.0)}
    # Each output frame sees input frames [4i - 3, 4i + 7): chunked passes add this much context.
    TIME_STRIDE = 4
    CONTEXT_BEFORE = 4
    CONTEXT_AFTER = 8

    def __init__(self, n_mels: int = 64, channels: int = 64, mlp_dim: int = 2048, dropout: float = 0.3):
        super().__init__()
        if n_mels % 4:
            raise ValueError(f"AudioNTT needs n_mels divisible by 4, got {n_mels}")
        self.n_mels = n_mels
        self.features = nn.Sequential(_conv_block(1, channels), _conv_block(channels, channels))
        conv_dim = channels * (n_mels // 4)
        self.mlp = nn.Sequential(
            nn.Linear(conv_dim, mlp_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, mlp_dim),
            nn.ReLU(inplace=True),
        )
        self.embed_dim = conv_dim + mlp_dim

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, T) -> (B, T // 4, embed_dim) per-frame features."""
        h = self.features(x)  # (B, C, F/4, T/4)
        b, c, f, t = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, t, c * f)
        return torch.cat([h, self.mlp(h)], dim=-1)

    def iter_frame_features(self, x: torch.Tensor, chunk_frames: int) -> Iterator[torch.Tensor]:
        """:meth:`frame_features` in consecutive pieces over time chunks, to bound memory.

        Each chunk carries enough context on both sides that its output frames equal those of a
        whole-clip pass exactly (the conv stack's receptive field is 4 frames back, 8 ahead).
        """
        stride = self.TIME_STRIDE
        if chunk_frames % stride or chunk_frames <= 0:
            raise ValueError(f"chunk_frames must be a positive multiple of {stride}")
        total = x.shape[-1]
        n_out = total // stride
        if total <= chunk_frames + self.CONTEXT_AFTER:
            yield self.frame_features(x)
            return
        for start in range(0, n_out * stride, chunk_frames):
            stop = min(start + chunk_frames, n_out * stride)
            lo = max(0, start - self.CONTEXT_BEFORE)
            hi = min(total, stop + self.CONTEXT_AFTER)
            skip = (start - lo) // stride
            yield self.frame_features(x[..., lo:hi])[:, skip : skip + (stop - start) // stride]

    def pooled_chunked(self, x: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        """Same result as ``forward``, in time chunks, holding only running sums and maxima."""
        total, peak, count = None, None, 0
        for frames in self.iter_frame_features(x, chunk_frames):
            chunk_sum, chunk_max = frames.sum(dim=1), frames.amax(dim=1)
            total = chunk_sum if total is None else total + chunk_sum
            peak = chunk_max if peak is None else torch.maximum(peak, chunk_max)
            count += frames.shape[1]
        return total / count + peak

    @staticmethod
    def pool(frames: torch.Tensor) -> torch.Tensor:
        """Temporal mean + temporal max: (B, T', D) -> (B, D)."""
        return frames.mean(dim=1) + frames.amax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.frame_features(x))


@register_encoder("audiontt", AudioNTT)
def audiontt(n_mels: int = 64, window_frames: int | None = None, **kwargs) -> AudioNTT:
    # Fully convolutional in time: any input length, so window_frames is not needed.
    return AudioNTT(n_mels=n_mels, **kwargs)
