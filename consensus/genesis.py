"""Chain parameters and genesis for the networks pouw knows: devnet and main."""

from __future__ import annotations

import time

from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.types import Allocation, ChainParams, StandingTask

COIN = 100_000_000
"""Base units per coin."""


def make_standing_task(
    patch: int = 64,
    train_count: int = 1024,
    test_count: int = 64,
    batch_size: int = 128,
    max_epochs: int = 100,
    num_classes: int = 4,
    learning_rate: float = 0.01,
) -> StandingTask:
    """The standing task: a small 2D U-Net on the project's synthetic scenes (pouw.seg.synthetic).

    The scenes are hard enough that one CPU thread ends a phase well below
    Dice 0.99 (benchmarks/bench_standing.py), so claims rarely tie. An epoch
    is train_count / batch_size = 8 optimizer steps: float rounding that
    differs between thread counts then stays inside the spot check's replay
    tolerance of 0.05 (measured at most 0.02, in epoch 1; 16 steps an epoch
    reached 0.03, 64 steps 0.2). `max_epochs` bounds the checkpoints a claim
    carries (each node fetches and checks them all).
    """
    return StandingTask(
        model=ModelSpec(architecture="unet2d", in_channels=1, num_classes=num_classes, base_filters=8,
                        patch_size=(patch, patch)),
        train=TrainSpec(learning_rate=learning_rate, batch_size=batch_size, loss="dice", optimizer="adam",
                        max_epochs=max_epochs),
        train_count=train_count,
        test_count=test_count,
    )


def make_devnet_params(
    genesis_time: int | None = None,
    allocations: tuple[Allocation, ...] = (),
    *,
    phase1_seconds: int = 20,
    phase2_seconds: int = 10,
    name: str = "devnet",
) -> ChainParams:
    """A devnet: short phases, small standing task, tasks mature after 3 blocks, reorganisations at most 2 deep.

    The minimum task reward equals the block reward: a task's escrow then
    covers what its block would mint, which the economics rely on
    (docs/security.md).
    """
    return ChainParams(
        name=name,
        genesis_time=int(time.time()) if genesis_time is None else genesis_time,
        phase1_seconds=phase1_seconds,
        phase2_seconds=phase2_seconds,
        clock_skew_seconds=min(5, max(1, phase2_seconds // 4)),
        key_grace_seconds=min(5, max(1, phase2_seconds // 4)),
        block_reward=50 * COIN,
        max_block_size=4 * 1024 * 1024,
        max_block_transactions=20_000,
        max_unselected_tasks=1_000,
        min_task_reward=50 * COIN,
        high_accuracy_ppm=800_000,
        task_maturity_blocks=3,
        finality_depth=2,
        dice_tolerance_ppm=1_000,
        replay_top_q=2,
        replay_random=1,
        claim_bond_base=1 * COIN,
        claim_bond_per_mib=COIN // 100,
        evidence_window_blocks=4,
        unbond_delay_blocks=8,
        # Cheap epochs (32 images) so a busy CPU gets several in a short test phase, and one class with
        # lr 0.02 so that even one epoch lands above Dice 0.5; it levels off near 0.75, below high accuracy.
        standing_task=make_standing_task(patch=32, train_count=32, test_count=64, batch_size=4, max_epochs=50,
                                         num_classes=2, learning_rate=0.02),
        allocations=tuple(allocations),
    )


MAIN_GENESIS_TIME = 1_798_761_600
"""2027-01-01T00:00:00Z."""


def make_main_params() -> ChainParams:
    """The default network: 10-minute Phase 1, 2-minute Phase 2, no premine."""
    return ChainParams(
        name="main",
        genesis_time=MAIN_GENESIS_TIME,
        phase1_seconds=600,
        phase2_seconds=120,
        clock_skew_seconds=5,
        key_grace_seconds=10,
        block_reward=50 * COIN,
        max_block_size=4 * 1024 * 1024,
        max_block_transactions=20_000,
        max_unselected_tasks=10_000,
        min_task_reward=50 * COIN,
        high_accuracy_ppm=800_000,
        task_maturity_blocks=12,
        finality_depth=6,
        dice_tolerance_ppm=1_000,
        replay_top_q=2,
        replay_random=1,
        claim_bond_base=1 * COIN,
        claim_bond_per_mib=COIN // 100,
        evidence_window_blocks=12,
        unbond_delay_blocks=24,
        standing_task=make_standing_task(patch=64, train_count=1024, test_count=64, batch_size=128, max_epochs=100,
                                         num_classes=4),
        allocations=(),
    )
