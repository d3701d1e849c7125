"""Checking a block's work for this node: step 6 of the block road (the assume-valid policy, fetch, verify).

Verification runs in a pool of worker processes when `workers` > 0 (the
node's default, sized to the machine): the recomputation of a Dice and a
replay hold no lock and share no interpreter with gossip, sync and RPC, and
several claims are judged at once. Workers 0 verifies in the calling thread
(tests, tools).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from consensus.chainstate import Candidate, MissingData
from consensus.rules import get_task_submission
from consensus.work import WorkInputs, WorkReport, get_work_inputs, verify_work_inputs
from pouw.blobstore import BlobStore
from pouw.types import Block, ChainParams

from fullnode.fetch import BlobFetcher


def get_default_verify_workers(device: str = "cpu") -> int:
    """Worker processes for a machine: one per CPU core but one (kept for the node), or one for a GPU."""
    if device != "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) - 1)


def start_worker(threads: int, parent: int) -> None:
    """Runs once in each worker process: watch the node (`parent`), share the cores out, import torch early."""
    threading.Thread(target=exit_with_parent, args=(parent,), name="pouw-parent-watch", daemon=True).start()
    import torch

    torch.set_num_threads(threads)
    importlib.import_module("consensus.work")  # the model code and MONAI


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Ends this worker once the node that started it is gone (killed nodes must not leave workers behind).

    `parent` is the node's pid as the node saw it: a worker orphaned before it got here sees a new parent at once.
    """
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(0)


def verify_in_worker(block: Block, inputs: WorkInputs, params: ChainParams, blob_root: str, workdir: str,
                     device: str) -> WorkReport:
    """One block's work verification, run in a worker process (arguments are plain, picklable values)."""
    return verify_work_inputs(block, inputs, params, BlobStore(blob_root), Path(workdir), device)


def warm_up() -> int:
    """Nothing but proof that a worker started (its pid)."""
    return os.getpid()


class WorkChecker:
    """This node's work check for `ChainState.process_new_block`: assume-valid policy, fetch, then verify.

    Every block's work is verified, but for the blocks listed in `assumed`:
    ancestors of the operator's assume-valid block that the sync saw buried
    deeper than the finality window under a header chain (fullnode/sync.py).
    They still pass every other rule; only the Dice recomputation and replay
    are skipped, as bitcoind skips script checks under -assumevalid.
    """

    def __init__(self, params: ChainParams, blobs: BlobStore, fetcher: BlobFetcher, workdir: Path,
                 assume_valid: bytes | None = None, on_verified: Callable[[float], None] | None = None,
                 workers: int = 0, device: str = "cpu"):
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
        self.workers = workers
        """Verification worker processes (0: verify in the calling thread)."""
        self.device = device
        """Where the recomputation runs: "cpu" or "cuda:N"."""
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def parallelism(self) -> int:
        """How many blocks may usefully be checked at once."""
        return max(1, self.workers)

    def start(self) -> "WorkChecker":
        """Start the worker processes in the background (each imports torch once), so the first claim need not wait."""
        if self.workers > 0:
            pool = self._get_pool()
            for _ in range(self.workers):
                pool.submit(warm_up)
        return self

    def close(self) -> None:
        """Stop the worker processes now; a check in flight ends with MissingData (no judgement)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((pool._processes or {}).values())  # the executor has no public way to stop running work
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(10)

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                threads = max(1, (os.cpu_count() or 1) // self.workers)
                # spawn: a fork of a process running libp2p's event loop and torch threads is not safe
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=start_worker, initargs=(threads, os.getpid()))
            return self._pool

    def is_work_checked(self, block: Block) -> bool:
        """True unless the block is a deeply buried ancestor of the assume-valid block."""
        return block.hash not in self.assumed

    def __call__(self, candidate: Candidate) -> None:
        block = candidate.block
        if not self.is_work_checked(block):
            return
        task = get_task_submission(candidate.parent_state, self.params, block.header.task_id)
        self.fetcher.fetch_block(task, block, self.params)
        inputs = get_work_inputs(block, candidate.parent_state, self.params)
        started = time.monotonic()
        try:
            self.verify(block, inputs)
        finally:
            if self.on_verified is not None:
                self.on_verified(time.monotonic() - started)
        self.verified += 1

    def verify(self, block: Block, inputs: WorkInputs) -> WorkReport:
        """Recompute the block's work here or in a worker; raises InvalidBlock, or MissingData if a worker died."""
        if self.workers <= 0:
            return verify_work_inputs(block, inputs, self.params, self.blobs, self.workdir, self.device)
        pool = self._get_pool()
        try:
            future = pool.submit(verify_in_worker, block, inputs, self.params, str(self.blobs.root), str(self.workdir),
                                 self.device)
        except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: the pool was shut down
            self._drop_pool(pool)
            raise MissingData(f"no verification worker to judge the block ({exc})") from None
        try:
            return future.result()
        except (BrokenProcessPool, CancelledError):
            # A worker killed (out of memory, by the operator) or the node stopping: no judgement on the block.
            self._drop_pool(pool)
            raise MissingData("verification worker stopped before judging the block") from None

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        """Forget a broken pool; the next check starts a new one."""
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)
