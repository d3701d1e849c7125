"""Gossip: the five topics, each a thin adapter from decoded bytes to a core call and back.

A validator decodes the message with its size limit, hands it to the core
(in a worker thread: the core may wait a moment for its lock) and maps the
verdict to libp2p's: ACCEPT delivers and relays, IGNORE drops quietly,
REJECT drops and penalises the forwarder. RPC calls the same core methods,
so both doors apply the same rules.

Blocks are never relayed as they arrive: their work must be verified first,
which takes too long for a validator. They go to the node's worker, which
takes them down the block road and announces the valid ones itself.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Callable

import trio

from mempool.txpool import decode_transaction
from pouw.encoding import DecodeError, decode
from pouw.p2p.node import P2PNode, Verdict as P2PVerdict
from pouw.p2p.thread import P2PThread
from pouw.types import Block, Claim, Commit, KeyReveal

from fullnode.core import NodeCore, Verdict
from fullnode.messages import get_topic

log = logging.getLogger("pouw.gossip")

MAX_TX_MESSAGE = 1 << 20
"""Largest transaction accepted from gossip."""
MAX_COMMIT_MESSAGE = 4096
MAX_KEY_MESSAGE = 256


def to_p2p_verdict(verdict: Verdict) -> P2PVerdict:
    """Relay what the core took in, penalise what no honest node sends, drop the rest quietly."""
    if verdict.accepted and verdict.relay:
        return P2PVerdict.ACCEPT
    if verdict.misbehaving:
        return P2PVerdict.REJECT
    return P2PVerdict.IGNORE


class GossipAdapter:
    """Subscribes the node to its topics and publishes for it."""

    def __init__(self, core: NodeCore, p2p: P2PNode, jobs: queue.Queue):
        self.core = core
        self.p2p = p2p
        self.jobs = jobs
        self.thread: P2PThread | None = None
        chain_id = core.params.chain_id
        self.topics = {name: get_topic(chain_id, name) for name in ("tx", "commit", "claim", "key", "block")}

    def register(self) -> None:
        """Subscribe every topic with its validator (before the host starts)."""
        validators: dict[str, Callable[[bytes, float], Verdict | None]] = {
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

    def _make_validator(self, name: str, handle: Callable[[bytes, float, object], Verdict | None]):
        async def validate(peer, data: bytes) -> P2PVerdict:
            try:
                verdict = await trio.to_thread.run_sync(handle, data, time.time(), peer)
            except DecodeError as exc:
                log.debug("undecodable %s from %s: %s", name, peer, exc)
                return P2PVerdict.REJECT
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

    def _on_claim(self, data: bytes, now: float, peer) -> Verdict:
        verdict = self.core.submit_claim(decode(Claim, data), now)
        if verdict.accepted:
            self.request_verification(now)
        return verdict

    def _on_key(self, data: bytes, now: float, peer) -> Verdict:
        return self.core.submit_key_reveal(decode(KeyReveal, data, max_size=MAX_KEY_MESSAGE), now)

    def _on_block(self, data: bytes, now: float, peer) -> Verdict | None:
        block = decode(Block, data)
        if self.core.chain.get_index(block.hash) is not None:
            return None
        if self.core.is_claim(block, now):
            # A block of the slot being decided competes as a claim: its model must have been committed in Phase 1.
            verdict = self.core.submit_claim(Claim(block), now)
            if verdict.accepted:
                self.request_verification(now)
            return Verdict(verdict.accepted, verdict.code, verdict.message, relay=False)
        self.jobs.put(("block", block, str(peer)))
        return None

    def request_verification(self, now: float) -> None:
        """Queue claim verification if the slot is already in its verification window."""
        if self.core.is_verification_window(now):
            self.jobs.put(("verify", None, None))

    # --- publishing ---------------------------------------------------------------------
    def publish(self, name: str, data: bytes) -> None:
        """Gossip `data` on topic `name` (from any thread); a node with no peers yet is normal."""
        if self.thread is None:
            return
        try:
            self.thread.call(self.p2p.publish, self.topics[name], data)
        except Exception as exc:
            log.debug("publish %s failed: %s", name, exc)
