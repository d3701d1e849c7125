"""P2PNode: the pouw wrapper around one py-libp2p host (trio).

Bytes in, bytes out: this layer knows topics, protocols, peers and limits,
never chain rules. The full node plugs validators and handlers in.

Usage::

    node = P2PNode(seed32, port=0, bootstrap=["/ip4/127.0.0.1/tcp/4001/p2p/12D3..."])
    await node.subscribe("/pouw/1/blocks", validator, handler)
    node.set_handler("/pouw/req/headers/1", serve_headers)
    async with node:                      # starts the host; stops it on exit
        await node.publish("/pouw/1/blocks", block_bytes)
        reply = await node.request(peer_id, "/pouw/req/headers/1", query)

Peer scores and bans (``penalize``, ``ban``, ``is_banned``) may be used from
any thread: they are recorded at once, and what a ban does on the network
(disconnect, drop the peer's gossip) is handed to the node's event loop.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import inspect
import logging
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Union

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from .framing import P2PError
from .reqresp import RequestRejected  # noqa: F401 - part of this module's API
from .reqresp import ProtocolLimits, StreamPool, ask, close_quietly, reset_quietly, serve_stream
from .scoring import PeerBook, ScoreConfig

log = logging.getLogger("pouw.p2p")

MiB = 1 << 20

# Gossip carries headers, commits, claims and transactions, never blobs.
GOSSIP_MAX_MESSAGE = 1 * MiB
# Room for the pubsub envelope (from, seqno, topic, signature, key, protobuf
# tags) inside the 1 MiB inbound RPC cap, so a maximal payload still fits.
GOSSIP_ENVELOPE_ROOM = 4096

DEFAULT_MAX_REQUEST = 1 * MiB
DEFAULT_MAX_RESPONSE = 8 * MiB
MAX_FRAME_LIMIT = 64 * MiB
"""No protocol may allow larger request or response frames (memory held per stream)."""
DEFAULT_HANDLER_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 10.0
MAX_INBOUND_REQUEST_STREAMS = 64
"""Request streams one peer may hold open to us at once, all protocols together."""


class Verdict(enum.Enum):
    """Outcome of a gossip validator."""

    ACCEPT = "accept"  # deliver and relay
    IGNORE = "ignore"  # drop, do not relay, no penalty (e.g. stale or duplicate)
    REJECT = "reject"  # drop, do not relay, penalize the forwarding peer


PeerLike = Union[ID, str]
Validator = Callable[[ID, bytes], Union[bool, Verdict, Awaitable[Union[bool, Verdict]]]]
GossipHandler = Callable[[ID, bytes], Union[None, Awaitable[None]]]
RequestHandler = Callable[[ID, bytes], Union[bytes, Awaitable[bytes]]]


class RequestTimeout(P2PError):
    """No answer within the request's deadline."""


class PeerBanned(P2PError):
    """The peer is banned: no requests to it, no streams from it."""


class MessageTooLarge(P2PError, ValueError):
    """A gossip message over the pubsub frame limit; large data goes over a request/response stream."""


@dataclass
class GossipConfig:
    """gossipsub parameters tuned for a chain (py-libp2p defaults in comments)."""

    degree: int = 6  # D
    degree_low: int = 4  # D_lo
    degree_high: int = 12  # D_hi
    heartbeat_interval: float = 1.0  # default 120 s: the mesh would take minutes to form
    time_to_live: int = 60  # fanout TTL, s
    gossip_window: int = 3
    gossip_history: int = 5
    # Default 10/topic/s per peer would drop legitimate transaction bursts.
    max_messages_per_topic_per_second: float = 500.0
    max_message_size: int = GOSSIP_MAX_MESSAGE  # inbound pubsub RPC cap
    seen_ttl: int = 120  # s a message id is remembered (dedup)
    validation_timeout: float = 5.0  # async validator budget, s
    prune_back_off: int = 60
    # Eclipse protection wants >= 3 distinct IPs in a mesh; a devnet on one
    # machine has one IP, so it is off unless asked for.
    eclipse_protection: bool = False


