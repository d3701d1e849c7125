"""Getting the blobs a block's verification (or a scheduled task) needs: bounded, from links, then from peers.

Only blocks that passed every rule that needs no blobs reach this room
(`consensus.chainstate.check_new_block` runs first, then
fullnode/verification.py asks for what its plan needs), so a peer cannot make
the node download anything for a block that breaks a cheap rule.

A link's server is chosen by whoever wrote the link (a task's publisher, a
block's miner), so every fetch is held to the blob's declared size (a task's
`BlobRef.size`, the work's `model_size`, each `CheckpointRef.size`) and to
the fetcher's `FetchLimits` (total deadline, minimum rate, longest silence):
one source costs at most `size + 1` bytes and `limits.deadline` seconds.
Sources, in order:

  1. the blob's own links, http(s) only: a link from the network is never
     read from this machine's disk (`file://`) or through another scheme;
  2. every peer's HTTP blob server (learnt from its status message);
  3. connected peers over libp2p `/pouw/blob/1` (`fetch_blob_from_peer`,
     the same size and limits), for peers whose HTTP server cannot be reached.

A source that broke a limit is not asked again within the same block, so a
dripping server costs the grace period once, not once per checkpoint. When
no source delivers, MissingData: the block stays *missing*, never invalid.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

from consensus.chainstate import MissingData
from consensus.work import get_blob_digests, get_work_blobs
from pouw.blobstore import BlobError, BlobStore, FetchLimitError, FetchLimits
from pouw.p2p.blob import fetch_blob_from_peer
from pouw.p2p.framing import P2PError
from pouw.p2p.node import P2PNode
from pouw.p2p.thread import P2PThread
from pouw.types import Block, BlobRef, ChainParams, TaskSubmission

NETWORK_SCHEMES = ("http", "https")
"""The only link schemes a node follows for blobs named by others."""
MAX_PEERS_PER_BLOB = 8
"""Connected peers asked for one blob over /pouw/blob/1 before the blob is called missing."""
FETCH_ROUNDS = 3
"""Rounds of a block's fetch: the model, dataset and checkpoint headers, then the parts the headers name (one spare)."""
MAX_RECORDED_DIGESTS = 200_000
"""Model and checkpoint digests remembered with the block they were fetched for (pruning's input; oldest dropped)."""


@dataclass(frozen=True)
class BlockTag:
    """The block a model or checkpoint blob is fetched for: what pruning must know of it."""

    block_hash: bytes
    """The block's hash."""
    prev_hash: bytes
    """Its parent."""
    height: int
    """Its height."""
    slot: int
    """Its slot."""


@dataclass(frozen=True)
class BlobWant:
    """A blob to fetch, its declared size and where it may be."""

    digest: bytes
    """SHA-256 of the blob."""
    size: int
    """Its declared size in bytes: a source must send exactly this many."""
    links: tuple[str, ...]
    """Where to try first, in order."""
    block: BlockTag | None = None
    """The block whose model or checkpoint it is (None for a task's dataset blob)."""


@dataclass(frozen=True)
class FetchedWork:
    """The model and checkpoints a block's verification asked for, with the block they belong to."""

    block: BlockTag
    """The block."""
    digests: frozenset[bytes]
    """Its model and checkpoint digests the node wanted (present before or fetched)."""
    recorded_at: float
    """When they were last asked for (time.time())."""


def is_network_link(link: str) -> bool:
    """True for a link a node may follow when someone else wrote it: http(s) only."""
    return urllib.parse.urlsplit(link).scheme in NETWORK_SCHEMES


def get_link_source(link: str) -> str:
    """The server a link names (scheme and host:port): what a broken limit shuns."""
    parts = urllib.parse.urlsplit(link)
    return f"{parts.scheme}://{parts.netloc}"


