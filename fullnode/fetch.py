"""Getting the blobs a block's verification needs, from their links and from peers.

Only blocks that passed every rule that needs no blobs reach this room
(`consensus.chainstate.check_new_block` runs first, then
fullnode/verification.py asks for what its plan needs), so a peer cannot make
the node download anything for a block that breaks a cheap rule.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Callable

from consensus.chainstate import MissingData
from consensus.work import get_blob_digests
from pouw.blobstore import BlobError, BlobStore
from pouw.types import Block, ChainParams, TaskSubmission



@dataclass(frozen=True)
class BlobWant:
    """A blob to fetch and where it may be."""

    digest: bytes
    """SHA-256 of the blob."""
    links: tuple[str, ...]
    """Where to try, in order."""


class BlobFetcher:
    """Fetches blobs into the node's store from their links, then from peers' blob servers."""

    def __init__(self, blobs: BlobStore, on_fetched: Callable[[int], None] | None = None):
        self.blobs = blobs
        self.on_fetched = on_fetched
        """Told the size of every blob fetched (metrics)."""
        self.peer_urls: dict[str, str] = {}
        """peer id -> base URL of its HTTP blob server (learnt from status messages)."""
        self.fetched_bytes = 0
        """Bytes downloaded so far (for metrics)."""

    def get_links(self, digest: bytes, links: tuple[str, ...]) -> tuple[str, ...]:
        """The given links, then every known peer's blob server."""
        return tuple(links) + tuple(f"{url}/blob/{digest.hex()}" for url in self.peer_urls.values())

    def fetch_all(self, wants: list[BlobWant]) -> None:
        """Make every wanted blob present in the store; raises MissingData naming the first that cannot be had."""
        for want in wants:
            if self.blobs.has(want.digest):
                continue
            last: Exception | None = None
            for link in self.get_links(want.digest, want.links):
                try:
                    self.blobs.fetch(link, want.digest)
                    size = self.blobs.size(want.digest)
                    self.fetched_bytes += size
                    if self.on_fetched is not None:
                        self.on_fetched(size)
                    break
                except BlobError as exc:
                    last = exc
            else:
                raise MissingData(f"blob {want.digest.hex()[:16]} is not available from any link ({last})")


def get_blob_wants(task: TaskSubmission | None, block: Block, params: ChainParams) -> list[BlobWant]:
    """What verifying `block` needs: the task's dataset blobs (from the task's links), the model and the checkpoints
    of its verification plan (from the work's links)."""
    header, work = block.header, block.body.work
    task_links = {} if task is None else {b.digest: tuple(b.links) for b in (task.train_blob, task.test_blob)}
    work_links = tuple(base.rstrip("/") + "/" for base in work.links)
    wants = []
    for digest in get_blob_digests(task, header.task_mode, block, params):
        links = task_links.get(digest) or tuple(urllib.parse.urljoin(b, f"blob/{digest.hex()}") for b in work_links)
        wants.append(BlobWant(digest, links))
    return wants
