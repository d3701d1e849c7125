"""Several real full nodes and real miners on 127.0.0.1: mining, agreement, misbehaving miners, splits.

The in-process tests run FullNode objects (real libp2p hosts, LevelDB, RPC
servers, blob servers) and real `Miner` loops in threads; the devnet test
runs every node and miner as a separate process, as `pouw devnet up` does.
Everything started is stopped in `finally` blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
from pathlib import Path

import pytest

from consensus.assemble import BlockTemplate, complete_block, make_commit
from consensus.clock import get_phase2_start
from consensus.forkchoice import is_better
from consensus.genesis import COIN, make_devnet_params
from consensus.rules import compute_body_root, compute_work_payload, get_train_data_digest
from fullnode.config import NodeConfig
from fullnode.node import FullNode
from miner.events import Reporter
from miner.loop import Miner, MinerConfig
from miner.node import NodeLink
from pouw.encoding import decode, encode
from pouw.keys import KeyPair
from pouw.rpc import RpcClient, RpcError
from pouw.types import MODE_NO_TRAIN_KEY, Allocation, BlobRef, Block, CheckpointRef, Claim, TaskSubmission, WorkProof

pytestmark = pytest.mark.slow


def key(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(f"multinode/{name}".encode()).digest())


HONEST, LIAR, THIEF, PUBLISHER, OTHER = (key(n) for n in ("honest", "liar", "thief", "publisher", "other"))


def make_params(phase1: int, phase2: int, margin: int = 8, **changes):
    funded = (HONEST, LIAR, THIEF, PUBLISHER, OTHER)
    params = make_devnet_params(
        int(time.time()) + margin,
        tuple(Allocation(k.public_key, 1_000 * COIN) for k in funded),
        phase1_seconds=phase1,
        phase2_seconds=phase2,
    )
    return dataclasses.replace(params, **changes)


def start_node(root: Path, name: str, params, bootstrap=(), claim_wait: float | None = None) -> FullNode:
    config = NodeConfig(datadir=root / name, params=params, rpc_port=0, bootstrap=list(bootstrap), claim_wait_seconds=claim_wait)
    lines: list[str] = []
    node = FullNode(config, log_fn=lines.append)
    node.lines = lines  # what the node logged, for assertions
    return node.start()


def client(node: FullNode) -> RpcClient:
    return RpcClient(node.rpc.url, datadir=node.datadir, timeout=30)


class LyingLink(NodeLink):
    """A miner's link that inflates the Dice of every claim and re-signs the block: a lying miner."""

    def __init__(self, *args, liar: KeyPair, params, **kwargs):
        super().__init__(*args, **kwargs)
        self.keypair = liar
        self.params = params
        self.lies: list[bytes] = []

    def call(self, method, *, until=None, **params):
        if method == "submitclaim":
            block = decode(Claim, bytes.fromhex(params["hex"])).block
            block = inflate_dice(block, self.keypair, 999_999)
            self.lies.append(block.hash)
            params = {"hex": encode(Claim(block)).hex()}
        return super().call(method, until=until, **params)


def inflate_dice(block: Block, keypair: KeyPair, dice: int) -> Block:
    """The same block claiming `dice`, with root, work signature and header signature made consistent."""
    work = dataclasses.replace(block.body.work, dice_ppm=dice)
    body = dataclasses.replace(block.body, work=work)
    h = block.header
    train = get_train_data_digest(h.prev_hash, h.task_mode, None)
    payload = compute_work_payload(work.model_digest, train, h.task_id, dice)
    header = dataclasses.replace(
        h, dice_ppm=dice, body_root=compute_body_root(body), size=len(encode(body)), work_signature=keypair.sign(b"work", payload)
    ).signed_by(keypair)
    return Block(header, body)


class MinerThread:
    """A real Miner mining against one node in a thread."""

    def __init__(self, node: FullNode, keypair: KeyPair, workdir: Path, link_cls=NodeLink, **link_kwargs):
        self.reporter = Reporter(as_json=True, stream=io.StringIO())
        self.link = link_cls(client(node), self.reporter, **link_kwargs)
        config = MinerConfig(keypair=keypair, workdir=workdir, threads=1, progress=False)
        self.miner = Miner(self.link, config, self.reporter)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.miner.run, kwargs={"stop": self.stop_event}, daemon=True)

    def start(self) -> "MinerThread":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def submit_silent_task(node: FullNode, tmp: Path, reward_coins: int) -> TaskSubmission:
    """Publish a task through `node` but never hand its keys to anyone: a publisher who never reveals."""
    from pouw.seg.data import write_synthetic_dataset_dir
    from pouw.seg.spec import ModelSpec, TrainSpec
    from pouw.taskpack import pack_dataset

    spec = ModelSpec(architecture="unet2d", in_channels=1, num_classes=2, base_filters=8, patch_size=(32, 32))
    write_synthetic_dataset_dir(tmp / "silent", b"silent-task", 16, 8, spec)
    packed = pack_dataset(tmp / "silent", tmp / "silent-packed", keystore_dir=tmp / "silent-keys")
    rpc = client(node)
    refs = []
    for blob in (packed.train, packed.test):
        imported = rpc.call("importblob", path=str(blob.path))
        refs.append(BlobRef(blob.digest, blob.size, blob.key_commitment, (imported["link"],)))
    nonce = rpc.call("getbalance", address=PUBLISHER.address)["pending_nonce"]
    task = TaskSubmission(
        publisher=PUBLISHER.public_key,
        reward=reward_coins * COIN,
        fee=10_000,
        nonce=nonce,
        model=spec,
        train=TrainSpec(learning_rate=0.01, batch_size=8, loss="dice", optimizer="adam", max_epochs=20),
        train_blob=refs[0],
        test_blob=refs[1],
        title="a task whose keys never come",
    ).signed_by(PUBLISHER)
    rpc.call("sendtx", hex=encode(task).hex())
    return task


