"""Finding, checking and reading weights: local folders and files, or the Hugging Face Hub.

A released checkpoint is a Hub-style folder::

    config.json          ModelConfig fields + "weights_sha256" of the weights file
                         + "config_sha256" of the config fields (canonical JSON, see config_sha256)
    model.safetensors    encoder tensors; its header metadata also carries the config

Loading is strict and never unpickles a downloaded file: weights are safetensors, and training
checkpoints are read with ``torch.load(weights_only=True)``. Before any model is built, the config is
validated (every field's type and range, the encoder dry-built on the ``meta`` device) and every
tensor is checked against that encoder: no missing or unexpected name, the right shape, a floating
dtype where the encoder has floating parameters (int64/bool weights are refused), and finite values.
Integrity: the weights' sha256 and the config's sha256 are both checked; folders written before
``config_sha256`` existed are checked against the config the (checksummed) weights file carries.
"""

from __future__ import annotations

import errno
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

WEIGHTS_SHA_KEY = "weights_sha256"
CONFIG_SHA_KEY = "config_sha256"

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
# The defaults above that have actually been published. A bare load of an unpublished default fails
# at once with instructions, instead of asking the Hub (and retrying) for a repo that does not exist.
RELEASED_HUB_WEIGHTS: frozenset[str] = frozenset()

# The Hub's rules for repo ids (huggingface_hub.utils.validate_repo_id, ASCII only): "namespace/name",
# each part of letters, digits and "._-", at most 96 characters, not starting or ending with "." or "-",
# no "--" or "..", not ending in ".git". Revisions are git refs ("main", "v1", "refs/pr/1") or commits.
HUB_PART_MAX = 96
HUB_REVISION_MAX = 255
_HUB_PART_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_HUB_REVISION_CHARS = re.compile(r"[A-Za-z0-9._+/-]+")

