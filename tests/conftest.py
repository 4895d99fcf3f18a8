"""Shared pytest fixtures.

Local Hugging Face Hub (see ``tests/hub_server.py``):

``hub_server``
    A started :class:`hub_server.LocalHub` on 127.0.0.1 serving ``tmp_path/hub`` (``.url``, ``.root``,
    ``.add_file(repo_id, revision, filename, data)``, ``.requests`` (Counter by method), ``.count(method,
    contains)``, ``.commit(repo_id, revision)``, ``.corrupt(...)``, ``.stop()``/``.stall()``/``.outage(status)``/``.start()``). Stopped at
    teardown. It does NOT point huggingface_hub at itself: use ``hf_hub_env`` for that.

``hf_hub_env``
    Points huggingface_hub at ``hub_server`` with an empty cache, for this test only. Yields a
    :class:`HubEnv` (``.server``, ``.endpoint``, ``.home``, ``.cache_dir``, ``.set_offline(bool)``).

    huggingface_hub (2.4.0) reads its settings from the environment once, at import, into
    ``huggingface_hub.constants``; ``hf_hub_url`` builds URLs from ``constants.HUGGINGFACE_CO_URL_TEMPLATE``
    (only rewritten when ``endpoint=`` is passed) and ``HfApi`` takes ``constants.ENDPOINT``. Setting
    ``HF_ENDPOINT`` after import therefore changes nothing, and patching ``constants.ENDPOINT`` alone is not
    enough either. So the fixture does both:

    * environment (for subprocesses and code that reads it itself): ``HF_ENDPOINT``, ``HF_HOME``,
      ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=0``, ``HF_HUB_DISABLE_TELEMETRY=1``,
      ``HF_HUB_DISABLE_PROGRESS_BARS=1``, ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1``; ``HF_TOKEN`` and
      ``HUGGINGFACE_HUB_CACHE`` removed;
    * in-process, ``huggingface_hub.constants``: ``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``, ``HF_HOME``,
      ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_TOKEN_PATH``, ``HF_STORED_TOKENS_PATH``,
      ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_TELEMETRY``, ``HF_HUB_DISABLE_IMPLICIT_TOKEN``.

    * the retry sleeps of ``huggingface_hub.utils._http`` (back-off 1+2+4+8+8 s when a download fails
      with an empty cache) and ``huggingface_hub.file_download`` (1 s per resumed download) are made instant, so tests of "server down" take milliseconds; the retries
      themselves still happen and are still counted by the server.
      ``real_backoff`` (requested after ``hf_hub_env``) puts the real sleeps back, for tests that time
      what a user would wait.

    All undone by monkeypatch at teardown. ``set_offline(True)`` sets ``HF_HUB_OFFLINE=1`` both ways
    (``constants.HF_HUB_OFFLINE`` is what ``huggingface_hub.is_offline_mode()`` returns).
"""

from __future__ import annotations

import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from hub_server import LocalHub  # noqa: E402


@pytest.fixture
def hub_server(tmp_path_factory):
    hub = LocalHub(tmp_path_factory.mktemp("hub")).start()
    try:
        yield hub
    finally:
        hub.stop()


@dataclass
class HubEnv:
    server: LocalHub
    endpoint: str
    home: Path
    cache_dir: Path
    _monkeypatch: pytest.MonkeyPatch = field(repr=False)

    def set_offline(self, offline: bool = True) -> None:
        from huggingface_hub import constants

        self._monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hf_hub_env(hub_server, tmp_path_factory, monkeypatch):
    from huggingface_hub import constants

    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    cache.mkdir()
    endpoint = hub_server.url

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)

    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)

    # Instant retry back-off: replace the `time` module seen by these two huggingface_hub modules only.
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    fast_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    fast_time.sleep = lambda seconds: None
    monkeypatch.setattr(_http, "time", fast_time)
    monkeypatch.setattr(file_download, "time", fast_time)

    yield HubEnv(server=hub_server, endpoint=endpoint, home=home, cache_dir=cache, _monkeypatch=monkeypatch)


@pytest.fixture
def real_backoff(hf_hub_env, monkeypatch):
    """``hf_hub_env`` with huggingface_hub's real retry sleeps: for tests that time what a user waits."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "time", time)
    monkeypatch.setattr(file_download, "time", time)
    return hf_hub_env
