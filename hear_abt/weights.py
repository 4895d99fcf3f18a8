"""Finding, checking and reading weights: local folders and files, or the Hugging Face Hub.

A released checkpoint is a Hub-style folder::

    config.json          ModelConfig fields + "weights_sha256" of the weights file
    model.safetensors    encoder tensors; its header metadata also carries the config

Loading is strict (a missing or unexpected tensor is an error) and never unpickles a downloaded file:
weights are safetensors, and training checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .config import ModelConfig
from .fileio import atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_ENV = "HEAR_ABT_WEIGHTS"
SAFETENSORS_CONFIG_KEY = "hear_abt_config"
TRAINING_CHECKPOINT_FORMAT = "hear-abt-training"

# Released weights, pinned to a revision so that a bare load_model() is reproducible.
# No paper-grade weights have been published yet (see README): until they are, a bare load fails
# with instructions to train some or to point HEAR_ABT_WEIGHTS at a checkpoint.
DEFAULT_HUB_WEIGHTS = {
    "audiontt": "hear-abt/abt-audiontt-audioset@v1",
    "vitc_b": "hear-abt/abt-vitc-b-audioset@v1",
}

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")

HOW_TO_GET_WEIGHTS = (
    "Produce weights with `python -m training.pretrain ...` then `python -m training.export RUN_DIR OUT_DIR` "
    "(or run `hear-abt demo` for a tiny CPU model), and pass the folder to load_model() or set "
    f"{WEIGHTS_ENV}=/path/to/folder (a folder, a .safetensors or training checkpoint file, or a Hub id org/name[@revision])."
)


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded, verified or matched to the model."""


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    source: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_pretrained(
    folder: str | os.PathLike, config: ModelConfig, state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write a Hub-style checkpoint folder (config.json + model.safetensors)."""
    folder = Path(folder).resolve()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save_safetensors_bytes(tensors, metadata={SAFETENSORS_CONFIG_KEY: config.to_json()})
    atomic_write_bytes(folder / WEIGHTS_NAME, blob)
    meta = config.to_dict()
    meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def _parse_config(data: dict, where: str) -> tuple[ModelConfig, str | None]:
    data = dict(data)
    sha = data.pop("weights_sha256", None)
    try:
        return ModelConfig.from_dict(data), sha
    except (ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"invalid hear-abt config in {where}: {err}") from err


def _read_safetensors(path: Path, expected_sha256: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    blob = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise WeightsError(
            f"{path} does not match the sha256 recorded in its config.json: the file is corrupt or "
            "truncated (an interrupted download?). Delete it (for a Hub download: the cached snapshot) and retry."
        )
    try:
        tensors = load_safetensors_bytes(blob)
        metadata = _safetensors_metadata(blob)
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt."
        ) from err
    return tensors, metadata


def _safetensors_metadata(blob: bytes) -> dict:
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return header.get("__metadata__", {}) or {}


def _load_folder(folder: Path, source: str) -> Checkpoint:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise WeightsError(
                f"{folder} is not a hear-abt checkpoint folder: {p.name} is missing. {HOW_TO_GET_WEIGHTS}"
            )
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{config_path} is not valid JSON ({err}).") from err
    config, sha = _parse_config(data, str(config_path))
    tensors, _ = _read_safetensors(weights_path, sha)
    return Checkpoint(config, tensors, source)


def _load_safetensors_file(path: Path) -> Checkpoint:
    tensors, metadata = _read_safetensors(path, None)
    if SAFETENSORS_CONFIG_KEY in metadata:
        config, _ = _parse_config(json.loads(metadata[SAFETENSORS_CONFIG_KEY]), str(path))
    elif (path.parent / CONFIG_NAME).is_file():
        config, _ = _parse_config(
            json.loads((path.parent / CONFIG_NAME).read_text()), str(path.parent / CONFIG_NAME)
        )
    else:
        raise WeightsError(f"{path} carries no hear-abt config (no metadata, no config.json beside it).")
    return Checkpoint(config, tensors, str(path))


def _load_training_checkpoint(path: Path) -> Checkpoint:
    try:
        # weights_only: a checkpoint is tensors and plain containers; nothing gets unpickled into code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt/unsafe files
        raise WeightsError(f"cannot read training checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{path} is not a hear-abt training checkpoint (no format={TRAINING_CHECKPOINT_FORMAT!r})."
        )
    config, _ = _parse_config(state["model_config"], str(path))
    return Checkpoint(config, state["encoder"], str(path))


def _load_hub(repo_id: str, revision: str | None, source: str) -> Checkpoint:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # LocalEntryNotFoundError subclasses EntryNotFoundError: keep it first.
    try:
        config_path = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    except LocalEntryNotFoundError as err:
        raise WeightsError(
            f"cannot download {repo_id!r} (no network, or HF_HUB_OFFLINE=1) and it is not in the local cache. "
            f"Connect once to cache it, or use local weights. {HOW_TO_GET_WEIGHTS}"
        ) from err
    except RepositoryNotFoundError as err:
        raise WeightsError(
            f"Hub repo {repo_id!r} was not found (or is private: log in with `hf auth login`). {HOW_TO_GET_WEIGHTS}"
        ) from err
    except RevisionNotFoundError as err:
        raise WeightsError(f"revision {revision!r} does not exist in Hub repo {repo_id!r}.") from err
    except EntryNotFoundError as err:
        raise WeightsError(
            f"Hub repo {repo_id!r} has no {CONFIG_NAME}/{WEIGHTS_NAME}: not a hear-abt checkpoint."
        ) from err
    except OSError as err:
        raise WeightsError(f"downloading {repo_id!r} failed: {err}") from err
    return _load_folder(Path(config_path).parent, source)


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``"org/name[@revision]"`` -> (repo id, revision or None); None when ``text`` is not a Hub id."""
    match = _HUB_ID.match(text)
    if match is None or text.startswith((".", "/", "~")):
        return None
    return match["repo"], match["revision"]


def load_checkpoint(source: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint from a folder, a ``.safetensors``/training checkpoint file, or a Hub id."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path.resolve(), str(path.resolve()))
    if path.is_file():
        path = path.resolve()
        if path.suffix == ".safetensors":
            return _load_safetensors_file(path)
        if path.suffix in {".pt", ".pth", ".ckpt"}:
            return _load_training_checkpoint(path)
        if path.name == CONFIG_NAME:
            return _load_folder(path.parent, str(path.parent))
        raise WeightsError(
            f"{path}: unknown weights file type (expected a folder, .safetensors, .pt or .ckpt)."
        )
    hub = parse_hub_id(text)
    if hub is not None:
        return _load_hub(*hub, text)
    raise WeightsError(f"{text!r} is neither an existing file or folder nor a Hub id 'org/name[@revision]'.")


def default_weights_source(family: str) -> str:
    """HEAR_ABT_WEIGHTS if set, else the pinned default Hub checkpoint for this encoder family."""
    return os.environ.get(WEIGHTS_ENV) or DEFAULT_HUB_WEIGHTS[family]
