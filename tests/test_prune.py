"""Pruning on real nodes: losers' blobs go after their slot, the winner's checkpoints once final, the model stays.

The blocks are real (tests/realblocks.py: the standing task trained, scored,
committed and signed) and sit in a miner's blob store behind its HTTP blob
server, so the nodes fetch and verify them as they would any block. Two
miners claim height 1 in the same slot; one wins. The pruning job runs by
itself after every slot (6 s slots here).
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from blobnodes import MinerBlobs, mine, start_node, wait_connected, wait_until
from chainutil import unchecked_work
from consensus.chainstate import BlockStatus, ChainState
from consensus.fixtures import make_keypair, make_test_params
from consensus.work import get_blob_digests
from fullnode.config import parse_conf
from fullnode.prune import compute_dir_bytes, get_work_digests
from pouw.cli import main
from pouw.blobstore import BlobStore
from pouw.cli.node import start
from pouw.rpc import RpcClient


PARAMS = make_test_params("alice", phase1_seconds=4, phase2_seconds=2)
SLOT_SECONDS = PARAMS.phase1_seconds + PARAMS.phase2_seconds
R = PARAMS.finality_depth
FIRST, SECOND = make_keypair("prune-first"), make_keypair("prune-second")


class Mined:
    """Two claims for height 1 in one slot and R blocks on the winner, their blobs in one miner store."""

    def __init__(self, root):
        self.root = root
        self.server = MinerBlobs(root)  # started to learn its URL (the blocks link to it); tests restart it
        self.store = self.server.store
        link = self.server.url
        chain = ChainState.open(root / "judge", PARAMS)  # fork choice decides which claim wins
        try:
            genesis = chain.state()
            claims = [mine(genesis, PARAMS, k, self.server.store, link, root / k.address[:8]) for k in (FIRST, SECOND)]
            for claim in claims:
                assert chain.process_new_block(claim, time.time(), unchecked_work).is_valid
            self.winner = next(c for c in claims if c.hash == chain.get_hash_at(1))
            self.loser = next(c for c in claims if c is not self.winner)
            self.rest = []
            for _ in range(R):
                block = mine(chain.state(), PARAMS, FIRST, self.server.store, link, root / "rest")
                assert chain.process_new_block(block, time.time(), unchecked_work).status is BlockStatus.CONNECTED
                self.rest.append(block)
        finally:
            chain.close()
            self.server.close()

    def serve(self) -> MinerBlobs:
        """The miner's blob server again, on the port the blocks name."""
        return MinerBlobs(self.root, port=self.server.port)


@pytest.mark.parametrize("text, prune", [("prune = 0", False), ("prune = off", False), ("prune = yes", True)])
def test_prune_is_a_conf_key_and_keep_all_its_negation(tmp_path, text, prune):
    assert parse_conf(text, "pouw.conf", tmp_path) == {"prune": prune}
    option = next(p for p in start.params if p.name == "prune")
    assert option.opts == ["--prune"] and option.secondary_opts == ["--keep-all"] and option.default is True


def test_blobstore_delete_frees_the_bytes_and_says_how_many(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b"x" * 12_345)
    assert compute_dir_bytes(tmp_path / "blobs") == 12_345
    assert store.delete(digest) == 12_345
    assert not store.has(digest) and compute_dir_bytes(tmp_path / "blobs") == 0
    assert store.delete(digest) is None  # gone already: nothing to free


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    return Mined(tmp_path_factory.mktemp("mined"))


def checkpoints(block, store) -> list[bytes]:
    """A block's checkpoint headers and every part they name (the miner's `store` holds them all)."""
    return [d for d in get_work_digests(block, store)[1:] if d != block.body.work.model_digest]


def fetched(block, store) -> list[bytes]:
    """What a verifier fetches for `block`: its model and the checkpoints (headers and parts) of its plan."""
    return get_blob_digests(None, block.header.task_mode, block, PARAMS, store)


def held(node, digests) -> list[bool]:
    return [node.blobs.has(d) for d in digests]


def client(node) -> RpcClient:
    return RpcClient(node.rpc.url, datadir=node.datadir, timeout=30)


