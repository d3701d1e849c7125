"""Pruning: which blobs a node deletes once nobody needs them from it, and the job that deletes them after each slot.

A node's blob store fills with the models and checkpoints of every block it
verified (a 100 MB model with optimizer state is about 300 MB a checkpoint)
and with the encrypted datasets of every task. The rules
(docs/protocol.md §11):

  * a block that **lost** its height (not on the best chain once its slot is
    over, unless it still extends the tip and may win the next height) or
    **failed** verification: its model and checkpoints go after its slot
    (a block not yet judged keeps them: its verification may be reading
    them; one still missing an hour after its last fetch loses them);
  * a best-chain block that became **final** (`finality_depth` blocks below
    the tip: the node never reorganises past it): the checkpoints its
    verification plan does not name go, and the decrypted copy of its task's
    data in the work cache; what a peer needs to verify it (the plan's
    checkpoints and the task's dataset blobs) stays until the block is
    `keep_blocks` (288 by default, as Bitcoin Core's pruned nodes keep 288
    blocks) below the tip, so peers syncing from this node can verify the
    recent chain; its model stays for good (publishers fetch it with
    `pouw task results`);
  * never deleted: every blob of a best-chain block within the finality
    window (peers syncing within the window fetch them from this node), every
    winning model, and the dataset blobs of tasks not yet final (waiting,
    scheduled, in the mempool, mined within the window) or whose keys this
    node holds for its publisher.

A blob two blocks name (a losing claim may cite a winner's model, or a task's
dataset, as its own) is kept when either rule keeps it. `compute_prune_plan`
decides, reading the chain and changing nothing; `Pruner` is the job the node
runs in its worker after each slot (so it never races a verification that
reads the blobs), with `--keep-all` it does not run at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from consensus.chainstate import INDEX_VALID, ChainState
from consensus.clock import get_phase_point
from consensus.rules import get_task_submission
from consensus.work import get_blob_digests
from pouw.seg.checkpoints import get_checkpoint_part_digests
from pouw.blobstore import BlobStore
from pouw.types import Block, ChainParams, TaskSubmission

from fullnode.core import NodeCore
from fullnode.fetch import BlobFetcher, BlockTag, FetchedWork

log = logging.getLogger("pouw.prune")

PRUNE_FILE = "prune.json"
"""Where a node remembers how far its best chain is pruned (in its data directory)."""
UNDECIDED_SECONDS = 3600.0
"""A block whose blobs were asked for this long ago and that still has no verdict (missing) loses its partial download."""
DISK_USE_MAX_AGE = 5.0
"""Seconds a measured disk use is reported before it is measured again."""


@dataclass(frozen=True)
class PrunePlan:
    """What one pruning pass deletes."""

    delete: frozenset[bytes]
    """Digests of the blobs to delete (those not in the store are skipped)."""
    final_tasks: tuple[bytes, ...]
    """Tasks mined at heights that became final: their decrypted work cache goes too."""
    done: tuple[bytes, ...]
    """Blocks whose fetched model and checkpoints were dealt with (the fetcher forgets them)."""
    pruned_through: int
    """Every best-chain height up to this one is final and pruned."""
    losers: int
    """Blocks that lost or failed whose model and checkpoints go."""


@dataclass(frozen=True)
class PruneReport:
    """What one pruning pass did."""

    blobs: int
    """Blobs deleted."""
    bytes: int
    """Bytes they held."""
    losers: int
    """Blocks that lost or failed, dealt with."""
    pruned_through: int
    """Every best-chain height up to this one is final and pruned."""


def get_work_digests(block: Block, blobs: BlobStore | None = None) -> tuple[bytes, ...]:
    """A block's model and checkpoint digests, the model first; with `blobs`, also every part its checkpoint headers
    held there name (weights and optimizer-state shards)."""
    work = block.body.work
    if work is None:
        return ()
    out = [work.model_digest] + [c.digest for c in work.checkpoints]
    if blobs is not None:
        for c in work.checkpoints:
            out.extend(get_checkpoint_part_digests(blobs, c.digest))
    return tuple(dict.fromkeys(out))


def get_dataset_digests(task: TaskSubmission) -> tuple[bytes, bytes]:
    """A task's encrypted training and test blobs."""
    return task.train_blob.digest, task.test_blob.digest


