"""The one home of the consensus rules' building blocks: roots, bindings, seeds, keys, task order and status.

Everything else (the transition, the node, the miner, the pools) calls these;
none of them is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from pouw.blobcrypt import is_key_for
from pouw.encoding import encode, sha256
from pouw.types import (
    KEY_TRAIN,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_NORMAL,
    MODE_STALE,
    BlobRef,
    Block,
    BlockBody,
    BlockHeader,
    ChainParams,
    ChainStatus,
    HistoryEntry,
    QueueEntry,
    TaskRecord,
    TaskSubmission,
)

_LEAF = b"\x00"
_NODE = b"\x01"


def compute_merkle_root(leaves: list[bytes]) -> bytes:
    """Merkle root of leaf preimages; leaves and inner nodes are hashed with distinct prefixes.

    An odd node at any level is carried up unchanged (no duplication, so no
    CVE-2012-2459-style twin trees). The root of no leaves is SHA-256 of "".
    """
    if not leaves:
        return sha256(b"")
    level = [sha256(_LEAF + leaf) for leaf in leaves]
    while len(level) > 1:
        nxt = [sha256(_NODE + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def compute_body_root_of(commit, work, key_reveals, transactions_root: bytes, evidence_root: bytes) -> bytes:
    """The body root from its parts: the commit, the work, the key reveals, and the roots of transactions and evidence.

    Kept in this shape so that a claim can be shown (ClaimEvidence) with its
    transactions and evidence replaced by their roots.
    """
    return sha256(
        b"pouw/body/v2\x00" + sha256(encode(commit)) + sha256(encode(work))
        + compute_merkle_root([encode(r) for r in key_reveals]) + transactions_root + evidence_root
    )


def compute_transactions_root(transactions) -> bytes:
    """Merkle root of a block's transactions, in order."""
    return compute_merkle_root([encode(tx) for tx in transactions])


def compute_evidence_root(evidence) -> bytes:
    """Merkle root of a block's claim evidence, in order."""
    return compute_merkle_root([encode(e) for e in evidence])


def compute_body_root(body: BlockBody) -> bytes:
    """The header's body_root (`compute_body_root_of` over the body's parts)."""
    return compute_body_root_of(body.commit, body.work, body.key_reveals,
                                compute_transactions_root(body.transactions), compute_evidence_root(body.evidence))


def compute_trajectory_root(checkpoints) -> bytes:
    """The commit's trajectory_root: Merkle root over the encoded CheckpointRefs, in training order."""
    return compute_merkle_root([encode(c) for c in checkpoints])


def compute_unselected_root(status: ChainStatus) -> bytes:
    """The header's unselected_root: the scheduled tasks, then the waiting queue in order."""
    return compute_merkle_root([encode(s) for s in status.scheduled] + [encode(q) for q in status.unselected])


def compute_commit_binding(model_digest: bytes, miner: bytes) -> bytes:
    """H(H(model) || miner key): binds a committed model to the miner who trained it."""
    return sha256(model_digest + miner)


def compute_training_seed(prev_hash: bytes, miner: bytes) -> bytes:
    """The seed a miner's training must use: unknown before the parent block exists, bound to the miner."""
    return sha256(b"pouw/train-seed/v1\x00" + prev_hash + miner)


def get_task_blob(task: TaskSubmission, which: int) -> BlobRef:
    """The blob a key of kind `which` (KEY_TRAIN or KEY_TEST) opens."""
    return task.train_blob if which == KEY_TRAIN else task.test_blob


def is_key_for_task(task: TaskSubmission, which: int, key: bytes | None) -> bool:
    """True when `key` matches the commitment of the task's training (or test) blob."""
    if key is None or len(key) != 32:
        return False
    return is_key_for(key, get_task_blob(task, which).key_commitment)


