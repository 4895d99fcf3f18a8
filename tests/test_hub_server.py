"""The local Hub stand-in against the real huggingface_hub download code."""

from __future__ import annotations

import hashlib
import os

import pytest
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "test-org/tiny-model"
PAYLOAD = os.urandom(3000) + b"weights"


@pytest.fixture
def hub(hf_hub_env):
    hf_hub_env.server.add_file(REPO, "main", "model.safetensors", PAYLOAD)
    hf_hub_env.server.add_file(REPO, "main", "config.json", b'{"d": 1}')
    hf_hub_env.server.add_file(REPO, "v1", "model.safetensors", b"old weights")
    return hf_hub_env


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_env_points_huggingface_hub_at_the_stand_in(hub):
    assert hf_hub_url(REPO, "model.safetensors").startswith(hub.server.url + "/")
    assert HfApi().endpoint == hub.server.url
    assert os.environ["HF_ENDPOINT"] == hub.server.url


def test_download_then_cache_hit_makes_no_get(hub):
    p1 = hf_hub_download(REPO, "model.safetensors")
    assert _read(p1) == PAYLOAD
    assert str(hub.cache_dir) in os.path.realpath(p1)
    assert hub.server.count("GET", "model.safetensors") == 1
    assert hub.server.requests["HEAD"] == 1

    p2 = hf_hub_download(REPO, "model.safetensors")
    assert p2 == p1
    assert hub.server.requests["GET"] == 1, hub.server.log  # served from the cache
    assert hub.server.requests["HEAD"] == 2  # the client still checks the revision's commit


def test_revisions_and_commit_ids(hub):
    old = hf_hub_download(REPO, "model.safetensors", revision="v1")
    assert _read(old) == b"old weights"
    commit = hub.server.commit(REPO, "v1")
    assert len(commit) == 40 and commit != hub.server.commit(REPO, "main")
    assert _read(hf_hub_download(REPO, "model.safetensors", revision=commit)) == b"old weights"
    # A pinned commit already in the cache needs no request at all.
    n = len(hub.server.log)
    hf_hub_download(REPO, "model.safetensors", revision=commit)
    assert len(hub.server.log) == n


def test_new_content_gives_new_commit_and_is_downloaded(hub):
    hf_hub_download(REPO, "config.json")
    before = hub.server.commit(REPO, "main")
    hub.server.add_file(REPO, "main", "config.json", b'{"d": 2}')
    assert hub.server.commit(REPO, "main") != before
    assert _read(hf_hub_download(REPO, "config.json")) == b'{"d": 2}'
    assert hub.server.count("GET", "config.json") == 2


def test_server_down_serves_the_cache(hub):
    path = hf_hub_download(REPO, "model.safetensors")
    hub.server.stop()
    assert hf_hub_download(REPO, "model.safetensors") == path
    assert hf_hub_download(REPO, "model.safetensors", local_files_only=True) == path
    hub.set_offline(True)
    assert hf_hub_download(REPO, "model.safetensors") == path


def test_stop_also_drops_kept_alive_connections(hub):
    hf_hub_download(REPO, "config.json")  # leaves a kept-alive connection in the client's pool
    hub.server.stop()
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors")
    hub.server.start()  # same port again
    assert _read(hf_hub_download(REPO, "model.safetensors")) == PAYLOAD


def test_offline_mode_makes_no_request(hub):
    path = hf_hub_download(REPO, "model.safetensors")
    n = len(hub.server.log)
    hub.set_offline(True)
    assert hf_hub_download(REPO, "model.safetensors") == path
    assert len(hub.server.log) == n
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "config.json")  # never downloaded


def test_empty_cache_and_server_down_is_a_connection_error(hub):
    hub.server.stop()
    with pytest.raises(LocalEntryNotFoundError) as info:
        hf_hub_download(REPO, "model.safetensors")
    assert "connection" in str(info.value).lower()
    # The cause is the HTTP client's connect error (httpx2.ConnectError in huggingface_hub 2.x).
    assert "Connect" in type(info.value.__cause__).__name__, repr(info.value.__cause__)


def test_unknown_repo_revision_file_raise_typed_errors(hub):
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-org/nope", "model.safetensors")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "model.safetensors", revision="v9")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin")
    assert hub.server.requests["GET"] == 0


def test_snapshot_download_and_offline_snapshot(hub):
    folder = snapshot_download(REPO)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert _read(os.path.join(folder, "model.safetensors")) == PAYLOAD
    assert hub.server.count("GET", "/api/models/" + REPO) >= 1
    hub.server.stop()
    assert snapshot_download(REPO) == folder
    assert snapshot_download(REPO, local_files_only=True) == folder


def test_corrupt_flip_is_cached_silently(hub):
    """huggingface_hub does not check content: a package that wants integrity must hash what it loads."""
    hub.server.corrupt(REPO, "main", "model.safetensors", "flip")
    data = _read(hf_hub_download(REPO, "model.safetensors"))
    assert len(data) == len(PAYLOAD) and data != PAYLOAD
    assert hashlib.sha256(data).hexdigest() != hashlib.sha256(PAYLOAD).hexdigest()


def test_corrupt_truncate_fails_the_size_check(hub):
    hub.server.corrupt(REPO, "main", "model.safetensors", "truncate")
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(REPO, "model.safetensors")
    hub.server.corrupt(REPO, "main", "model.safetensors", None)
    assert _read(hf_hub_download(REPO, "model.safetensors")) == PAYLOAD


def test_corrupt_cut_connection_does_not_cache_a_partial_file(hub):
    hub.server.corrupt(REPO, "main", "model.safetensors", "cut")
    with pytest.raises(Exception):  # noqa: B017 - the exact type is the library's business
        hf_hub_download(REPO, "model.safetensors")
    hub.server.stop()
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "model.safetensors")
