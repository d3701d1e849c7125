"""The useful-work rules of a block: which data its model trains and is scored on, and verifying it.

`apply_block` checks everything that needs only the block and the state;
`verify_block_work` adds what needs the blobs: the model and checkpoint
files, the decrypted datasets, the recomputed Dice (within the chain's
tolerance) and the Proof-of-Learning spot check. The caller fetches blobs
first (networking is not this room's business); a missing blob is an
InvalidBlock like any other failure, so the caller decides whether to retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pouw.blobstore import BlobStore
from pouw.seg.data import DataError, SegDataset, load_dataset, synthetic_dataset
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.verify import VerifyReport, WorkInvalid, verify_work
from pouw.taskpack import unpack_blob
from pouw.blobcrypt import DecryptError
from pouw.taskpack import PackError
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NO_TEST_KEY,
    Block,
    ChainParams,
    ChainStatus,
    TaskSubmission,
)
from consensus.rules import (
    compute_replay_seed,
    compute_standing_seed,
    compute_training_seed,
    get_task_submission,
    is_standing_task,
    is_standing_work,
)
from consensus.state import State
from consensus.transition import InvalidBlock


@dataclass(frozen=True)
class WorkData:
    """Everything needed to train or score the work of one block."""

    model: ModelSpec
    """The network."""
    train: TrainSpec
    """The hyperparameters."""
    train_set: SegDataset
    """The data the model trains on."""
    score_set: SegDataset | None
    """The data its Dice is measured on (None until the test key is known)."""


def get_blob_digests(task: TaskSubmission | None, mode: int, block: Block | None = None) -> list[bytes]:
    """Blobs a node must hold to verify a block: the task's dataset blobs, then the work's model and checkpoints."""
    digests: list[bytes] = []
    if not is_standing_work(task, mode):
        digests.append(task.train_blob.digest)
        if mode != MODE_NO_TEST_KEY:
            digests.append(task.test_blob.digest)
    if block is not None and block.body.work is not None:
        digests.append(block.body.work.model_digest)
        digests.extend(block.body.work.checkpoint_digests)
    return digests


def load_task_split(task: TaskSubmission, which: int, key: bytes, blobs: BlobStore, workdir: Path) -> SegDataset:
    """Decrypt, unpack and load one split of a task (cached as a folder under `workdir`)."""
    blob = task.train_blob if which == KEY_TRAIN else task.test_blob
    split = "train" if which == KEY_TRAIN else "test"
    folder = Path(workdir) / f"{task.task_id.hex()}-{split}"
    if not (folder / "dataset.json").exists():
        if not blobs.has(blob.digest):
            raise InvalidBlock(f"{split} blob {blob.digest.hex()[:16]} is not available")
        try:
            unpack_blob(blobs.path(blob.digest), key, folder)
        except (DecryptError, PackError) as exc:
            raise InvalidBlock(f"{split} blob does not open with the revealed key: {exc}") from None
    try:
        return load_dataset(folder, split, task.model)
    except DataError as exc:
        raise InvalidBlock(f"{split} data of the task is unusable: {exc}") from None


def get_work_data(
    task: TaskSubmission | None,
    params: ChainParams,
    prev_hash: bytes,
    mode: int,
    keys: dict[int, bytes],
    blobs: BlobStore,
    workdir: Path,
) -> WorkData:
    """The datasets of the work on `task` (None: the standing task) for the child of `prev_hash`."""
    if is_standing_work(task, mode):
        standing = params.standing_task
        train_set = synthetic_dataset(compute_standing_seed(prev_hash, "train"), standing.train_count, standing.model)
        test_set = synthetic_dataset(compute_standing_seed(prev_hash, "test"), standing.test_count, standing.model)
        return WorkData(standing.model, standing.train, train_set, test_set)
    train_set = load_task_split(task, KEY_TRAIN, keys[KEY_TRAIN], blobs, workdir)
    if mode == MODE_NO_TEST_KEY:
        return WorkData(task.model, task.train, train_set, train_set)
    score_set = load_task_split(task, KEY_TEST, keys[KEY_TEST], blobs, workdir) if KEY_TEST in keys else None
    return WorkData(task.model, task.train, train_set, score_set)


def get_work_keys(parent_status: ChainStatus, block: Block) -> dict[int, bytes]:
    """The keys that open a block's task data: the training key its parent carried, the test key it carries itself."""
    keys = {KEY_TRAIN: parent_status.train_key} if parent_status.train_key else {}
    for reveal in block.body.key_reveals:
        if reveal.which == KEY_TEST and reveal.task_id == block.header.task_id:
            keys[KEY_TEST] = reveal.key
    return keys


def verify_block_work(block: Block, state: State, params: ChainParams, blobs: BlobStore, workdir: Path) -> VerifyReport:
    """Recompute the block's Dice and spot-check its training; raises InvalidBlock.

    `state` is the state the block extends. The blobs the block names
    (`get_blob_digests`) must already be in `blobs`.
    """
    header, body = block.header, block.body
    if body.work is None or body.commit is None:
        raise InvalidBlock("block carries no work")
    task = get_task_submission(state, params, header.task_id)
    if task is None and not is_standing_task(params, header.task_id):
        raise InvalidBlock("selected task is unknown to the state")
    keys = get_work_keys(state.get_status(), block)
    data = get_work_data(task, params, header.prev_hash, header.task_mode, keys, blobs, workdir)
    try:
        return verify_work(
            model_spec=data.model,
            train_spec=data.train,
            model_digest=body.work.model_digest,
            checkpoint_digests=body.work.checkpoint_digests,
            claimed_dice_ppm=body.work.dice_ppm,
            blob_store=blobs,
            test_dataset=data.score_set,
            train_dataset=data.train_set,
            spot_check_seed=compute_replay_seed(header.prev_hash, header.miner, body.commit.trajectory_root, body.key_reveals),
            train_seed=compute_training_seed(header.prev_hash, header.miner),
            dice_tolerance_ppm=params.dice_tolerance_ppm,
        )
    except WorkInvalid as exc:
        raise InvalidBlock(f"work: {exc.reason}") from None


__all__ = ["WorkData", "get_blob_digests", "get_work_data", "get_work_keys", "load_task_split", "verify_block_work"]
