"""Phase-2 claims: block candidates ranked by claimed Dice, each backed by a Phase-1 commit.

Admission checks what needs only the claim, the clock and the commit pool;
the full node then verifies claims from the top of `ranked()` (recomputing
Dice, applying the block) and records the outcome with mark_rejected or
mark_verified.

Claims whose miner holds no bond cost their authors nothing, so their
admission is bounded per height and slot: at most MAX_UNBONDED_CLAIMS are
pooled, and when that many are, a newcomer must claim at least
UNBONDED_REPLACEMENT_STEP_PPM more than the lowest of them to take its
place (as Bitcoin Core's incremental relay fee bounds replacements). Both
are checked before the signature, so a flood costs at most
MAX_UNBONDED_CLAIMS + DICE_SCALE / UNBONDED_REPLACEMENT_STEP_PPM signature
checks a height and slot, however many keys it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.clock import PHASE_2, is_in_phase
from consensus.rules import compute_commit_binding
from pouw.encoding import DEFAULT_MAX_MESSAGE, DecodeError, decode
from pouw.types import DICE_SCALE, ChainParams, Claim

from mempool.commitpool import CommitPool, check_wire_object
from mempool.errors import reject

MAX_UNBONDED_CLAIMS = 64
"""Unjudged claims of unbonded miners pooled per height and slot."""
UNBONDED_REPLACEMENT_STEP_PPM = 10_000
"""How much more Dice (ppm) an unbonded claim must claim than the lowest pooled one to replace it when full."""


@dataclass(frozen=True)
class ClaimRecord:
    """A pooled claim and the figures it is ranked by."""

    claim: Claim
    """The claim (a complete block candidate)."""
    block_hash: bytes
    """Hash of the candidate's header."""
    dice_ppm: int
    """The claimed Dice, in parts per million."""
    miner: bytes
    """The claiming miner."""
    height: int
    """The candidate's height."""
    slot: int
    """The candidate's slot."""
    seq: int
    """Arrival order in this pool (older is smaller); not used for ranking."""
    bonded: bool
    """Whether its miner held the claim's bond when it arrived (admission only: verification looks again)."""


def get_claim_rank_key(record: ClaimRecord) -> tuple[int, bytes]:
    """Ranking of claims: highest claimed Dice first, then lowest block hash (the same on every node)."""
    return (-record.dice_ppm, record.block_hash)