@pytest.mark.slow
def test_losers_go_after_their_slot_the_winner_after_the_window_and_a_peer_syncs_within_it(tmp_path, mined):
    miner = mined.serve()
    pruned = start_node(tmp_path, "pruned", PARAMS, keep_blocks=R)  # verification blobs go at finality too
    syncing = start_node(tmp_path, "syncing", PARAMS)
    try:
        now = time.time()
        for block in (mined.winner, mined.loser):
            assert pruned.core.process_block(block, now).is_valid
        assert pruned.chain.get_hash_at(1) == mined.winner.hash
        assert syncing.core.process_block(mined.winner, now).status is BlockStatus.CONNECTED
        # Both claims were fetched and verified (the loser's slot is long over: a pass may prune it at any moment).
        assert pruned.work_checker.verified == 2

        # After the slot: the loser's model and checkpoints go; the winner (within the window) keeps everything.
        wait_until(lambda: not any(held(pruned, get_work_digests(mined.loser, mined.store))), 3 * SLOT_SECONDS, "the loser pruned")
        assert all(held(pruned, fetched(mined.winner, mined.store)))

        for block in mined.rest:
            assert pruned.core.process_block(block, time.time()).status is BlockStatus.CONNECTED
        # Height 1 is final now (R blocks on it): its checkpoints go, its model stays; the window keeps everything.
        wait_until(lambda: not any(held(pruned, checkpoints(mined.winner, mined.store))), 3 * SLOT_SECONDS, "the winner's checkpoints pruned")
        assert pruned.blobs.has(mined.winner.body.work.model_digest)
        for block in mined.rest:
            assert all(held(pruned, fetched(block, mined.store)))
        assert "pruned" in " ".join(pruned.lines)

        # The miner goes away: a peer one block behind syncs the window from the pruned node alone.
        miner.close()
        syncing.p2p_thread.call(syncing.p2p.connect, pruned.p2p_addrs()[0])
        wait_connected(syncing, pruned)
        wait_until(lambda: syncing.chain.tip_hash == pruned.chain.tip_hash, 90, "the peer to sync from the pruned node")

        info = client(pruned).call("getinfo")
        assert info["pruning"] is True
        assert info["disk"]["blobs"] == compute_dir_bytes(pruned.datadir / "blobs") > 0
        assert info["disk"]["chain"] > 0
        res = CliRunner().invoke(main, ["chain", "info", "--node", pruned.rpc.url, "--datadir", str(pruned.datadir)])
        assert res.exit_code == 0, res.output
        assert "disk     chain " in res.output and "(pruning)" in res.output
    finally:
        miner.close()
        syncing.stop()
        pruned.stop()


@pytest.mark.slow
def test_keep_all_keeps_every_blob_and_a_pruning_restart_finds_the_old_losers(tmp_path, mined):
    miner = mined.serve()
    node = start_node(tmp_path, "archive", PARAMS, prune=False)
    everything = [d for b in (mined.winner, mined.loser, *mined.rest) for d in fetched(b, mined.store)]
    try:
        now = time.time()
        for block in (mined.winner, mined.loser, *mined.rest):
            assert node.core.process_block(block, now).is_valid
        assert all(held(node, everything))
        slot_passed = time.time() + SLOT_SECONDS + 1
        wait_until(lambda: time.time() > slot_passed, 2 * SLOT_SECONDS, "a slot to pass")
        assert all(held(node, everything))
        assert node.pruner is None and not (node.datadir / "prune.json").exists()
        info = client(node).call("getinfo")
        assert info["pruning"] is False and info["disk"]["blobs"] > 0
    finally:
        node.stop()
        miner.close()

    # The same data directory, now pruning: the first pass finds the side block stored before the restart.
    node = start_node(tmp_path, "archive", PARAMS, keep_blocks=R)
    try:
        wait_until(lambda: not any(held(node, get_work_digests(mined.loser, mined.store))), 3 * SLOT_SECONDS, "the old loser pruned")
        wait_until(lambda: not any(held(node, checkpoints(mined.winner, mined.store))), 3 * SLOT_SECONDS, "the final winner pruned")
        assert node.blobs.has(mined.winner.body.work.model_digest)
        for block in mined.rest:
            assert all(held(node, fetched(block, mined.store)))
        marker = json.loads((node.datadir / "prune.json").read_text())
        assert marker["pruned_through"] == 1 and marker["block_hash"] == mined.winner.hash.hex()
    finally:
        node.stop()


@pytest.mark.slow
def test_by_default_a_final_winner_keeps_what_a_syncing_peer_needs_to_verify_it(tmp_path, mined):
    """The sync of a new node verifies recent blocks: a pruning node keeps their model, planned checkpoints and data."""
    miner = mined.serve()
    node = start_node(tmp_path, "default", PARAMS)
    try:
        now = time.time()
        for block in (mined.winner, mined.loser, *mined.rest):
            assert node.core.process_block(block, now).is_valid
        wait_until(lambda: not any(held(node, get_work_digests(mined.loser, mined.store))), 3 * SLOT_SECONDS, "the loser pruned")
        assert node.chain.tip_height - 1 >= R  # height 1 is final
        for block in (mined.winner, *mined.rest):
            assert all(held(node, fetched(block, mined.store)))
    finally:
        node.stop()
        miner.close()
