"""ABT for MTEB's audio tasks (MAEB, ``pip install mteb``): an mteb encoder and the ModelMeta it needs.

    import mteb
    from hear_abt.mteb import abt_model_meta

    meta = abt_model_meta("path/to/checkpoint")  # any ABT checkpoint: folder, file or Hub id
    results = mteb.evaluate(meta, mteb.get_tasks(tasks=["..."]))

A clip's embedding is its HEAR scene embedding (:func:`hear_abt.get_scene_embeddings`, unchanged), so
MTEB scores the same vectors as heareval's scene tasks. This module imports mteb. Where MTEB can run
offline and what it needs besides: ``docs/benchmarks-other.md``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.modality_collators import AudioCollator

from .embedder import ABTEmbedder
from .hear_api import get_scene_embeddings, load_model
from .weights import default_weights_source, parse_hub_id

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = ["ABTMtebEncoder", "abt_model_meta"]


class ABTMtebEncoder(AbsEncoder):
    """An ABT checkpoint as an MTEB encoder: each audio clip -> its HEAR scene embedding.

    ``model_name``/``revision`` come from the ModelMeta (a Hub id and its revision); ``model_file_path``
    (what :func:`hear_abt.load_model` takes, or a model it returned) overrides them. ``device``: where to
    compute (mteb's default: CUDA when there is one). ``load_options`` go to ``hear_abt.load_model``.
    Clips are embedded one length at a time (no zero padding enters the pooling); audio is checked as the
    HEAR API checks it (:class:`hear_abt.AudioInputError`).
    """

    def __init__(
        self,
        model_name: str = "",
        revision: str | None = None,
        device: str | None = None,
        *,
        model_file_path: str | os.PathLike | ABTEmbedder | None = None,
        **load_options: Any,
    ) -> None:
        if isinstance(model_file_path, ABTEmbedder):
            if load_options:
                raise TypeError(
                    f"ABTMtebEncoder got a loaded model and options {sorted(load_options)}: "
                    "pass the options to hear_abt.load_model instead"
                )
            model = model_file_path
        else:
            source = model_file_path if model_file_path is not None else _hub_source(model_name, revision)
            model = load_model(source, family=None, **load_options)
        self.model_name = model_name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.sampling_rate = int(model.sample_rate)

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        features = getattr(inputs.dataset, "features", None) or {}
        if "audio" not in features:
            raise ValueError(
                f"ABT embeds audio; task {getattr(task_metadata, 'name', '?')!r} gives no audio column "
                f"(columns: {sorted(features)})"
            )
        inputs.collate_fn = AudioCollator(target_sampling_rate=self.sampling_rate)
        out: list[np.ndarray] = []
        for batch in inputs:
            out.extend(self.embed_clips([item["array"] for item in batch["audio"]]))
        return np.stack(out) if out else np.zeros((0, self.model.scene_embedding_size), np.float32)

    def embed_clips(self, clips: list[Any]) -> list[np.ndarray]:
        """Scene embeddings of mono clips at ``sampling_rate`` (arrays of any length), in order."""
        arrays = [_mono(np.asarray(clip)) for clip in clips]
        out: list[np.ndarray | None] = [None] * len(arrays)
        by_length: dict[int, list[int]] = {}
        for i, array in enumerate(arrays):
            by_length.setdefault(array.shape[-1], []).append(i)
        for ids in by_length.values():
            batch = np.stack([arrays[i] for i in ids])
            audio = torch.from_numpy(batch).to(self.device) if batch.dtype.kind == "f" else batch
            embeddings = get_scene_embeddings(audio, self.model).cpu().numpy()
            for i, embedding in zip(ids, embeddings):
                out[i] = embedding
        return out  # type: ignore[return-value]


def _mono(array: np.ndarray) -> np.ndarray:
    """(1, n) -> (n,); anything else is left for the HEAR check (which names the shape)."""
    while array.ndim > 1 and array.shape[0] == 1:
        array = array[0]
    return array


def _hub_source(model_name: str, revision: str | None) -> str:
    if not model_name:
        return ""  # $HEAR_ABT_WEIGHTS, else the released weights
    return f"{model_name}@{revision}" if revision and "@" not in model_name else model_name


def abt_model_meta(
    model_file_path: str | os.PathLike = "",
    *,
    name: str | None = None,
    **load_options: Any,
) -> ModelMeta:
    """The ModelMeta of an ABT checkpoint, for ``mteb.evaluate`` (which loads it through ``loader``).

    ``model_file_path``: what :func:`hear_abt.load_model` takes. ``name`` (``org/name``, where mteb files
    the results): default the Hub id, or ``hear-abt/<folder or file name>`` for a local checkpoint. The
    revision is the Hub revision, else the first 12 hex digits of a sha256 of the weights' tensors.
    """
    source = os.fspath(model_file_path) or default_weights_source("audiontt")
    # Load it now, as mteb will: a bad source or option fails here with load_model's error, not mid-benchmark.
    model = load_model(source, family=None, **load_options)
    hub = parse_hub_id(source) if not Path(source).expanduser().exists() else None
    if name is None:
        name = hub[0] if hub else f"hear-abt/{Path(source).expanduser().resolve().name}"
    revision = (hub[1] if hub else None) or _weights_revision(model.encoder.state_dict())
    n_parameters = sum(p.numel() for p in model.encoder.parameters())
    return ModelMeta(
        loader=ABTMtebEncoder,
        loader_kwargs={"model_file_path": source, **load_options},
        name=name,
        revision=revision,
        release_date=None,
        languages=None,
        n_parameters=n_parameters,
        memory_usage_mb=round(n_parameters * 4 / 2**20, 1),
        max_tokens=None,
        embed_dim=int(model.scene_embedding_size),
        license=None,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference=None,
        similarity_fn_name="cosine",
        use_instructions=False,
        training_datasets=None,
        modalities=["audio"],
    )


def _weights_revision(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]
