"""The miner: pure planning decisions, RPC resilience, and real mining rounds.

The rounds run against a real full node (`fullnode.node.FullNode`: its core,
RPC server, blob server and phase clock, on loopback), so a claim is
accepted only if the block applies and its Dice and training replay check out.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from consensus.chainstate import BlockStatus
from consensus.clock import get_phase2_start, get_slot_start
from consensus.genesis import COIN, make_devnet_params
from consensus.rules import get_work_task_id
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from miner import plan
from miner.events import Reporter
from miner.node import NodeGone, NodeLink
from pouw.keys import KeyPair
from pouw.rpc import RpcClient, RpcServer
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_NORMAL,
    MODE_STALE,
    Allocation,
    Block,
    ChainParams,
)
from realblocks import mine_standing_block

# --------------------------------------------------------------------------------------
# A real node to mine against
# --------------------------------------------------------------------------------------


class NodeUnderTest:
    """A real FullNode on loopback, with what it logged kept for assertions."""

    def __init__(self, root: Path, params: ChainParams):
        self.lines: list[str] = []
        self.node = FullNode(NodeConfig(datadir=Path(root), params=params, rpc_port=0), log_fn=self.lines.append).start()
        self.params = params
        self.url = self.node.rpc.url
        self.datadir = self.node.datadir

    @property
    def chain(self):
        return self.node.chain

    def rejections(self) -> list[str]:
        return [line for line in self.lines if "rejected" in line]

    def add_standing_block(self, miner: KeyPair, slot: int) -> Block:
        """A real block (trained, scored, signed) with the pending transactions and the next task's training key
        if this node's publisher holds it, taken down the node's block road."""
        core = self.node.core
        with core.lock:
            state = self.chain.state()
            txs = tuple(core.txpool.select_for_block(state))
            next_key = core.keys.mine.get(state.get_status().scheduled[1].task_id, {}).get(KEY_TRAIN)
        block = mine_standing_block(state, self.params, miner, self.node.blobs, self.node.get_blob_url(),
                                    self.datadir / "test-miner", slot=slot, transactions=txs, next_train_key=next_key,
                                    seconds=3.0)  # the blocks before a timed round must not eat its slot
        result = core.process_block(block, time.time())
        assert result.status is BlockStatus.CONNECTED, result.reason
        return block

    def wait_for_height(self, height: int, timeout: float) -> Block:
        deadline = time.time() + timeout
        while self.chain.tip_height < height:
            if time.time() > deadline:
                raise AssertionError(f"height {height} was not reached in time; node said: {self.lines[-5:]}")
            time.sleep(0.2)
        return self.chain.get_block_at(height)

    def close(self) -> None:
        self.node.stop()


def make_params(genesis_time: int, *funded: KeyPair, phase1: int = 8, phase2: int = 4) -> ChainParams:
    allocations = tuple(Allocation(k.public_key, 1000 * COIN) for k in funded)
    return make_devnet_params(genesis_time=genesis_time, allocations=allocations,
                              phase1_seconds=phase1, phase2_seconds=phase2)


@pytest.fixture
def node_factory(tmp_path):
    made: list[NodeUnderTest] = []

    def make(params: ChainParams) -> NodeUnderTest:
        node = NodeUnderTest(tmp_path / f"node{len(made)}", params)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


MINER = KeyPair.from_seed(bytes(range(32)))

# --------------------------------------------------------------------------------------
# Pure planning
# --------------------------------------------------------------------------------------

P = make_params(1_700_000_000, phase1=20, phase2=10)


def test_train_mode_is_what_the_chain_dictates():
    # The standing task needs no key; a published task is stale outside its fresh slot, falls back to the
    # standing task without its training key on chain, and trains on its own data otherwise.
    assert plan.decide_train_mode(standing=True, fresh_slot=False, train_key_on_chain=False) == MODE_NORMAL
    assert plan.decide_train_mode(standing=False, fresh_slot=False, train_key_on_chain=True) == MODE_STALE
    assert plan.decide_train_mode(standing=False, fresh_slot=True, train_key_on_chain=False) == MODE_NO_TRAIN_KEY
    assert plan.decide_train_mode(standing=False, fresh_slot=True, train_key_on_chain=True) == MODE_NORMAL


def test_score_mode_waits_for_the_test_key_then_scores_on_the_training_set():
    t2 = get_phase2_start(P, 5)
    grace = P.key_grace_seconds
    assert plan.decide_score_mode(P, 5, t2 + 0.1, MODE_NORMAL, False, test_key_ok=False) is plan.WAIT
    assert plan.decide_score_mode(P, 5, t2 + grace, MODE_NORMAL, False, test_key_ok=False) == MODE_NO_TEST_KEY
    assert plan.decide_score_mode(P, 5, t2 + 0.1, MODE_NORMAL, False, test_key_ok=True) == MODE_NORMAL
    # Modes 1 and 3 and the standing task are settled in Phase 1.
    assert plan.decide_score_mode(P, 5, t2, MODE_NO_TRAIN_KEY, False, test_key_ok=False) == MODE_NO_TRAIN_KEY
    assert plan.decide_score_mode(P, 5, t2, MODE_STALE, False, test_key_ok=True) == MODE_STALE
    assert plan.decide_score_mode(P, 5, t2, MODE_NORMAL, True, test_key_ok=False) == MODE_NORMAL


def test_key_reveals_follow_the_mode():
    tid, nid, k1, k2 = b"\x01" * 32, b"\x04" * 32, b"\x02" * 32, b"\x03" * 32
    assert [(r.task_id, r.which) for r in plan.get_key_reveals(tid, MODE_NORMAL, k1, nid, k2)] == [(tid, KEY_TEST), (nid, KEY_TRAIN)]
    assert plan.get_key_reveals(tid, MODE_NO_TEST_KEY, None, None, None) == ()
    assert [r.key for r in plan.get_key_reveals(tid, MODE_NO_TRAIN_KEY, None, nid, k2)] == [k2]
    assert get_work_task_id(P, tid, MODE_NO_TRAIN_KEY) == P.standing_task.task_id
    assert get_work_task_id(P, tid, MODE_STALE) == P.standing_task.task_id
    assert get_work_task_id(P, tid, MODE_NO_TEST_KEY) == tid


@given(phase1=st.integers(3, 3600), phase2=st.integers(1, 600), slot=st.integers(0, 10**6),
       rtt=st.floats(0, 30, allow_nan=False))
def test_training_never_runs_into_phase_2(phase1, phase2, slot, rtt):
    params = make_params(1_700_000_000, phase1=phase1, phase2=phase2)
    margin = plan.compute_commit_margin(params, rtt)
    deadline = plan.compute_train_deadline(params, slot, margin)
    assert get_slot_start(params, slot) < deadline < get_phase2_start(params, slot)
    assert margin >= min(2.0, phase1 / 3.0)
    # With no time left, training does not start.
    assert not plan.can_start_training(deadline - 0.5, deadline)


def test_block_timestamp_is_inside_phase_2():
    t2, end = get_phase2_start(P, 7), get_slot_start(P, 8)
    assert plan.compute_block_timestamp(P, 7, t2 - 3) == t2
    assert plan.compute_block_timestamp(P, 7, t2 + 4.7) == t2 + 4
    assert plan.compute_block_timestamp(P, 7, end + 50) == end - 1


def test_backoff_doubles_and_is_capped():
    assert [plan.compute_backoff(i) for i in range(6)] == [0.5, 1, 2, 4, 8, 10]
    assert plan.compute_backoff(1000) == 10


# --------------------------------------------------------------------------------------
# Node restarts
# --------------------------------------------------------------------------------------


def test_rpc_link_rides_out_a_node_restart(tmp_path):
    datadir = tmp_path / "node"
    server = RpcServer({"getinfo": lambda: {"ok": 1}}, port=0, datadir=datadir).start()
    port = server.port
    server.stop()
    reporter = Reporter(stream=open(tmp_path / "events.log", "w"))
    link = NodeLink(RpcClient(f"http://127.0.0.1:{port}", datadir=datadir, timeout=5), reporter)
    with pytest.raises(NodeGone):
        link.call("getinfo", until=time.time() + 0.2)

    restarted = RpcServer({"getinfo": lambda: {"ok": 2}}, port=port, datadir=datadir)
    timer = threading.Timer(1.0, restarted.start)
    timer.start()
    try:
        assert link.call("getinfo") == {"ok": 2}
    finally:
        timer.join()
        restarted.stop()
    assert [e["event"] for e in reporter.history] == ["node-unreachable", "node-back"]
    assert link.reconnects == 1


# --------------------------------------------------------------------------------------
# Real rounds
# --------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_miner_cli_mines_a_standing_task_block(node_factory, tmp_path):
    """`pouw miner start --once`: commit in Phase 1, claim in Phase 2, block verified and connected."""
    from pouw.cli import main

    params = make_params(int(time.time()) + 1)
    node = node_factory(params)
    result = CliRunner().invoke(main, [
        "miner", "start", "--node", node.url, "--node-datadir", str(node.datadir), "--key-seed", bytes(range(32)).hex(),
        "--datadir", str(tmp_path / "miner"), "--threads", "2", "--once", "--json",
    ])
    assert result.exit_code == 0, result.output
    block = node.wait_for_height(1, 30)
    assert node.rejections() == []
    assert block.header.height == 1 and block.header.miner == MINER.public_key
    assert block.header.task_id == params.standing_task.task_id and block.header.task_mode == MODE_NORMAL
    # The commit arrived in Phase 1 of the block's slot, the claim's timestamp lies in its Phase 2.
    slot = block.header.slot
    at = node.node.core.commits.get_record(MINER.public_key, 1, slot).received_at
    assert get_slot_start(params, slot) <= at < get_phase2_start(params, slot)
    assert get_phase2_start(params, slot) <= block.header.timestamp < get_slot_start(params, slot + 1)
    assert block.header.dice_ppm > 500_000
    assert node.chain.state().get_account(MINER.public_key).balance == params.block_reward
    events = [line for line in result.output.splitlines() if line.startswith("{")]
    assert any('"event": "claim"' in line for line in events)


@pytest.mark.timeout(120)
def test_miner_mines_a_published_task_and_the_publisher_gets_the_model(node_factory, tmp_path, monkeypatch):
    """Publisher submits a real dataset; the miner trains it in mode 0; `task results` returns the model."""
    from miner.loop import Miner, MinerConfig
    from pouw.cli import main
    from pouw.cli.publish import COMMANDS
    from pouw.seg.data import write_synthetic_dataset_dir
    from pouw.seg.spec import ModelSpec

    import click

    publisher_dir = tmp_path / "publisher"
    monkeypatch.setenv("POUW_PASSPHRASE", "correct horse")
    monkeypatch.setenv("POUW_KEYSTORE", str(publisher_dir / "keys"))
    runner = CliRunner()
    key_file = publisher_dir / "wallet.key"
    assert runner.invoke(main, ["wallet", "new", "--key-file", str(key_file), "--fast-kdf"]).exit_code == 0
    publisher = bytes.fromhex(runner.invoke(main, ["wallet", "address", "--key-file", str(key_file)]).output.strip())

    # Block 1 (slot 0) carries the task; it matures after M blocks and is selected by block 1 + M for height
    # 3 + M. Blocks up to 2 + M are real standing-task blocks in past slots; the last of them carries the task's
    # training key, in Phase 2 of the slot just before the one the miner mines the task in.
    L = 12
    params0 = make_devnet_params(genesis_time=0, phase1_seconds=8, phase2_seconds=4)
    M = params0.task_maturity_blocks
    last = 1 + M  # the slot of block 2 + M
    genesis = int(time.time()) - 2 * L  # each block waits for its slot's Phase 2: the last one lands a few s from now
    params = make_devnet_params(genesis_time=genesis, phase1_seconds=8, phase2_seconds=4,
                                allocations=(Allocation(publisher, 1000 * COIN),))
    node = node_factory(params)
    spec = ModelSpec("unet2d", 1, 2, 4, (32, 32))
    dataset = write_synthetic_dataset_dir(tmp_path / "ds", b"\x07" * 32, 16, 8, spec)
    task_cli = click.Group("task", commands={c.name: c for c in COMMANDS})
    common = ["--node", node.url, "--datadir", str(node.datadir)]
    res = runner.invoke(task_cli, ["submit", str(dataset), "--reward", "60", "--model", "unet2d", "--base-filters", "4",
                                   "--patch-size", "32,32", "--batch-size", "4", "--lr", "0.01", "--title", "circles",
                                   "--key-file", str(key_file), "--json", *common])
    assert res.exit_code == 0, res.output
    task_id = bytes.fromhex(json.loads(res.output)["task_id"])
    assert node.node.core.keys.mine[task_id]  # the node holds the keys to reveal
    for slot in range(last + 1):
        while time.time() < get_phase2_start(params, slot) + 0.5:
            time.sleep(0.1)
        if slot == last:
            assert node.chain.state().get_status().scheduled[1].task_id == task_id
        node.add_standing_block(KeyPair.from_seed(b"\x09" * 32), slot=slot)
    status = node.chain.state().get_status()
    assert status.scheduled[0].task_id == task_id and status.train_key, "the training key is on chain"
    listing = runner.invoke(task_cli, ["list", *common])
    assert "scheduled" in listing.output and "circles" in listing.output

    reporter = Reporter(stream=open(tmp_path / "miner.log", "w"))
    config = MinerConfig(keypair=MINER, workdir=tmp_path / "miner", threads=2, progress=False)
    rpc = NodeLink(RpcClient(node.url, datadir=node.datadir), reporter)
    [claim] = Miner(rpc, config, reporter).run(once=True)
    assert claim.task_id == task_id and claim.mode == MODE_NORMAL and claim.height == 3 + M
    assert reporter.events("prefetched") and reporter.events("train-key")
    block = node.wait_for_height(3 + M, 30)
    assert node.rejections() == []
    state = node.chain.state()
    assert state.get_account(MINER.public_key).balance == 60 * COIN  # a published task pays its escrow, it mints nothing
    assert [r.which for r in block.body.key_reveals] == [KEY_TEST]

    status = runner.invoke(task_cli, ["status", task_id.hex(), *common])
    assert status.exit_code == 0 and "mined" in status.output
    out = tmp_path / "results"
    res = runner.invoke(task_cli, ["results", task_id.hex(), "--out", str(out), "--overlays", "2", "--json", *common])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert abs(summary["test_dice_ppm"] - claim.dice_ppm) <= params.dice_tolerance_ppm
    assert (out / "model.pouw").stat().st_size > 0 and (out / "dice.png").exists()
    assert len(list((out / "overlays").glob("*.png"))) == 2
