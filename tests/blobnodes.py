"""Helpers for tests of what full nodes do with blobs: real nodes, a miner's real blob server, real and forged blocks.

`MinerBlobs` is what a miner runs beside its node (a blob store and its HTTP
server); `mine` trains a real standing-task block into it
(tests/realblocks.py), so a node that takes the block fetches the model and
checkpoints over HTTP and verifies the work for real. `forge_claim` builds a
block whose work names blobs of someone else's choosing, signed and committed
correctly, so it passes every rule that needs no blob.
"""

from __future__ import annotations

import time
from pathlib import Path

from consensus.assemble import complete_block, make_block_template, make_commit
from consensus.clock import get_phase2_start
from consensus.rules import get_scheduled_task_id
from consensus.state import State
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobStore
from pouw.keys import KeyPair
from pouw.types import Block, ChainParams, CheckpointRef, WorkProof
from realblocks import mine_standing_block


def start_node(root: Path, name: str, params: ChainParams, *, bootstrap=(), prune: bool = True,
               limits=None, keep_blocks: int = 288) -> FullNode:
    """A real full node on loopback; `node.lines` holds what it logged; `limits` replaces its fetch limits."""
    lines: list[str] = []
    node = FullNode(NodeConfig(datadir=root / name, params=params, rpc_port=0, bootstrap=list(bootstrap), prune=prune,
                                    prune_keep_blocks=keep_blocks),
                    log_fn=lines.append)
    node.lines = lines
    if limits is not None:
        node.fetcher.limits = limits
    return node.start()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def wait_connected(a: FullNode, b: FullNode, timeout: float = 30) -> None:
    """Until `a` and `b` see each other as connected peers."""
    wait_until(lambda: a.peer_count() >= 1 and b.peer_count() >= 1, timeout, "the nodes to connect")


class MinerBlobs:
    """A miner's blob store and its HTTP blob server."""

    def __init__(self, root: Path, port: int = 0):
        self.root = Path(root)
        self.store = BlobStore(self.root / "blobs")
        self.server = BlobServer(self.store, port=port).start()
        self.url = self.server.url
        self.port = self.server.port

    def close(self) -> None:
        self.server.stop()


def mine(state: State, params: ChainParams, keypair: KeyPair, store: BlobStore, link: str, workdir: Path,
         seconds: float = 6.0) -> Block:
    """A real block on `state` whose model and checkpoints are in `store` and whose work links to `link`."""
    return mine_standing_block(state, params, keypair, store, link, workdir, seconds=seconds)


def forge_claim(state: State, params: ChainParams, keypair: KeyPair, model: tuple[bytes, int],
                checkpoints: tuple[CheckpointRef, ...], link: str, dice_ppm: int = 990_000) -> Block:
    """A block for the next height whose work names `model` (digest, size) and `checkpoints`, committed and signed
    by `keypair`: it passes every rule that needs no blob, whatever the blobs hold."""
    status = state.get_status()
    slot = status.min_slot
    task_id = get_scheduled_task_id(status)
    commit = make_commit(keypair, status.height + 1, slot, task_id, model[0], checkpoints)
    work = WorkProof(model[0], model[1], checkpoints, (link,), dice_ppm)
    template = make_block_template(state, params)
    return complete_block(template, params, keypair, slot=slot, timestamp=get_phase2_start(params, slot) + 1,
                          commit=commit, work=work, task=None)
