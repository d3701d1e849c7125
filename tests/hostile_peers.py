"""Hostile peers for node tests, built from the real pouw.p2p parts and speaking the real protocols.

A `HostilePeer` is a real libp2p host (P2PNode in a P2PThread): it serves
the chain protocols with answers the test chooses, announces on the real
gossip topics, and can tell how the node under attack scores it. An
`RpcWatch` polls a node's RPC the whole time and records the slowest
answer, so a test can check the node kept answering while it was attacked.
Each attack is a small function, so one test can combine several.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from typing import Awaitable, Callable

from consensus.forkchoice import ChainScore
from fullnode.messages import (
    BLOCKS_PROTOCOL,
    BODY_PROTOCOL,
    HEADERS_PROTOCOL,
    STATUS_PROTOCOL,
    BlocksResponse,
    StatusMessage,
    get_topic,
)
from fullnode.node import FullNode
from pouw.encoding import encode
from pouw.p2p.node import MAX_FRAME_LIMIT, P2PNode
from pouw.p2p.thread import P2PThread
from pouw.rpc import RpcClient
from pouw.types import Block, ChainParams

MiB = 1 << 20


def make_lying_status(params: ChainParams, node: FullNode, *, lead: int = 1000) -> StatusMessage:
    """A status claiming a chain far better than `node`'s (by `lead` high-accuracy blocks) with a tip nobody holds."""
    tip = node.chain.get_tip_score()
    tip_hash = os.urandom(32)
    score = ChainScore(tip.hi_count + lead, tip.duty_count + lead, tip.dice_sum + lead * 900_000, tip.height + lead,
                       900_000, bytes(32), tip_hash)
    return StatusMessage(params.chain_id, tip.height + lead, tip_hash, score, "")


def blocks_answer(blocks: list[Block]) -> bytes:
    """A blocks answer carrying `blocks`, parents first."""
    return encode(BlocksResponse(tuple(encode(b) for b in blocks)))


class HostilePeer:
    """A libp2p peer whose answers on the chain protocols are the test's choice."""

    def __init__(self, params: ChainParams):
        self.params = params
        self.p2p = P2PNode(os.urandom(32))
        self.thread: P2PThread | None = None
        self.asked: dict[str, int] = {}
        """protocol -> requests this peer was sent."""
        self.heard: dict[str, list[bytes]] = {}
        """gossip topic name -> payloads this peer received on it."""

    def serve(self, protocol: str, answer: Callable[[bytes], bytes | Awaitable[bytes]]) -> "HostilePeer":
        """Answer `protocol` with `answer(request)` (limits as wide as the p2p layer allows: the node must hold its own)."""

        async def handler(peer, data: bytes) -> bytes:
            self.asked[protocol] = self.asked.get(protocol, 0) + 1
            result = answer(data)
            return await result if inspect.isawaitable(result) else result  # an async answer may stall (trio.sleep)

        self.p2p.set_handler(protocol, handler, max_request=1 * MiB, max_response=MAX_FRAME_LIMIT)
        return self

    def serve_status(self, status: StatusMessage) -> "HostilePeer":
        """Claim `status` to whoever asks."""
        return self.serve(STATUS_PROTOCOL, lambda data: encode(status))

    def serve_blocks(self, answer: Callable[[bytes], bytes]) -> "HostilePeer":
        return self.serve(BLOCKS_PROTOCOL, answer)

    def serve_headers(self, answer: Callable[[bytes], bytes]) -> "HostilePeer":
        return self.serve(HEADERS_PROTOCOL, answer)

    def serve_body(self, answer: Callable[[bytes], bytes]) -> "HostilePeer":
        return self.serve(BODY_PROTOCOL, answer)

    def start(self) -> "HostilePeer":
        self.thread = P2PThread(self.p2p).start()
        return self

    def connect(self, node: FullNode) -> None:
        self.thread.call(self.p2p.connect, node.p2p_addrs()[0])

    def join(self, name: str, count: int = 1) -> str:
        """Subscribe to the gossip topic `name` and wait until `count` peers are in it; returns the topic.

        What the peer hears there is kept in `heard[name]` (payloads, in arrival order).
        """
        topic = get_topic(self.params.chain_id, name)
        heard = self.heard.setdefault(name, [])
        self.thread.call(self.p2p.subscribe, topic, None, lambda origin, data: heard.append(data))
        self.thread.call(self.p2p.wait_for_topic_peers, topic, count, 20.0)
        return topic

    def publish(self, topic: str, data: bytes) -> None:
        self.thread.call(self.p2p.publish, topic, data)

    def score_at(self, node: FullNode) -> float:
        """How the node scores this peer."""
        return node.p2p.score(self.p2p.peer_id)

    def is_banned_by(self, node: FullNode) -> bool:
        return node.p2p.is_banned(self.p2p.peer_id)

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class RpcWatch:
    """Calls `getinfo` on a node every `interval` seconds in a thread and keeps the slowest answer's time."""

    def __init__(self, node: FullNode, interval: float = 0.1):
        self.client = RpcClient(node.rpc.url, datadir=node.datadir, timeout=30)
        self.interval = interval
        self.slowest = 0.0
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rpc-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self.client.call("getinfo")
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                self.failures.append(str(exc))
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.calls += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RpcWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
