"""False claims cost their authors, and a flood of them cannot make a node verify without end.

The attacks (on the old rules): claims were free and verified one after the
other with no deadline, so 1,000 spam claims cost every node about 122 GB of
downloads and 27 CPU-minutes per slot, and a lying miner lost nothing. Now a
node judges at most MAX_CLAIMS_VERIFIED_PER_SLOT claims a slot (bonded
claimants first), and a claim that ranked above the block that won its
height is shown in a later block: its claimant's bond is forfeited.
"""

from __future__ import annotations

import dataclasses

import pytest

from consensus.chainstate import BlockStatus, ChainState
from consensus.clock import get_phase2_start, get_slot_start
from consensus.fixtures import make_keypair, make_next_block, make_test_params
from consensus.rules import compute_claim_bond
from fullnode.core import MAX_CLAIMS_VERIFIED_PER_SLOT, NodeCore
from fullnode.fetch import BlobFetcher
from fullnode.verification import WorkChecker
from mempool.claimpool import MAX_UNBONDED_CLAIMS, UNBONDED_REPLACEMENT_STEP_PPM
from pouw.blobstore import BlobStore
from pouw.types import Block, Bond, Claim

from test_multinode import HONEST, LIAR, LyingLink, MinerThread, client, make_params, start_node, wait_until

FLOODERS = [make_keypair(f"flooder-{i}") for i in range(MAX_CLAIMS_VERIFIED_PER_SLOT + 8)]


@pytest.mark.parametrize("parallelism", [1, 5])
def test_a_flood_of_claims_is_judged_at_most_the_budget_per_slot(tmp_path, parallelism):
    params = make_test_params(*[f"flooder-{i}" for i in range(len(FLOODERS))])
    blobs = BlobStore(tmp_path / "blobs")
    with ChainState.open(tmp_path / "chain", params) as chain:
        checker = WorkChecker(params, blobs, BlobFetcher(blobs), tmp_path / "work")
        core = NodeCore(params, chain, checker, verify_parallelism=parallelism)
        state = chain.state()
        phase1, phase2 = get_slot_start(params, 0) + 1, get_phase2_start(params, 0) + 2
        for i, key in enumerate(FLOODERS):
            block = make_next_block(state, params, key, dice_ppm=999_000 - i, salt=bytes([i]))
            assert core.submit_commit(block.body.commit, phase1).accepted
            assert core.submit_claim(Claim(block), phase2).accepted
        assert core.verify_claims(phase2, lambda: phase2) is None
        judged = {c.block.hash for c in core.claims.ranked(include_rejected=True)} - {c.block.hash for c in core.claims.ranked()}
        assert len(judged) == MAX_CLAIMS_VERIFIED_PER_SLOT
        assert len(core.claims.ranked()) == len(FLOODERS) - MAX_CLAIMS_VERIFIED_PER_SLOT
        # The best-ranked (highest claimed Dice) were judged first.
        assert all(core.claims.get_rejection(make_next_block(state, params, key, dice_ppm=999_000 - i, salt=bytes([i])).hash)
                   for i, key in enumerate(FLOODERS[:MAX_CLAIMS_VERIFIED_PER_SLOT]))
        # None is started in the last seconds of the slot, whatever is left.
        late = get_slot_start(params, 1) - 1
        assert core.verify_claims(late, lambda: late) is None
        assert len(core.claims.ranked()) == len(FLOODERS) - MAX_CLAIMS_VERIFIED_PER_SLOT