HOW_TO_GET_WEIGHTS = (
    "Produce weights with `python -m training.pretrain ...` then `python -m training.export RUN_DIR OUT_DIR` "
    "(or run `python -m training.demo` for a tiny CPU model), and pass the folder to load_model() or set "
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


def config_sha256(fields: dict) -> str:
    """sha256 of a config's fields (without the two checksums) as canonical JSON (sorted keys, compact)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_pretrained(
    folder: str | os.PathLike, config: ModelConfig, state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write a Hub-style checkpoint folder (config.json + model.safetensors), both checksummed."""
    folder = Path(folder).resolve()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save_safetensors_bytes(tensors, metadata={SAFETENSORS_CONFIG_KEY: config.to_json()})
    atomic_write_bytes(folder / WEIGHTS_NAME, blob)
    fields = config.to_dict()
    meta = {
        **fields,
        WEIGHTS_SHA_KEY: hashlib.sha256(blob).hexdigest(),
        CONFIG_SHA_KEY: config_sha256(fields),
    }
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def _parse_config(data: object, where: str) -> tuple[ModelConfig, str | None]:
    """Validate a config (type and range of every field) and check its own checksum if it has one."""
    if not isinstance(data, dict):
        raise WeightsError(
            f"invalid hear-abt config in {where}: expected a JSON object, got {type(data).__name__}"
        )
    fields = dict(data)
    sha = fields.pop(WEIGHTS_SHA_KEY, None)
    expected_config_sha = fields.pop(CONFIG_SHA_KEY, None)
    try:
        config = ModelConfig.from_dict(fields)
    except (ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"invalid hear-abt config in {where}: {err}") from err
    if expected_config_sha is not None:
        try:
            actual = config_sha256(fields)
        except ValueError:  # NaN/Inf cannot be canonical JSON; from_dict refuses them anyway
            actual = None
        if actual != expected_config_sha:
            raise WeightsError(
                f"{where} does not match its {CONFIG_SHA_KEY}: the config was edited or corrupted after "
                "export. Restore the original file (for a Hub download: delete the cached snapshot and retry)."
            )
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise WeightsError(
            f"invalid hear-abt config in {where}: {WEIGHTS_SHA_KEY} is not a sha256 hex digest"
        )
    return config, sha


def check_state_dict(config: ModelConfig, state_dict: object, source: str) -> None:
    """Check tensors against the encoder ``config`` describes, before anything is allocated for it.

    Against the encoder's ``meta``-device state_dict (:meth:`ModelConfig.meta_state_dict`, no memory),
    every tensor must exist there with the same shape, be floating point where the encoder's is (int64
    or bool weights are refused), have its exact dtype otherwise (BatchNorm's int64 counters), and
    hold only finite values.
    """
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise WeightsError(f"weights in {source} are not a mapping of tensor names to tensors")
    expected = config.meta_state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = ([f"Missing keys {missing[:8]}"] if missing else []) + (
            [f"Unexpected keys {unexpected[:8]}"] if unexpected else []
        )
        raise WeightsError(
            f"weights in {source} do not fit the {config.encoder!r} encoder its config describes: "
            + "; ".join(parts)
        )
    for name, want in expected.items():
        got = state_dict[name]
        if tuple(got.shape) != tuple(want.shape):
            raise WeightsError(
                f"weights in {source} do not fit the {config.encoder!r} encoder: size mismatch for {name}: "
                f"the file has {tuple(got.shape)}, the config's encoder needs {tuple(want.shape)}"
            )
        if want.dtype.is_floating_point:
            if not got.dtype.is_floating_point:
                raise WeightsError(
                    f"weights in {source}: tensor {name} is {got.dtype}, but the encoder needs floating point "
                    f"({want.dtype}): the file is corrupt or was not written by hear-abt"
                )
            if not bool(torch.isfinite(got).all()):
                bad = int((~torch.isfinite(got)).sum())
                raise WeightsError(
                    f"weights in {source}: tensor {name} holds {bad} NaN/Inf value(s): the model diverged "
                    "or the file is corrupt; use an earlier checkpoint"
                )
        elif got.dtype != want.dtype:
            raise WeightsError(f"weights in {source}: tensor {name} is {got.dtype}, expected {want.dtype}")


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
    data = _read_json(config_path)
    config, sha = _parse_config(data, str(config_path))
    tensors, metadata = _read_safetensors(weights_path, sha)
    if sha is not None and SAFETENSORS_CONFIG_KEY in metadata:
        # The weights file is checksummed and carries the config it was saved with: config.json must
        # say the same (this also covers folders written before config_sha256 existed).
        embedded = _embedded_config(metadata, weights_path)
        if embedded != config:
            raise WeightsError(
                f"{config_path} differs from the config stored inside {weights_path.name} (checksummed): "
                "config.json was edited or corrupted after export. Restore the original file."
            )
    return Checkpoint(config, tensors, source)


def _embedded_config(metadata: dict, path: Path) -> ModelConfig:
    try:
        data = json.loads(metadata[SAFETENSORS_CONFIG_KEY])
    except (TypeError, json.JSONDecodeError) as err:
        raise WeightsError(
            f"{path}: the hear-abt config in its safetensors metadata is not valid JSON ({err})."
        ) from err
    return _parse_config(data, f"the metadata of {path}")[0]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not valid JSON ({err}).") from err


def _load_safetensors_file(path: Path) -> Checkpoint:
    tensors, metadata = _read_safetensors(path, None)
    if SAFETENSORS_CONFIG_KEY in metadata:
        config = _embedded_config(metadata, path)
    elif (path.parent / CONFIG_NAME).is_file():
        config, _ = _parse_config(_read_json(path.parent / CONFIG_NAME), str(path.parent / CONFIG_NAME))
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
    missing = [key for key in ("model_config", "encoder") if key not in state]
    if missing:
        raise WeightsError(f"training checkpoint {path} lacks {missing}: it is incomplete or corrupt.")
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

    validate_hub_id(repo_id, revision)  # before any request: nothing unchecked reaches a URL or the cache
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
            f"Hub repo {repo_id!r} does not exist (the Hub answered 'not found'; if it is private, log in "
            f"with `hf auth login`). {HOW_TO_GET_WEIGHTS}"
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


def hub_id_problem(text: str) -> str | None:
    """What makes ``text`` an invalid Hub id ``org/name[@revision]`` (None when it is a valid one)."""
    if not isinstance(text, str) or not text:
        return "it is empty"
    if text.startswith("/"):
        return "it starts with '/' (a local path that does not exist?)"
    if text.startswith(("~", ".")):
        return f"it starts with {text[0]!r} (a local path that does not exist?)"
    repo, at, revision = text.partition("@")
    problem = _repo_id_problem(repo)
    if problem is None and at:
        problem = _revision_problem(revision)
    return problem


def _repo_id_problem(repo: str) -> str | None:
    if not repo:
        return "the repo id (before any '@') is empty"
    parts = repo.split("/")
    if "" in parts:
        return f"{repo!r} has an empty component (a leading, trailing or doubled '/')"
    if len(parts) != 2:
        return (
            f"a Hub repo id is 'org/name' with exactly one '/', {repo!r} has {len(parts)} component(s) "
            "(or is it a local path that does not exist?)"
        )
    for what, part in zip(("organisation", "repo name"), parts):
        bad = sorted(set(_HUB_PART_CHARS.sub("", part)))
        if bad:
            return (
                f"its {what} {part!r} holds character(s) {''.join(bad)!r} that the Hub does not allow "
                "(only letters, digits, '.', '_' and '-')"
            )
        if part in (".", ".."):
            return f"its {what} is {part!r}, a path component, not a name"
        if len(part) > HUB_PART_MAX:
            return f"its {what} has {len(part)} characters; the Hub allows at most {HUB_PART_MAX}"
        if part[0] in ".-" or part[-1] in ".-":
            return f"its {what} {part!r} starts or ends with '.' or '-', which the Hub does not allow"
        if ".." in part or "--" in part:
            return f"its {what} {part!r} contains '..' or '--', which the Hub does not allow"
    if parts[1].endswith(".git"):
        return f"its repo name {parts[1]!r} ends with '.git', which the Hub does not allow"
    return None


def _revision_problem(revision: str) -> str | None:
    if not revision:
        return "the revision after '@' is empty"
    if len(revision) > HUB_REVISION_MAX:
        return f"its revision has {len(revision)} characters; at most {HUB_REVISION_MAX} are allowed"
    bad = sorted(set(_HUB_REVISION_CHARS.sub("", revision)))
    if bad:
        return (
            f"its revision {revision!r} holds character(s) {''.join(bad)!r} that a git revision may not "
            "(only letters, digits, '.', '_', '+', '-' and '/' between components)"
        )
    if revision.startswith("/") or revision.endswith("/"):
        return f"its revision {revision!r} starts or ends with '/'"
    for component in revision.split("/"):
        if not component:
            return f"its revision {revision!r} has an empty component ('//')"
        if component in (".", ".."):
            return f"its revision {revision!r} has a {component!r} path component"
        if component.startswith(".") or component.endswith((".", ".lock")):
            return f"its revision {revision!r} has a component {component!r} that git does not allow"
    if ".." in revision:
        return f"its revision {revision!r} contains '..', which git does not allow"
    return None


def validate_hub_id(repo_id: str, revision: str | None = None) -> None:
    """Raise :class:`WeightsError` saying what is wrong when ``repo_id``/``revision`` are not valid."""
    problem = _repo_id_problem(repo_id) if isinstance(repo_id, str) else "the repo id is not text"
    if problem is None and revision is not None:
        problem = _revision_problem(revision) if isinstance(revision, str) else "the revision is not text"
    if problem is not None:
        shown = repo_id if revision is None else f"{repo_id}@{revision}"
        raise WeightsError(f"invalid Hub id {shown!r}: {problem}. A Hub id is 'org/name[@revision]'.")


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``"org/name[@revision]"`` -> (repo id, revision or None); None when ``text`` is not a valid Hub id.

    :func:`hub_id_problem` says why a text is not one.
    """
    if hub_id_problem(text) is not None:
        return None
    repo, at, revision = text.partition("@")
    return repo, (revision if at else None)


def load_checkpoint(source: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint from a folder, a ``.safetensors``/training checkpoint file, or a Hub id.

    The config is validated and every tensor checked (:func:`check_state_dict`) before returning.
    """
    checkpoint = _read_checkpoint(source)
    check_state_dict(checkpoint.config, checkpoint.state_dict, checkpoint.source)
    return checkpoint


def _read_checkpoint(source: str | os.PathLike) -> Checkpoint:
    text = os.fspath(source)
    path = Path(text).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except PermissionError as err:
        raise WeightsError(
            f"{path} cannot be read: permission denied ({err}). Check the permissions of it and its folders."
        ) from err
    except (ValueError, OSError):  # an embedded NUL byte, a name too long for the file system, ...
        is_dir = is_file = False
    if is_dir:
        return _load_folder(path.resolve(), str(path.resolve()))
    if is_file:
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
    # Something on disk that is neither a file nor a folder is a local path gone wrong, never a Hub id.
    try:
        unreadable = _unreadable_on_disk(path)
    except (ValueError, OSError):
        unreadable = None
    if unreadable is not None:
        raise WeightsError(unreadable)
    problem = hub_id_problem(text)
    if problem is None:
        return _load_hub(*parse_hub_id(text), text)
    raise WeightsError(
        f"{text!r} is neither an existing file or folder nor a valid Hub id 'org/name[@revision]': {problem}."
    )


def _unreadable_on_disk(path: Path) -> str | None:
    """Why ``path`` (or one of its parents) is on disk but cannot be read as a file or folder, if so.

    Checks ``path`` and its parents with ``os.path.lexists``, which sees broken symlinks and symlink
    loops that ``exists``/``is_file``/``is_dir`` report as absent.
    """
    for candidate in (path, *path.parents):
        if not os.path.lexists(candidate):
            continue
        if candidate.is_dir() and candidate != path:
            return None  # an ordinary folder in which ``path`` does not exist
        where = str(candidate) if candidate == path else f"{candidate} (in {path})"
        if candidate.is_symlink():
            try:
                os.stat(candidate)
            except OSError as err:
                target = os.readlink(candidate)
                if err.errno == errno.ELOOP:
                    return (
                        f"{where} exists but cannot be read: a symlink loop ({candidate} -> {target}). "
                        "Fix or remove the link, or pass the checkpoint's real path."
                    )
                return (
                    f"{where} exists but cannot be read: broken symlink? ({candidate} -> {target}, "
                    f"which does not exist: {err.strerror}). Fix the link or pass the checkpoint's real path."
                )
        if candidate == path and not candidate.is_symlink():
            return (
                f"{where} exists but cannot be read as a weights file or folder (a FIFO, socket or device?). "
                "Pass a checkpoint folder, a .safetensors or a training checkpoint file."
            )
        if candidate != path:
            return f"{where} exists but is not a folder, so {path} cannot exist. Check the path."
        return f"{where} exists but cannot be read as a file or folder. Check the path."
    return None


def default_weights_source(family: str) -> str:
    """HEAR_ABT_WEIGHTS if set, else the pinned default Hub checkpoint for this encoder family.

    Raises :class:`WeightsError` at once, without any network request, when that default has not
    been published yet (see :data:`RELEASED_HUB_WEIGHTS`).
    """
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return env
    if family not in DEFAULT_HUB_WEIGHTS:
        raise WeightsError(
            f"no default weights for encoder family {family!r}; pass a checkpoint. {HOW_TO_GET_WEIGHTS}"
        )
    default = DEFAULT_HUB_WEIGHTS[family]
    if default not in RELEASED_HUB_WEIGHTS:
        raise WeightsError(
            f"No released hear-abt {family} weights exist yet: the default {default.split('@')[0]!r} has not "
            f"been published, so load_model() needs a checkpoint. {HOW_TO_GET_WEIGHTS}"
        )
    return default
