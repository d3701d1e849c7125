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
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import inspect
import logging
import time
from dataclasses import dataclass, field
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

from .framing import (
    FrameError,
    FrameTooLarge,
    P2PError,
    error_frame,
    ok_frame,
    parse_response,
    read_frame,
    write_frame,
)

log = logging.getLogger("pouw.p2p")

MiB = 1 << 20

# Gossip carries headers, commits, claims and transactions, never blobs.
GOSSIP_MAX_MESSAGE = 1 * MiB
# Room for the pubsub envelope (from, seqno, topic, signature, key, protobuf
# tags) inside the 1 MiB inbound RPC cap, so a maximal payload still fits.
GOSSIP_ENVELOPE_ROOM = 4096

DEFAULT_MAX_REQUEST = 1 * MiB
DEFAULT_MAX_RESPONSE = 4 * MiB


class Verdict(enum.Enum):
    """Outcome of a gossip validator."""

    ACCEPT = "accept"  # deliver and relay
    IGNORE = "ignore"  # drop, do not relay, no penalty (e.g. stale or duplicate)
    REJECT = "reject"  # drop, do not relay, penalize the forwarding peer


PeerLike = Union[ID, str]
Validator = Callable[[ID, bytes], Union[bool, Verdict, Awaitable[Union[bool, Verdict]]]]
GossipHandler = Callable[[ID, bytes], Union[None, Awaitable[None]]]
RequestHandler = Callable[[ID, bytes], Union[bytes, Awaitable[bytes]]]


class RequestRejected(P2PError):
    """Raised by a request handler to send its message back to the requester."""


class RequestTimeout(P2PError):
    pass


class PeerBanned(P2PError):
    pass


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
class ScoreConfig:
    """Local peer scoring. Scores start at 0, penalties subtract, and the
    score recovers toward 0 with time; at or below ban_threshold the peer
    is banned for ban_seconds."""

    invalid_gossip_penalty: float = 20.0
    oversize_frame_penalty: float = 20.0
    default_penalty: float = 10.0
    ban_threshold: float = -100.0
    ban_seconds: float = 600.0
    recovery_per_second: float = 0.1


@dataclass
class _Protocol:
    handler: RequestHandler | None
    max_request: int
    max_response: int
    handler_timeout: float


@dataclass
class _Subscription:
    topic: str
    validator: Validator | None
    handler: GossipHandler | None
    sub: Any = None


@dataclass
class _PeerScore:
    score: float = 0.0
    updated: float = field(default_factory=time.monotonic)
    reasons: list[str] = field(default_factory=list)


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


