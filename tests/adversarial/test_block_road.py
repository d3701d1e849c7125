"""A hostile peer gossips blocks at a real node: nothing is downloaded for a block that breaks a cheap rule.

The attack: a block's blob links are chosen by its author, so a peer that could
make a node fetch before checking would spend the node's bandwidth and disk
at will. The node's block road (consensus/chainstate.py) checks every rule that
needs no blob first; only then does it fetch. The blob server here counts
every request it gets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import threading
import time

import pytest

from consensus.chainstate import BlockStatus
from consensus.fixtures import make_keypair, make_next_block, make_test_params
from fullnode.config import NodeConfig
from fullnode.messages import FullBlock, get_topic
from fullnode.node import FullNode
from pouw.encoding import encode
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread
from pouw.types import Block

pytestmark = pytest.mark.slow

MINER = make_keypair("hostile-miner")


class CountingBlobServer:
    """An HTTP server that answers 404 to everything and counts the requests."""

    def __init__(self):
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.paths.append(self.path)
                self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def with_links(block: Block, link: str) -> Block:
    """The block re-made so its work points at `link` (root, size and signature kept consistent)."""
    from consensus.rules import compute_body_root

    work = dataclasses.replace(block.body.work, links=(link,))
    body = dataclasses.replace(block.body, work=work)
    header = dataclasses.replace(block.header, body_root=compute_body_root(body), size=len(encode(body))).signed_by(MINER)
    return Block(header, body)


def test_a_block_breaking_a_rule_is_refused_before_any_blob_is_fetched(tmp_path):
    params = make_test_params("alice")
    server = CountingBlobServer()
    node = FullNode(NodeConfig(datadir=tmp_path / "node", params=params, rpc_port=0), log_fn=lambda m: None).start()
    peer = P2PNode(os.urandom(32))
    peer_thread = P2PThread(peer).start()
    try:
        honest_shape = with_links(make_next_block(node.chain.state(), params, MINER), server.url)
        # Broken rule: the header names a task that is not the one scheduled (re-signed, so it is not a bad signature).
        wrong_task = dataclasses.replace(honest_shape.header, task_id=hashlib.sha256(b"another task").digest()).signed_by(MINER)
        hostile = Block(wrong_task, honest_shape.body)

        topic = get_topic(params.chain_id, "block")
        peer_thread.call(peer.subscribe, topic, None, None)
        peer_thread.call(peer.connect, node.p2p_addrs()[0])
        peer_thread.call(peer.wait_for_topic_peers, topic, 1, 20.0)
        peer_thread.call(peer.publish, topic, encode(FullBlock(hostile)))
        deadline = time.time() + 20
        while node.chain.get_invalid_reason(hostile.hash) is None and time.time() < deadline:
            time.sleep(0.1)
        assert "not the task selected" in (node.chain.get_invalid_reason(hostile.hash) or "")
        assert server.paths == [], "the node fetched blobs for a block that breaks a rule"
        assert node.chain.get_index(hostile.hash) is None

        # The control: the same block with every rule kept reaches the fetch (and, its model being made up, fails there).
        result = node.take_block(honest_shape, None)
        assert result.status is BlockStatus.MISSING and "not available" in result.reason
        assert any(p.endswith(honest_shape.body.work.model_digest.hex()) for p in server.paths)
        assert node.chain.get_index(honest_shape.hash) is None
    finally:
        peer_thread.stop()
        node.stop()
        server.close()
