"""A local stand-in of the Hugging Face Hub, for tests.

It serves files from a folder laid out as ``<root>/<org>/<name>/<revision>/<file>`` on 127.0.0.1
(``http.server`` in a background thread) and answers just enough of the Hub protocol for the real
``huggingface_hub`` download code (checked against huggingface_hub 2.4.0):

* ``HEAD``/``GET /<org>/<name>/resolve/<revision>/<file>``: ``X-Repo-Commit`` (a 40-hex commit id per
  revision, which changes when the revision's content changes), ``ETag`` (sha256 of the content, as the
  Hub does for LFS files; also sent as ``X-Linked-Etag``/``X-Linked-Size``), ``Content-Length``,
  ``Accept-Ranges``. ``Range: bytes=N-`` is honoured (resumed downloads).
* ``GET /api/models/<org>/<name>`` and ``/api/models/<org>/<name>/revision/<rev>``: ``{"id", "sha",
  "siblings": [{"rfilename"}...]}`` (``HfApi.model_info``/``repo_info``, used by ``snapshot_download``).
* ``GET /api/models/<org>/<name>/tree/<rev>[/<path>]``: the file listing ``[{"type": "file", "path",
  "size", "oid"}...]`` (``HfApi.list_repo_tree``, used by ``snapshot_download``).
* Errors: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` (the last
  one with ``X-Repo-Commit``, so the client caches the non-existence like it does with the Hub).

A revision may be named by its branch/tag name (the folder name) or by its commit id.

For fault injection it can be stopped (``stop()``: connections are refused), stalled (``stall()``:
connections are accepted but never answered), made to answer every request with an HTTP error
(``outage(503)``; ``outage(None)`` ends it) and restarted on the same port (``start()``), and a file can be served corrupted (``corrupt(...)``): ``"flip"`` changes bytes but
keeps the size and the advertised ETag (what a bad mirror or disk does; huggingface_hub caches it without
complaint), ``"truncate"`` sends a shorter body than the HEAD advertised (huggingface_hub raises its
"Consistency check failed" error), ``"cut"`` advertises the full length in the GET too but closes the
connection half-way.

Every request is recorded: ``server.requests`` is a ``collections.Counter`` by method (``"HEAD"``,
``"GET"``), ``server.log`` the list of ``(method, path)``; ``server.count(method, contains)`` filters.

Run by hand: ``python tests/hub_server.py ROOT [--port 8123]`` then ``HF_ENDPOINT=http://127.0.0.1:8123``.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import json
import re
import shutil
import socket
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
CORRUPT_MODES = ("flip", "truncate", "cut")


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "LocalHub/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
        pass

    # -- plumbing -------------------------------------------------------------------------------------
    @property
    def hub(self) -> LocalHub:
        return self.server.hub  # type: ignore[attr-defined]

    def setup(self):
        super().setup()
        with self.hub._lock:
            self.hub._conns.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            with self.hub._lock:
                self.hub._conns.discard(self.connection)

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", *, length: int | None = None):
        self.send_response(status)
        headers = dict(headers)
        headers.setdefault("Content-Length", str(len(body) if length is None else length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None):
        headers = {"Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        headers.update(extra or {})
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _json(self, obj) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(obj).encode())

    def do_HEAD(self):  # noqa: N802
        self._dispatch()

    def do_GET(self):  # noqa: N802
        self._dispatch()

    def _dispatch(self):
        path = urlsplit(self.path).path
        self.hub._record(self.command, self.path)
        if self.hub.outage_status is not None:
            return self._error(self.hub.outage_status, None, "Service Unavailable (local hub outage)")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        try:
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(parts[0] + "/" + parts[1], parts[3], "/".join(parts[4:]))
            if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
                repo_id = parts[2] + "/" + parts[3]
                rest = parts[4:]
                if not rest:
                    return self._model_info(repo_id, "main")
                if rest[0] == "revision" and len(rest) == 2:
                    return self._model_info(repo_id, rest[1])
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]))
            self._error(404, None, f"Not handled by the local hub stand-in: {self.command} {self.path}")
        except _HubError as e:
            self._error(404, e.code, e.message, e.headers)

    # -- endpoints ------------------------------------------------------------------------------------
    def _resolve(self, repo_id: str, revision: str, filename: str):
        rev_dir, commit = self.hub._lookup(repo_id, revision)
        file = rev_dir / filename
        if not file.is_file() or ".." in Path(filename).parts:
            raise _HubError(
                "EntryNotFound",
                f"{filename} does not exist at {repo_id}@{revision}",
                {"X-Repo-Commit": commit},
            )
        data = file.read_bytes()
        etag = hashlib.sha256(data).hexdigest()
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{etag}"',
            "X-Linked-Etag": f'"{etag}"',
            "X-Linked-Size": str(len(data)),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        mode = self.hub._corrupt.get((repo_id, revision, filename)) or self.hub._corrupt.get(
            (repo_id, commit, filename)
        )
        if self.command == "HEAD":
            return self._send(200, headers, b"", length=len(data))
        status = 200
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        start = int(m.group(1)) if m else 0
        if mode == "flip":
            data = bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(data))
        if mode == "truncate":
            data = data[: len(data) // 2]
        if m and start < len(data):
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            data = data[start:]
            status = 206
        if mode == "cut":
            # Promise everything, send half, hang up.
            headers["Connection"] = "close"
            self.close_connection = True
            self.send_response(status)
            headers["Content-Length"] = str(len(data))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self._send(status, headers, data)

    def _model_info(self, repo_id: str, revision: str):
        rev_dir, commit = self.hub._lookup(repo_id, revision)
        files = self.hub._files(rev_dir)
        self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": commit,
                "private": False,
                "siblings": [{"rfilename": name} for name in files],
            }
        )

    def _tree(self, repo_id: str, revision: str, sub: str):
        rev_dir, _ = self.hub._lookup(repo_id, revision)
        out = []
        for name in self.hub._files(rev_dir):
            if sub and not name.startswith(sub.rstrip("/") + "/"):
                continue
            data = (rev_dir / name).read_bytes()
            out.append(
                {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                }
            )
        self._json(out)


class _HubError(Exception):
    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LocalHub:
    """Serve ``root`` (``<root>/<org>/<name>/<revision>/<file>``) as a Hugging Face Hub endpoint."""

    def __init__(self, root: str | Path, port: int = 0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str]] = []
        self._corrupt: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stalled: socket.socket | None = None
        self.outage_status: int | None = None  # see outage()

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> LocalHub:
        """Start serving (again, on the same port after ``stop()`` or ``stall()``)."""
        if self._httpd is not None:
            return self
        self._close_stalled()
        self._httpd = _Server(("127.0.0.1", self.port), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take the server down: new connections are refused until ``start()``."""
        self._close_stalled()
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        # Also drop the clients' kept-alive connections, or they would still be served.
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def stall(self) -> None:
        """A hung Hub: connections to the port are accepted but never answered, until ``start()``/``stop()``.

        Clients wait for their read timeout (what a black-holed or overloaded server costs them).
        """
        self.stop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)  # the kernel completes the handshakes; nobody ever reads
        self._stalled = sock

    def outage(self, status: int | None = 503) -> None:
        """Answer every request with HTTP ``status`` (a Hub that is up but failing); None ends it."""
        self.outage_status = status

    def _close_stalled(self) -> None:
        if self._stalled is not None:
            self._stalled.close()
            self._stalled = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- content --------------------------------------------------------------------------------------
    def add_file(self, repo_id: str, revision: str, filename: str, data: bytes | str | Path) -> Path:
        """Publish ``data`` (bytes, or a path to copy) as ``filename`` in ``repo_id`` at ``revision``."""
        if "/" not in repo_id:
            raise ValueError(f"repo_id must be '<org>/<name>', got {repo_id!r}")
        dest = self.root / repo_id / revision / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, (str, Path)):
            shutil.copyfile(data, dest)
        else:
            dest.write_bytes(data)
        return dest

    def remove_file(self, repo_id: str, revision: str, filename: str) -> None:
        (self.root / repo_id / revision / filename).unlink()

    def commit(self, repo_id: str, revision: str) -> str:
        """The 40-hex commit id currently served for ``repo_id@revision``."""
        return self._lookup(repo_id, revision)[1]

    def corrupt(self, repo_id: str, revision: str, filename: str, mode: str | None = "flip") -> None:
        """Serve ``filename`` corrupted from now on (``mode`` in CORRUPT_MODES; ``None`` to heal)."""
        if mode is None:
            self._corrupt.pop((repo_id, revision, filename), None)
            return
        if mode not in CORRUPT_MODES:
            raise ValueError(f"mode must be one of {CORRUPT_MODES}")
        self._corrupt[(repo_id, revision, filename)] = mode

    # -- request log ----------------------------------------------------------------------------------
    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests[method] += 1
            self.log.append((method, path))

    def count(self, method: str | None = None, contains: str | None = None) -> int:
        """Number of requests, optionally of one method and/or whose path contains ``contains``."""
        with self._lock:
            return sum(
                1
                for m, p in self.log
                if (method is None or m == method) and (contains is None or contains in unquote(p))
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.log.clear()

    # -- lookups --------------------------------------------------------------------------------------
    @staticmethod
    def _files(rev_dir: Path) -> list[str]:
        return sorted(p.relative_to(rev_dir).as_posix() for p in rev_dir.rglob("*") if p.is_file())

    def _commit_of(self, repo_id: str, rev_dir: Path) -> str:
        h = hashlib.sha1(f"{repo_id}@{rev_dir.name}".encode())
        for name in self._files(rev_dir):
            h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256((rev_dir / name).read_bytes()).digest())
        return h.hexdigest()

    def _lookup(self, repo_id: str, revision: str) -> tuple[Path, str]:
        repo_dir = self.root / repo_id
        if repo_id.count("/") != 1 or not repo_dir.is_dir():
            raise _HubError("RepoNotFound", f"Repository {repo_id} not found")
        rev_dir = repo_dir / revision
        if revision not in (".", "..") and "/" not in revision and rev_dir.is_dir():
            return rev_dir, self._commit_of(repo_id, rev_dir)
        if _COMMIT_RE.match(revision):
            for d in repo_dir.iterdir():
                if d.is_dir() and self._commit_of(repo_id, d) == revision:
                    return d, revision
        raise _HubError("RevisionNotFound", f"Invalid rev id: {revision}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    import argparse
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="folder laid out as <root>/<org>/<name>/<revision>/<file>")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    hub = LocalHub(args.root, args.port).start()
    print(f"HF_ENDPOINT={hub.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
