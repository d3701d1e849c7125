"""Task keys a node knows: those it saw revealed, and those it reveals for its publishers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pouw.types import KEY_TEST, KEY_TRAIN


@dataclass
class KeyBook:
    """Revealed keys (first-seen time kept) and the publisher keys this node must reveal."""

    seen: dict[bytes, dict[int, tuple[bytes, float]]] = field(default_factory=dict)
    """task id -> which -> (key, first seen time)."""
    mine: dict[bytes, dict[int, bytes]] = field(default_factory=dict)
    """task id -> which -> key this node reveals at its moment."""
    published: set[tuple[bytes, int]] = field(default_factory=set)
    """(task id, which) this node already revealed."""

    def get(self, task_id: bytes, which: int) -> bytes | None:
        """A seen key, if any."""
        entry = self.seen.get(task_id, {}).get(which)
        return None if entry is None else entry[0]

    def record(self, task_id: bytes, which: int, key: bytes, now: float) -> bool:
        """Remember a revealed key (already checked against its commitment); True if it is new."""
        book = self.seen.setdefault(task_id, {})
        if which in book:
            return False
        book[which] = (key, now)
        return True


class PublisherKeyFiles:
    """Publisher keys kept on disk (one 0600 JSON file per task in a 0700 folder), so a restart still reveals them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def save(self, task_id: bytes, train_key: bytes, test_key: bytes) -> None:
        """Write one task's keys (mode 0600)."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        path = self.folder / f"{task_id.hex()}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"train_key": train_key.hex(), "test_key": test_key.hex()}, fh)

    def load(self) -> tuple[dict[bytes, dict[int, bytes]], list[str]]:
        """Every task's keys, and one message per damaged file (skipped)."""
        keys: dict[bytes, dict[int, bytes]] = {}
        problems: list[str] = []
        if not self.folder.is_dir():
            return keys, problems
        for path in sorted(self.folder.glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                keys[bytes.fromhex(path.stem)] = {
                    KEY_TRAIN: bytes.fromhex(doc["train_key"]),
                    KEY_TEST: bytes.fromhex(doc["test_key"]),
                }
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"ignoring damaged task key file {path}: {exc}")
        return keys, problems
