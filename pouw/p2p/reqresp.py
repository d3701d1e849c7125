"""Request/response over framed libp2p streams, with stream reuse.

A request stream carries any number of exchanges in order: the client
writes one request frame and reads one response frame, then may send the
next request on the same stream. Opening a stream costs a yamux SYN/ACK and
a multistream-select negotiation (about twenty small encrypted writes on
loopback), so the client keeps a few idle streams per peer and protocol and
reuses them; the server serves a stream until the client closes it or it
stays idle for SERVER_IDLE seconds. Requests must therefore be queries that
may be asked twice: a reused stream the server had already closed is
retried once on a fresh stream, but only when not a byte of the answer came.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio
from libp2p.peer.id import ID

from .framing import (
    FrameError,
    FrameReader,
    FrameTooLarge,
    P2PError,
    RemoteError,
    StreamClosed,
    error_frame,
    ok_frame,
    parse_response,
    write_frame,
)

log = logging.getLogger("pouw.p2p")

SERVER_IDLE = 30.0
"""Seconds a server waits for the next request on a stream before closing it."""
CLIENT_IDLE = 15.0
"""Seconds a client keeps an idle stream for reuse (well under SERVER_IDLE)."""
MAX_IDLE_STREAMS = 4
"""Idle streams a client keeps per peer and protocol."""


class RequestRejected(P2PError):
    """Raised by a request handler to send its message back to the requester."""


class _StaleStream(Exception):
    """A reused stream failed before a byte of the answer arrived."""


async def reset_quietly(stream) -> None:
    """Reset `stream`, also from a cancelled scope, giving up after a second."""
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
        await stream.reset()


async def close_quietly(stream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
        await stream.close()


@dataclass
class Lease:
    """A request stream and its frame reader."""

    stream: object
    reader: FrameReader
    idle_since: float = 0.0


@dataclass
class StreamPool:
    """Idle request streams by (peer, protocol), most recently used last."""

    idle: dict[tuple[ID, str], list[Lease]] = field(default_factory=dict)

    def take(self, peer: ID, protocol_id: str) -> Lease | None:
        leases = self.idle.get((peer, protocol_id))
        if leases and trio.current_time() - leases[-1].idle_since < CLIENT_IDLE:
            return leases.pop()
        return None

    def give(self, peer: ID, protocol_id: str, lease: Lease) -> Lease | None:
        """Keep `lease` for reuse; returns a lease to close when the pool is full."""
        lease.idle_since = trio.current_time()
        leases = self.idle.setdefault((peer, protocol_id), [])
        leases.append(lease)
        return leases.pop(0) if len(leases) > MAX_IDLE_STREAMS else None

    def expired(self) -> list[Lease]:
        """Remove and return the leases idle for CLIENT_IDLE or longer."""
        now = trio.current_time()
        out = []
        for key in list(self.idle):
            leases = self.idle[key]
            keep = [lease for lease in leases if now - lease.idle_since < CLIENT_IDLE]
            out += [lease for lease in leases if now - lease.idle_since >= CLIENT_IDLE]
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        return out

    def drop_peer(self, peer: ID) -> list[Lease]:
        """Remove and return every lease to `peer`."""
        out = []
        for key in [k for k in self.idle if k[0] == peer]:
            out += self.idle.pop(key)
        return out


@dataclass(frozen=True)
class ProtocolLimits:
    """What one request/response protocol allows."""

    handler: Callable[[ID, bytes], bytes | Awaitable[bytes]] | None
    """Serves requests (None: this node only asks)."""
    max_request: int
    """Largest request frame, bytes."""
    max_response: int
    """Largest response frame including its status byte, bytes."""
    handler_timeout: float
    """Seconds to receive a request, answer it, and hand the answer to the peer."""


async def ask(stream_pool: StreamPool, open_stream, peer: ID, protocol_id: str, data: bytes,
              limits: ProtocolLimits, on_oversize: Callable[[], None]) -> bytes:
    """One exchange with `peer`: on an idle stream if one is kept, else (or if it was stale) on a fresh one."""
    lease = stream_pool.take(peer, protocol_id)
    if lease is not None:
        try:
            return await _exchange(stream_pool, peer, protocol_id, lease, data, limits, on_oversize, reused=True)
        except _StaleStream:
            log.debug("idle %s stream to %s was closed; asking on a fresh one", protocol_id, peer)
    stream = await open_stream(peer, protocol_id)
    return await _exchange(stream_pool, peer, protocol_id, Lease(stream, FrameReader(stream)), data, limits,
                           on_oversize, reused=False)


async def _exchange(stream_pool: StreamPool, peer: ID, protocol_id: str, lease: Lease, data: bytes,
                    limits: ProtocolLimits, on_oversize: Callable[[], None], *, reused: bool) -> bytes:
    start = lease.reader.bytes_read
    try:
        try:
            await write_frame(lease.stream, data)
        except Exception as exc:  # StreamClosed, StreamReset, MuxedStreamError ...
            raise FrameError(f"cannot send the request ({type(exc).__name__}: {exc})") from exc
        frame = await lease.reader.read_frame(limits.max_response)
    except FrameTooLarge:
        on_oversize()
        await reset_quietly(lease.stream)
        raise
    except FrameError as exc:
        await reset_quietly(lease.stream)
        if reused and lease.reader.bytes_read == start:
            raise _StaleStream() from exc
        if isinstance(exc, StreamClosed):
            raise FrameError(f"peer {peer} closed the stream without answering on {protocol_id}") from exc
        raise
    except BaseException:  # cancelled (deadline) mid-exchange: the stream's state is unknown
        await reset_quietly(lease.stream)
        raise
    surplus = stream_pool.give(peer, protocol_id, lease)
    if surplus is not None:
        await close_quietly(surplus.stream)
    return parse_response(frame)  # RemoteError: the stream stays usable, the server answered in order


async def serve_stream(stream, peer: ID, protocol_id: str, limits: ProtocolLimits,
                       is_banned: Callable[[ID], bool], penalize_oversize: Callable[[ID, str], None]) -> None:
    """Answer requests on `stream` in order until the client closes it, it idles, or the peer is banned."""
    reader = FrameReader(stream)
    wait = limits.handler_timeout
    while not is_banned(peer):
        try:
            with trio.fail_after(wait):
                request = await reader.read_frame(limits.max_request)
        except StreamClosed:
            return
        except FrameTooLarge as exc:
            penalize_oversize(peer, f"oversize request on {protocol_id}")
            with trio.move_on_after(limits.handler_timeout), contextlib.suppress(Exception):
                await stream.write(error_frame(f"request rejected: {exc}"))
            return
        except (FrameError, trio.TooSlowError) as exc:
            log.debug("bad or missing request on %s from %s: %s", protocol_id, peer, exc)
            await reset_quietly(stream)
            return
        frame = await answer(peer, protocol_id, limits, request)
        if is_banned(peer):  # banned while its request was handled: it gets nothing more
            break
        try:
            with trio.fail_after(limits.handler_timeout):
                await stream.write(frame)
        except (Exception, trio.TooSlowError) as exc:  # the client stopped reading: drop the stream
            log.debug("cannot deliver the %s answer to %s: %s", protocol_id, peer, exc)
            await reset_quietly(stream)
            return
        wait = SERVER_IDLE
    await reset_quietly(stream)


async def answer(peer: ID, protocol_id: str, limits: ProtocolLimits, request: bytes) -> bytes:
    """The response frame for one request: the handler's bytes, or an error frame saying why not."""
    try:
        with trio.fail_after(limits.handler_timeout):
            response = limits.handler(peer, request)
            if hasattr(response, "__await__"):
                response = await response
        if not isinstance(response, (bytes, bytearray, memoryview)):
            raise TypeError(f"handler returned {type(response).__name__}, not bytes")
        if len(response) + 1 > limits.max_response:
            raise P2PError(f"response of {len(response)} bytes exceeds the protocol limit")
        return ok_frame(bytes(response))
    except RequestRejected as exc:
        return error_frame(str(exc))
    except trio.TooSlowError:
        return error_frame("request handler timed out")
    except Exception:
        log.exception("request handler for %s failed", protocol_id)
        return error_frame(f"internal error while handling {protocol_id}")


__all__ = ["RequestRejected", "RemoteError", "StreamPool", "ProtocolLimits", "ask", "serve_stream",
           "SERVER_IDLE", "CLIENT_IDLE", "MAX_IDLE_STREAMS"]
