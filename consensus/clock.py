"""The phase clock: which slot and phase a moment falls in.

Slot s covers [genesis_time + s*L, genesis_time + (s+1)*L) with L = phase1 +
phase2 seconds. Phase 1 is the first phase1_seconds of the slot (t(s,a) to
t(s,b)), Phase 2 the rest (t(s,b) to t(s+1,a)). A slot with no block is
simply skipped: the next slot mines the same height. Honest clocks may differ
by up to `clock_skew_seconds`; boundary checks that judge other nodes' messages
widen their window by that much (see docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from pouw.types import ChainParams

PHASE_1 = 1
PHASE_2 = 2


@dataclass(frozen=True)
class PhasePoint:
    """Where a moment falls on the phase clock."""

    slot: int
    """The block interval."""
    phase: int
    """PHASE_1 or PHASE_2."""
    phase_start: float
    """When this phase began (Unix seconds)."""
    phase_end: float
    """When this phase ends (Unix seconds)."""


def get_slot_start(params: ChainParams, slot: int) -> int:
    """t(slot, a): when Phase 1 of `slot` starts."""
    return params.genesis_time + slot * params.slot_seconds


def get_phase2_start(params: ChainParams, slot: int) -> int:
    """t(slot, b): when Phase 2 of `slot` starts."""
    return get_slot_start(params, slot) + params.phase1_seconds


def get_phase_point(params: ChainParams, now: float) -> PhasePoint:
    """The slot and phase `now` falls in; moments before genesis are slot 0, Phase 1."""
    offset = max(0.0, now - params.genesis_time)
    slot = int(offset // params.slot_seconds)
    start = get_slot_start(params, slot)
    p2 = start + params.phase1_seconds
    if now < p2:
        return PhasePoint(slot, PHASE_1, float(start), float(p2))
    return PhasePoint(slot, PHASE_2, float(p2), float(start + params.slot_seconds))


def is_in_phase(params: ChainParams, slot: int, phase: int, t: float, skew: float | None = None) -> bool:
    """True when `t` lies in `phase` of `slot`, widened by `skew` seconds on both sides."""
    s = params.clock_skew_seconds if skew is None else skew
    if phase == PHASE_1:
        lo, hi = get_slot_start(params, slot), get_phase2_start(params, slot)
    elif phase == PHASE_2:
        lo, hi = get_phase2_start(params, slot), get_slot_start(params, slot + 1)
    else:
        raise ValueError(f"unknown phase {phase}")
    return lo - s <= t < hi + s


def is_block_timestamp_valid(params: ChainParams, slot: int, timestamp: int) -> bool:
    """Consensus rule: a block's timestamp lies in Phase 2 of its slot (skew tolerated)."""
    return is_in_phase(params, slot, PHASE_2, timestamp)


def is_block_from_future(params: ChainParams, timestamp: int, now: float) -> bool:
    """True when a block is stamped beyond the local clock plus the tolerated skew.

    A block's timestamp lies in Phase 2 of its slot (consensus), so such a
    block claims a slot whose Phase 2 has not begun here: no honest miner
    made it yet. It is refused now, not marked invalid (it would be valid later).
    """
    return timestamp > now + params.clock_skew_seconds
