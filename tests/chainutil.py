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
