"""Checking many transaction signatures at once on all cores.

libsodium releases the GIL, so a small thread pool verifies a block's
signatures in parallel before the (sequential) state changes are applied,
much as Bitcoin Core's script-check queue does.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from pouw.types import Transaction

_CHUNK = 64


class SignatureChecker:
    """A pool of threads that verifies signatures; one per node, shared by its components."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sigcheck") if self.workers > 1 else None

    def find_invalid(self, txs: Sequence[Transaction]) -> int | None:
        """Index of the first transaction whose signature is invalid, or None."""
        if self._pool is None or len(txs) < 2 * _CHUNK:
            return next((i for i, tx in enumerate(txs) if not tx.is_signature_valid()), None)
        starts = range(0, len(txs), _CHUNK)
        results = self._pool.map(lambda s: [tx.is_signature_valid() for tx in txs[s : s + _CHUNK]], starts)
        for start, oks in zip(starts, results):
            for offset, ok in enumerate(oks):
                if not ok:
                    return start + offset
        return None

    def close(self) -> None:
        """Stop the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


SERIAL = SignatureChecker(1)
"""A checker that verifies on the calling thread (no threads to stop)."""