def test_a_flood_of_unbonded_claims_costs_a_bounded_number_of_checks(tmp_path):
    """Keys are free: an attacker claims from fresh keys, each 1 ppm above the last (so each outranks all before).

    On the old rules every one of them was admitted, each costing a signature
    check and the block's cheap rules. Now at most MAX_UNBONDED_CLAIMS are
    pooled a height and slot; past that a claim must beat the lowest by
    UNBONDED_REPLACEMENT_STEP_PPM, checked before its signature (a broken
    signature beyond the cap is refused as pool-full, never even checked).
    A bonded claim is admitted whatever the unbonded flood.
    """
    bonded_miner = make_keypair("claims-bonded")
    params = make_test_params("claims-bonded")
    blobs = BlobStore(tmp_path / "blobs")
    with ChainState.open(tmp_path / "chain", params) as chain:
        checker = WorkChecker(params, blobs, BlobFetcher(blobs), tmp_path / "work")
        core = NodeCore(params, chain, checker)
        # Block 1 locks the bonded miner's bond (its work is not this test's subject: taken as checked).
        probe = make_next_block(chain.state(), params, bonded_miner)
        bond = Bond(bonded_miner.public_key, 4 * compute_claim_bond(params, probe.body.work), 1000, 0).signed_by(bonded_miner)
        block1 = make_next_block(chain.state(), params, bonded_miner, transactions=(bond,))
        assert chain.process_new_block(block1, get_phase2_start(params, 0) + 1, lambda candidate: None).status \
            is BlockStatus.CONNECTED
        state = chain.state()
        phase1, phase2 = get_slot_start(params, 1) + 1, get_phase2_start(params, 1) + 2

        def submit(key, dice: int, *, break_signature: bool = False):
            block = make_next_block(state, params, key, dice_ppm=dice, salt=key.public_key[:4])
            assert core.submit_commit(block.body.commit, phase1).accepted
            if break_signature:
                block = Block(dataclasses.replace(block.header, signature=bytes(64)), block.body)
            return block, core.submit_claim(Claim(block), phase2)

        flood = [make_keypair(f"unbonded-{i}") for i in range(MAX_UNBONDED_CLAIMS + 40)]
        verdicts = [submit(key, 500_000 + i, break_signature=i >= MAX_UNBONDED_CLAIMS + 20)[1]
                    for i, key in enumerate(flood)]
        assert sum(v.accepted for v in verdicts) == MAX_UNBONDED_CLAIMS
        assert {v.code for v in verdicts[MAX_UNBONDED_CLAIMS:]} == {"pool-full"}  # the broken signatures too
        assert not any(v.misbehaving for v in verdicts)  # an honest relay may forward a claim that no longer fits

        # A claim that beats the lowest by the step takes its place; the pool stays at the cap.
        lowest = core.claims.get_unbonded(block1.header.height + 1, 1)[0]
        block, verdict = submit(make_keypair("unbonded-better"), lowest.dice_ppm + UNBONDED_REPLACEMENT_STEP_PPM)
        assert verdict.accepted and block.hash in core.claims and lowest.block_hash not in core.claims
        assert len(core.claims.get_unbonded(block1.header.height + 1, 1)) == MAX_UNBONDED_CLAIMS

        # A bonded miner is not held back by the flood, even claiming less than all of it.
        block, verdict = submit(bonded_miner, 400_000)
        assert verdict.accepted, verdict


@pytest.mark.slow
def test_a_lying_miner_loses_its_bond_the_honest_one_keeps_its_own(tmp_path):
    params = make_params(phase1=12, phase2=8)
    node = start_node(tmp_path, "a", params)
    miners = []
    try:
        rpc = client(node)
        miners.append(MinerThread(node, HONEST, tmp_path / "honest").start())
        miners.append(MinerThread(node, LIAR, tmp_path / "liar", LyingLink, liar=LIAR, params=params).start())
        bond = 10 * 100_000_000

        def forfeited() -> bool:
            return rpc.call("getbalance", address=LIAR.address)["bonded"] < bond

        try:
            wait_until(lambda: rpc.call("getbalance", address=LIAR.address)["bonded"] == bond, 120, "the liar's bond on chain")
            wait_until(forfeited, 240, "the liar's bond to be forfeited")
        except AssertionError as exc:  # say what the node did meanwhile
            raise AssertionError(f"{exc}; tip height {node.chain.tip_height}; the node's last lines:\n"
                                 + "\n".join(node.lines[-40:])) from None
        liar = rpc.call("getbalance", address=LIAR.address)
        honest = rpc.call("getbalance", address=HONEST.address)
        assert honest["bonded"] == bond, "an honest miner loses nothing but what it staked, and it staked nothing here"
        assert "claimed Dice 999999 ppm, measured" in " ".join(node.lines)
        # The block that showed the lie carried its evidence and paid half the forfeit to its miner.
        tip = node.chain.tip_height
        shown = [node.chain.get_block_at(h) for h in range(1, tip + 1) if node.chain.get_block_at(h).body.evidence]
        assert shown and all(e.header.miner == LIAR.public_key for b in shown for e in b.body.evidence)
        lost = bond - liar["bonded"]
        assert lost == sum(compute_claim_bond(params, e.work) for b in shown for e in b.body.evidence)
        assert all(node.chain.get_block_at(h).header.miner == HONEST.public_key for h in range(1, tip + 1))
    finally:
        for m in miners:
            m.stop()
        node.stop()
