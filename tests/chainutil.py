"""An in-memory chain for consensus tests: a dict state with apply/undo by replay."""

from __future__ import annotations

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
