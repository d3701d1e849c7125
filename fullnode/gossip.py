"""Gossip: the five topics, each a thin adapter from decoded bytes to a core call and back.

A validator decodes the message with its size limit, hands it to the core
(in a worker thread: the core may wait a moment for its lock) and maps the
verdict to libp2p's: ACCEPT delivers and relays, IGNORE drops quietly,
REJECT drops and penalises the forwarder. RPC calls the same core methods,
so both doors apply the same rules.

Claims and blocks may be larger than a gossip frame (a block body may be
`max_block_size`, 4 MiB; a pubsub frame is at most 1 MiB). On the claim and
block topics a node sends a `BlockMessage`: the whole block when it fits in
a frame, else only its header (`HeaderAnnouncement`). A node that wants an
announced body (after checking the header: size, signature, phase, known
commit or parent) asks the forwarder for it on `/pouw/req/body/1`, reading
at most the header's `size` within a deadline that grows with it, and takes
it only if its length and root match the header; then the claim or block
goes down the same road as a whole one. Announcements are never relayed as
they arrive: a node announces a claim or block itself once it took it in
(the same bytes, so peers that saw it drop the copy), and serves its body.

Blocks are never relayed as they arrive either: their work must be verified
first, which takes too long for a validator. They go to the node's worker,
which takes them down the block road and announces the valid ones itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import msgpack
import trio

from consensus.clock import PHASE_2, get_phase_point, is_block_from_future, is_in_phase
from consensus.rules import compute_body_root
from consensus.transition import InvalidBlock, check_header
from mempool.txpool import decode_transaction
from pouw.encoding import DecodeError, decode, encode
from pouw.p2p.framing import FrameReader, FrameTooLarge, P2PError, parse_response, write_frame
from pouw.p2p.node import P2PNode, RequestRejected, Verdict as P2PVerdict
from pouw.p2p.reqresp import close_quietly, reset_quietly
from pouw.p2p.thread import P2PThread
from pouw.types import Block, BlockBody, BlockHeader, Claim, Commit, KeyReveal

from fullnode.core import NodeCore, Verdict
from fullnode.messages import (
    BODY_PROTOCOL,
    MAX_BODY_REQUEST,
    MAX_HEADER_ROOM,
    BlockMessage,
    BodyRequest,
    FullBlock,
    HeaderAnnouncement,
    get_topic,
)

log = logging.getLogger("pouw.gossip")

MAX_TX_MESSAGE = 1 << 20
"""Largest transaction accepted from gossip."""
MAX_COMMIT_MESSAGE = 4096
MAX_KEY_MESSAGE = 256

BODY_GRACE_SECONDS = 2.0
"""A body fetch may take this long plus the body's size at BODY_MIN_RATE."""
BODY_MIN_RATE = 256 * 1024
"""Bytes per second a peer must at least serve an announced body at (as blob fetches, docs/network.md)."""
MAX_BODY_FETCHES = 4
"""Body fetches in flight at once, all peers together (each holds at most `max_block_size`)."""
MAX_BODY_FETCHES_PER_PEER = 2
"""Body fetches in flight from one announcing peer."""
MAX_OTHER_BODY_SOURCES = 2
"""Other connected peers asked for an announced body when its announcer does not serve it."""
MAX_SERVED_BODIES = 8
"""Bodies of this node's own recent announcements kept in memory to serve (the rest are read from the chain)."""
UNSERVED_BODY_PENALTY = 25.0
"""Points off a peer that announced a body and did not serve it (in time)."""
WRONG_BODY_PENALTY = 50.0
"""Points off a peer that served a body that does not match the header it announced."""


def to_p2p_verdict(verdict: Verdict) -> P2PVerdict:
    """Relay what the core took in, penalise what no honest node sends, drop the rest quietly."""
    if verdict.accepted and verdict.relay:
        return P2PVerdict.ACCEPT
    if verdict.misbehaving:
        return P2PVerdict.REJECT
    return P2PVerdict.IGNORE


def compute_body_deadline(size: int) -> float:
    """Seconds a peer has to serve an announced body of `size` bytes."""
    return BODY_GRACE_SECONDS + size / BODY_MIN_RATE


def get_body_offset(block_bytes: bytes) -> int:
    """Where the body starts in a block's canonical encoding ([header, body]), found without decoding either."""
    unpacker = msgpack.Unpacker(raw=True, max_buffer_size=len(block_bytes))
    unpacker.feed(block_bytes)
    if unpacker.read_array_header() != 2:
        raise DecodeError("not a block encoding")
    unpacker.skip()
    return unpacker.tell()