def compute_standing_seed(prev_hash: bytes, split: str) -> bytes:
    """Seed of the standing task's synthetic `split` ("train" or "test") for the child of `prev_hash`."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}")
    return sha256(b"pouw/standing/" + split.encode() + prev_hash)


def compute_norm_micro(norm: float) -> int:
    """A weight-update norm as a claim declares it: millionths, rounded (half to even), never negative."""
    return max(0, round(norm * 1_000_000))


def compute_replay_seed(prev_hash: bytes, miner: bytes, trajectory_root: bytes, key_reveals) -> bytes:
    """Seed that draws the random segments a verifier replays.

    It includes the keys the block carries (its task's test key and the next
    task's training key, revealed in Phase 2, after the commit fixed the
    trajectory), so a miner cannot know the draw while it trains or commits.
    With no key (the standing task followed by the standing task) the draw is
    predictable; the top-Q part of the choice does not depend on it
    (docs/security.md).
    """
    keys = b"".join(bytes([r.which]) + r.task_id + r.key for r in key_reveals)
    return sha256(b"pouw/replay/v2\x00" + prev_hash + miner + trajectory_root + keys)


def compute_replay_segments(seed: bytes, checkpoints, top_q: int, random_count: int) -> list[int]:
    """The segments (1..n; segment i ends at checkpoint i) a verifier replays, in increasing order.

    The `top_q` segments with the largest declared weight updates (a splice
    from a model trained elsewhere is a large jump: Proof-of-Learning's top-Q
    rule), ties to the lower index; then `random_count` further distinct
    segments drawn from `seed`.
    """
    n = len(checkpoints) - 1
    if n < 1:
        return []
    by_norm = sorted(range(1, n + 1), key=lambda i: (-checkpoints[i].update_norm, i))
    chosen = set(by_norm[: min(top_q, n)])
    counter = 0
    while len(chosen) < min(n, top_q + random_count):
        draw = sha256(seed + counter.to_bytes(4, "big"))
        chosen.add(1 + int.from_bytes(draw[:8], "big") % n)
        counter += 1
    return sorted(chosen)


def compute_state_sample(seed: bytes, index: int, shard_count: int) -> int:
    """The optimizer-state shard a verifier reads at checkpoint `index` where a replayed segment ends.

    Drawn from the replay seed, so unknown while the miner trains: a
    forged momentum must differ from the replayed one nearly everywhere to
    steer the next segment, and any shard shows it.
    """
    if shard_count < 1:
        raise ValueError("a checkpoint with no optimizer-state shard has none to draw")
    draw = sha256(b"pouw/state-sample/v1\x00" + seed + index.to_bytes(4, "big"))
    return int.from_bytes(draw[:8], "big") % shard_count


def compute_claim_bond(params: ChainParams, work) -> int:
    """The bond a claim's miner must hold: a base plus a price per MiB a verifier fetches for it.

    A verifier fetches the model and, for each replayed segment, at most two
    whole checkpoints (bounded by the largest declared checkpoint: header and
    parts), so the bond grows with what a false claim makes every node spend.
    """
    biggest = max((c.size + c.parts_size for c in work.checkpoints), default=0)
    pairs = params.replay_top_q + params.replay_random
    fetched = work.model_size + 2 * pairs * biggest
    return params.claim_bond_base + params.claim_bond_per_mib * -(-fetched // (1 << 20))


def compute_work_payload(model_digest: bytes, train_data_digest: bytes, task_id: bytes, dice_ppm: int) -> bytes:
    """What the header's work_signature signs: model, training data and task information."""
    return encode([model_digest, train_data_digest, task_id, dice_ppm])


def is_standing_work(task: TaskSubmission | None, task_mode: int) -> bool:
    """True when a block's model trains (and is scored) on the standing task's synthetic data: no task, mode 1 or 3."""
    return task is None or task_mode in (MODE_NO_TRAIN_KEY, MODE_STALE)


def get_train_data_digest(prev_hash: bytes, task_mode: int, task: TaskSubmission | None) -> bytes:
    """The training data a block's work signature names: the task's training blob, or the standing seed."""
    if is_standing_work(task, task_mode):
        return compute_standing_seed(prev_hash, "train")
    return task.train_blob.digest


def get_queue_order_key(entry: QueueEntry) -> tuple[int, bytes]:
    """Sort key of the task queue: highest reward first, then lowest task id."""
    return (-entry.reward, entry.task_id)


def compute_insert_queue(queue: tuple[QueueEntry, ...], entry: QueueEntry) -> tuple[QueueEntry, ...]:
    """The queue with `entry` added in selection order."""
    return tuple(sorted(queue + (entry,), key=get_queue_order_key))


def is_standing_task(params: ChainParams, task_id: bytes) -> bool:
    """True for the chain's standing task (it has no record, no keys and no escrow)."""
    return task_id == params.standing_task.task_id


def get_task_submission(state, params: ChainParams, task_id: bytes) -> TaskSubmission | None:
    """The submission of a scheduled task from `state` (a consensus.state.State); None for the standing task or an unknown id."""
    if is_standing_task(params, task_id):
        return None
    record = state.get_task(task_id)
    return None if record is None else record.submission


def get_scheduled_task_id(status: ChainStatus) -> bytes:
    """The task the next height (tip + 1) is scheduled to train."""
    return status.scheduled[0].task_id


def get_commit_task_ids(status: ChainStatus, params: ChainParams) -> frozenset[bytes]:
    """The tasks a Phase-1 commit for the next height may name: its scheduled task, or the standing task (mode 1)."""
    return frozenset({get_scheduled_task_id(status), params.standing_task.task_id})


def get_work_task_id(params: ChainParams, selected_task_id: bytes, task_mode: int) -> bytes:
    """The task a model is trained on (and its commit names): the standing task in modes 1 and 3, else the selected one."""
    return params.standing_task.task_id if task_mode in (MODE_NO_TRAIN_KEY, MODE_STALE) else selected_task_id


