"""Hostile sync peers: a peer pays for what it makes a node spend.

The attacks (on the old sync): a peer's claimed chain score was never
checked against what it then served, so a peer could claim a better chain
every 3 s and serve nothing, or serve blocks the node already held, at no
cost; an undecodable answer, an answer over the protocol's limit, blocks
that do not form a chain or do not attach to the node's locator cost the
peer nothing either; and a block whose body was swapped under an honest
header got the honest block's hash remembered as invalid, so the node later
refused the honest block (and banned the honest peer that sent it).

Each hostile peer here is a real libp2p host answering the real protocols
(tests/hostile_peers.py); the node under attack is a real FullNode.
"""

from __future__ import annotations

import dataclasses
import struct
import time

import pytest

from chainutil import MemoryChain, unchecked_work
from consensus.chainstate import Candidate
from consensus.fixtures import make_keypair, make_next_block, make_test_params, make_transfer
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from fullnode.sync import UNBACKED_STATUS_PENALTY
from hostile_peers import HostilePeer, MiB, RpcWatch, blocks_answer, make_lying_status, wait_until
from pouw.types import Block

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice", "bob")
ALICE, BOB = make_keypair("alice"), make_keypair("bob")
MINER, OTHER = make_keypair("sync-miner"), make_keypair("other-miner")


def build_history(count: int, miner=MINER, salt: bytes = b"") -> list[Block]:
    chain = MemoryChain(PARAMS)
    blocks = []
    for _ in range(count):
        blocks.append(make_next_block(chain.state(), PARAMS, miner, salt=salt))
        chain.apply(blocks[-1])
    return blocks


HISTORY = build_history(4)


def start_victim(tmp_path, history=HISTORY) -> FullNode:
    lines: list[str] = []
    node = FullNode(NodeConfig(datadir=tmp_path / "victim", params=PARAMS, rpc_port=0), log_fn=lines.append).start()
    node.lines = lines
    for block in history:  # the node's own history (mined long ago): stored without recomputing its made-up work
        assert node.chain.process_new_block(block, time.time(), unchecked_work).is_valid
    return node


def attack(victim: FullNode, answer) -> HostilePeer:
    """A peer claiming a far better chain whose blocks answer is `answer(request)`, connected to the victim."""
    peer = HostilePeer(PARAMS).serve_status(make_lying_status(PARAMS, victim)).serve_blocks(answer).start()
    peer.connect(victim)
    return peer


def test_a_peer_that_claims_a_better_chain_and_serves_nothing_is_penalised_until_banned(tmp_path):
    victim = start_victim(tmp_path)
    peer = attack(victim, lambda request: blocks_answer([]))
    try:
        wait_until(lambda: peer.score_at(victim) <= -UNBACKED_STATUS_PENALTY + 1, 20, "a penalty for the empty answer")
        assert any("claimed a better chain" in line for line in victim.lines)
        wait_until(lambda: peer.is_banned_by(victim), 60, "the ban of a peer that keeps claiming what it never serves")
        assert victim.chain.tip_hash == HISTORY[-1].hash
    finally:
        peer.stop()
        victim.stop()


def test_a_peer_that_serves_only_known_blocks_for_its_better_chain_is_penalised(tmp_path):
    victim = start_victim(tmp_path)
    peer = attack(victim, lambda request: blocks_answer(HISTORY[:3]))  # valid, but they do not reach the claimed score
    try:
        wait_until(lambda: peer.score_at(victim) <= -UNBACKED_STATUS_PENALTY + 1, 20, "a penalty for blocks short of the claim")
        wait_until(lambda: peer.is_banned_by(victim), 60, "the ban of a peer that keeps claiming more than it serves")
        assert victim.chain.tip_hash == HISTORY[-1].hash
    finally:
        peer.stop()
        victim.stop()


def junk_arrays(size: int) -> bytes:
    """A blocks answer of `size` bytes of empty arrays where a list of byte strings is expected."""
    return b"\x91\xdd" + struct.pack(">I", size) + b"\x90" * size


def swapped_body(block: Block) -> Block:
    """The honest `block`'s header over another body (one transfer more): what a peer that mangles blocks sends."""
    body = dataclasses.replace(block.body, transactions=(make_transfer(ALICE, BOB.public_key, 1, 0),))
    return Block(block.header, body)


def next_block() -> Block:
    """A block the victim does not hold, on its tip, that passes every rule needing no blob."""
    chain = MemoryChain(PARAMS)
    for block in HISTORY:
        chain.apply(block)
    return make_next_block(chain.state(), PARAMS, MINER, salt=b"next")


def invalid_next_block() -> Block:
    """A child of the victim's tip whose unselected-task root is wrong (header re-signed: only the rule is broken)."""
    block = next_block()
    header = dataclasses.replace(block.header, unselected_root=bytes(32)).signed_by(MINER)
    return Block(header, block.body)


BAD_ANSWERS = {
    "undecodable answer (20 MiB of empty arrays)": lambda: junk_arrays(20 * MiB),
    "answer over the 24 MiB limit": lambda: b"\x00" * (30 * MiB),
    "a block item over the block size limit": lambda: b"\x91\x91\xc6" + struct.pack(">I", 5 * MiB) + b"\x00" * (5 * MiB),
    "blocks that do not form a chain": lambda: blocks_answer([HISTORY[0], HISTORY[2]]),
    "a block that does not attach to the locator": lambda: blocks_answer(build_history(2, OTHER, b"other")[1:]),
    "an honest header over a swapped body": lambda: blocks_answer([swapped_body(next_block())]),
    "an invalid block": lambda: blocks_answer([invalid_next_block()]),
}


@pytest.mark.parametrize("what", list(BAD_ANSWERS))
def test_a_bad_sync_answer_bans_the_peer_at_once_and_stores_nothing(tmp_path, what):
    victim = start_victim(tmp_path)
    answer = BAD_ANSWERS[what]()
    peer = attack(victim, lambda request: answer)
    try:
        with RpcWatch(victim) as watch:
            wait_until(lambda: peer.is_banned_by(victim), 30, f"the ban of a peer that sent {what}")
        # banned at its first bad answer (the next batch may have been asked for while that one was judged)
        assert peer.asked.get("/pouw/req/blocks/1") in (1, 2), peer.asked
        assert not watch.failures and watch.slowest < 1.0, (watch.slowest, watch.failures)
        assert victim.chain.tip_hash == HISTORY[-1].hash
    finally:
        peer.stop()
        victim.stop()


def test_a_swapped_body_does_not_get_the_honest_block_refused_later(tmp_path):
    victim = start_victim(tmp_path)
    honest = next_block()
    peer = attack(victim, lambda request: blocks_answer([swapped_body(honest)]))
    try:
        wait_until(lambda: peer.is_banned_by(victim), 30, "the ban of the peer that swapped the body")
        assert victim.chain.get_invalid_reason(honest.hash) is None, "the honest block was remembered as invalid"
        assert isinstance(victim.chain.check_new_block(honest, time.time()), Candidate)
    finally:
        peer.stop()
        victim.stop()