def is_live_claim(tag: BlockTag, chain: ChainState) -> bool:
    """True while a block not on the best chain may still become its next block: it extends the tip."""
    return tag.height == chain.tip_height + 1 and tag.prev_hash == chain.tip_hash


def is_decided(tag: BlockTag, chain: ChainState) -> bool:
    """True once the node judged a block: stored (its work was checked) or known invalid.

    A block with no verdict may be under verification right now, reading the
    blobs pruning would delete, or missing some of them.
    """
    return chain.get_index(tag.block_hash) is not None or chain.get_invalid_reason(tag.block_hash) is not None


def is_losing_block(entry: FetchedWork, chain: ChainState, slot: int, undecided_before: float) -> bool:
    """True when a block off the best chain can no longer need its model and checkpoints from this node."""
    tag = entry.block
    if tag.slot >= slot:
        return False  # its slot is not over
    if not is_decided(tag, chain):
        return entry.recorded_at < undecided_before  # long missing: its partial download goes
    return chain.get_invalid_reason(tag.block_hash) is not None or not is_live_claim(tag, chain)


def get_window_digests(chain: ChainState, params: ChainParams, state, first: int, last: int,
                       blobs: BlobStore | None = None) -> set[bytes]:
    """Every blob of the best chain's heights first..last: models, checkpoints and their tasks' data."""
    out: set[bytes] = set()
    for height in range(first, last + 1):
        block = chain.get_block_at(height)
        out.update(get_work_digests(block, blobs))
        task = get_task_submission(state, params, block.header.task_id)
        if task is not None:
            out.update(get_dataset_digests(task))
    return out


def get_verify_digests(chain: ChainState, params: ChainParams, state, first: int, last: int,
                       blobs: BlobStore | None = None) -> set[bytes]:
    """What a peer needs to verify the best chain's heights first..last: models, planned checkpoints, task data."""
    out: set[bytes] = set()
    for height in range(max(1, first), last + 1):
        block = chain.get_block_at(height)
        task = get_task_submission(state, params, block.header.task_id)
        out.update(get_blob_digests(task, block.header.task_mode, block, params, blobs))
    return out


def compute_prune_plan(chain: ChainState, params: ChainParams, *, slot: int, pruned_through: int,
                       fetched: Iterable[FetchedWork], kept_tasks: Iterable[TaskSubmission],
                       winning_models: Iterable[bytes], undecided_before: float = float("-inf"),
                       keep_blocks: int = 0, blobs: BlobStore | None = None) -> PrunePlan:
    """The blobs to delete now (see the module doc); reads the chain under its lock, changes nothing.

    `slot` is the current slot by the clock; `pruned_through` the best-chain
    height up to which an earlier pass pruned; `fetched` the blocks whose
    model and checkpoints the node asked for; `kept_tasks` the tasks whose
    dataset blobs must stay; `winning_models` the models of final heights;
    a block still without a verdict is dealt with only when its blobs were
    asked for before `undecided_before` (a time.time()); what peers need to
    verify the last `keep_blocks` best-chain blocks stays. With `blobs`, the
    parts that held checkpoint headers name go and stay with their headers.
    """
    with chain.lock:
        state = chain.state()
        tip = chain.tip_height
        final_top = max(0, tip - params.finality_depth)
        keep = set(winning_models) | get_window_digests(chain, params, state, final_top + 1, tip, blobs)
        serve_top = max(0, tip - max(params.finality_depth, keep_blocks))
        keep |= get_verify_digests(chain, params, state, serve_top + 1, final_top, blobs)
        for task in kept_tasks:
            keep.update(get_dataset_digests(task))
        candidates: set[bytes] = set()
        final_tasks: list[bytes] = []
        for height in range(max(1, pruned_through + 1), final_top + 1):
            block = chain.get_block_at(height)
            keep.update(get_work_digests(block)[:1])  # the winning model stays
            candidates |= get_window_digests(chain, params, state, height, height, blobs)
            task = get_task_submission(state, params, block.header.task_id)
            if task is not None:
                final_tasks.append(task.task_id)
        lag = final_top - serve_top  # heights whose verification blobs outlived their finality: theirs go now
        for height in range(max(1, pruned_through + 1 - lag), serve_top + 1):
            keep.update(get_work_digests(chain.get_block_at(height))[:1])
            candidates |= get_window_digests(chain, params, state, height, height, blobs)
        done: list[bytes] = []
        losers = 0
        for entry in fetched:
            tag = entry.block
            if chain.get_hash_at(tag.height) == tag.block_hash:
                if tag.height <= final_top:  # a winner that became final: as above (its model stays)
                    keep.update(get_work_digests(chain.get_block(tag.block_hash))[:1])
                    candidates.update(entry.digests)
                    done.append(tag.block_hash)
            elif is_losing_block(entry, chain, slot, undecided_before):
                candidates.update(entry.digests)
                done.append(tag.block_hash)
                losers += 1
        return PrunePlan(frozenset(candidates - keep), tuple(final_tasks), tuple(done), max(pruned_through, final_top), losers)


