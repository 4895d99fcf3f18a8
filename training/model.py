"""The Barlow Twins siamese network: a shared encoder and a projector applied to both views."""

from __future__ import annotations

import torch
from torch import nn

from hear_abt.config import FrontendConfig
from hear_abt.encoders import create_encoder_for

from .config import TrainConfig


def build_projector(in_dim: int, hidden: int, out: int, depth: int) -> nn.Sequential:
    """(depth - 1) x [Linear, BatchNorm1d, ReLU] then a Linear (Barlow Twins' projector shape)."""
    if depth < 1:
        raise ValueError(f"projector depth must be >= 1, got {depth}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(depth - 1):
        layers += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    layers.append(nn.Linear(dim, out, bias=False))
    return nn.Sequential(*layers)


class BarlowTwinsModel(nn.Module):
    """``forward(v1, v2, keep)`` -> projected embeddings (z1, z2) of the two views.

    Both views go through one ``forward`` so that DDP sees a single forward per backward.
    ``keep`` optionally lists the patch tokens of the second view that a ViT keeps (view masking).
    """

    def __init__(self, cfg: TrainConfig, frontend: FrontendConfig):
        super().__init__()
        # ViT encoders are sized for the inference window; they reject other crop lengths clearly.
        self.encoder = create_encoder_for(
            cfg.encoder, cfg.encoder_kwargs, frontend.n_mels, frontend.window_frames
        )
        self.projector = build_projector(
            self.encoder.embed_dim, cfg.projector_hidden, cfg.projector_out, cfg.projector_depth
        )

    def forward(
        self, v1: torch.Tensor, v2: torch.Tensor, keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = self.encoder(v1)
        y2 = self.encoder(v2) if keep is None else self.encoder(v2, keep=keep)
        return self.projector(y1), self.projector(y2)
