"""Standard-library HTTP servers that a hostile client cannot exhaust (the RPC and blob servers).

`BoundedHTTPServer` serves each connection from its own thread, but:

* at most `max_connections` connections are served at once. A connection
  beyond that evicts the connection that has waited longest for a request
  that has not fully arrived (idle keep-alive, half-open, dripping headers);
  when every connection is busy with a complete request, the newcomer is
  answered `503` with `Connection: close` at once, without a thread;
* every request must arrive whole (request line, headers and body) within
  `request_timeout` seconds from when the server starts waiting for it, so
  an idle or dripping connection is closed after that at the latest;
* a peer that stops reading our answer is dropped after `send_timeout`
  seconds without progress.

Handlers mix in `BoundedHandler` before `BaseHTTPRequestHandler`.
"""

from __future__ import annotations

import io
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_SEND_TIMEOUT = 30.0
REFUSAL_LINGER = 1.0
"""Seconds a refused connection is read and discarded after its 503, so the client can read the answer."""
MAX_LINGERING = 256
"""Refused connections lingering at once; beyond that they are closed at once."""


@dataclass(frozen=True)
class ServiceLimits:
    """What one HTTP service grants its clients."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections served at once (one thread each)."""
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    """Seconds for a whole request to arrive, counted from when the server starts waiting for it."""
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    """Seconds a client may leave our answer unread before it is dropped."""


class _Connection:
    """One served connection: its socket and whether a whole request is in hand."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.waiting_since = time.monotonic()
        self.deadline = float("inf")
        self.busy = False
        self.evicted = False

    def wait_for_request(self, timeout: float) -> None:
        self.waiting_since = time.monotonic()
        self.deadline = self.waiting_since + timeout
        self.busy = False

    def evict(self) -> None:
        self.evicted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in recv
        except OSError:
            pass


class _DeadlineReader(io.RawIOBase):
    """Socket reads that give up when the connection's request deadline passes, however the bytes trickle."""

    def __init__(self, conn: _Connection, send_timeout: float):
        self._conn = conn
        self._send_timeout = send_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        left = self._conn.deadline - time.monotonic()
        if left <= 0 or self._conn.evicted:
            raise TimeoutError("the request did not arrive in time")
        sock = self._conn.sock
        sock.settimeout(left)
        try:
            return sock.recv_into(buf)
        finally:
            sock.settimeout(self._send_timeout)


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered writes that send everything (socket timeout: send_timeout without progress)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class BoundedHandler:
    """Mix-in for a BaseHTTPRequestHandler served by BoundedHTTPServer."""

    server: "BoundedHTTPServer"

    def setup(self) -> None:
        conn = self.server._connection_of(self.request)
        self._conn = conn
        self.connection = self.request
        self.connection.settimeout(self.server.limits.send_timeout)
        self.rfile = io.BufferedReader(_DeadlineReader(conn, self.server.limits.send_timeout), 65536)
        self.wfile = _SocketWriter(self.connection)

    def handle_one_request(self) -> None:
        self._conn.wait_for_request(self.server.limits.request_timeout)
        try:
            BaseHTTPRequestHandler.handle_one_request(self)  # type: ignore[arg-type]
        except OSError:
            self.close_connection = True  # reset, evicted or timed out mid-answer

    def parse_request(self) -> bool:
        ok = BaseHTTPRequestHandler.parse_request(self)  # type: ignore[arg-type]
        if ok:
            self._conn.busy = True  # headers in: no longer evictable (the body still has the deadline)
        return ok


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a connection cap, eviction of idle connections and request deadlines."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: a burst of connects must not wait for SYN retries
    busy_body: bytes = b"server busy: too many connections, try again\n"
    busy_content_type: str = "text/plain; charset=utf-8"

    def __init__(self, address, handler, limits: ServiceLimits | None = None):
        self.limits = limits or ServiceLimits()
        self._conns: dict[socket.socket, _Connection] = {}
        self._conns_lock = threading.Lock()
        self.refused = 0
        """Connections answered 503 because every slot was busy."""
        self.evictions = 0
        """Waiting connections closed to make room for a new one."""
        super().__init__(address, handler)

    def _connection_of(self, sock: socket.socket) -> _Connection:
        with self._conns_lock:
            conn = self._conns.get(sock)
        if conn is None:  # evicted before its thread started
            conn = _Connection(sock)
            conn.evicted = True
        return conn

    def process_request(self, request, client_address) -> None:
        if not self._admit(request):
            self.refused += 1
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def _admit(self, request: socket.socket) -> bool:
        """Register `request`, evicting the connection waiting longest if at the cap; False if all are busy."""
        with self._conns_lock:
            if len(self._conns) >= self.limits.max_connections:
                waiting = [c for c in self._conns.values() if not c.busy and not c.evicted]
                if not waiting:
                    return False
                victim = min(waiting, key=lambda c: c.waiting_since)
                victim.evict()
                del self._conns[victim.sock]
                self.evictions += 1
            self._conns[request] = _Connection(request)
        return True

    def shutdown_request(self, request) -> None:
        self._forget(request)
        super().shutdown_request(request)

    def _forget(self, request) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)

    @property
    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def _refuse(self, request: socket.socket) -> None:
        body = self.busy_body
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            f"Content-Type: {self.busy_content_type}\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            request.setblocking(False)  # never let a refused client stall the accept loop
            request.send(head + body)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        self._lingerer.add(request)

    @property
    def _lingerer(self) -> "_Lingerer":
        # Only the accept thread refuses, so creating it lazily needs no lock.
        if getattr(self, "_linger", None) is None:
            self._linger = _Lingerer()
        return self._linger

    def server_close(self) -> None:
        super().server_close()
        linger = getattr(self, "_linger", None)
        if linger is not None:
            linger.stop()


class _Lingerer:
    """Drains refused connections for a moment so their clients read the 503 instead of a reset.

    Closing a socket with unread request bytes makes the kernel send a reset,
    which can destroy the answer before the client reads it. One thread for
    all refused sockets of a server, none of them held past REFUSAL_LINGER.
    """

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._until: dict[socket.socket, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="pouw-http-linger", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stop or len(self._until) >= MAX_LINGERING:
                sock.close()
                return
            self._until[sock] = time.monotonic() + REFUSAL_LINGER
            self._sel.register(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._until.pop(sock, None)
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                empty = not self._until
            if empty:
                time.sleep(0.05)
                continue
            for key, _ in self._sel.select(0.05):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(key.fileobj)
            now = time.monotonic()
            with self._lock:
                late = [s for s, until in self._until.items() if until <= now]
            for sock in late:
                self._drop(sock)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(1)
        with self._lock:
            socks = list(self._until)
        for sock in socks:
            self._drop(sock)


def start_http_thread(httpd: ThreadingHTTPServer, name: str) -> threading.Thread:
    """Serve `httpd` from a daemon thread; returns the thread."""
    thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), name=name, daemon=True)
    thread.start()
    return thread


def stop_http_thread(httpd: ThreadingHTTPServer, thread: threading.Thread, timeout: float = 10.0) -> None:
    """Stop serving, close the socket and every open connection, and wait for the thread."""
    httpd.shutdown()
    httpd.server_close()
    if isinstance(httpd, BoundedHTTPServer):
        with httpd._conns_lock:
            conns = list(httpd._conns.values())
        for conn in conns:
            conn.evict()
    thread.join(timeout)
