"""Fork choice: the chain with the most high-accuracy models wins, comparing like with like.

A chain's score is the tuple, compared left to right:
  1. hi_count   - useful blocks whose verified Dice >= params.high_accuracy_ppm
  2. duty_count - duties done: useful blocks (a published task scored on its
                  test set, mode 0) plus blocks that carried the next
                  published task's training key
  3. dice_sum   - sum of the useful blocks' Dice (ppm)
  4. height     - number of blocks
  5. tip_dice   - the tip's own Dice, whatever its mode: between siblings
                  (one parent, so the same standing data) the better model
  6. the lower tie value of the tip, H(prev_hash || miner) - a value the
     miner fixed when it committed, so it cannot grind it
  7. the lower tip hash - only when one miner made two blocks on one parent

Only useful blocks weigh: the standing task's data differ between branches
(they come from each branch's own block hashes) and fallback modes score
on easier data, so their Dice is not comparable (the paper's §4.1). Every
branch a node may switch to forks at most `finality_depth` blocks below its
tip, and tasks wait `task_maturity_blocks` > `finality_depth` after their
inclusion before they are selected, so competing branches train the same
tasks in the same order and these counts compare results on the same data.

The score depends only on the blocks of the chain, never on arrival order,
and a chain that extends another always scores strictly higher than it
(its height is larger and the first three terms never decrease).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from pouw.encoding import Hash32
from pouw.types import KEY_TRAIN, Block, BlockHeader, ChainParams
from consensus.rules import compute_tie_value, is_high_accuracy, is_useful


@dataclass(frozen=True)
class ChainScore:
    """The fork-choice weight of the chain ending at a block."""

    hi_count: int
    """Useful high-accuracy blocks in the chain."""
    duty_count: int
    """Useful blocks plus blocks that carried the next task's training key."""
    dice_sum: int
    """Sum of the useful blocks' Dice (ppm)."""
    height: int
    """Height of the tip."""
    tip_dice: int
    """The tip's own Dice (ppm), in any mode."""
    tie_value: Hash32
    """compute_tie_value(tip.prev_hash, tip.miner) (lower wins a tie)."""
    tip_hash: Hash32
    """The tip's hash (lower wins a full tie)."""


def compute_genesis_score(genesis_hash: bytes) -> ChainScore:
    """The score of the chain made of genesis alone."""
    return ChainScore(0, 0, 0, 0, 0, bytes(32), genesis_hash)


def is_carrying_next_key(block: Block) -> bool:
    """True when a block carried the next height's training key (a chain fact the next block depends on)."""
    return any(r.which == KEY_TRAIN for r in block.body.key_reveals)


def compute_child_score(parent: ChainScore, block: Block, params: ChainParams) -> ChainScore:
    """The score of a chain extended by `block`."""
    return compute_extended_score(parent, block.header, is_carrying_next_key(block), params)


def compute_extended_score(parent: ChainScore, header: BlockHeader, carried_next_key: bool, params: ChainParams) -> ChainScore:
    """The score of a chain extended by a block given by its header and whether it carried the next training key."""
    useful = is_useful(header, params)
    return ChainScore(
        hi_count=parent.hi_count + (1 if is_high_accuracy(header, params) else 0),
        duty_count=parent.duty_count + (1 if useful else 0) + (1 if carried_next_key else 0),
        dice_sum=parent.dice_sum + (header.dice_ppm if useful else 0),
        height=header.height,
        tip_dice=header.dice_ppm,
        tie_value=compute_tie_value(header.prev_hash, header.miner),
        tip_hash=header.hash,
    )


def get_sibling_key(header: BlockHeader, carried_next_key: bool, params: ChainParams) -> tuple:
    """How fork choice ranks blocks on one parent against each other (larger is better)."""
    return get_score_key(compute_extended_score(compute_genesis_score(bytes(32)), header, carried_next_key, params))


def _low_first(value: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in value)


def get_score_key(score: ChainScore) -> tuple:
    """Sort key: larger is better."""
    return (score.hi_count, score.duty_count, score.dice_sum, score.height, score.tip_dice,
            _low_first(score.tie_value), _low_first(score.tip_hash))


def is_better(a: ChainScore, b: ChainScore) -> bool:
    """True when the chain scored `a` beats the chain scored `b`."""
    return get_score_key(a) > get_score_key(b)


def choose_best(scores: Iterable[ChainScore]) -> ChainScore:
    """The best of some chain scores."""
    return max(scores, key=get_score_key)


def compute_confirmations(headers_after: Iterable[BlockHeader], params: ChainParams) -> int:
    """Confirmations of a block: the useful high-accuracy blocks after it on the best chain."""
    return sum(1 for h in headers_after if is_high_accuracy(h, params))
