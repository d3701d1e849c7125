"""The full node: chain database, pools, gossip, sync, Phase-2 claim verification, blob serving, RPC.

Threads and who may touch what:
  * the p2p thread runs the libp2p host (trio). Gossip validators there only
    decode and check signatures; everything that needs the chain goes to
    the worker queue, so a long verification never stalls the network.
  * one worker thread applies all chain-changing work in order: pool
    admissions, blocks, claim verification, sync. It holds `lock` while it
    touches the store or the pools.
  * the phase thread watches the clock: reveals keys it holds, schedules
    claim verification in Phase 2, and syncs with peers now and then.
  * RPC request threads read the store directly (LevelDB reads are safe)
    and take `lock` for the pools.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import trio

from consensus.assemble import BlockTemplate, make_block_template
from consensus.clock import PHASE_1, PHASE_2, get_phase2_start, get_phase_point, get_slot_start
from consensus.forkchoice import is_better
from consensus.rules import is_high_accuracy
from consensus.sigcheck import SignatureChecker
from consensus.state import State
from consensus.transition import InvalidBlock
from consensus.work import get_blob_digests, verify_block_work
from fullnode.config import VERIFY_HIGH, NodeConfig, load_or_create_p2p_seed, write_node_file
from fullnode.explorer import ExplorerServer  # [issue 11]
from fullnode.metrics import NodeMetrics  # [issue 11]
from fullnode.messages import (
    BLOCKS_PROTOCOL,
    MAX_SYNC_BLOCKS,
    MAX_SYNC_RESPONSE,
    STATUS_PROTOCOL,
    BlocksRequest,
    BlocksResponse,
    StatusMessage,
    get_topic,
)
from mempool.claimpool import ClaimPool
from mempool.commitpool import CommitPool
from mempool.errors import MempoolReject
from mempool.txpool import TxPool, decode_transaction
from pouw.blobcrypt import is_key_for
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobError, BlobStore
from pouw.encoding import DecodeError, decode, encode
from pouw.p2p.node import P2PNode, Verdict
from pouw.p2p.thread import P2PThread
from pouw.store import ChainStore
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NORMAL,
    Block,
    Claim,
    Commit,
    KeyReveal,
    TaskSubmission,
)

log = logging.getLogger("pouw.node")

SYNC_INTERVAL = 3.0
"""Seconds between status checks with peers."""
BAN_SECONDS = 600.0
MAX_REMEMBERED_REJECTIONS = 10_000


@dataclass
class KeyBook:
    """Task keys this node has seen revealed, and the keys it reveals for its publishers."""

    seen: dict[bytes, dict[int, tuple[bytes, float]]] = field(default_factory=dict)
    """task id -> which -> (key, first seen time)."""
    mine: dict[bytes, dict[int, bytes]] = field(default_factory=dict)
    """task id -> which -> key the node must reveal at its moment."""
    published: set[tuple[bytes, int]] = field(default_factory=set)
    """(task id, which) already revealed by this node."""

    def get(self, task_id: bytes, which: int) -> bytes | None:
        """A seen key, if any."""
        entry = self.seen.get(task_id, {}).get(which)
        return None if entry is None else entry[0]


class FullNode:
    """One full node. `start()` opens everything; `stop()` closes it cleanly."""

    def __init__(self, config: NodeConfig, *, log_fn: Callable[[str], None] | None = None):
        self.config = config
        self.params = config.params
        self.datadir = Path(config.datadir)
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.log = log_fn or (lambda msg: log.info(msg))
        self.lock = threading.RLock()
        self.sigcheck = SignatureChecker()
        self.blobs = BlobStore(self.datadir / "blobs")
        self.workdir = self.datadir / "work"
        self.workdir.mkdir(exist_ok=True)
        self.store = ChainStore(self.datadir / "chain", self.params, verify_work=self._verify_work, sigcheck=self.sigcheck)
        self.txpool = TxPool(self.params)
        self.commits = CommitPool(self.params)
        self.claims = ClaimPool(self.params, self.commits)
        self.keys = KeyBook()
        self.peer_blob_urls: dict[str, str] = {}
        self.jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.p2p: P2PNode | None = None
        self.p2p_thread: P2PThread | None = None
        self.blob_server: BlobServer | None = None
        self.rpc = None
        self._verified_slot = -1
        """The last slot whose Phase-2 claim verification was started by the clock."""
        self._rejected_blocks: OrderedDict[bytes, str] = OrderedDict()
        """Why recent blocks were rejected (bounded: peers can make invalid blocks cheaply)."""
        # [issue 11] explorer and metrics: fullnode/explorer.py, fullnode/metrics.py
        self.metrics = NodeMetrics()
        self.metrics_server = None
        self.explorer = None
        # [/issue 11]

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> "FullNode":
        """Start the blob server, the p2p host, the worker and phase threads, and the RPC server."""
        from fullnode.rpcapi import make_handlers
        from pouw.rpc import RpcServer

        cfg = self.config
        self.blob_server = BlobServer(self.blobs, host=cfg.host, port=cfg.blob_port).start()
        self.p2p = P2PNode(load_or_create_p2p_seed(self.datadir), host=cfg.host, port=cfg.p2p_port, bootstrap=cfg.bootstrap)
        self._register_p2p(self.p2p)
        self.p2p_thread = P2PThread(self.p2p).start()
        for target, name in ((self._worker_loop, "pouw-worker"), (self._phase_loop, "pouw-phase")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.rpc = RpcServer(make_handlers(self), host=cfg.host, port=cfg.rpc_port, datadir=self.datadir).start()
        # [issue 11] explorer and metrics, each off unless its port is configured
        self.metrics.bind(tip_height=lambda: self.store.tip_height, peers=self._count_peers, mempool_size=lambda: len(self.txpool))
        if cfg.metrics_port is not None:
            self.metrics_server = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
        if cfg.explorer_port is not None:
            self.explorer = ExplorerServer(
                self.store, self.params, self.blobs, self.datadir / "explorer", host=cfg.explorer_host, port=cfg.explorer_port
            ).start()
        # [/issue 11]
        write_node_file(self.datadir, self.describe())
        self.log(f"node started: network {self.params.name}, height {self.store.tip_height}, rpc {self.rpc.url}, p2p {self.p2p_addrs()[0] if self.p2p_addrs() else '-'}")
        return self

    def stop(self) -> None:
        """Stop every thread and close the database."""
        self._stop.set()
        self.jobs.put(None)
        # [issue 11] the explorer reads the store: it stops before the store closes
        if self.explorer is not None:
            self.explorer.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        # [/issue 11]
        if self.rpc is not None:
            self.rpc.stop()
        for thread in self._threads:
            thread.join(30)
        if self.p2p_thread is not None:
            self.p2p_thread.stop()
        if self.blob_server is not None:
            self.blob_server.stop()
        self.sigcheck.close()
        with self.lock:
            self.store.close()
        (self.datadir / "node.json").unlink(missing_ok=True)
        self.log("node stopped")

    def describe(self) -> dict:
        """Where this node listens (written to node.json)."""
        return {
            "network": self.params.name,
            "chain_id": self.params.chain_id.hex(),
            "rpc_url": self.rpc.url if self.rpc else None,
            "blob_url": self.blob_server.url if self.blob_server else None,
            "p2p_addrs": self.p2p_addrs(),
            "pid": os.getpid(),
            "explorer_url": self.explorer.url if self.explorer else None,  # [issue 11]
            "metrics_url": self.metrics_server.url if self.metrics_server else None,  # [issue 11]
        }

    def _count_peers(self) -> int:  # [issue 11] the peers gauge
        return len(self.p2p_thread.call_sync(self.p2p.connected_peers)) if self.p2p_thread else 0

    def p2p_addrs(self) -> list[str]:
        """The libp2p multiaddrs peers can dial."""
        return self.p2p.listen_addrs if self.p2p is not None else []

    # --- p2p wiring --------------------------------------------------------------
    def _register_p2p(self, node: P2PNode) -> None:
        chain_id = self.params.chain_id
        validators = {
            "tx": self._check_tx_message,
            "commit": self._check_commit_message,
            "claim": self._check_claim_message,
            "key": self._check_key_message,
            "block": self._check_block_message,
        }

        async def subscribe_all() -> None:
            for name, check in validators.items():
                await node.subscribe(get_topic(chain_id, name), self._make_validator(name, check), None)

        trio.run(subscribe_all)  # subscriptions are registered before start and activated by it
        node.set_handler(STATUS_PROTOCOL, self._serve_status, max_request=64, max_response=4096)
        node.set_handler(BLOCKS_PROTOCOL, self._serve_blocks, max_request=64 * 40, max_response=MAX_SYNC_RESPONSE)

    def _make_validator(self, name: str, check: Callable[[bytes], Any]):
        def validate(peer, data: bytes):
            try:
                obj = check(data)
            except (DecodeError, MempoolReject, ValueError) as exc:
                log.debug("dropping %s from %s: %s", name, peer, exc)
                return Verdict.REJECT
            if obj is None:
                return Verdict.IGNORE
            self.jobs.put((name, obj, str(peer), time.time()))
            return Verdict.ACCEPT

        return validate

    def _check_tx_message(self, data: bytes):
        tx = decode_transaction(data, 1 << 20)
        if not tx.is_signature_valid():
            raise ValueError("bad signature")
        return tx

    def _check_commit_message(self, data: bytes):
        commit = decode(Commit, data, max_size=4096)
        if not commit.is_signature_valid():
            raise ValueError("bad signature")
        return commit

    def _check_claim_message(self, data: bytes):
        claim = decode(Claim, data)
        if not claim.block.header.is_signature_valid():
            raise ValueError("bad signature")
        return claim

    def _check_key_message(self, data: bytes):
        reveal = decode(KeyReveal, data, max_size=256)
        if reveal.which not in (KEY_TRAIN, KEY_TEST):
            raise ValueError("unknown key kind")
        return None if self.keys.get(reveal.task_id, reveal.which) is not None else reveal

    def _check_block_message(self, data: bytes):
        block = decode(Block, data)
        if self.store.get_index(block.hash) is not None:
            return None
        if not block.header.is_signature_valid():
            raise ValueError("bad signature")
        return block

    def publish(self, name: str, data: bytes) -> None:
        """Gossip `data` on topic `name` (from any thread)."""
        if self.p2p_thread is None:
            return
        try:
            self.p2p_thread.call(self.p2p.publish, get_topic(self.params.chain_id, name), data)
        except Exception as exc:  # a node with no peers yet is normal
            log.debug("publish %s failed: %s", name, exc)

    def _penalize(self, peer: str | None, reason: str) -> None:
        if peer and self.p2p_thread is not None:
            try:
                self.p2p_thread.call_sync(self.p2p.penalize, peer, reason)
            except Exception:
                pass

    # --- serving peers -------------------------------------------------------------
    def get_status_message(self) -> StatusMessage:
        """This node's status for peers."""
        tip = self.store.tip_hash
        return StatusMessage(
            self.params.chain_id, self.store.tip_height, tip, self.store.get_index(tip).score, self.blob_server.url if self.blob_server else ""
        )

    async def _serve_status(self, peer, data: bytes) -> bytes:
        return encode(await trio.to_thread.run_sync(self.get_status_message))

    async def _serve_blocks(self, peer, data: bytes) -> bytes:
        request = decode(BlocksRequest, data)
        return encode(await trio.to_thread.run_sync(self.get_blocks_after, request))

    def get_blocks_after(self, request: BlocksRequest) -> BlocksResponse:
        """Best-chain blocks after the newest locator hash on our best chain."""
        start = 0
        for block_hash in request.locator:
            index = self.store.get_index(block_hash)
            if index is not None and self.store.get_hash_at(index.height) == block_hash:
                start = index.height
                break
        out, size = [], 0
        for height in range(start + 1, min(self.store.tip_height, start + min(request.max_blocks, MAX_SYNC_BLOCKS)) + 1):
            raw = self.store.get_block_bytes(self.store.get_hash_at(height))
            if raw is None or size + len(raw) > MAX_SYNC_RESPONSE - 65536:
                break
            out.append(raw)
            size += len(raw)
        return BlocksResponse(tuple(out))

    def get_locator(self) -> tuple[bytes, ...]:
        """Hashes of our best chain at heights tip, tip-1, tip-2, tip-4, ... and genesis."""
        heights, step, h = [], 1, self.store.tip_height
        while h > 0 and len(heights) < 63:
            heights.append(h)
            if len(heights) >= 2:
                step *= 2
            h -= step
        heights.append(0)
        return tuple(self.store.get_hash_at(x) for x in heights)

    # --- the worker ------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.get()
            if job is None:
                break
            kind, obj, peer, seen_at = job
            try:
                handler = getattr(self, f"_handle_{kind}")
                handler(obj, peer, seen_at)
            except Exception as exc:  # a bad job must never kill the worker
                log.exception("worker job %s failed: %s", kind, exc)

    def _handle_tx(self, tx, peer, seen_at) -> None:
        with self.lock:
            try:
                self.txpool.add(tx, self.store.state())
            except MempoolReject as exc:
                if exc.reason in ("bad-signature", "malformed"):
                    self._penalize(peer, f"invalid transaction: {exc}")

    def _expected_work_tasks(self) -> set[bytes]:
        status = self.store.state().get_status()
        return {status.scheduled[0].task_id, self.params.standing_task.task_id}

    def _handle_commit(self, commit: Commit, peer, seen_at) -> None:
        with self.lock:
            try:
                self.commits.add(commit, now=seen_at, tip_height=self.store.tip_height, expected_task_id=self._expected_work_tasks())
            except MempoolReject as exc:
                log.debug("commit from %s refused: %s", peer, exc)

    def _handle_claim(self, claim: Claim, peer, seen_at) -> None:
        with self.lock:
            try:
                self.claims.add(claim, now=seen_at)
            except MempoolReject as exc:
                log.debug("claim from %s refused: %s", peer, exc)
                return
        self._request_claim_verification()

    def _handle_key(self, reveal: KeyReveal, peer, seen_at) -> None:
        self.accept_key_reveal(reveal, seen_at)

    def _handle_block(self, block: Block, peer, seen_at) -> None:
        point = get_phase_point(self.params, seen_at)
        if block.header.slot == point.slot and point.phase == PHASE_2:
            # A block of the slot being decided is a claim like any other: its model must have been committed.
            self._handle_claim(Claim(block), peer, seen_at)
            return
        self.submit_block(block, peer)

    def _handle_verify_claims(self, _obj, _peer, _seen_at) -> None:
        self.verify_claims(time.time())

    def _handle_sync(self, _obj, _peer, _seen_at) -> None:
        self.sync_with_peers()

    def _request_claim_verification(self) -> None:
        point = get_phase_point(self.params, time.time())
        if point.phase == PHASE_2 and time.time() >= self._claim_start(point.slot):
            self.jobs.put(("verify_claims", None, None, time.time()))

    # --- keys -----------------------------------------------------------------------------
    def get_task(self, task_id: bytes) -> TaskSubmission | None:
        """A task submission known to the chain or waiting in the mempool."""
        record = self.store.state().get_task(task_id)
        if record is not None:
            return record.submission
        with self.lock:
            return self.txpool.tasks.get(task_id)

    def accept_key_reveal(self, reveal: KeyReveal, seen_at: float) -> bool:
        """Record a revealed key that matches its task's commitment; returns True if new."""
        task = self.get_task(reveal.task_id)
        if task is None:
            return False
        blob = task.train_blob if reveal.which == KEY_TRAIN else task.test_blob
        if not is_key_for(reveal.key, blob.key_commitment):
            return False
        with self.lock:
            book = self.keys.seen.setdefault(reveal.task_id, {})
            if reveal.which in book:
                return False
            book[reveal.which] = (reveal.key, seen_at)
        return True

    def add_publisher_keys(self, task_id: bytes, train_key: bytes, test_key: bytes) -> None:
        """Keep a publisher's keys to reveal each at its moment."""
        with self.lock:
            self.keys.mine[task_id] = {KEY_TRAIN: train_key, KEY_TEST: test_key}
        store = self.datadir / "taskkeys"
        store.mkdir(mode=0o700, exist_ok=True)
        path = store / f"{task_id.hex()}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"train_key": train_key.hex(), "test_key": test_key.hex()}, fh)

    def _load_publisher_keys(self) -> None:
        folder = self.datadir / "taskkeys"
        if not folder.is_dir():
            return
        for path in folder.glob("*.json"):
            try:
                doc = json.loads(path.read_text())
                self.keys.mine[bytes.fromhex(path.stem)] = {KEY_TRAIN: bytes.fromhex(doc["train_key"]), KEY_TEST: bytes.fromhex(doc["test_key"])}
            except (ValueError, KeyError) as exc:
                self.log(f"ignoring damaged task key file {path}: {exc}")

    def _reveal_due_keys(self, now: float) -> None:
        """Reveal the keys this node holds for the task of the next height, each at its moment."""
        status = self.store.state().get_status()
        task_id = status.scheduled[0].task_id
        mine = self.keys.mine.get(task_id)
        if not mine:
            return
        point = get_phase_point(self.params, now)
        if point.slot < status.min_slot:
            return
        due = [KEY_TRAIN] + ([KEY_TEST] if point.phase == PHASE_2 else [])
        for which in due:
            if (task_id, which) in self.keys.published:
                continue
            reveal = KeyReveal(task_id, which, mine[which])
            self.keys.published.add((task_id, which))
            self.accept_key_reveal(reveal, now)
            self.publish("key", encode(reveal))
            self.log(f"revealed the {'training' if which == KEY_TRAIN else 'test'} key of task {task_id.hex()[:12]}")

    # --- the phase clock -----------------------------------------------------------------
    def _claim_start(self, slot: int) -> float:
        wait = self.config.claim_wait_seconds
        if wait is None:
            wait = self.params.phase2_seconds / 3
        return get_phase2_start(self.params, slot) + wait

    def _phase_loop(self) -> None:
        self._load_publisher_keys()
        next_sync = 0.0
        last_point = None
        while not self._stop.wait(0.2):
            now = time.time()
            try:
                self._reveal_due_keys(now)
            except Exception as exc:
                log.exception("key reveal failed: %s", exc)
            point = get_phase_point(self.params, now)
            if point.phase == PHASE_2 and now >= self._claim_start(point.slot) and point.slot != self._verified_slot:
                self._verified_slot = point.slot
                self.jobs.put(("verify_claims", None, None, now))
            if last_point is None or (point.slot, point.phase) != (last_point.slot, last_point.phase):
                last_point = point
                with self.lock:
                    keep = self.store.tip_height
                    self.commits.prune(keep)
                    self.claims.prune(keep)
            if now >= next_sync:
                next_sync = now + SYNC_INTERVAL
                self.jobs.put(("sync", None, None, now))

    # --- claims and blocks ---------------------------------------------------------------------
    def _preferred_mode_rank(self, claim: Claim) -> int:
        """0 for the mode this node's keys call for; claims in other modes are tried after."""
        header = claim.block.header
        if header.task_id == self.params.standing_task.task_id:
            return 0
        have = {w for w in (KEY_TRAIN, KEY_TEST) if self.keys.get(header.task_id, w) is not None}
        if have == {KEY_TRAIN, KEY_TEST}:
            return 0 if header.task_mode == MODE_NORMAL else 1
        return 0

    def verify_claims(self, now: float) -> Block | None:
        """Verify pooled claims of the current slot from the highest Dice down; connect the first valid one."""
        point = get_phase_point(self.params, now)
        with self.lock:
            ranked = [c for c in self.claims.ranked(slot=point.slot) if not self.claims.is_verified(c.block.hash)]
        ranked.sort(key=lambda c: (self._preferred_mode_rank(c), -c.block.header.dice_ppm, c.block.hash))
        for claim in ranked:
            block = claim.block
            with self.lock:
                if self.claims.get_rejection(block.hash) is not None:
                    continue
                current = self.store.get_hash_at(block.header.height)
                if current is not None:
                    current_dice = self.store.get_block(current).header.dice_ppm
                    if block.header.dice_ppm <= current_dice and current != block.hash:
                        return None  # we already hold a block at least as good for this height
            accepted = self.submit_block(block, None)
            if accepted or block.hash in self._rejected_blocks:
                self.metrics.record_claim(accepted)  # [issue 11] unfetchable claims are not judged
            with self.lock:
                if accepted:
                    self.claims.mark_verified(block.hash)
                else:
                    self.claims.mark_rejected(block.hash, self._rejected_blocks.get(block.hash, "invalid"))
            if accepted:
                return block
        return None

    def submit_block(self, block: Block, peer: str | None) -> bool:
        """Fetch what the block's verification needs, connect it if it wins, announce it; True if it is valid."""
        block_hash = block.hash
        if self.store.get_index(block_hash) is not None:
            return True
        if self.store.get_index(block.header.prev_hash) is None:
            # Its ancestors come with the next sync (which asks the peers with better chains).
            self.jobs.put(("sync", None, None, time.time()))
            return False
        try:
            self._fetch_for(block)
        except BlobError as exc:
            # Unavailable is not invalid: leave the block unjudged so a later sync can try again.
            self.log(f"cannot fetch the blobs of block {block.header.height} {block_hash.hex()[:12]} yet: {exc}")
            return False
        tip_before = self.store.tip_hash
        with self.lock:
            try:
                self.store.submit_block(block)
            except InvalidBlock as exc:
                self._rejected_blocks[block_hash] = str(exc)
                while len(self._rejected_blocks) > MAX_REMEMBERED_REJECTIONS:
                    self._rejected_blocks.popitem(last=False)
                self.log(f"rejected block {block.header.height} {block_hash.hex()[:12]} from miner {block.header.miner.hex()[:12]}: {exc}")
                self._penalize(peer, f"invalid block: {exc}")
                return False
            if self.store.tip_hash != tip_before:
                self._after_tip_change(tip_before)
        self.publish("block", encode(block))
        return True

    def _after_tip_change(self, old_tip: bytes) -> None:
        """Bring the pools in line with the new tip (called with the lock held)."""
        state = self.store.state()
        new_tip = self.store.get_tip()
        # Transactions of disconnected blocks go back to the pool; those now in the chain leave it.
        old_branch, fork = self.store.get_branch(old_tip)
        for block_hash in reversed(old_branch):
            self.txpool.readd_for_disconnect(self.store.get_block(block_hash), state)
        for height in range(self.store.get_index(fork).height + 1, new_tip.header.height + 1):
            self.txpool.remove_for_block(self.store.get_block_at(height), state)
        header = new_tip.header
        self.log(
            f"block {header.height} {new_tip.hash.hex()[:12]} task {header.task_id.hex()[:12]} mode {header.task_mode} "
            f"winner {header.miner.hex()[:12]} dice {header.dice_ppm / 1e6:.4f}"
        )

    def is_work_checked(self, block: Block) -> bool:
        """True when the verification policy (config.verify) recomputes this block's Dice."""
        return not (self.config.verify == VERIFY_HIGH and not is_high_accuracy(block, self.params))

    def _verify_work(self, block: Block, state: State) -> None:
        """The store's hook: recompute the Dice of a block about to be connected (policy: config.verify)."""
        if not self.is_work_checked(block):
            return
        started = time.monotonic()  # [issue 11]
        try:
            verify_block_work(block, state, self.params, self.blobs, self.workdir)
        finally:
            self.metrics.record_verification(time.monotonic() - started)  # [issue 11]

    def _fetch_for(self, block: Block) -> None:
        """Download the task and work blobs a block's verification needs."""
        if not self.is_work_checked(block):
            return
        header = block.header
        task = None if header.task_id == self.params.standing_task.task_id else self.get_task(header.task_id)
        links_by_digest: dict[bytes, list[str]] = {}
        if task is not None:
            for blob in (task.train_blob, task.test_blob):
                links_by_digest[blob.digest] = list(blob.links)
        for digest in get_blob_digests(task, header.task_mode, block):
            if self.blobs.has(digest):
                continue
            links = links_by_digest.get(digest, [])
            links += [urllib.parse.urljoin(base.rstrip("/") + "/", f"blob/{digest.hex()}") for base in block.body.work.links]
            links += [f"{url}/blob/{digest.hex()}" for url in self.peer_blob_urls.values()]
            last = None
            for link in links:
                try:
                    self.blobs.fetch(link, digest)
                    self.metrics.record_fetch(self.blobs.size(digest))  # [issue 11]
                    break
                except BlobError as exc:
                    last = exc
            else:
                raise BlobError(f"blob {digest.hex()[:16]} is not available from any link ({last})")

    # --- sync ------------------------------------------------------------------------------
    def sync_with_peers(self) -> None:
        """Ask each peer for its tip; fetch and connect blocks from any peer with a better chain."""
        if self.p2p_thread is None:
            return
        try:
            peers = self.p2p_thread.call_sync(self.p2p.connected_peers)
        except Exception:
            return
        for peer in peers:
            try:
                raw = self.p2p_thread.call(self.p2p.request, peer, STATUS_PROTOCOL, b"", 10.0)
                status = decode(StatusMessage, raw)
            except Exception as exc:
                log.debug("status from %s failed: %s", peer, exc)
                continue
            if status.chain_id != self.params.chain_id:
                self._ban(peer, "peer follows another network")
                continue
            if status.blob_url:
                self.peer_blob_urls[str(peer)] = status.blob_url
            our = self.store.get_index(self.store.tip_hash).score
            if is_better(status.score, our) and self.store.get_index(status.tip_hash) is None:
                self._sync_from(peer, status)

    def _ban(self, peer, reason: str) -> None:
        try:
            self.p2p_thread.call_sync(self.p2p.ban, peer, BAN_SECONDS, reason)
        except Exception:
            pass

    def _sync_from(self, peer, status: StatusMessage) -> None:
        started = time.time()
        start_height = self.store.tip_height
        while not self._stop.is_set():
            request = BlocksRequest(self.get_locator(), MAX_SYNC_BLOCKS)
            try:
                raw = self.p2p_thread.call(self.p2p.request, peer, BLOCKS_PROTOCOL, encode(request), 30.0)
                response = decode(BlocksResponse, raw, max_size=MAX_SYNC_RESPONSE)
            except Exception as exc:
                self.log(f"sync from {str(peer)[:16]} stopped: {exc}")
                return
            if not response.blocks:
                return
            progressed = False
            for data in response.blocks:
                try:
                    block = decode(Block, data)
                except DecodeError as exc:
                    self._ban(peer, f"sent an undecodable block: {exc}")
                    return
                if self.store.get_index(block.hash) is not None:
                    continue
                if not self.submit_block(block, str(peer)):
                    if block.hash in self._rejected_blocks:
                        self._ban(peer, f"sent an invalid block: {self._rejected_blocks[block.hash]}")
                    return
                progressed = True
            if self.store.tip_height >= status.height or not progressed:
                break
            self.log(f"sync: height {self.store.tip_height} of {status.height}")
        if self.store.tip_height != start_height:
            self.log(f"synced to height {self.store.tip_height} in {time.time() - started:.1f} s")

    # --- what RPC and miners ask --------------------------------------------------------------
    def get_block_template(self) -> BlockTemplate:
        """A template on the current tip with the best-paying valid transactions."""
        with self.lock:
            state = self.store.state()
            txs = self.txpool.select_for_block(state, self.params.max_block_transactions)
            return make_block_template(state, self.params, tuple(txs))

    def mining_info(self, now: float | None = None) -> dict:
        """What a miner needs to mine the next block (see docs/rpc.md)."""
        now = time.time() if now is None else now
        state = self.store.state()
        status = state.get_status()
        point = get_phase_point(self.params, now)
        slot = max(point.slot, status.min_slot)

        def task_info(task_id: bytes) -> dict:
            standing = task_id == self.params.standing_task.task_id
            task = None if standing else self.get_task(task_id)
            return {"task_id": task_id.hex(), "standing": standing, "task_hex": None if task is None else encode(task).hex()}

        current = task_info(status.scheduled[0].task_id)
        train_key = self.keys.get(status.scheduled[0].task_id, KEY_TRAIN)
        test_key = self.keys.get(status.scheduled[0].task_id, KEY_TEST)
        return {
            "height": status.height + 1,
            "prev_hash": status.tip_hash.hex(),
            "slot": slot,
            "phase": point.phase if slot == point.slot else PHASE_1,
            "phase_start": point.phase_start if slot == point.slot else float(get_slot_start(self.params, slot)),
            "phase_end": point.phase_end if slot == point.slot else float(get_phase2_start(self.params, slot)),
            "slot_start": float(get_slot_start(self.params, slot)),
            "slot_phase2_start": float(get_phase2_start(self.params, slot)),
            **current,
            "train_key": None if train_key is None else train_key.hex(),
            "test_key": None if test_key is None else test_key.hex(),
            "next": {"height": status.height + 2, **task_info(status.scheduled[1].task_id)},
            "blob_url": self.blob_server.url if self.blob_server else None,
        }
