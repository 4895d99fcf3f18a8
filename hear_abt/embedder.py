"""The embedding model behind the HEAR API: front-end + normalisation + encoder, and the two ways
of turning a batch of clips into scene and timestamp embeddings with bounded memory."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import TIMESTAMP_HOP_MS, TIMESTAMP_WINDOW_MS, ModelConfig
from .encoders import create_encoder_for
from .frontend import LogMelFrontend, Normalize

TIMESTAMP_MODES = ("faithful", "fast", "per_window")


def window_mean_max(frames: torch.Tensor, starts: torch.Tensor, width: int) -> torch.Tensor:
    """Mean + max of ``frames[:, s : s + width]`` for every start ``s``: (B, T, D) -> (B, n, D).

    Windows overlap heavily, so instead of gathering each one: means come from a float64 running
    sum, maxima from maxima over power-of-two spans (log2(width) passes over the frames).
    """
    csum = F.pad(frames.double().cumsum(dim=1), (0, 0, 1, 0))
    mean = ((csum[:, starts + width] - csum[:, starts]) / width).to(frames.dtype)
    span_max = {1: frames}
    size = 1
    while size * 2 <= width:
        prev = span_max[size]
        span_max[size * 2] = torch.maximum(prev[:, :-size], prev[:, size:])
        size *= 2
    peak, offset = None, 0
    for size in sorted(span_max, reverse=True):  # width as a sum of powers of two
        if width - offset >= size:
            part = span_max[size][:, starts + offset]
            peak = part if peak is None else torch.maximum(peak, part)
            offset += size
    return mean + peak


class ABTEmbedder(nn.Module):
    """An ABT encoder ready for inference, with the HEAR attributes.

    Timestamp embeddings use 950 ms windows every 50 ms, centred on each timestamp (the first at
    0 ms, the last at or before the clip's last sample), with silence beyond the clip's edges.

    - ``timestamp_mode="faithful"``: the paper's embedding, every window encoded on its own (with
      the window's zero padding). For AudioNTT it is computed by exact reuse: frames inside a
      window equal clip-level frames on its grid phase, so only each window's first and last
      output frames are recomputed (:meth:`_reuse_windows`); equal to the per-window pass within
      float rounding.
    - ``timestamp_mode="per_window"``: the same embedding, every window through the whole encoder
      (the reference the exact-reuse path is tested against; the only path for ViTs).
    - ``timestamp_mode="fast"`` (AudioNTT only): frame features are computed once per clip and
      mean+max pooled per window; see the README for how far it is from the faithful mode.

    Work is done in mini-batches of ``window_batch`` windows, and the front-end in time chunks, so
    memory stays bounded whatever the clip length.
    """

    def __init__(self, config: ModelConfig, timestamp_mode: str = "faithful", window_batch: int = 64):
        super().__init__()
        if timestamp_mode not in TIMESTAMP_MODES:
            raise ValueError(f"timestamp_mode must be one of {TIMESTAMP_MODES}, got {timestamp_mode!r}")
        if not isinstance(window_batch, int) or window_batch < 1:
            raise ValueError(f"window_batch must be a positive int, got {window_batch!r}")
        self.config = config
        self.frontend = LogMelFrontend(config.frontend)
        self.normalize = Normalize(config.norm)
        fe = config.frontend
        self.encoder = create_encoder_for(config.encoder, config.encoder_kwargs, fe.n_mels, fe.window_frames)
        if timestamp_mode == "fast" and not self.encoder.frame_features_supported:
            raise ValueError(
                f"timestamp_mode='fast' needs an encoder with frame features (AudioNTT); "
                f"{config.encoder!r} has only 'faithful'"
            )
        self.timestamp_mode = timestamp_mode
        self.window_batch = window_batch

        self.sample_rate = int(fe.sample_rate)
        self.scene_embedding_size = int(self.encoder.embed_dim)
        self.timestamp_embedding_size = int(self.encoder.embed_dim)
        self.window_frames = fe.window_frames
        hop_samples = fe.sample_rate * TIMESTAMP_HOP_MS // 1000
        if hop_samples % fe.hop_length:
            raise ValueError("timestamp hop must be a whole number of front-end frames")
        self.hop_samples = hop_samples
        self.hop_frames = hop_samples // fe.hop_length
        if round(TIMESTAMP_WINDOW_MS * fe.sample_rate / 1000 / fe.hop_length) + 1 != fe.window_frames:
            raise ValueError("front-end window_frames does not span the 950 ms timestamp window")
        self.eval()

    # ---- front-end -------------------------------------------------------------------------

    def logmel(self, audio: torch.Tensor, chunk_frames: int = 6000) -> torch.Tensor:
        """(B, N) -> (B, n_mels, 1 + N // hop) log-mel, computed in time chunks (bounded memory).

        Equal to the whole-clip centred STFT: each chunk is framed from the zero-padded clip.
        """
        fe = self.config.frontend
        n_frames = fe.samples_to_frames(audio.shape[-1])
        if n_frames <= chunk_frames:
            if audio.device.type == "cpu" and len(audio) > 1:
                # One clip at a time on the CPU: the STFT's arrays stay in cache, about 1.5x faster for
                # a batch of 5-s clips, the same values bit for bit (every frame is transformed alike).
                return torch.cat([self.frontend(clip) for clip in audio.split(1)])
            return self.frontend(audio)
        half = fe.n_fft // 2
        padded = F.pad(audio, (half, half))
        out = []
        for f0 in range(0, n_frames, chunk_frames):
            f1 = min(f0 + chunk_frames, n_frames)
            segment = padded[:, f0 * fe.hop_length : (f1 - 1) * fe.hop_length + fe.n_fft]
            out.append(self.frontend(segment, center=False))
        return torch.cat(out, dim=-1)

    @property
    def budget_frames(self) -> int:
        """Log-mel frames encoded at once: ``window_batch`` windows' worth (bounds activation memory).

        Every pass through the encoder is sized by it, here and in callers that feed the encoder in
        pieces of their own (``hear_abt.streaming``).
        """
        return self.window_frames * self.window_batch

    def encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(n, n_mels, frames) raw log-mel windows -> (n, D) float32 embeddings, each window encoded on
        its own, ``window_batch`` windows per pass (memory bounded by :attr:`budget_frames`)."""
        if len(windows) <= self.window_batch:
            return self._encode(windows).contiguous()  # as torch.cat below gives it
        return torch.cat(
            [
                self._encode(windows[i : i + self.window_batch])
                for i in range(0, len(windows), self.window_batch)
            ]
        )

    def _encode(self, windows: torch.Tensor) -> torch.Tensor:
        """One pass: (n, n_mels, frames) raw log-mel windows -> (n, D) float32 embeddings."""
        x = self.normalize(windows).unsqueeze(1)
        return self.encoder(x).float()

    # ---- timestamps ------------------------------------------------------------------------

    def num_timestamps(self, n_samples: int) -> int:
        """Timestamps at 0, hop, 2 hop, ... up to the last sample (never past the clip's end)."""
        return (n_samples - 1) // self.hop_samples + 1

    def timestamps_ms(self, n_samples: int, device: torch.device) -> torch.Tensor:
        k = torch.arange(self.num_timestamps(n_samples), device=device, dtype=torch.float64)
        # From sample counts, in float64, so that long clips do not drift.
        return (k * self.hop_samples * 1000.0 / self.sample_rate).float()

    def _centred_logmel(self, audio: torch.Tensor) -> torch.Tensor:
        """Log-mel on a frame grid where window k is frames [k*hop_frames, k*hop_frames + window_frames).

        Silence is padded so that timestamp k sits at frame 48 of its 96-frame window.
        """
        fe = self.config.frontend
        left = (self.window_frames // 2) * fe.hop_length
        right = (self.window_frames - self.window_frames // 2) * fe.hop_length
        return self.logmel(F.pad(audio, (left, right)))

    def _group_size(self, frames_per_clip: int) -> int:
        """How many clips to take through the front-end together (at least one)."""
        return max(1, self.budget_frames // max(frames_per_clip, 1))

    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) float32 audio -> ((B, T, D) embeddings, (B, T) timestamps in ms)."""
        n_clips, n_samples = audio.shape
        n_ts = self.num_timestamps(n_samples)
        out = torch.empty(n_clips, n_ts, self.timestamp_embedding_size, device=audio.device)
        group = self._group_size(self.config.frontend.samples_to_frames(n_samples))
        for s in range(0, n_clips, group):
            self._timestamp_fill(self._centred_logmel(audio[s : s + group]), out[s : s + group])
        ts = self.timestamps_ms(n_samples, audio.device).expand(n_clips, -1).contiguous()
        return out, ts

    def _timestamp_fill(self, mel: torch.Tensor, out: torch.Tensor) -> Optional[torch.Tensor]:
        """Timestamp embeddings of clips from their log-mel on the timestamp grid, into ``out``.

        Returns the clip-level conv features of grid phase 0 (for the scene) when the fill computed
        them all in one pass (AudioNTT's exact reuse), else None."""
        fill = {
            "faithful": self._reuse_windows if self._exact_reuse else self._per_window_windows,
            "per_window": self._per_window_windows,
            "fast": self._fast_windows,
        }[self.timestamp_mode]
        return fill(mel, out)

    def _per_window_windows(self, mel: torch.Tensor, out: torch.Tensor) -> None:
        """Encode every window of (g, n_mels, frames) into ``out`` (g, n_ts, D), ``window_batch`` at a time."""
        n_clips, n_ts = out.shape[:2]
        windows = mel.unfold(-1, self.window_frames, self.hop_frames)  # view: (g, n_mels, n_ts, frames)
        flat = out.view(n_clips * n_ts, -1)
        for i in range(0, n_clips * n_ts, self.window_batch):
            ids = torch.arange(i, min(i + self.window_batch, n_clips * n_ts), device=mel.device)
            flat[ids] = self._encode(windows[ids // n_ts, :, ids % n_ts])  # copies only this batch

    @property
    def _exact_reuse(self) -> bool:
        """Whether faithful windows are assembled from shared frames (declared by the encoder)."""
        return self.encoder.exact_window_reuse

    def _reuse_windows(self, mel: torch.Tensor, out: torch.Tensor) -> None:
        """Faithful windows of (g, n_mels, frames) into ``out`` (g, n_ts, D) by exact reuse (AudioNTT).

        Window k covers frames [5k, 5k + 96) and sits on grid phase 5k mod 4 of the encoder's
        4-frame output grid; its output frames 1..22 never see the window's zero padding, so they
        equal clip-level frames of that phase, computed once (``AudioNTT.window_embeddings``), and
        only its first and last output frames are recomputed. Windows go through in consecutive
        runs of about ``window_batch`` windows' worth of frames (all clips of the group together),
        which bounds memory; consecutive runs share 91 frames, recomputed (a few percent).
        """
        n_clips, n_ts = out.shape[:2]
        width, hop = self.window_frames, self.hop_frames
        x = self.normalize(mel).unsqueeze(1)  # (g, 1, n_mels, frames)
        per_run = max(1, (self.budget_frames // n_clips - width) // hop + 1)
        if per_run >= n_ts:  # one run: keep its clip-level frames for the scene
            segment = x[..., : hop * (n_ts - 1) + width]
            windows, frames = self.encoder.window_embeddings(segment, n_ts, width, hop, keep_frames=True)
            out.copy_(windows)
            return frames
        for k0 in range(0, n_ts, per_run):
            k1 = min(n_ts, k0 + per_run)
            segment = x[..., hop * k0 : hop * (k1 - 1) + width]
            out[:, k0:k1] = self.encoder.window_embeddings(segment, k1 - k0, width, hop)
        return None

    def _fast_windows(self, mel: torch.Tensor, out: torch.Tensor) -> None:
        """AudioNTT frame features computed once per clip, mean+max pooled per window into ``out``.

        Frames stream through in time chunks and each window is pooled as soon as its frames exist,
        so memory holds one chunk of frame features, not the whole clip's.
        """
        encoder = self.encoder
        stride = encoder.TIME_STRIDE
        per_window = self.window_frames // stride
        n_ts = out.shape[1]
        # A few silence frames on the right so that the last window's pooled span exists.
        mel = F.pad(mel, (0, stride), value=self.config.frontend.silence_value)
        x = self.normalize(mel).unsqueeze(1)
        chunk = max(stride, self.budget_frames // mel.shape[0] // stride * stride)
        # Window k spans frames [5k, 5k + 96): pool the 24 feature frames (4 frames each) nearest to it.
        starts = (torch.arange(n_ts, device=mel.device) * self.hop_frames + stride // 2) // stride
        buffer, buffer_start, k = None, 0, 0
        for frames in encoder.iter_frame_features(x, chunk):
            buffer = frames if buffer is None else torch.cat([buffer, frames], dim=1)
            ready = int(torch.searchsorted(starts + per_window, buffer_start + buffer.shape[1], right=True))
            if ready > k:
                out[:, k:ready] = window_mean_max(buffer, starts[k:ready] - buffer_start, per_window)
            k = ready
            if k < n_ts:  # frames before the next window's start are no longer needed
                drop = int(starts[k]) - buffer_start
                buffer, buffer_start = buffer[:, drop:], buffer_start + drop
        if k != n_ts:
            raise RuntimeError(f"fast mode pooled {k} of {n_ts} windows")

    # ---- scenes ----------------------------------------------------------------------------

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) float32 audio -> (B, D).

        AudioNTT: mean + max of the frame features over the whole clip. ViT: mean of [CLS] over
        consecutive 96-frame chunks, the last one padded with silence (and no empty chunk). Clips
        shorter than one window (950 ms) are padded with silence to one window.
        """
        n_clips, n_samples = audio.shape
        out = torch.empty(n_clips, self.scene_embedding_size, device=audio.device)
        group = self._group_size(self._scene_frames(n_samples))
        for s in range(0, n_clips, group):
            out[s : s + group] = self._scene_from_logmel(self.logmel(audio[s : s + group]))
        return out

    def scene_and_timestamp_embeddings(
        self, audio: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both embeddings of (B, N) audio from one log-mel: (B, D), (B, T, D), (B, T) ms.

        The timestamp grid's log-mel is the clip's padded with silence samples on both sides (more
        than the STFT reaches), so its frames [window/2, window/2 + n_frames) are the clip's own
        frames, from the same samples: the scene is computed from them instead of a second STFT.
        Equal to :meth:`scene_embeddings` and :meth:`timestamp_embeddings` up to float rounding
        (the timestamp embeddings are the same computation).
        """
        n_clips, n_samples = audio.shape
        n_frames = self.config.frontend.samples_to_frames(n_samples)
        first = self.window_frames // 2
        scene = torch.empty(n_clips, self.scene_embedding_size, device=audio.device)
        emb = torch.empty(
            n_clips, self.num_timestamps(n_samples), self.timestamp_embedding_size, device=audio.device
        )
        group = self._group_size(max(self._scene_frames(n_samples), n_frames + self.window_frames))
        for s in range(0, n_clips, group):
            mel = self._centred_logmel(audio[s : s + group])
            frames = self._timestamp_fill(mel, emb[s : s + group])
            clip_mel = mel[..., first : first + n_frames]
            if (
                frames is not None
                and n_frames >= self.window_frames
                and first % self.encoder.TIME_STRIDE == 0
            ):
                # The windows' pass already holds the clip's frame features: only its edges are new.
                x = self.normalize(clip_mel).unsqueeze(1)
                offset = first // self.encoder.TIME_STRIDE
                scene[s : s + group] = self.encoder.pooled_reusing(x, frames, offset).float()
            else:
                scene[s : s + group] = self._scene_from_logmel(clip_mel)
        ts = self.timestamps_ms(n_samples, audio.device).expand(n_clips, -1).contiguous()
        return scene, emb, ts

    def _scene_frames(self, n_samples: int) -> int:
        """Log-mel frames a scene pass holds per clip (padded to whole windows)."""
        n_frames = self.config.frontend.samples_to_frames(n_samples)
        return math.ceil(n_frames / self.window_frames) * self.window_frames

    def _scene_from_logmel(self, mel: torch.Tensor) -> torch.Tensor:
        """(g, n_mels, n_frames) raw log-mel of whole clips -> (g, D) scene embeddings."""
        g, n_mels, n_frames = mel.shape
        silence = self.config.frontend.silence_value
        if self.encoder.frame_features_supported:
            if n_frames < self.window_frames:
                mel = F.pad(mel, (0, self.window_frames - n_frames), value=silence)
            x = self.normalize(mel).unsqueeze(1)
            stride = self.encoder.TIME_STRIDE
            chunk = max(stride, self.budget_frames // g // stride * stride)
            return self.encoder.pooled_chunked(x, chunk).float()
        n_chunks = math.ceil(n_frames / self.window_frames)
        mel = F.pad(mel, (0, n_chunks * self.window_frames - n_frames), value=silence)
        chunks = mel.reshape(g, n_mels, n_chunks, self.window_frames).permute(0, 2, 1, 3)
        cls = self.encode_windows(chunks.reshape(g * n_chunks, n_mels, self.window_frames))
        return cls.view(g, n_chunks, -1).mean(dim=1)
