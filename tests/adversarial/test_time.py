"""Blocks from the future: refused by a real node, never connected, and their sender penalised.

The attack (on the old rules): nothing compared a block's slot with the local
clock, so blocks for slots that had not begun were connected, and one block at
slot +1,000,000 made the next block impossible for 347 days (a child's slot
must exceed its parent's).
"""

from __future__ import annotations

import os
import time

import pytest

from consensus.fixtures import make_keypair, make_next_block
from consensus.genesis import make_devnet_params
from fullnode.config import NodeConfig
from fullnode.messages import FullBlock, get_topic
from fullnode.node import FullNode
from pouw.encoding import encode
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread

pytestmark = pytest.mark.slow

MINER = make_keypair("time-traveller")


def test_a_far_future_block_is_refused_and_its_sender_penalised(tmp_path):
    params = make_devnet_params(int(time.time()) - 100)
    lines: list[str] = []
    node = FullNode(NodeConfig(datadir=tmp_path / "node", params=params, rpc_port=0), log_fn=lines.append).start()
    peer = P2PNode(os.urandom(32))
    thread = P2PThread(peer).start()
    try:
        future = make_next_block(node.chain.state(), params, MINER, slot=1_000_000)
        near_future = make_next_block(node.chain.state(), params, MINER, slot=10, salt=b"near")
        assert near_future.header.timestamp > time.time() + params.clock_skew_seconds
        topic = get_topic(params.chain_id, "block")
        thread.call(peer.subscribe, topic, None, None)
        thread.call(peer.connect, node.p2p_addrs()[0])
        thread.call(peer.wait_for_topic_peers, topic, 1, 20.0)
        me = peer.peer_id
        before = node.p2p_thread.call_sync(node.p2p.score, me)
        for block in (future, near_future):
            thread.call(peer.publish, topic, encode(FullBlock(block)))
        deadline = time.time() + 20
        while sum("refused block" in line for line in lines) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert sum("from the future" in line for line in lines) == 2, lines
        assert node.chain.tip_height == 0 and node.chain.get_index(future.hash) is None
        assert node.p2p_thread.call_sync(node.p2p.score, me) < before
        # The honest next block (slot 0, long past) is still possible.
        honest = make_next_block(node.chain.state(), params, MINER, salt=b"honest")
        assert node.core.chain.check_new_block(honest, time.time()).block.hash == honest.hash
    finally:
        thread.stop()
        node.stop()
