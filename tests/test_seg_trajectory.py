"""The segment rule (where checkpoints lie) and the input of each step (batches and patches)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pouw.seg.batches import BatchSource, compute_patch_start
from pouw.seg.data import make_volume_dataset
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.trajectory import (
    MAX_SEGMENT_STEPS, SEGMENT_COST_BUDGET, Layout, compute_segment_steps, compute_step_cost, make_layout,
)

from tests.seg_fixtures import SEED, small_data, small_spec


@given(m=st.integers(1, 50), s=st.integers(1, 60), epochs=st.integers(1, 6))
def test_planned_positions_walk_the_boundaries(m, s, epochs):
    layout = Layout(m, s, epochs)
    positions = [0]
    while positions[-1] < layout.total_steps:
        positions.append(layout.get_next_boundary(positions[-1]))
    assert positions == [layout.get_planned_position(i) for i in range(len(positions))]
    steps = np.diff(positions)
    assert steps.min() >= 1 and steps.max() <= min(m, s)
    assert all(p % m == 0 for p in positions[:: layout.segments_per_epoch])  # every epoch end is a checkpoint
    for i, p in enumerate(positions):
        assert layout.is_valid_position(i, p, is_last=False)
    # Only the last checkpoint may end its segment early, and never at or before the previous one.
    if len(positions) > 2:
        i = len(positions) - 1
        short = positions[i - 1] + 1
        if short < positions[i]:
            assert layout.is_valid_position(i, short, is_last=True)
            assert not layout.is_valid_position(i, short, is_last=False)
        assert not layout.is_valid_position(i, positions[i - 1], is_last=True)
    assert not layout.is_valid_position(len(positions), layout.get_planned_position(len(positions)), is_last=True)


def test_segment_length_bounds_replay_cost():
    small = ModelSpec("unet2d", 1, 2, 32, (128, 128))
    big = ModelSpec("unet3d", 1, 2, 32, (128, 128, 128))
    tspec = TrainSpec(1e-3, 2, "dice", "adam", 10)
    assert 1 < compute_segment_steps(small, tspec) == SEGMENT_COST_BUDGET // compute_step_cost(small, 2) < 512
    assert compute_segment_steps(big, tspec) == 1  # the 3D U-Net: one step per segment
    assert compute_segment_steps(ModelSpec("unet2d", 1, 2, 1, (8, 8)), TrainSpec(1e-3, 1, "dice", "adam", 1)) \
        == MAX_SEGMENT_STEPS
    for spec in (small, big):
        steps = compute_segment_steps(spec, tspec)
        assert steps * compute_step_cost(spec, 2) <= max(SEGMENT_COST_BUDGET, compute_step_cost(spec, 2))


def test_batches_are_global_and_split_by_rank():
    spec = small_spec()
    ds, _ = small_data(spec)  # 8 cases
    layout = make_layout(spec, TrainSpec(1e-2, 4, "dice", "adam", 3), len(ds))
    one = BatchSource(ds, SEED, layout, 4, spec.patch_size)
    ranks = [BatchSource(ds, SEED, layout, 4, spec.patch_size, rank=r, world=2) for r in range(2)]
    for step in range(layout.total_steps):
        x, y = one.get(step)
        parts = [r.get(step) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    epoch1 = one.get_global_batch(0) + one.get_global_batch(1)
    assert sorted(epoch1) == list(range(8)) and one.get_global_batch(2) != one.get_global_batch(0)


def test_patches_are_fixed_by_the_seed_and_lie_inside():
    rng = np.random.default_rng(0)
    shape = (20, 18, 30)
    label = np.zeros(shape, np.uint8)
    label[2:4, 15:17, 25:28] = 1
    ds = make_volume_dataset([rng.normal(size=(1, *shape)).astype(np.float32)] * 3, [label] * 3, ("a", "b", "c"), 2)
    patch = (8, 8, 8)
    starts = {compute_patch_start(SEED, e, c, shape, patch, ds.foreground[c]) for e in range(1, 30) for c in range(3)}
    assert len(starts) > 20
    for start in starts:
        assert all(0 <= s <= side - p for s, p, side in zip(start, patch, shape))
    assert compute_patch_start(SEED, 3, 1, shape, patch, ds.foreground[1]) == \
        compute_patch_start(SEED, 3, 1, shape, patch, ds.foreground[1])
    # About half the patches hold foreground (centred on it), though it is 0.05% of the volume.
    layout = Layout(1, 1, 200)
    source = BatchSource(ds, SEED, layout, 3, patch)
    with_fg = [bool(source.get(t)[1][0].any()) for t in range(200)]
    assert 0.3 < sum(with_fg) / 200 < 0.8
    x, y = source.get(0)
    assert x.shape == (3, 1, 8, 8, 8) and y.shape == (3, 1, 8, 8, 8) and y.dtype == torch.uint8


@pytest.mark.parametrize("arch", ["unet2d", "fcn"])
def test_layout_of_small_tasks(arch):
    spec = small_spec(arch)
    layout = make_layout(spec, TrainSpec(1e-2, 4, "dice", "adam", 3), 10)
    assert layout.steps_per_epoch == 2 and layout.total_steps == 6