def test_liars_thieves_late_commits_and_a_silent_publisher(tmp_path):
    params = make_params(phase1=12, phase2=8)
    nodes, miners = [], []
    try:
        a = start_node(tmp_path, "a", params)
        nodes.append(a)
        b = start_node(tmp_path, "b", params, a.p2p_addrs(), claim_wait=6.5)
        nodes.append(b)
        silent = submit_silent_task(a, tmp_path, reward_coins=60)
        publisher_start = 1_000 * COIN
        miners.append(MinerThread(a, HONEST, tmp_path / "honest").start())
        liar = MinerThread(b, LIAR, tmp_path / "liar", LyingLink, liar=LIAR, params=params).start()
        miners.append(liar)

        # In Phase 2 of the first slot the honest miner claims in, try the thief's and the latecomer's
        # tricks on node b (which gathers claims until late in Phase 2, so the height is still open).
        def honest_claims():
            return [c.block for c in b.core.claims.ranked() if c.block.header.miner == HONEST.public_key]

        wait_until(lambda: honest_claims(), 120, "the honest claim")
        honest_block = honest_claims()[0]
        height, slot = honest_block.header.height, honest_block.header.slot
        rpc = client(b)
        template = decode(BlockTemplate, bytes.fromhex(rpc.call("getblocktemplate")["hex"]))
        assert template.height == height, "node b decided the height before the tricks could be tried"
        stolen = honest_block.body.work

        # Past Phase 1 and its clock-skew tolerance.
        wait_until(lambda: time.time() >= get_phase2_start(params, slot) + params.clock_skew_seconds + 0.5, 30, "skew to pass")
        late = make_commit(THIEF, height, slot, params.standing_task.task_id, stolen.model_digest, stolen.checkpoints)
        with pytest.raises(RpcError, match="wrong-phase"):
            rpc.call("submitcommit", hex=encode(late).hex())

        def claim_with(commit, work) -> Block:
            return complete_block(template, params, THIEF, slot=slot, timestamp=int(time.time()), commit=commit, work=work, task=None)

        with pytest.raises(RpcError, match="not-committed"):  # the stolen model under the thief's own (late) commit
            rpc.call("submitclaim", hex=encode(Claim(claim_with(late, stolen))).hex())
        with pytest.raises(RpcError, match="commit-mismatch"):  # the stolen model under the honest miner's commit
            rpc.call("submitclaim", hex=encode(Claim(claim_with(honest_block.body.commit, stolen))).hex())
        fresh = WorkProof(b"\x42" * 32, 1000, (CheckpointRef(b"\x43" * 32, 1000, 1000, 0),), ("http://127.0.0.1:9",), 990_000)
        uncommitted = make_commit(THIEF, height, slot, params.standing_task.task_id, fresh.model_digest, fresh.checkpoints)
        with pytest.raises(RpcError, match="not-committed"):  # a model never committed at all
            rpc.call("submitclaim", hex=encode(Claim(claim_with(uncommitted, fresh))).hex())

        task_height = 3 + params.task_maturity_blocks  # included in block 1, selected by block 1 + M
        wait_until(lambda: all(n.chain.tip_height >= task_height for n in nodes), 400, "the silent task's height on both nodes")
        for m in miners:
            m.stop()
        wait_until(lambda: len({n.chain.tip_hash for n in nodes}) == 1, 30, "agreement")

        # The liar claimed more than the honest miner every time and never won.
        assert liar.link.lies, "the lying miner sent no claim"
        for height in range(1, task_height + 1):
            assert a.chain.get_block_at(height).header.miner == HONEST.public_key
        reasons = " ".join(a.lines + b.lines)
        assert "claimed Dice 999999 ppm, measured" in reasons
        assert a.chain.get_meta().state_checksum == b.chain.get_meta().state_checksum

        # The silent publisher's task: its training key never reached the chain, so its height was mined on the
        # standing task (mode 1) and the escrow forfeited what the block minted; the rest went back.
        block = a.chain.get_block_at(task_height)
        assert block.header.task_id == silent.task_id and block.header.task_mode == MODE_NO_TRAIN_KEY
        balance = a.chain.state().get_account(PUBLISHER.public_key).balance
        assert balance == publisher_start - silent.fee - params.block_reward
        assert client(a).call("gettask", task_id=silent.task_id.hex())["status"] == "forfeited"
    finally:
        for m in miners:
            m.stop()
        for n in reversed(nodes):
            n.stop()


