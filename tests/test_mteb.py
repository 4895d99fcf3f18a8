"""hear_abt.mteb: ABT as an MTEB audio encoder (clip embeddings = the HEAR scene embeddings), its
ModelMeta, and a small local MTEB audio classification task run end to end, offline.

Skips when mteb is not installed (``pip install 'hear-abt[mteb]'``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from signals import make_signal

pytest.importorskip(
    "mteb", reason="mteb is not installed: pip install 'hear-abt[mteb]' (or pip install mteb)"
)

import mteb  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402
from mteb.abstasks import AbsTaskClassification  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import hear_abt  # noqa: E402
from hear_abt import AudioInputError, WeightsError  # noqa: E402
from hear_abt.config import ModelConfig, NormStats  # noqa: E402
from hear_abt.embedder import ABTEmbedder  # noqa: E402
from hear_abt.mteb import ABTMtebEncoder, abt_model_meta  # noqa: E402
from hear_abt.weights import save_pretrained  # noqa: E402

KINDS = ("harmonic", "noise_burst", "clicks")


@pytest.fixture(scope="module")
def ntt_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(
        encoder="audiontt", encoder_kwargs={"channels": 4, "mlp_dim": 16}, norm=NormStats(-6.0, 3.5)
    )
    return save_pretrained(tmp_path_factory.mktemp("ntt"), config, ABTEmbedder(config).encoder.state_dict())


def _clips(n_per_kind, seed=0):
    """Clips of two lengths (1.0 and 1.25 s) at 16 kHz, labelled by kind."""
    rng = np.random.default_rng(seed)
    audio, labels = [], []
    for i in range(n_per_kind):
        for label, kind in enumerate(KINDS):
            audio.append({"array": make_signal(kind, 1.0 + 0.25 * (i % 2), rng), "sampling_rate": 16000})
            labels.append(label)
    return audio, labels


class TinySounds(AbsTaskClassification):
    """A local MTEB audio classification task: numpy signals in memory, nothing downloaded."""

    metadata = TaskMetadata(
        type="AudioClassification",
        name="HearAbtTinySounds",
        main_score="accuracy",
        description="Three kinds of synthetic sound (tests/signals.py), made in memory.",
        reference=None,
        dataset={"path": "NA", "revision": "NA"},
        category="a2c",
        eval_splits=["test"],
        eval_langs=["zxx-Zxxx"],
        date=("2026-01-01", "2026-01-01"),
        dialect=[],
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        modalities=["audio"],
        sample_creation="created",
        bibtex_citation="",
    )
    input_column_name = "audio"
    n_experiments = 2  # mteb's default 10 refits the probe 10 times: slow and not needed here

    def load_data(self, **kwargs):
        splits = {"train": _clips(6, seed=1), "test": _clips(2, seed=2)}
        self.dataset = DatasetDict(
            {name: Dataset.from_dict({"audio": a, "label": y}) for name, (a, y) in splits.items()}
        )
        self.data_loaded = True


def test_model_meta(ntt_dir):
    meta = abt_model_meta(ntt_dir)
    model = hear_abt.load_model(ntt_dir)
    assert meta.name == f"hear-abt/{ntt_dir.name}" and len(meta.revision) == 12
    assert meta.embed_dim == model.scene_embedding_size
    assert meta.n_parameters == sum(p.numel() for p in model.encoder.parameters())
    assert meta.modalities == ["audio"] and meta.loader is ABTMtebEncoder
    assert abt_model_meta(ntt_dir, name="org/abt-test").name == "org/abt-test"
    loaded = meta.load_model(device="cpu")
    assert isinstance(loaded, ABTMtebEncoder) and loaded.sampling_rate == 16000


def test_clip_embeddings_are_the_hear_scene_embeddings(ntt_dir):
    model = hear_abt.load_model(ntt_dir)
    encoder = ABTMtebEncoder(model_file_path=ntt_dir, device="cpu")
    audio, _ = _clips(2)
    loader = DataLoader(Dataset.from_dict({"audio": audio}), batch_size=4)
    embeddings = encoder.encode(
        loader, task_metadata=TinySounds.metadata, hf_split="test", hf_subset="default"
    )
    assert embeddings.shape == (len(audio), model.scene_embedding_size)
    for row, clip in zip(embeddings, audio):
        hear = hear_abt.get_scene_embeddings(torch.from_numpy(clip["array"])[None], model)[0]
        torch.testing.assert_close(torch.from_numpy(row), hear, rtol=1e-5, atol=1e-6)


def test_bad_input_gives_the_hear_api_errors(ntt_dir):
    model = hear_abt.load_model(ntt_dir)
    encoder = ABTMtebEncoder(model_file_path=model, device="cpu")
    nan = np.zeros(1600, np.float32)
    nan[5] = np.nan
    for clip in (nan, np.zeros(1600, np.int16), np.zeros(0, np.float32), np.zeros((2, 1600), np.float32)):
        with pytest.raises(AudioInputError) as hear:
            hear_abt.get_scene_embeddings(clip[None] if clip.ndim == 1 else clip[None], model)
        with pytest.raises(AudioInputError) as ours:
            encoder.embed_clips([clip])
        assert str(ours.value) == str(hear.value)
    with pytest.raises(WeightsError) as hear:
        hear_abt.load_model("not a hub id!")
    with pytest.raises(WeightsError) as ours:
        abt_model_meta("not a hub id!")
    assert str(ours.value) == str(hear.value)
    with pytest.raises(TypeError) as hear:
        hear_abt.load_model(ntt_dir, hop=25)
    with pytest.raises(TypeError) as ours:
        abt_model_meta(ntt_dir, hop=25)
    assert str(ours.value) == str(hear.value)
    with pytest.raises(ValueError, match="no audio column"):
        encoder.encode(
            DataLoader(Dataset.from_dict({"text": ["a"]})),
            task_metadata=TinySounds.metadata,
            hf_split="test",
            hf_subset="default",
        )


def test_mteb_evaluates_a_local_audio_task(ntt_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = mteb.evaluate(abt_model_meta(ntt_dir), TinySounds(), cache=None, show_progress_bar=False)
    (result,) = results.task_results
    score = result.scores["test"][0]["main_score"]
    assert result.task_name == "HearAbtTinySounds" and 0.0 <= score <= 1.0
