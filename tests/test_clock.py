"""The phase clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consensus.clock import PHASE_1, PHASE_2, get_phase2_start, get_phase_point, get_slot_start, is_block_timestamp_valid, is_in_phase
from consensus.fixtures import make_test_params

P = make_test_params(phase1_seconds=20, phase2_seconds=10)


def test_boundaries():
    g = P.genesis_time
    assert get_phase_point(P, g).slot == 0 and get_phase_point(P, g).phase == PHASE_1
    assert get_phase_point(P, g + 19.999).phase == PHASE_1
    assert get_phase_point(P, g + 20).phase == PHASE_2
    point = get_phase_point(P, g + 30)
    assert (point.slot, point.phase, point.phase_start, point.phase_end) == (1, PHASE_1, g + 30, g + 50)
    assert get_phase_point(P, g - 100).slot == 0
    assert get_slot_start(P, 3) == g + 90 and get_phase2_start(P, 3) == g + 110


def test_skew_tolerance():
    skew = P.clock_skew_seconds
    t_b = get_phase2_start(P, 4)
    assert is_in_phase(P, 4, PHASE_2, t_b - skew)
    assert not is_in_phase(P, 4, PHASE_2, t_b - skew - 1)
    assert is_in_phase(P, 4, PHASE_1, t_b + skew - 1)
    assert not is_in_phase(P, 4, PHASE_1, t_b + skew)
    assert is_block_timestamp_valid(P, 4, get_slot_start(P, 5) + skew - 1)
    assert not is_block_timestamp_valid(P, 4, get_slot_start(P, 5) + skew)


@given(offset=st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_every_moment_is_in_exactly_its_phase(offset):
    t = P.genesis_time + offset
    point = get_phase_point(P, t)
    assert point.phase_start <= t < point.phase_end
    assert is_in_phase(P, point.slot, point.phase, t, skew=0)
    other = PHASE_2 if point.phase == PHASE_1 else PHASE_1
    assert not is_in_phase(P, point.slot, other, t, skew=0)
