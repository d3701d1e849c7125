"""Checking a block's work for this node: step 6 of the block road (the assume-valid policy, fetch, verify)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from consensus.chainstate import Candidate
from consensus.rules import get_task_submission
from consensus.work import verify_block_work
from pouw.blobstore import BlobStore
from pouw.types import Block, ChainParams

from fullnode.fetch import BlobFetcher, get_blob_wants


class WorkChecker:
    """This node's work check for `ChainState.process_new_block`: assume-valid policy, fetch, then verify.

    Every block's work is verified, but for the blocks listed in `assumed`:
    ancestors of the operator's assume-valid block that the sync saw buried
    deeper than the finality window under a header chain (fullnode/sync.py).
    They still pass every other rule; only the Dice recomputation and replay
    are skipped, as bitcoind skips script checks under -assumevalid.
    """

    def __init__(self, params: ChainParams, blobs: BlobStore, fetcher: BlobFetcher, workdir: Path,
                 assume_valid: bytes | None = None, on_verified: Callable[[float], None] | None = None):
        self.params = params
        self.blobs = blobs
        self.fetcher = fetcher
        self.workdir = Path(workdir)
        self.assume_valid = assume_valid
        """The operator's known-good block, or None: then every block is verified."""
        self.assumed: set[bytes] = set()
        """Hashes of blocks whose work need not be recomputed (see the class doc)."""
        self.verified = 0
        """Blocks whose work this node recomputed (for metrics)."""
        self.on_verified = on_verified
        """Told the seconds of every work verification (metrics)."""

    def is_work_checked(self, block: Block) -> bool:
        """True unless the block is a deeply buried ancestor of the assume-valid block."""
        return block.hash not in self.assumed

    def __call__(self, candidate: Candidate) -> None:
        block = candidate.block
        if not self.is_work_checked(block):
            return
        task = get_task_submission(candidate.parent_state, self.params, block.header.task_id)
        self.fetcher.fetch_all(get_blob_wants(task, block, self.params))
        started = time.monotonic()
        try:
            verify_block_work(block, candidate.parent_state, self.params, self.blobs, self.workdir)
        finally:
            if self.on_verified is not None:
                self.on_verified(time.monotonic() - started)
        self.verified += 1
