"""Random-init checkpoints for the tests, written as users' checkpoints are (save_pretrained)."""

from __future__ import annotations

import torch

from hear_abt.config import ModelConfig, NormStats
from hear_abt.embedder import ABTEmbedder
from hear_abt.weights import save_pretrained


def make_checkpoint(folder, encoder="audiontt", **encoder_kwargs):
    """A checkpoint folder of ``encoder`` with seed-0 weights and non-trivial BatchNorm statistics,
    so that train-mode BatchNorm at inference would show."""
    torch.manual_seed(0)
    config = ModelConfig(encoder=encoder, encoder_kwargs=encoder_kwargs, norm=NormStats(-6.0, 3.5))
    model = ABTEmbedder(config)
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return save_pretrained(folder, config, model.encoder.state_dict())
