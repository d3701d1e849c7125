"""JSON-RPC 2.0 over HTTP on 127.0.0.1, with bitcoind-style cookie auth.

Server: on start it writes ``__cookie__:<64 hex>`` to ``<datadir>/.cookie``
(mode 0600) and removes it on stop. Clients read the cookie and send it as
HTTP Basic credentials (user ``__cookie__``, password the hex).

Request (POST /):   {"jsonrpc": "2.0", "method": "name", "params": {...} | [...], "id": 1}
Response:           {"jsonrpc": "2.0", "result": ..., "id": 1}
               or   {"jsonrpc": "2.0", "error": {"code": int, "message": str}, "id": 1}

HTTP status: 200 for every JSON-RPC answer (errors included), 401 bad or
missing credentials, 404 other paths, 405 other verbs, 411 missing
Content-Length, 413 body over the limit, 503 every connection slot busy.

The server listens on 127.0.0.1 unless given another `host`, and is bounded
against hostile clients (pouw.httpthread): a cap on connections, a deadline
for each request to arrive, a body size cap, and every malformed request,
however nested, gets a JSON-RPC error instead of silence.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import http.client
import inspect
import json
import logging
import os
import secrets
import socket
import threading
import types
import typing
import urllib.parse
from functools import lru_cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable

from pouw.httpthread import BoundedHandler, BoundedHTTPServer, ServiceLimits, start_http_thread, stop_http_thread

log = logging.getLogger("pouw.rpc")

COOKIE_USER = "__cookie__"
COOKIE_NAME = ".cookie"
DEFAULT_PORT = 8645
DEFAULT_MAX_BODY = 1 << 20
DRAIN_FACTOR = 4
"""An oversized body up to this many times the limit is read and dropped, so the client sees our 413."""
DEFAULT_LIMITS = ServiceLimits(max_connections=64, request_timeout=10.0, send_timeout=30.0)

# JSON-RPC 2.0 error codes, plus pouw's application range.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
APP_ERROR = -1  # default code of RpcError raised by a handler


class RpcError(Exception):
    """An error answered by the node (raise it in a handler to choose the
    code and message the client sees), or a client-side failure."""

    def __init__(self, message: str, code: int = APP_ERROR, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def __str__(self) -> str:
        return self.message


class InvalidParams(RpcError):
    """Raise in a handler when a parameter's value is wrong: answered -32602."""

    def __init__(self, message: str, data: Any = None):
        super().__init__(message, INVALID_PARAMS, data)


class RpcConnectionError(RpcError):
    """The node cannot be reached (not running, wrong port, no cookie)."""

    def __init__(self, message: str):
        super().__init__(message, code=0)


class RpcAuthError(RpcError):
    def __init__(self, message: str):
        super().__init__(message, code=401)


def cookie_path(datadir: str | os.PathLike) -> Path:
    return Path(datadir) / COOKIE_NAME


_cookie_path_of = cookie_path


def _write_cookie(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    # O_EXCL + 0600 from the start: the secret is never world readable.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{COOKIE_USER}:{secret}")
    os.replace(tmp, path)


class _Handler(BoundedHandler, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pouw-rpc/1"
    sys_version = ""

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype="application/json", extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, obj, status: int = 200, extra: dict | None = None):
        self._send(status, json.dumps(obj).encode(), extra=extra)

    def _http_error(self, status: int, message: str, extra: dict | None = None):
        self.close_connection = True
        self._send_json(
            {"jsonrpc": "2.0", "error": {"code": INVALID_REQUEST, "message": message}, "id": None},
            status,
            extra,
        )

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except Exception:
            return False
        return hmac.compare_digest(given, self.server.expected_auth)

    def do_GET(self):
        self._http_error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST with a JSON-RPC body", {"Allow": "POST"})

    do_PUT = do_DELETE = do_HEAD = do_GET

    def do_POST(self):
        if self.path not in ("/", ""):
            self._http_error(HTTPStatus.NOT_FOUND, f"no RPC endpoint at {self.path}; POST to /")
            return
        if not self._authorized():
            self._http_error(
                HTTPStatus.UNAUTHORIZED,
                "authentication required: send the cookie from the node's data directory",
                {"WWW-Authenticate": 'Basic realm="pouw"'},
            )
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self._http_error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return
        n = int(length)
        if n > self.server.max_body:
            # Drain a moderately oversized body so the client reads our 413
            # instead of a reset; anything bigger is cut off unread.
            if n <= DRAIN_FACTOR * self.server.max_body:
                remaining = n
                while remaining > 0:
                    got = self.rfile.read(min(remaining, 1 << 16))
                    if not got:
                        break
                    remaining -= len(got)
            self._http_error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {n} bytes exceeds the limit of {self.server.max_body} bytes",
            )
            return
        body = self.rfile.read(n)
        if len(body) < n:
            self.close_connection = True  # the client went away mid-body
            return
        self._send_json(self.server.dispatch(body))


