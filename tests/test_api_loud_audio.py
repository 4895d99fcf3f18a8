"""The HEAR API on finite but absurdly loud audio: a clear error, never NaN embeddings."""

from __future__ import annotations

import pytest
import torch

import hear_abt
from hear_abt.config import ModelConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.hear_api import MAX_ABS_SAMPLE


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ABTEmbedder(ModelConfig(encoder_kwargs={"channels": 8, "mlp_dim": 32})).eval()


def test_audio_beyond_the_float32_range_is_refused_naming_the_sound(model):
    audio = torch.randn(3, 16000) * 0.1
    audio[1] *= 1e20  # std ~1e19: the power spectrum would overflow to inf, the embedding to NaN
    for embed in (hear_abt.get_scene_embeddings, hear_abt.get_timestamp_embeddings):
        with pytest.raises(
            hear_abt.AudioInputError,
            match=r"sound\(s\) \[1\] has samples up to [0-9.]+e\+19, beyond.*scale it",
        ):
            embed(audio, model)


def test_loud_but_computable_audio_gives_finite_embeddings(model):
    audio = torch.randn(2, 16000)
    audio[0] *= MAX_ABS_SAMPLE / float(audio[0].abs().max())  # exactly at the bound
    scene = hear_abt.get_scene_embeddings(audio, model)
    emb, _ = hear_abt.get_timestamp_embeddings(audio, model)
    assert torch.isfinite(scene).all() and torch.isfinite(emb).all()
