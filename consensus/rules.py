"""Pure calculations the consensus rules are made of: roots, bindings, seeds, task order."""

from __future__ import annotations

from pouw.encoding import encode, sha256
from pouw.types import (
    Block,
    BlockBody,
    BlockHeader,
    ChainParams,
    MODE_NO_TRAIN_KEY,
    ChainStatus,
    QueueEntry,
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


def compute_body_root(body: BlockBody) -> bytes:
    """The header's body_root: commit, work, key reveals, then transactions, in order."""
    leaves = [encode(body.commit), encode(body.work)]
    leaves += [encode(r) for r in body.key_reveals]
    leaves += [encode(tx) for tx in body.transactions]
    return compute_merkle_root(leaves)


def compute_unselected_root(status: ChainStatus) -> bytes:
    """The header's unselected_root: the scheduled tasks, then the waiting queue in order."""
    return compute_merkle_root([encode(s) for s in status.scheduled] + [encode(q) for q in status.unselected])


def compute_commit_binding(model_digest: bytes, miner: bytes) -> bytes:
    """H(H(model) || miner key): binds a committed model to the miner who trained it."""
    return sha256(model_digest + miner)


def compute_training_seed(prev_hash: bytes, miner: bytes) -> bytes:
    """The seed a miner's training must use: unknown before the parent block exists, bound to the miner."""
    return sha256(b"pouw/train-seed/v1\x00" + prev_hash + miner)


def compute_standing_seed(prev_hash: bytes, split: str) -> bytes:
    """Seed of the standing task's synthetic `split` ("train" or "test") for the child of `prev_hash`."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}")
    return sha256(b"pouw/standing/" + split.encode() + prev_hash)


def compute_spot_check_seed(prev_hash: bytes, miner: bytes, test_key_or_empty: bytes, model_digest: bytes) -> bytes:
    """Seed that picks the epoch a verifier replays; the miner cannot know it while training.

    It includes the test key (revealed only after commits close) and the
    model digest (fixed by the commit).
    """
    return sha256(b"pouw/spot-check" + prev_hash + miner + test_key_or_empty + model_digest)


def compute_work_payload(model_digest: bytes, train_data_digest: bytes, task_id: bytes, dice_ppm: int) -> bytes:
    """What the header's work_signature signs: model, training data and task information."""
    return encode([model_digest, train_data_digest, task_id, dice_ppm])


def get_train_data_digest(prev_hash: bytes, task_mode: int, task: TaskSubmission | None) -> bytes:
    """The training data a block's work signature names: the task's training blob, or the standing seed."""
    if task is None or task_mode == MODE_NO_TRAIN_KEY:
        return compute_standing_seed(prev_hash, "train")
    return task.train_blob.digest


def get_queue_order_key(entry: QueueEntry) -> tuple[int, bytes]:
    """Sort key of the task queue: highest reward first, then lowest task id."""
    return (-entry.reward, entry.task_id)


def compute_insert_queue(queue: tuple[QueueEntry, ...], entry: QueueEntry) -> tuple[QueueEntry, ...]:
    """The queue with `entry` added in selection order."""
    return tuple(sorted(queue + (entry,), key=get_queue_order_key))


def get_work_task_id(params: ChainParams, selected_task_id: bytes, task_mode: int) -> bytes:
    """The task a model is trained on (and its commit names): the standing task in MODE_NO_TRAIN_KEY, else the selected one."""
    return params.standing_task.task_id if task_mode == MODE_NO_TRAIN_KEY else selected_task_id


def is_high_accuracy(block: Block | BlockHeader, params: ChainParams) -> bool:
    """True when a block's verified Dice reaches the chain's high-accuracy threshold."""
    header = block.header if isinstance(block, Block) else block
    return header.height > 0 and header.dice_ppm >= params.high_accuracy_ppm
