"""Content-addressed blob store on disk.

A blob is stored under ``ROOT/blobs/ab/abcdef...`` where the name is the hex
SHA-256 of its bytes. Bytes are always streamed (never the whole blob in
memory), written to a temporary file in ``ROOT/tmp``, fsynced, checked against
their digest and only then renamed into place, so a visible blob is always
complete and correct. Downloads accumulate in ``ROOT/partial/<hex>`` so an
interrupted HTTP fetch resumes with a Range request.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

CHUNK_SIZE = 1 << 20
"""Bytes read or written per step when streaming a blob."""

DIGEST_SIZE = 32

ProgressFn = Callable[[int, "int | None"], None]
"""progress(done_bytes, total_bytes_or_None)."""


class BlobError(Exception):
    """Any blob store failure: missing blob, digest mismatch, bad link, I/O."""


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
        self.partial_dir = self.root / "partial"
        for d in (self.blob_dir, self.tmp_dir, self.partial_dir):
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

    def remove(self, digest: bytes) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

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
        progress: ProgressFn | None = None,
        max_size: int | None = None,
        timeout: float = 30.0,
    ) -> Path:
        """Get a blob from a ``file://`` or ``http(s)://`` link unless already stored.

        The bytes become visible only once their SHA-256 equals `digest`. An
        HTTP download interrupted half-way resumes from the partial file.
        """
        hexd = _check_digest(digest)
        if self.has(digest):
            return self.path(digest)
        parsed = urllib.parse.urlparse(link)
        if parsed.scheme == "file":
            src = Path(urllib.request.url2pathname(parsed.path))
            return self._fetch_file(src, digest, progress, max_size)
        if parsed.scheme in ("http", "https"):
            return self._fetch_http(link, hexd, digest, progress, max_size, timeout)
        raise BlobError(f"unsupported blob link {link!r}: use file://, http:// or https://")

    def _fetch_file(self, src: Path, digest: bytes, progress, max_size) -> Path:
        try:
            total = src.stat().st_size
            f = open(src, "rb")
        except OSError as exc:
            raise BlobError(f"cannot read blob link {src}: {exc.strerror or exc}") from exc
        if max_size is not None and total > max_size:
            f.close()
            raise BlobError(f"blob at {src} is {total} bytes, over the limit of {max_size}")
        with f, self.writer() as w:
            while chunk := f.read(CHUNK_SIZE):
                w.write(chunk)
                if progress:
                    progress(w.size, total)
            w.commit(expected_digest=digest)
        return self.path(digest)

    def _fetch_http(self, link, hexd, digest, progress, max_size, timeout) -> Path:
        part = self.partial_dir / hexd
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(link, headers={"User-Agent": "pouw-blobstore"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                # Partial already holds everything the server has: check it.
                return self._finish_partial(part, digest)
            raise BlobError(f"fetching {link}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise BlobError(f"fetching {link}: {getattr(exc, 'reason', exc)}") from exc
        with resp:
            if have and resp.status == 206:
                mode = "ab"
                start = have
            else:
                mode = "wb"  # server ignored the Range: start over
                start = 0
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            if max_size is not None and total is not None and total > max_size:
                raise BlobError(f"blob at {link} is {total} bytes, over the limit of {max_size}")
            done = start
            try:
                with open(part, mode) as out:
                    while chunk := resp.read(CHUNK_SIZE):
                        out.write(chunk)
                        done += len(chunk)
                        if max_size is not None and done > max_size:
                            raise BlobError(f"blob at {link} exceeds the limit of {max_size} bytes")
                        if progress:
                            progress(done, total)
                    out.flush()
                    os.fsync(out.fileno())
            except BlobError:
                part.unlink(missing_ok=True)
                raise
            except OSError as exc:
                # Keep the partial file: the next fetch resumes from it.
                raise BlobError(f"fetching {link} interrupted after {done} bytes: {exc}") from exc
            if total is not None and done < total:
                raise BlobError(f"fetching {link} interrupted after {done} of {total} bytes")
        return self._finish_partial(part, digest)

    def _finish_partial(self, part: Path, digest: bytes) -> Path:
        got = compute_file_digest(part)
        if got != digest:
            part.unlink(missing_ok=True)
            raise BlobError(f"downloaded blob digest mismatch: expected {digest.hex()}, got {got.hex()}")
        self._install(part, digest)
        return self.path(digest)


def copy_blob_to(store: BlobStore, digest: bytes, dst: Path | str) -> Path:
    """Stream a stored blob to a file outside the store."""
    with store.open(digest) as src, open(dst, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK_SIZE)
    return Path(dst)


__all__ = ["BlobStore", "BlobWriter", "BlobError", "compute_file_digest", "copy_blob_to", "is_digest", "CHUNK_SIZE"]
