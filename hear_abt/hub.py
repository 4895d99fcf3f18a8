"""Hugging Face Hub access: Hub ids, downloads through ``huggingface_hub``, the default weights.

A Hub id is ``org/name[@revision]``. It is checked before any request, so that nothing unchecked reaches
a URL or the cache (a revision names a file in the cache, ``refs/<revision>``): the repo id by
``huggingface_hub.utils.validate_repo_id`` plus hear-abt's own rule of exactly one '/' (a bare name is a
local path that does not exist, not a Hub id); the revision by git's ref rules below, as
``huggingface_hub`` has no validator for revisions.

Downloads go through ``hf_hub_download`` into its usual cache (``HF_HUB_OFFLINE``, ``HF_ENDPOINT``,
``HF_HUB_ETAG_TIMEOUT`` are honoured) and are then read and checked like a local folder. An unreachable
Hub fails fast. When the first metadata request for a file that is not cached gets no answer,
``hf_hub_download`` retries it five times with back-off (1+2+4+8+8 s, each try with a 60 s timeout):
about 24 s for a refused connection, minutes for a Hub that does not answer. So one metadata request
without retries goes first (:func:`_connection_error`); if no answer comes back, the files come from
the cache only (``local_files_only``), or the error says at once that the Hub cannot be reached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .weights_format import (
    CONFIG_NAME,
    HOW_TO_GET_WEIGHTS,
    WEIGHTS_ENV,
    WEIGHTS_NAME,
    Checkpoint,
    WeightsError,
    read_folder,
)

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

# The Hub's limit on each part of a repo id; only used to say what is wrong once validate_repo_id refused one.
HUB_PART_MAX = 96
# Revisions are git refs ("main", "v1", "refs/pr/1") or commit ids.
HUB_REVISION_MAX = 255
_HUB_REVISION_CHARS = re.compile(r"[A-Za-z0-9._+/-]+")
_HUB_PART_CHARS = re.compile(r"[A-Za-z0-9._-]+")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")


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


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``"org/name[@revision]"`` -> (repo id, revision or None); None when ``text`` is not a valid Hub id.

    :func:`hub_id_problem` says why a text is not one.
    """
    if hub_id_problem(text) is not None:
        return None
    repo, at, revision = text.partition("@")
    return repo, (revision if at else None)


def validate_hub_id(repo_id: str, revision: str | None = None) -> None:
    """Raise :class:`WeightsError` saying what is wrong when ``repo_id``/``revision`` are not valid."""
    problem = _repo_id_problem(repo_id) if isinstance(repo_id, str) else "the repo id is not text"
    if problem is None and revision is not None:
        problem = _revision_problem(revision) if isinstance(revision, str) else "the revision is not text"
    if problem is not None:
        shown = repo_id if revision is None else f"{repo_id}@{revision}"
        raise WeightsError(f"invalid Hub id {shown!r}: {problem}. A Hub id is 'org/name[@revision]'.")


def _repo_id_problem(repo: str) -> str | None:
    """None for a valid ``org/name``; else what is wrong, in words."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo:
        return "the repo id (before any '@') is empty"
    parts = repo.split("/")
    if "" in parts:
        return f"{repo!r} has an empty component (a leading, trailing or doubled '/')"
    if len(parts) != 2:  # hear-abt's rule: validate_repo_id also accepts a bare "name"
        return (
            f"a Hub repo id is 'org/name' with exactly one '/', {repo!r} has {len(parts)} component(s) "
            "(or is it a local path that does not exist?)"
        )
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        return _refusal_detail(parts) or f"huggingface_hub refuses it: {str(err).rstrip('.')}"
    return None


def _refusal_detail(parts: list[str]) -> str | None:
    """For a repo id that validate_repo_id refused: the offending part and why, where its message is vague."""
    for what, part in zip(("organisation", "repo name"), parts):
        if part in (".", ".."):
            return f"its {what} is {part!r}, a path component, not a name"
        bad = sorted(set(_HUB_PART_CHARS.sub("", part)))
        if bad:
            return (
                f"its {what} {part!r} holds character(s) {''.join(bad)!r} that the Hub does not allow "
                "(only letters, digits, '.', '_' and '-')"
            )
        if len(part) > HUB_PART_MAX:
            return f"its {what} has {len(part)} characters; the Hub allows at most {HUB_PART_MAX}"
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


def load_hub(repo_id: str, revision: str | None, source: str) -> Checkpoint:
    """Download (or take from the cache) a checkpoint folder from the Hub and read it."""
    validate_hub_id(repo_id, revision)  # before any request: nothing unchecked reaches a URL or the cache
    return read_folder(download(repo_id, revision), source)


def download(repo_id: str, revision: str | None) -> Path:
    """The local folder (in huggingface_hub's cache) holding config.json and model.safetensors.

    :class:`WeightsError` says what went wrong: a repo, revision or file that does not exist, or a Hub
    that cannot be reached (within one metadata request's timeout) while the files are not cached.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    ask = not (constants.HF_HUB_OFFLINE or _cached_commit(repo_id, revision))
    unreachable = _connection_error(repo_id, revision) if ask else None
    # LocalEntryNotFoundError subclasses EntryNotFoundError: keep it first.
    try:
        paths = [
            hf_hub_download(repo_id, name, revision=revision, local_files_only=unreachable is not None)
            for name in (CONFIG_NAME, WEIGHTS_NAME)
        ]
    except LocalEntryNotFoundError as err:
        why = (
            f"the Hub at {constants.ENDPOINT} cannot be reached: {_first_line(unreachable)}"
            if unreachable is not None
            else "no network, or HF_HUB_OFFLINE=1"
        )
        raise WeightsError(
            f"cannot download {repo_id!r} ({why}) and it is not in the local cache. "
            f"Connect once to cache it, or use local weights. {HOW_TO_GET_WEIGHTS}"
        ) from (unreachable or err)
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
    return Path(paths[0]).parent


def _cached_commit(repo_id: str, revision: str | None) -> bool:
    """A commit id whose files are all cached: hf_hub_download serves them without any request."""
    from huggingface_hub import try_to_load_from_cache

    return bool(revision and _COMMIT_ID.fullmatch(revision)) and all(
        isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str)
        for name in (CONFIG_NAME, WEIGHTS_NAME)
    )


def _connection_error(repo_id: str, revision: str | None) -> Exception | None:
    """Ask the Hub for config.json's metadata once, without retries: the error when no usable answer came.

    An HTTP answer such as "not found" means the Hub is up (hf_hub_download then reports it). A server
    error (5xx: the Hub is down) and anything else (connection refused, a name that does not resolve, a
    timeout after ``HF_HUB_ETAG_TIMEOUT`` seconds, a proxy or TLS failure) is returned; the HTTP
    client's exception types differ between huggingface_hub versions, hence the broad except.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(
            hf_hub_url(repo_id, CONFIG_NAME, revision=revision), timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        return err if isinstance(status, int) and status >= 500 else None
    except Exception as err:  # noqa: BLE001 - see the docstring
        return err
    return None


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


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
