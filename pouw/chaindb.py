"""The chain database's raw records in LevelDB: blocks, block index, height index, undo, state, meta.

This is storage only, like Bitcoin Core's txdb: it knows keys, bytes and
atomic batches, not rules. What an index record or an undo record means is
decided by `consensus.chainstate`, which encodes them; this module keeps
them and the meta record consistent.

Every change is one synced LevelDB write batch (`ChainDB.batch()`), so a
process killed at any moment leaves the records of some batch it really
wrote. The meta record keeps a checksum over the state records (the sum
mod 2^256 of SHA-256(len(key) || key || value)), updated with each batch
from the old and new values it writes, and checked on open.

Key layout:
  b"M"                 -> StoreMeta
  b"B" + hash          -> encoded Block
  b"I" + hash          -> block index record (consensus.chainstate.BlockIndex)
  b"H" + height(8)     -> hash of the best chain's block at that height
  b"U" + hash          -> undo record of a connected block
  b"S" + state key     -> state record (consensus.state key layout)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import plyvel

from pouw.encoding import DecodeError, Hash32, decode, encode
from pouw.types import Block

STORE_VERSION = 2
"""Database layout version (2: index records owned by consensus, every stored block validated)."""

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
    """Sum mod 2^256 of SHA-256(len(key) || key || value) over all state records."""


def height_key(height: int) -> bytes:
    """Key of the height index entry of `height`."""
    return b"H" + height.to_bytes(8, "big")


def compute_record_digest(key: bytes, value: bytes) -> int:
    """One state record's term of the state checksum."""
    return int.from_bytes(hashlib.sha256(len(key).to_bytes(2, "big") + key + value).digest(), "big")


def compute_checksum_update(checksum: bytes, changes: dict[bytes, tuple[bytes | None, bytes | None]]) -> bytes:
    """The state checksum after replacing each key's old value by its new one (None: absent)."""
    total = int.from_bytes(checksum, "big")
    for key, (old, new) in changes.items():
        if old is not None:
            total -= compute_record_digest(key, old)
        if new is not None:
            total += compute_record_digest(key, new)
    return (total % _CHECKSUM_MOD).to_bytes(32, "big")


class Batch:
    """One atomic, synced write: collect puts and deletes, then `commit()`.

    State writes go through `set_state` so the meta checksum follows them;
    `set_tip` moves the meta record's tip. Nothing is written before commit.
    """

    def __init__(self, db: "ChainDB"):
        self._db = db
        self._ops: dict[bytes, bytes | None] = {}
        self._state: dict[bytes, tuple[bytes | None, bytes | None]] = {}
        self._tip: tuple[bytes, int] | None = None

    def put_block(self, block_hash: bytes, data: bytes) -> None:
        self._ops[b"B" + block_hash] = data

    def put_index(self, block_hash: bytes, data: bytes) -> None:
        self._ops[b"I" + block_hash] = data

    def put_height(self, height: int, block_hash: bytes) -> None:
        self._ops[height_key(height)] = block_hash

    def delete_height(self, height: int) -> None:
        self._ops[height_key(height)] = None

    def put_undo(self, block_hash: bytes, data: bytes) -> None:
        self._ops[b"U" + block_hash] = data

    def delete_undo(self, block_hash: bytes) -> None:
        self._ops[b"U" + block_hash] = None

    def set_state(self, key: bytes, value: bytes | None) -> None:
        """Write (or with None delete) one state record; the checksum follows."""
        if key in self._state:
            old = self._state[key][0]
        else:
            old = self._db.get_state(key)
        self._state[key] = (old, value)

    def set_tip(self, block_hash: bytes, height: int) -> None:
        """Make `block_hash` at `height` the connected tip in the meta record."""
        self._tip = (block_hash, height)

    def commit(self) -> None:
        """Write everything in one synced LevelDB batch."""
        meta = self._db.get_meta()
        checksum = compute_checksum_update(meta.state_checksum, self._state)
        if self._tip is not None:
            meta = replace(meta, tip_hash=self._tip[0], tip_height=self._tip[1])
        meta = replace(meta, state_checksum=checksum)
        with self._db.db.write_batch(transaction=True, sync=True) as wb:
            for key, value in self._ops.items():
                if value is None:
                    wb.delete(key)
                else:
                    wb.put(key, value)
            for key, (_, value) in self._state.items():
                if value is None:
                    wb.delete(b"S" + key)
                else:
                    wb.put(b"S" + key, value)
            wb.put(b"M", encode(meta))


