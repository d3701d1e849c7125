"""An in-memory chain for consensus tests: a dict state with apply/undo by replay."""

from __future__ import annotations

import time

from consensus.state import State, apply_changes
from consensus.transition import apply_block, apply_genesis
from pouw.types import Block, ChainParams


class MemoryChain:
    """Genesis plus applied blocks over a plain dict."""

    def __init__(self, params: ChainParams):
        self.params = params
        self.data: dict[bytes, bytes] = {}
        state = State.from_mapping(self.data)
        self.genesis = apply_genesis(state, params)
        apply_changes(self.data, state.changes())
        self.blocks: list[Block] = [self.genesis]

    def state(self) -> State:
        """A fresh overlay on the current state."""
        return State.from_mapping(self.data)

    def apply(self, block: Block) -> None:
        """Apply a block (raises InvalidBlock and changes nothing if it is invalid)."""
        state = self.state()
        apply_block(state, block, self.params)
        apply_changes(self.data, state.changes())
        self.blocks.append(block)


def unchecked_work(candidate) -> None:
    """A work check that accepts: for chain tests whose blocks carry made-up models (the work is tested elsewhere)."""


def submit(chain, block: Block, check_work=unchecked_work):
    """Hand `block` to a consensus.chainstate.ChainState down its one road, now."""
    return chain.process_new_block(block, time.time(), check_work)


def with_deep_finality(params, depth: int = 30):
    """Parameters whose finality window (and task maturity, kept above it) allow reorganisations `depth` deep."""
    import dataclasses

    return dataclasses.replace(params, finality_depth=depth, task_maturity_blocks=depth + 1)


def mine_published_tasks(chain: MemoryChain, miner, publisher, count: int, dice_ppm: int, tag: str, *, nonce: int = 0) -> list[Block]:
    """Publish `count` tasks in one block, then mine until each was scored (mode 0, both keys) at `dice_ppm`.

    Returns every block applied; the blocks on the tasks are useful blocks
    that weigh in fork choice, the standing-task blocks between them do not.
    """
    from consensus.fixtures import make_next_block, make_task
    from consensus.genesis import COIN

    tasks = [make_task(publisher, (60 + i) * COIN, nonce + i, f"{tag}-{i}") for i in range(count)]
    labels = {t.task_id: f"{tag}-{i}" for i, t in enumerate(tasks)}
    blocks = [make_next_block(chain.state(), chain.params, miner, transactions=tuple(tasks), salt=tag.encode())]
    chain.apply(blocks[-1])
    pending = set(labels)
    while pending:
        block = make_next_block(chain.state(), chain.params, miner, task_labels=labels, dice_ppm=dice_ppm, salt=tag.encode())
        chain.apply(block)
        blocks.append(block)
        pending.discard(block.header.task_id)
    return blocks
