"""The explorer: a read-only web page about the chain, served by the node on its own port.

    GET /                              the page (fullnode/explorer_static/index.html)
    GET /static/<file>                 its script and style sheet
    GET /api/summary                   tip, phase and countdown
    GET /api/blocks?before=H&limit=N   best-chain blocks, newest first
    GET /api/block/<height or hash>    one block (?tx_offset=N pages its transactions)
    GET /api/tasks?limit=N             scheduled, waiting and recently mined tasks
    GET /api/task/<task id>            one task
    GET /api/task/<task id>/figures    its Dice plot and overlays: state, or the list once drawn
    GET /api/task/<task id>/figure/<file>   one drawn PNG
    GET /api/leaderboard?limit=N       miners by blocks won

It is off unless the operator gives `--explorer-port` and listens on
loopback by default (docs/operator.md). Everything is read through
fullnode.views from the chain store; the server never writes to the chain
and needs no cookie. Anyone who reaches the port may call it, so: at most
MAX_CONNECTIONS requests are served at once (more are closed at once), a
slow client is dropped after REQUEST_TIMEOUT seconds, only GET and HEAD are
answered, and the views bound their own work. The page loads nothing from
other hosts (its Content-Security-Policy says so) and works offline.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from fullnode import views
from pouw.httpthread import start_http_thread, stop_http_thread
from pouw.types import ChainParams

log = logging.getLogger("pouw.explorer")

MAX_CONNECTIONS = 32
"""Requests served at once; a client past this is disconnected without an answer."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to send its request."""
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The page's files (package data in fullnode/explorer_static) and their types; nothing else is served from there."""
CSP = "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"

_FIGURE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,200}\.png$")


def read_static(name: str) -> bytes:
    """One of the page's files, from the package."""
    return resources.files("fullnode").joinpath("explorer_static", name).read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight, so none reads a closed store
    request_queue_size = 64

    def __init__(self, address, handler, explorer: "ExplorerServer"):
        self.explorer = explorer
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: refuse rather than queue without bound
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads to wait for at stop
    server_version = "pouw-explorer/1"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_GET(self):
        self._answer(send_body=True)

    def do_HEAD(self):
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        explorer: ExplorerServer = self.server.explorer
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, max_num_fields=8))
        try:
            status, ctype, body, cache = explorer.route(url.path, query)
        except views.BadRequest as exc:
            status, ctype, body, cache = _json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except views.NotFound as exc:
            status, ctype, body, cache = _json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
        except Exception as exc:  # a view that fails must not take the server down
            log.exception("explorer %s failed: %s", url.path, exc)
            status, ctype, body, cache = _json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error"})
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


Response = tuple[int, str, bytes, str]


def _json(status: int, obj: Any) -> Response:
    return status, "application/json", json.dumps(obj).encode(), "no-store"


class ExplorerServer:
    """Serves the explorer for one chain view; `start()` and `stop()` it with the node."""

    def __init__(self, chain: views.ChainView, params: ChainParams, blobs, cache_dir: Path, *,
                 host: str = "127.0.0.1", port: int = 0, clock: Callable[[], float] = time.time):
        self.chain = chain
        self.params = params
        self.clock = clock
        self.figures = views.FigureCache(blobs, Path(cache_dir) / "figures")
        self.leaderboard = views.Leaderboard()
        self.host = host
        self.port = port
        self.httpd: _Server | None = None
        self.thread: threading.Thread | None = None
        self._routes: list[tuple[re.Pattern, Callable[..., Response]]] = [
            (re.compile(r"^/$"), lambda q: self._static("index.html")),
            (re.compile(r"^/static/([a-z]+\.[a-z]+)$"), lambda q, name: self._static(name)),
            (re.compile(r"^/api/summary$"), lambda q: _json(200, views.get_summary(self.chain, self.params, self.clock()))),
            (re.compile(r"^/api/blocks$"), self._blocks),
            (re.compile(r"^/api/block/([0-9a-fA-F]{1,64})$"), self._block),
            (re.compile(r"^/api/tasks$"), lambda q: _json(200, views.list_tasks(
                self.chain, self.params, views.parse_count(q.get("limit"), "limit", 20, views.MAX_PAGE)))),
            (re.compile(r"^/api/task/([0-9a-fA-F]{64})$"), lambda q, t: _json(200, views.get_task_view(self.chain, self.params, t.lower()))),
            (re.compile(r"^/api/task/([0-9a-fA-F]{64})/figures$"), lambda q, t: _json(200, self.figures.get(self.chain, self.params, t.lower()))),
            (re.compile(r"^/api/task/([0-9a-fA-F]{64})/figure/([^/]+)$"), self._figure),
            (re.compile(r"^/api/leaderboard$"), lambda q: _json(200, self.leaderboard.get(
                self.chain, self.params, views.parse_count(q.get("limit"), "limit", 20, views.MAX_PAGE)))),
        ]

    # --- routes ----------------------------------------------------------------
    def route(self, path: str, query: dict[str, str]) -> Response:
        """The answer to GET `path`."""
        for pattern, handler in self._routes:
            match = pattern.match(path)
            if match:
                return handler(query, *match.groups())
        raise views.NotFound(f"no page {path[:100]}")

    def _static(self, name: str) -> Response:
        ctype = STATIC_FILES.get(name)
        if ctype is None:
            raise views.NotFound(f"no file {name}")
        return 200, ctype, read_static(name), "no-cache"

    def _blocks(self, q: dict[str, str]) -> Response:
        before = q.get("before")
        before_height = None if before in (None, "") else views.parse_count(before, "before", 0, 1 << 62)
        limit = views.parse_count(q.get("limit"), "limit", 20, views.MAX_PAGE)
        return _json(200, views.list_blocks(self.chain, self.params, before_height, limit))

    def _block(self, q: dict[str, str], ref: str) -> Response:
        offset = views.parse_count(q.get("tx_offset"), "tx_offset", 0, 1 << 30)
        return _json(200, views.get_block_view(self.chain, self.params, ref.lower(), offset))

    def _figure(self, q: dict[str, str], task: str, name: str) -> Response:
        if not _FIGURE_FILE.match(name):
            raise views.NotFound(f"no figure {name[:100]}")
        path = self.figures.get_file(task.lower(), name)
        # Drawn once from chain data that never changes for a mined task: cacheable.
        return 200, "image/png", path.read_bytes(), "max-age=3600"

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> "ExplorerServer":
        """Listen and serve from background threads."""
        self.figures.start()
        self.httpd = _Server((self.host, self.port), _Handler, self)
        self.port = self.httpd.server_address[1]
        self.thread = start_http_thread(self.httpd, "pouw-explorer")
        return self

    @property
    def url(self) -> str:
        """The page's address."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving, then the figure worker."""
        if self.httpd is not None:
            stop_http_thread(self.httpd, self.thread)
            self.httpd = None
        self.figures.stop()


__all__ = ["ExplorerServer", "MAX_CONNECTIONS", "read_static"]