class ChainDB:
    """The raw records of one node's chain database in `path` (a LevelDB directory)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.db = plyvel.DB(str(self.path), create_if_missing=True, paranoid_checks=True)
        except plyvel.IOError as exc:
            raise StoreError(f"cannot open chain database {self.path}: {exc} (is another pouw node using it?)") from exc
        except plyvel.CorruptionError as exc:
            raise StoreError(f"chain database {self.path} is corrupted: {exc}; move it away and resync") from exc

    def close(self) -> None:
        """Close the database."""
        if not self.db.closed:
            self.db.close()

    @property
    def is_empty(self) -> bool:
        """True for a database that has never been initialised."""
        return self.db.get(b"M") is None

    def initialise(self, chain_id: bytes) -> None:
        """Write an empty meta record for `chain_id` (no tip yet); the caller then writes genesis."""
        self.db.put(b"M", encode(StoreMeta(STORE_VERSION, chain_id, bytes(32), 0, bytes(32))), sync=True)

    def batch(self) -> Batch:
        """A new atomic write."""
        return Batch(self)

    # --- reading ------------------------------------------------------------
    def get_meta(self) -> StoreMeta:
        """The meta record; raises StoreError when it is missing or damaged."""
        raw = self.db.get(b"M")
        if raw is None:
            raise StoreError(f"chain database {self.path} has no meta record")
        try:
            return decode(StoreMeta, raw)
        except (DecodeError, TypeError) as exc:
            raise StoreError(f"chain database {self.path} has a damaged meta record: {exc}") from exc

    def get_block_bytes(self, block_hash: bytes) -> bytes | None:
        """A stored block's encoding."""
        return self.db.get(b"B" + block_hash)

    def get_block(self, block_hash: bytes) -> Block | None:
        """A stored block, decoded."""
        raw = self.get_block_bytes(block_hash)
        return None if raw is None else decode(Block, raw)

    def has_block(self, block_hash: bytes) -> bool:
        """True when the block's data is stored."""
        return self.db.get(b"B" + block_hash) is not None

    def get_index_bytes(self, block_hash: bytes) -> bytes | None:
        """A block's raw index record."""
        return self.db.get(b"I" + block_hash)

    def iter_index_bytes(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (block hash, raw index record)."""
        for key, value in self.db.iterator(prefix=b"I"):
            yield key[1:], value

    def get_hash_at(self, height: int) -> bytes | None:
        """Hash of the best chain's block at `height`."""
        return self.db.get(height_key(height))

    def get_undo_bytes(self, block_hash: bytes) -> bytes | None:
        """A connected block's raw undo record."""
        return self.db.get(b"U" + block_hash)

    def get_state(self, key: bytes) -> bytes | None:
        """One state record, as the database holds it now."""
        return self.db.get(b"S" + key)

    def get_state_reader(self) -> Callable[[bytes], bytes | None]:
        """A getter over a consistent snapshot of the state records."""
        snapshot = self.db.snapshot()
        return lambda key: snapshot.get(b"S" + key)

    def iter_state(self) -> Iterator[tuple[bytes, bytes]]:
        """Every state record in key order."""
        for key, value in self.db.iterator(prefix=b"S"):
            yield key[1:], value

    def state_dump(self) -> bytes:
        """All state records, encoded in key order: equal states give equal bytes."""
        return encode([[k, v] for k, v in self.iter_state()])

    def compute_state_checksum(self) -> bytes:
        """The state checksum recomputed from every record."""
        total = 0
        for key, value in self.iter_state():
            total = (total + compute_record_digest(key, value)) % _CHECKSUM_MOD
        return total.to_bytes(32, "big")

    def get_disk_usage(self) -> int:
        """Bytes the database's files take on disk."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    # --- consistency ----------------------------------------------------------
    def check_structure(self, chain_id: bytes) -> list[str]:
        """What is wrong with the records' structure (empty when nothing); raises StoreError for the wrong network."""
        meta = self.get_meta()
        if meta.version != STORE_VERSION:
            raise StoreError(
                f"chain database {self.path} has layout version {meta.version}, this pouw needs {STORE_VERSION}; "
                "move it away and resync"
            )
        if meta.chain_id != chain_id:
            raise StoreError(f"chain database {self.path} belongs to another network (chain id {meta.chain_id.hex()[:16]}…)")
        problems = []
        if self.get_hash_at(meta.tip_height) != meta.tip_hash:
            problems.append("the height index does not end at the tip")
        if self.get_hash_at(meta.tip_height + 1) is not None:
            problems.append("the height index runs past the tip")
        if not self.has_block(meta.tip_hash):
            problems.append("the tip block is missing")
        if self.compute_state_checksum() != meta.state_checksum:
            problems.append("the state checksum does not match its records")
        if meta.tip_height > 0 and self.get_undo_bytes(meta.tip_hash) is None:
            problems.append("the tip's undo data is missing")
        return problems

    def refuse(self, problems: list[str]) -> None:
        """Raise the StoreError that explains `problems`."""
        raise StoreError(
            f"chain database {self.path} is inconsistent: {'; '.join(problems)}. "
            "It was not left this way by pouw's atomic writes, so the files were damaged; move it away and resync."
        )
