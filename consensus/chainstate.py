"""The chain state: one road for every block, connect and disconnect with undo, and the best chain.

Modelled on Bitcoin Core's CChainState. A block takes one road
(`process_new_block`), in this order:

  1. already known?                       -> KNOWN (or INVALID with the stored reason)
  2. context-free checks (`check_block`)  -> INVALID
  3. the local clock: a block from a Phase 2 that has not begun -> REFUSED (not remembered)
  4. the parent: unknown -> MISSING (retry when it comes); invalid -> INVALID;
     forking more than `finality_depth` below the tip -> REFUSED (an operator
     decides such splits: `invalidate_block` / `reconsider_block`)
  5. the rules against the parent's state (`apply_block` on an overlay) -> INVALID
  6. the work check handed in by the caller: fetch what verification needs,
     recompute the Dice and replay the training -> INVALID, or MISSING when a
     blob cannot be had yet (not a verdict on the block)
  7. store the block as valid, then activate the best chain -> CONNECTED or SIDE_BRANCH

Steps 1-5 are `check_new_block`, 7 is `accept_block`; both run under the
chain's lock, step 6 (seconds to minutes) without it, so a node keeps
answering while it verifies. Only blocks that passed 1-6 are
ever stored, so a side branch is validated before it is kept, and switching
to a better branch (`activate_best_chain`) never leaves a valid chain for
an unchecked one. A block that fails is remembered as invalid (a bounded
memory; stored blocks are marked with all their descendants) and its
children are refused without a second look.

Connecting and disconnecting are each one atomic batch (`pouw.chaindb`)
with undo data. On open, the state is checked against the tip and the best
chain is activated again, so a node killed between storing a better branch
and switching to it comes back on the better tip by itself.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Annotated, Callable, Iterator

from pouw.chaindb import ChainDB, StoreError, StoreMeta
from pouw.encoding import DecodeError, Hash32, MaxLen, decode, encode
from pouw.types import Block, BlockHeader, ChainParams

from consensus.clock import is_block_from_future
from consensus.forkchoice import ChainScore, compute_child_score, compute_genesis_score, is_better
from consensus.sigcheck import SERIAL, SignatureChecker
from consensus.state import State
from consensus.transition import InvalidBlock, apply_block, apply_genesis, check_block

INDEX_VALID = 1
"""The block passed every check (its work per the node's verification policy) and is stored."""
INDEX_INVALID = 2
"""The block, or an ancestor, broke a rule; it is never connected."""

MAX_REMEMBERED_INVALID = 10_000
"""Invalid blocks that were never stored are remembered in memory, this many at most (peers make them cheaply)."""


@dataclass(frozen=True)
class BlockIndex:
    """What the chain state knows about a stored block besides its data."""

    height: int
    """The block's height."""
    prev_hash: Hash32
    """Its parent."""
    slot: int
    """Its slot."""
    score: ChainScore
    """Fork-choice score of the chain ending at this block."""
    status: int
    """INDEX_VALID or INDEX_INVALID."""
    reason: Annotated[str, MaxLen(1024)]
    """Why the block is invalid ("" otherwise)."""


@dataclass(frozen=True)
class UndoEntry:
    """One state record as it was before a block."""

    key: Annotated[bytes, MaxLen(256)]
    """State key."""
    old: bytes | None
    """Previous value, or None if the key did not exist."""


@dataclass(frozen=True)
class Undo:
    """Everything needed to disconnect a block."""

    entries: Annotated[tuple[UndoEntry, ...], MaxLen(10_000_000)]
    """Previous values of every state record the block changed."""


class BlockStatus(enum.Enum):
    """The outcome of handing a block to the chain state."""

    CONNECTED = "connected"
    """Valid, and on the best chain now."""
    SIDE_BRANCH = "side-branch"
    """Valid and stored, but not on the best chain."""
    INVALID = "invalid"
    """Breaks a rule (see the reason); never relayed."""
    MISSING = "missing"
    """Cannot be judged yet (parent or blobs missing); retry later."""
    REFUSED = "refused"
    """Not taken by this node now, without a verdict on its rules: from the future, or beyond the finality window."""
    KNOWN = "known"
    """Already stored."""


@dataclass(frozen=True)
class BlockResult:
    """What became of a block, and what the best chain did meanwhile."""

    status: BlockStatus
    """The outcome."""
    block_hash: bytes
    """The block's hash."""
    reason: str = ""
    """Why it is invalid or missing ("" otherwise)."""
    connected: tuple[Block, ...] = ()
    """Blocks connected to the best chain by this call, in order."""
    disconnected: tuple[Block, ...] = ()
    """Blocks disconnected from the best chain by this call, tip first."""
    sender_at_fault: bool = False
    """True when whoever sent the block broke a rule no honest node breaks (invalid, or stamped in the future)."""

    @property
    def is_valid(self) -> bool:
        """True when the block passed every check (connected, side branch or already stored)."""
        return self.status in (BlockStatus.CONNECTED, BlockStatus.SIDE_BRANCH, BlockStatus.KNOWN)


@dataclass(frozen=True)
class Candidate:
    """A block that passed the checks that need no blobs, with the state it extends."""

    block: Block
    """The block."""
    parent_state: State
    """The state after its parent (a read overlay); the work check reads the task from it."""


class MissingData(Exception):
    """Something a block's verification needs cannot be had now (a blob, a key); not a verdict on the block."""


WorkCheck = Callable[[Candidate], None]
"""Step 6 of the road: fetch what the block's verification needs and verify its work; raises InvalidBlock or MissingData."""


@dataclass(frozen=True)
class Activation:
    """Blocks an activation of the best chain connected and disconnected."""

    connected: tuple[Block, ...]
    """Connected, in order."""
    disconnected: tuple[Block, ...]
    """Disconnected, tip first."""


ActivationListener = Callable[[Activation], None]
"""Told (under the chain's lock) whenever the best chain moved: the mempool follows the tip this way."""


class ChainState:
    """The chain of one node over its ChainDB."""

    def __init__(self, db: ChainDB, params: ChainParams, *, sigcheck: SignatureChecker = SERIAL, check: bool = True):
        self.db = db
        self.params = params
        self.sigcheck = sigcheck
        self.lock = threading.RLock()
        """Held while the chain is read for a decision or written; callers that keep pools in step share it."""
        self._listeners: list[ActivationListener] = []
        self._invalid: OrderedDict[bytes, str] = OrderedDict()
        if db.is_empty:
            self._write_genesis()
        elif check:
            self.check_consistency()
        self.activate_best_chain()

    @classmethod
    def open(cls, path, params: ChainParams, **kwargs) -> "ChainState":
        """Open (or create) the chain database in `path`; closes it again if it cannot be used."""
        db = ChainDB(path)
        try:
            return cls(db, params, **kwargs)
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        with self.lock:
            self.db.close()

    def subscribe(self, listener: ActivationListener) -> None:
        """Call `listener` after every activation that moved the tip."""
        self._listeners.append(listener)

    def __enter__(self) -> "ChainState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading -------------------------------------------------------------
    def get_meta(self) -> StoreMeta:
        """The database's meta record (tip and state checksum)."""
        return self.db.get_meta()

    @property
    def tip_hash(self) -> bytes:
        """Hash of the connected tip."""
        return self.get_meta().tip_hash

    @property
    def tip_height(self) -> int:
        """Height of the connected tip."""
        return self.get_meta().tip_height

    def get_tip(self) -> Block:
        """The connected tip block."""
        return self.get_block(self.tip_hash)

    def get_block(self, block_hash: bytes) -> Block | None:
        """A stored block by hash."""
        return self.db.get_block(block_hash)

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        """A stored block's encoding, for serving peers without re-encoding."""
        return self.db.get_block_bytes(block_hash)

    def get_hash_at(self, height: int) -> bytes | None:
        """Hash of the best chain's block at `height`."""
        return self.db.get_hash_at(height)

    def get_block_at(self, height: int) -> Block | None:
        """The best chain's block at `height`."""
        block_hash = self.get_hash_at(height)
        return None if block_hash is None else self.get_block(block_hash)

    def get_index(self, block_hash: bytes) -> BlockIndex | None:
        """The index record of a stored block."""
        raw = self.db.get_index_bytes(block_hash)
        return None if raw is None else decode(BlockIndex, raw)

    def iter_index(self) -> Iterator[tuple[bytes, BlockIndex]]:
        """Every indexed block."""
        for block_hash, raw in self.db.iter_index_bytes():
            yield block_hash, decode(BlockIndex, raw)

    def get_tip_score(self) -> ChainScore:
        """The fork-choice score of the connected chain."""
        return self.get_index(self.tip_hash).score

    def is_on_best_chain(self, block_hash: bytes) -> bool:
        """True when a stored block is on the connected chain."""
        index = self.get_index(block_hash)
        return index is not None and self.get_hash_at(index.height) == block_hash

    def get_invalid_reason(self, block_hash: bytes) -> str | None:
        """Why a block is known to be invalid, or None."""
        if block_hash in self._invalid:
            return self._invalid[block_hash]
        index = self.get_index(block_hash)
        return index.reason if index is not None and index.status == INDEX_INVALID else None

    def state(self) -> State:
        """A read view of the connected state (a consistent snapshot)."""
        return State(self.db.get_state_reader())

    def state_dump(self) -> bytes:
        """All state records in key order (equal states give equal bytes)."""
        return self.db.state_dump()

    def get_headers_after(self, block_hash: bytes) -> list[BlockHeader]:
        """Headers of the best chain after `block_hash` (for confirmations)."""
        index = self.get_index(block_hash)
        if index is None or self.get_hash_at(index.height) != block_hash:
            return []
        return [self.get_block_at(h).header for h in range(index.height + 1, self.tip_height + 1)]

    # --- consistency -----------------------------------------------------------
    def check_consistency(self) -> None:
        """Refuse a database whose records disagree (raises StoreError)."""
        problems = self.db.check_structure(self.params.chain_id)
        meta = self.db.get_meta()
        try:
            status = self.state().get_status()
            if status.tip_hash != meta.tip_hash or status.height != meta.tip_height:
                problems.append("the state is not the tip's state")
        except (LookupError, DecodeError) as exc:
            problems.append(f"the chain status record is unreadable ({exc})")
        try:
            tip = self.get_index(meta.tip_hash)
            if tip is None or tip.status != INDEX_VALID or tip.height != meta.tip_height:
                problems.append("the tip's index record is missing or wrong")
        except DecodeError as exc:
            problems.append(f"the tip's index record is unreadable ({exc})")
        if problems:
            self.db.refuse(problems)

    # --- the road ------------------------------------------------------------------
    def process_new_block(self, block: Block, now: float, check_work: WorkCheck) -> BlockResult:
        """Take a block from anywhere (peer, miner, sync) down the one road; see the module doc."""
        with self.lock:
            checked = self.check_new_block(block, now)
        if isinstance(checked, BlockResult):
            return checked
        try:
            check_work(checked)
        except InvalidBlock as exc:
            with self.lock:
                return self.reject(block.hash, str(exc))
        except MissingData as exc:
            return BlockResult(BlockStatus.MISSING, block.hash, str(exc))
        with self.lock:
            return self.accept_block(checked)

    def check_new_block(self, block: Block, now: float) -> Candidate | BlockResult:
        """Steps 1-5 of the road: everything that needs neither blobs nor much time."""
        with self.lock:
            block_hash = block.hash
            known = self.get_index(block_hash)
            if known is not None:
                if known.status == INDEX_INVALID:
                    return BlockResult(BlockStatus.INVALID, block_hash, known.reason)
                return BlockResult(BlockStatus.KNOWN, block_hash)
            if block_hash in self._invalid:
                return BlockResult(BlockStatus.INVALID, block_hash, self._invalid[block_hash])
            header = block.header
            try:
                check_block(block, self.params)
            except InvalidBlock as exc:
                return self.reject(block_hash, str(exc))
            if is_block_from_future(self.params, header.timestamp, now):
                return BlockResult(
                    BlockStatus.REFUSED, block_hash,
                    f"block from the future: stamped {header.timestamp - now:.0f} s ahead of this node's clock",
                    sender_at_fault=True,
                )
            parent = self.get_index(header.prev_hash)
            if parent is None:
                reason = self._invalid.get(header.prev_hash)
                if reason is not None:
                    return self.reject(block_hash, "parent block is invalid")
                return BlockResult(BlockStatus.MISSING, block_hash, "parent block is unknown")
            if parent.status == INDEX_INVALID:
                return self.reject(block_hash, "parent block is invalid")
            depth = self.get_fork_depth(header.prev_hash)
            if depth > self.params.finality_depth:
                return BlockResult(
                    BlockStatus.REFUSED, block_hash,
                    f"block {header.height} forks {depth} blocks below the tip, deeper than the finality window of "
                    f"{self.params.finality_depth}; if this node is on the wrong side of a split, an operator must "
                    "`pouw chain invalidate` its first block of the split",
                )
            parent_state = self.get_state_after(header.prev_hash)
            try:
                apply_block(parent_state.child(), block, self.params, self.sigcheck)
            except InvalidBlock as exc:
                return self.reject(block_hash, str(exc))
            return Candidate(block, parent_state)

    def accept_block(self, candidate: Candidate) -> BlockResult:
        """Step 7: store a block whose work was checked, then activate the best chain."""
        with self.lock:
            block = candidate.block
            block_hash = block.hash
            if self.get_index(block_hash) is not None:
                return BlockResult(BlockStatus.KNOWN, block_hash)
            parent = self.get_index(block.header.prev_hash)
            if parent is None or parent.status == INDEX_INVALID:
                # The parent was invalidated while this block's work was checked.
                return self.reject(block_hash, "parent block is invalid")
            self.store_valid_block(block, parent)
            activation = self.activate_best_chain(hint=block_hash)
            status = BlockStatus.CONNECTED if self.is_on_best_chain(block_hash) else BlockStatus.SIDE_BRANCH
            return BlockResult(status, block_hash, "", activation.connected, activation.disconnected)

    def store_valid_block(self, block: Block, parent: BlockIndex) -> BlockIndex:
        """Write a validated block and its index record (one batch); does not connect it."""
        header = block.header
        score = compute_child_score(parent.score, block, self.params)
        index = BlockIndex(header.height, header.prev_hash, header.slot, score, INDEX_VALID, "")
        batch = self.db.batch()
        batch.put_block(block.hash, encode(block))
        batch.put_index(block.hash, encode(index))
        batch.commit()
        return index

    def reject(self, block_hash: bytes, reason: str) -> BlockResult:
        """Remember that a block is invalid (bounded memory) and say so."""
        self._invalid[block_hash] = reason
        self._invalid.move_to_end(block_hash)
        while len(self._invalid) > MAX_REMEMBERED_INVALID:
            self._invalid.popitem(last=False)
        return BlockResult(BlockStatus.INVALID, block_hash, reason, sender_at_fault=True)

    # --- state of a side branch --------------------------------------------------------
    def get_branch(self, block_hash: bytes) -> tuple[list[bytes], bytes]:
        """Hashes from the fork point (exclusive) up to `block_hash`, and the fork point on the best chain."""
        branch = []
        while not self.is_on_best_chain(block_hash):
            branch.append(block_hash)
            block_hash = self.get_index(block_hash).prev_hash
        return list(reversed(branch)), block_hash

    def get_fork_depth(self, block_hash: bytes) -> int:
        """How far below the tip a stored block's branch leaves the best chain (0 for a block on it)."""
        tip = self.tip_height
        steps = 0
        while not self.is_on_best_chain(block_hash):
            index = self.get_index(block_hash)
            block_hash = index.prev_hash
            steps += 1
            if steps > tip + 1:
                break
        return tip - self.get_index(block_hash).height

    def get_state_after(self, block_hash: bytes) -> State:
        """A read overlay of the state right after a stored valid block.

        For the tip it is a snapshot; for a block off the best chain the
        best chain's undo records are laid back down to the fork point and
        the branch's blocks applied on top, all in memory.
        """
        if block_hash == self.tip_hash:
            return self.state()
        branch, fork = self.get_branch(block_hash)
        fork_height = self.get_index(fork).height
        reader = self.db.get_state_reader()
        rolled_back: dict[bytes, bytes | None] = {}
        for height in range(self.tip_height, fork_height, -1):
            undo = decode(Undo, self.db.get_undo_bytes(self.get_hash_at(height)))
            for entry in undo.entries:
                rolled_back[entry.key] = entry.old
        state = State(lambda key: rolled_back[key] if key in rolled_back else reader(key))
        for side_hash in branch:
            step = state.child()
            apply_block(step, self.get_block(side_hash), self.params, self.sigcheck)
            state.absorb(step)
        return state.child()

    # --- connect, disconnect, activate ------------------------------------------------------
    def _write_genesis(self) -> None:
        self.db.initialise(self.params.chain_id)
        state = State(lambda key: None)
        genesis = apply_genesis(state, self.params)
        index = BlockIndex(0, genesis.header.prev_hash, 0, compute_genesis_score(genesis.hash), INDEX_VALID, "")
        batch = self.db.batch()
        for key, value in state.changes().items():
            batch.set_state(key, value)
        batch.put_block(genesis.hash, encode(genesis))
        batch.put_index(genesis.hash, encode(index))
        batch.put_height(0, genesis.hash)
        batch.set_tip(genesis.hash, 0)
        batch.commit()

    def connect_block(self, block: Block) -> None:
        """Apply a stored child of the tip and make it the tip, in one atomic batch; raises InvalidBlock."""
        if block.header.prev_hash != self.tip_hash:
            raise InvalidBlock("block does not extend the tip")
        state = self.state()
        apply_block(state, block, self.params, self.sigcheck)
        changes = state.changes()
        undo = Undo(tuple(UndoEntry(key, self.db.get_state(key)) for key in sorted(changes)))
        batch = self.db.batch()
        for key, value in changes.items():
            batch.set_state(key, value)
        batch.put_undo(block.hash, encode(undo))
        batch.put_height(block.header.height, block.hash)
        batch.set_tip(block.hash, block.header.height)
        batch.commit()

    def disconnect_tip(self) -> Block:
        """Undo the tip block in one atomic batch; returns the disconnected block."""
        meta = self.get_meta()
        if meta.tip_height == 0:
            raise StoreError("cannot disconnect genesis")
        block = self.get_block(meta.tip_hash)
        raw_undo = self.db.get_undo_bytes(meta.tip_hash)
        if raw_undo is None:
            raise StoreError(f"undo data of block {meta.tip_hash.hex()} is missing")
        batch = self.db.batch()
        for entry in decode(Undo, raw_undo).entries:
            batch.set_state(entry.key, entry.old)
        batch.delete_undo(meta.tip_hash)
        batch.delete_height(meta.tip_height)
        batch.set_tip(block.header.prev_hash, meta.tip_height - 1)
        batch.commit()
        return block

    def get_best_candidate(self, max_depth: int | None = None) -> bytes:
        """Hash of the best-scoring valid stored block within `max_depth` of the tip (a full scan of the index)."""
        best_hash, best = self.tip_hash, self.get_tip_score()
        for block_hash, index in self.iter_index():
            if index.status == INDEX_VALID and is_better(index.score, best):
                if max_depth is None or self.get_fork_depth(block_hash) <= max_depth:
                    best_hash, best = block_hash, index.score
        return best_hash

    def activate_best_chain(self, hint: bytes | None = None, max_depth: int | None = -1) -> Activation:
        """Move the connected tip to the best valid stored block; returns what was connected and disconnected.

        `hint` (a block just stored) spares a scan of the index: only it can
        have become better than the tip. Branches forking deeper than
        `max_depth` (default: the finality depth; None: any, for an operator's
        command) are not switched to. Every stored block was validated
        before it was stored, so a switch only fails if the database was
        damaged; then the block is marked invalid with its descendants and
        the search starts again.
        """
        depth_limit = self.params.finality_depth if max_depth == -1 else max_depth
        with self.lock:
            connected: list[Block] = []
            disconnected: list[Block] = []
            while True:
                best = self.get_best_candidate(depth_limit) if hint is None else hint
                hint = None
                index = self.get_index(best)
                too_deep = depth_limit is not None and index is not None and self.get_fork_depth(best) > depth_limit
                if best == self.tip_hash or index is None or too_deep or not is_better(index.score, self.get_tip_score()):
                    activation = Activation(tuple(connected), tuple(disconnected))
                    if connected or disconnected:
                        for listener in self._listeners:
                            listener(activation)
                    return activation
                branch, fork = self.get_branch(best)
                fork_height = self.get_index(fork).height
                while self.tip_height > fork_height:
                    disconnected.append(self.disconnect_tip())
                for block_hash in branch:
                    block = self.get_block(block_hash)
                    try:
                        self.connect_block(block)
                    except InvalidBlock as exc:
                        self.mark_invalid(block_hash, f"failed to connect: {exc}")
                        break
                    connected.append(block)

    def invalidate_block(self, block_hash: bytes, reason: str = "invalidated by the operator") -> Activation:
        """An operator's `invalidateblock`: mark a stored block and its descendants invalid and leave them.

        The tip moves back below the block and then to the best remaining
        valid branch, however deep (the operator decided this split).
        """
        with self.lock:
            index = self.get_index(block_hash)
            if index is None:
                raise LookupError("no such block is stored")
            if index.height == 0:
                raise ValueError("genesis cannot be invalidated")
            on_best = self.is_on_best_chain(block_hash)
            self.mark_invalid(block_hash, reason)
            disconnected: list[Block] = []
            if on_best:
                while self.tip_height >= index.height:
                    disconnected.append(self.disconnect_tip())
            if disconnected:
                for listener in self._listeners:
                    listener(Activation((), tuple(disconnected)))
            activation = self.activate_best_chain(max_depth=None)
            return Activation(activation.connected, tuple(disconnected) + activation.disconnected)

    def reconsider_block(self, block_hash: bytes) -> Activation:
        """An operator's `reconsiderblock`: clear the invalid marks of a block, its ancestors and descendants, then take the best chain, however deep."""
        with self.lock:
            if self.get_index(block_hash) is None:
                raise LookupError("no such block is stored")
            children: dict[bytes, list[bytes]] = {}
            for child_hash, index in self.iter_index():
                children.setdefault(index.prev_hash, []).append(child_hash)
            family = [block_hash]
            queue = list(children.get(block_hash, []))
            while queue:
                child = queue.pop()
                family.append(child)
                queue.extend(children.get(child, []))
            ancestor = self.get_index(block_hash).prev_hash
            while (index := self.get_index(ancestor)) is not None and index.status == INDEX_INVALID:
                family.append(ancestor)
                ancestor = index.prev_hash
            batch = self.db.batch()
            for h in family:
                index = self.get_index(h)
                if index.status == INDEX_INVALID:
                    batch.put_index(h, encode(replace(index, status=INDEX_VALID, reason="")))
                self._invalid.pop(h, None)
            batch.commit()
            return self.activate_best_chain(max_depth=None)

    def mark_invalid(self, block_hash: bytes, reason: str) -> list[bytes]:
        """Mark a stored block and all its stored descendants invalid (one batch); returns their hashes."""
        with self.lock:
            marked = [block_hash]
            children: dict[bytes, list[bytes]] = {}
            for child_hash, index in self.iter_index():
                children.setdefault(index.prev_hash, []).append(child_hash)
            queue = list(children.get(block_hash, []))
            while queue:
                child = queue.pop()
                marked.append(child)
                queue.extend(children.get(child, []))
            batch = self.db.batch()
            for i, h in enumerate(marked):
                index = self.get_index(h)
                why = reason if i == 0 else "descends from an invalid block"
                batch.put_index(h, encode(replace(index, status=INDEX_INVALID, reason=why[:1024])))
            batch.commit()
            return marked
