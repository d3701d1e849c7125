"""The useful-work rules of a block: which data its model trains and is scored on, and verifying it.

`apply_block` checks everything that needs only the block and the state;
`verify_block_work` adds what needs the blobs: the model and the checkpoints
its plan names (`compute_work_plan`), the decrypted datasets, the recomputed
Dice (within the chain's tolerance) and the Proof-of-Learning replays of the
segments with the largest declared updates and of segments drawn from keys
revealed after the commit. The caller fetches the blobs first (networking is
not this room's business); a missing blob is an InvalidBlock like any other
failure, so the caller decides whether to retry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pouw.blobstore import BlobStore
from pouw.seg.data import DataError, SegDataset, compute_dataset_digest, load_dataset, synthetic_dataset
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.dice import evaluate, is_within_tolerance
from pouw.seg.train import init_model
from pouw.seg.trajectory import make_layout
from pouw.seg.verify import (
    MAX_CHECKPOINT_BYTES,
    REPLAY_TOLERANCE,
    WorkInvalid,
    check_checkpoint,
    check_initial_checkpoint,
    load_checkpoint_blob,
    replay_checkpoint_segment,
)
from pouw.seg.checkpoints import get_header_parts, read_checkpoint_header
from pouw.seg.weights import ZERO_DIGEST, WeightsError, compute_update_norm, decode_model, encode_model
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
    CheckpointRef,
    TaskSubmission,
)
from consensus.rules import (
    compute_norm_micro,
    compute_replay_seed,
    compute_replay_segments,
    compute_state_sample,
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


def make_checkpoint_refs(checkpoint_digests, update_norms, blobs: BlobStore) -> tuple[CheckpointRef, ...]:
    """The trajectory leaves of a training run: each checkpoint's digest, size (from `blobs`) and declared update norm.

    `update_norms[i - 1]` is the L2 norm of checkpoint i's weights minus
    checkpoint i-1's (float); it is declared in millionths, rounded.
    """
    if len(update_norms) != len(checkpoint_digests) - 1:
        raise ValueError("one update norm per trained segment is needed")
    norms = (0,) + tuple(compute_norm_micro(n) for n in update_norms)
    return tuple(CheckpointRef(d, blobs.size(d), read_checkpoint_header(blobs, d).parts_size, n)
                 for d, n in zip(checkpoint_digests, norms))


FULL_TRAJECTORY_BYTES = 32 << 20
"""A trajectory whose checkpoints take at most this many bytes is fetched whole, so every declared norm is checked."""
NORM_TOLERANCE_MICRO = 2
"""Largest difference (millionths) between a declared and a recomputed update norm, besides the relative one."""
NORM_TOLERANCE_RELATIVE = 1e-4
"""Largest relative difference between a declared and a recomputed update norm (float64 sums in another order)."""


@dataclass(frozen=True)
class WorkPlan:
    """What verifying a block's work reads: the segments it replays and the checkpoints it fetches."""

    segments: tuple[int, ...]
    """Segments replayed (segment i runs from checkpoint i-1 to checkpoint i): top-Q declared norms, then random draws."""
    checkpoints: tuple[int, ...]
    """Indices of the checkpoints read (header and weights): both ends of every replayed segment and the last one, or
    all of them when the trajectory is small (FULL_TRAJECTORY_BYTES)."""
    whole: tuple[int, ...]
    """Those whose whole optimizer state is read: each replayed segment's start (all, when the trajectory is small)."""
    seed: bytes
    """The replay seed: it drew the random segments and draws the state shard read at each segment's end."""

    def get_state_shards(self, index: int, shard_count: int) -> tuple[int, ...] | None:
        """The optimizer-state shards read at checkpoint `index` (None: all of them, whole)."""
        if index in self.whole:
            return None
        if index in self.segments and shard_count > 0:
            return (compute_state_sample(self.seed, index, shard_count),)
        return ()


def compute_work_plan(block: Block, params: ChainParams) -> WorkPlan:
    """The segments a verifier replays and the checkpoints it fetches for `block` (consensus: every node the same)."""
    work, commit = block.body.work, block.body.commit
    seed = compute_replay_seed(block.header.prev_hash, block.header.miner, commit.trajectory_root, block.body.key_reveals)
    segments = compute_replay_segments(seed, work.checkpoints, params.replay_top_q, params.replay_random)
    last = len(work.checkpoints) - 1
    if sum(c.size + c.parts_size for c in work.checkpoints) <= FULL_TRAJECTORY_BYTES:
        every = tuple(range(last + 1))
        return WorkPlan(tuple(segments), every, every, seed)
    needed = {last}
    for i in segments:
        needed |= {i - 1, i}
    return WorkPlan(tuple(segments), tuple(sorted(needed)), tuple(sorted(i - 1 for i in segments)), seed)


