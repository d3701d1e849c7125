"""The chain database: blocks, block index, best-chain height index, state and undo data in LevelDB.

Connecting or disconnecting a block is one atomic, synced write batch that
changes the state, records (or consumes) the block's undo data, moves the
height index and the tip. A process killed at any moment leaves the database
at the state of some tip it really had. On open, the store checks that its
tip, height index and state agree (including a checksum over every state
record, kept up to date incrementally), and refuses with a clear message
otherwise.

Key layout:
  b"M"                 -> StoreMeta
  b"B" + hash          -> Block
  b"I" + hash          -> BlockIndex
  b"H" + height(8)     -> hash of the best chain's block at that height
  b"U" + hash          -> Undo of a connected block
  b"S" + state key     -> state record (consensus.state key layout)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Callable, Iterator

import plyvel

from consensus.forkchoice import ChainScore, compute_child_score, compute_genesis_score, is_better
from consensus.sigcheck import SERIAL, SignatureChecker
from consensus.state import State
from consensus.transition import InvalidBlock, apply_block, apply_genesis
from pouw.encoding import DecodeError, Hash32, MaxLen, decode, encode
from pouw.types import Block, BlockHeader, ChainParams

STORE_VERSION = 1

STATUS_STORED = 0
"""Block data is stored; it has not been connected yet."""
STATUS_VALID = 1
"""The block connected successfully at least once."""
STATUS_INVALID = 2
"""The block (or an ancestor) broke a rule; it is never connected."""

_CHECKSUM_MOD = 2**256


class StoreError(Exception):
    """The chain database cannot be opened or is inconsistent."""


@dataclass(frozen=True)
class StoreMeta:
    """The database's own record: which chain, which tip, and a checksum of the state."""

    version: int
    """Database layout version."""
    chain_id: Hash32
    """Hash of the chain parameters this database follows."""
    tip_hash: Hash32
    """The connected tip."""
    tip_height: int
    """Its height."""
    state_checksum: Hash32
    """Sum mod 2^256 of SHA-256(key || value) over all state records."""


@dataclass(frozen=True)
class BlockIndex:
    """What the store knows about a block besides its data."""

    height: int
    """The block's height."""
    prev_hash: Hash32
    """Its parent."""
    score: ChainScore
    """Fork-choice score of the chain ending at this block."""
    status: int
    """STATUS_STORED, STATUS_VALID or STATUS_INVALID."""
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


def _h(height: int) -> bytes:
    return b"H" + height.to_bytes(8, "big")


def _record_digest(key: bytes, value: bytes) -> int:
    return int.from_bytes(hashlib.sha256(len(key).to_bytes(2, "big") + key + value).digest(), "big")


def _checksum_update(checksum: bytes, changes: dict[bytes, tuple[bytes | None, bytes | None]]) -> bytes:
    total = int.from_bytes(checksum, "big")
    for key, (old, new) in changes.items():
        if old is not None:
            total -= _record_digest(key, old)
        if new is not None:
            total += _record_digest(key, new)
    return (total % _CHECKSUM_MOD).to_bytes(32, "big")


WorkVerifier = Callable[[Block, State], None]
"""Checks a block's work against the state before it; raises InvalidBlock."""


