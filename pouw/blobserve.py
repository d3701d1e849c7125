"""Read-only HTTP server for content-addressed blobs.

    GET  /blob/<64 hex sha256>     200 whole blob, or 206 with Range
    HEAD /blob/<64 hex sha256>     headers only (size, ETag, Accept-Ranges)

Supported ranges: ``bytes=N-``, ``bytes=N-M``, ``bytes=-S`` (last S bytes).
A range starting at or past the end answers 416; a Range header we do not
understand (other unit, several ranges, bad syntax) is ignored and the
whole blob is sent, as RFC 9110 allows. Bytes leave through
``socket.sendfile`` (zero copy). The server never checks digests on the
way out: the store only holds verified blobs and every client re-hashes.

``store`` is any object with ``has(digest: bytes) -> bool`` and
``path(digest: bytes) -> Path`` (pouw.blobstore.BlobStore).

Bounded against hostile clients (pouw.httpthread): at most
`limits.max_connections` connections (a newcomer evicts the one waiting
longest for its next request, or is answered 503), each request must
arrive within `limits.request_timeout`, and a client that stops reading
is dropped after `limits.send_timeout` without progress.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from pouw.httpthread import BoundedHandler, BoundedHTTPServer, ServiceLimits, start_http_thread, stop_http_thread

log = logging.getLogger("pouw.blobserve")

_PATH_RE = re.compile(r"^/blob/([0-9a-fA-F]{64})$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")

DEFAULT_LIMITS = ServiceLimits(max_connections=64, request_timeout=10.0, send_timeout=30.0)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """Return (start, end_inclusive) for a satisfiable single range, None to
    send the whole blob, or "unsatisfiable"."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if not m:
        return None  # several ranges, other unit or junk: ignore the header
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1) if size else "unsatisfiable"
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # invalid syntax per RFC: ignore
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _Handler(BoundedHandler, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a resumed fetch can reuse it
    server_version = "pouw-blobserve/1"
    sys_version = ""

    def log_message(self, fmt, *args):  # route access log away from stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def _plain(self, status: HTTPStatus, text: str, extra: dict | None = None, body: bool = True):
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _serve(self, send_body: bool):
        m = _PATH_RE.match(self.path.split("?", 1)[0])
        if not m:
            self._plain(HTTPStatus.NOT_FOUND, "not found: blobs are served at /blob/<64-hex sha256>", body=send_body)
            return
        hexd = m.group(1).lower()
        digest = bytes.fromhex(hexd)
        store = self.server.store
        try:
            if not store.has(digest):
                raise FileNotFoundError
            f = open(store.path(digest), "rb")
        except (FileNotFoundError, OSError):
            self._plain(HTTPStatus.NOT_FOUND, f"blob {hexd} not found", body=send_body)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            rng = parse_range(self.headers.get("Range"), size)
            if rng == "unsatisfiable":
                self._plain(
                    HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                    f"range not satisfiable: blob {hexd} has {size} bytes",
                    {"Content-Range": f"bytes */{size}"},
                    body=send_body,
                )
                return
            if rng is None:
                start, count = 0, size
                self.send_response(HTTPStatus.OK)
            else:
                start, end = rng
                count = end - start + 1
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(count))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{hexd}"')
            # Content addressed: the bytes behind a name never change.
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
            self.end_headers()
            if send_body and count:
                try:
                    sent = self.connection.sendfile(f, start, count)
                except OSError:  # gone, reset, or stopped reading for send_timeout
                    self.close_connection = True
                    return
                if sent != count:  # file shrank under us: the client sees a short body
                    log.warning("blob %s: sent %d of %d bytes", hexd, sent, count)
                    self.close_connection = True


class _Server(BoundedHTTPServer):
    pass


class BlobServer:
    """Serve ``store`` on http://host:port/blob/<hex> from a background thread.

    ``with BlobServer(store) as srv: url = srv.link(digest)``
    """

    def __init__(self, store, host: str = "127.0.0.1", port: int = 0, *, limits: ServiceLimits = DEFAULT_LIMITS):
        if not (hasattr(store, "has") and hasattr(store, "path")):
            raise TypeError("store needs has(digest) and path(digest) methods")
        self.store = store
        self.limits = limits
        self._addr = (host, port)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "BlobServer":
        if self._httpd is not None:
            raise RuntimeError("the blob server is already running")
        try:
            httpd = _Server(self._addr, _Handler, self.limits)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve blobs on {self._addr[0]}:{self._addr[1]}: {exc.strerror}") from exc
        httpd.store = self.store
        self._httpd = httpd
        self._thread = start_http_thread(httpd, "pouw-blobserve")
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        stop_http_thread(self._httpd, self._thread)
        self._httpd = None
        self._thread = None

    @property
    def host(self) -> str:
        return self._httpd.server_address[0] if self._httpd else self._addr[0]

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._addr[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def link(self, digest: bytes) -> str:
        return f"{self.url}/blob/{bytes(digest).hex()}"

    def __enter__(self) -> "BlobServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
