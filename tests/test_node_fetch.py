"""How a full node gets blobs: it serves its store over libp2p, and prefetches scheduled tasks' data in Phase 1.

Real nodes on loopback, a publisher's real HTTP blob server and real
encrypted dataset blobs (pouw.taskpack); the chain's history is stored
without recomputing its made-up work, as a node's own old history would be
(tests/chainutil.py), since what is tested here is the data the next heights need.
"""

from __future__ import annotations

import os
import time

import pytest

from blobnodes import MinerBlobs, start_node, wait_until
from chainutil import unchecked_work
from consensus.fixtures import make_keypair, make_next_block, make_test_params
from consensus.genesis import COIN
from miner.prefetch import fetch_blob
from pouw.blobstore import BlobError, BlobStore
from pouw.p2p.blob import fetch_blob_from_peer
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread
from pouw.seg.data import write_synthetic_dataset_dir
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.taskpack import pack_dataset
from pouw.types import BlobRef, TaskSubmission


PARAMS = make_test_params("alice")
PUBLISHER, MINER = make_keypair("alice"), make_keypair("fetch-miner")


def test_the_miner_prefetch_holds_a_source_to_the_declared_size(tmp_path):
    server = MinerBlobs(tmp_path / "publisher")
    try:
        data = os.urandom(100_000)
        digest = server.store.put_bytes(data)
        link = (server.server.link(digest),)
        store = BlobStore(tmp_path / "miner")
        # Declared one byte short: refused on the announced length, before any byte is kept.
        with pytest.raises(BlobError, match="not the declared size"):
            fetch_blob(store, BlobRef(digest, len(data) - 1, bytes(32), link), None)
        assert not store.has(digest) and list(store.tmp_dir.iterdir()) == []
        # A bound only (`pouw task results` for checkpoints) lets a smaller blob through; the exact size too.
        fetch_blob(store, BlobRef(digest, len(data) + 1, bytes(32), link), None, exact_size=False)
        store.remove(digest)
        fetch_blob(store, BlobRef(digest, len(data), bytes(32), link), None)
        assert store.get_bytes(digest) == data
    finally:
        server.close()


@pytest.mark.slow
def test_a_node_serves_its_blob_store_over_libp2p(tmp_path):
    node = start_node(tmp_path, "node", PARAMS)
    data = os.urandom(3 * (1 << 20) + 17)
    digest = node.blobs.put_bytes(data)
    peer = P2PNode(os.urandom(32))
    thread = P2PThread(peer).start()
    try:
        thread.call(peer.connect, node.p2p_addrs()[0])
        store = BlobStore(tmp_path / "peer")

        async def fetch():
            return await fetch_blob_from_peer(peer, node.p2p.peer_id, digest, store, size=len(data))

        assert thread.call(fetch).read_bytes() == data
    finally:
        thread.stop()
        node.stop()


def publish_task(tmp_path, server: MinerBlobs) -> TaskSubmission:
    """A task with real encrypted blobs on the publisher's blob server."""
    spec = ModelSpec(architecture="unet2d", in_channels=1, num_classes=2, base_filters=8, patch_size=(32, 32))
    write_synthetic_dataset_dir(tmp_path / "dataset", b"prefetched-task", 16, 8, spec)
    packed = pack_dataset(tmp_path / "dataset", tmp_path / "packed", keystore_dir=tmp_path / "keys")
    refs = []
    for blob in (packed.train, packed.test):
        assert server.store.put_file(blob.path) == blob.digest
        refs.append(BlobRef(blob.digest, blob.size, blob.key_commitment, (server.server.link(blob.digest),)))
    return TaskSubmission(
        publisher=PUBLISHER.public_key, reward=60 * COIN, fee=10_000, nonce=0, model=spec,
        train=TrainSpec(learning_rate=0.01, batch_size=8, loss="dice", optimizer="adam", max_epochs=20),
        train_blob=refs[0], test_blob=refs[1], title="prefetched in Phase 1",
    ).signed_by(PUBLISHER)


@pytest.mark.slow
def test_a_scheduled_tasks_data_is_held_before_its_height_is_mined(tmp_path):
    publisher = MinerBlobs(tmp_path / "publisher")
    node = start_node(tmp_path, "node", PARAMS)
    try:
        task = publish_task(tmp_path, publisher)
        digests = (task.train_blob.digest, task.test_blob.digest)
        chain = node.chain
        assert chain.process_new_block(make_next_block(chain.state(), PARAMS, MINER, transactions=(task,)), time.time(),
                                       unchecked_work).is_valid
        # Until the task is scheduled, nothing of it is fetched.
        while task.task_id not in [s.task_id for s in chain.state().get_status().scheduled]:
            time.sleep(1.5)  # a prefetch poll or more
            assert not any(node.blobs.has(d) for d in digests), "fetched before the task was scheduled"
            assert chain.process_new_block(make_next_block(chain.state(), PARAMS, MINER), time.time(), unchecked_work).is_valid
        status = chain.state().get_status()
        task_height = next(s.height for s in status.scheduled if s.task_id == task.task_id)
        scheduled_at = time.time()

        # The data arrives while the chain is still at least one block before the task's height: a whole slot before
        # that height's Phase 2, when verification needs it.
        wait_until(lambda: all(node.blobs.has(d) for d in digests), PARAMS.phase1_seconds, "the task's data to be prefetched")
        assert chain.tip_height < task_height - 1
        assert {d for d, _ in node.prefetcher.fetched} == set(digests)
        assert all(node.blobs.verify(d) for d in digests)
        assert any("prefetched" in line for line in node.lines)
        assert time.time() - scheduled_at < PARAMS.phase1_seconds
    finally:
        node.stop()
        publisher.close()
