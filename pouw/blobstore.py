"""Content-addressed blob store on disk.

A blob is stored under ``ROOT/blobs/ab/abcdef...`` where the name is the hex
SHA-256 of its bytes. Bytes are always streamed (never the whole blob in
memory), hashed as they are written to a temporary file in ``ROOT/tmp``,
fsynced, checked against their digest and only then renamed into place, so a
visible blob is always complete and correct.

Fetching trusts nothing of the link: a link's author (e.g. a block's miner)
chooses the server, so every fetch is bounded by the blob's declared size
(read at most one byte past it), a total deadline, a minimum average rate
after a grace period and the longest silence (`FetchLimits`); only
http(s) links are followed (redirects too), ``file://`` only for a local
caller that opts in. A failed fetch keeps nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

CHUNK_SIZE = 1 << 20
"""Bytes read or written per step when streaming a blob."""

DIGEST_SIZE = 32

ProgressFn = Callable[[int, "int | None"], None]
"""progress(done_bytes, total_bytes_or_None)."""


DEFAULT_MAX_FETCH = 4 << 30
"""Bytes a fetch may bring when the caller declares neither size nor max_size."""

REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class BlobError(Exception):
    """Any blob store failure: missing blob, digest mismatch, bad link, I/O."""


class FetchLimitError(BlobError):
    """A fetch broke one of its limits: size, deadline, minimum rate or silence."""


@dataclasses.dataclass(frozen=True)
class FetchLimits:
    """What one fetch may cost in time; the size bound comes with the blob."""

    deadline: float = 900.0
    """Seconds for the whole fetch, from the first connect to the last byte."""
    min_rate: float = 256 * 1024
    """Bytes per second the source must average since the start, once the grace period is over."""
    grace: float = 10.0
    """Seconds before `min_rate` applies (connection set-up, headers, slow start)."""
    silence: float = 30.0
    """Longest wait for the next byte."""
    max_redirects: int = 3
    """HTTP redirects followed (to http(s) links only)."""


class FetchBudget:
    """One fetch measured against its limits: bytes expected or allowed, deadline and rate.

    `what` names the source in every error. Thread safe for one writer
    (the fetching thread) and readers (a watchdog).
    """

    def __init__(self, what: str, limits: FetchLimits, *, size: int | None = None, max_size: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if size is not None and (not isinstance(size, int) or size < 0):
            raise BlobError(f"declared blob size must be a non-negative integer, got {size!r}")
        self.what = what
        self.limits = limits
        self.exact = size
        self.most = size if size is not None else (max_size if max_size is not None else DEFAULT_MAX_FETCH)
        self.clock = clock
        self.started = clock()
        self.done = 0

    @property
    def total(self) -> int | None:
        """The size the fetch should reach, when declared."""
        return self.exact

    @property
    def room(self) -> int:
        """Bytes to ask for next: the bound plus one, so that a source sending more is caught."""
        return self.most + 1 - self.done

    def _bound_text(self) -> str:
        return f"the declared size of {self.exact} bytes" if self.exact is not None else f"the limit of {self.most} bytes"

    def expect_length(self, header: str | None) -> None:
        """Refuse an announced length (e.g. Content-Length) that cannot be right, before any body is read."""
        if header is None:
            return
        try:
            length = int(header)
        except ValueError:
            raise BlobError(f"{self.what} announced an unreadable length {header!r}") from None
        if self.exact is not None and length != self.exact:
            raise FetchLimitError(f"{self.what} announced {length} bytes, not {self._bound_text()}")
        if length > self.most:
            raise FetchLimitError(f"{self.what} announced {length} bytes, over {self._bound_text()}")

    def add(self, n: int) -> None:
        """Count `n` received bytes; raises FetchLimitError past the bound."""
        self.done += n
        if self.done > self.most:
            raise FetchLimitError(f"{self.what} sent more than {self._bound_text()}")

    def violation(self) -> str | None:
        """Why the fetch must stop now (deadline or rate), or None."""
        elapsed = self.clock() - self.started
        lim = self.limits
        if elapsed > lim.deadline:
            return f"{self.what} did not finish within the deadline of {lim.deadline:g} s ({self.done} bytes received)"
        if elapsed > lim.grace and self.done < lim.min_rate * elapsed and self.done != self.exact:
            return (f"{self.what} sent {self.done} bytes in {elapsed:.1f} s, below the minimum average rate "
                    f"of {lim.min_rate:g} bytes/s")
        return None

    def check(self) -> None:
        """Raise FetchLimitError if the deadline or the rate is broken."""
        reason = self.violation()
        if reason:
            raise FetchLimitError(reason)

    def seconds_left(self) -> float:
        """Seconds until the earliest moment the deadline or the rate can be broken at the current count."""
        lim = self.limits
        rate_at = max(lim.grace, self.done / lim.min_rate) if lim.min_rate > 0 else lim.deadline
        return min(lim.deadline, rate_at) - (self.clock() - self.started)

    def finish(self) -> None:
        """The source ended: raise unless it sent the declared size."""
        if self.exact is not None and self.done != self.exact:
            raise FetchLimitError(f"{self.what} ended after {self.done} of the declared {self.exact} bytes")


def is_digest(value: object) -> bool:
    """True for a 32-byte digest."""
    return isinstance(value, (bytes, bytearray)) and len(value) == DIGEST_SIZE


def _check_digest(digest: bytes) -> str:
    if not is_digest(digest):
        raise BlobError(f"blob digest must be 32 bytes, got {digest!r:.80}")
    return bytes(digest).hex()


def compute_file_digest(path: Path | str, chunk_size: int = CHUNK_SIZE) -> bytes:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.digest()


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported everywhere, so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class BlobWriter:
    """Streams bytes into a temporary file; `commit()` makes them a blob.

    Use as a context manager: leaving the block without a commit (or with an
    exception) discards the temporary file.
    """

    def __init__(self, store: "BlobStore") -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="w-")
        self._file = os.fdopen(fd, "wb")
        self._tmp = Path(name)
        self._hash = hashlib.sha256()
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes) -> int:
        if self._done:
            raise BlobError("blob writer already closed")
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def commit(self, expected_digest: bytes | None = None) -> bytes:
        """Finish the blob; raises BlobError (and discards it) on a digest mismatch."""
        if self._done:
            raise BlobError("blob writer already closed")
        digest = self._hash.digest()
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if expected_digest is not None and digest != bytes(expected_digest):
                raise BlobError(
                    f"blob digest mismatch: expected {_check_digest(expected_digest)}, got {digest.hex()}"
                )
            self._store._install(self._tmp, digest)
        except BaseException:
            self.discard()
            raise
        self._done = True
        return digest

    def discard(self) -> None:
        """Drop the temporary file (idempotent)."""
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.discard()


class BlobStore:
    """Blobs on disk addressed by SHA-256."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        for d in (self.blob_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- lookups ---------------------------------------------------------
    def path(self, digest: bytes) -> Path:
        """Where the blob with `digest` lives (whether or not it exists)."""
        hexd = _check_digest(digest)
        return self.blob_dir / hexd[:2] / hexd

    def has(self, digest: bytes) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: bytes) -> int:
        p = self._existing(digest)
        return p.stat().st_size

    def open(self, digest: bytes) -> BinaryIO:
        """Open a stored blob for reading (binary)."""
        return open(self._existing(digest), "rb")

    def get_bytes(self, digest: bytes, max_size: int | None = None) -> bytes:
        """The whole blob in memory; for small blobs only (checkpoints, manifests)."""
        p = self._existing(digest)
        if max_size is not None and p.stat().st_size > max_size:
            raise BlobError(f"blob {digest.hex()} is larger than {max_size} bytes")
        return p.read_bytes()

    def verify(self, digest: bytes) -> bool:
        """Re-hash the stored blob; False if missing or corrupt."""
        p = self.path(digest)
        if not p.is_file():
            return False
        return compute_file_digest(p) == bytes(digest)

    def iter_digests(self) -> Iterator[bytes]:
        for sub in sorted(self.blob_dir.iterdir()):
            if sub.is_dir():
                for f in sorted(sub.iterdir()):
                    with contextlib.suppress(ValueError):
                        yield bytes.fromhex(f.name)

    def delete(self, digest: bytes) -> int | None:
        """Delete a blob; returns the bytes it held, or None when it was not in the store.

        Safe against a reader: a file already open stays readable until closed (POSIX unlink).
        """
        p = self.path(digest)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return None
        return size

    def remove(self, digest: bytes) -> None:
        """Delete a blob if present (`delete` without the size)."""
        self.delete(digest)

    def _existing(self, digest: bytes) -> Path:
        p = self.path(digest)
        if not p.is_file():
            raise BlobError(f"blob {digest.hex()} is not in the store at {self.root}")
        return p

    # -- writing ---------------------------------------------------------
    def writer(self) -> BlobWriter:
        """A streaming writer; `with store.writer() as w: w.write(...); w.commit()`."""
        return BlobWriter(self)

    def put_bytes(self, data: bytes) -> bytes:
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def put_file(self, path: Path | str) -> bytes:
        """Copy a file into the store (streamed); returns its digest."""
        try:
            src = open(path, "rb")
        except OSError as exc:
            raise BlobError(f"cannot read {path}: {exc.strerror or exc}") from exc
        with src, self.writer() as w:
            while chunk := src.read(CHUNK_SIZE):
                w.write(chunk)
            return w.commit()

    def _install(self, tmp: Path, digest: bytes) -> None:
        dst = self.path(digest)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_file():
            tmp.unlink()  # same content already there
            return
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)

    # -- fetching --------------------------------------------------------
    def fetch(
        self,
        link: str,
        digest: bytes,
        *,
        size: int | None = None,
        progress: ProgressFn | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
        limits: FetchLimits | None = None,
        allow_file: bool = False,
    ) -> Path:
        """Get a blob from an ``http(s)://`` link unless already stored.

        `size` is the blob's declared size: the source must send exactly that
        many bytes (reading stops at `size + 1`). Without it, at most
        `max_size` bytes (DEFAULT_MAX_FETCH when neither is given). `limits`
        bound the time: a total deadline, a minimum average rate after a grace
        period and the longest silence (`timeout` overrides that one). The
        bytes become visible only once their SHA-256 equals `digest`; on any
        failure nothing is kept and BlobError says why (FetchLimitError for a
        broken limit). ``file://`` links are refused unless `allow_file` is
        set, which only a local caller naming its own files may do: links
        that come from the network are never trusted with the local disk.
        """
        _check_digest(digest)
        if self.has(digest):
            return self.path(digest)
        limits = limits or FetchLimits()
        if timeout is not None:
            limits = dataclasses.replace(limits, silence=float(timeout))
        budget = FetchBudget(f"blob link {link}", limits, size=size, max_size=max_size)
        scheme = urllib.parse.urlparse(link).scheme
        if scheme == "file":
            if not allow_file:
                raise BlobError(f"refused blob link {link!r}: file:// links are only for local imports")
            src = Path(urllib.request.url2pathname(urllib.parse.urlparse(link).path))
            return self._fetch_file(src, digest, budget, progress)
        if scheme in ("http", "https"):
            return self._fetch_http(link, digest, budget, progress)
        raise BlobError(f"unsupported blob link {link!r}: use http:// or https://")

    def _fetch_file(self, src: Path, digest: bytes, budget: "FetchBudget", progress) -> Path:
        try:
            f = open(src, "rb")
        except OSError as exc:
            raise BlobError(f"cannot read blob link {src}: {exc.strerror or exc}") from exc
        with f, self.writer() as w:
            # Read at most one byte past the bound: /dev/zero or a growing file stops there.
            while chunk := f.read(min(CHUNK_SIZE, budget.room)):
                budget.add(len(chunk))
                w.write(chunk)
                budget.check()
                if progress:
                    progress(budget.done, budget.total)
            budget.finish()
            w.commit(expected_digest=digest)
        return self.path(digest)

    def _fetch_http(self, link: str, digest: bytes, budget: "FetchBudget", progress) -> Path:
        with _Watchdog(budget) as watch:
            conn, resp = _open_http(link, budget, watch)
            try:
                with self.writer() as w:
                    budget.expect_length(resp.getheader("Content-Length"))
                    while chunk := watch.read(resp, min(CHUNK_SIZE, budget.room)):
                        budget.add(len(chunk))
                        w.write(chunk)
                        budget.check()
                        if progress:
                            progress(budget.done, budget.total)
                    budget.finish()
                    w.commit(expected_digest=digest)
            finally:
                resp.close()
                conn.close()
        return self.path(digest)