class _BanNotifee(INotifee):
    """Closes any connection a banned peer manages to open."""

    def __init__(self, node: "P2PNode"):
        self._node = node

    async def connected(self, network, conn) -> None:
        peer = conn.muxed_conn.peer_id
        if self._node.is_banned(peer):
            log.info("refusing connection from banned peer %s", peer)
            self._node._spawn(self._node._close_conn, conn)

    async def disconnected(self, network, conn) -> None:
        return None

    async def opened_stream(self, network, stream) -> None:
        return None

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
        self.host.get_network().register_notifee(_BanNotifee(self))
        self._subs: dict[str, _Subscription] = {}
        self._protocols: dict[str, _Protocol] = {}
        self._bans: dict[ID, tuple[float, str]] = {}
        self._scores: dict[ID, _PeerScore] = {}
        self._known: dict[ID, list] = {p.peer_id: list(p.addrs) for p in self._bootstrap}
        self._nursery: trio.Nursery | None = None
        self._stack: contextlib.AsyncExitStack | None = None
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
            now = time.monotonic()
            for peer, (until, _reason) in list(self._bans.items()):
                if until <= now:
                    del self._bans[peer]
                    self.pubsub.remove_from_blacklist(peer)
                    log.info("ban on peer %s expired", peer)
            if trio.current_time() >= next_dial:
                next_dial = trio.current_time() + self.reconnect_interval
                connected = set(self.host.get_connected_peers())
                for peer in list(self._known):
                    if peer not in connected:
                        self._nursery.start_soon(self._try_connect, peer)

    # ------------------------------------------------------------------ scoring / bans

    def score(self, peer: PeerLike) -> float:
        st = self._scores.get(as_peer_id(peer))
        if st is None:
            return 0.0
        self._recover(st)
        return st.score

    def _recover(self, st: _PeerScore) -> None:
        now = time.monotonic()
        st.score = min(0.0, st.score + (now - st.updated) * self.score_config.recovery_per_second)
        st.updated = now

    def penalize(self, peer: PeerLike, reason: str, points: float | None = None) -> float:
        """Lower a peer's score; ban it when the score crosses the threshold.
        Returns the new score."""
        pid = as_peer_id(peer)
        if pid == self.peer_id:
            return 0.0
        pts = self.score_config.default_penalty if points is None else float(points)
        st = self._scores.setdefault(pid, _PeerScore())
        self._recover(st)
        st.score -= abs(pts)
        st.reasons = (st.reasons + [reason])[-10:]
        log.info("peer %s penalized %.0f (%s); score %.1f", pid, pts, reason, st.score)
        if st.score <= self.score_config.ban_threshold and not self.is_banned(pid):
            self.ban(pid, self.score_config.ban_seconds, f"score {st.score:.0f}: {reason}")
        return st.score

    def ban(self, peer: PeerLike, seconds: float, reason: str) -> None:
        """Disconnect the peer and refuse it until the ban expires."""
        pid = as_peer_id(peer)
        if pid == self.peer_id:
            return
        until = time.monotonic() + float(seconds)
        prev = self._bans.get(pid)
        if prev is None or prev[0] < until:
            self._bans[pid] = (until, reason)
        log.warning("banning peer %s for %.0f s: %s", pid, seconds, reason)
        if self._running:
            # Drops its gossip at once, also on connections still closing.
            self.pubsub.add_to_blacklist(pid)
            self._spawn(self.disconnect, pid)

    def unban(self, peer: PeerLike) -> None:
        pid = as_peer_id(peer)
        if self._bans.pop(pid, None) is not None and self._running:
            self.pubsub.remove_from_blacklist(pid)
        st = self._scores.get(pid)
        if st is not None:
            st.score = 0.0

    def is_banned(self, peer: PeerLike) -> bool:
        pid = as_peer_id(peer)
        entry = self._bans.get(pid)
        return entry is not None and entry[0] > time.monotonic()

    def bans(self) -> dict[str, dict]:
        now = time.monotonic()
        return {
            str(p): {"seconds_left": round(until - now, 1), "reason": reason}
            for p, (until, reason) in self._bans.items()
            if until > now
        }

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

    async def publish(self, topic: str, data: bytes) -> None:
        limit = self.gossip_config.max_message_size - GOSSIP_ENVELOPE_ROOM
        if len(data) > limit:
            raise ValueError(
                f"gossip message of {len(data)} bytes exceeds the {limit}-byte limit; "
                "send large data as a blob"
            )
        if not self._running:
            raise P2PError("the p2p node is not running")
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
        handler_timeout: float = 30.0,
    ) -> None:
        """Serve ``protocol_id``: one framed request, one framed response per
        stream. ``handler(peer_id, request) -> bytes`` may raise
        RequestRejected(msg) to send ``msg`` back as the error."""
        self._protocols[protocol_id] = _Protocol(handler, max_request, max_response, handler_timeout)
        self.host.set_stream_handler(protocol_id, self._make_stream_handler(protocol_id))

    def set_limits(self, protocol_id: str, *, max_request: int, max_response: int) -> None:
        """Limits for a protocol this node only requests (no local handler)."""
        p = self._protocols.get(protocol_id)
        if p is None:
            self._protocols[protocol_id] = _Protocol(None, max_request, max_response, 30.0)
        else:
            p.max_request, p.max_response = max_request, max_response

    def _limits(self, protocol_id: str) -> _Protocol:
        return self._protocols.get(protocol_id) or _Protocol(
            None, DEFAULT_MAX_REQUEST, DEFAULT_MAX_RESPONSE, 30.0
        )

    def _make_stream_handler(self, protocol_id: str):
        async def on_stream(stream) -> None:
            peer = stream.muxed_conn.peer_id
            proto = self._protocols.get(protocol_id)
            if proto is None or proto.handler is None or self.is_banned(peer):
                with contextlib.suppress(Exception):
                    await stream.reset()
                return
            try:
                await self._serve_one(stream, peer, protocol_id, proto)
            finally:
                with contextlib.suppress(Exception):
                    await stream.close()

        return on_stream

    async def _serve_one(self, stream, peer: ID, protocol_id: str, proto: _Protocol) -> None:
        try:
            with trio.fail_after(proto.handler_timeout):
                request = await read_frame(stream, proto.max_request)
        except FrameTooLarge as exc:
            self.penalize(peer, f"oversize request on {protocol_id}", self.score_config.oversize_frame_penalty)
            with contextlib.suppress(Exception):
                await stream.write(error_frame(f"request rejected: {exc}"))
            return
        except (FrameError, trio.TooSlowError) as exc:
            log.debug("bad request on %s from %s: %s", protocol_id, peer, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            return
        try:
            with trio.fail_after(proto.handler_timeout):
                response = await _maybe_await(proto.handler(peer, request))
            if not isinstance(response, (bytes, bytearray, memoryview)):
                raise TypeError(f"handler returned {type(response).__name__}, not bytes")
            response = bytes(response)
            if len(response) + 1 > proto.max_response:
                raise P2PError(f"response of {len(response)} bytes exceeds the protocol limit")
            frame = ok_frame(response)
        except RequestRejected as exc:
            frame = error_frame(str(exc))
        except trio.TooSlowError:
            frame = error_frame("request handler timed out")
        except Exception:
            log.exception("request handler for %s failed", protocol_id)
            frame = error_frame(f"internal error while handling {protocol_id}")
        with contextlib.suppress(Exception):
            await stream.write(frame)

    async def request(
        self, peer: PeerLike, protocol_id: str, data: bytes, timeout: float = 10.0
    ) -> bytes:
        """Send one request and wait for its response. Raises RemoteError
        (peer answered with an error), RequestTimeout, FrameError, PeerBanned
        or P2PError (cannot open the stream)."""
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
                try:
                    stream = await self.host.new_stream(pid, [protocol_id])
                except Exception as exc:
                    raise P2PError(f"cannot open a {protocol_id} stream to peer {pid}: {exc}") from exc
                try:
                    await write_frame(stream, bytes(data))
                    frame = await read_frame(stream, limits.max_response)
                except FrameTooLarge:
                    self.penalize(pid, f"oversize response on {protocol_id}", self.score_config.oversize_frame_penalty)
                    with contextlib.suppress(Exception):
                        await stream.reset()
                    raise
                except BaseException:
                    with contextlib.suppress(Exception):
                        await stream.reset()
                    raise
                with contextlib.suppress(Exception):
                    await stream.close()
                return parse_response(frame)
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
