"""Block sync: serving our best chain to peers, and catching up from peers with a better one.

A thin adapter: blocks received here take the core's one road like any
other; what this file decides is only whom to ask, when, and whom to
penalise.

When: as soon as a peer connects, when a gossiped block's parent is
unknown, every few seconds (the phase clock), and again at once after a
sync while a peer's status still shows a better chain. How: the next batch
is requested (and decoded, in a worker thread) while this one goes down the
block road, so the network and the decoding overlap the validation.

Whom to penalise: a peer whose status claims a better chain than it then
delivers (nothing, only known blocks, or blocks whose chain does not reach
the score it claimed) loses UNBACKED_STATUS_PENALTY points, so one that
keeps lying is banned at the threshold; a peer that answers with something
no honest node sends (an undecodable answer, blocks that do not form a
chain from our locator, a body that does not match its header, an invalid
block, a broken header chain) or follows another network is banned.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import queue
import threading
import time
from typing import Callable

import trio

from consensus.chainstate import BlockStatus, ChainState
from consensus.forkchoice import get_score_key, is_better
from pouw.encoding import DecodeError, decode, encode
from pouw.p2p.framing import FrameTooLarge
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread
from pouw.types import Block

from fullnode.core import NodeCore
from fullnode.fetch import BlobFetcher
from fullnode.gossip import get_body_offset, is_body_of
from fullnode.verification import WorkChecker
from fullnode.messages import (
    BLOCKS_PROTOCOL,
    HEADERS_PROTOCOL,
    MAX_HEADER_ROOM,
    MAX_HEADERS,
    MAX_HEADERS_RESPONSE,
    MAX_LOCATOR,
    MAX_STATUS_MESSAGE,
    MAX_SYNC_BLOCKS,
    MAX_SYNC_RESPONSE,
    STATUS_PROTOCOL,
    BlocksRequest,
    BlocksResponse,
    HeadersResponse,
    StatusMessage,
)

log = logging.getLogger("pouw.sync")

MAX_ASSUME_VALID_HEADERS = 200_000
"""Most headers fetched from one peer while looking for the assume-valid block (about 60 MB)."""
BAN_SECONDS = 600.0
"""How long a peer that served a bad sync answer or follows another network is banned."""
UNBACKED_STATUS_PENALTY = 25.0
"""Points off a peer whose status claimed a better chain than it delivered (four in a row reach the ban threshold)."""
MAX_SYNC_REQUEST = 64 * 40
"""Largest blocks or headers request, in bytes (a full locator and its framing)."""
STATUS_TIMEOUT = 5.0
"""Seconds a peer has to answer a status request (all peers are asked at once)."""
BLOCKS_TIMEOUT = 30.0
"""Seconds a peer has to answer a blocks request (at most MAX_SYNC_RESPONSE bytes)."""
MAX_SYNC_ROUNDS = 16
"""Status rounds one sync job runs while a peer still shows a better chain after the last round's sync."""


class BadSyncAnswer(Exception):
    """A sync answer no honest node sends: the peer is banned."""


class SyncStop(enum.Enum):
    """Why syncing from one peer ended."""

    DONE = "done"
    """The peer had nothing more (or we reached the height it claimed)."""
    FAILED = "failed"
    """The peer did not answer (in time)."""
    BANNED = "banned"
    """The peer sent a bad answer or an invalid block, and is banned."""
    HELD = "held"
    """This node cannot judge a block now (blobs missing, from the future, beyond the finality window) or is stopping."""


def compute_locator_heights(tip_height: int) -> list[int]:
    """Heights of a block locator: tip, tip−1, then steps doubling (tip−3, tip−7, …), then genesis."""
    heights, step, h = [], 1, tip_height
    while h > 0 and len(heights) < MAX_LOCATOR - 1:
        heights.append(h)
        if len(heights) >= 2:
            step *= 2
        h -= step
    heights.append(0)
    return heights


