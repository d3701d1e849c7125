"""Attack: a blob link chosen by a block's author stalls or floods the node that fetches it.

Before, `BlobStore.fetch` ignored the declared size, had only a per-read
timeout and read any `file://` link: a server sending one byte every few
seconds held a worker forever, and `file:///dev/zero` was read past 256 MiB
for a 1,000-byte blob. Each test here runs a real socket server scripted to
misbehave and checks that the fetch stops at the limit it breaks, says so,
and keeps nothing.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest

from pouw.blobstore import BlobError, BlobStore, FetchLimitError, FetchLimits

SIZE = 1000
DATA = os.urandom(SIZE)
DIGEST = hashlib.sha256(DATA).digest()
# Short periods keep the tests quick; the rules are the same as the defaults'.
FAST = FetchLimits(deadline=3.0, min_rate=2000.0, grace=0.5, silence=2.0)


class ScriptedServer:
    """A TCP server whose every connection runs `script(conn)` after the request headers arrive."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/blob") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(4096)
                if not got:
                    return
                request += got
            self.requests.append(request)
            try:
                self.script(conn, self._stop)
            except OSError:
                pass  # the client hung up: what a limit is for

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture()
def serve():
    servers = []

    def make(script):
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def headers(length: int | None = SIZE, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\n{extra}"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + "\r\n").encode()


def timed_fetch(store: BlobStore, link: str, **kwargs) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        store.fetch(link, DIGEST, **kwargs)
    except BlobError as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def assert_nothing_kept(store: BlobStore) -> None:
    assert not store.has(DIGEST)
    assert list(store.tmp_dir.iterdir()) == []


def test_slow_drip_body_is_cut_at_the_minimum_rate(tmp_path, serve):
    def drip(conn, stop):
        conn.sendall(headers())
        for b in DATA:  # one byte every 0.2 s: each read succeeds, the whole never ends
            if stop.wait(0.2):
                return
            conn.sendall(bytes([b]))

    server = serve(drip)
    store = BlobStore(tmp_path)
    err, seconds = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert isinstance(err, FetchLimitError), err
    assert "below the minimum average rate of 2000 bytes/s" in str(err)
    # Cut soon after the grace period, not after the 200 s the drip would last.
    assert seconds < FAST.grace + 1.5
    assert_nothing_kept(store)


def test_slow_drip_headers_hit_the_same_limits(tmp_path, serve):
    def drip_headers(conn, stop):
        for b in headers():
            if stop.wait(0.2):
                return
            conn.sendall(bytes([b]))

    server = serve(drip_headers)
    store = BlobStore(tmp_path)
    err, seconds = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert isinstance(err, FetchLimitError), err
    assert seconds < FAST.grace + 1.5
    assert_nothing_kept(store)


def test_total_deadline_holds_even_at_a_good_rate(tmp_path, serve):
    big = 40_000

    def steady(conn, stop):
        conn.sendall(headers(big))
        for _ in range(big // 1000):  # 10 kB/s: above the rate, but 4 s in all
            if stop.wait(0.1):
                return
            conn.sendall(b"x" * 1000)

    server = serve(steady)
    store = BlobStore(tmp_path)
    limits = FetchLimits(deadline=1.5, min_rate=1000.0, grace=0.2, silence=2.0)
    err, seconds = timed_fetch(store, server.url(), size=big, limits=limits)
    assert isinstance(err, FetchLimitError) and "deadline of 1.5 s" in str(err), err
    assert seconds < 2.5
    assert list(store.tmp_dir.iterdir()) == []


def test_silence_is_cut(tmp_path, serve):
    def silent(conn, stop):
        conn.sendall(headers())
        stop.wait(10)

    server = serve(silent)
    store = BlobStore(tmp_path)
    limits = FetchLimits(deadline=10, min_rate=0, grace=10, silence=0.5)
    err, seconds = timed_fetch(store, server.url(), size=SIZE, limits=limits)
    assert isinstance(err, FetchLimitError) and "sent nothing for 0.5 s" in str(err), err
    assert seconds < 2


def test_oversized_body_stops_one_byte_past_the_declared_size(tmp_path, serve):
    sent = []

    def flood(conn, stop):
        conn.sendall(headers(None))  # no length: ends when the server closes
        for _ in range(1000):
            conn.sendall(b"z" * 65536)
            sent.append(65536)

    server = serve(flood)
    store = BlobStore(tmp_path)
    err, _ = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert isinstance(err, FetchLimitError) and "sent more than the declared size of 1000 bytes" in str(err), err
    assert_nothing_kept(store)


def test_announced_length_over_the_size_is_refused_before_the_body(tmp_path, serve):
    server = serve(lambda conn, stop: conn.sendall(headers(10 << 30) + DATA))
    store = BlobStore(tmp_path)
    err, _ = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert isinstance(err, FetchLimitError) and "announced 10737418240 bytes, not the declared size" in str(err), err
    # Without a declared size the caller's bound applies.
    err, _ = timed_fetch(store, server.url(), max_size=5000, limits=FAST)
    assert isinstance(err, FetchLimitError) and "over the limit of 5000 bytes" in str(err), err
    assert_nothing_kept(store)


def test_short_body_is_an_error(tmp_path, serve):
    server = serve(lambda conn, stop: conn.sendall(headers(None) + DATA[:500]))
    store = BlobStore(tmp_path)
    err, _ = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert isinstance(err, FetchLimitError) and "ended after 500 of the declared 1000 bytes" in str(err), err
    server = serve(lambda conn, stop: conn.sendall(headers(SIZE) + DATA[:500]))
    err, _ = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert isinstance(err, BlobError) and "500" in str(err), err
    assert_nothing_kept(store)


def test_dev_zero_link_is_refused(tmp_path):
    store = BlobStore(tmp_path)
    err, _ = timed_fetch(store, "file:///dev/zero", size=SIZE)
    assert err is not None and "file:// links are only for local imports" in str(err), err
    # Even a local caller that opts in reads no more than one byte past the declared size.
    err, seconds = timed_fetch(store, "file:///dev/zero", size=SIZE, allow_file=True)
    assert isinstance(err, FetchLimitError) and "sent more than the declared size of 1000 bytes" in str(err), err
    assert seconds < 1
    assert_nothing_kept(store)


def test_redirect_to_a_file_link_is_refused(tmp_path, serve):
    server = serve(lambda conn, stop: conn.sendall(headers(0, "302 Found", "Location: file:///dev/zero\r\n")))
    store = BlobStore(tmp_path)
    err, _ = timed_fetch(store, server.url(), size=SIZE, limits=FAST, allow_file=True)
    assert err is not None and "refused redirect" in str(err) and "file:///dev/zero" in str(err), err
    assert_nothing_kept(store)


def test_redirect_loop_stops(tmp_path, serve):
    server = serve(lambda conn, stop: conn.sendall(headers(0, "302 Found", "Location: /again\r\n")))
    store = BlobStore(tmp_path)
    err, _ = timed_fetch(store, server.url(), size=SIZE, limits=FAST)
    assert err is not None and "more than 3 redirects" in str(err), err
    assert len(server.requests) == 4


def test_an_honest_redirect_is_followed(tmp_path, serve):
    target = serve(lambda conn, stop: conn.sendall(headers() + DATA))
    server = serve(lambda conn, stop: conn.sendall(headers(0, "307 Temporary Redirect", f"Location: {target.url()}\r\n")))
    store = BlobStore(tmp_path)
    assert store.fetch(server.url(), DIGEST, size=SIZE, limits=FAST).read_bytes() == DATA