@dataclass
class _Subscription:
    topic: str
    validator: Validator | None
    handler: GossipHandler | None
    sub: Any = None


def _check_limits(max_request: int, max_response: int) -> None:
    for name, value in (("max_request", max_request), ("max_response", max_response)):
        if not 0 < value <= MAX_FRAME_LIMIT:
            raise ValueError(f"{name} must be 1..{MAX_FRAME_LIMIT} bytes, got {value}")


def as_peer_id(peer: PeerLike) -> ID:
    if isinstance(peer, ID):
        return peer
    try:
        return ID.from_base58(str(peer))
    except Exception as exc:
        raise ValueError(f"not a peer id: {peer!r}") from exc


def _msg_id(msg) -> bytes:
    # Content addressed (topic + payload): the same block or transaction
    # relayed by two peers is one message.
    h = hashlib.sha256()
    for topic in msg.topicIDs:
        h.update(topic.encode() + b"\x00")
    h.update(msg.data)
    return h.digest()


async def _maybe_await(value):
    if inspect.isawaitable(value):
        return await value
    return value


class _PeerNotifee(INotifee):
    """Closes what a banned peer opens (connections, streams of any protocol) and reports new peers."""

    def __init__(self, node: "P2PNode"):
        self._node = node

    async def connected(self, network, conn) -> None:
        peer = conn.muxed_conn.peer_id
        if self._node.is_banned(peer):
            log.info("refusing connection from banned peer %s", peer)
            self._node._spawn(self._node._close_conn, conn)
            return
        for callback in list(self._node._on_connected):
            try:
                callback(peer)
            except Exception:
                log.exception("peer-connected callback failed")

    async def disconnected(self, network, conn) -> None:
        node = self._node
        peer = conn.muxed_conn.peer_id
        if peer not in node.host.get_connected_peers():
            for lease in node._pool.drop_peer(peer):
                node._spawn(reset_quietly, lease.stream)

    async def opened_stream(self, network, stream) -> None:
        peer = stream.muxed_conn.peer_id
        if self._node.is_banned(peer):
            await reset_quietly(stream)

    async def closed_stream(self, network, stream) -> None:
        return None

    async def listen(self, network, maddr) -> None:
        return None

    async def listen_close(self, network, maddr) -> None:
        return None


