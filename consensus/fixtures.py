"""Deterministic keys, parameters and structurally valid blocks for tests and benchmarks.

Blocks made here carry made-up model digests: they pass `apply_block`, which
does not recompute Dice; they would fail `consensus.work.verify_block_work`.
"""

from __future__ import annotations

import hashlib

from consensus.assemble import assemble_block, make_commit
from consensus.clock import get_phase2_start
from consensus.genesis import COIN, make_devnet_params
from consensus.rules import (
    compute_required_mode,
    get_scheduled_task_id,
    get_work_task_id,
    is_fresh_slot,
    is_standing_task,
)
from consensus.state import State
from pouw.keys import KeyPair
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    Allocation,
    Block,
    CheckpointRef,
    BlobRef,
    ChainParams,
    KeyReveal,
    TaskSubmission,
    Transaction,
    Transfer,
    WorkProof,
)
from pouw.blobcrypt import key_commitment
from pouw.seg.spec import ModelSpec, TrainSpec

GENESIS_TIME = 1_700_000_000


def make_keypair(name: str) -> KeyPair:
    """A deterministic key pair named `name`."""
    return KeyPair.from_seed(hashlib.sha256(b"pouw-test-key/" + name.encode()).digest())


def make_test_params(*names: str, amount: int = 1_000_000 * COIN, **kwargs) -> ChainParams:
    """Devnet parameters at a fixed genesis time with `names` funded."""
    allocations = tuple(Allocation(make_keypair(n).public_key, amount) for n in names)
    return make_devnet_params(GENESIS_TIME, allocations, **kwargs)


def make_transfer(sender: KeyPair, recipient: bytes, amount: int, nonce: int, fee: int = 1000) -> Transfer:
    """A signed transfer."""
    return Transfer(sender.public_key, recipient, amount, fee, nonce).signed_by(sender)


def make_task_keys(label: str) -> tuple[bytes, bytes]:
    """Deterministic (training key, test key) for a test task."""
    train = hashlib.sha256(b"train-key/" + label.encode()).digest()
    test = hashlib.sha256(b"test-key/" + label.encode()).digest()
    return train, test


def make_task(publisher: KeyPair, reward: int, nonce: int, label: str = "t", fee: int = 1000) -> TaskSubmission:
    """A signed task submission whose blobs are made-up digests with real key commitments."""
    train_key, test_key = make_task_keys(label)
    return TaskSubmission(
        publisher=publisher.public_key,
        reward=reward,
        fee=fee,
        nonce=nonce,
        model=ModelSpec(architecture="unet2d", in_channels=1, num_classes=2, base_filters=4, patch_size=(32, 32)),
        train=TrainSpec(learning_rate=0.01, batch_size=4, loss="dice", optimizer="adam", max_epochs=100),
        train_blob=BlobRef(hashlib.sha256(b"train/" + label.encode()).digest(), 1000, key_commitment(train_key), ("file:///dev/null",)),
        test_blob=BlobRef(hashlib.sha256(b"test/" + label.encode()).digest(), 1000, key_commitment(test_key), ("file:///dev/null",)),
        title=f"test task {label}",
    ).signed_by(publisher)


def make_checkpoint_refs(model_digest: bytes, segments: int = 2) -> tuple[CheckpointRef, ...]:
    """Made-up trajectory leaves for `model_digest`: checkpoint 0 and `segments` segments."""
    refs = [CheckpointRef(hashlib.sha256(b"ckpt/0/" + model_digest).digest(), 1000, 3000, 0)]
    for i in range(1, segments + 1):
        refs.append(CheckpointRef(hashlib.sha256(b"ckpt/%d/" % i + model_digest).digest(), 1000, 3000, 1_000_000 // i))
    return tuple(refs)


def make_next_block(
    state: State,
    params: ChainParams,
    miner: KeyPair,
    *,
    transactions: tuple[Transaction, ...] = (),
    dice_ppm: int = 900_000,
    slot: int | None = None,
    task_labels: dict[bytes, str] | None = None,
    carry_test_key: bool = True,
    carry_next_train_key: bool = True,
    task_mode: int | None = None,
    salt: bytes = b"",
    evidence: tuple = (),
) -> Block:
    """A structurally valid child of the state's tip mined by `miner`.

    `task_labels` maps task ids to the labels their keys were made from, so
    the block can carry the keys due in its slot: its own task's test key
    (unless `carry_test_key` is False) and the next task's training key
    (unless `carry_next_train_key` is False). The mode is the one the chain
    dictates (`compute_required_mode`) unless `task_mode` forces another.
    """
    status = state.get_status()
    height = status.height + 1
    slot = status.min_slot if slot is None else slot
    labels = task_labels or {}
    selected, upcoming = get_scheduled_task_id(status), status.scheduled[1].task_id
    reveals: list[KeyReveal] = []
    can_score = (not is_standing_task(params, selected) and selected in labels and is_fresh_slot(status, slot)
                 and bool(status.train_key))
    if carry_test_key and can_score:
        reveals.append(KeyReveal(selected, KEY_TEST, make_task_keys(labels[selected])[1]))
    if carry_next_train_key and not is_standing_task(params, upcoming) and upcoming in labels:
        reveals.append(KeyReveal(upcoming, KEY_TRAIN, make_task_keys(labels[upcoming])[0]))
    if task_mode is None:
        task_mode = compute_required_mode(params, status, selected, slot, bool(reveals) and reveals[0].which == KEY_TEST)
    task_id = get_work_task_id(params, selected, task_mode)
    model_digest = hashlib.sha256(b"model/" + status.tip_hash + miner.public_key + salt).digest()
    checkpoints = make_checkpoint_refs(model_digest)
    commit = make_commit(miner, height, slot, task_id, model_digest, checkpoints)
    work = WorkProof(model_digest, 1234, checkpoints, ("http://127.0.0.1:1",), dice_ppm)
    return assemble_block(
        state,
        params,
        miner,
        slot=slot,
        timestamp=get_phase2_start(params, slot) + 1,
        commit=commit,
        work=work,
        transactions=transactions,
        key_reveals=tuple(reveals),
        task_mode=task_mode,
        evidence=tuple(evidence),
    )