class PeerBlobSource:
    """Connected peers' `/pouw/blob/1` service, for a synchronous caller (the node's worker or prefetcher)."""

    def __init__(self, p2p: P2PNode, thread: P2PThread, max_peers: int = MAX_PEERS_PER_BLOB):
        self.p2p = p2p
        self.thread = thread
        self.max_peers = max_peers

    def get_peers(self) -> list[str]:
        """Connected peers (not banned), at most `max_peers`."""
        try:
            peers = self.thread.call_sync(self.p2p.connected_peers)
        except P2PError:
            return []
        return [str(p) for p in peers][: self.max_peers]

    def fetch(self, peer: str, want: BlobWant, store: BlobStore, limits: FetchLimits) -> None:
        """Download `want` from `peer` into `store`; raises BlobError or P2PError."""
        self.thread.call(functools.partial(fetch_blob_from_peer, self.p2p, peer, want.digest, store,
                                           size=want.size, limits=limits))


class BlobFetcher:
    """Fetches wanted blobs into the node's store from their links, peers' blob servers and peers' streams.

    Thread safe: the worker (verification) and the prefetcher may ask for
    the same blob at once; the second waits for the first's download.
    """

    def __init__(self, blobs: BlobStore, limits: FetchLimits | None = None, on_fetched: Callable[[int], None] | None = None):
        self.blobs = blobs
        self.limits = limits or FetchLimits()
        """What one source may cost in time (the size bound comes with each blob)."""
        self.on_fetched = on_fetched
        """Told the size of every blob fetched (metrics)."""
        self.peer_urls: dict[str, str] = {}
        """peer id -> base URL of its HTTP blob server (learnt from status messages)."""
        self.peers: PeerBlobSource | None = None
        """Connected peers' /pouw/blob/1 service, once the p2p host runs."""
        self.fetched_bytes = 0
        """Bytes downloaded so far (for metrics)."""
        self._lock = threading.Lock()
        self._busy: dict[bytes, list] = {}
        self._fetched_work: OrderedDict[bytes, FetchedWork] = OrderedDict()
        self._recorded = 0

    # --- fetching ---------------------------------------------------------------------
    def fetch_all(self, wants: list[BlobWant], shunned: set[str] | None = None) -> None:
        """Make every wanted blob present in the store; raises MissingData naming the first that cannot be had.

        Sources in `shunned` are skipped; those that break a limit are added."""
        self.record_work(wants)
        shunned = set() if shunned is None else shunned
        for want in wants:
            self.fetch(want, shunned)

    def fetch_block(self, task: TaskSubmission | None, block: Block, params: ChainParams) -> None:
        """Make present everything verifying `block` reads: its plan's headers first, then the parts they name."""
        shunned: set[str] = set()  # across rounds: a source that broke a limit is not asked again for this block
        for _ in range(FETCH_ROUNDS):
            wants = get_blob_wants(task, block, params, self.blobs)
            if all(self.blobs.has(w.digest) for w in wants):
                self.record_work(wants)
                return
            self.fetch_all(wants, shunned)

    def fetch(self, want: BlobWant, shunned: set[str] | None = None) -> None:
        """Make one blob present; sources in `shunned` are skipped and those that break a limit are added."""
        shunned = set() if shunned is None else shunned
        with self._claim(want.digest):
            if self.blobs.has(want.digest):
                return
            errors: list[str] = []
            for source, attempt in self._get_attempts(want):
                if source in shunned:
                    continue
                try:
                    attempt()
                except (BlobError, P2PError) as exc:
                    errors.append(f"{source}: {exc}")
                    if isinstance(exc, FetchLimitError):
                        shunned.add(source)
                    continue
                self._count(want.digest)
                return
        tried = "; ".join(errors[-3:]) or "it has no http(s) link and no peer offers it"
        raise MissingData(f"blob {want.digest.hex()[:16]} ({want.size} bytes) is not available from any source ({tried})")

    def _get_attempts(self, want: BlobWant) -> Iterator[tuple[str, Callable[[], object]]]:
        """(source, fetch) in order: the want's http(s) links, peers' blob servers, then peers over libp2p."""
        hexd = want.digest.hex()
        links = [link for link in want.links if is_network_link(link)]
        links += [f"{url.rstrip('/')}/blob/{hexd}" for url in list(self.peer_urls.values()) if is_network_link(url)]
        for link in dict.fromkeys(links):
            yield get_link_source(link), functools.partial(
                self.blobs.fetch, link, want.digest, size=want.size, limits=self.limits, allow_file=False)
        if self.peers is not None:
            for peer in self.peers.get_peers():
                yield f"p2p:{peer}", functools.partial(self.peers.fetch, peer, want, self.blobs, self.limits)

    def _count(self, digest: bytes) -> None:
        size = self.blobs.size(digest)
        with self._lock:
            self.fetched_bytes += size
        if self.on_fetched is not None:
            self.on_fetched(size)

    @contextlib.contextmanager
    def _claim(self, digest: bytes):
        """Hold the download of `digest`: a second caller waits, then finds the blob present."""
        with self._lock:
            entry = self._busy.setdefault(digest, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._busy[digest]

    # --- what was fetched for which block (pruning's input) ------------------------------
    def record_work(self, wants: list[BlobWant]) -> None:
        """Remember which block wanted each model and checkpoint blob (bounded: the oldest blocks are forgotten)."""
        by_block: dict[BlockTag, set[bytes]] = {}
        now = time.time()
        for want in wants:
            if want.block is not None:
                by_block.setdefault(want.block, set()).add(want.digest)
        with self._lock:
            for tag, digests in by_block.items():
                old = self._fetched_work.pop(tag.block_hash, None)
                if old is not None:
                    self._recorded -= len(old.digests)
                    digests |= old.digests
                self._fetched_work[tag.block_hash] = FetchedWork(tag, frozenset(digests), now)
                self._recorded += len(digests)
            while self._recorded > MAX_RECORDED_DIGESTS and self._fetched_work:
                _, dropped = self._fetched_work.popitem(last=False)
                self._recorded -= len(dropped.digests)

    def get_fetched_work(self) -> list[FetchedWork]:
        """The blocks whose model and checkpoints were asked for and not yet forgotten."""
        with self._lock:
            return list(self._fetched_work.values())

    def forget_work(self, block_hashes) -> None:
        """Drop the record of blocks pruning has dealt with."""
        with self._lock:
            for block_hash in block_hashes:
                old = self._fetched_work.pop(block_hash, None)
                if old is not None:
                    self._recorded -= len(old.digests)


def get_task_wants(task: TaskSubmission) -> list[BlobWant]:
    """A task's encrypted training and test blobs, with their declared sizes and the task's links."""
    return [get_blobref_want(task.train_blob), get_blobref_want(task.test_blob)]


def get_blobref_want(blob: BlobRef) -> BlobWant:
    """The want for one dataset blob."""
    return BlobWant(blob.digest, blob.size, tuple(blob.links))


def get_blob_wants(task: TaskSubmission | None, block: Block, params: ChainParams,
                   blobs: BlobStore | None = None) -> list[BlobWant]:
    """What verifying `block` needs: the task's dataset blobs (from the task's links), the model and the checkpoints
    of its verification plan (from the work's links), each with its declared size; with `blobs`, also the parts
    (weights, optimizer-state shards) that the plan's checkpoint headers held there name."""
    header, work = block.header, block.body.work
    declared: dict[bytes, BlobRef] = {} if task is None else {b.digest: b for b in (task.train_blob, task.test_blob)}
    sizes = get_work_blobs(block, params, blobs)
    work_links = tuple(base.rstrip("/") + "/" for base in (work.links if work is not None else ()))
    tag = BlockTag(block.hash, header.prev_hash, header.height, header.slot)
    wants = []
    for digest in get_blob_digests(task, header.task_mode, block, params, blobs):
        if digest in declared:
            wants.append(get_blobref_want(declared[digest]))
        else:
            links = tuple(urllib.parse.urljoin(b, f"blob/{digest.hex()}") for b in work_links)
            wants.append(BlobWant(digest, sizes[digest], links, tag))
    return wants