class ClaimPool:
    """Phase-2 claims, one per miner per (height, slot), with their verification outcome."""

    def __init__(self, params: ChainParams, commits: CommitPool):
        self.params = params
        self.commits = commits
        self._records: dict[bytes, ClaimRecord] = {}
        self._by_miner: dict[tuple[bytes, int, int], bytes] = {}
        self._rejected: dict[bytes, str] = {}
        self._verified: set[bytes] = set()
        self._seq = 0

    def check(self, claim: Claim, *, now: float, tip_hash: bytes | None = None, bonded: bool = False) -> None:
        """Everything `add` checks, without admitting the claim; raises MempoolReject."""
        check_wire_object(claim, Claim)
        self._check(claim, now, tip_hash, bonded)

    def add(self, claim: Claim, *, now: float, tip_hash: bytes | None = None, bonded: bool = False) -> bytes:
        """Admit a claim seen at `now`; returns its block hash or raises MempoolReject.

        With `tip_hash`, the candidate must extend that block. `bonded`: the
        caller found that its miner holds the bond the claim needs; otherwise
        it competes for the unbonded places (module docstring).
        """
        check_wire_object(claim, Claim)
        return self._admit(claim, now, tip_hash, bonded)

    def add_encoded(self, data: bytes, *, now: float, tip_hash: bytes | None = None, bonded: bool = False) -> bytes:
        """Admit a claim from its wire bytes; returns its block hash."""
        try:
            claim = decode(Claim, data, max_size=DEFAULT_MAX_MESSAGE)
        except DecodeError as exc:
            raise reject("malformed", str(exc)) from None
        return self._admit(claim, now, tip_hash, bonded)

    def _check(self, claim: Claim, now: float, tip_hash: bytes | None, bonded: bool) -> None:
        header, body = claim.block.header, claim.block.body
        commit, work = body.commit, body.work
        if commit is None or work is None:
            raise reject("malformed", "claim carries no commit or work")
        if header.hash in self._records:
            raise reject("duplicate", "claim already in the pool")
        if not is_in_phase(self.params, header.slot, PHASE_2, now):
            raise reject("wrong-phase", f"time {now} is not in Phase 2 of slot {header.slot}")
        if tip_hash is not None and header.prev_hash != tip_hash:
            raise reject("wrong-parent", "the candidate does not extend the current tip")
        if header.dice_ppm > DICE_SCALE or work.dice_ppm != header.dice_ppm:
            raise reject("commit-mismatch", "claimed Dice is out of range or differs between header and work")
        if (
            commit.height != header.height
            or commit.slot != header.slot
            or commit.miner != header.miner
            or commit.binding != compute_commit_binding(work.model_digest, header.miner)
        ):
            raise reject("commit-mismatch", "the block's commit does not bind its model, miner, height and slot")
        if self.commits.get(header.miner, header.height, header.slot) != commit:
            raise reject("not-committed", "no such commit was made in Phase 1")
        if (header.miner, header.height, header.slot) in self._by_miner:
            raise reject("duplicate-miner", "the miner already claimed for this height and slot")
        if not bonded:
            self._check_unbonded_room(header.height, header.slot, header.dice_ppm)
        if not header.is_signature_valid():
            raise reject("bad-signature", "header signature does not verify")

    def get_unbonded(self, height: int, slot: int) -> list[ClaimRecord]:
        """The unjudged claims of unbonded miners for a height and slot, lowest ranked first."""
        records = [r for r in self._records.values() if not r.bonded and r.height == height and r.slot == slot
                   and r.block_hash not in self._rejected and r.block_hash not in self._verified]
        return sorted(records, key=get_claim_rank_key, reverse=True)

    def _check_unbonded_room(self, height: int, slot: int, dice_ppm: int) -> None:
        unbonded = self.get_unbonded(height, slot)
        if len(unbonded) < MAX_UNBONDED_CLAIMS:
            return
        needed = unbonded[0].dice_ppm + UNBONDED_REPLACEMENT_STEP_PPM
        if dice_ppm < needed:
            raise reject("pool-full", f"{len(unbonded)} unbonded claims are pooled for this height and slot: without "
                                      f"a bond a claim must claim at least {needed} ppm to replace the lowest")

    def _admit(self, claim: Claim, now: float, tip_hash: bytes | None, bonded: bool) -> bytes:
        self._check(claim, now, tip_hash, bonded)
        header = claim.block.header
        block_hash = header.hash
        key = (header.miner, header.height, header.slot)
        self._seq += 1
        self._records[block_hash] = ClaimRecord(claim, block_hash, header.dice_ppm, header.miner, header.height, header.slot,
                                                self._seq, bonded)
        self._by_miner[key] = block_hash
        if not bonded:
            unbonded = self.get_unbonded(header.height, header.slot)
            if len(unbonded) > MAX_UNBONDED_CLAIMS:
                self._drop(unbonded[0].block_hash)
        return block_hash

    def _drop(self, block_hash: bytes) -> None:
        record = self._records.pop(block_hash)
        self._by_miner.pop((record.miner, record.height, record.slot), None)
        self._rejected.pop(block_hash, None)
        self._verified.discard(block_hash)

    def get(self, block_hash: bytes) -> Claim | None:
        """A pooled claim by block hash."""
        record = self._records.get(block_hash)
        return None if record is None else record.claim

    def ranked(self, height: int | None = None, slot: int | None = None, *, include_rejected: bool = False) -> list[Claim]:
        """Claims (for a height and slot, if given) by claimed Dice descending, then block hash ascending."""
        records = [
            r
            for r in self._records.values()
            if (height is None or r.height == height)
            and (slot is None or r.slot == slot)
            and (include_rejected or r.block_hash not in self._rejected)
        ]
        return [r.claim for r in sorted(records, key=get_claim_rank_key)]

    def best_unverified(self, height: int | None = None, slot: int | None = None) -> Claim | None:
        """The top-ranked claim neither rejected nor verified yet, or None."""
        for claim in self.ranked(height, slot):
            if claim.block.hash not in self._verified:
                return claim
        return None

    def mark_rejected(self, block_hash: bytes, reason: str) -> None:
        """Record that verification refused a claim; it leaves the ranking."""
        if block_hash in self._records:
            self._rejected[block_hash] = reason
            self._verified.discard(block_hash)

    def mark_verified(self, block_hash: bytes) -> None:
        """Record that a claim passed verification."""
        if block_hash in self._records and block_hash not in self._rejected:
            self._verified.add(block_hash)

    def get_rejection(self, block_hash: bytes) -> str | None:
        """Why a claim was rejected by verification, or None."""
        return self._rejected.get(block_hash)

    def is_verified(self, block_hash: bytes) -> bool:
        """True when a claim passed verification."""
        return block_hash in self._verified

    def prune(self, below_height: int) -> int:
        """Drop claims for heights below `below_height`; returns how many."""
        stale = [h for h, r in self._records.items() if r.height < below_height]
        for block_hash in stale:
            self._drop(block_hash)
        return len(stale)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._records

    def __len__(self) -> int:
        return len(self._records)