def get_kept_tasks(core: NodeCore) -> list[TaskSubmission]:
    """Tasks whose dataset blobs must stay: waiting, scheduled, in the mempool, or published through this node."""
    with core.lock:
        state = core.chain.state()
        status = state.get_status()
        tasks = list(core.txpool.tasks.ranked())
        for task_id in [q.task_id for q in status.unselected] + [s.task_id for s in status.scheduled] + list(core.keys.mine):
            task = core.get_task(task_id)
            if task is not None:
                tasks.append(task)
        return tasks


def get_stored_side_blocks(chain: ChainState, blobs: BlobStore | None = None) -> list[FetchedWork]:
    """Every stored block off the best chain, as if just fetched (a pass after a restart finds the losers of before)."""
    out = []
    with chain.lock:
        for block_hash, index in chain.iter_index():
            if index.status == INDEX_VALID and chain.is_on_best_chain(block_hash):
                continue
            block = chain.get_block(block_hash)
            if block is None or block.body.work is None:
                continue
            tag = BlockTag(block_hash, index.prev_hash, index.height, index.slot)
            out.append(FetchedWork(tag, frozenset(get_work_digests(block, blobs)), 0.0))
    return out


class Pruner:
    """The pruning job: after each slot, delete what `compute_prune_plan` says (see the module doc)."""

    def __init__(self, core: NodeCore, blobs: BlobStore, fetcher: BlobFetcher, datadir: Path,
                 log_fn: Callable[[str], None] | None = None, keep_blocks: int = 288):
        self.core = core
        self.keep_blocks = keep_blocks
        """Best-chain blocks below the tip whose verification blobs stay, for peers that sync from this node."""
        self.params = core.params
        self.blobs = blobs
        self.fetcher = fetcher
        self.workdir = Path(datadir) / "work"
        self.marker = Path(datadir) / PRUNE_FILE
        self.log = log_fn or (lambda msg: log.info(msg))
        self.pruned_through = self._load_marker()
        """Every best-chain height up to this one is final and pruned."""
        self.deleted_bytes = 0
        """Bytes deleted since the node started."""
        self._winning_models: set[bytes] = set()
        self._models_through = 0
        self._started = False
        self._last_slot: int | None = None

    def is_due(self, now: float) -> bool:
        """True once per slot (the first call too, so a restarted node tidies up at once)."""
        slot = get_phase_point(self.params, now).slot
        if slot == self._last_slot:
            return False
        self._last_slot = slot
        return True

    def run(self, now: float) -> PruneReport:
        """One pass: compute the plan, delete its blobs and work cache, remember how far the chain is pruned."""
        fetched = self.fetcher.get_fetched_work()
        if not self._started:
            fetched += get_stored_side_blocks(self.core.chain, self.blobs)
            self._started = True
        self._learn_winning_models()
        plan = compute_prune_plan(
            self.core.chain, self.params, slot=get_phase_point(self.params, now).slot, pruned_through=self.pruned_through,
            fetched=fetched, kept_tasks=get_kept_tasks(self.core), winning_models=self._winning_models,
            undecided_before=now - UNDECIDED_SECONDS, keep_blocks=self.keep_blocks, blobs=self.blobs,
        )
        count, freed = self._delete(plan.delete)
        for task_id in plan.final_tasks:
            for split in ("train", "test"):
                shutil.rmtree(self.workdir / f"{task_id.hex()}-{split}", ignore_errors=True)
        self.fetcher.forget_work(plan.done)
        if plan.pruned_through != self.pruned_through:
            self.pruned_through = plan.pruned_through
            self._save_marker()
        self.deleted_bytes += freed
        if count:
            self.log(f"pruned {count} blobs ({freed:,} bytes): {plan.losers} losing or failed blocks, "
                     f"best chain final through height {plan.pruned_through}")
        return PruneReport(count, freed, plan.losers, plan.pruned_through)

    def _delete(self, digests: Iterable[bytes]) -> tuple[int, int]:
        count = freed = 0
        for digest in digests:
            size = self.blobs.delete(digest)
            if size is not None:  # None: never fetched, or gone already
                count += 1
                freed += size
        return count, freed

    def _learn_winning_models(self) -> None:
        """Add the models of the final heights pruned so far (they never change) to the set that is never deleted."""
        state = self.core.chain.state()
        for height in range(self._models_through + 1, self.pruned_through + 1):
            entry = state.get_history(height)
            if entry is not None:
                self._winning_models.add(entry.model_digest)
        self._models_through = max(self._models_through, self.pruned_through)

    def _load_marker(self) -> int:
        """How far an earlier run pruned, if the chain still holds the block it pruned up to (else from the start)."""
        try:
            doc = json.loads(self.marker.read_text())
            height, block_hash = int(doc["pruned_through"]), bytes.fromhex(doc["block_hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return height if self.core.chain.get_hash_at(height) == block_hash else 0

    def _save_marker(self) -> None:
        block_hash = self.core.chain.get_hash_at(self.pruned_through) or b""
        tmp = self.marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pruned_through": self.pruned_through, "block_hash": block_hash.hex()}))
        os.replace(tmp, self.marker)


# --- disk use ------------------------------------------------------------------------------


def compute_dir_bytes(path: Path) -> int:
    """Bytes of every file under `path` (0 when it does not exist)."""
    total = 0
    stack = [Path(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def compute_disk_use(datadir: Path, blob_root: Path | None = None) -> dict[str, int]:
    """Bytes the node's chain database, blob store and decrypted work cache take."""
    datadir = Path(datadir)
    return {
        "chain": compute_dir_bytes(datadir / "chain"),
        "blobs": compute_dir_bytes(blob_root if blob_root is not None else datadir / "blobs"),
        "work": compute_dir_bytes(datadir / "work"),
    }


class DiskUse:
    """`compute_disk_use`, measured at most once every `max_age` seconds (RPC callers may ask often)."""

    def __init__(self, datadir: Path, blob_root: Path | None = None, max_age: float = DISK_USE_MAX_AGE):
        self.datadir = Path(datadir)
        self.blob_root = blob_root
        self.max_age = max_age
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._value: dict[str, int] = {}

    def get(self) -> dict[str, int]:
        """The latest measure (bytes by part)."""
        with self._lock:
            if time.monotonic() - self._at > self.max_age:
                self._value = compute_disk_use(self.datadir, self.blob_root)
                self._at = time.monotonic()
            return dict(self._value)