def is_fresh_slot(status: ChainStatus, slot: int) -> bool:
    """True when `slot` is the one right after the tip's: the only slot whose block may score the task on its test set.

    The test key of a height's task is revealed in Phase 2 of that slot; once
    it has passed without a block, the test set may be public, so no model
    trained afterwards may be scored on it (MODE_STALE).
    """
    return slot == status.min_slot


def compute_required_mode(params: ChainParams, status: ChainStatus, task_id: bytes, slot: int, carries_test_key: bool) -> int:
    """The mode the chain dictates for the next block: the miner chooses only whether it carries the test key.

    The standing task has no keys (mode 0). A published task is stale in any
    slot but the one right after the tip's (mode 3); without its training key
    on chain (carried by the tip) it falls back to the standing task (mode 1);
    otherwise it is scored on its test set if the block carries the test key
    (mode 0), else on its training set (mode 2).
    """
    if is_standing_task(params, task_id):
        return MODE_NORMAL
    if not is_fresh_slot(status, slot):
        return MODE_STALE
    if not status.train_key:
        return MODE_NO_TRAIN_KEY
    return MODE_NORMAL if carries_test_key else MODE_NO_TEST_KEY


def compute_forfeit(escrow: int, params: ChainParams) -> int:
    """What a task whose training key never reached the chain loses (burned): at least what its block mints."""
    return min(escrow, params.block_reward)


def is_minting(header: BlockHeader, params: ChainParams) -> bool:
    """True when a block mints the block reward: only standing-task work does (published tasks pay their escrow)."""
    return is_standing_task(params, header.task_id) or header.task_mode in (MODE_NO_TRAIN_KEY, MODE_STALE)


def is_useful(header: BlockHeader, params: ChainParams) -> bool:
    """True when a block served its scheduled published task with both keys: its Dice is comparable across branches."""
    return header.height > 0 and header.task_mode == MODE_NORMAL and not is_standing_task(params, header.task_id)


def is_high_accuracy(block: Block | BlockHeader, params: ChainParams) -> bool:
    """True when a useful block's verified Dice reaches the chain's high-accuracy threshold."""
    header = block.header if isinstance(block, Block) else block
    return is_useful(header, params) and header.dice_ppm >= params.high_accuracy_ppm


def compute_tie_value(prev_hash: bytes, miner: bytes) -> bytes:
    """What decides between equal claims (lower wins): fixed by the parent and the miner's committed key, not grindable."""
    return sha256(b"pouw/tie/v1\x00" + prev_hash + miner)


# --- task status: one vocabulary for RPC, listings and the explorer ---------------

TASK_PENDING = "pending"
"""Submitted to a mempool, not yet in a block."""
TASK_WAITING = "waiting"
"""In the chain's queue of unselected tasks."""
TASK_SCHEDULED = "scheduled"
"""Selected for a height that has not been mined yet."""
TASK_MINED = "mined"
"""Its height was mined with its data (mode 0 or 2); the escrow went to the winner."""
TASK_FORFEITED = "forfeited"
"""Its training key never reached the chain (mode 1): part of the escrow was burned, the rest refunded."""
TASK_EXPIRED = "expired"
"""Its slot passed without a block, so its test set may be public (mode 3): the escrow was refunded."""
TASK_UNKNOWN = "unknown"
"""Neither the chain nor the mempool knows it."""


@dataclass(frozen=True)
class TaskStatus:
    """Where a published task stands in the chain state."""

    status: str
    """TASK_WAITING, TASK_SCHEDULED, TASK_MINED, TASK_FORFEITED, TASK_EXPIRED or TASK_UNKNOWN."""
    height: int
    """The height it is (or was) scheduled for; 0 while waiting or unknown."""
    record: TaskRecord | None
    """Its chain record, if the chain knows it."""
    history: HistoryEntry | None
    """What the block of its height did with it, once mined."""


def get_task_status(state, task_id: bytes) -> TaskStatus:
    """The status of a published task in `state` (a consensus.state.State)."""
    record = state.get_task(task_id)
    if record is None:
        return TaskStatus(TASK_UNKNOWN, 0, None, None)
    if record.selected_height == 0:
        return TaskStatus(TASK_WAITING, 0, record, None)
    entry = state.get_history(record.selected_height)
    if entry is None or entry.task_id != task_id:
        return TaskStatus(TASK_SCHEDULED, record.selected_height, record, None)
    done = {MODE_NO_TRAIN_KEY: TASK_FORFEITED, MODE_STALE: TASK_EXPIRED}.get(entry.task_mode, TASK_MINED)
    return TaskStatus(done, record.selected_height, record, entry)