def get_work_blobs(block: Block, params: ChainParams | None, blobs: BlobStore | None = None) -> dict[bytes, int]:
    """The blobs verifying `block`'s work reads, with their sizes: the model and its plan's checkpoint headers, then,
    for each of those headers already in `blobs`, the weights and the optimizer-state shards the plan reads.

    A header that is malformed or does not match its CheckpointRef adds
    nothing: verification refuses it without fetching more. Without
    `params` every checkpoint is read whole.
    """
    work = block.body.work
    if work is None:
        return {}
    wanted = {work.model_digest: work.model_size}
    plan = compute_work_plan(block, params) if params is not None else None
    indices = plan.checkpoints if plan is not None else range(len(work.checkpoints))
    for i in indices:
        ref = work.checkpoints[i]
        wanted.setdefault(ref.digest, ref.size)
        if blobs is None or not blobs.has(ref.digest):
            continue
        try:
            header = read_checkpoint_header(blobs, ref.digest, ref.parts_size)
        except (WeightsError, OSError):
            continue
        shards = plan.get_state_shards(i, len(header.shards)) if plan is not None else None
        for part in get_header_parts(header, shards):
            wanted.setdefault(part.digest, part.size)
    return wanted


def get_blob_digests(task: TaskSubmission | None, mode: int, block: Block | None = None,
                     params: ChainParams | None = None, blobs: BlobStore | None = None) -> list[bytes]:
    """Blobs a node must hold to verify a block: the task's dataset blobs and `get_work_blobs`."""
    digests: list[bytes] = []
    if not is_standing_work(task, mode):
        digests.append(task.train_blob.digest)
        if mode != MODE_NO_TEST_KEY:
            digests.append(task.test_blob.digest)
    if block is not None:
        digests.extend(get_work_blobs(block, params, blobs))
    return digests


def load_task_split(task: TaskSubmission, which: int, key: bytes, blobs: BlobStore, workdir: Path) -> SegDataset:
    """Decrypt, unpack and load one split of a task (cached as a folder under `workdir`)."""
    blob = task.train_blob if which == KEY_TRAIN else task.test_blob
    split = "train" if which == KEY_TRAIN else "test"
    folder = Path(workdir) / f"{task.task_id.hex()}-{split}"
    if not folder.is_dir():
        if not blobs.has(blob.digest):
            raise InvalidBlock(f"{split} blob {blob.digest.hex()[:16]} is not available")
        unpack_split(blobs.path(blob.digest), key, folder, split)
    try:
        return load_dataset(folder, split, task.model)
    except DataError as exc:
        raise InvalidBlock(f"{split} data of the task is unusable: {exc}") from None


def unpack_split(blob_path: Path, key: bytes, folder: Path, split: str) -> None:
    """Unpack a split beside `folder`, then rename it into place: a folder that exists is whole.

    Verification workers in other processes share the work folder and a
    node may be killed mid-unpack; neither may see a half-written split.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        try:
            unpack_blob(blob_path, key, scratch)
        except (DecryptError, PackError) as exc:
            raise InvalidBlock(f"{split} blob does not open with the revealed key: {exc}") from None
        try:
            os.rename(scratch, folder)
        except OSError:
            if not folder.is_dir():  # another worker's rename won the race otherwise
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


@dataclass(frozen=True)
class WorkReport:
    """What verifying a block's work measured."""

    dice_ppm: int
    """The recomputed Dice."""
    segments: tuple[int, ...]
    """The segments replayed."""
    distances: tuple[float, ...]
    """Each replayed segment's relative distance."""


def is_norm_declared_right(declared_micro: int, actual: float) -> bool:
    """True when a declared update norm (millionths) matches the one recomputed from the checkpoints."""
    actual_micro = actual * 1_000_000
    return abs(declared_micro - actual_micro) <= NORM_TOLERANCE_MICRO + NORM_TOLERANCE_RELATIVE * actual_micro


@dataclass(frozen=True)
class WorkInputs:
    """What verifying a block's work needs from the state it extends (plain values: it can go to another process)."""

    task: TaskSubmission | None
    """The block's task (None for the standing task)."""
    keys: dict
    """The task's keys as the chain carries them (get_work_keys)."""


def get_work_inputs(block: Block, state: State, params: ChainParams) -> WorkInputs:
    """Read from the parent's state what `verify_work_inputs` needs; raises InvalidBlock."""
    header, body = block.header, block.body
    if body.work is None or body.commit is None:
        raise InvalidBlock("block carries no work")
    task = get_task_submission(state, params, header.task_id)
    if task is None and not is_standing_task(params, header.task_id):
        raise InvalidBlock("selected task is unknown to the state")
    return WorkInputs(task, get_work_keys(state.get_status(), block))


def verify_block_work(block: Block, state: State, params: ChainParams, blobs: BlobStore, workdir: Path,
                      device: str = "cpu") -> WorkReport:
    """Recompute the block's Dice and replay the segments its plan picks; raises InvalidBlock (see verify_work_inputs)."""
    return verify_work_inputs(block, get_work_inputs(block, state, params), params, blobs, workdir, device)


