"""Where a training trajectory puts its checkpoints: the segment rule.

A run is a sequence of optimizer steps numbered 0, 1, ... across epochs;
epoch e (1-based) holds steps ``(e-1)*m .. e*m-1`` with ``m`` the steps per
epoch. A checkpoint records its *position*: the number of steps done
before it. Checkpoint 0 sits at position 0; every later one ends a
*segment* of at most ``compute_segment_steps`` steps, and an epoch boundary
also ends a segment. So the positions of a run are fixed by the task and
the data size, and a verifier replays one segment (a bounded number of
steps), never a whole epoch. Only the last checkpoint of a run may end its
segment early (the deadline came): it lies strictly after the one before
and at most at the planned boundary.

The segment length is a protocol rule, a pure function of the task: a
budget of estimated work per segment divided by the estimated work of one
step (docs/useful_work.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pouw.seg.spec import ModelSpec, TrainSpec

SEGMENT_COST_BUDGET = 25_000_000_000
"""Estimated work of one segment, in cost units (about 10 s on one CPU thread here)."""
STEP_OVERHEAD_COST = 27_000_000
"""Fixed cost units per step (Python, optimizer, small-tensor overheads: about 10 ms here)."""
MAX_SEGMENT_STEPS = 512
"""No segment is longer than this, whatever the task."""
MAX_CHECKPOINTS = 4096
"""Checkpoints a claim may carry (WorkProof's list limit); training stops before it would exceed them."""


def compute_step_cost(model_spec: ModelSpec, batch_size: int) -> int:
    """Estimated work of one optimizer step: batch x patch voxels x filters^2 x kernel volume, plus overhead.

    A convolution layer costs voxels x c_in x c_out x 3^dims multiply-adds;
    both networks keep filters^2 x voxels roughly constant or shrinking down
    their levels, so this tracks their cost within a small factor.
    """
    voxels = math.prod(model_spec.patch_size)
    return batch_size * voxels * model_spec.base_filters ** 2 * 3 ** model_spec.spatial_dims + STEP_OVERHEAD_COST


def compute_segment_steps(model_spec: ModelSpec, train_spec: TrainSpec) -> int:
    """Most optimizer steps between two checkpoints for this task (1..MAX_SEGMENT_STEPS)."""
    cost = compute_step_cost(model_spec, train_spec.batch_size)
    return max(1, min(MAX_SEGMENT_STEPS, SEGMENT_COST_BUDGET // cost))


def compute_steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per epoch (one batch of everything when n < batch_size)."""
    if n < 1:
        raise ValueError("a dataset needs at least one case")
    return max(1, n // batch_size)


@dataclass(frozen=True)
class Layout:
    """The step and checkpoint grid of one task on one training set."""

    steps_per_epoch: int
    """Optimizer steps in one epoch."""
    segment_steps: int
    """Most steps between two checkpoints."""
    max_epochs: int
    """The task's epoch limit."""

    @property
    def total_steps(self) -> int:
        """Steps of a run that reaches max_epochs."""
        return self.steps_per_epoch * self.max_epochs

    @property
    def segments_per_epoch(self) -> int:
        return -(-self.steps_per_epoch // self.segment_steps)

    def get_epoch(self, step: int) -> int:
        """The 1-based epoch step `step` (0-based) belongs to."""
        return step // self.steps_per_epoch + 1

    def get_next_boundary(self, position: int) -> int:
        """The first checkpoint position after `position` (a segment end or an epoch end)."""
        epoch_start = (position // self.steps_per_epoch) * self.steps_per_epoch
        within = position - epoch_start
        return epoch_start + min(self.steps_per_epoch, (within // self.segment_steps + 1) * self.segment_steps)

    def get_planned_position(self, index: int) -> int:
        """Where checkpoint `index` lies when its segment runs to the end."""
        if index < 1:
            return 0
        epoch, seg = divmod(index - 1, self.segments_per_epoch)
        return epoch * self.steps_per_epoch + min(self.steps_per_epoch, (seg + 1) * self.segment_steps)

    def is_valid_position(self, index: int, position: int, is_last: bool) -> bool:
        """True when checkpoint `index` may lie at `position` (only the last one may end its segment early)."""
        if index == 0:
            return position == 0
        planned = self.get_planned_position(index)
        if planned > self.total_steps:
            return False
        if position == planned:
            return True
        return is_last and self.get_planned_position(index - 1) < position < planned


def make_layout(model_spec: ModelSpec, train_spec: TrainSpec, n: int) -> Layout:
    """The layout of a task trained on `n` cases."""
    return Layout(compute_steps_per_epoch(n, train_spec.batch_size), compute_segment_steps(model_spec, train_spec),
                  train_spec.max_epochs)


__all__ = [
    "Layout", "make_layout", "compute_segment_steps", "compute_step_cost", "compute_steps_per_epoch",
    "SEGMENT_COST_BUDGET", "STEP_OVERHEAD_COST", "MAX_SEGMENT_STEPS", "MAX_CHECKPOINTS",
]
