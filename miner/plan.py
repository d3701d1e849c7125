"""Pure decisions of the mining loop: which mode, which task, which deadlines.

Nothing here talks to the node or reads the clock; the loop passes `now`.
The rules these follow are docs/protocol.md §3 (slots and phases) and §5
(the three task modes).
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.clock import get_phase2_start, get_slot_start
from pouw.encoding import decode
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_NORMAL,
    MODE_STALE,
    ChainParams,
    KeyReveal,
    TaskSubmission,
)

WAIT = None
"""A mode decision that cannot be made yet: the key may still come."""

MIN_TRAIN_SECONDS = 1.0
"""Do not start training with less time than this before the deadline."""


@dataclass(frozen=True)
class TaskView:
    """A task as `getmininginfo` names it."""

    task_id: bytes
    standing: bool
    task: TaskSubmission | None
    """The submission; None for the standing task."""


@dataclass(frozen=True)
class MiningInfo:
    """The parsed answer of `getmininginfo` (docs/rpc.md)."""

    height: int
    prev_hash: bytes
    slot: int
    min_slot: int
    """The slot right after the tip's: the only one in which a published task may be scored."""
    phase: int
    current: TaskView
    train_key: bytes | None
    """The current task's training key as the tip block carried it (a chain fact)."""
    test_key: bytes | None
    """The current task's test key, if the node has seen it revealed."""
    next: TaskView | None
    next_height: int | None
    next_train_key: bytes | None
    """The next task's training key, if the node has seen it revealed: the block must carry it."""
    blob_url: str | None


def _task_view(d: dict) -> TaskView:
    raw = d.get("task_hex")
    task = decode(TaskSubmission, bytes.fromhex(raw)) if raw else None
    return TaskView(bytes.fromhex(d["task_id"]), bool(d.get("standing", task is None)), task)


def _key(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value else None


def parse_mining_info(d: dict) -> MiningInfo:
    """Turn the JSON of `getmininginfo` into typed values (raises KeyError/ValueError on a bad answer)."""
    nxt = d.get("next")
    return MiningInfo(
        height=int(d["height"]),
        prev_hash=bytes.fromhex(d["prev_hash"]),
        slot=int(d["slot"]),
        min_slot=int(d.get("min_slot", d["slot"])),
        phase=int(d["phase"]),
        current=_task_view(d),
        train_key=_key(d.get("train_key")),
        test_key=_key(d.get("test_key")),
        next=_task_view(nxt) if nxt else None,
        next_height=int(nxt["height"]) if nxt else None,
        next_train_key=_key(nxt.get("train_key")) if nxt else None,
        blob_url=d.get("blob_url") or None,
    )


def decide_train_mode(standing: bool, fresh_slot: bool, train_key_on_chain: bool) -> int:
    """The mode the chain dictates for training (docs/protocol.md §5); nothing to wait for.

    The standing task is mode 0. A published task is stale outside the slot
    right after the tip's (mode 3: standing data), falls back to the standing
    task when the tip did not carry its training key (mode 1), and otherwise
    trains on its own data (mode 0 or 2: the test key decides in Phase 2).
    """
    if standing:
        return MODE_NORMAL
    if not fresh_slot:
        return MODE_STALE
    return MODE_NORMAL if train_key_on_chain else MODE_NO_TRAIN_KEY


def decide_score_mode(
    params: ChainParams, slot: int, now: float, train_mode: int, standing: bool, test_key_ok: bool
) -> int | None:
    """The block's final mode once Phase 2 has started, or WAIT.

    The standing task and modes 1 and 3 are settled at training time. With
    the training key on chain, the test key makes it mode 0; without it by
    `key_grace_seconds` after t(s,b) the model is scored on the training set
    (mode 2).
    """
    if standing or train_mode in (MODE_NO_TRAIN_KEY, MODE_STALE):
        return train_mode
    if test_key_ok:
        return MODE_NORMAL
    if now < get_phase2_start(params, slot) + params.key_grace_seconds:
        return WAIT
    return MODE_NO_TEST_KEY


def is_next_key_due(params: ChainParams, slot: int, now: float, next_task: TaskSubmission | None, next_key_ok: bool) -> bool:
    """True while the claim should still wait for the next task's training key (within the grace after t(s,b))."""
    if next_task is None or next_key_ok:
        return False
    return now < get_phase2_start(params, slot) + params.key_grace_seconds


def compute_commit_margin(params: ChainParams, rtt: float = 0.0) -> float:
    """Seconds kept free before t(s,b) for saving the model and the commit round trip.

    A couple of seconds, plus the measured round trip (twice, as the commit
    may need a retry), plus a little more on long phases where one epoch
    can be long; never more than a third of Phase 1.
    """
    margin = 2.0 + 2.0 * max(0.0, rtt) + min(10.0, 0.02 * params.phase1_seconds)
    return min(margin, params.phase1_seconds / 3.0)


def compute_train_deadline(params: ChainParams, slot: int, margin: float) -> float:
    """When training must have stopped: t(s,b) minus the margin; never past Phase 1."""
    return get_phase2_start(params, slot) - max(0.0, margin)


def can_start_training(now: float, deadline: float, min_seconds: float = MIN_TRAIN_SECONDS) -> bool:
    """True when at least `min_seconds` are left before the deadline."""
    return deadline - now >= min_seconds


def compute_block_timestamp(params: ChainParams, slot: int, now: float) -> int:
    """A timestamp inside Phase 2 of `slot` (consensus requires it), as close to `now` as allowed."""
    lo = get_phase2_start(params, slot)
    hi = get_slot_start(params, slot + 1) - 1
    return int(min(max(int(now), lo), hi))


def get_key_reveals(
    task_id: bytes, mode: int, test_key: bytes | None, next_task_id: bytes | None, next_train_key: bytes | None
) -> tuple[KeyReveal, ...]:
    """The keys a block carries: its task's test key in mode 0, then the next task's training key when known."""
    reveals: list[KeyReveal] = []
    if mode == MODE_NORMAL and test_key is not None:
        reveals.append(KeyReveal(task_id, KEY_TEST, test_key))
    if next_task_id is not None and next_train_key is not None:
        reveals.append(KeyReveal(next_task_id, KEY_TRAIN, next_train_key))
    return tuple(reveals)


def compute_backoff(attempt: int, base: float = 0.5, cap: float = 10.0) -> float:
    """Seconds to wait before retry number `attempt` (0-based): doubling, capped."""
    return min(cap, base * (2 ** min(attempt, 16)))


