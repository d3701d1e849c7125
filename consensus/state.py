"""The chain state as typed records over a flat key-value space.

`State` layers pending writes over a read-only base (a dict, or a LevelDB
snapshot). The state transition writes only to the overlay; the store then
commits `changes()` and their undo record in one atomic batch. A failed
transition leaves the base untouched: drop the overlay.

Key layout (every value is a canonical encoding):
  b"a" + address          -> Account
  b"t" + task id          -> TaskRecord
  b"h" + height (8 bytes) -> HistoryEntry
  b"s"                    -> ChainStatus
  b"x" + miner + height(8) -> b"" (that miner's claim bond was forfeited for that height)
"""

from __future__ import annotations

from typing import Callable, Mapping

from pouw.encoding import decode, encode
from pouw.types import EMPTY_ACCOUNT, Account, ChainStatus, HistoryEntry, TaskRecord

ACCOUNT_PREFIX = b"a"
TASK_PREFIX = b"t"
HISTORY_PREFIX = b"h"
STATUS_KEY = b"s"
FORFEIT_PREFIX = b"x"

Getter = Callable[[bytes], "bytes | None"]

FORFEIT_MARK = b""
"""The value of a forfeit record: its key says everything."""


def account_key(address: bytes) -> bytes:
    """State key of an account."""
    return ACCOUNT_PREFIX + address


def task_key(task_id: bytes) -> bytes:
    """State key of a task record."""
    return TASK_PREFIX + task_id


def history_key(height: int) -> bytes:
    """State key of the history entry of a height."""
    return HISTORY_PREFIX + height.to_bytes(8, "big")


class State:
    """Typed reads and writes over a base key-value getter with an overlay of writes.

    Decoded records are cached and written records are kept as objects until
    `changes()` encodes them, so a block touching one account many times
    decodes and encodes it once.
    """

    def __init__(self, base_get: Getter):
        self._base_get = base_get
        self._writes: dict[bytes, object | None] = {}
        self._reads: dict[bytes, object | None] = {}

    @classmethod
    def from_mapping(cls, mapping: Mapping[bytes, bytes]) -> "State":
        """A state over an in-memory mapping (tests, replay)."""
        return cls(mapping.get)

    # --- raw access ------------------------------------------------------
    def get_raw(self, key: bytes) -> bytes | None:
        """The current encoded value of a key, pending writes first."""
        if key in self._writes:
            value = self._writes[key]
            return None if value is None else encode(value)
        return self._base_get(key)

    def _get(self, key: bytes, cls: type):
        if key in self._writes:
            return self._writes[key]
        if key not in self._reads:
            raw = self._base_get(key)
            self._reads[key] = None if raw is None else decode(cls, raw)
        return self._reads[key]

    def _put(self, key: bytes, value: object | None) -> None:
        self._writes[key] = value

    def changes(self) -> dict[bytes, bytes | None]:
        """Pending writes: key -> new encoded value, or None for a deletion."""
        return {key: None if value is None else encode(value) for key, value in self._writes.items()}

    def child(self) -> "State":
        """A new overlay on top of this state; this one is unchanged by the child's writes."""
        return State(self.get_raw)

    def absorb(self, child: "State") -> None:
        """Take a child overlay's writes as this state's own."""
        self._writes.update(child._writes)

    # --- typed records ---------------------------------------------------
    def get_account(self, address: bytes) -> Account:
        """The account at `address` (empty if never used)."""
        account = self._get(account_key(address), Account)
        return EMPTY_ACCOUNT if account is None else account

    def set_account(self, address: bytes, account: Account) -> None:
        """Write an account; an empty one is deleted so the state has one form."""
        self._put(account_key(address), None if account == EMPTY_ACCOUNT else account)

    def get_task(self, task_id: bytes) -> TaskRecord | None:
        """The task record of `task_id`, if the chain knows the task."""
        return self._get(task_key(task_id), TaskRecord)

    def set_task(self, task_id: bytes, record: TaskRecord) -> None:
        """Write a task record."""
        self._put(task_key(task_id), record)

    def get_status(self) -> ChainStatus:
        """The chain status record (present once genesis is applied)."""
        status = self._get(STATUS_KEY, ChainStatus)
        if status is None:
            raise LookupError("state has no chain status: genesis was not applied")
        return status

    def set_status(self, status: ChainStatus) -> None:
        """Write the chain status record."""
        self._put(STATUS_KEY, status)

    def get_history(self, height: int) -> HistoryEntry | None:
        """What the block at `height` did with its task."""
        return self._get(history_key(height), HistoryEntry)

    def set_history(self, entry: HistoryEntry) -> None:
        """Write a history entry."""
        self._put(history_key(entry.height), entry)

    def is_forfeited(self, miner: bytes, height: int) -> bool:
        """True when `miner`'s claim bond was already forfeited for a false claim at `height`."""
        key = FORFEIT_PREFIX + miner + height.to_bytes(8, "big")
        if key in self._writes:
            return self._writes[key] is not None
        return self._base_get(key) is not None

    def set_forfeited(self, miner: bytes, height: int) -> None:
        """Record that `miner`'s bond was forfeited for `height` (one forfeit per claimant and height)."""
        self._put(FORFEIT_PREFIX + miner + height.to_bytes(8, "big"), FORFEIT_MARK)


def apply_changes(mapping: dict[bytes, bytes], changes: Mapping[bytes, bytes | None]) -> None:
    """Apply an overlay's changes to an in-memory mapping."""
    for key, value in changes.items():
        if value is None:
            mapping.pop(key, None)
        else:
            mapping[key] = value