def test_network_split_heals_by_fork_choice(tmp_path):
    # The split must stay within the finality window to heal by itself (a deeper one needs an operator:
    # tests/adversarial/test_forks.py); each side mines about two blocks before they meet.
    params = make_params(phase1=10, phase2=6, finality_depth=6, task_maturity_blocks=7)
    nodes, miners = [], []
    try:
        a = start_node(tmp_path, "a", params)
        b = start_node(tmp_path, "b", params)  # no bootstrap: two separate networks
        nodes += [a, b]
        miners.append(MinerThread(a, HONEST, tmp_path / "ma").start())
        miners.append(MinerThread(b, OTHER, tmp_path / "mb").start())
        wait_until(lambda: a.chain.tip_height >= 2 and b.chain.tip_height >= 2, 150, "two blocks on each side")
        for m in miners:
            m.stop()
        time.sleep(1)
        assert a.chain.get_block_at(1).hash != b.chain.get_block_at(1).hash, "the split did not fork"
        score_a = a.chain.get_index(a.chain.tip_hash).score
        score_b = b.chain.get_index(b.chain.tip_hash).score
        winner = score_a if is_better(score_a, score_b) else score_b
        b.p2p_thread.call(b.p2p.connect, a.p2p_addrs()[0])
        wait_until(lambda: a.chain.tip_hash == b.chain.tip_hash, 60, "the fork to heal")
        assert a.chain.tip_hash == winner.tip_hash
        assert a.chain.get_meta().state_checksum == b.chain.get_meta().state_checksum
    finally:
        for m in miners:
            m.stop()
        for n in reversed(nodes):
            n.stop()


def test_devnet_processes_agree_pay_and_a_late_node_syncs(tmp_path):
    from pouw.devnet import Devnet, DevnetOptions

    options = DevnetOptions(root=tmp_path / "net", nodes=3, miners=2, blocks=6, phase1=15, phase2=8, tasks=(60, 90), timeout=600)
    with Devnet(options, emit=lambda line: None) as net:
        net.start()
        task_ids = net.submit_tasks()
        blocks = net.watch(lambda b: None)
        net.stop_miners()
        tips = net.tips(settle_seconds=20)
        assert len(set(tips)) == 1, f"nodes disagree: {tips}"
        infos = [net.client(i).call("getinfo") for i in range(3)]
        assert len({i["state_checksum"] for i in infos}) == 1

        # Blocks 1-5 mine the standing task; block 6 the higher-reward task, submitted before block 1 and selected
        # once mature (block 1 + M selects height 3 + M).
        rpc = net.client(0)
        task_height = 3 + net.params.task_maturity_blocks
        chain = [rpc.call("getblock", ref=h) for h in range(1, task_height + 1)]
        assert [c["header"]["task_id"] for c in chain[:-1]] == [params_standing(net)] * (task_height - 1)
        assert chain[-1]["header"]["task_id"] == task_ids[1] and chain[-1]["header"]["task_mode"] == 0

        # Each miner's coins (spendable plus bonded) are its allocation plus, per block won, the fees and either the
        # block reward (standing task) or the task's escrow (a published task mints nothing), less the fees of its
        # own transactions (the claim bond it posts at start).
        whole = [rpc.call("getblock", ref=h) for h in range(1, rpc.call("getinfo")["height"] + 1)]
        expected: dict[str, int] = {}
        for c in whole:
            pay = sum(tx["fee"] for tx in c["transactions"])
            pay += 90 * COIN if c["header"]["task_id"] == task_ids[1] else net.params.block_reward
            expected[c["header"]["miner"]] = expected.get(c["header"]["miner"], 1_000 * COIN) + pay
        for c in whole:
            for tx in c["transactions"]:
                if tx["from"] in expected:
                    expected[tx["from"]] -= tx["fee"]
        for address, coins in expected.items():
            acct = rpc.call("getbalance", address=address)
            assert acct["balance"] + acct["bonded"] + acct["unbonding"] == coins

        # A node joining now syncs everything and re-validates it (Dice recomputed for every block).
        late_dir = net.root / "late"
        proc = net._spawn("late", ["node", "start", "--datadir", str(late_dir), "--params", str(net.root / "params.json"),
                                   "--rpc-port", "0", "--bootstrap", net.node_info[0]["p2p_addrs"][0]])
        info = net._wait_node_file(late_dir, proc)
        late = RpcClient(info["rpc_url"], datadir=late_dir, timeout=30)
        wait_until(lambda: late.call("getinfo")["tip"] == tips[0], 120, "the late node to sync")
        assert late.call("getinfo")["state_checksum"] == infos[0]["state_checksum"]
        assert "rejected" not in proc.log_path.read_text()
        assert len(blocks) == 6


def params_standing(net) -> str:
    return net.params.standing_task.task_id.hex()
