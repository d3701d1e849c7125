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
import logging
import os
from pathlib import Path
from typing import Callable

import msgpack
import trio

from .framing import FrameError, P2PError, encode_frame, error_frame, ok_frame, parse_response, read_frame
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
        try:
            while True:
                try:
                    with trio.fail_after(IDLE_TIMEOUT):
                        raw = await read_frame(stream, MAX_REQUEST)
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
                    node.penalize(peer, f"malformed blob request: {exc}", 5)
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


async def fetch_blob_from_peer(
    node: P2PNode,
    peer: PeerLike,
    digest: bytes,
    store,
    *,
    max_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = IDLE_TIMEOUT,
    pipeline: int = PIPELINE,
) -> Path:
    """Download ``digest`` from ``peer`` into ``store`` (a BlobStore) and
    return its path. Raises P2PError/RemoteError on network or peer errors
    and pouw.blobstore.BlobError on a digest mismatch."""
    digest = bytes(digest)
    if store.has(digest):
        return store.path(digest)
    pid = as_peer_id(peer)
    stream = await node.open_stream(pid, BLOB_PROTOCOL)
    writer = store.writer()
    committed = False
    try:
        async def ask(off: int, n: int) -> None:
            await stream.write(encode_frame(msgpack.packb([digest, off, n])))

        async def answer() -> tuple[int, bytes]:
            with trio.fail_after(timeout):
                payload = parse_response(await read_frame(stream, MAX_RESPONSE))
            if len(payload) < 8:
                raise FrameError("blob chunk response shorter than its size field")
            return int.from_bytes(payload[:8], "big"), payload[8:]

        try:
            await ask(0, CHUNK_SIZE)
            total, chunk = await answer()
            if max_size is not None and total > max_size:
                raise P2PError(f"peer {pid} offers blob {digest.hex()} of {total} bytes, over the limit of {max_size}")
            if len(chunk) != min(CHUNK_SIZE, total):
                raise FrameError("blob chunk of unexpected length")
            await trio.to_thread.run_sync(writer.write, chunk)
            done = next_off = len(chunk)
            if progress:
                progress(done, total)
            pending: collections.deque[tuple[int, int]] = collections.deque()
            while done < total:
                while len(pending) < pipeline and next_off < total:
                    n = min(CHUNK_SIZE, total - next_off)
                    await ask(next_off, n)
                    pending.append((next_off, n))
                    next_off += n
                off, n = pending.popleft()
                size, chunk = await answer()
                if size != total or len(chunk) != n:
                    raise FrameError("blob chunk of unexpected length or changing size")
                await trio.to_thread.run_sync(writer.write, chunk)
                done += n
                if progress:
                    progress(done, total)
        except trio.TooSlowError:
            raise P2PError(f"peer {pid} stopped sending blob {digest.hex()}") from None
        except FrameError as exc:
            node.penalize(pid, f"bad blob stream: {exc}", 10)
            raise
        try:
            await trio.to_thread.run_sync(writer.commit, digest)
            committed = True
        except Exception:
            node.penalize(pid, f"served bytes that do not match blob {digest.hex()}", 50)
            raise
    finally:
        if not committed:
            writer.discard()  # drop the temporary file; nothing half-written stays
        with contextlib.suppress(Exception):
            await stream.close()
    return store.path(digest)
