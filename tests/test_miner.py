"""The miner: pure planning decisions, RPC resilience, and real mining rounds.

The rounds run against `NodeHarness`: the real RPC server over HTTP with
handlers backed by a real ChainStore (LevelDB), the real mempools, and
`consensus.work.verify_block_work` on every claim, so a claim is accepted
only if the block applies and its Dice and training replay check out.
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

from consensus.assemble import make_block_template
from consensus.clock import get_phase2_start, get_phase_point, get_slot_start
from consensus.fixtures import make_next_block
from consensus.genesis import COIN, make_devnet_params
from consensus.transition import InvalidBlock
from consensus.work import get_blob_digests, verify_block_work
from mempool import ClaimPool, CommitPool, MempoolReject, TxPool, compute_task_listing
from miner import plan
from miner.events import Reporter
from miner.node import NodeGone, NodeLink
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobError, BlobStore
from pouw.encoding import encode
from pouw.keys import KeyPair
from pouw.rpc import RpcClient, RpcError, RpcServer
from pouw.store import ChainStore
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_NORMAL,
    Allocation,
    Block,
    ChainParams,
)

# --------------------------------------------------------------------------------------
# The harness node
# --------------------------------------------------------------------------------------


class NodeHarness:
    """A small node implementing docs/rpc.md on real parts; claims are verified and connected in a thread."""

    def __init__(self, root: Path, params: ChainParams):
        self.params = params
        self.root = Path(root)
        self.store = ChainStore(self.root / "chain", params)
        self.blobs = BlobStore(self.root / "blobs")
        self.blob_server = BlobServer(self.blobs).start()
        self.txpool = TxPool(params)
        self.commits = CommitPool(params)
        self.claims = ClaimPool(params, self.commits)
        self.keys: dict[bytes, tuple[bytes, bytes]] = {}
        self.lock = threading.RLock()
        self.connected: list[Block] = []
        self.rejected: list[str] = []
        self.commit_times: list[tuple[int, int, float]] = []
        self.block_event = threading.Event()
        handlers = {name[4:]: getattr(self, name) for name in dir(self) if name.startswith("rpc_")}
        self.rpc = RpcServer(handlers, port=0, datadir=self.root / "node").start()
        self.url = self.rpc.url
        self.datadir = self.root / "node"

    def close(self) -> None:
        self.rpc.stop()
        self.blob_server.stop()
        self.store.close()

    @staticmethod
    def _reject(exc: Exception) -> RpcError:
        return RpcError(str(exc), -1)

    # -- chain ------------------------------------------------------------------------
    def rpc_getinfo(self):
        point = get_phase_point(self.params, time.time())
        status = self.store.state().get_status()
        return {"network": self.params.name, "chain_id": self.params.chain_id.hex(), "height": status.height,
                "tip": status.tip_hash.hex(), "slot": point.slot, "phase": point.phase, "phase_end": point.phase_end,
                "peers": 0, "p2p_addrs": [], "blob_url": self.blob_server.url, "supply": status.supply,
                "mempool_size": len(self.txpool), "datadir": str(self.datadir)}

    def rpc_getparams(self):
        return {"hex": encode(self.params).hex()}

    def rpc_getblock(self, ref):
        block = self.store.get_block_at(ref) if isinstance(ref, int) else self.store.get_block(bytes.fromhex(ref))
        if block is None:
            raise RpcError("block not found", -2)
        h = block.header
        return {"height": h.height, "hash": block.hash.hex(), "confirmations": 0,
                "header": {"slot": h.slot, "timestamp": h.timestamp, "miner": h.miner.hex(), "task_id": h.task_id.hex(),
                           "task_mode": h.task_mode, "dice_ppm": h.dice_ppm},
                "transactions": [{"txid": encode(tx).hex()[:64], "type": type(tx).__name__} for tx in block.body.transactions],
                "hex": encode(block).hex()}

    def rpc_getbalance(self, address):
        addr = bytes.fromhex(address)
        state = self.store.state()
        acct = state.get_account(addr)
        with self.lock:
            pending = self.txpool.get_pending_nonce(addr, state)
        return {"address": address, "balance": acct.balance, "nonce": acct.nonce, "pending_nonce": pending}

    def rpc_sendtx(self, hex):
        with self.lock:
            try:
                txid = self.txpool.add_encoded(bytes.fromhex(hex), self.store.state())
            except MempoolReject as exc:
                raise self._reject(exc) from None
        return {"txid": txid.hex()}

    def rpc_listtasks(self):
        with self.lock:
            rows = compute_task_listing(self.store.state(), self.txpool.tasks, self.params)
        return {"tasks": [{"task_id": r.task_id.hex(), "title": r.title, "reward": r.reward, "publisher": "",
                           "status": r.status, "height": r.height} for r in rows]}

    def rpc_gettask(self, task_id):
        state = self.store.state()
        record = state.get_task(bytes.fromhex(task_id))
        if record is None:
            raise RpcError("unknown task", -2)
        out = {"task_id": task_id, "title": record.submission.title, "reward": record.submission.reward,
               "status": "waiting", "height": record.selected_height,
               "submission_hex": encode(record.submission).hex(), "result": None}
        h = record.selected_height
        if h and self.store.tip_height >= h:
            block = self.store.get_block_at(h)
            w = block.body.work
            out["status"] = "refunded" if block.header.task_mode == MODE_NO_TRAIN_KEY else "mined"
            out["result"] = {"height": h, "block_hash": block.hash.hex(), "winner": block.header.miner.hex(),
                             "dice_ppm": w.dice_ppm, "model_digest": w.model_digest.hex(),
                             "checkpoint_digests": [d.hex() for d in w.checkpoint_digests], "links": list(w.links),
                             "mode": block.header.task_mode}
        elif h:
            out["status"] = "scheduled"
        return out

    def rpc_importblob(self, path):
        digest = self.blobs.put_file(path)
        return {"digest": digest.hex(), "size": self.blobs.size(digest)}

    def rpc_addtaskkeys(self, task_id, train_key, test_key):
        self.keys[bytes.fromhex(task_id)] = (bytes.fromhex(train_key), bytes.fromhex(test_key))
        return {}

    # -- mining -----------------------------------------------------------------------
    def _task_entry(self, state, task_id: bytes) -> dict:
        standing = task_id == self.params.standing_task.task_id
        record = None if standing else state.get_task(task_id)
        return {"task_id": task_id.hex(), "standing": standing,
                "task_hex": None if record is None else encode(record.submission).hex()}

    def rpc_getmininginfo(self):
        now = time.time()
        point = get_phase_point(self.params, now)
        state = self.store.state()
        status = state.get_status()
        cur, nxt = status.scheduled
        train_key = test_key = None
        if cur.task_id in self.keys:
            # The publisher's agent: each key from its moment in the slot being mined.
            if now >= get_slot_start(self.params, point.slot):
                train_key = self.keys[cur.task_id][0].hex()
            if now >= get_phase2_start(self.params, point.slot):
                test_key = self.keys[cur.task_id][1].hex()
        return {"height": status.height + 1, "prev_hash": status.tip_hash.hex(), "slot": point.slot,
                "phase": point.phase, "phase_start": point.phase_start, "phase_end": point.phase_end,
                "slot_phase2_start": get_phase2_start(self.params, point.slot), **self._task_entry(state, cur.task_id),
                "train_key": train_key, "test_key": test_key,
                "next": {"height": nxt.height, **self._task_entry(state, nxt.task_id)},
                "blob_url": self.blob_server.url}

    def rpc_getblocktemplate(self):
        state = self.store.state()
        with self.lock:
            txs = self.txpool.select_for_block(state)
        return {"hex": encode(make_block_template(state, self.params, tuple(txs))).hex()}

    def rpc_submitcommit(self, hex):
        status = self.store.state().get_status()
        expected = {status.scheduled[0].task_id, self.params.standing_task.task_id}
        now = time.time()
        with self.lock:
            try:
                self.commits.add_encoded(bytes.fromhex(hex), now=now, tip_height=status.height, expected_task_id=expected)
            except MempoolReject as exc:
                raise self._reject(exc) from None
        commit = self.commits.get_commits(status.height + 1)[-1]
        self.commit_times.append((commit.height, commit.slot, now))
        return {"accepted": True}

    def rpc_submitclaim(self, hex):
        with self.lock:
            try:
                block_hash = self.claims.add_encoded(bytes.fromhex(hex), now=time.time(), tip_hash=self.store.tip_hash)
            except MempoolReject as exc:
                raise self._reject(exc) from None
        threading.Thread(target=self._verify_and_connect, args=(self.claims.get(block_hash).block,),
                         daemon=True).start()
        return {"accepted": True}

    def _verify_and_connect(self, block: Block) -> None:
        """What a full node does with the best claim: fetch its blobs, re-check the work, connect."""
        try:
            state = self.store.state()
            record = state.get_task(block.header.task_id)
            task = None if record is None else record.submission
            for digest in get_blob_digests(task, block.header.task_mode, block):
                if not self.blobs.has(digest):
                    self.blobs.fetch(f"{block.body.work.links[0]}/blob/{digest.hex()}", digest)
            verify_block_work(block, state, self.params, self.blobs, self.root / "verify")
            with self.lock:
                self.store.submit_block(block)
                self.txpool.remove_for_block(block, self.store.state())
            self.connected.append(block)
        except (InvalidBlock, BlobError) as exc:
            self.rejected.append(str(exc))
        finally:
            self.block_event.set()

    # -- helpers for tests ---------------------------------------------------------------
    def mine_placeholder_block(self, miner: KeyPair, slot: int) -> Block:
        """A structurally valid block with made-up work (no Dice check), carrying the pending transactions."""
        with self.lock:
            state = self.store.state()
            block = make_next_block(state, self.params, miner, transactions=tuple(self.txpool.select_for_block(state)),
                                    slot=slot)
            self.store.submit_block(block)
            self.txpool.remove_for_block(block, self.store.state())
        return block

    def wait_for_block(self, timeout: float) -> None:
        if not self.block_event.wait(timeout):
            raise AssertionError("no claim was verified in time")
        self.block_event.clear()


def make_params(genesis_time: int, *funded: KeyPair, phase1: int = 8, phase2: int = 4) -> ChainParams:
    allocations = tuple(Allocation(k.public_key, 1000 * COIN) for k in funded)
    return make_devnet_params(genesis_time=genesis_time, allocations=allocations,
                              phase1_seconds=phase1, phase2_seconds=phase2)


@pytest.fixture
def harness_factory(tmp_path):
    made: list[NodeHarness] = []

    def make(params: ChainParams) -> NodeHarness:
        h = NodeHarness(tmp_path / f"node{len(made)}", params)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


MINER = KeyPair.from_seed(bytes(range(32)))

# --------------------------------------------------------------------------------------
# Pure planning
# --------------------------------------------------------------------------------------

P = make_params(1_700_000_000, phase1=20, phase2=10)


def test_train_mode_waits_for_the_key_then_falls_back_to_the_standing_task():
    t0 = get_slot_start(P, 5)
    grace = P.key_grace_seconds
    assert plan.decide_train_mode(P, 5, t0 + 0.1, standing=False, train_key_ok=False) is plan.WAIT
    assert plan.decide_train_mode(P, 5, t0 + grace - 0.01, standing=False, train_key_ok=False) is plan.WAIT
    assert plan.decide_train_mode(P, 5, t0 + grace, standing=False, train_key_ok=False) == MODE_NO_TRAIN_KEY
    assert plan.decide_train_mode(P, 5, t0 + 0.1, standing=False, train_key_ok=True) == MODE_NORMAL
    # The standing task needs no key, and a late key after the fallback point still counts.
    assert plan.decide_train_mode(P, 5, t0, standing=True, train_key_ok=False) == MODE_NORMAL
    assert plan.decide_train_mode(P, 5, t0 + 100, standing=False, train_key_ok=True) == MODE_NORMAL


def test_score_mode_waits_for_the_test_key_then_scores_on_the_training_set():
    t2 = get_phase2_start(P, 5)
    grace = P.key_grace_seconds
    assert plan.decide_score_mode(P, 5, t2 + 0.1, MODE_NORMAL, False, test_key_ok=False) is plan.WAIT
    assert plan.decide_score_mode(P, 5, t2 + grace, MODE_NORMAL, False, test_key_ok=False) == MODE_NO_TEST_KEY
    assert plan.decide_score_mode(P, 5, t2 + 0.1, MODE_NORMAL, False, test_key_ok=True) == MODE_NORMAL
    # Mode 1 and the standing task are settled in Phase 1.
    assert plan.decide_score_mode(P, 5, t2, MODE_NO_TRAIN_KEY, False, test_key_ok=False) == MODE_NO_TRAIN_KEY
    assert plan.decide_score_mode(P, 5, t2, MODE_NORMAL, True, test_key_ok=False) == MODE_NORMAL


def test_key_reveals_follow_the_mode():
    tid, k1, k2 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert [r.which for r in plan.get_key_reveals(tid, False, MODE_NORMAL, k1, k2)] == [KEY_TRAIN, KEY_TEST]
    assert [r.key for r in plan.get_key_reveals(tid, False, MODE_NO_TEST_KEY, k1, None)] == [k1]
    assert plan.get_key_reveals(tid, False, MODE_NO_TRAIN_KEY, None, None) == ()
    assert plan.get_key_reveals(tid, True, MODE_NORMAL, None, None) == ()
    assert plan.get_work_task_id(P, tid, MODE_NO_TRAIN_KEY) == P.standing_task.task_id
    assert plan.get_work_task_id(P, tid, MODE_NO_TEST_KEY) == tid


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
def test_miner_cli_mines_a_standing_task_block(harness_factory, tmp_path):
    """`pouw miner start --once`: commit in Phase 1, claim in Phase 2, block verified and connected."""
    from pouw.cli import main

    params = make_params(int(time.time()) + 1)
    node = harness_factory(params)
    result = CliRunner().invoke(main, [
        "miner", "start", "--node", node.url, "--node-datadir", str(node.datadir), "--key-seed", bytes(range(32)).hex(),
        "--datadir", str(tmp_path / "miner"), "--threads", "2", "--once", "--json",
    ])
    assert result.exit_code == 0, result.output
    node.wait_for_block(30)
    assert node.rejected == []
    [block] = node.connected
    assert block.header.height == 1 and block.header.miner == MINER.public_key
    assert block.header.task_id == params.standing_task.task_id and block.header.task_mode == MODE_NORMAL
    # The commit arrived in Phase 1 of the block's slot, the claim's timestamp lies in its Phase 2.
    [(height, slot, at)] = node.commit_times
    assert (height, slot) == (1, block.header.slot)
    assert get_slot_start(params, slot) <= at < get_phase2_start(params, slot)
    assert get_phase2_start(params, slot) <= block.header.timestamp < get_slot_start(params, slot + 1)
    assert block.header.dice_ppm > 500_000
    assert node.store.state().get_account(MINER.public_key).balance == params.block_reward
    events = [line for line in result.output.splitlines() if line.startswith("{")]
    assert any('"event": "claim"' in line for line in events)


@pytest.mark.timeout(120)
def test_miner_mines_a_published_task_and_the_publisher_gets_the_model(harness_factory, tmp_path, monkeypatch):
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

    # Slots 0 and 1 get placeholder blocks (block 1 carries the task, so it is scheduled for height 3);
    # the miner then mines height 3 in slot 2, which starts a few seconds from now.
    L = 12
    genesis = int(time.time()) - 2 * L + 7
    params = make_devnet_params(genesis_time=genesis, phase1_seconds=8, phase2_seconds=4,
                                allocations=(Allocation(publisher, 1000 * COIN),))
    node = harness_factory(params)
    spec = ModelSpec("unet2d", 1, 2, 4, (32, 32))
    dataset = write_synthetic_dataset_dir(tmp_path / "ds", b"\x07" * 32, 16, 8, spec)
    task_cli = click.Group("task", commands={c.name: c for c in COMMANDS})
    common = ["--node", node.url, "--datadir", str(node.datadir)]
    res = runner.invoke(task_cli, ["submit", str(dataset), "--reward", "25", "--model", "unet2d", "--base-filters", "4",
                                   "--patch-size", "32,32", "--batch-size", "4", "--lr", "0.01", "--title", "circles",
                                   "--key-file", str(key_file), "--json", *common])
    assert res.exit_code == 0, res.output
    task_id = bytes.fromhex(json.loads(res.output)["task_id"])
    assert node.keys[task_id]  # the node holds the keys to reveal
    node.mine_placeholder_block(KeyPair.from_seed(b"\x09" * 32), slot=0)
    node.mine_placeholder_block(KeyPair.from_seed(b"\x09" * 32), slot=1)
    assert node.store.state().get_status().scheduled[0].task_id == task_id
    listing = runner.invoke(task_cli, ["list", *common])
    assert "scheduled" in listing.output and "circles" in listing.output

    reporter = Reporter(stream=open(tmp_path / "miner.log", "w"))
    config = MinerConfig(keypair=MINER, workdir=tmp_path / "miner", threads=2, progress=False)
    rpc = NodeLink(RpcClient(node.url, datadir=node.datadir), reporter)
    [claim] = Miner(rpc, config, reporter).run(once=True)
    assert claim.task_id == task_id and claim.mode == MODE_NORMAL and claim.height == 3
    assert reporter.events("prefetched") and reporter.events("train-key")
    node.wait_for_block(30)
    assert node.rejected == []
    state = node.store.state()
    assert state.get_account(MINER.public_key).balance == params.block_reward + 25 * COIN
    assert [r.which for r in node.connected[0].body.key_reveals] == [KEY_TRAIN, KEY_TEST]

    status = runner.invoke(task_cli, ["status", task_id.hex(), *common])
    assert status.exit_code == 0 and "mined" in status.output
    out = tmp_path / "results"
    res = runner.invoke(task_cli, ["results", task_id.hex(), "--out", str(out), "--overlays", "2", "--json", *common])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert abs(summary["test_dice_ppm"] - claim.dice_ppm) <= params.dice_tolerance_ppm
    assert (out / "model.pouw").stat().st_size > 0 and (out / "dice.png").exists()
    assert len(list((out / "overlays").glob("*.png"))) == 2