class _Server(BoundedHTTPServer):
    busy_body = json.dumps(
        {"jsonrpc": "2.0", "error": {"code": INTERNAL_ERROR, "message": "the node is busy: too many RPC connections"}, "id": None}
    ).encode()
    busy_content_type = "application/json"


class RpcServer:
    """Serve ``handlers`` (method name -> callable taking keyword or
    positional params) as JSON-RPC from a background thread. Handlers run in
    the server's request threads; they must be thread safe."""

    def __init__(
        self,
        handlers: dict[str, Callable[..., Any]],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        datadir: str | os.PathLike = ".",
        *,
        max_body: int = DEFAULT_MAX_BODY,
        limits: ServiceLimits = DEFAULT_LIMITS,
    ):
        for name, fn in handlers.items():
            if not callable(fn):
                raise TypeError(f"RPC handler for {name!r} is not callable")
        self.handlers = dict(handlers)
        self._addr = (host, port)
        self.datadir = Path(datadir)
        self.max_body = max_body
        self.limits = limits
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._secret: str | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> "RpcServer":
        if self._httpd is not None:
            raise RuntimeError("the RPC server is already running")
        try:
            httpd = _Server(self._addr, _Handler, self.limits)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot start the RPC server on {self._addr[0]}:{self._addr[1]}: {exc.strerror}"
                " (is another pouw node using this port?)",
            ) from exc
        self._secret = secrets.token_hex(32)
        httpd.expected_auth = f"{COOKIE_USER}:{self._secret}".encode()
        httpd.max_body = self.max_body
        httpd.dispatch = self.dispatch
        try:
            _write_cookie(self.cookie_path, self._secret)
        except OSError:
            httpd.server_close()
            raise
        self._httpd = httpd
        self._thread = start_http_thread(httpd, "pouw-rpc")
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        stop_http_thread(self._httpd, self._thread)
        self._httpd = None
        self._thread = None
        # Remove the cookie only if it is still ours (a second node may have
        # replaced it).
        with contextlib.suppress(OSError):
            if self.cookie_path.read_text() == f"{COOKIE_USER}:{self._secret}":
                self.cookie_path.unlink()

    def __enter__(self) -> "RpcServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def cookie_path(self) -> Path:
        return cookie_path(self.datadir)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._addr[1]

    @property
    def host(self) -> str:
        return self._addr[0]

    @property
    def url(self) -> str:
        return f"http://{self._addr[0]}:{self.port}"

    # -- dispatch ------------------------------------------------------------

    def dispatch(self, body: bytes) -> dict:
        """The JSON-RPC answer to one request body; never raises."""
        try:
            return self._dispatch(body)
        except Exception as exc:  # a bug here must still answer
            log.exception("RPC dispatch failed")
            return _error(None, INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    def _dispatch(self, body: bytes) -> dict:
        try:
            req = json.loads(body)
        except RecursionError:
            return _error(None, PARSE_ERROR, "request is not valid JSON: nested too deeply")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(None, PARSE_ERROR, f"request is not valid JSON: {exc}")
        if isinstance(req, list):
            return _error(None, INVALID_REQUEST, "batch requests are not supported")
        if not isinstance(req, dict):
            return _error(None, INVALID_REQUEST, "request must be a JSON object")
        rid = req.get("id")
        if not (rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool)):
            return _error(None, INVALID_REQUEST, "request id must be a string, a number or null")
        method = req.get("method")
        if not isinstance(method, str):
            return _error(rid, INVALID_REQUEST, "request needs a string 'method'")
        fn = self.handlers.get(method)
        if fn is None:
            return _error(rid, METHOD_NOT_FOUND, f"unknown method {method[:100]!r}")
        params = req.get("params", {})
        if params is None:
            params = {}
        if isinstance(params, dict):
            args, kwargs = (), params
        elif isinstance(params, list):
            args, kwargs = tuple(params), {}
        else:
            return _error(rid, INVALID_PARAMS, "params must be an object or an array")
        problem = check_params(fn, args, kwargs)
        if problem is not None:
            return _error(rid, INVALID_PARAMS, f"invalid params for {method}: {problem}")
        return self._call(rid, method, fn, args, kwargs)

    def _call(self, rid, method: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> dict:
        try:
            result = fn(*args, **kwargs)
        except RpcError as exc:
            return _error(rid, exc.code, exc.message, exc.data)
        except RecursionError:
            return _error(rid, INVALID_PARAMS, f"invalid params for {method}: nested too deeply")
        except Exception as exc:
            log.exception("RPC method %s failed", method)
            return _error(rid, INTERNAL_ERROR, f"{method} failed: {type(exc).__name__}: {exc}")
        try:
            json.dumps(result)
        except (TypeError, ValueError, RecursionError) as exc:
            log.error("RPC method %s returned a non-JSON result: %s", method, exc)
            return _error(rid, INTERNAL_ERROR, f"{method} returned a result that is not JSON: {exc}")
        return {"jsonrpc": "2.0", "result": result, "id": rid}


def check_params(fn: Callable[..., Any], args: tuple, kwargs: dict) -> str | None:
    """Why `fn(*args, **kwargs)` does not fit `fn`'s signature (names, arity, and annotated JSON
    types: str, int, float, bool, list, dict, their unions and Optional), or None if it fits."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    except ValueError:
        return None  # builtins without a signature: let the call decide
    for name, value in bound.arguments.items():
        allowed = _param_types(fn).get(name)
        if allowed is not None and not _is_json_instance(value, allowed):
            names = " or ".join(sorted({_JSON_NAMES.get(t, t.__name__) for t in allowed}))
            return f"{name} must be {names}, got {_JSON_NAMES.get(type(value), type(value).__name__)}"
    return None


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
               dict: "an object", type(None): "null"}


def _is_json_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


@lru_cache(maxsize=None)
def _param_types(fn: Callable[..., Any]) -> dict[str, tuple[type, ...]]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return {}
    out = {}
    for name, tp in hints.items():
        allowed = _json_types(tp)
        if name != "return" and allowed is not None:
            out[name] = allowed
    return out


def _json_types(tp: Any) -> tuple[type, ...] | None:
    """The JSON value types an annotation admits, or None when it says nothing checkable."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_json_types(a) for a in typing.get_args(tp)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if tp is type(None):
        return (type(None),)
    base = origin or tp
    if base in (str, int, float, bool, dict):
        return (base,)
    if base in (list, tuple):
        return (list,)
    return None


def _error(rid, code: int, message: str, data: Any = None) -> dict:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": rid}


class RpcClient:
    """``RpcClient("http://127.0.0.1:8645", datadir=...).call("getinfo")``"""

    def __init__(
        self,
        url: str = f"http://127.0.0.1:{DEFAULT_PORT}",
        datadir: str | os.PathLike | None = None,
        *,
        cookie_path: str | os.PathLike | None = None,
        timeout: float = 60.0,
    ):
        if cookie_path is None and datadir is None:
            raise ValueError("RpcClient needs the node's datadir or the path of its cookie file")
        self.url = url.rstrip("/")
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"RPC url must look like http://127.0.0.1:{DEFAULT_PORT}, got {url!r}")
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self.cookie_path = Path(cookie_path) if cookie_path is not None else _cookie_path_of(datadir)
        self.timeout = timeout
        self._next_id = 0

    def _not_running(self, why: str) -> RpcConnectionError:
        return RpcConnectionError(
            f"cannot reach the pouw node at {self.url} ({why}); is `pouw node start` running?"
        )

    def _auth_header(self) -> str:
        try:
            cookie = self.cookie_path.read_text().strip()
        except FileNotFoundError:
            raise self._not_running(f"no RPC cookie at {self.cookie_path}") from None
        except OSError as exc:
            raise RpcConnectionError(f"cannot read the RPC cookie at {self.cookie_path}: {exc.strerror}") from exc
        return "Basic " + base64.b64encode(cookie.encode()).decode()

    def call(self, method: str, *args: Any, **params: Any) -> Any:
        """Call ``method`` with keyword params (or positional ones; not both)."""
        if args and params:
            raise ValueError("pass RPC params either by keyword or by position, not both")
        self._next_id += 1
        payload = {"jsonrpc": "2.0", "method": method, "params": list(args) if args else params, "id": self._next_id}
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": self._auth_header(),
            "Content-Length": str(len(body)),
        }
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            try:
                conn.request("POST", "/", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionRefusedError, socket.gaierror) as exc:
                raise self._not_running(exc.strerror or str(exc)) from None
            except (socket.timeout, TimeoutError):
                raise RpcConnectionError(f"the pouw node at {self.url} did not answer within {self.timeout} s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise self._not_running(str(exc) or type(exc).__name__) from None
        finally:
            conn.close()
        if resp.status == 401:
            raise RpcAuthError(
                f"the pouw node at {self.url} refused the cookie at {self.cookie_path} "
                "(is it the data directory of that node?)"
            )
        try:
            answer = json.loads(data)
        except ValueError:
            raise RpcError(f"the node at {self.url} sent a non-JSON answer (HTTP {resp.status})", code=resp.status) from None
        err = answer.get("error") if isinstance(answer, dict) else None
        if err:
            raise RpcError(str(err.get("message", "unknown error")), int(err.get("code", APP_ERROR)), err.get("data"))
        if resp.status != 200 or not isinstance(answer, dict) or "result" not in answer:
            raise RpcError(f"unexpected answer from the node at {self.url} (HTTP {resp.status})", code=resp.status)
        return answer["result"]