def verify_work_inputs(block: Block, inputs: WorkInputs, params: ChainParams, blobs: BlobStore, workdir: Path,
                       device: str = "cpu") -> WorkReport:
    """Recompute the block's Dice and replay the segments its plan picks; raises InvalidBlock.

    The blobs of `get_blob_digests` must already be in `blobs`. In order,
    cheapest first: the model; every
    fetched checkpoint on its own (index, link to the committed previous
    digest, specs, seed, training data, position by the segment rule, so a
    trajectory longer than the task's max_epochs is refused) and checkpoint
    0 as the seed's own initial weights; each declared update norm whose two
    checkpoints are fetched; the sum of the declared norms against the
    distance from the initial weights to the model (so they cannot all be
    understated); the Dice within the tolerance; then the replays.
    """
    header, body = block.header, block.body
    data = get_work_data(inputs.task, params, header.prev_hash, header.task_mode, inputs.keys, blobs, workdir)
    plan = compute_work_plan(block, params)
    seed = compute_training_seed(header.prev_hash, header.miner)
    try:
        model_file = load_model_blob(blobs, body.work, data.model)
        checkpoints, weights = check_trajectory(blobs, body.work, plan, data, seed, model_file)
        dice = evaluate(model_file, data.model, data.score_set, device=device)
        if not is_within_tolerance(body.work.dice_ppm, dice.dice_ppm, params.dice_tolerance_ppm):
            raise WorkInvalid(f"claimed Dice {body.work.dice_ppm} ppm, measured {dice.dice_ppm} ppm")
        distances = []
        for i in plan.segments:
            distance = replay_checkpoint_segment(checkpoints[i - 1], checkpoints[i], data.train_set, device,
                                                 weights[i - 1], weights[i])
            if not distance <= REPLAY_TOLERANCE:
                raise WorkInvalid(f"replay of segment {i} lands {distance:.4g} away (tolerance {REPLAY_TOLERANCE})")
            distances.append(distance)
    except WorkInvalid as exc:
        raise InvalidBlock(f"work: {exc.reason}") from None
    except ValueError as exc:  # a model whose output overflows, data that do not fit the spec
        raise InvalidBlock(f"work: {exc}") from None
    return WorkReport(dice.dice_ppm, plan.segments, tuple(distances))


def load_model_blob(blobs: BlobStore, work, spec: ModelSpec) -> bytes:
    """The claimed model file, hash-checked and parsed; raises WorkInvalid."""
    if not blobs.has(work.model_digest):
        raise WorkInvalid(f"model blob {work.model_digest.hex()[:16]} is not available")
    model_file = blobs.get_bytes(work.model_digest, max_size=MAX_CHECKPOINT_BYTES)
    if hashlib.sha256(model_file).digest() != work.model_digest or len(model_file) != work.model_size:
        raise WorkInvalid("model blob does not hash to the claimed model digest or has another size")
    try:
        decode_model(model_file, spec)
    except WeightsError as exc:
        raise WorkInvalid(str(exc)) from exc
    return model_file


def check_trajectory(blobs: BlobStore, work, plan: WorkPlan, data: WorkData, seed: bytes, model_file: bytes):
    """Check the fetched checkpoints, their declared norms and the norms' sum; returns (checkpoints, weights) by index."""
    refs = work.checkpoints
    last = len(refs) - 1
    layout = make_layout(data.model, data.train, len(data.train_set))
    data_digest = compute_dataset_digest(data.train_set)
    checkpoints, weights = {}, {}
    world = None
    for i in plan.checkpoints:
        try:
            header = read_checkpoint_header(blobs, refs[i].digest, refs[i].parts_size)
        except WeightsError as exc:
            raise WorkInvalid(f"checkpoint {i}: {exc}") from None
        if i == last and header.weights.digest != work.model_digest:
            raise WorkInvalid("the last checkpoint's weights are not the claimed model")
        ck = load_checkpoint_blob(blobs, refs[i].digest, i, plan.get_state_shards(i, len(header.shards)),
                                  refs[i].parts_size)
        world = ck.world_size if world is None else world
        prev = refs[i - 1].digest if i > 0 else ZERO_DIGEST
        weights[i] = check_checkpoint(ck, i, prev, model_spec=data.model, train_spec=data.train, layout=layout,
                                      is_last=i == last, train_seed=seed, data_digest=data_digest, world_size=world)
        if i == 0:
            check_initial_checkpoint(ck, data.model, seed)
        checkpoints[i] = ck
        if i - 1 in weights and not is_norm_declared_right(refs[i].update_norm, compute_update_norm(weights[i - 1], weights[i])):
            raise WorkInvalid(f"checkpoint {i} declares an update norm its weights do not have")
    initial = weights[0] if 0 in weights else decode_model(encode_model(init_model(data.model, seed), data.model), data.model)
    declared = sum(r.update_norm for r in refs) / 1_000_000
    if declared * (1 + NORM_TOLERANCE_RELATIVE) + NORM_TOLERANCE_MICRO / 1e6 * len(refs) < compute_update_norm(initial, weights[last]):
        raise WorkInvalid("the declared update norms add up to less than the distance from the initial weights to the model")
    return checkpoints, weights


__all__ = ["WorkData", "WorkInputs", "WorkPlan", "WorkReport", "get_work_inputs", "verify_work_inputs", "compute_work_plan", "make_checkpoint_refs", "get_blob_digests", "get_work_blobs", "get_work_data", "get_work_keys", "load_task_split", "verify_block_work"]
