"""The mining loop: follow the phases, train, commit, evaluate, claim.

One round per (height, slot), driven by the node's `getmininginfo` and the
chain's phase clock (docs/miner.md has the timeline):

  Phase 1  wait for the training key (grace `key_grace_seconds`), else mode 1
           on the standing task; train until t(s,b) minus a margin; commit.
  Phase 2  wait for the test key (same grace), else mode 2 scored on the
           training set; evaluate; build the block on `getblocktemplate`;
           claim.

The task's data is fetched the interval before (prefetch). If the tip moves
during a round, the round is abandoned and the loop follows the new tip.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from consensus.assemble import BlockTemplate, complete_block, make_commit
from consensus.clock import get_phase2_start, get_slot_start
from consensus.rules import compute_training_seed, get_work_task_id, is_key_for_task, is_standing_work
from consensus.transition import InvalidBlock
from consensus.work import WorkData, get_work_data, load_task_split, make_checkpoint_refs
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobError, BlobStore
from pouw.encoding import decode, encode
from pouw.keys import KeyPair
from pouw.rpc import RpcError
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NAMES,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_STALE,
    Block,
    Bond,
    ChainParams,
    Claim,
    Commit,
    WorkProof,
)

from miner import plan
from miner.events import Reporter
from miner.node import NodeGone, NodeLink
from miner.prefetch import Prefetcher


class Abandon(Exception):
    """The round cannot go on (tip moved, too late, node gone); the loop moves on."""


@dataclass(frozen=True)
class MinerConfig:
    """How the miner works; every field has a command-line option (docs/miner.md)."""

    keypair: KeyPair
    """The miner's key: it signs commits and blocks and receives the rewards."""
    workdir: Path
    """Holds the miner's blob store (task data, models, checkpoints) and decrypted datasets."""
    device: str = "cpu"
    """torch device to train on: "cpu" or "cuda:N"."""
    devices: tuple[str, ...] = ()
    """Devices to train one model on together (data parallel, pouw.seg.launch); empty: just `device`."""
    threads: int | None = None
    """CPU threads for training (None: all cores)."""
    margin: float | None = None
    """Seconds kept before t(s,b) for the commit (None: plan.compute_commit_margin)."""
    poll_seconds: float = 0.5
    """How often the node is asked for news while waiting."""
    progress: bool = True
    """Show the training progress bar (on stderr)."""
    blob_host: str = "127.0.0.1"
    blob_port: int = 0
    """Where the miner's own blob server listens (0: any free port)."""
    public_url: str | None = None
    """Base URL other nodes should fetch the miner's blobs from (default: the blob server's URL)."""
    bond: int = 10 * 100_000_000
    """Claim bond (base units) the miner keeps locked: at start it bonds what is missing (0: never bond)."""


@dataclass(frozen=True)
class RoundTimes:
    """The moments one round works to."""

    phase2: float
    """t(s,b): commits must be in before it."""
    slot_end: float
    """t(s+1,a): the claim must be in before it."""
    deadline: float
    """When training stops: t(s,b) minus the commit margin."""

    @classmethod
    def of(cls, params: ChainParams, slot: int, margin: float) -> "RoundTimes":
        return cls(get_phase2_start(params, slot), get_slot_start(params, slot + 1),
                   plan.compute_train_deadline(params, slot, margin))


@dataclass(frozen=True)
class RoundResult:
    """A claim the miner sent."""

    height: int
    slot: int
    task_id: bytes
    mode: int
    dice_ppm: int
    block_hash: bytes
    model_digest: bytes
    epochs: int


