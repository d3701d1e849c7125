"""Attack: a false claim names someone else's blobs as its own model and checkpoints, so pruning deletes them.

Pruning deletes a failed claim's model and checkpoints after its slot. A
claim's digests are its author's choice: naming the winning model of an old
block (which publishers fetch with `pouw task results`) or a waiting task's
encrypted data would make every pruning node delete blobs it must keep, for
the price of a claim nobody verifies past the first check. A blob is deleted
only when no rule keeps it: winning models and the data of tasks not yet
final are kept whoever else names them. The false claim's own blobs still go.
"""

from __future__ import annotations

import os
import time

import pytest

from blobnodes import MinerBlobs, forge_claim, mine, start_node, wait_until
from consensus.chainstate import BlockStatus
from consensus.fixtures import make_keypair, make_test_params
from pouw.types import CheckpointRef
from test_node_fetch import publish_task

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice", phase1_seconds=4, phase2_seconds=2)
SLOT_SECONDS = PARAMS.phase1_seconds + PARAMS.phase2_seconds
HONEST, ATTACKER = make_keypair("prune-honest"), make_keypair("prune-attacker")


def test_a_false_claim_cannot_make_a_node_prune_the_winning_model_or_a_waiting_tasks_data(tmp_path):
    miner = MinerBlobs(tmp_path / "miner")
    node = start_node(tmp_path, "node", PARAMS, keep_blocks=PARAMS.finality_depth)  # final blocks pruned at once
    try:
        blocks = []
        for _ in range(PARAMS.finality_depth + 1):
            blocks.append(mine(node.chain.state(), PARAMS, HONEST, miner.store, miner.url, tmp_path / "honest"))
            assert node.core.process_block(blocks[-1], time.time()).status is BlockStatus.CONNECTED
        first = blocks[0].body.work
        wait_until(lambda: not node.blobs.has(first.checkpoints[0].digest), 3 * SLOT_SECONDS, "block 1 to be final and pruned")
        assert node.blobs.has(first.model_digest)

        task = publish_task(tmp_path, miner)  # a publisher's task waiting in the mempool, its data on the node
        assert node.core.submit_transaction(task, time.time()).accepted
        for ref in (task.train_blob, task.test_blob):
            node.blobs.put_file(miner.store.path(ref.digest))
        junk = [os.urandom(5000), os.urandom(5000)]
        junk_digests = [miner.store.put_bytes(j) for j in junk]

        def trajectory(*digest_sizes):  # the initial checkpoint and one trained segment
            return tuple(CheckpointRef(d, n, n, i * 1_000_000) for i, (d, n) in enumerate(digest_sizes))

        state = node.chain.state()
        model, train, test = (first.model_digest, first.model_size), task.train_blob, task.test_blob
        claims = {
            "names the winning model of block 1": forge_claim(
                state, PARAMS, ATTACKER, model, trajectory(model, model), miner.url),
            "names the waiting task's data": forge_claim(
                state, PARAMS, ATTACKER, (train.digest, train.size), trajectory((test.digest, test.size),
                                                                                 (train.digest, train.size)), miner.url),
            "brings its own junk": forge_claim(
                state, PARAMS, ATTACKER, (junk_digests[1], len(junk[1])),
                trajectory((junk_digests[0], len(junk[0])), (junk_digests[1], len(junk[1]))), miner.url),
        }
        fetched = node.fetcher.fetched_bytes
        for what, claim in claims.items():
            result = node.core.process_block(claim, time.time())
            assert result.status is BlockStatus.INVALID, f"the claim that {what}: {result}"
        assert node.fetcher.fetched_bytes == fetched + 10_000  # only the junk had to be fetched

        # The next pass deals with the failed claims (their slot is over): only their own blob goes.
        hashes = {c.hash for c in claims.values()}
        wait_until(lambda: not hashes & {w.block.block_hash for w in node.fetcher.get_fetched_work()},
                   3 * SLOT_SECONDS, "a pruning pass over the failed claims")
        assert not any(node.blobs.has(d) for d in junk_digests)
        assert node.blobs.has(first.model_digest)
        assert node.blobs.has(task.train_blob.digest) and node.blobs.has(task.test_blob.digest)
    finally:
        node.stop()
        miner.close()
