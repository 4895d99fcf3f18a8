"""A no-learning reference as a HEAR 2021 module: log-mel mean + standard deviation over time.

    python -m abt_eval.hear_eval ... --logmel-reference     # adds a `logmel` model to the results

Uses hear_abt's front-end (16 kHz, 64 ms Hann window, 10 ms hop, 64 HTK mel bins over 60-7800 Hz,
``log(mel + 1.19e-7)``; no normalisation: a per-dimension affine map would not change a linear probe)
and hear_abt's timestamp windows (950 ms every 50 ms, centred, silence beyond the clip's edges). Scene
embedding: mean and std of each mel bin over the whole clip (clips shorter than 950 ms padded with
silence to 950 ms, as hear_abt does); timestamp embedding: the same over each window. Size 2 * n_mels.
The input rules (shape, dtype, finiteness, sample range) are hear_abt's: the same ``AudioInputError``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hear_abt.config import TIMESTAMP_HOP_MS, FrontendConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.frontend import LogMelFrontend
from hear_abt.hear_api import check_audio

__all__ = ["LogMelReference", "load_model", "get_scene_embeddings", "get_timestamp_embeddings"]


class LogMelReference(nn.Module):
    """Log-mel statistics with the HEAR attributes (no parameters)."""

    # hear_abt's timestamp grid (they read only ``hop_samples`` and ``sample_rate``).
    num_timestamps = ABTEmbedder.num_timestamps
    timestamps_ms = ABTEmbedder.timestamps_ms

    def __init__(self, frontend: FrontendConfig | None = None):
        super().__init__()
        self.config = frontend or FrontendConfig()
        self.frontend = LogMelFrontend(self.config)
        self.sample_rate = int(self.config.sample_rate)
        self.scene_embedding_size = 2 * self.config.n_mels
        self.timestamp_embedding_size = 2 * self.config.n_mels
        self.window_frames = self.config.window_frames
        self.hop_samples = self.sample_rate * TIMESTAMP_HOP_MS // 1000
        self.hop_frames = self.hop_samples // self.config.hop_length
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self.eval()

    @staticmethod
    def _mean_std(mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, 2 * n_mels): mean then (population) std over time."""
        return torch.cat([mel.mean(dim=-1), mel.std(dim=-1, unbiased=False)], dim=-1)

    def scene_embeddings(self, audio: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(audio)
        if mel.shape[-1] < self.window_frames:
            mel = F.pad(mel, (0, self.window_frames - mel.shape[-1]), value=self.config.silence_value)
        return self._mean_std(mel.double()).float()

    def timestamp_embeddings(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_clips, n_samples = audio.shape
        n_ts = self.num_timestamps(n_samples)
        hop = self.config.hop_length
        left = (self.window_frames // 2) * hop
        right = (self.window_frames - self.window_frames // 2) * hop
        mel = self.frontend(F.pad(audio, (left, right))).double()  # window k: frames [k*hop, k*hop + 96)
        # Running sums over time (float64) give every window's mean and variance at once.
        c1 = F.pad(mel.cumsum(-1), (1, 0))
        c2 = F.pad((mel * mel).cumsum(-1), (1, 0))
        starts = torch.arange(n_ts, device=audio.device) * self.hop_frames
        ends = starts + self.window_frames
        mean = (c1[..., ends] - c1[..., starts]) / self.window_frames
        var = ((c2[..., ends] - c2[..., starts]) / self.window_frames - mean * mean).clamp_min(0.0)
        emb = torch.cat([mean, var.sqrt()], dim=1).transpose(1, 2).float().contiguous()  # (B, n_ts, 2 n_mels)
        return emb, self.timestamps_ms(n_samples, audio.device).expand(n_clips, -1).contiguous()


def load_model(model_file_path: str | os.PathLike = "", **unknown: Any) -> LogMelReference:
    """The reference needs no weights: ``model_file_path`` is accepted (heareval passes one) and ignored."""
    if unknown:
        raise TypeError(
            f"load_model() got unexpected options {sorted(unknown)}; the log-mel reference has none"
        )
    return LogMelReference()


def _checked_logmel_input(audio: Any, model: LogMelReference) -> torch.Tensor:
    if not isinstance(model, LogMelReference):
        raise TypeError(f"model must come from abt_eval.logmel.load_model(), got {type(model).__name__}")
    audio = check_audio(audio)
    model.to(audio.device)
    return audio


def get_scene_embeddings(audio: Any, model: LogMelReference) -> torch.Tensor:
    """(n_sounds, n_samples) 16 kHz audio -> (n_sounds, 2 * n_mels) float32."""
    audio = _checked_logmel_input(audio, model)
    with torch.no_grad():
        return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: Any, model: LogMelReference) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> ((n_sounds, n_timestamps, 2 * n_mels) float32, timestamps in ms)."""
    audio = _checked_logmel_input(audio, model)
    with torch.no_grad():
        return model.timestamp_embeddings(audio)
