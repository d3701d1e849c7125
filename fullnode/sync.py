"""Block sync: serving our best chain to peers, and catching up from peers with a better one.

A thin adapter: blocks received here take the core's one road like any
other; what this file decides is only whom to ask and whom to penalise.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import trio

from consensus.chainstate import BlockStatus, ChainState
from consensus.forkchoice import is_better
from pouw.encoding import DecodeError, decode, encode
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread
from pouw.types import Block

from fullnode.core import NodeCore
from fullnode.fetch import BlobFetcher
from fullnode.verification import WorkChecker
from fullnode.messages import (
    BLOCKS_PROTOCOL,
    HEADERS_PROTOCOL,
    MAX_HEADERS,
    MAX_HEADERS_RESPONSE,
    MAX_LOCATOR,
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
"""How long a peer that served an invalid block or follows another network is banned."""


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
    return tuple(chain.get_hash_at(h) for h in compute_locator_heights(chain.tip_height))


def get_blocks_after(chain: ChainState, request: BlocksRequest) -> BlocksResponse:
    """Best-chain blocks after the newest locator hash that is on our best chain (up to the response limits)."""
    start = 0
    for block_hash in request.locator:
        if chain.is_on_best_chain(block_hash):
            start = chain.get_index(block_hash).height
            break
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
    start = 0
    for block_hash in request.locator:
        if chain.is_on_best_chain(block_hash):
            start = chain.get_index(block_hash).height
            break
    last = min(chain.tip_height, start + min(request.max_blocks, MAX_HEADERS))
    return HeadersResponse(tuple(chain.get_block_at(h).header for h in range(start + 1, last + 1)))


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
    """Serves the status and blocks protocols and syncs from better peers."""

    def __init__(self, core: NodeCore, p2p: P2PNode, fetcher: BlobFetcher, work_checker: WorkChecker,
                 blob_url: Callable[[], str], log_fn: Callable[[str], None], stopping: Callable[[], bool]):
        self.core = core
        self.chain = core.chain
        self.p2p = p2p
        self.fetcher = fetcher
        self.work_checker = work_checker
        self.blob_url = blob_url
        self.log = log_fn
        self.stopping = stopping
        self.thread: P2PThread | None = None

    def register(self) -> None:
        """Install the request handlers (before the host starts)."""
        self.p2p.set_handler(STATUS_PROTOCOL, self._serve_status, max_request=64, max_response=4096)
        self.p2p.set_handler(BLOCKS_PROTOCOL, self._serve_blocks, max_request=64 * 40, max_response=MAX_SYNC_RESPONSE)
        self.p2p.set_handler(HEADERS_PROTOCOL, self._serve_headers, max_request=64 * 40, max_response=MAX_HEADERS_RESPONSE)

    async def _serve_status(self, peer, data: bytes) -> bytes:
        return encode(await trio.to_thread.run_sync(get_status_message, self.chain, self.blob_url()))

    async def _serve_blocks(self, peer, data: bytes) -> bytes:
        request = decode(BlocksRequest, data, max_size=64 * 40)
        return encode(await trio.to_thread.run_sync(get_blocks_after, self.chain, request))

    async def _serve_headers(self, peer, data: bytes) -> bytes:
        request = decode(BlocksRequest, data, max_size=64 * 40)
        return encode(await trio.to_thread.run_sync(get_headers_after, self.chain, request))

    # --- the client side -------------------------------------------------------------
    def penalize(self, peer, reason: str) -> None:
        """Take points off a peer (banned at the threshold)."""
        try:
            self.thread.call_sync(self.p2p.penalize, peer, reason)
        except Exception:  # the peer may be gone already
            pass

    def ban(self, peer, reason: str) -> None:
        """Ban a peer for BAN_SECONDS."""
        self.log(f"banning peer {str(peer)[:16]}: {reason}")
        try:
            self.thread.call_sync(self.p2p.ban, peer, BAN_SECONDS, reason)
        except Exception:
            pass

    def sync_with_peers(self) -> None:
        """Ask each peer for its tip; fetch and process blocks from any peer with a better chain."""
        try:
            peers = self.thread.call_sync(self.p2p.connected_peers)
        except Exception:
            return
        for peer in peers:
            try:
                raw = self.thread.call(self.p2p.request, peer, STATUS_PROTOCOL, b"", 10.0)
                status = decode(StatusMessage, raw, max_size=4096)
            except Exception as exc:
                log.debug("status from %s failed: %s", peer, exc)
                continue
            if status.chain_id != self.core.params.chain_id:
                self.ban(peer, "peer follows another network")
                continue
            if status.blob_url:
                self.fetcher.peer_urls[str(peer)] = status.blob_url
            if is_better(status.score, self.chain.get_tip_score()) and self.chain.get_index(status.tip_hash) is None:
                self.learn_assumed_valid(peer, status)
                self.sync_from(peer, status)

    def sync_from(self, peer, status: StatusMessage) -> None:
        """Ask `peer` for blocks after our locator until we reach its height or it stops helping."""
        started = time.time()
        start_height = self.chain.tip_height
        while not self.stopping():
            request = BlocksRequest(get_locator(self.chain), MAX_SYNC_BLOCKS)
            try:
                raw = self.thread.call(self.p2p.request, peer, BLOCKS_PROTOCOL, encode(request), 30.0)
                response = decode(BlocksResponse, raw, max_size=MAX_SYNC_RESPONSE)
            except Exception as exc:
                self.log(f"sync from {str(peer)[:16]} stopped: {exc}")
                return
            if not response.blocks or not self._take_blocks(peer, response):
                break
            if self.chain.tip_height >= status.height:
                break
            self.log(f"sync: height {self.chain.tip_height} of {status.height}")
        if self.chain.tip_height != start_height:
            self.log(f"synced to height {self.chain.tip_height} in {time.time() - started:.1f} s")

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
                raw = self.thread.call(self.p2p.request, peer, HEADERS_PROTOCOL, encode(request), 30.0)
                batch = decode(HeadersResponse, raw, max_size=MAX_HEADERS_RESPONSE).headers
            except Exception as exc:
                self.log(f"headers from {str(peer)[:16]} failed: {exc}")
                return
            if not batch:
                break
            for header in batch:
                if (headers and header.prev_hash != headers[-1].hash) or not header.is_signature_valid():
                    self.penalize(peer, "sent a broken header chain")
                    return
                headers.append(header)
            if any(h.hash == target for h in batch) or len(batch) < MAX_HEADERS:
                break
        tip_height = headers[-1].height if headers else 0
        assumed = compute_assumed_valid(headers, target, tip_height, self.core.params.finality_depth)
        if assumed:
            self.work_checker.assumed |= assumed
            self.log(f"assume-valid: {len(assumed)} buried ancestors of {target.hex()[:12]} skip the Dice recomputation")

    def _take_blocks(self, peer, response: BlocksResponse) -> bool:
        """Process one response's blocks in order; False when the peer should not be asked again now."""
        progressed = False
        for data in response.blocks:
            try:
                block = decode(Block, data)
            except DecodeError as exc:
                self.ban(peer, f"sent an undecodable block: {exc}")
                return False
            result = self.core.process_block(block, time.time())
            if result.sender_at_fault:
                self.ban(peer, f"sent an {result.status.value} block: {result.reason}")
                return False
            if result.status is BlockStatus.REFUSED:
                self.log(f"not syncing further from {str(peer)[:16]}: {result.reason}")
                return False
            if result.status is BlockStatus.MISSING:
                self.log(f"cannot judge block {block.header.height} {block.hash.hex()[:12]} yet: {result.reason}")
                return False
            progressed = progressed or result.status is not BlockStatus.KNOWN
        return progressed
