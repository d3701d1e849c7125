"""A syncing node killed with SIGKILL restarts and continues to the same state; assume-valid skips only buried work.

The source holds 150 blocks with made-up models (their Dice cannot be
recomputed) and, on top, real blocks. The syncing node is started with
`--assume-valid` naming the last made-up block: it finds it in the source's
header chain, skips the Dice recomputation for it and its ancestors (buried
deeper than the finality window), and verifies the real blocks near the tip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consensus.fixtures import make_keypair, make_next_block, make_test_params, make_transfer
from consensus.state import State, apply_changes
from consensus.transition import apply_block, apply_genesis
from chainutil import unchecked_work
from consensus.chainstate import BlockStatus
from fullnode.config import NodeConfig, save_params
from fullnode.node import FullNode
from pouw.rpc import RpcClient
from realblocks import mine_standing_block

pytestmark = pytest.mark.slow

PARAMS = make_test_params("alice", "bob")
ALICE, BOB, MINER = make_keypair("alice"), make_keypair("bob"), make_keypair("miner")


def build_chain(count: int) -> list:
    """`count` blocks with transfers; their made-up models are below the high-accuracy threshold."""
    data: dict = {}
    state = State.from_mapping(data)
    apply_genesis(state, PARAMS)
    apply_changes(data, state.changes())
    blocks = []
    for i in range(count):
        state = State.from_mapping(data)
        nonce = state.get_account(ALICE.public_key).nonce
        txs = tuple(make_transfer(ALICE, BOB.public_key, 1 + i, nonce + k) for k in range(20))
        block = make_next_block(state, PARAMS, MINER, transactions=txs, dice_ppm=500_000)
        applied = State.from_mapping(data)
        apply_block(applied, block, PARAMS)
        apply_changes(data, applied.changes())
        blocks.append(block)
    return blocks


def start_process(datadir: Path, params_file: Path, bootstrap: str, log: Path, assume_valid: bytes) -> subprocess.Popen:
    (datadir / "node.json").unlink(missing_ok=True)
    args = [sys.executable, "-m", "pouw.cli", "node", "start", "--datadir", str(datadir), "--params", str(params_file),
            "--rpc-port", "0", "--assume-valid", assume_valid.hex(), "--bootstrap", bootstrap]
    return subprocess.Popen(args, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def rpc_of(datadir: Path, timeout: float = 60) -> RpcClient:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            info = json.loads((datadir / "node.json").read_text())
            return RpcClient(info["rpc_url"], datadir=datadir, timeout=10)
        except (FileNotFoundError, ValueError, KeyError):
            time.sleep(0.1)
    raise AssertionError("the node did not start")


def test_node_killed_during_sync_restarts_and_catches_up(tmp_path):
    blocks = build_chain(150)
    source = FullNode(NodeConfig(datadir=tmp_path / "source", params=PARAMS, rpc_port=0), log_fn=lambda m: None).start()
    proc = None
    try:
        for block in blocks:  # the source's own history (mined long ago): stored without recomputing its work
            assert source.chain.process_new_block(block, time.time(), unchecked_work).is_valid
        for _ in range(PARAMS.finality_depth + 1):  # real blocks near the tip, which every node verifies
            real = mine_standing_block(source.chain.state(), PARAMS, MINER, source.blobs, source.get_blob_url(),
                                       tmp_path / "source-miner")
            assert source.core.process_block(real, time.time()).status is BlockStatus.CONNECTED
        params_file = save_params(tmp_path / "net", PARAMS)
        datadir = tmp_path / "syncing"
        log = tmp_path / "syncing.log"
        proc = start_process(datadir, params_file, source.p2p_addrs()[0], log, blocks[-1].hash)
        rpc = rpc_of(datadir)
        deadline = time.time() + 60
        height = 0
        while height < 10 and time.time() < deadline:  # kill once it is well into the sync
            try:
                height = rpc.call("getinfo")["height"]
            except Exception:
                pass
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert 0 < height < len(blocks), f"the kill came at height {height}, not during the sync"

        proc = start_process(datadir, params_file, source.p2p_addrs()[0], log, blocks[-1].hash)
        rpc = rpc_of(datadir)
        deadline = time.time() + 180
        while time.time() < deadline:
            info = rpc.call("getinfo")
            if info["tip"] == source.chain.tip_hash.hex():
                break
            time.sleep(0.3)
        assert info["tip"] == source.chain.tip_hash.hex(), f"stuck at height {info['height']}"
        assert info["state_checksum"] == source.chain.get_meta().state_checksum.hex()
        text = log.read_text()
        assert "assume-valid:" in text and "rejected" not in text
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        source.stop()
