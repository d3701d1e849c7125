"""Phase-1 commits: one per miner key per (height, slot), accepted only inside Phase 1 of their slot.

The caller passes the time, the tip height and the task(s) the next height
may work on; the pool keeps no clock and reads no chain itself.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from consensus.clock import PHASE_1, is_in_phase
from pouw.encoding import DecodeError, decode, encode, sha256
from pouw.types import ChainParams, Commit

from mempool.errors import reject

DEFAULT_MAX_COMMITS = 100_000
"""Most commits held at once (all heights)."""


@dataclass(frozen=True)
class CommitRecord:
    """A pooled commit and when this node first saw it."""

    commit: Commit
    """The signed commit."""
    commit_id: bytes
    """SHA-256 of its canonical encoding."""
    seq: int
    """Arrival order in this pool (older is smaller)."""
    received_at: float
    """The `now` it was admitted at (Unix seconds)."""


def check_wire_object(obj: object, cls: type) -> bytes:
    """The canonical encoding of `obj` if it is a well-typed `cls`; raises MempoolReject("malformed")."""
    if type(obj) is not cls:
        raise reject("malformed", f"expected {cls.__name__}, got {type(obj).__name__}")
    try:
        data = encode(obj)
        decode(cls, data)
    except (DecodeError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise reject("malformed", f"{cls.__name__}: {exc}") from None
    return data


class CommitPool:
    """Phase-1 commits by (miner, height, slot); the first valid commit of a miner there wins."""

    def __init__(self, params: ChainParams, *, max_commits: int = DEFAULT_MAX_COMMITS):
        self.params = params
        self.max_commits = max_commits
        self._by_key: dict[tuple[bytes, int, int], CommitRecord] = {}
        self._ids: set[bytes] = set()
        self._seq = 0

    def add(
        self,
        commit: Commit,
        *,
        now: float,
        tip_height: int,
        expected_task_id: bytes | Collection[bytes],
    ) -> bytes:
        """Admit a commit seen at `now`; returns its id or raises MempoolReject.

        `expected_task_id` is the task height tip_height+1 works on, or a
        collection of acceptable ids (the selected task and, once its
        training key is late, the standing task).
        """
        data = check_wire_object(commit, Commit)
        return self._admit(commit, sha256(data), now, tip_height, expected_task_id)

    def add_encoded(
        self, data: bytes, *, now: float, tip_height: int, expected_task_id: bytes | Collection[bytes]
    ) -> bytes:
        """Admit a commit from its wire bytes; returns its id."""
        try:
            commit = decode(Commit, data, max_size=4096)
        except DecodeError as exc:
            raise reject("malformed", str(exc)) from None
        return self._admit(commit, sha256(bytes(data)), now, tip_height, expected_task_id)

    def _admit(
        self, commit: Commit, commit_id: bytes, now: float, tip_height: int, expected: bytes | Collection[bytes]
    ) -> bytes:
        if commit_id in self._ids:
            raise reject("duplicate", "commit already in the pool")
        if commit.height != tip_height + 1:
            raise reject("wrong-height", f"commit is for height {commit.height}; the next block is {tip_height + 1}")
        allowed = (expected,) if isinstance(expected, bytes) else expected
        if commit.task_id not in allowed:
            raise reject("wrong-task", "commit names a task this height does not work on")
        if not is_in_phase(self.params, commit.slot, PHASE_1, now):
            raise reject("wrong-phase", f"time {now} is not in Phase 1 of slot {commit.slot}")
        key = (commit.miner, commit.height, commit.slot)
        if key in self._by_key:
            raise reject("duplicate-miner", "the miner already committed for this height and slot")
        if len(self._by_key) >= self.max_commits:
            raise reject("pool-full", f"{self.max_commits} commits already held")
        if not commit.is_signature_valid():
            raise reject("bad-signature", "commit signature does not verify")
        self._seq += 1
        self._by_key[key] = CommitRecord(commit, commit_id, self._seq, float(now))
        self._ids.add(commit_id)
        return commit_id

    def get(self, miner: bytes, height: int, slot: int) -> Commit | None:
        """The miner's commit for (height, slot), if any."""
        record = self._by_key.get((miner, height, slot))
        return None if record is None else record.commit

    def get_record(self, miner: bytes, height: int, slot: int) -> CommitRecord | None:
        """The miner's commit record (with arrival order) for (height, slot), if any."""
        return self._by_key.get((miner, height, slot))

    def has_binding(self, miner: bytes, height: int, slot: int, task_id: bytes, binding: bytes) -> bool:
        """True when the miner committed exactly this binding for this height, slot and task."""
        record = self._by_key.get((miner, height, slot))
        return record is not None and record.commit.task_id == task_id and record.commit.binding == binding

    def get_commits(self, height: int, slot: int | None = None) -> list[Commit]:
        """Commits for a height (and slot), in arrival order."""
        records = [r for (_, h, s), r in self._by_key.items() if h == height and (slot is None or s == slot)]
        return [r.commit for r in sorted(records, key=lambda r: r.seq)]

    def prune(self, below_height: int) -> int:
        """Drop commits for heights below `below_height`; returns how many."""
        stale = [k for k in self._by_key if k[1] < below_height]
        for key in stale:
            self._ids.discard(self._by_key.pop(key).commit_id)
        return len(stale)

    def __contains__(self, commit_id: object) -> bool:
        return commit_id in self._ids

    def __len__(self) -> int:
        return len(self._by_key)