class ChainStore:
    """A node's chain database in `path` (a LevelDB directory)."""

    def __init__(
        self,
        path: Path | str,
        params: ChainParams,
        *,
        verify_work: WorkVerifier | None = None,
        sigcheck: SignatureChecker = SERIAL,
        check: bool = True,
    ):
        self.path = Path(path)
        self.params = params
        self.verify_work = verify_work
        self.sigcheck = sigcheck
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.db = plyvel.DB(str(self.path), create_if_missing=True, paranoid_checks=True)
        except plyvel.IOError as exc:
            raise StoreError(f"cannot open chain database {self.path}: {exc} (is another pouw node using it?)") from exc
        except plyvel.CorruptionError as exc:
            raise StoreError(
                f"chain database {self.path} is corrupted: {exc}; move it away and resync"
            ) from exc
        try:
            if self.db.get(b"M") is None:
                self._init_genesis()
            elif check:
                self.check_consistency()
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        """Close the database."""
        if not self.db.closed:
            self.db.close()

    def __enter__(self) -> "ChainStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading ---------------------------------------------------------
    def get_meta(self) -> StoreMeta:
        """The store's meta record."""
        return decode(StoreMeta, self.db.get(b"M"))

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

    def has_block(self, block_hash: bytes) -> bool:
        """True when the block's data is stored."""
        return self.db.get(b"B" + block_hash) is not None

    def get_block(self, block_hash: bytes) -> Block | None:
        """A stored block by hash."""
        raw = self.db.get(b"B" + block_hash)
        return None if raw is None else decode(Block, raw)

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        """A stored block's encoding, for serving peers without re-encoding."""
        return self.db.get(b"B" + block_hash)

    def get_index(self, block_hash: bytes) -> BlockIndex | None:
        """The index record of a stored block."""
        raw = self.db.get(b"I" + block_hash)
        return None if raw is None else decode(BlockIndex, raw)

    def get_hash_at(self, height: int) -> bytes | None:
        """Hash of the best chain's block at `height`."""
        return self.db.get(_h(height))

    def get_block_at(self, height: int) -> Block | None:
        """The best chain's block at `height`."""
        block_hash = self.get_hash_at(height)
        return None if block_hash is None else self.get_block(block_hash)

    def state(self) -> State:
        """A read view of the connected state (a consistent LevelDB snapshot)."""
        snapshot = self.db.snapshot()
        return State(lambda key: snapshot.get(b"S" + key))

    def iter_state(self) -> Iterator[tuple[bytes, bytes]]:
        """Every state record in key order."""
        for key, value in self.db.iterator(prefix=b"S"):
            yield key[1:], value

    def state_dump(self) -> bytes:
        """All state records, encoded in key order: equal states give equal bytes."""
        return encode([[k, v] for k, v in self.iter_state()])

    # --- consistency -----------------------------------------------------
    def check_consistency(self) -> None:
        """Refuse a database whose tip, height index and state disagree; raises StoreError."""
        try:
            meta = self.get_meta()
        except (DecodeError, TypeError) as exc:
            raise StoreError(f"chain database {self.path} has a damaged meta record: {exc}") from exc
        if meta.version != STORE_VERSION:
            raise StoreError(f"chain database {self.path} has layout version {meta.version}, expected {STORE_VERSION}")
        if meta.chain_id != self.params.chain_id:
            raise StoreError(
                f"chain database {self.path} belongs to another network (chain id {meta.chain_id.hex()[:16]}…)"
            )
        problems = []
        if self.get_hash_at(meta.tip_height) != meta.tip_hash:
            problems.append("the height index does not end at the tip")
        if self.db.get(_h(meta.tip_height + 1)) is not None:
            problems.append("the height index runs past the tip")
        if not self.has_block(meta.tip_hash):
            problems.append("the tip block is missing")
        try:
            status = self.state().get_status()
            if status.tip_hash != meta.tip_hash or status.height != meta.tip_height:
                problems.append("the state is not the tip's state")
        except (LookupError, DecodeError) as exc:
            problems.append(f"the chain status record is unreadable ({exc})")
        total = 0
        for key, value in self.iter_state():
            total = (total + _record_digest(key, value)) % _CHECKSUM_MOD
        if total.to_bytes(32, "big") != meta.state_checksum:
            problems.append("the state checksum does not match its records")
        if meta.tip_height > 0 and self.db.get(b"U" + meta.tip_hash) is None:
            problems.append("the tip's undo data is missing")
        if problems:
            raise StoreError(
                f"chain database {self.path} is inconsistent: {'; '.join(problems)}. "
                "It was not left this way by pouw's atomic writes, so the files were damaged; move it away and resync."
            )

    # --- writing ---------------------------------------------------------
    def _init_genesis(self) -> None:
        state = State(lambda key: None)
        genesis = apply_genesis(state, self.params)
        changes = state.changes()
        checksum = _checksum_update(bytes(32), {k: (None, v) for k, v in changes.items()})
        index = BlockIndex(0, genesis.header.prev_hash, compute_genesis_score(genesis.hash), STATUS_VALID, "")
        with self.db.write_batch(transaction=True, sync=True) as batch:
            for key, value in changes.items():
                batch.put(b"S" + key, value)
            batch.put(b"B" + genesis.hash, encode(genesis))
            batch.put(b"I" + genesis.hash, encode(index))
            batch.put(_h(0), genesis.hash)
            batch.put(b"M", encode(StoreMeta(STORE_VERSION, self.params.chain_id, genesis.hash, 0, checksum)))

    def add_block(self, block: Block) -> BlockIndex:
        """Store a block whose parent is known and index its chain score; does not connect it.

        Raises InvalidBlock for a block whose parent is unknown or invalid,
        or whose height does not follow its parent's.
        """
        block_hash = block.hash
        known = self.get_index(block_hash)
        if known is not None:
            return known
        parent = self.get_index(block.header.prev_hash)
        if parent is None:
            raise InvalidBlock("parent block is unknown")
        if parent.status == STATUS_INVALID:
            raise InvalidBlock("parent block is invalid")
        if block.header.height != parent.height + 1:
            raise InvalidBlock("height does not follow the parent's")
        score = compute_child_score(parent.score, block.header, self.params)
        index = BlockIndex(block.header.height, block.header.prev_hash, score, STATUS_STORED, "")
        with self.db.write_batch(transaction=True, sync=True) as batch:
            batch.put(b"B" + block_hash, encode(block))
            batch.put(b"I" + block_hash, encode(index))
        return index

    def connect_block(self, block: Block) -> None:
        """Apply a child of the tip and make it the tip, in one atomic batch; raises InvalidBlock."""
        meta = self.get_meta()
        if block.header.prev_hash != meta.tip_hash:
            raise InvalidBlock("block does not extend the tip")
        state = self.state()
        if self.verify_work is not None:
            self.verify_work(block, state)
        apply_block(state, block, self.params, self.sigcheck)
        changes = state.changes()
        old_new = {key: (self.db.get(b"S" + key), value) for key, value in changes.items()}
        undo = Undo(tuple(UndoEntry(key, old) for key, (old, _) in sorted(old_new.items())))
        checksum = _checksum_update(meta.state_checksum, old_new)
        block_hash = block.hash
        index = self.get_index(block_hash)
        if index is None:
            raise InvalidBlock("block must be added before it is connected")
        with self.db.write_batch(transaction=True, sync=True) as batch:
            for key, value in changes.items():
                if value is None:
                    batch.delete(b"S" + key)
                else:
                    batch.put(b"S" + key, value)
            batch.put(b"U" + block_hash, encode(undo))
            batch.put(_h(block.header.height), block_hash)
            if index.status != STATUS_VALID:
                batch.put(b"I" + block_hash, encode(replace(index, status=STATUS_VALID)))
            batch.put(b"M", encode(replace(meta, tip_hash=block_hash, tip_height=block.header.height, state_checksum=checksum)))

    def disconnect_tip(self) -> Block:
        """Undo the tip block in one atomic batch; returns the disconnected block."""
        meta = self.get_meta()
        if meta.tip_height == 0:
            raise StoreError("cannot disconnect genesis")
        block = self.get_block(meta.tip_hash)
        raw_undo = self.db.get(b"U" + meta.tip_hash)
        if raw_undo is None:
            raise StoreError(f"undo data of block {meta.tip_hash.hex()} is missing")
        undo = decode(Undo, raw_undo)
        old_new = {e.key: (self.db.get(b"S" + e.key), e.old) for e in undo.entries}
        checksum = _checksum_update(meta.state_checksum, old_new)
        with self.db.write_batch(transaction=True, sync=True) as batch:
            for entry in undo.entries:
                if entry.old is None:
                    batch.delete(b"S" + entry.key)
                else:
                    batch.put(b"S" + entry.key, entry.old)
            batch.delete(b"U" + meta.tip_hash)
            batch.delete(_h(meta.tip_height))
            batch.put(
                b"M",
                encode(replace(meta, tip_hash=block.header.prev_hash, tip_height=meta.tip_height - 1, state_checksum=checksum)),
            )
        return block

    def mark_invalid(self, block_hash: bytes, reason: str) -> None:
        """Record that a block broke a rule, so it is never tried again."""
        index = self.get_index(block_hash)
        if index is not None:
            self.db.put(b"I" + block_hash, encode(replace(index, status=STATUS_INVALID, reason=reason[:1024])), sync=True)

    # --- fork choice -------------------------------------------------------
    def iter_index(self) -> Iterator[tuple[bytes, BlockIndex]]:
        """Every indexed block."""
        for key, value in self.db.iterator(prefix=b"I"):
            yield key[1:], decode(BlockIndex, value)

    def get_best_candidate(self) -> bytes:
        """Hash of the best-scoring stored block whose ancestors are not invalid."""
        best_hash, best = None, None
        for block_hash, index in self.iter_index():
            if index.status == STATUS_INVALID:
                continue
            if best is None or is_better(index.score, best.score):
                if self._has_invalid_ancestor(block_hash):
                    continue
                best_hash, best = block_hash, index
        return best_hash

    def _has_invalid_ancestor(self, block_hash: bytes) -> bool:
        while True:
            index = self.get_index(block_hash)
            if index is None:
                return True
            if index.status == STATUS_INVALID:
                return True
            if index.status == STATUS_VALID and self._is_on_best_chain(block_hash, index.height):
                return False
            if index.height == 0:
                return False
            block_hash = index.prev_hash

    def _is_on_best_chain(self, block_hash: bytes, height: int) -> bool:
        return self.get_hash_at(height) == block_hash

    def get_branch(self, tip: bytes) -> tuple[list[bytes], bytes]:
        """Hashes from the fork point (exclusive) up to `tip`, and the fork point on the best chain."""
        branch = []
        block_hash = tip
        while True:
            index = self.get_index(block_hash)
            if self._is_on_best_chain(block_hash, index.height):
                return list(reversed(branch)), block_hash
            branch.append(block_hash)
            block_hash = index.prev_hash

    def activate_best_chain(self, on_invalid: Callable[[bytes, str], None] | None = None, hint: bytes | None = None) -> bool:
        """Reorganise to the best valid chain; returns True if the tip changed.

        A block that fails to connect is marked invalid (and `on_invalid`
        told), and the search starts again, so the node ends on the best
        chain whose every block is valid.
        """
        start_tip = self.tip_hash
        while True:
            # The hint (a block just added) spares a scan of the whole index.
            best, hint = (hint, None) if hint is not None else (self.get_best_candidate(), None)
            if best is None or best == self.tip_hash:
                return self.tip_hash != start_tip
            current = self.get_index(self.tip_hash)
            if not is_better(self.get_index(best).score, current.score):
                return self.tip_hash != start_tip
            branch, fork = self.get_branch(best)
            fork_height = self.get_index(fork).height
            while self.tip_height > fork_height:
                self.disconnect_tip()
            for block_hash in branch:
                block = self.get_block(block_hash)
                try:
                    self.connect_block(block)
                except InvalidBlock as exc:
                    self.mark_invalid(block_hash, str(exc))
                    if on_invalid is not None:
                        on_invalid(block_hash, str(exc))
                    break

    def submit_block(self, block: Block, on_invalid: Callable[[bytes, str], None] | None = None) -> bool:
        """Store a block and move to the best chain; returns True if the tip changed.

        Raises InvalidBlock if the block itself cannot be stored (unknown or
        invalid parent) or if it was the block that failed to connect.
        """
        index = self.add_block(block)
        if not is_better(index.score, self.get_index(self.tip_hash).score):
            return False
        failures: dict[bytes, str] = {}

        def record(block_hash: bytes, reason: str) -> None:
            failures[block_hash] = reason
            if on_invalid is not None:
                on_invalid(block_hash, reason)

        changed = self.activate_best_chain(record, hint=block.hash)
        if block.hash in failures:
            raise InvalidBlock(failures[block.hash])
        index = self.get_index(block.hash)
        if index.status == STATUS_INVALID:
            raise InvalidBlock(index.reason or "block is invalid")
        return changed

    def get_headers_after(self, block_hash: bytes) -> list[BlockHeader]:
        """Headers of the best chain after `block_hash` (for confirmations)."""
        index = self.get_index(block_hash)
        if index is None or self.get_hash_at(index.height) != block_hash:
            return []
        return [self.get_block_at(h).header for h in range(index.height + 1, self.tip_height + 1)]