class _Watchdog:
    """Cuts a fetch's socket the moment its budget breaks, whatever the socket is blocked on.

    A per-read timeout alone lets a source that sends a byte just before each
    timeout run forever (also while headers are read); the watchdog sleeps
    until the earliest moment the deadline or the rate can be broken, checks,
    and shuts the socket down, which wakes the blocked read.
    """

    def __init__(self, budget: FetchBudget):
        self.budget = budget
        self.reason: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pouw-fetch-watchdog", daemon=True)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.reason is not None:
                _shutdown(sock)

    def _run(self) -> None:
        while not self._stop.wait(max(0.005, self.budget.seconds_left())):
            reason = self.budget.violation()
            if reason is not None:
                with self._lock:
                    self.reason = reason
                    if self._sock is not None:
                        _shutdown(self._sock)
                return

    def error(self, exc: BaseException, context: str) -> BlobError:
        """The error for an I/O failure: the broken limit when the watchdog cut the socket."""
        if self.reason is not None:
            return FetchLimitError(self.reason)
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return FetchLimitError(f"{self.budget.what} sent nothing for {self.budget.limits.silence:g} s")
        return BlobError(f"{context}: {exc or type(exc).__name__}")

    def read(self, resp: http.client.HTTPResponse, n: int) -> bytes:
        """At most `n` body bytes from one socket read (read1: a slow source cannot hold a big read open)."""
        try:
            data = resp.read1(n)
        except (OSError, http.client.HTTPException) as exc:
            raise self.error(exc, f"fetching {self.budget.what} failed after {self.budget.done} bytes") from None
        if not data and self.reason is not None:
            raise FetchLimitError(self.reason)
        return data


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _connection_for(url: str, budget: FetchBudget) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlobError(f"refused blob link {url!r}: only http:// and https:// links are followed")
    timeout = max(0.01, min(budget.limits.silence, budget.seconds_left()))
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return conn, target


