"""``/pouw/blob/1``: blob chunks over a libp2p stream, the fallback for peers
that cannot reach each other's HTTP blob server.

One stream carries a session of requests, each answered in order:

    request  frame: msgpack [digest (32 bytes), offset (int), length (int)]
    response frame: 0x00 || total_size (8 bytes, big endian) || chunk
                    0x01 || error message     (e.g. blob not found)

``length`` is at most CHUNK_SIZE (1 MiB); the server sends fewer bytes only
at the end of the blob. The client pipelines a few requests so the stream
never idles, writes through BlobStore.writer() (which hashes as it goes) and
commits only if the SHA-256 matches; a mismatch penalizes the peer.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

import msgpack
import trio

from pouw.blobstore import BlobError, FetchBudget, FetchLimitError, FetchLimits

from .framing import FrameError, FrameReader, P2PError, RemoteError, encode_frame, error_frame, ok_frame, parse_response
from .node import P2PNode, PeerLike, as_peer_id

log = logging.getLogger("pouw.p2p.blob")

BLOB_PROTOCOL = "/pouw/blob/1"
CHUNK_SIZE = 1 << 20
MAX_REQUEST = 128
MAX_RESPONSE = 1 + 8 + CHUNK_SIZE
PIPELINE = 4
IDLE_TIMEOUT = 30.0


def serve_blobs(node: P2PNode, store) -> None:
    """Answer /pouw/blob/1 requests from ``store`` (has/path, like BlobStore)."""

    async def handle(peer, stream) -> None:
        reader = FrameReader(stream)
        try:
            while True:
                try:
                    with trio.fail_after(IDLE_TIMEOUT):
                        raw = await reader.read_frame(MAX_REQUEST)
                except (FrameError, trio.TooSlowError):
                    return  # end of session (EOF, reset, idle or oversize)
                try:
                    digest, offset, length = msgpack.unpackb(raw)
                    if not (isinstance(digest, bytes) and len(digest) == 32):
                        raise ValueError("digest must be 32 bytes")
                    if not (isinstance(offset, int) and isinstance(length, int)):
                        raise ValueError("offset and length must be integers")
                    if offset < 0 or not 0 < length <= CHUNK_SIZE:
                        raise ValueError(f"length must be 1..{CHUNK_SIZE} and offset >= 0")
                except Exception as exc:
                    node.penalize(peer, 5, f"malformed blob request: {exc}")
                    await stream.write(error_frame(f"malformed blob request: {exc}"))
                    return
                reply = await trio.to_thread.run_sync(_read_chunk, store, digest, offset, length)
                await stream.write(reply)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    node.set_stream_handler(BLOB_PROTOCOL, handle)


def _read_chunk(store, digest: bytes, offset: int, length: int) -> bytes:
    try:
        if not store.has(digest):
            raise FileNotFoundError
        fd = os.open(store.path(digest), os.O_RDONLY)
    except OSError:
        return error_frame(f"blob {digest.hex()} not found")
    try:
        size = os.fstat(fd).st_size
        if offset > size:
            return error_frame(f"offset {offset} is past the end of blob {digest.hex()} ({size} bytes)")
        chunk = os.pread(fd, min(length, size - offset), offset)
    finally:
        os.close(fd)
    return ok_frame(size.to_bytes(8, "big") + chunk)


class PeerBlobError(BlobError, P2PError):
    """Fetching a blob from a peer failed; FetchLimitError (also a BlobError) when a limit was hit."""


class _PeerLimitError(FetchLimitError, PeerBlobError):
    """A peer broke a fetch limit (size, deadline, rate, silence)."""


async def fetch_blob_from_peer(
    node: P2PNode,
    peer: PeerLike,
    digest: bytes,
    store,
    *,
    size: int | None = None,
    max_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
    limits: FetchLimits | None = None,
    pipeline: int = PIPELINE,
) -> Path:
    """Download ``digest`` from ``peer`` into ``store`` (a BlobStore) and return its path.

    The same bounds as an HTTP fetch (pouw.blobstore.FetchLimits): the peer
    must offer exactly the declared `size` (or at most `max_size`), within
    the total deadline, at the minimum average rate after the grace period,
    never silent longer than `timeout` (default limits.silence). Every
    failure raises PeerBlobError (a BlobError and a P2PError),
    FetchLimitError-flavoured when a limit was hit; nothing partial is kept.
    A peer that serves bytes which do not hash to `digest`, or chunks that
    contradict themselves, is penalized.
    """
    digest = bytes(digest)
    if store.has(digest):
        return store.path(digest)
    pid = as_peer_id(peer)
    limits = limits or FetchLimits()
    if timeout is not None:
        limits = dataclasses.replace(limits, silence=float(timeout))
    budget = FetchBudget(f"peer {pid} serving blob {digest.hex()[:16]}", limits, size=size, max_size=max_size)
    with store.writer() as writer:  # leaving without a commit drops the temporary file
        with trio.CancelScope() as scope:
            session = _PeerSession(node, pid, digest, budget, scope)
            await session.download(writer, pipeline, progress)
        if scope.cancelled_caught:
            raise _PeerLimitError(budget.violation() or f"{budget.what} broke its deadline")
        try:
            await trio.to_thread.run_sync(writer.commit, digest)
        except BlobError as exc:
            node.penalize(pid, 50, f"served bytes that do not match blob {digest.hex()}")
            raise PeerBlobError(f"{budget.what}: {exc}") from None
    return store.path(digest)


class _PeerSession:
    """One /pouw/blob/1 download: pipelined chunk requests under a FetchBudget."""

    def __init__(self, node: P2PNode, pid, digest: bytes, budget: FetchBudget, scope: trio.CancelScope):
        self.node = node
        self.pid = pid
        self.digest = digest
        self.budget = budget
        self.scope = scope
        self.stream = None
        self.reader: FrameReader | None = None

    def _rearm(self) -> None:
        # The scope ends the download at the earliest moment the deadline or the rate can break.
        self.scope.deadline = trio.current_time() + max(0.0, self.budget.seconds_left())

    async def download(self, writer, pipeline: int, progress) -> None:
        self._rearm()
        try:
            self.stream = await self.node.open_stream(self.pid, BLOB_PROTOCOL)
            self.reader = FrameReader(self.stream)
        except P2PError as exc:
            raise PeerBlobError(f"{self.budget.what}: {exc}") from None
        try:
            await self._pipeline(writer, pipeline, progress)
        except FrameError as exc:
            self.node.penalize(self.pid, 10, f"bad blob stream: {exc}")
            raise PeerBlobError(f"{self.budget.what}: {exc}") from None
        except RemoteError as exc:
            raise PeerBlobError(f"{self.budget.what}: the peer answered: {exc}") from None
        finally:
            # Also when the deadline cancelled us: a short shielded goodbye.
            with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
                await self.stream.reset()

    async def ask(self, off: int, n: int) -> None:
        await self.stream.write(encode_frame(msgpack.packb([self.digest, off, n])))

    async def answer(self) -> tuple[int, bytes]:
        with trio.move_on_after(self.budget.limits.silence) as quiet:
            payload = parse_response(await self.reader.read_frame(MAX_RESPONSE))
        if quiet.cancelled_caught:
            raise _PeerLimitError(f"{self.budget.what} sent nothing for {self.budget.limits.silence:g} s")
        if len(payload) < 8:
            raise FrameError("blob chunk response shorter than its size field")
        return int.from_bytes(payload[:8], "big"), payload[8:]

    async def _pipeline(self, writer, pipeline: int, progress) -> None:
        budget = self.budget
        await self.ask(0, CHUNK_SIZE)
        total, chunk = await self.answer()
        try:
            budget.expect_length(str(total))
        except FetchLimitError as exc:
            raise _PeerLimitError(str(exc)) from None
        if len(chunk) != min(CHUNK_SIZE, total):
            raise FrameError("blob chunk of unexpected length")
        await self._take(writer, chunk, total, progress)
        next_off = len(chunk)
        pending: collections.deque[int] = collections.deque()
        while budget.done < total:
            while len(pending) < pipeline and next_off < total:
                n = min(CHUNK_SIZE, total - next_off)
                await self.ask(next_off, n)
                pending.append(n)
                next_off += n
            n = pending.popleft()
            size, chunk = await self.answer()
            if size != total or len(chunk) != n:
                raise FrameError("blob chunk of unexpected length or changing size")
            await self._take(writer, chunk, total, progress)

    async def _take(self, writer, chunk: bytes, total: int, progress) -> None:
        try:
            self.budget.add(len(chunk))
            self.budget.check()
        except FetchLimitError as exc:
            raise _PeerLimitError(str(exc)) from None
        await trio.to_thread.run_sync(writer.write, chunk)
        self._rearm()
        if progress:
            progress(self.budget.done, total)