def get_locator(chain: ChainState) -> tuple[bytes, ...]:
    """Hashes of our best chain at the locator heights, newest first."""
    with chain.lock:
        return tuple(chain.get_hash_at(h) for h in compute_locator_heights(chain.tip_height))


def get_fork_height(chain: ChainState, locator: tuple[bytes, ...]) -> int:
    """Height of the newest locator hash on our best chain (0, genesis, when none is); call under the chain's lock."""
    for block_hash in locator:
        if chain.is_on_best_chain(block_hash):
            return chain.get_index(block_hash).height
    return 0


def get_blocks_after(chain: ChainState, request: BlocksRequest) -> BlocksResponse:
    """Best-chain blocks after the newest locator hash that is on our best chain (up to the response limits)."""
    with chain.lock:
        start = get_fork_height(chain, request.locator)
        out, size = [], 0
        last = min(chain.tip_height, start + min(request.max_blocks, MAX_SYNC_BLOCKS))
        for height in range(start + 1, last + 1):
            raw = chain.get_block_bytes(chain.get_hash_at(height))
            if raw is None or size + len(raw) > MAX_SYNC_RESPONSE - 65536:
                break
            out.append(raw)
            size += len(raw)
    return BlocksResponse(tuple(out))


def get_headers_after(chain: ChainState, request: BlocksRequest) -> HeadersResponse:
    """Best-chain headers after the newest locator hash on our best chain (at most MAX_HEADERS)."""
    with chain.lock:
        start = get_fork_height(chain, request.locator)
        last = min(chain.tip_height, start + min(request.max_blocks, MAX_HEADERS))
        return HeadersResponse(tuple(chain.get_block_at(h).header for h in range(start + 1, last + 1)))


def decode_sync_blocks(raw: bytes, max_block: int) -> list[Block]:
    """The blocks of a blocks answer, each decoded with its own limit, checked to form a chain and to match their
    headers; raises BadSyncAnswer (an honest peer never sends otherwise)."""
    try:
        response = decode(BlocksResponse, raw, max_size=MAX_SYNC_RESPONSE)
    except DecodeError as exc:
        raise BadSyncAnswer(f"sent an undecodable blocks answer: {exc}") from None
    blocks: list[Block] = []
    for data in response.blocks:
        try:
            block = decode(Block, data, max_size=max_block)
        except DecodeError as exc:
            raise BadSyncAnswer(f"sent an undecodable block: {exc}") from None
        if blocks and block.header.prev_hash != blocks[-1].hash:
            raise BadSyncAnswer(f"sent blocks that do not form a chain (block {block.header.height})")
        if not is_body_of(block.header, block.body, len(data) - get_body_offset(data)):
            raise BadSyncAnswer(f"sent block {block.header.height} with a body that does not match its header")
        blocks.append(block)
    return blocks


def compute_assumed_valid(headers: list, assume_valid: bytes, tip_height: int, finality_depth: int) -> set[bytes]:
    """The hashes that may skip the work check: `assume_valid` and its ancestors in `headers` (a chain, parents
    first), buried deeper than the finality window below the header chain's tip."""
    heights = {h.hash: h.height for h in headers}
    if assume_valid not in heights:
        return set()
    by_hash = {h.hash: h for h in headers}
    out: set[bytes] = set()
    cursor = assume_valid
    while cursor in by_hash:
        header = by_hash[cursor]
        if header.height + finality_depth < tip_height:
            out.add(cursor)
        cursor = header.prev_hash
    return out


def get_status_message(chain: ChainState, blob_url: str) -> StatusMessage:
    """This node's status for peers."""
    with chain.lock:
        tip = chain.tip_hash
        return StatusMessage(chain.params.chain_id, chain.tip_height, tip, chain.get_index(tip).score, blob_url)