class P2PNode:
    def __init__(
        self,
        seed: bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bootstrap: list[str] | tuple[str, ...] = (),
        gossip: GossipConfig | None = None,
        scoring: ScoreConfig | None = None,
        reconnect_interval: float = 5.0,
    ):
        if not isinstance(seed, (bytes, bytearray)) or len(seed) != 32:
            raise ValueError("the node identity seed must be exactly 32 bytes")
        self.gossip_config = gossip or GossipConfig()
        self.score_config = scoring or ScoreConfig()
        self.reconnect_interval = reconnect_interval
        self._key_pair = create_new_key_pair(bytes(seed))
        self._listen = multiaddr.Multiaddr(f"/ip4/{host}/tcp/{int(port)}")
        self._bootstrap = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in bootstrap]
        # Noise only: new_host would otherwise also offer TLS, secio and plaintext.
        sec_opt = {
            NOISE_PROTOCOL_ID: NoiseTransport(
                self._key_pair, noise_privkey=create_x25519_key_pair().private_key
            )
        }
        self.host = new_host(
            key_pair=self._key_pair,
            sec_opt=sec_opt,
            muxer_opt=create_yamux_muxer_option(),
            listen_addrs=[self._listen],
        )
        g = self.gossip_config
        self.gossipsub = GossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=g.degree,
            degree_low=g.degree_low,
            degree_high=g.degree_high,
            time_to_live=g.time_to_live,
            gossip_window=g.gossip_window,
            gossip_history=g.gossip_history,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=g.heartbeat_interval,
            prune_back_off=g.prune_back_off,
            # Adaptive mode rewrites the heartbeat to 30-60 s when it thinks
            # the network is unhealthy (e.g. a 2-node devnet): keep it fixed.
            adaptive_gossip_enabled=False,
            spam_protection_enabled=True,
            max_messages_per_topic_per_second=g.max_messages_per_topic_per_second,
            eclipse_protection_enabled=g.eclipse_protection,
        )
        self.pubsub = Pubsub(
            self.host,
            self.gossipsub,
            seen_ttl=g.seen_ttl,
            strict_signing=True,
            msg_id_constructor=_msg_id,
            validation_timeout=g.validation_timeout,
            max_inbound_rpc_size=g.max_message_size,
        )
        self.host.get_network().register_notifee(_PeerNotifee(self))
        self.book = PeerBook(self.score_config, self.host.get_id())
        self._subs: dict[str, _Subscription] = {}
        self._protocols: dict[str, ProtocolLimits] = {}
        self._pool = StreamPool()
        self._inbound_requests: dict[ID, int] = {}
        self._on_connected: list[Callable[[ID], None]] = []
        self._known: dict[ID, list] = {p.peer_id: list(p.addrs) for p in self._bootstrap}
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread: int | None = None
        self._running = False

    # ------------------------------------------------------------------ identity

    @property
    def peer_id(self) -> ID:
        return self.host.get_id()

    @property
    def listen_addrs(self) -> list[str]:
        """Actual listen multiaddrs including /p2p/<peer id> (valid once started)."""
        return [str(a) for a in self.host.get_addrs()]

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "P2PNode":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening. Must be paired with stop() in the same trio task
        (prefer ``async with node:``)."""
        if self._running:
            raise P2PError("the p2p node is already running")
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(self.host.run(listen_addrs=[self._listen]))
            await stack.enter_async_context(background_trio_service(self.pubsub))
            await stack.enter_async_context(background_trio_service(self.gossipsub))
            await self.pubsub.wait_until_ready()
            self._nursery = await stack.enter_async_context(trio.open_nursery())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._running = True
        for sub in self._subs.values():
            await self._activate(sub)
        self._nursery.start_soon(self._maintenance_loop)
        for info in self._bootstrap:
            self._nursery.start_soon(self._try_connect, info.peer_id)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        assert self._nursery is not None and self._stack is not None
        self._nursery.cancel_scope.cancel()
        stack, self._stack, self._nursery = self._stack, None, None
        await stack.aclose()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: ``await nursery.start(node.run)``."""
        async with self:
            task_status.started(self)
            await trio.sleep_forever()

    def _spawn(self, fn, *args) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _in_loop(self, fn: Callable[..., None], *args) -> None:
        """Run `fn(*args)` in the node's event loop: now if this is its thread, else as soon as it can."""
        if not self._running or self._token is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def on_peer_connected(self, callback: Callable[[ID], None]) -> None:
        """Call `callback(peer_id)` (in the node's loop; it must not block) whenever a peer that is not banned connects."""
        self._on_connected.append(callback)

    # ------------------------------------------------------------------ peers

    async def connect(self, addr: str) -> ID:
        """Dial a full multiaddr (…/p2p/<id>) and remember it for reconnects."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        if self.is_banned(info.peer_id):
            raise PeerBanned(f"peer {info.peer_id} is banned")
        self._known[info.peer_id] = list(info.addrs)
        try:
            await self.host.connect(info)
        except Exception as exc:
            raise P2PError(f"cannot connect to peer at {addr}: {exc}") from exc
        return info.peer_id

    async def _try_connect(self, peer: ID) -> None:
        addrs = self._known.get(peer)
        if not addrs or self.is_banned(peer) or peer == self.peer_id:
            return
        from libp2p.peer.peerinfo import PeerInfo

        try:
            with trio.fail_after(10):
                await self.host.connect(PeerInfo(peer, addrs))
        except Exception as exc:  # unreachable peers are normal; retry later
            log.debug("reconnect to %s failed: %s", peer, exc)

    def connected_peers(self) -> list[ID]:
        return [p for p in self.host.get_connected_peers() if not self.is_banned(p)]

    def known_peers(self) -> dict[str, list[str]]:
        """Peers we keep reconnecting to: peer id -> multiaddrs."""
        return {str(p): [str(a) for a in addrs] for p, addrs in self._known.items()}

    def forget_peer(self, peer: PeerLike) -> None:
        self._known.pop(as_peer_id(peer), None)

    async def disconnect(self, peer: PeerLike) -> None:
        with contextlib.suppress(Exception):
            await self.host.disconnect(as_peer_id(peer))

    async def _close_conn(self, conn) -> None:
        with contextlib.suppress(Exception):
            await conn.close()

    async def _maintenance_loop(self) -> None:
        """Expire bans and re-dial known peers that dropped."""
        next_dial = trio.current_time() + self.reconnect_interval
        while True:
            await trio.sleep(0.5)
            for peer in self.book.expire():
                self.pubsub.remove_from_blacklist(peer)
            for lease in self._pool.expired():
                self._nursery.start_soon(close_quietly, lease.stream)
            if trio.current_time() >= next_dial:
                next_dial = trio.current_time() + self.reconnect_interval
                connected = set(self.host.get_connected_peers())
                for peer in list(self._known):
                    if peer not in connected:
                        self._nursery.start_soon(self._try_connect, peer)

    # ------------------------------------------------------------------ scoring / bans

    def score(self, peer: PeerLike) -> float:
        return self.book.score(as_peer_id(peer))

    def penalize(self, peer: PeerLike, points: float | str | None = None, reason: str | float | None = None) -> float:
        """Lower a peer's score by `points` for `reason`; at the threshold the peer is banned.
        Returns the new score. Any thread. (The older order ``penalize(peer, reason[, points])``
        is still accepted.)"""
        if isinstance(points, str):  # penalize(peer, reason, points)
            points, reason = reason, points
        pts = self.score_config.default_penalty if points is None else float(points)
        pid = as_peer_id(peer)
        score, banned = self.book.penalize(pid, pts, str(reason or "unspecified"))
        if banned:
            self._in_loop(self._apply_ban, pid)
        return score

    def ban(self, peer: PeerLike, seconds: float, reason: str) -> None:
        """Disconnect the peer and refuse it until the ban expires (a longer ban in force is kept). Any thread."""
        pid = as_peer_id(peer)
        if self.book.ban(pid, seconds, reason):
            self._in_loop(self._apply_ban, pid)

    def _apply_ban(self, pid: ID) -> None:
        # Drops its gossip at once, also on connections still closing.
        self.pubsub.add_to_blacklist(pid)
        for lease in self._pool.drop_peer(pid):
            self._spawn(reset_quietly, lease.stream)
        self._spawn(self.disconnect, pid)

    def unban(self, peer: PeerLike) -> None:
        pid = as_peer_id(peer)
        if self.book.unban(pid):
            self._in_loop(self.pubsub.remove_from_blacklist, pid)

    def is_banned(self, peer: PeerLike) -> bool:
        return self.book.is_banned(as_peer_id(peer))

    def bans(self) -> dict[str, dict]:
        return self.book.bans()

    # ------------------------------------------------------------------ gossip

    async def subscribe(
        self, topic: str, validator: Validator | None = None, handler: GossipHandler | None = None
    ) -> None:
        """Join a topic. ``validator(peer_id, data)`` runs before a message is
        delivered or relayed; ``peer_id`` is the peer that forwarded it to us
        (the one penalized on REJECT / False). ``handler(origin_peer_id, data)``
        then gets each accepted message published by another node. Can be
        called before start()."""
        if topic in self._subs:
            raise P2PError(f"already subscribed to topic {topic}")
        sub = _Subscription(topic, validator, handler)
        self._subs[topic] = sub
        if self._running:
            await self._activate(sub)

    async def _activate(self, sub: _Subscription) -> None:
        topic = sub.topic

        async def check(forwarder: ID, msg) -> bool:
            # Our own publications are the caller's responsibility.
            if forwarder == self.peer_id:
                return True
            if self.is_banned(forwarder):
                return False
            if sub.validator is None:
                return True
            try:
                result = await _maybe_await(sub.validator(forwarder, msg.data))
            except Exception:
                log.exception("gossip validator for %s raised; treating as reject", topic)
                result = Verdict.REJECT
            if result is True:
                result = Verdict.ACCEPT
            elif result is False or result is None:
                result = Verdict.REJECT
            if result is Verdict.REJECT:
                self.penalize(
                    forwarder,
                    f"invalid gossip on {topic}",
                    self.score_config.invalid_gossip_penalty,
                )
            return result is Verdict.ACCEPT

        self.pubsub.set_topic_validator(topic, check, True)
        sub.sub = await self.pubsub.subscribe(topic)
        self._nursery.start_soon(self._deliver_loop, sub)

    async def _deliver_loop(self, sub: _Subscription) -> None:
        me = self.peer_id.to_bytes()
        while True:
            msg = await sub.sub.get()
            if msg.from_id == me or sub.handler is None:
                continue
            try:
                await _maybe_await(sub.handler(ID(msg.from_id), msg.data))
            except Exception:
                log.exception("gossip handler for %s raised", sub.topic)

    @property
    def max_gossip_payload(self) -> int:
        """Largest payload `publish` accepts: the inbound pubsub frame cap less the envelope."""
        return self.gossip_config.max_message_size - GOSSIP_ENVELOPE_ROOM

    async def publish(self, topic: str, data: bytes) -> None:
        """Gossip `data` on `topic`. Raises MessageTooLarge (a P2PError and ValueError) above
        max_gossip_payload: peers would drop the frame unseen, so it is refused here, loudly."""
        limit = self.max_gossip_payload
        if len(data) > limit:
            raise MessageTooLarge(
                f"gossip message of {len(data)} bytes on {topic} exceeds the {limit}-byte gossip limit; "
                "gossip a header or an id and serve the body over a request/response protocol"
            )
        if not self._running:
            raise P2PError("the p2p node is not running")
        # A message we dropped on arrival (IGNORE, e.g. a block before its work was checked) and now vouch
        # for has the same id: forget that verdict, or pubsub would drop our own publication unseen.
        self.pubsub.validation_cache._remove(hashlib.sha256(topic.encode() + b"\x00" + bytes(data)).digest())
        await self.pubsub.publish(topic, bytes(data))

    def topic_peers(self, topic: str) -> list[ID]:
        return list(self.pubsub.peer_topics.get(topic, ()))

    async def wait_for_topic_peers(self, topic: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` connected peers are known to be subscribed to
        ``topic`` (and in our mesh or fanout view)."""
        with trio.fail_after(timeout):
            while len(self.topic_peers(topic)) < count:
                await trio.sleep(0.05)

    # ------------------------------------------------------------------ request / response

    def set_handler(
        self,
        protocol_id: str,
        handler: RequestHandler,
        *,
        max_request: int = DEFAULT_MAX_REQUEST,
        max_response: int = DEFAULT_MAX_RESPONSE,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
    ) -> None:
        """Serve ``protocol_id``: framed requests answered in order on each stream (pouw.p2p.reqresp).
        ``handler(peer_id, request) -> bytes`` (sync or async) may raise RequestRejected(msg) to
        send ``msg`` back as the error. `handler_timeout` bounds receiving a request, the handler,
        and handing the answer to the peer."""
        _check_limits(max_request, max_response)
        self._protocols[protocol_id] = ProtocolLimits(handler, max_request, max_response, handler_timeout)
        self.host.set_stream_handler(protocol_id, self._make_stream_handler(protocol_id))

    def set_limits(self, protocol_id: str, *, max_request: int, max_response: int) -> None:
        """Limits for a protocol this node requests (for one it also serves, they replace the served ones)."""
        _check_limits(max_request, max_response)
        p = self._protocols.get(protocol_id)
        if p is None:
            self._protocols[protocol_id] = ProtocolLimits(None, max_request, max_response, DEFAULT_HANDLER_TIMEOUT)
        else:
            self._protocols[protocol_id] = ProtocolLimits(p.handler, max_request, max_response, p.handler_timeout)

    def _limits(self, protocol_id: str) -> ProtocolLimits:
        return self._protocols.get(protocol_id) or ProtocolLimits(
            None, DEFAULT_MAX_REQUEST, DEFAULT_MAX_RESPONSE, DEFAULT_HANDLER_TIMEOUT
        )

    def _penalize_oversize(self, peer: ID, reason: str) -> None:
        self.penalize(peer, self.score_config.oversize_frame_penalty, reason)

    def _make_stream_handler(self, protocol_id: str):
        async def on_stream(stream) -> None:
            peer = stream.muxed_conn.peer_id
            proto = self._protocols.get(protocol_id)
            held = self._inbound_requests.get(peer, 0)
            if proto is None or proto.handler is None or self.is_banned(peer) or held >= MAX_INBOUND_REQUEST_STREAMS:
                await reset_quietly(stream)
                return
            self._inbound_requests[peer] = held + 1
            try:
                await serve_stream(stream, peer, protocol_id, proto, self.is_banned, self._penalize_oversize)
            finally:
                left = self._inbound_requests.get(peer, 1) - 1
                if left > 0:
                    self._inbound_requests[peer] = left
                else:
                    self._inbound_requests.pop(peer, None)
                await close_quietly(stream)

        return on_stream

    async def request(
        self, peer: PeerLike, protocol_id: str, data: bytes, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> bytes:
        """Send one request and wait for its response, all within `timeout` seconds. Raises
        RemoteError (peer answered with an error), RequestTimeout, FrameTooLarge (answer over the
        protocol's max_response; the peer is penalized), FrameError, PeerBanned or P2PError
        (cannot open the stream)."""
        pid = as_peer_id(peer)
        if self.is_banned(pid):
            raise PeerBanned(f"peer {pid} is banned")
        if not self._running:
            raise P2PError("the p2p node is not running")
        limits = self._limits(protocol_id)
        if len(data) > limits.max_request:
            raise ValueError(
                f"request of {len(data)} bytes exceeds the {limits.max_request}-byte limit of {protocol_id}"
            )
        try:
            with trio.fail_after(timeout):
                return await ask(
                    self._pool, self.open_stream, pid, protocol_id, bytes(data), limits,
                    lambda: self._penalize_oversize(pid, f"oversize response on {protocol_id}"),
                )
        except trio.TooSlowError:
            raise RequestTimeout(f"no answer from peer {pid} on {protocol_id} within {timeout} s") from None

    async def open_stream(self, peer: PeerLike, protocol_id: str):
        """Raw stream for protocols that keep a session (e.g. blob chunks)."""
        pid = as_peer_id(peer)
        if self.is_banned(pid):
            raise PeerBanned(f"peer {pid} is banned")
        try:
            return await self.host.new_stream(pid, [protocol_id])
        except Exception as exc:
            raise P2PError(f"cannot open a {protocol_id} stream to peer {pid}: {exc}") from exc

    def set_stream_handler(self, protocol_id: str, handler) -> None:
        """Raw stream handler ``async fn(peer_id, stream)``; banned peers are reset."""

        async def on_stream(stream) -> None:
            peer = stream.muxed_conn.peer_id
            if self.is_banned(peer):
                with contextlib.suppress(Exception):
                    await stream.reset()
                return
            try:
                await handler(peer, stream)
            except Exception:
                log.exception("stream handler for %s failed", protocol_id)
                with contextlib.suppress(Exception):
                    await stream.reset()

        self.host.set_stream_handler(protocol_id, on_stream)
