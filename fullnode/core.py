"""The node core: the chain state, the pools and the key book behind one door.

Every input is a call that carries the current time and returns a verdict;
the core starts no thread and reads no clock. Gossip, RPC, sync and the
phase loop (fullnode/gossip.py, rpcapi.py, sync.py, node.py) are thin
adapters that decode, call the core and act on its answer, so a transaction,
a commit, a claim, a key or a block meets the same rules whichever door it
came through.

Locking: the core shares the chain state's lock; every call holds it only
for in-memory decisions and short database writes. Verifying a block's work
(fetching blobs, recomputing Dice, replaying training) runs outside it, so
the node keeps answering while it verifies.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from consensus.assemble import BlockTemplate, make_block_template
from consensus.chainstate import Activation, BlockResult, BlockStatus, ChainState, WorkCheck
from consensus.clock import PHASE_2, get_phase2_start, get_phase_point, get_slot_start
from consensus.forkchoice import ChainScore, compute_child_score, compute_genesis_score, get_score_key, is_better
from consensus.rules import (
    compute_claim_bond,
    get_commit_task_ids,
    get_scheduled_task_id,
    is_key_for_task,
)
from consensus.transition import InvalidBlock, make_claim_evidence, process_claim_evidence_at
from mempool.claimpool import ClaimPool
from mempool.commitpool import CommitPool
from mempool.errors import MempoolReject
from mempool.txpool import TxPool
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    Block,
    ChainParams,
    Claim,
    ClaimEvidence,
    Commit,
    KeyReveal,
    TaskSubmission,
    Transaction,
)

from fullnode.keys import KeyBook, PublisherKeyFiles

log = logging.getLogger("pouw.node")

MAX_CLAIMS_VERIFIED_PER_SLOT = 16
"""Most claims a node judges in one slot (the rest wait for the next: the height's block may come from any slot)."""
VERIFY_MARGIN_SECONDS = 2.0
"""No claim verification starts this close to the end of a slot."""
MAX_REMEMBERED_FALSE_CLAIMS = 1_000
"""Claims that failed verification kept to be shown as evidence."""
MAX_EVIDENCE_PER_BLOCK = 16
"""Most evidence entries a block carries (BlockBody.evidence's limit)."""

MISBEHAVIOUR_CODES = frozenset({"malformed", "bad-signature", "invalid", "bad-key"})
"""Verdict codes only a faulty or hostile sender earns (honest nodes can send the rest, e.g. a late commit)."""


@dataclass(frozen=True)
class Verdict:
    """The core's answer to a message (transaction, commit, claim, key reveal)."""

    accepted: bool
    """True when the message was taken in."""
    code: str = ""
    """Why not: a mempool reason code, "invalid" (a consensus rule), "unknown-task", "bad-key" ("" when accepted)."""
    message: str = ""
    """Human-readable detail."""
    relay: bool = False
    """Pass it on to peers."""

    @property
    def misbehaving(self) -> bool:
        """True when the sender should be penalised for it."""
        return self.code in MISBEHAVIOUR_CODES


ACCEPTED = Verdict(True, relay=True)


def reject_verdict(exc: MempoolReject) -> Verdict:
    """The verdict for a pool's refusal."""
    return Verdict(False, exc.reason, str(exc))


@dataclass(frozen=True)
class Tick:
    """What the clock asks of the node's adapters at one moment."""

    reveals: tuple[KeyReveal, ...]
    """Publisher keys whose moment came: already taken in, to be gossiped."""
    verify_claims: bool
    """Phase-2 claim verification of the current slot should start now."""


class NodeCore:
    """One node's consensus-facing state; see the module doc."""

    def __init__(
        self,
        params: ChainParams,
        chain: ChainState,
        check_work: WorkCheck,
        *,
        key_files: PublisherKeyFiles | None = None,
        claim_wait_seconds: float | None = None,
        log_fn: Callable[[str], None] | None = None,
        on_claim_judged: Callable[[bool], None] | None = None,
        verify_parallelism: int = 1,
    ):
        self.params = params
        self.chain = chain
        self.check_work = check_work
        self.lock = chain.lock
        self.txpool = TxPool(params)
        self.commits = CommitPool(params)
        self.claims = ClaimPool(params, self.commits)
        self.keys = KeyBook()
        self.key_files = key_files
        self.claim_wait_seconds = params.phase2_seconds / 3 if claim_wait_seconds is None else claim_wait_seconds
        self.log = log_fn or (lambda msg: log.info(msg))
        self.verify_parallelism = max(1, verify_parallelism)
        """Claims judged at once (the work check's worker processes)."""
        self.on_claim_judged = on_claim_judged or (lambda valid: None)
        """Told whether each claim verification judged the claim valid (metrics); missing data is no judgement."""
        self._verified_slot = -1
        self._last_phase: tuple[int, int] | None = None
        self._judged: dict[int, int] = {}
        """slot -> claims judged in it (the per-slot verification budget)."""
        self._false_claims: OrderedDict[bytes, Block] = OrderedDict()
        """Claims that failed verification, kept to be shown as evidence (bounded)."""
        chain.subscribe(self._on_activation)
        if key_files is not None:
            mine, problems = key_files.load()
            self.keys.mine.update(mine)
            for problem in problems:
                self.log(problem)

    # --- messages ------------------------------------------------------------------
    def submit_transaction(self, tx: Transaction, now: float) -> Verdict:
        """A transaction or task submission for the mempool."""
        with self.lock:
            try:
                self.txpool.add(tx, self.chain.state())
            except MempoolReject as exc:
                return reject_verdict(exc)
        return ACCEPTED

    def submit_commit(self, commit: Commit, now: float) -> Verdict:
        """A Phase-1 commit for the next height."""
        with self.lock:
            status = self.chain.state().get_status()
            try:
                self.commits.add(commit, now=now, tip_height=status.height, expected_task_id=get_commit_task_ids(status, self.params))
            except MempoolReject as exc:
                return reject_verdict(exc)
        return ACCEPTED

    def submit_claim(self, claim: Claim, now: float) -> Verdict:
        """A Phase-2 claim: the pool's checks, then every rule the block can be checked by without its blobs."""
        block = claim.block
        with self.lock:
            bonded = block.body.work is not None and self._is_bonded(self.chain.state(), block)
            try:
                self.claims.check(claim, now=now, bonded=bonded)
            except MempoolReject as exc:
                return reject_verdict(exc)
            checked = self.chain.check_new_block(block, now)
            if isinstance(checked, BlockResult):
                if checked.status is BlockStatus.INVALID:
                    return Verdict(False, "invalid", f"claim rejected: {checked.reason}")
                if checked.status is BlockStatus.KNOWN:
                    return Verdict(False, "duplicate", "the claimed block is already known")
                return Verdict(False, "wrong-parent", f"claim cannot be judged: {checked.reason}")
            self.claims.add(claim, now=now, bonded=bonded)
        return ACCEPTED

    def submit_key_reveal(self, reveal: KeyReveal, now: float) -> Verdict:
        """A task key revealed by its publisher; kept with the time it was first seen."""
        if reveal.which not in (KEY_TRAIN, KEY_TEST):
            return Verdict(False, "malformed", "unknown key kind")
        with self.lock:
            task = self.get_task(reveal.task_id)
            if task is None:
                return Verdict(False, "unknown-task", "no such task is known here yet")
            if not is_key_for_task(task, reveal.which, reveal.key):
                return Verdict(False, "bad-key", "the key does not match the task's commitment")
            if not self.keys.record(reveal.task_id, reveal.which, reveal.key, now):
                return Verdict(False, "duplicate", "key already known")
        return ACCEPTED

    def add_publisher_keys(self, task_id: bytes, train_key: bytes, test_key: bytes) -> None:
        """Keep a publisher's keys to reveal each at its moment; raises LookupError or ValueError."""
        with self.lock:
            task = self.get_task(task_id)
            if task is None:
                raise LookupError("the node knows no such task (send the submission first)")
            if not (is_key_for_task(task, KEY_TRAIN, train_key) and is_key_for_task(task, KEY_TEST, test_key)):
                raise ValueError("the keys do not match the task's key commitments")
            self.keys.mine[task_id] = {KEY_TRAIN: train_key, KEY_TEST: test_key}
        if self.key_files is not None:
            self.key_files.save(task_id, train_key, test_key)

    # --- blocks ----------------------------------------------------------------------
    def is_claim(self, block: Block, now: float) -> bool:
        """True for a block of the slot being decided now: it is judged as a claim (its commit must be known)."""
        point = get_phase_point(self.params, now)
        return block.header.slot == point.slot and point.phase == PHASE_2

    def process_block(self, block: Block, now: float) -> BlockResult:
        """A block from a peer, sync or a claim being verified: the chain state's one road."""
        return self.chain.process_new_block(block, now, self.check_work)

    def invalidate_block(self, block_hash: bytes) -> Activation:
        """The operator's invalidateblock (a call like any other: the chain state does the work)."""
        activation = self.chain.invalidate_block(block_hash)
        self.log(f"operator invalidated block {block_hash.hex()[:12]}; tip is now height {self.chain.tip_height}")
        return activation

    def reconsider_block(self, block_hash: bytes) -> Activation:
        """The operator's reconsiderblock."""
        activation = self.chain.reconsider_block(block_hash)
        self.log(f"operator reconsidered block {block_hash.hex()[:12]}; tip is now height {self.chain.tip_height}")
        return activation

    def verify_claims(self, now: float, clock: Callable[[], float]) -> BlockResult | None:
        """Verify the next height's claims, best first (fork choice's order); returns the first valid one's result.

        At most MAX_CLAIMS_VERIFIED_PER_SLOT claims are judged per slot, and
        none is started within VERIFY_MARGIN_SECONDS of the slot's end (by
        `clock`): a flood of false claims delays the height but cannot make
        a node verify without end. Claims left unjudged stay in the pool and
        are verified in the next slot (the height's block may come from an
        earlier slot), so a true claim below a flood still wins, and every
        false claim ranked above it can then be shown (ClaimEvidence) and its
        bond forfeited.
        """
        point = get_phase_point(self.params, now)
        deadline = get_slot_start(self.params, point.slot + 1) - VERIFY_MARGIN_SECONDS
        while clock() < deadline:
            with self.lock:
                left = MAX_CLAIMS_VERIFIED_PER_SLOT - self._judged.get(point.slot, 0)
                batch = self._next_claims(min(left, self.verify_parallelism)) if left > 0 else []
                if not batch:
                    return None
                self._judged[point.slot] = self._judged.get(point.slot, 0) + len(batch)
            results = self._judge_claims(batch, clock)
            winner: BlockResult | None = None
            for claim, result in zip(batch, results):  # best first: the first valid one is the answer
                block = claim.block
                if result.is_valid or result.status is BlockStatus.INVALID:
                    self.on_claim_judged(result.is_valid)
                with self.lock:
                    if result.is_valid:
                        self.claims.mark_verified(block.hash)
                        winner = winner or result
                        continue
                    self.claims.mark_rejected(block.hash, result.reason)
                    if result.status is BlockStatus.INVALID:
                        self._remember_false_claim(block)
                self.log(f"claim {block.hash.hex()[:12]} of miner {block.header.miner.hex()[:12]} rejected: {result.reason}")
            if winner is not None:
                return winner
        return None

    def _judge_claims(self, batch: list[Claim], clock: Callable[[], float]) -> list[BlockResult]:
        """Each claim's block down the block road; a batch of several at once (the work check's workers run them)."""
        if len(batch) == 1:
            return [self.process_block(batch[0].block, clock())]
        with ThreadPoolExecutor(len(batch), thread_name_prefix="pouw-claim") as pool:
            return list(pool.map(lambda claim: self.process_block(claim.block, clock()), batch))

    def _remember_false_claim(self, block: Block) -> None:
        """Keep a claim that failed verification, to show it in a block once its height is won (bounded)."""
        self._false_claims[block.hash] = block
        while len(self._false_claims) > MAX_REMEMBERED_FALSE_CLAIMS:
            self._false_claims.popitem(last=False)

    def _next_claims(self, limit: int) -> list[Claim]:
        """Up to `limit` unjudged claims for the next height (any slot), best first, each better than the block held there.

        Claims whose miner holds the bond they need (compute_claim_bond) come
        first, in fork choice's order; unbonded claims (a new miner has no
        bond yet) only when budget is left: a false bonded claim costs its
        miner the bond, a false unbonded one costs it nothing but the verifier's time.
        """
        height = self.chain.tip_height + 1
        state = self.chain.state()
        ranked = [c for c in self.claims.ranked(height=height) if not self.claims.is_verified(c.block.hash)]
        ranked.sort(key=lambda c: (self._is_bonded(state, c.block), get_score_key(self._claim_score(c.block))), reverse=True)
        current = self.chain.get_hash_at(height)
        held = self._claim_score(self.chain.get_block(current)) if current is not None else None
        out: list[Claim] = []
        for claim in ranked:
            if held is not None and claim.block.hash != current and not is_better(self._claim_score(claim.block), held):
                continue
            out.append(claim)
            if len(out) == limit:
                break
        return out

    def _is_bonded(self, state, block: Block) -> bool:
        """True when the block's miner holds at least the bond its claim needs."""
        return state.get_account(block.header.miner).bonded >= compute_claim_bond(self.params, block.body.work)

    def get_claim_evidence(self, state, height: int) -> tuple[ClaimEvidence, ...]:
        """Evidence of remembered false claims that a block at `height` on `state` may carry (each checked, at most 16)."""
        out: list[ClaimEvidence] = []
        trial = state.child()
        for block in list(self._false_claims.values()):
            evidence = make_claim_evidence(block)
            try:
                process_claim_evidence_at(trial, height, evidence, self.params)
            except InvalidBlock:
                continue
            out.append(evidence)
            if len(out) == MAX_EVIDENCE_PER_BLOCK:
                break
        return tuple(out)

    def _claim_score(self, block: Block) -> ChainScore:
        """A block's own fork-choice weight (useful, keys carried, Dice, tie value): what decides between siblings."""
        return compute_child_score(compute_genesis_score(bytes(32)), block, self.params)

    def _on_activation(self, activation: Activation) -> None:
        """The best chain moved (called under the lock): the mempool follows."""
        state = self.chain.state()
        for block in activation.disconnected:
            self.txpool.readd_for_disconnect(block, state)
        for block in activation.connected:
            self.txpool.remove_for_block(block, state)
        header = self.chain.get_tip().header
        self.log(
            f"block {header.height} {header.hash.hex()[:12]} task {header.task_id.hex()[:12]} mode {header.task_mode} "
            f"winner {header.miner.hex()[:12]} dice {header.dice_ppm / 1e6:.4f}"
        )

    # --- the clock ---------------------------------------------------------------------
    def get_claim_start(self, slot: int) -> float:
        """When claim verification of `slot` starts: `claim_wait_seconds` into its Phase 2."""
        return get_phase2_start(self.params, slot) + self.claim_wait_seconds

    def is_verification_window(self, now: float) -> bool:
        """True from the claim start of the current slot until the slot ends."""
        point = get_phase_point(self.params, now)
        return point.phase == PHASE_2 and now >= self.get_claim_start(point.slot)

    def tick(self, now: float) -> Tick:
        """Reveal due publisher keys, tidy the pools at phase changes, and say whether verification is due."""
        reveals = self._reveal_due_keys(now)
        point = get_phase_point(self.params, now)
        with self.lock:
            if self._last_phase != (point.slot, point.phase):
                self._last_phase = (point.slot, point.phase)
                keep = self.chain.tip_height
                self.commits.prune(keep)
                self.claims.prune(keep)
                self._judged = {slot: n for slot, n in self._judged.items() if slot >= point.slot}
            due = self.is_verification_window(now) and point.slot != self._verified_slot
            if due:
                self._verified_slot = point.slot
        return Tick(tuple(reveals), due)

    def _reveal_due_keys(self, now: float) -> list[KeyReveal]:
        """The publisher keys whose moment has come (docs/protocol.md §5), from Phase 2 of the slot mining tip + 1.

        The training key of the task of height tip + 2, so that block tip + 1
        can carry it; the test key of the task of height tip + 1, only in the
        slot right after the tip's and only if its training key is on chain
        (otherwise the task cannot be scored and its test set stays secret).
        """
        with self.lock:
            status = self.chain.state().get_status()
            point = get_phase_point(self.params, now)
            if point.phase != PHASE_2 or point.slot < status.min_slot:
                return []
            due = [(status.scheduled[1].task_id, KEY_TRAIN)]
            if point.slot == status.min_slot and status.train_key:
                due.append((get_scheduled_task_id(status), KEY_TEST))
            reveals = []
            for task_id, which in due:
                key = self.keys.mine.get(task_id, {}).get(which)
                if key is None or (task_id, which) in self.keys.published:
                    continue
                self.keys.published.add((task_id, which))
                self.keys.record(task_id, which, key, now)
                reveals.append(KeyReveal(task_id, which, key))
                self.log(f"revealed the {'training' if which == KEY_TRAIN else 'test'} key of task {task_id.hex()[:12]}")
            return reveals

    # --- what adapters ask ----------------------------------------------------------------
    def get_task(self, task_id: bytes) -> TaskSubmission | None:
        """A task submission known to the chain or waiting in the mempool."""
        with self.lock:
            record = self.chain.state().get_task(task_id)
            if record is not None:
                return record.submission
            return self.txpool.tasks.get(task_id)

    def get_block_template(self) -> BlockTemplate:
        """A template on the current tip: the best-paying valid transactions and the evidence of false claims."""
        with self.lock:
            state = self.chain.state()
            txs = self.txpool.select_for_block(state, self.params.max_block_transactions)
            evidence = self.get_claim_evidence(state, state.get_status().height + 1)
            return make_block_template(state, self.params, tuple(txs), evidence)