def _open_http(link: str, budget: FetchBudget, watch: _Watchdog) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET `link`, following up to max_redirects http(s) redirects; a 200 response ready to stream."""
    url = link
    for _ in range(budget.limits.max_redirects + 1):
        conn, target = _connection_for(url, budget)
        try:
            conn.connect()
            watch.attach(conn.sock)
            conn.sock.settimeout(budget.limits.silence)
            conn.request("GET", target, headers={"User-Agent": "pouw-blobstore", "Accept-Encoding": "identity"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise watch.error(exc, f"fetching {url}") from None
        if resp.status == 200:
            return conn, resp
        location = resp.getheader("Location")
        resp.close()
        conn.close()
        if resp.status not in REDIRECT_STATUSES:
            raise BlobError(f"fetching {url}: HTTP {resp.status} {resp.reason}")
        if not location:
            raise BlobError(f"fetching {url}: HTTP {resp.status} redirect without a Location")
        nxt = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(nxt).scheme not in ("http", "https"):
            raise BlobError(f"refused redirect from {url} to {nxt!r}: only http:// and https:// links are followed")
        url = nxt
    raise BlobError(f"fetching {link}: more than {budget.limits.max_redirects} redirects")


def copy_blob_to(store: BlobStore, digest: bytes, dst: Path | str) -> Path:
    """Stream a stored blob to a file outside the store."""
    with store.open(digest) as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_SIZE)
    return Path(dst)


__all__ = [
    "BlobStore", "BlobWriter", "BlobError", "FetchLimitError", "FetchLimits", "FetchBudget", "DEFAULT_MAX_FETCH",
    "compute_file_digest", "copy_blob_to", "is_digest", "CHUNK_SIZE",
]
