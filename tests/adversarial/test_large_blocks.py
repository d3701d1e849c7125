"""Blocks over the 1 MiB gossip frame: announced by header, the body fetched on /pouw/req/body/1.

The attack (on the old gossip): a block or claim travelled whole in one
pubsub frame of at most 1 MiB, though a block body may be `max_block_size`
(4 MiB). A block of 10,000 transfers (1.4 MB) could not be gossiped at all
(publish refused the frame), so a miner who filled its block could not get
it to anyone but by sync, and its claim not at all.

Now the block topic carries the header of such a block; the node checks the
header (size, signature, parent) and fetches the body from the announcer,
at most the header's `size` within a deadline. A peer that announces a body
and does not serve it, or serves another body, loses points, and the block
it named is not remembered as invalid: the node takes it from a peer that
serves the right body.

The announcers are real libp2p hosts (tests/hostile_peers.py); the block is
a real one (a trained model, its blobs served by a real node), so the node
under test verifies its work before it connects it.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import trio

from consensus.fixtures import make_keypair, make_test_params, make_transfer
from fullnode.config import NodeConfig
from fullnode.gossip import UNSERVED_BODY_PENALTY, WRONG_BODY_PENALTY
from fullnode.messages import BodyRequest, HeaderAnnouncement
from fullnode.node import FullNode
from hostile_peers import HostilePeer, wait_until
from pouw.encoding import decode, encode
from pouw.types import Block
from realblocks import mine_standing_block

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice")
ALICE, BOB, MINER = make_keypair("alice"), make_keypair("bob"), make_keypair("large-block-miner")
TRANSFERS = 10_000
"""About 1.4 MB of transfers: more than one gossip frame."""


def start_node(root, name: str) -> FullNode:
    lines: list[str] = []
    node = FullNode(NodeConfig(datadir=root / name, params=PARAMS, rpc_port=0), log_fn=lines.append).start()
    node.lines = lines
    return node


@pytest.fixture(scope="module")
def large_block(tmp_path_factory):
    """(a real block of 1.4 MB on genesis, the node serving its blobs)."""
    root = tmp_path_factory.mktemp("large")
    source = start_node(root, "source")
    transfers = tuple(make_transfer(ALICE, BOB.public_key, 1, nonce) for nonce in range(TRANSFERS))
    block = mine_standing_block(source.chain.state(), PARAMS, MINER, source.blobs, source.get_blob_url(),
                                root / "miner", transactions=transfers, seconds=3.0)
    yield block, source
    source.stop()


def body_bytes(block: Block) -> bytes:
    return encode(block.body)


def announce(victim: FullNode, block: Block, serve_body) -> HostilePeer:
    """A peer that announces `block` by its header on the block topic and answers body requests with `serve_body`."""
    peer = HostilePeer(PARAMS).serve_body(serve_body).start()
    peer.connect(victim)
    topic = peer.join("block")
    peer.publish(topic, encode(HeaderAnnouncement(block.header)))
    return peer


def test_a_block_over_the_gossip_frame_is_announced_by_header_and_fetched(tmp_path, large_block):
    block, _source = large_block
    assert len(encode(block)) > 1 << 20
    victim = start_node(tmp_path, "victim")
    asked = []

    def serve(data: bytes) -> bytes:
        asked.append(decode(BodyRequest, data).block_hash)
        return body_bytes(block)

    peer = announce(victim, block, serve)
    try:
        wait_until(lambda: victim.chain.tip_hash == block.hash, 120, "the announced block to be fetched and connected")
        assert asked == [block.hash]
        assert victim.gossip.bodies_fetched == 1
        assert peer.score_at(victim) >= 0
    finally:
        peer.stop()
        victim.stop()


def test_a_peer_that_announces_and_does_not_serve_is_penalised(tmp_path, large_block):
    block, _source = large_block
    victim = start_node(tmp_path, "victim")

    async def stall(data: bytes) -> bytes:
        await trio.sleep(30)  # past the deadline (2 s + size at 256 KiB/s)
        return b""

    peer = announce(victim, block, stall)
    try:
        wait_until(lambda: peer.score_at(victim) <= -UNSERVED_BODY_PENALTY + 1, 30, "a penalty for the unserved body")
        assert victim.chain.get_invalid_reason(block.hash) is None
        assert victim.chain.get_index(block.hash) is None
    finally:
        peer.stop()
        victim.stop()


def test_a_swapped_body_costs_its_server_and_the_block_is_taken_from_an_honest_peer(tmp_path, large_block):
    block, _source = large_block
    victim = start_node(tmp_path, "victim")
    swapped = dataclasses.replace(block.body, transactions=block.body.transactions[:-1])
    honest = HostilePeer(PARAMS).serve_body(lambda data: body_bytes(block)).start()  # connected, never announces
    honest.connect(victim)
    liar = announce(victim, block, lambda data: encode(swapped))
    try:
        wait_until(lambda: liar.score_at(victim) <= -WRONG_BODY_PENALTY + 1, 30, "a penalty for the swapped body")
        wait_until(lambda: victim.chain.tip_hash == block.hash, 120, "the block from the honest peer")
        assert honest.score_at(victim) >= 0
    finally:
        liar.stop()
        honest.stop()
        victim.stop()


def test_an_announced_size_over_the_block_limit_is_rejected_without_a_fetch(tmp_path, large_block):
    block, _source = large_block
    victim = start_node(tmp_path, "victim")
    header = dataclasses.replace(block.header, size=PARAMS.max_block_size + 1).signed_by(MINER)
    asked = []
    peer = announce(victim, Block(header, block.body), lambda data: asked.append(data) or b"")
    try:
        wait_until(lambda: peer.score_at(victim) < 0, 30, "a penalty for the oversized announcement")
        time.sleep(1)
        assert asked == []
    finally:
        peer.stop()
        victim.stop()
