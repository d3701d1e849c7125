"""Fetching a task's encrypted blobs ahead of its interval.

The task of height h+1 is known a whole interval early (docs/protocol.md
§4), so the miner downloads its encrypted training and test blobs while it
mines height h; the keys come later. Sources, in order: the task's own
links, then the node's blob server (`<blob_url>/blob/<hex>`). Every byte is
checked against the digest by `BlobStore.fetch`, and a source must send
exactly the size the task declares (`BlobRef.size`).
"""

from __future__ import annotations

import queue
import threading
import time
import urllib.parse

from pouw.blobstore import BlobError, BlobStore
from pouw.types import BlobRef, TaskSubmission

from miner.events import Reporter

RETRY_AFTER = 5.0
"""Seconds before a failed blob is tried again."""


def get_blob_sources(blob: BlobRef, node_blob_url: str | None) -> list[str]:
    """Links to try for `blob`: its own (a bare http base URL gets `/blob/<hex>`), then the node's."""
    hexd = blob.digest.hex()
    out: list[str] = []
    for link in blob.links:
        parsed = urllib.parse.urlparse(link)
        if parsed.scheme in ("http", "https") and not parsed.path.rstrip("/").endswith(hexd):
            link = f"{link.rstrip('/')}/blob/{hexd}"
        out.append(link)
    if node_blob_url:
        out.append(f"{node_blob_url.rstrip('/')}/blob/{hexd}")
    return list(dict.fromkeys(out))


def fetch_blob(store: BlobStore, blob: BlobRef, node_blob_url: str | None, timeout: float = 30.0, *,
               exact_size: bool = True) -> None:
    """Get `blob` into `store` from the first source that delivers it; raises BlobError naming each failure.

    A source must send exactly `blob.size` bytes (the size its publisher
    declared), or, with `exact_size=False` (a caller that knows only a bound,
    e.g. `pouw task results` for checkpoints), at most that many.
    """
    if store.has(blob.digest):
        return
    errors = []
    bound = {"size": blob.size} if exact_size else {"max_size": blob.size}
    for link in get_blob_sources(blob, node_blob_url):
        try:
            store.fetch(link, blob.digest, timeout=timeout, **bound)
            return
        except BlobError as exc:
            errors.append(str(exc))
    reasons = "; ".join(errors) or "the blob has no links and the node serves no blobs"
    raise BlobError(f"blob {blob.digest.hex()[:16]} unavailable: {reasons}")


class Prefetcher:
    """Downloads task blobs in a background thread; `ensure` fetches in the caller's thread when needed."""

    def __init__(self, store: BlobStore, reporter: Reporter, timeout: float = 30.0):
        self.store = store
        self.reporter = reporter
        self.timeout = timeout
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._failed: dict[bytes, float] = {}
        self._thread = threading.Thread(target=self._run, name="pouw-prefetch", daemon=True)
        self._stopped = False
        self._thread.start()

    def want(self, task: TaskSubmission | None, node_blob_url: str | None) -> None:
        """Queue the task's training and test blobs unless held, queued or recently failed."""
        if task is None:
            return
        now = time.time()
        for blob in (task.train_blob, task.test_blob):
            with self._lock:
                if blob.digest in self._pending or self.store.has(blob.digest):
                    continue
                if now - self._failed.get(blob.digest, 0.0) < RETRY_AFTER:
                    continue
                self._pending.add(blob.digest)
            self._queue.put((task.task_id, blob, node_blob_url))

    def ensure(self, blob: BlobRef, node_blob_url: str | None) -> bool:
        """True once `blob` is in the store, fetching it now if the background fetch has not."""
        if self.store.has(blob.digest):
            return True
        # Two writers on one partial file would spoil it: let a running background fetch finish.
        waited = time.time()
        while time.time() - waited < self.timeout:
            with self._lock:
                if blob.digest not in self._pending:
                    break
            time.sleep(0.1)
        if self.store.has(blob.digest):
            return True
        try:
            fetch_blob(self.store, blob, node_blob_url, self.timeout)
        except BlobError as exc:
            self.reporter.emit("blob-missing", f"cannot fetch task data: {exc}", digest=blob.digest, error=str(exc))
            return False
        return True

    def close(self) -> None:
        self._stopped = True
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stopped:
            item = self._queue.get()
            if item is None:
                return
            task_id, blob, url = item
            started = time.time()
            try:
                fetch_blob(self.store, blob, url, self.timeout)
            except BlobError as exc:
                with self._lock:
                    self._failed[blob.digest] = time.time()
                self.reporter.emit("prefetch-failed", f"prefetch of task {task_id.hex()[:12]} failed: {exc}",
                                   task_id=task_id, digest=blob.digest, error=str(exc))
            else:
                self.reporter.emit(
                    "prefetched",
                    f"prefetched {blob.size:,} bytes of task {task_id.hex()[:12]} in {time.time() - started:.1f} s",
                    task_id=task_id, digest=blob.digest, size=blob.size,
                )
            finally:
                with self._lock:
                    self._pending.discard(blob.digest)