class SyncAdapter:
    """Serves the status, blocks and headers protocols and syncs from better peers."""

    def __init__(self, core: NodeCore, p2p: P2PNode, fetcher: BlobFetcher, work_checker: WorkChecker,
                 blob_url: Callable[[], str], log_fn: Callable[[str], None], stopping: Callable[[], bool],
                 jobs: queue.Queue | None = None):
        self.core = core
        self.chain = core.chain
        self.p2p = p2p
        self.fetcher = fetcher
        self.work_checker = work_checker
        self.blob_url = blob_url
        self.log = log_fn
        self.stopping = stopping
        self.jobs = jobs
        self.thread: P2PThread | None = None
        self.max_block_message = core.params.max_block_size + MAX_HEADER_ROOM
        """Largest encoded block this node decodes."""
        self._sync_queued = threading.Event()
        self.on_new_tip: Callable[[Block], None] = lambda block: None
        """Called with the tip after a sync from one peer moved it (the node announces it: see sync_from)."""

    def register(self) -> None:
        """Install the request handlers and the new-peer trigger (before the host starts)."""
        self.p2p.set_handler(STATUS_PROTOCOL, self._serve_status, max_request=64, max_response=MAX_STATUS_MESSAGE)
        self.p2p.set_handler(BLOCKS_PROTOCOL, self._serve_blocks, max_request=MAX_SYNC_REQUEST, max_response=MAX_SYNC_RESPONSE)
        self.p2p.set_handler(HEADERS_PROTOCOL, self._serve_headers, max_request=MAX_SYNC_REQUEST,
                             max_response=MAX_HEADERS_RESPONSE)
        self.p2p.on_peer_connected(lambda peer: self.request_sync())

    async def _serve_status(self, peer, data: bytes) -> bytes:
        return encode(await trio.to_thread.run_sync(get_status_message, self.chain, self.blob_url() or ""))

    async def _serve_blocks(self, peer, data: bytes) -> bytes:
        request = decode(BlocksRequest, data, max_size=MAX_SYNC_REQUEST)
        return encode(await trio.to_thread.run_sync(get_blocks_after, self.chain, request))

    async def _serve_headers(self, peer, data: bytes) -> bytes:
        request = decode(BlocksRequest, data, max_size=MAX_SYNC_REQUEST)
        return encode(await trio.to_thread.run_sync(get_headers_after, self.chain, request))

    # --- when ------------------------------------------------------------------------
    def request_sync(self) -> None:
        """Queue one sync job for the worker (any thread, the event loop included); one queued at a time."""
        if self.jobs is None or self._sync_queued.is_set():
            return
        self._sync_queued.set()
        self.jobs.put(("sync", None, None))

    # --- whom to penalise -----------------------------------------------------------------
    def penalize(self, peer, reason: str, points: float | None = None) -> None:
        """Take points off a peer (banned at the threshold); from any thread."""
        try:
            self.p2p.penalize(peer, points, reason)
        except Exception:  # not a peer id, or the node is stopping
            pass

    def ban(self, peer, reason: str) -> None:
        """Ban a peer for BAN_SECONDS."""
        self.log(f"banning peer {str(peer)[:16]}: {reason}")
        try:
            self.p2p.ban(peer, BAN_SECONDS, reason)
        except Exception:
            pass

    # --- the client side -------------------------------------------------------------
    def sync_with_peers(self) -> None:
        """Ask every peer for its tip at once; sync from those with a better chain, best first, and ask again at
        once while a sync made progress (a peer may have moved on meanwhile)."""
        self._sync_queued.clear()
        for _ in range(MAX_SYNC_ROUNDS):
            progressed = False
            for peer, status in self.get_better_peers():
                if self.stopping():
                    return
                if not is_better(status.score, self.chain.get_tip_score()) or self.chain.get_index(status.tip_hash):
                    continue  # an earlier peer of this round brought us as far
                self.learn_assumed_valid(peer, status)
                progressed = self.sync_from(peer, status) or progressed
            if not progressed:
                return

    def get_better_peers(self) -> list[tuple[object, StatusMessage]]:
        """Connected peers whose status shows a better chain with a tip we do not hold, best first."""
        try:
            peers = self.thread.call_sync(self.p2p.connected_peers)
        except Exception:
            return []
        asked = {}
        for peer in peers:
            try:
                asked[peer] = self.thread.submit(self.p2p.request, peer, STATUS_PROTOCOL, b"", STATUS_TIMEOUT)
            except Exception:
                return []
        better = []
        for peer, future in asked.items():
            status = self._read_status(peer, future)
            if status is not None and is_better(status.score, self.chain.get_tip_score()) \
                    and self.chain.get_index(status.tip_hash) is None:
                better.append((peer, status))
        better.sort(key=lambda item: get_score_key(item[1].score), reverse=True)
        return better

    def _read_status(self, peer, future: concurrent.futures.Future) -> StatusMessage | None:
        try:
            raw = future.result(STATUS_TIMEOUT + 5)
        except Exception as exc:
            log.debug("status from %s failed: %s", peer, exc)
            return None
        try:
            status = decode(StatusMessage, raw, max_size=MAX_STATUS_MESSAGE)
        except DecodeError as exc:
            self.ban(peer, f"sent an undecodable status: {exc}")
            return None
        if status.chain_id != self.core.params.chain_id:
            self.ban(peer, "peer follows another network")
            return None
        if status.blob_url:
            self.fetcher.peer_urls[str(peer)] = status.blob_url
        return status

    def sync_from(self, peer, status: StatusMessage) -> bool:
        """Take blocks from `peer` until we reach the height it claimed or it stops helping; True if the chain grew.

        Penalises the peer when the chain it claimed is not what it delivered.
        """
        started, start_height, start_tip = time.time(), self.chain.tip_height, self.chain.tip_hash
        stop, progressed = self._sync_batches(peer, status)
        if stop in (SyncStop.DONE, SyncStop.FAILED) and not self.is_status_backed(status):
            self.log(f"peer {str(peer)[:16]} claimed a better chain (height {status.height}) than it served ({stop.value})")
            self.penalize(peer, f"status not backed by the blocks it served ({stop.value})", UNBACKED_STATUS_PENALTY)
        if self.chain.tip_height != start_height:
            self.log(f"synced to height {self.chain.tip_height} in {time.time() - started:.1f} s")
        if self.chain.tip_hash != start_tip:
            # A block taken here before its gossip arrived is never relayed by that gossip (known by then): announce
            # the new tip, once per sync and not per block, or peers that hear only this node wait for their own sync.
            self.on_new_tip(self.chain.get_tip())
        return progressed

    def is_status_backed(self, status: StatusMessage) -> bool:
        """True when we now hold the peer's claimed tip with the score it claimed, or a chain at least as good."""
        index = self.chain.get_index(status.tip_hash)
        if index is not None and index.score == status.score:
            return True
        return not is_better(status.score, self.chain.get_tip_score())

    def _sync_batches(self, peer, status: StatusMessage) -> tuple[SyncStop, bool]:
        """Request batch n+1 while batch n goes down the block road; returns why it stopped and whether anything was new."""
        locator = get_locator(self.chain)
        pending = self._ask_blocks(peer, locator)
        progressed = False
        while True:
            try:
                blocks = pending.result(BLOCKS_TIMEOUT + 30)
            except BadSyncAnswer as exc:
                self.ban(peer, str(exc))
                return SyncStop.BANNED, progressed
            except FrameTooLarge as exc:  # an honest server never answers over the protocol's limit
                self.ban(peer, f"sent a blocks answer over the limit: {exc}")
                return SyncStop.BANNED, progressed
            except Exception as exc:  # no answer, an error answer, an oversize frame (penalised by the p2p layer)
                self.log(f"sync from {str(peer)[:16]} stopped: {exc}")
                return SyncStop.FAILED, progressed
            if not blocks:
                return SyncStop.DONE, progressed
            if self.chain.get_index(blocks[0].header.prev_hash) is None:
                self.ban(peer, f"sent block {blocks[0].header.height} that does not extend our locator")
                return SyncStop.BANNED, progressed
            last = blocks[-1].header
            more = last.height < status.height and not self.stopping()
            pending = self._ask_blocks(peer, (last.hash,) + locator[: MAX_LOCATOR - 1]) if more else None
            stop, new = self._take_blocks(peer, blocks)
            progressed = progressed or new
            if stop is not None:
                return stop, progressed
            if pending is None or not new:
                return (SyncStop.HELD if self.stopping() else SyncStop.DONE), progressed
            locator = get_locator(self.chain)
            self.log(f"sync: height {self.chain.tip_height} of {status.height}")

    def learn_assumed_valid(self, peer, status: StatusMessage) -> None:
        """If the operator named an assume-valid block we do not hold yet, find it in the peer's header chain.

        Headers are cheap (no blobs); a header chain cannot be faked to reach
        the named hash, since each header commits to its parent's. The
        ancestors found, if buried deeper than the finality window, skip the
        Dice recomputation when their blocks arrive.
        """
        target = self.work_checker.assume_valid
        if target is None or self.chain.get_index(target) is not None or target in self.work_checker.assumed:
            return
        headers: list = []
        locator = get_locator(self.chain)
        while len(headers) < min(status.height, MAX_ASSUME_VALID_HEADERS):
            request = BlocksRequest(((headers[-1].hash,) if headers else ()) + locator[: MAX_LOCATOR - 1], MAX_HEADERS)
            try:
                raw = self.thread.call(self.p2p.request, peer, HEADERS_PROTOCOL, encode(request), BLOCKS_TIMEOUT)
            except Exception as exc:
                self.log(f"headers from {str(peer)[:16]} failed: {exc}")
                return
            try:
                batch = decode(HeadersResponse, raw, max_size=MAX_HEADERS_RESPONSE).headers
            except DecodeError as exc:
                self.ban(peer, f"sent an undecodable headers answer: {exc}")
                return
            if not batch:
                break
            for header in batch:
                if (headers and header.prev_hash != headers[-1].hash) or not header.is_signature_valid():
                    self.ban(peer, "sent a broken header chain")
                    return
                headers.append(header)
            if any(h.hash == target for h in batch) or len(batch) < MAX_HEADERS:
                break
        tip_height = headers[-1].height if headers else 0
        assumed = compute_assumed_valid(headers, target, tip_height, self.core.params.finality_depth)
        if assumed:
            self.work_checker.assumed |= assumed
            self.log(f"assume-valid: {len(assumed)} buried ancestors of {target.hex()[:12]} skip the Dice recomputation")

    def _ask_blocks(self, peer, locator: tuple[bytes, ...]) -> concurrent.futures.Future:
        """Start a blocks request; the Future gets the decoded, checked blocks (or BadSyncAnswer, or the request's error)."""
        request = encode(BlocksRequest(locator, MAX_SYNC_BLOCKS))

        async def ask() -> list[Block]:
            raw = await self.p2p.request(peer, BLOCKS_PROTOCOL, request, BLOCKS_TIMEOUT)
            return await trio.to_thread.run_sync(decode_sync_blocks, raw, self.max_block_message)

        return self.thread.submit(ask)

    def _take_blocks(self, peer, blocks: list[Block]) -> tuple[SyncStop | None, bool]:
        """One batch down the block road, in order; returns (why to stop or None, whether any block was new)."""
        new = False
        for block in blocks:
            if self.stopping():
                return SyncStop.HELD, new
            result = self.core.process_block(block, time.time())
            if result.sender_at_fault and result.status is BlockStatus.INVALID:
                self.ban(peer, f"sent an invalid block: {result.reason}")
                return SyncStop.BANNED, new
            if result.status in (BlockStatus.REFUSED, BlockStatus.MISSING):
                if result.sender_at_fault:  # stamped in the future: not invalid, but no honest node serves it now
                    self.penalize(peer, f"sent a block from the future: {result.reason}")
                self.log(f"cannot take block {block.header.height} {block.hash.hex()[:12]} from {str(peer)[:16]} now: "
                         f"{result.reason}")
                return SyncStop.HELD, new
            new = new or result.status is not BlockStatus.KNOWN
        return None, new

