"""A node announces a new tip however it took it, so no peer depends on gossip reaching it first.

A block's own gossip is never relayed as it arrives (its work is checked
first); the node announces it once it connected it. A block that came by
sync before (or instead of) its gossip must be announced too, or a peer that
hears only this node learns of it only from its own next sync, and a slow
one never. Real nodes and a real libp2p observer on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from consensus.chainstate import BlockStatus
from consensus.fixtures import make_keypair, make_test_params
from fullnode.messages import FullBlock
from hostile_peers import HostilePeer, wait_until
from pouw.encoding import encode
from realblocks import mine_standing_block
from test_multinode import start_node

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice")
MINER = make_keypair("announce-miner")


def test_a_block_taken_by_sync_is_announced_to_the_other_peers(tmp_path):
    source = start_node(tmp_path, "source", PARAMS)
    observer = HostilePeer(PARAMS).start()
    node = None
    try:
        block = mine_standing_block(source.chain.state(), PARAMS, MINER, source.blobs, source.get_blob_url(),
                                    tmp_path / "miner", seconds=2.0)
        assert source.take_block(block, None).status is BlockStatus.CONNECTED  # gossiped to nobody: no peers yet
        node = start_node(tmp_path, "node", PARAMS)
        observer.connect(node)
        observer.join("block")
        node.p2p_thread.call(node.p2p.connect, source.p2p_addrs()[0])  # the block can only come by sync now
        wait_until(lambda: node.chain.tip_hash == block.hash, 120, "the node to sync the block")
        wait_until(lambda: encode(FullBlock(block)) in observer.heard["block"], 30, "the node to announce its new tip")
    finally:
        observer.stop()
        if node is not None:
            node.stop()
        source.stop()
