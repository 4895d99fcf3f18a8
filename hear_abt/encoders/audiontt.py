"""AudioNTT encoder (BYOL-A v2 style), written from Niizumi et al. 2022 and Koizumi et al. 2020.

Two 3x3 conv/BN/ReLU/2x2-max-pool blocks turn a (1, 64, T) log-mel into 64 channels x 16 bins per
40 ms frame; each frame's 1024 conv features pass through an MLP to 2048 and both are concatenated
(3072 per frame). A clip embedding is the temporal mean plus the temporal max of the frame features.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
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

    # ---- exact reuse of clip-level frames inside windows (the faithful timestamp mode) -------
    # A window of 4n input frames gives n output frames; output i sees window frames [4i-3, 4i+7).
    # Only outputs 0 and n-1 see the window's own zero padding: conv1 pads input frame -1 (seen by
    # conv1[0] -> pool1[0] -> conv2[0..1] -> output 0) and frame 4n (-> output n-1); conv2 pads
    # pool1 frame -1 (seen by conv2[0] -> output 0) and frame 2n (-> output n-1). Output 1 reads
    # pool1[1..4] = conv1[2..9], which see input [1, 11): no padding. So one edge frame at each
    # end; the frames in between equal those of a pass over the clip on the same 4-frame grid.
    # tests/test_exact_reuse.py checks this count by experiment.
    WINDOW_EDGE_FRAMES = 1

    @staticmethod
    def _flatten(h: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) conv output -> (B, T, C * F) frames, laid out as :meth:`frame_features` does."""
        b, c, f, t = h.shape
        return h.permute(0, 3, 1, 2).reshape(b, t, c * f)

    def window_embeddings(self, x: torch.Tensor, n_windows: int, width: int, hop: int) -> torch.Tensor:
        """``forward`` of every window ``x[..., hop * j : hop * j + width]``, by exact reuse.

        ``x``: (B, 1, n_mels, T) normalised input that holds all ``n_windows`` windows; ``width``
        a multiple of 4. Returns (B, n_windows, embed_dim), equal to encoding each window on its
        own (with its own zero padding) within float rounding, at a fraction of the cost:

        - conv1 (+BN+ReLU) runs once over ``x``; pool1 at both parities, conv2 (+BN+ReLU) on each
          and pool2 at both offsets give clip-level frames on all 4 grid phases (phases p and
          p + 2 share everything before pool2); the MLP runs once per clip-level frame;
        - a window on phase p = (hop * j) mod 4 takes its output frames 1 .. n-2 from phase p;
        - its first and last output frames are recomputed: the conv1 value at each window edge
          (from the edge's 2 input frames and the zero padding), the edge pool1 frame, then conv2
          at the 2 positions pool2 needs, from that pool1 frame, two clip-level pool1 frames and
          the zero padding;
        - the n frames are pooled (mean + max), the reused ones through sums and maxima of blocks
          shared by the windows of a phase (they are lcm(hop, 4) / 4 frames apart).
        """
        stride = self.TIME_STRIDE
        if width % stride or width < 4 * stride:
            raise ValueError(f"window width must be a multiple of {stride} and >= {4 * stride}, got {width}")
        if n_windows < 1 or hop < 1 or hop * (n_windows - 1) + width > x.shape[-1]:
            raise ValueError(f"{n_windows} windows of {width} every {hop} do not fit in {x.shape[-1]} frames")
        block1, block2 = self.features
        conv1, conv2 = block1[0], block2[0]
        act1, act2 = block1[1:-1], block2[1:-1]  # BN + ReLU
        pool1, pool2 = block1[-1], block2[-1]
        b, device = x.shape[0], x.device
        starts = torch.arange(n_windows, device=device) * hop
        ends = starts + width

        def rows(t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:  # (B, C, F, T) -> (B * n, C, F, 1)
            return t[..., at].permute(0, 3, 1, 2).flatten(0, 1).unsqueeze(-1)

        def conv1_at_edge(at: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
            """conv1 + BN + ReLU at one frame next to the padding: from frames at, at + 1."""
            pair = x.unfold(-1, 2, 1)[..., at, :]  # (B, 1, M, n, 2)
            pair = pair.permute(0, 3, 1, 2, 4).flatten(0, 1)  # (B * n, 1, M, 2)
            out = F.conv2d(F.pad(pair, pad), conv1.weight, conv1.bias, conv1.stride, (conv1.padding[0], 0))
            return act1(out)  # (B * n, C, M, 1)

        a1 = act1(conv1(x))  # (B, C, M, T)
        # The window's pool1 frames 0 and n2-1 (the only ones that see its conv1 padding).
        first = pool1(torch.cat([conv1_at_edge(starts, (1, 0)), rows(a1, starts + 1)], dim=-1))
        last = pool1(torch.cat([rows(a1, ends - 2), conv1_at_edge(ends - 2, (0, 1))], dim=-1))
        p1 = [pool1(a1[..., r:]) for r in (0, 1)]  # clip pool1, frame i <- conv1 frames 2i + r, 2i + r + 1
        del a1

        parity = (starts % 2).repeat(b)[:, None, None, None]  # per (clip, window) row

        def p1_rows(offset: torch.Tensor) -> torch.Tensor:  # clip pool1 frame (start - r) / 2 + offset
            even = rows(p1[0], (starts // 2 + offset).clamp(0, p1[0].shape[-1] - 1))
            odd = rows(p1[1], ((starts - 1) // 2 + offset).clamp(0, p1[1].shape[-1] - 1))
            return torch.where(parity.bool(), odd, even)

        half = width // 2  # pool1 frames per window
        zero = torch.zeros_like(first)
        z = torch.cat(
            [
                torch.cat([zero, first, p1_rows(1), p1_rows(2)], dim=-1),
                torch.cat([p1_rows(half - 3), p1_rows(half - 2), last, zero], dim=-1),
            ]
        )  # (2 * B * n, C, F2, 4): conv2's input for the window's first and last output frames
        a2 = F.conv2d(z, conv2.weight, conv2.bias, conv2.stride, (conv2.padding[0], 0))  # 2 positions
        edges = self._flatten(pool2(act2(a2)))[:, 0]  # (2 * B * n, conv_dim)
        del z, a2, first, last

        phase_conv = []  # phase p frame m <- input frames [p + 4m, p + 4m + 4)
        for r in (0, 1):
            a2 = act2(conv2(p1[r]))
            phase_conv += [self._flatten(pool2(a2[..., shift:])) for shift in (0, 1)]  # phases r, r + 2
        phase_conv = [phase_conv[0], phase_conv[2], phase_conv[1], phase_conv[3]]
        p1.clear()
        del a2
        sizes = [h.shape[1] for h in phase_conv]
        flat = torch.cat([h.flatten(0, 1) for h in phase_conv] + [edges])
        feats = torch.cat([flat, self.mlp(flat)], dim=-1)  # as frame_features: conv then MLP features
        del flat, phase_conv, edges
        *phase_flat, edge_flat = feats.split([b * n for n in sizes] + [2 * b * n_windows])
        phase_feats = [f.view(b, n, -1) for f, n in zip(phase_flat, sizes)]
        first_f, last_f = edge_flat.view(2, b, n_windows, -1)

        out = torch.empty(b, n_windows, feats.shape[-1], device=device, dtype=feats.dtype)
        n_out = width // stride
        inner = n_out - 2 * self.WINDOW_EDGE_FRAMES
        cycle = math.lcm(hop, stride)
        per_cycle, spacing = cycle // hop, cycle // stride  # windows per cycle; their frame spacing
        n_blocks, rem = divmod(inner, spacing)
        for j0 in range(min(per_cycle, n_windows)):
            ks = torch.arange(j0, n_windows, per_cycle, device=device)
            p = (hop * j0) % stride
            frames = phase_feats[p]
            first_inner = (hop * j0 - p) // stride + 1  # phase frame of the first window's output 1
            n_win = len(ks)
            parts_sum, parts_max = [first_f[:, ks], last_f[:, ks]], [first_f[:, ks], last_f[:, ks]]
            if n_blocks:
                span = frames[:, first_inner : first_inner + spacing * (n_win - 1 + n_blocks)]
                span = span.reshape(b, n_win - 1 + n_blocks, spacing, -1)
                block_sum = span.sum(dim=2).unfold(1, n_blocks, 1)  # (B, n_win, D, n_blocks)
                block_max = span.amax(dim=2).unfold(1, n_blocks, 1)
                parts_sum.append(block_sum.sum(dim=-1))
                parts_max.append(block_max.amax(dim=-1))
            for t in range(rem):
                at = first_inner + spacing * torch.arange(n_win, device=device) + spacing * n_blocks + t
                parts_sum.append(frames[:, at])
                parts_max.append(frames[:, at])
            total = torch.stack(parts_sum).sum(dim=0)
            peak = torch.stack(parts_max).amax(dim=0)
            out[:, ks] = total / n_out + peak
        return out


@register_encoder("audiontt", AudioNTT)
def audiontt(n_mels: int = 64, window_frames: int | None = None, **kwargs) -> AudioNTT:
    # Fully convolutional in time: any input length, so window_frames is not needed.
    return AudioNTT(n_mels=n_mels, **kwargs)