class Miner:
    """Mines against one node until stopped."""

    def __init__(self, node: NodeLink, config: MinerConfig, reporter: Reporter):
        self.node = node
        self.config = config
        self.reporter = reporter
        self.blobs = BlobStore(Path(config.workdir) / "blobs")
        self.datadir = Path(config.workdir) / "data"
        self.params: ChainParams | None = None
        self._done: set[tuple[int, int]] = set()
        self._seen_reconnects = 0
        self._outcomes: set[bytes] = set()

    # -- setup ---------------------------------------------------------------
    def load_params(self) -> ChainParams:
        """The node's chain parameters; a node that switched chains stops the miner."""
        params = decode(ChainParams, bytes.fromhex(self.node.call("getparams")["hex"]))
        if self.params is not None and params.chain_id != self.params.chain_id:
            raise RuntimeError("the node now follows another chain; restart the miner")
        self.params = params
        return params

    def _threads(self) -> int:
        return self.config.threads or os.cpu_count() or 1

    # -- the loop ------------------------------------------------------------
    def run(self, once: bool = False, stop: threading.Event | None = None) -> list[RoundResult]:
        """Mine until `stop` is set (or, with `once`, until the first claim); returns the claims sent."""
        stop = stop or threading.Event()
        params = self.load_params()
        results: list[RoundResult] = []
        server = BlobServer(self.blobs, self.config.blob_host, self.config.blob_port).start()
        self.link = self.config.public_url or server.url
        prefetcher = Prefetcher(self.blobs, self.reporter)
        self.reporter.emit(
            "start",
            f"mining on {params.name} as {self.config.keypair.address[:16]}… on {self.config.device}"
            f" ({self._threads()} threads); serving blobs at {self.link}",
            address=self.config.keypair.address, chain=params.name, device=self.config.device,
            threads=self._threads(), blob_url=self.link,
        )
        waiting_for: tuple[int, int] | None = None
        self._ensure_bond()
        try:
            while not stop.is_set():
                info = self._poll()
                prefetcher.want(info.current.task, info.blob_url)
                if info.next is not None:
                    prefetcher.want(info.next.task, info.blob_url)
                # A round starts as soon as the tip it builds on exists (often in Phase 2 of the slot before,
                # since the training key is on chain by then) and there is still time to train before t(s,b).
                key = (info.height, info.slot)
                if key not in self._done and self._has_time_to_train(info.slot):
                    self._done.add(key)
                    result = self.mine_round(info, info.slot, prefetcher)
                    if result is not None:
                        results.append(result)
                        if once:
                            # Keep serving the model until the nodes have decided the height.
                            self._linger(result, stop)
                            return results
                    continue
                if results and info.height == results[-1].height + 1 and not self._told(results[-1]):
                    self._report_outcome(results[-1], info)
                if waiting_for != key:
                    waiting_for = key
                    start = get_slot_start(params, info.slot + 1)
                    self.reporter.emit(
                        "waiting", f"height {info.height}: next round starts in {max(0.0, start - time.time()):.0f} s",
                        height=info.height, slot=info.slot + 1,
                    )
                stop.wait(self.config.poll_seconds)
        finally:
            prefetcher.close()
            server.stop()
        return results

    def _ensure_bond(self) -> None:
        """Bond what is missing of `config.bond` (claims of bonded miners are verified first; a false one forfeits it)."""
        if self.config.bond <= 0:
            return
        kp = self.config.keypair
        try:
            acct = self.node.call("getbalance", address=kp.address)
        except (RpcError, NodeGone) as exc:
            self.reporter.emit("error", f"cannot read the bond: {exc}", error=str(exc))
            return
        missing = self.config.bond - int(acct.get("bonded", 0))
        fee = 100_000
        if missing <= 0:
            return
        if int(acct["balance"]) < missing + fee:
            self.reporter.emit("bond", f"balance too low to bond {missing / 1e8:.8g} coins: claims are verified after bonded ones",
                               missing=missing)
            return
        tx = Bond(kp.public_key, missing, fee, int(acct["pending_nonce"])).signed_by(kp)
        try:
            self.node.call("sendtx", hex=encode(tx).hex())
        except (RpcError, NodeGone) as exc:
            self.reporter.emit("error", f"bond refused: {exc}", error=str(exc))
            return
        self.reporter.emit("bond", f"bonding {missing / 1e8:.8g} coins", amount=missing)

    def _has_time_to_train(self, slot: int) -> bool:
        margin = self.config.margin if self.config.margin is not None else plan.compute_commit_margin(self.params, self.node.rtt)
        return plan.can_start_training(time.time(), plan.compute_train_deadline(self.params, slot, margin))

    def _told(self, result: RoundResult) -> bool:
        told = result.block_hash in self._outcomes
        self._outcomes.add(result.block_hash)
        return told

    def _report_outcome(self, result: RoundResult, info: plan.MiningInfo) -> None:
        if info.prev_hash == result.block_hash:
            self.reporter.emit("won", f"block {result.block_hash.hex()[:16]} won height {result.height}",
                               height=result.height, block_hash=result.block_hash)
        else:
            self.reporter.emit("lost", f"height {result.height} went to block {info.prev_hash.hex()[:16]}",
                               height=result.height, block_hash=info.prev_hash)

    def _linger(self, result: RoundResult, stop: threading.Event) -> None:
        """Wait until the claimed height is decided (or the next Phase 1 is over), serving blobs meanwhile."""
        until = get_slot_start(self.params, result.slot + 1) + self.params.phase1_seconds
        while not stop.is_set() and time.time() < until:
            try:
                info = self._poll(until)
            except NodeGone:
                return
            if info.height > result.height:
                self._told(result)
                self._report_outcome(result, info)
                return
            stop.wait(self.config.poll_seconds)

    def _poll(self, until: float | None = None) -> plan.MiningInfo:
        info = plan.parse_mining_info(self.node.call("getmininginfo", until=until))
        if self.node.reconnects != self._seen_reconnects:
            self._seen_reconnects = self.node.reconnects
            self.load_params()
        return info

    def _poll_same(self, info: plan.MiningInfo, until: float) -> plan.MiningInfo:
        """Fresh mining info for the same tip; Abandon if the tip moved or the node stays away."""
        try:
            now = self._poll(until)
        except NodeGone as exc:
            raise Abandon(f"node unreachable: {exc}") from None
        if now.height != info.height or now.prev_hash != info.prev_hash:
            raise Abandon(f"tip moved to height {now.height - 1}")
        return now

    def _call(self, method: str, until: float, **params):
        try:
            return self.node.call(method, until=until, **params)
        except NodeGone as exc:
            raise Abandon(f"node unreachable: {exc}") from None

    # -- one round -------------------------------------------------------------
    def mine_round(self, info: plan.MiningInfo, slot: int, prefetcher: Prefetcher) -> RoundResult | None:
        """Train, commit, evaluate and claim for (info.height, slot); None if the round was abandoned."""
        tag = "standing task" if info.current.standing else f"task {info.current.task_id.hex()[:12]}"
        self.reporter.emit(
            "round", f"height {info.height} slot {slot}: phase 1, {tag}",
            height=info.height, slot=slot, task_id=info.current.task_id, standing=info.current.standing,
        )
        try:
            return self._mine_round(info, slot, prefetcher)
        except Abandon as exc:
            self.reporter.emit("abandon", f"height {info.height} slot {slot}: abandoned ({exc})",
                               height=info.height, slot=slot, reason=str(exc))
        except (RpcError, BlobError, OSError, ValueError) as exc:
            # One bad round (a damaged blob, a full disk, an odd node answer) must not stop the miner.
            self.reporter.emit("error", f"height {info.height} slot {slot}: failed: {type(exc).__name__}: {exc}",
                               height=info.height, slot=slot, error=f"{type(exc).__name__}: {exc}")
        return None

    def _mine_round(self, info: plan.MiningInfo, slot: int, prefetcher: Prefetcher) -> RoundResult:
        margin = self.config.margin if self.config.margin is not None else plan.compute_commit_margin(self.params, self.node.rtt)
        round_ = RoundTimes.of(self.params, slot, margin)
        mode, train_key = self._decide_train_mode(info, slot)
        data, mode, train_key = self._prepare_train_data(info, mode, train_key, prefetcher)
        result = self._train(info, data, mode, round_)
        info, commit = self._commit(info, slot, mode, result, round_)
        info, final, test_key, score_set = self._await_score_set(info, slot, mode, data, prefetcher, round_)
        dice = self._evaluate(result, data, score_set, final)
        block = self._claim(info, slot, commit, result, dice, final, test_key, round_)
        return RoundResult(info.height, slot, info.current.task_id, final, dice, block.hash, result.model_digest,
                           result.epochs)

    def _decide_train_mode(self, info: plan.MiningInfo, slot: int) -> tuple[int, bytes | None]:
        """The mode the chain dictates (the training key is a chain fact carried by the tip)."""
        task, standing = info.current.task, info.current.standing
        key_ok = task is not None and is_key_for_task(task, KEY_TRAIN, info.train_key)
        mode = plan.decide_train_mode(standing, slot == info.min_slot, key_ok)
        if not standing and mode == plan.MODE_NORMAL:
            self.reporter.emit("train-key", f"training key of task {info.current.task_id.hex()[:12]} is on chain",
                               task_id=info.current.task_id)
        elif mode == MODE_NO_TRAIN_KEY:
            self.reporter.emit("no-train-key", "the tip carries no training key: mining the standing task (mode 1)",
                               task_id=info.current.task_id)
        elif mode == MODE_STALE:
            self.reporter.emit("stale", "the task's slot has passed: mining the standing task (mode 3)",
                               task_id=info.current.task_id)
        return mode, (info.train_key if key_ok and mode == plan.MODE_NORMAL else None)

    def _prepare_train_data(self, info: plan.MiningInfo, mode: int, train_key: bytes | None,
                            prefetcher: Prefetcher) -> tuple[WorkData, int, bytes | None]:
        """The round's training data; a task whose data is unusable falls back to the standing task (mode 1)."""
        data = self._load_train_data(info, mode, train_key, prefetcher)
        if data is not None:
            return data, mode, train_key
        # The chain still dictates the mode: an unusable dataset cannot be scored, so the round is abandoned.
        raise Abandon("the task's data is unusable")

    def _train(self, info: plan.MiningInfo, data: WorkData, mode: int, round_: "RoundTimes"):
        """Train until the deadline (one model on every configured device); the model is stored beside its checkpoints, which the miner serves."""
        from pouw.seg.launch import train_on_devices
        from pouw.seg.train import TrainError

        now = time.time()
        if not plan.can_start_training(now, round_.deadline):
            raise Abandon(f"too late to train: phase 1 ends in {max(0.0, round_.phase2 - now):.1f} s")
        self.reporter.emit(
            "train", f"training {data.model.architecture} on {len(data.train_set)} images for {round_.deadline - now:.0f} s",
            mode=mode, images=len(data.train_set), seconds=round(round_.deadline - now, 1),
        )
        seed = compute_training_seed(info.prev_hash, self.config.keypair.public_key)
        try:
            result = train_on_devices(self.config.devices or (self.config.device,), data.model, data.train, data.train_set,
                                      seed, round_.deadline, self.blobs, progress=self.config.progress,
                                      num_threads=self._threads())
        except TrainError as exc:
            raise Abandon(f"training failed: {exc}") from None
        self.blobs.put_bytes(result.model_file)
        self.reporter.emit(
            "trained",
            f"trained {result.steps} steps in {len(result.checkpoint_digests) - 1} segments "
            f"(loss {result.segment_losses[-1]:.4f}, stopped: {result.stop_reason})",
            steps=result.steps, epochs=result.epochs, loss=result.segment_losses[-1], stop_reason=result.stop_reason,
            model_digest=result.model_digest,
        )
        return result

    def _commit(self, info: plan.MiningInfo, slot: int, mode: int, result, round_: "RoundTimes") -> tuple[plan.MiningInfo, Commit]:
        """Send the Phase-1 commit binding the model to this miner, inside Phase 1 of the slot (training may start earlier)."""
        self._sleep_until(get_slot_start(self.params, slot))
        info = self._poll_same(info, round_.phase2)
        work_task = get_work_task_id(self.params, info.current.task_id, mode)
        checkpoints = make_checkpoint_refs(result.checkpoint_digests, result.update_norms, self.blobs)
        commit = make_commit(self.config.keypair, info.height, slot, work_task, result.model_digest, checkpoints)
        try:
            self._call("submitcommit", round_.phase2, hex=encode(commit).hex())
        except RpcError as exc:
            raise Abandon(f"commit refused: {exc}") from None
        self.reporter.emit("commit", f"commit sent for height {info.height} ({round_.phase2 - time.time():.1f} s before phase 2)",
                           height=info.height, slot=slot, binding=commit.binding)
        return info, commit

    @staticmethod
    def _sleep_until(moment: float) -> None:
        while time.time() < moment:
            time.sleep(min(0.2, max(0.0, moment - time.time())))

    def _await_score_set(self, info: plan.MiningInfo, slot: int, mode: int, data: WorkData, prefetcher: Prefetcher,
                         round_: "RoundTimes"):
        """Phase 2: the test key decides how the model is scored (mode 0 on the test set, else mode 2 on the training set).

        The claim also waits, within the same grace, for the next task's
        training key, which the block must carry.
        """
        self._sleep_until(round_.phase2)
        info = self._poll_same(info, round_.slot_end)
        task, standing = info.current.task, info.current.standing
        nxt = info.next.task if info.next is not None else None
        while True:
            ok = task is not None and is_key_for_task(task, KEY_TEST, info.test_key)
            final = plan.decide_score_mode(self.params, slot, time.time(), mode, standing, ok)
            next_ok = nxt is not None and is_key_for_task(nxt, KEY_TRAIN, info.next_train_key)
            if final is not plan.WAIT and not plan.is_next_key_due(self.params, slot, time.time(), nxt, next_ok):
                break
            time.sleep(min(0.2, self.config.poll_seconds))
            info = self._poll_same(info, round_.slot_end)
        test_key = info.test_key if final == plan.MODE_NORMAL and not standing else None
        if final == MODE_NO_TEST_KEY:
            self.reporter.emit("no-test-key", "no test key in time: scoring on the training set (mode 2)")
        score_set = self._load_score_set(info, final, test_key, data, prefetcher)
        if score_set is None:
            final, test_key, score_set = MODE_NO_TEST_KEY, None, data.train_set
        return info, final, test_key, score_set

    def _evaluate(self, result, data: WorkData, score_set, mode: int) -> int:
        """The model's Dice on the scoring set, exactly as full nodes compute it."""
        from pouw.seg.dice import evaluate

        dice = evaluate(result.model_file, data.model, score_set, device="cpu").dice_ppm
        self.reporter.emit("dice", f"Dice {dice / 1e6:.4f} on {len(score_set)} images ({MODE_NAMES[mode]})",
                           dice_ppm=dice, mode=mode)
        return dice

    def _claim(self, info: plan.MiningInfo, slot: int, commit: Commit, result, dice: int, mode: int,
               test_key: bytes | None, round_: "RoundTimes") -> Block:
        """Build the block on the node's template (with the keys due in its slot) and send it as this miner's claim."""
        template = decode(BlockTemplate, bytes.fromhex(self._call("getblocktemplate", round_.slot_end)["hex"]))
        if template.height != info.height or template.prev_hash != info.prev_hash:
            raise Abandon(f"tip moved to height {template.height - 1}")
        checkpoints = make_checkpoint_refs(result.checkpoint_digests, result.update_norms, self.blobs)
        work = WorkProof(result.model_digest, len(result.model_file), checkpoints, (self.link,), dice)
        nxt = info.next.task if info.next is not None else None
        next_key = info.next_train_key if nxt is not None and is_key_for_task(nxt, KEY_TRAIN, info.next_train_key) else None
        block = complete_block(
            template, self.params, self.config.keypair, slot=slot,
            timestamp=plan.compute_block_timestamp(self.params, slot, time.time()),
            commit=commit, work=work, task=info.current.task, task_mode=mode,
            key_reveals=plan.get_key_reveals(info.current.task_id, mode, test_key,
                                             None if nxt is None else info.next.task_id, next_key),
        )
        try:
            self._call("submitclaim", round_.slot_end, hex=encode(Claim(block)).hex())
        except RpcError as exc:
            raise Abandon(f"claim refused: {exc}") from None
        self.reporter.emit(
            "claim", f"claim sent: block {block.hash.hex()[:16]} height {info.height} Dice {dice / 1e6:.4f}",
            height=info.height, slot=slot, block_hash=block.hash, dice_ppm=dice, mode=mode,
        )
        return block

    # -- data ------------------------------------------------------------------
    def _load_train_data(self, info: plan.MiningInfo, mode: int, train_key: bytes | None,
                         prefetcher: Prefetcher) -> WorkData | None:
        """The round's data (decrypting the training blob); None when the task's data is unusable."""
        task = info.current.task
        if not is_standing_work(task, mode) and not prefetcher.ensure(task.train_blob, info.blob_url):
            return None
        keys = {KEY_TRAIN: train_key} if train_key else {}
        try:
            return get_work_data(task, self.params, info.prev_hash, mode, keys, self.blobs, self.datadir)
        except InvalidBlock as exc:
            self.reporter.emit("bad-data", f"task data unusable: {exc}", error=str(exc))
            return None

    def _load_score_set(self, info: plan.MiningInfo, mode: int, test_key: bytes | None, data: WorkData,
                        prefetcher: Prefetcher):
        """The set the model is scored on; None when the test split cannot be had (the caller uses mode 2)."""
        if mode == MODE_NO_TEST_KEY:
            return data.train_set
        if data.score_set is not None:  # standing task
            return data.score_set
        task = info.current.task
        if not prefetcher.ensure(task.test_blob, info.blob_url):
            return None
        try:
            return load_task_split(task, KEY_TEST, test_key, self.blobs, self.datadir)
        except InvalidBlock as exc:
            self.reporter.emit("bad-data", f"test data unusable: {exc}", error=str(exc))
            return None
