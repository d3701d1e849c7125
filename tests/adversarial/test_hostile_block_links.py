"""Attack: a block's author points its work links at a server that stalls or floods the node verifying it.

Before, the full node fetched without the declared sizes, tried the hostile
link again for every checkpoint, and knew no source besides HTTP: a dripping
server cost the fetch's grace period once per blob and the block stayed
missing; a server sending more than a blob's size was read up to 4 GiB per
blob. Now every fetch is held to the blob's declared size and the fetch
limits, a source that broke a limit is not asked again within the block, and
when links fail the node fetches from connected peers over libp2p
`/pouw/blob/1`. Here node B holds the blobs (its HTTP blob server is down, as
behind a firewall); node A takes the block with the hostile link.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from blobnodes import forge_claim, mine, start_node, wait_connected
from consensus.chainstate import BlockStatus
from consensus.fixtures import make_keypair, make_test_params
from consensus.work import get_blob_digests
from pouw.blobstore import BlobStore, FetchLimits
from test_hostile_fetch import ScriptedServer

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice")
MINER = make_keypair("hostile-links-miner")
# Short periods keep the test quick; the rules are the same as the defaults'.
FAST = FetchLimits(deadline=20.0, min_rate=200_000.0, grace=0.5, silence=2.0)


def drip(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    while not stop.wait(0.2):  # one byte every 0.2 s: each read succeeds, the whole never ends
        conn.sendall(b"x")


class Flood:
    """Sends far more than any blob's size (no Content-Length), counting what it got out."""

    def __init__(self):
        self.sent = 0
        self.lock = threading.Lock()

    def __call__(self, conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        chunk = b"z" * 65536
        for _ in range(16_384):  # up to 1 GiB
            if stop.is_set():
                return
            conn.sendall(chunk)
            with self.lock:
                self.sent += len(chunk)


@pytest.fixture()
def peers(tmp_path):
    """Node B (blobs, HTTP blob server down) and node A (fast fetch limits) connected over libp2p."""
    b = start_node(tmp_path, "b", PARAMS)
    a = start_node(tmp_path, "a", PARAMS, bootstrap=b.p2p_addrs(), limits=FAST)
    try:
        b.blob_server.stop()
        wait_connected(a, b)
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("script", [drip, Flood()], ids=["slow-drip", "more-than-declared"])
def test_a_hostile_link_costs_one_limit_and_the_blobs_come_from_a_peer(tmp_path, peers, script):
    a, b = peers
    hostile = ScriptedServer(script)
    try:
        block = mine(b.chain.state(), PARAMS, MINER, b.blobs, hostile.url(""), tmp_path / "miner")
        wanted = get_blob_digests(None, block.header.task_mode, block, PARAMS)
        assert len(wanted) >= 5  # the model and the checkpoints around the replayed segments

        result = a.core.process_block(block, time.time())

        assert result.status is BlockStatus.CONNECTED, result.reason
        assert all(a.blobs.has(d) for d in wanted)
        # The hostile server was asked once: after it broke a limit, the rest of the block came from the peer.
        assert len(hostile.requests) == 1, f"asked {len(hostile.requests)} times"
        if isinstance(script, Flood):
            # Cut one byte past the declared size: what got out is that plus what the socket buffers held.
            assert script.sent < 64 << 20, script.sent
        assert list(a.blobs.tmp_dir.iterdir()) == []
    finally:
        hostile.close()


def test_a_file_link_in_a_block_is_never_read_and_the_block_stays_missing_until_a_peer_has_it(tmp_path):
    mined = BlobStore(tmp_path / "miner-blobs")
    a = start_node(tmp_path, "a", PARAMS, limits=FAST)
    b = None
    try:
        # The blobs lie on A's own disk, where a file:// link points: reading them would make the block valid.
        folder = tmp_path / "on-disk"
        block = mine(a.chain.state(), PARAMS, MINER, mined, folder.as_uri(), tmp_path / "m")
        (folder / "blob").mkdir(parents=True)
        for digest in get_blob_digests(None, block.header.task_mode, block, PARAMS, mined):
            shutil.copy(mined.path(digest), folder / "blob" / digest.hex())

        result = a.core.process_block(block, time.time())
        assert result.status is BlockStatus.MISSING, result
        assert "not available from any source" in result.reason
        assert not a.blobs.has(block.body.work.model_digest)
        assert a.chain.get_invalid_reason(block.hash) is None  # missing is no verdict

        # A peer that has the blobs (over libp2p only) makes the same block valid.
        b = start_node(tmp_path, "b", PARAMS)
        b.blob_server.stop()
        for digest in get_blob_digests(None, block.header.task_mode, block, PARAMS, mined):
            b.blobs.put_file(mined.path(digest))
        a.p2p_thread.call(a.p2p.connect, b.p2p_addrs()[0])
        wait_connected(a, b)
        result = a.core.process_block(block, time.time())
        assert result.status is BlockStatus.CONNECTED, result.reason
    finally:
        for node in (b, a):
            if node is not None:
                node.stop()


def test_a_wrongly_declared_size_leaves_the_block_missing_not_invalid(tmp_path, peers):
    a, b = peers
    honest = mine(b.chain.state(), PARAMS, MINER, b.blobs, "http://127.0.0.1:9", tmp_path / "miner")
    work = honest.body.work
    # The same model and checkpoints, but the model declared one byte short: no source can deliver that.
    lying = forge_claim(b.chain.state(), PARAMS, MINER, (work.model_digest, work.model_size - 1), work.checkpoints,
                        "http://127.0.0.1:9")
    result = a.core.process_block(lying, time.time())
    assert result.status is BlockStatus.MISSING, result
    assert "announced" in result.reason and "not the declared size" in result.reason
    assert not a.blobs.has(work.model_digest)
    assert a.chain.get_invalid_reason(lying.hash) is None
