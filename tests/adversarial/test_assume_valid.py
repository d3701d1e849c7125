"""Assume-valid never lets a node skip checking a block near the tip, so honest nodes cannot split over one.

The attack (on the old rules): nodes run with `--verify high` accepted, unchecked,
a block whose garbage model claimed Dice just under the high-accuracy threshold,
while `--verify all` nodes rejected it: the network split. Now every block's
work is verified except ancestors of the operator's assume-valid block buried
deeper than the finality window; even naming the garbage block itself as
assume-valid does not exempt it while it is near the tip.
"""

from __future__ import annotations

import os
import time

import pytest

from consensus.assemble import assemble_block, make_commit
from consensus.chainstate import BlockStatus
from consensus.clock import get_phase2_start
from consensus.fixtures import make_keypair, make_next_block
from consensus.genesis import make_devnet_params
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from fullnode.sync import compute_assumed_valid
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobStore
from pouw.types import CheckpointRef, WorkProof

MINER = make_keypair("garbage-miner")


def test_only_ancestors_buried_deeper_than_the_window_are_assumed():
    params = make_devnet_params(0)
    from chainutil import MemoryChain

    chain = MemoryChain(params)
    headers = []
    for _ in range(8):
        block = make_next_block(chain.state(), params, MINER)
        chain.apply(block)
        headers.append(block.header)
    R = params.finality_depth
    tip = headers[-1].height
    assumed = compute_assumed_valid(headers, headers[5].hash, tip, R)
    assert assumed == {h.hash for h in headers[:6] if h.height + R < tip}
    assert headers[5].hash not in assumed  # height 6 is within R of the tip (8): always verified
    assert compute_assumed_valid(headers, b"\x01" * 32, tip, R) == set()


@pytest.mark.slow
def test_a_garbage_model_near_the_tip_is_rejected_by_every_node_whatever_its_assume_valid(tmp_path):
    params = make_devnet_params(int(time.time()) - 100)
    store = BlobStore(tmp_path / "garbage-blobs")
    server = BlobServer(store).start()
    model, first, second = os.urandom(4096), os.urandom(4096), os.urandom(4096)
    model_digest = store.put_bytes(model)
    refs = (CheckpointRef(store.put_bytes(first), len(first), 4096, 0), CheckpointRef(store.put_bytes(second), len(second), 4096, 10))
    nodes = []
    try:
        from chainutil import MemoryChain

        state = MemoryChain(params).state()
        commit = make_commit(MINER, 1, 0, params.standing_task.task_id, model_digest, refs)
        work = WorkProof(model_digest, len(model), refs, (server.url,), params.high_accuracy_ppm - 1)
        garbage = assemble_block(state, params, MINER, slot=0, timestamp=get_phase2_start(params, 0) + 1,
                                 commit=commit, work=work)
        for name, assume_valid in (("strict", None), ("assuming", garbage.hash)):
            config = NodeConfig(datadir=tmp_path / name, params=params, rpc_port=0, assume_valid=assume_valid)
            nodes.append(FullNode(config, log_fn=lambda m: None).start())
        results = [node.take_block(garbage, None) for node in nodes]
        for result in results:
            assert result.status is BlockStatus.INVALID and result.reason.startswith("work:"), result
        assert {node.chain.tip_hash for node in nodes} == {nodes[0].chain.get_hash_at(0)}
    finally:
        for node in nodes:
            node.stop()
        server.stop()