def is_body_of(header: BlockHeader, body: BlockBody, size: int) -> bool:
    """True when a body of `size` encoded bytes is the one `header` commits to (its size and body root).

    Checked before a received body meets the chain state: a body that does
    not match its header says nothing about the block the header names, so
    it must not get that block marked invalid (an honest block would then
    be refused when it arrives whole).
    """
    return size == header.size and compute_body_root(body) == header.body_root


class BodyUnavailable(P2PError):
    """A peer did not serve an announced body in time, or served one that does not match the header."""

    def __init__(self, message: str, penalty: float):
        super().__init__(message)
        self.penalty = penalty
        """Points the announcing peer loses for it."""


async def fetch_body(p2p: P2PNode, peer, header: BlockHeader) -> tuple[BlockBody, int]:
    """Ask `peer` for the body of `header`: at most `header.size` bytes, within compute_body_deadline(size).

    Returns the body and its encoded size once it matches the header; raises
    BodyUnavailable (with the penalty the peer earned) otherwise. The
    decoding and the root check run in a worker thread, off the event loop.
    """
    try:
        with trio.fail_after(compute_body_deadline(header.size)):
            stream = await p2p.open_stream(peer, BODY_PROTOCOL)
            try:
                await write_frame(stream, encode(BodyRequest(header.hash)))
                frame = await FrameReader(stream).read_frame(header.size + 1)
            except BaseException:
                await reset_quietly(stream)
                raise
            await close_quietly(stream)
        raw = parse_response(frame)
    except FrameTooLarge as exc:
        raise BodyUnavailable(f"served more than the announced {header.size} bytes ({exc})", WRONG_BODY_PENALTY) from None
    except trio.TooSlowError:
        raise BodyUnavailable(f"did not serve the body within {compute_body_deadline(header.size):.0f} s",
                              UNSERVED_BODY_PENALTY) from None
    except P2PError as exc:
        raise BodyUnavailable(f"did not serve the body: {exc}", UNSERVED_BODY_PENALTY) from None

    def decode_checked() -> BlockBody:
        if len(raw) != header.size:
            raise BodyUnavailable(f"served {len(raw)} bytes for a body of {header.size}", WRONG_BODY_PENALTY)
        try:
            body = decode(BlockBody, raw, max_size=header.size)
        except DecodeError as exc:
            raise BodyUnavailable(f"served an undecodable body: {exc}", WRONG_BODY_PENALTY) from None
        if not is_body_of(header, body, len(raw)):
            raise BodyUnavailable("served a body that does not match the announced header", WRONG_BODY_PENALTY)
        return body

    return await trio.to_thread.run_sync(decode_checked), len(raw)


@dataclass(frozen=True)
class Wanted:
    """A header whose body this node wants: the handler's answer to an announcement worth fetching."""

    header: BlockHeader
    """The announced header."""
    topic: str
    """"claim" or "block"."""


