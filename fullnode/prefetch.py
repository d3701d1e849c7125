"""Prefetching the encrypted data of the tasks scheduled for the next two heights, during Phase 1.

The task of height h is fixed two blocks early (docs/protocol.md §4), so a
full node downloads its encrypted training and test blobs while the heights
before it are mined, as miners do; Phase-2 verification then finds them in
the store instead of waiting for them. The keys come later.

A thin adapter beside the core: the node's phase loop calls `poll(now)`,
which reads the chain's `scheduled` under the core's lock (at most once per
`poll_seconds`) and queues every blob not yet held; one background thread
fetches them through the node's BlobFetcher, so each fetch is bounded by the
blob's declared size and the fetch limits and falls back to peers. A blob
that could not be had is tried again after `retry_seconds`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from consensus.chainstate import MissingData
from consensus.rules import is_standing_task
from pouw.types import TaskSubmission

from fullnode.core import NodeCore
from fullnode.fetch import BlobFetcher, BlobWant, get_task_wants

log = logging.getLogger("pouw.prefetch")

POLL_SECONDS = 1.0
"""How often the scheduled tasks are looked at."""
RETRY_SECONDS = 10.0
"""How long a blob that could not be fetched waits before it is tried again."""


def get_scheduled_tasks(core: NodeCore) -> list[TaskSubmission]:
    """The published tasks scheduled for the next two heights (the standing task has no data to fetch)."""
    with core.lock:
        status = core.chain.state().get_status()
        tasks = []
        for entry in status.scheduled:
            task = None if is_standing_task(core.params, entry.task_id) else core.get_task(entry.task_id)
            if task is not None:
                tasks.append(task)
        return tasks


class TaskPrefetcher:
    """Fetches the scheduled tasks' dataset blobs in a background thread."""

    def __init__(self, core: NodeCore, fetcher: BlobFetcher, log_fn: Callable[[str], None] | None = None, *,
                 poll_seconds: float = POLL_SECONDS, retry_seconds: float = RETRY_SECONDS):
        self.core = core
        self.fetcher = fetcher
        self.log = log_fn or (lambda msg: log.info(msg))
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.fetched: list[tuple[bytes, float]] = []
        """(digest, seconds) of every blob this prefetcher brought in, in order."""
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._failed: dict[bytes, float] = {}
        self._next_poll = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pouw-prefetch", daemon=True)

    def start(self) -> "TaskPrefetcher":
        """Start the fetching thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread (a download in flight is left to its own limits: the thread is a daemon)."""
        self._stop.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(5)

    def poll(self, now: float) -> None:
        """Queue the missing dataset blobs of the tasks scheduled for the next two heights (at most once a poll period)."""
        if now < self._next_poll:
            return
        self._next_poll = now + self.poll_seconds
        try:
            tasks = get_scheduled_tasks(self.core)
        except Exception as exc:  # the phase loop must go on
            log.exception("cannot read the scheduled tasks: %s", exc)
            return
        wants = [(want, task.task_id) for task in tasks for want in get_task_wants(task)]
        with self._lock:  # failures of tasks no longer scheduled are forgotten
            self._failed = {w.digest: self._failed[w.digest] for w, _ in wants if w.digest in self._failed}
        for want, task_id in wants:
            self.want(want, task_id, now)

    def want(self, want: BlobWant, task_id: bytes, now: float) -> None:
        """Queue one blob unless it is held, queued, or failed less than `retry_seconds` ago."""
        with self._lock:
            if want.digest in self._pending or self.fetcher.blobs.has(want.digest):
                return
            if now - self._failed.get(want.digest, float("-inf")) < self.retry_seconds:
                return
            self._pending.add(want.digest)
        self._queue.put((want, task_id))

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            want, task_id = item
            started = time.monotonic()
            try:
                if self.fetcher.blobs.has(want.digest):  # a verification fetched it meanwhile
                    continue
                self.fetcher.fetch(want)
            except MissingData as exc:
                with self._lock:
                    self._failed[want.digest] = time.time()
                self.log(f"prefetch of task {task_id.hex()[:12]} data failed: {exc}")
            except Exception as exc:  # a bad source must never kill the thread
                with self._lock:
                    self._failed[want.digest] = time.time()
                log.exception("prefetch of %s failed: %s", want.digest.hex()[:16], exc)
            else:
                seconds = time.monotonic() - started
                self.fetched.append((want.digest, seconds))
                self.log(f"prefetched {want.size:,} bytes of task {task_id.hex()[:12]} data in {seconds:.1f} s")
            finally:
                with self._lock:
                    self._pending.discard(want.digest)
