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


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)``; without autograd (inference) computed by :func:`_pool2x2`, bit for bit the
    same and about 5x faster on the CPU. With autograd it is MaxPool2d itself: its gradient goes to one
    element of a tie (common after ReLU), torch.maximum's would be split."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        return _pool2x2(x)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        MaxPool2x2(),
    )


def _pool2x2(t: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """``MaxPool2d(2)`` of ``t[..., shift:]`` (floor mode), as 3 elementwise maxima of strided views.

    Bit-identical to ``nn.MaxPool2d(2)`` and several times faster on the CPU (no indices, and a
    time-shifted input needs no contiguous copy). Maxima are exact, so the order of the passes does not
    change the result: a wide input takes the row pairs first (contiguous rows; the strided time pairs
    then run on half the data: a third faster on a clip), a contiguous window edge (2 frames wide) is
    one 1-D pool of 4 consecutive values, anything else takes the time pairs first.
    """
    n, m = (t.shape[-1] - shift) // 2, t.shape[-2] // 2
    t = t[..., : 2 * m, shift : shift + 2 * n]
    if n == 1 and t.stride(-1) == 1 and t.stride(-2) == 2 and t.numel():
        # A window edge's 2 frames, contiguous: each 2x2 block is 4 consecutive values (twice as fast).
        flat = t.reshape(-1, 1, 4 * m)
        return F.max_pool1d(flat, 4).view(*t.shape[:-2], m, 1)
    if n >= 8:
        rows = torch.maximum(t[..., 0::2, :], t[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])
    pairs = torch.maximum(t[..., 0::2], t[..., 1::2])
    return torch.maximum(pairs[..., 0::2, :], pairs[..., 1::2, :])


class AudioNTT(Encoder):
    frame_features_supported = True
    exact_window_reuse = True
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
        return self._with_mlp(self._flatten(self.features(x)))

    def _with_mlp(self, conv_frames: torch.Tensor) -> torch.Tensor:
        """(B, T', conv_dim) conv features -> (B, T', embed_dim): each frame and its MLP features."""
        return torch.cat([conv_frames, self.mlp(conv_frames)], dim=-1)

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

    def window_embeddings(
        self, x: torch.Tensor, n_windows: int, width: int, hop: int, keep_frames: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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

        ``keep_frames``: also return the clip-level conv features of phase 0, (B, T // 4, conv_dim):
        frame m from input frames [4m, 4m + 4), as a pass over ``x`` gives them away from its edges
        (for :meth:`pooled_reusing`).
        """
        stride = self.TIME_STRIDE
        if width % stride or width < 4 * stride:
            raise ValueError(f"window width must be a multiple of {stride} and >= {4 * stride}, got {width}")
        if n_windows < 1 or hop < 1 or hop * (n_windows - 1) + width > x.shape[-1]:
            raise ValueError(f"{n_windows} windows of {width} every {hop} do not fit in {x.shape[-1]} frames")
        block1, block2 = self.features
        (conv1, bn1, relu), (conv2, bn2) = block1[:3], block2[:2]
        b, device = x.shape[0], x.device
        starts = torch.arange(n_windows, device=device) * hop
        ends = starts + width
        # ReLU commutes with max-pooling (both monotone), so it runs after each pool, on 4x less.

        def conv1_edge(at: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
            """The window's pool1 frame next to an edge: conv1 at 2 frames from 3 input frames + padding."""
            patch = x.unfold(-1, 3, 1)[..., at, :].permute(0, 3, 1, 2, 4).flatten(0, 1)  # (B*n, 1, M, 3)
            out = F.conv2d(F.pad(patch, pad), conv1.weight, conv1.bias, conv1.stride, (conv1.padding[0], 0))
            return relu(_pool2x2(bn1(out)))  # (B*n, C, M/2, 1)

        first = conv1_edge(starts, (1, 0))  # window pool1[0]: conv1 at start (padded), start + 1
        last = conv1_edge(ends - 3, (0, 1))  # window pool1[-1]: conv1 at end - 2, end - 1 (padded)
        # Clip pool1, frame i <- conv1 frames 2i + r, + 1, for r = 0, 1. On the CPU conv1 goes one clip at
        # a time: oneDNN's single-input-channel convolution is about twice as fast on one image as on a
        # batch (the output stays in cache), with the same values bit for bit. A GPU takes the batch.
        p1_clips = []
        for clip in x.split(1) if x.device.type == "cpu" else [x]:
            a1 = bn1(conv1(clip))  # (1, C, M, T), before ReLU
            p1_clips.append([relu(_pool2x2(a1, r)) for r in (0, 1)])
        p1 = [torch.cat([clip[r] for clip in p1_clips]) for r in (0, 1)]
        del a1, p1_clips

        # Clip pool1 frames, time-major, both parities in one table: rows for each window's edges.
        n_even = p1[0].shape[-1]
        table = torch.cat([p.permute(0, 3, 1, 2) for p in p1], dim=1)  # (B, T2e + T2o, C, F2)
        parity = starts % 2
        origin = torch.where(parity.bool(), n_even + (starts - 1) // 2, starts // 2)  # window pool1[0]

        def p1_rows(offset: int) -> torch.Tensor:  # (B*n, C, F2): the window's pool1[offset], clip-level
            return table[:, origin + offset].flatten(0, 1)

        half = width // 2  # pool1 frames per window
        # conv2's input for the first and last output frames, transposed (time before frequency):
        # (zero, first, pool1[1], pool1[2]) and (pool1[-3], pool1[-2], last, zero), written in place.
        z = first.new_empty(2, first.shape[0], first.shape[1], 4, first.shape[2])
        z[0, :, :, 0] = 0
        z[0, :, :, 1] = first[..., 0]
        z[0, :, :, 2] = p1_rows(1)
        z[0, :, :, 3] = p1_rows(2)
        z[1, :, :, 0] = p1_rows(half - 3)
        z[1, :, :, 1] = p1_rows(half - 2)
        z[1, :, :, 2] = last[..., 0]
        z[1, :, :, 3] = 0
        z = z.flatten(0, 1)  # (2*B*n, C, 4, F2)
        table = None  # free it: p1_rows is not used below
        w2 = conv2.weight.transpose(-1, -2)
        a2 = F.conv2d(z, w2, conv2.bias, conv2.stride[::-1], (0, conv2.padding[0]))  # 2 positions
        edges = relu(_pool2x2(bn2(a2).transpose(-1, -2)))  # (2*B*n, C, F4, 1)
        edges = self._flatten(edges)[:, 0]  # (2*B*n, conv_dim)
        del z, a2

        phase_conv = [None] * stride  # phase p frame m <- input frames [p + 4m, p + 4m + 4)
        for r in (0, 1):
            a2 = bn2(conv2(p1[r]))
            for shift in (0, 1):
                phase_conv[r + 2 * shift] = self._flatten(relu(_pool2x2(a2, shift)))
        p1.clear()
        del a2
        sizes = [h.shape[1] for h in phase_conv]
        conv_rows = torch.cat([h.flatten(0, 1) for h in phase_conv] + [edges])
        del phase_conv, edges
        # Pool the conv features and their MLP features separately (no concatenated copy).
        parts = (conv_rows, self.mlp(conv_rows))
        pooled = torch.cat(
            [self._pool_windows(part, b, sizes, n_windows, width, hop) for part in parts], dim=-1
        )
        if not keep_frames:
            return pooled
        return pooled, conv_rows[: b * sizes[0]].view(b, sizes[0], -1)

    def pooled_reusing(self, x: torch.Tensor, conv_frames: torch.Tensor, offset: int) -> torch.Tensor:
        """:meth:`pooled_chunked` of ``x`` in one chunk, taking the conv features of the output frames
        that see no zero padding from ``conv_frames``.

        ``conv_frames[:, offset + m]`` must be the conv features of frame m of a pass over a longer
        input that holds ``x`` at input frame ``4 * offset`` (``window_embeddings(..., keep_frames=True)``).
        Frame m sees input frames [4m - 3, 4m + 7) and the padding of both convolutions next to them,
        so it is taken for 1 <= m and 4m + 7 <= T; the others are computed from ``x`` with the context
        :meth:`iter_frame_features` gives a chunk. The MLP and the pooling run as a pass over ``x``
        runs them, so the result is that pass's whenever the conv features are bit for bit the same.
        """
        n_in = x.shape[-1]
        stride = self.TIME_STRIDE
        inner_end = (n_in - 7) // stride + 1  # frames [1, inner_end) are reused
        if inner_end <= 1 or conv_frames.shape[1] < offset + inner_end:
            return self.pooled_chunked(x, n_in // stride * stride)
        left = self._flatten(self.features(x[..., : stride + self.CONTEXT_AFTER]))[:, :1]
        lo = stride * inner_end - self.CONTEXT_BEFORE
        right = self._flatten(self.features(x[..., lo:]))[:, self.CONTEXT_BEFORE // stride :]
        inner = conv_frames[:, offset + 1 : offset + inner_end]
        frames = self._with_mlp(torch.cat([left, inner, right], dim=1))
        return frames.sum(dim=1) / frames.shape[1] + frames.amax(dim=1)

    def _pool_windows(
        self, rows: torch.Tensor, b: int, sizes: list[int], n_windows: int, width: int, hop: int
    ) -> torch.Tensor:
        """Mean + max over each window's output frames, from the rows :meth:`window_embeddings` built.

        ``rows``: the clip frames of the 4 phases (B * sizes[p] rows each) then the windows' first
        and last frames (B * n_windows each). The windows of a phase are ``spacing`` frames apart,
        so their inner frames are sums/maxima of shared blocks of ``spacing`` frames plus a rest.
        """
        stride = self.TIME_STRIDE
        *phase_rows, edge_rows = rows.split([b * n for n in sizes] + [2 * b * n_windows])
        first, last = edge_rows.view(2, b, n_windows, -1)
        out = torch.empty(b, n_windows, rows.shape[-1], device=rows.device, dtype=rows.dtype)
        n_out = width // stride
        inner = n_out - 2 * self.WINDOW_EDGE_FRAMES
        cycle = math.lcm(hop, stride)
        per_cycle, spacing = cycle // hop, cycle // stride  # windows per cycle; their frame spacing
        n_blocks, rest = divmod(inner, spacing)
        for j0 in range(min(per_cycle, n_windows)):
            p = (hop * j0) % stride
            frames = phase_rows[p].view(b, sizes[p], -1)
            lo = (hop * j0 - p) // stride + 1  # phase frame of the first window's output frame 1
            n_win = len(range(j0, n_windows, per_cycle))
            total = first[:, j0::per_cycle] + last[:, j0::per_cycle]
            peak = torch.maximum(first[:, j0::per_cycle], last[:, j0::per_cycle])
            if n_blocks:
                span = frames[:, lo : lo + spacing * (n_win - 1 + n_blocks)].view(
                    b, n_win - 1 + n_blocks, spacing, -1
                )
                block_sum, block_max = span.sum(dim=2), span.amax(dim=2)
                for i in range(n_blocks):
                    total += block_sum[:, i : i + n_win]
                    peak = torch.maximum(peak, block_max[:, i : i + n_win])
            for t in range(rest):
                at = lo + spacing * n_blocks + t
                part = frames[:, at : at + spacing * (n_win - 1) + 1 : spacing]
                total += part
                peak = torch.maximum(peak, part)
            out[:, j0::per_cycle] = total / n_out + peak
        return out


@register_encoder("audiontt", AudioNTT)
def audiontt(n_mels: int = 64, window_frames: int | None = None, **kwargs) -> AudioNTT:
    # Fully convolutional in time: any input length, so window_frames is not needed.
    return AudioNTT(n_mels=n_mels, **kwargs)