class GossipAdapter:
    """Subscribes the node to its topics, fetches announced bodies, serves its own, and publishes for it."""

    def __init__(self, core: NodeCore, p2p: P2PNode, jobs: queue.Queue,
                 request_sync: Callable[[], None] | None = None):
        self.core = core
        self.p2p = p2p
        self.jobs = jobs
        self.request_sync = request_sync or (lambda: None)
        """Called when an announced block's parent is unknown: the sync brings both."""
        self.thread: P2PThread | None = None
        chain_id = core.params.chain_id
        self.topics = {name: get_topic(chain_id, name) for name in ("tx", "commit", "claim", "key", "block")}
        self.max_block_message = core.params.max_block_size + MAX_HEADER_ROOM
        """Largest encoded block (or claim) this node decodes."""
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()
        """block hash -> encoded body, of this node's own recent announcements."""
        self._fetching: dict[bytes, str] = {}
        """block hash -> the peer its body is being fetched from."""
        self._lock = threading.Lock()
        self.bodies_fetched = 0
        """Announced bodies fetched and found to match their header (for metrics and tests)."""

    def register(self) -> None:
        """Subscribe every topic with its validator and serve bodies (before the host starts)."""
        validators: dict[str, Callable[[bytes, float, object], Verdict | Wanted | None]] = {
            "tx": self._on_tx,
            "commit": self._on_commit,
            "claim": self._on_claim,
            "key": self._on_key,
            "block": self._on_block,
        }

        async def subscribe_all() -> None:
            for name, handle in validators.items():
                await self.p2p.subscribe(self.topics[name], self._make_validator(name, handle), None)

        trio.run(subscribe_all)  # registered now, activated when the host starts
        self.p2p.set_handler(BODY_PROTOCOL, self._serve_body, max_request=MAX_BODY_REQUEST,
                             max_response=self.core.params.max_block_size + 1)

    def _make_validator(self, name: str, handle: Callable[[bytes, float, object], Verdict | Wanted | None]):
        async def validate(peer, data: bytes) -> P2PVerdict:
            try:
                verdict = await trio.to_thread.run_sync(handle, data, time.time(), peer)
            except DecodeError as exc:
                log.debug("undecodable %s from %s: %s", name, peer, exc)
                return P2PVerdict.REJECT
            if isinstance(verdict, Wanted):
                self._start_fetch(peer, verdict)
                return P2PVerdict.IGNORE  # announced again by this node once it took the body in
            if verdict is None:
                return P2PVerdict.IGNORE
            if not verdict.accepted:
                log.debug("%s from %s refused: %s", name, peer, verdict.message or verdict.code)
            return to_p2p_verdict(verdict)

        return validate

    # --- one handler per topic (run in a worker thread) --------------------------------
    def _on_tx(self, data: bytes, now: float, peer) -> Verdict:
        return self.core.submit_transaction(decode_transaction(data, MAX_TX_MESSAGE), now)

    def _on_commit(self, data: bytes, now: float, peer) -> Verdict:
        return self.core.submit_commit(decode(Commit, data, max_size=MAX_COMMIT_MESSAGE), now)

    def _on_claim(self, data: bytes, now: float, peer) -> Verdict | Wanted | None:
        got = self._open_block_message(data, "claim", now)
        return self.take_claim(got, now) if isinstance(got, Block) else got

    def _on_key(self, data: bytes, now: float, peer) -> Verdict:
        return self.core.submit_key_reveal(decode(KeyReveal, data, max_size=MAX_KEY_MESSAGE), now)

    def _on_block(self, data: bytes, now: float, peer) -> Verdict | Wanted | None:
        got = self._open_block_message(data, "block", now)
        return self.take_block(got, now, peer) if isinstance(got, Block) else got

    def _open_block_message(self, data: bytes, kind: str, now: float) -> Block | Verdict | Wanted | None:
        """A whole block whose body matches its header; for an announcement, what to do about it instead."""
        message = decode(BlockMessage, data, max_size=self.p2p.max_gossip_payload)
        if isinstance(message, HeaderAnnouncement):
            return self.check_announcement(message.header, kind, now)
        block = message.block
        if not is_body_of(block.header, block.body, len(encode(block.body))):
            return Verdict(False, "malformed", "the body does not match the header")
        return block

    # --- whole claims and blocks, however they came ---------------------------------------
    def take_claim(self, block: Block, now: float) -> Verdict:
        """A claim whose body matches its header, to the core; verification is queued if its window is open."""
        verdict = self.core.submit_claim(Claim(block), now)
        if verdict.accepted:
            self.request_verification(now)
        return verdict

    def take_block(self, block: Block, now: float, peer) -> Verdict | None:
        """A block whose body matches its header: judged as a claim if its slot is being decided, else to the worker."""
        if self.core.chain.get_index(block.hash) is not None:
            return None
        if self.core.is_claim(block, now):
            # A block of the slot being decided competes as a claim: its model must have been committed in Phase 1.
            verdict = self.take_claim(block, now)
            return Verdict(verdict.accepted, verdict.code, verdict.message, relay=False)
        self.jobs.put(("block", block, str(peer)))
        return None

    def request_verification(self, now: float) -> None:
        """Queue claim verification if the slot is already in its verification window."""
        if self.core.is_verification_window(now):
            self.jobs.put(("verify", None, None))

    # --- announced bodies -------------------------------------------------------------------
    def check_announcement(self, header: BlockHeader, topic: str, now: float) -> Verdict | Wanted | None:
        """Whether an announced body is worth fetching, by the header alone (cheap checks first)."""
        params = self.core.params
        if header.size > params.max_block_size:
            return Verdict(False, "malformed", f"announced body of {header.size} bytes exceeds {params.max_block_size}")
        block_hash = header.hash
        with self.core.lock:
            if self.core.chain.get_index(block_hash) is not None or block_hash in self.core.claims:
                return None
            if self.core.chain.get_invalid_reason(block_hash) is not None:
                return None
            parent_known = self.core.chain.get_index(header.prev_hash) is not None
            committed = self.core.commits.get(header.miner, header.height, header.slot) is not None
        with self._lock:
            if block_hash in self._fetching:
                return None
        try:
            check_header(header, params)
        except InvalidBlock as exc:
            return Verdict(False, "invalid", f"announced header: {exc}")
        if is_block_from_future(params, header.timestamp, now):
            return None
        point = get_phase_point(params, now)
        as_claim = topic == "claim" or (point.slot, point.phase) == (header.slot, PHASE_2)  # as NodeCore.is_claim
        if as_claim and not (is_in_phase(params, header.slot, PHASE_2, now) and committed):
            return None  # not a claim this node could take now: no body is fetched for it
        if not parent_known:
            self.request_sync()  # the sync brings its ancestors and the block itself
            return None
        return Wanted(header, topic)

    def _start_fetch(self, peer, wanted: Wanted) -> None:
        """Fetch an announced body in the background, unless too many fetches are in flight."""
        block_hash, who = wanted.header.hash, str(peer)
        with self._lock:
            from_peer = sum(1 for p in self._fetching.values() if p == who)
            if block_hash in self._fetching or len(self._fetching) >= MAX_BODY_FETCHES or from_peer >= MAX_BODY_FETCHES_PER_PEER:
                return
            self._fetching[block_hash] = who
        try:
            self.thread.submit(self._fetch_and_take, peer, wanted)
        except P2PError:
            with self._lock:
                self._fetching.pop(block_hash, None)

    async def _fetch_and_take(self, peer, wanted: Wanted) -> None:
        header = wanted.header
        try:
            body, size = await self._fetch_from_any(peer, header)
        except BodyUnavailable as exc:
            log.info("announced %s %s from %s not taken: %s", wanted.topic, header.hash.hex()[:12], peer, exc)
            return
        finally:
            with self._lock:
                self._fetching.pop(header.hash, None)
        self.bodies_fetched += 1
        await trio.to_thread.run_sync(self._take_fetched, peer, wanted.topic, Block(header, body))

    async def _fetch_from_any(self, peer, header: BlockHeader) -> tuple[BlockBody, int]:
        """The body from its announcer (penalised if it fails), else from a few other peers (not penalised)."""
        try:
            return await fetch_body(self.p2p, peer, header)
        except BodyUnavailable as exc:
            self.p2p.penalize(peer, exc.penalty, f"announced body {header.hash.hex()[:12]}: {exc}")
            first = exc
        others = [p for p in self.p2p.connected_peers() if p != peer][:MAX_OTHER_BODY_SOURCES]
        for other in others:
            try:
                return await fetch_body(self.p2p, other, header)
            except BodyUnavailable:
                continue
        raise first

    def _take_fetched(self, peer, topic: str, block: Block) -> None:
        now = time.time()
        if topic == "claim":
            verdict = self.take_claim(block, now)
            if verdict.accepted:
                self.publish_block_message("claim", block)
            elif verdict.misbehaving:
                self.p2p.penalize(peer, self.p2p.score_config.invalid_gossip_penalty, f"announced claim: {verdict.message}")
            return
        verdict = self.take_block(block, now, peer)
        if verdict is not None and verdict.misbehaving:
            self.p2p.penalize(peer, self.p2p.score_config.invalid_gossip_penalty, f"announced block: {verdict.message}")

    async def _serve_body(self, peer, data: bytes) -> bytes:
        request = decode(BodyRequest, data, max_size=MAX_BODY_REQUEST)
        body = await trio.to_thread.run_sync(self.get_body_bytes, request.block_hash)
        if body is None:
            raise RequestRejected("unknown block")
        return body

    def get_body_bytes(self, block_hash: bytes) -> bytes | None:
        """The encoded body of a block or claim this node holds: announced lately, pooled, or stored."""
        with self._lock:
            body = self._bodies.get(block_hash)
        if body is not None:
            return body
        with self.core.lock:
            claim = self.core.claims.get(block_hash)
        if claim is not None:
            return encode(claim.block.body)
        raw = self.core.chain.get_block_bytes(block_hash)
        return None if raw is None else raw[get_body_offset(raw):]

    # --- publishing ---------------------------------------------------------------------
    def publish(self, name: str, data: bytes) -> None:
        """Gossip `data` on topic `name` (from any thread); a node with no peers yet is normal.

        For "claim" and "block", `data` is an encoded Claim or Block: it goes
        out whole if it fits a gossip frame, else as its header.
        """
        if name == "claim":
            self.publish_block_message(name, decode(Claim, data, max_size=self.max_block_message + 8).block)
        elif name == "block":
            self.publish_block_message(name, decode(Block, data, max_size=self.max_block_message))
        else:
            self._publish(name, data)

    def publish_block(self, block: Block) -> None:
        """Announce a block this node holds as valid."""
        self.publish_block_message("block", block)

    def publish_block_message(self, name: str, block: Block) -> None:
        """A claim or block this node took in, whole when it fits a gossip frame, else its header (body served here)."""
        whole = encode(FullBlock(block))
        if len(whole) <= self.p2p.max_gossip_payload:
            self._publish(name, whole)
            return
        with self._lock:
            self._bodies[block.hash] = encode(block.body)
            while len(self._bodies) > MAX_SERVED_BODIES:
                self._bodies.popitem(last=False)
        self._publish(name, encode(HeaderAnnouncement(block.header)))

    def _publish(self, name: str, data: bytes) -> None:
        if self.thread is None:
            return
        try:
            self.thread.call(self.p2p.publish, self.topics[name], data)
        except Exception as exc:
            log.debug("publish %s failed: %s", name, exc)
