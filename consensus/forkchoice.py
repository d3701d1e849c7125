"""Fork choice: the chain with the most high-accuracy models wins.

A chain's score is the tuple, compared left to right:
  1. hi_count  - blocks whose verified Dice >= params.high_accuracy_ppm
  2. dice_sum  - sum of all blocks' Dice (ppm)
  3. height    - number of blocks
  4. the lower tip hash (byte order) - a deterministic last tie-break
The score depends only on the blocks of the chain, never on arrival order,
and a chain that extends another always scores strictly higher than it
(its height is larger and the first two terms never decrease).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pouw.encoding import Hash32
from pouw.types import BlockHeader, ChainParams
from consensus.rules import is_high_accuracy


@dataclass(frozen=True)
class ChainScore:
    """The fork-choice weight of the chain ending at a block."""

    hi_count: int
    """High-accuracy blocks in the chain."""
    dice_sum: int
    """Sum of the chain's Dice values (ppm)."""
    height: int
    """Height of the tip."""
    tip_hash: Hash32
    """The tip's hash (lower wins a full tie)."""


def compute_genesis_score(genesis_hash: bytes) -> ChainScore:
    """The score of the chain made of genesis alone."""
    return ChainScore(0, 0, 0, genesis_hash)


def compute_child_score(parent: ChainScore, header: BlockHeader, params: ChainParams) -> ChainScore:
    """The score of a chain extended by `header`."""
    return ChainScore(
        hi_count=parent.hi_count + (1 if is_high_accuracy(header, params) else 0),
        dice_sum=parent.dice_sum + header.dice_ppm,
        height=header.height,
        tip_hash=header.hash,
    )


def get_score_key(score: ChainScore) -> tuple:
    """Sort key: larger is better."""
    return (score.hi_count, score.dice_sum, score.height, bytes(b ^ 0xFF for b in score.tip_hash))


def is_better(a: ChainScore, b: ChainScore) -> bool:
    """True when the chain scored `a` beats the chain scored `b`."""
    return get_score_key(a) > get_score_key(b)


def choose_best(scores: Iterable[ChainScore]) -> ChainScore:
    """The best of some chain scores."""
    return max(scores, key=get_score_key)


def compute_confirmations(headers_after: Iterable[BlockHeader], params: ChainParams) -> int:
    """Confirmations of a block: the high-accuracy blocks after it on the best chain."""
    return sum(1 for h in headers_after if is_high_accuracy(h, params))
