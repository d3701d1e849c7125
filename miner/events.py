"""What the miner tells its user: one short line per event, or one JSON object per line."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO


def _short(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value


class Reporter:
    """Prints miner events; thread safe (the prefetcher reports from its own thread)."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None):
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self.history: list[dict] = []
        """Every event emitted, in order (tests and --once summaries read it)."""

    def emit(self, event: str, message: str, **fields: Any) -> None:
        """Report `event`; `message` is the human line, `fields` the machine-readable details."""
        record = {"event": event, "time": round(time.time(), 3), **{k: _short(v) for k, v in fields.items()}}
        with self._lock:
            self.history.append(record)
            if self.as_json:
                line = json.dumps({**record, "message": message})
            else:
                line = f"{time.strftime('%H:%M:%S')} {message}"
            print(line, file=self.stream, flush=True)

    def events(self, name: str) -> list[dict]:
        """The recorded events called `name`."""
        with self._lock:
            return [r for r in self.history if r["event"] == name]
