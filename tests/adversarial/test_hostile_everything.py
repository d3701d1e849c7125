"""Every hostile peer at once: the node keeps answering and ends on the honest tip.

A real node that holds an honest block is attacked, all at the same time, by
real libp2p peers: one claims a far better chain and answers the blocks
request with 30 MiB (over the 24 MiB limit), one with 20 MiB of junk arrays
(the old decoder unpacked it whole: +1.7 GB), one serves an invalid fork (a
better-looking branch from genesis whose first block breaks a rule), and one
floods the block topic with 50 junk side blocks. Meanwhile the honest node
mines the next block. The node must answer every `getinfo` within 1 s
(each call timed), ban every attacker, store and relay none of the junk,
never disconnect its own chain, and end on the honest tip.

The honest block 2 names only a slow-drip blob server as its link (one
byte every 0.2 s: each read succeeds, the whole never ends), so the victim
must give up on it within its fetch limits and take the blobs from a peer
over libp2p while everything else goes on.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from chainutil import MemoryChain
from consensus.fixtures import make_keypair, make_next_block, make_test_params
from consensus.chainstate import BlockStatus
from fullnode.config import NodeConfig
from fullnode.messages import FullBlock
from fullnode.node import FullNode
from hostile_peers import HostilePeer, MiB, RpcWatch, blocks_answer, make_lying_status, wait_until
from pouw.encoding import encode
from pouw.types import Block
from realblocks import mine_standing_block
from test_hostile_block_links import drip
from test_hostile_fetch import ScriptedServer

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice")
HONEST, JUNK, FORKER = (make_keypair(n) for n in ("everything-honest", "everything-junk", "everything-forker"))
JUNK_BLOCKS = 50


def start_node(root, name: str, bootstrap: list[str] = ()) -> FullNode:
    config = NodeConfig(datadir=root / name, params=PARAMS, rpc_port=0, bootstrap=list(bootstrap))
    return FullNode(config, log_fn=lambda line: None).start()


def break_rule(block: Block, miner) -> Block:
    """`block` with a wrong unselected-task root, re-signed: it breaks a rule and nothing else."""
    return Block(dataclasses.replace(block.header, unselected_root=bytes(32)).signed_by(miner), block.body)


def make_junk_side_blocks(count: int) -> list[Block]:
    """Siblings of the honest block 1 (children of genesis), each breaking a rule."""
    genesis = MemoryChain(PARAMS).state()
    return [break_rule(make_next_block(genesis, PARAMS, JUNK, salt=b"junk%d" % i), JUNK) for i in range(count)]


def make_invalid_fork(length: int) -> list[Block]:
    """A branch from genesis, parents first, linked by hash, whose first block breaks a rule."""
    chain = MemoryChain(PARAMS)
    blocks = []
    for _ in range(length):
        blocks.append(make_next_block(chain.state(), PARAMS, FORKER, salt=b"fork"))
        chain.apply(blocks[-1])
    fork = [break_rule(blocks[0], FORKER)]
    for block in blocks[1:]:
        header = dataclasses.replace(block.header, prev_hash=fork[-1].hash).signed_by(FORKER)
        fork.append(Block(header, block.body))
    return fork


def junk_arrays(size: int) -> bytes:
    return b"\x91\xdd" + struct.pack(">I", size) + b"\x90" * size


def lying_sync_peer(victim: FullNode, answer: bytes) -> HostilePeer:
    peer = HostilePeer(PARAMS).serve_status(make_lying_status(PARAMS, victim)).serve_blocks(lambda request: answer)
    return peer.start()


def test_a_node_under_every_attack_keeps_answering_and_ends_on_the_honest_tip(tmp_path):
    honest = start_node(tmp_path, "honest")
    peers: list[HostilePeer] = []
    victim = None
    try:
        block1 = mine_standing_block(honest.chain.state(), PARAMS, HONEST, honest.blobs, honest.get_blob_url(),
                                     tmp_path / "miner1", seconds=2.0)
        assert honest.take_block(block1, None).status is BlockStatus.CONNECTED
        victim = start_node(tmp_path, "victim", honest.p2p_addrs())
        wait_until(lambda: victim.chain.tip_hash == block1.hash, 120, "the victim to sync the honest block")
        disconnected: list[Block] = []
        victim.chain.subscribe(lambda activation: disconnected.extend(activation.disconnected))

        junk, fork = make_junk_side_blocks(JUNK_BLOCKS), make_invalid_fork(3)
        attackers = [
            lying_sync_peer(victim, b"\x00" * (30 * MiB)),
            lying_sync_peer(victim, junk_arrays(20 * MiB)),
            lying_sync_peer(victim, blocks_answer(fork)),
        ]
        flooder, observer = HostilePeer(PARAMS).start(), HostilePeer(PARAMS).start()
        peers += attackers + [flooder, observer]
        for peer in (observer, flooder):
            peer.connect(victim)
        observer.join("block")
        topic = flooder.join("block")

        dripping = ScriptedServer(drip)
        peers.append(dripping)
        with RpcWatch(victim, interval=0.05) as watch:
            for peer in attackers:
                peer.connect(victim)
            for block in junk:
                flooder.publish(topic, encode(FullBlock(block)))
            block2 = mine_standing_block(honest.chain.state(), PARAMS, HONEST, honest.blobs, dripping.url(""),
                                         tmp_path / "miner2", seconds=2.0)
            assert honest.take_block(block2, None).status is BlockStatus.CONNECTED  # announced to the victim
            wait_until(lambda: victim.chain.tip_hash == block2.hash, 120, "the victim on the honest tip")
            wait_until(lambda: all(p.is_banned_by(victim) for p in attackers + [flooder]), 60, "every attacker banned")

        print(f"getinfo: {watch.calls} calls, slowest {watch.slowest * 1000:.0f} ms")
        assert not watch.failures, watch.failures[:3]
        assert watch.calls > 20 and watch.slowest < 1.0, f"slowest getinfo {watch.slowest:.2f} s over {watch.calls} calls"
        assert disconnected == [], "an invalid fork made the node disconnect its own chain"
        assert all(victim.chain.get_index(b.hash) is None for b in junk + fork), "junk was stored"
        # However the victim took block 2 (its gossip or a sync from the honest node), it announces it.
        wait_until(lambda: encode(FullBlock(block2)) in observer.heard.get("block", []), 30, "the honest block relayed")
        relayed = set(observer.heard.get("block", []))
        assert not relayed & {encode(FullBlock(b)) for b in junk}, "junk was relayed"
        assert victim.chain.tip_hash == block2.hash
        assert dripping.requests, "the victim never tried the dripping link"
    finally:
        for peer in peers:
            peer.close() if isinstance(peer, ScriptedServer) else peer.stop()
        if victim is not None:
            victim.stop()
        honest.stop()
