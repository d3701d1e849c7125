"""Building a block candidate that satisfies the rules (used by miners and tests)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from pouw.encoding import Hash32, MaxLen, encode
from pouw.keys import KeyPair
from pouw.types import (
    ZERO_HASH,
    ZERO_SIGNATURE,
    Block,
    BlockBody,
    BlockHeader,
    ChainParams,
    CheckpointRef,
    ClaimEvidence,
    Commit,
    KeyReveal,
    TaskSubmission,
    Transaction,
    WorkProof,
)
from consensus.rules import (
    compute_body_root,
    compute_commit_binding,
    compute_trajectory_root,
    compute_unselected_root,
    compute_work_payload,
    get_task_submission,
    get_train_data_digest,
)
from consensus.state import State
from consensus.transition import process_schedule, process_transaction


def make_commit(keypair: KeyPair, height: int, slot: int, task_id: bytes, model_digest: bytes,
                checkpoints: tuple[CheckpointRef, ...]) -> Commit:
    """A signed Phase-1 commit to `model_digest` and the trajectory of `checkpoints`."""
    binding = compute_commit_binding(model_digest, keypair.public_key)
    root = compute_trajectory_root(checkpoints)
    return Commit(height, slot, task_id, keypair.public_key, binding, root).signed_by(keypair)


@dataclass(frozen=True)
class BlockTemplate:
    """What a node gives its miner to build a block on: everything but the work and the signatures."""

    height: int
    """Height of the block to build."""
    prev_hash: Hash32
    """The tip it extends."""
    min_slot: int
    """Smallest slot the block may use."""
    task_id: Hash32
    """The task selected for this height."""
    transactions: Annotated[tuple[Transaction, ...], MaxLen(100_000)]
    """Transactions to include, in order (they apply on the tip's state)."""
    unselected_root: Hash32
    """The unfinished-task root after this block (it does not depend on the work or the mode)."""
    evidence: Annotated[tuple[ClaimEvidence, ...], MaxLen(16)] = ()
    """False claims of recent heights to show (their bonds are forfeited; half goes to this block's miner)."""


def make_block_template(state: State, params: ChainParams, transactions: tuple[Transaction, ...] = (),
                        evidence: tuple[ClaimEvidence, ...] = ()) -> BlockTemplate:
    """A template on top of `state` with `transactions` (which must all apply; the node picks them with mempool.txpool.TxPool.select_for_block)."""
    status = state.get_status()
    height = status.height + 1
    task_id = status.scheduled[0].task_id
    trial = state.child()
    for tx in transactions:
        process_transaction(trial, tx, height, params)
    # The queue after the block does not depend on the header beyond its height and slot.
    placeholder = BlockHeader(height, status.min_slot, status.tip_hash, ZERO_HASH, 0, 0, task_id, 0, ZERO_HASH, ZERO_HASH, 0, ZERO_SIGNATURE)
    empty = BlockBody(transactions=(), key_reveals=(), commit=None, work=None)
    root = compute_unselected_root(process_schedule(trial, placeholder, empty, params))
    return BlockTemplate(height, status.tip_hash, status.min_slot, task_id, tuple(transactions), root, tuple(evidence))


def complete_block(
    template: BlockTemplate,
    params: ChainParams,
    keypair: KeyPair,
    *,
    slot: int,
    timestamp: int,
    commit: Commit,
    work: WorkProof,
    task: TaskSubmission | None,
    key_reveals: tuple[KeyReveal, ...] = (),
    task_mode: int = 0,
) -> Block:
    """The signed block a miner claims with: the template plus its commit, work and reveals."""
    body = BlockBody(transactions=template.transactions, key_reveals=tuple(key_reveals), commit=commit, work=work,
                     evidence=template.evidence)
    header = BlockHeader(
        height=template.height,
        slot=slot,
        prev_hash=template.prev_hash,
        body_root=compute_body_root(body),
        timestamp=timestamp,
        size=len(encode(body)),
        task_id=template.task_id,
        task_mode=task_mode,
        unselected_root=template.unselected_root,
        miner=keypair.public_key,
        dice_ppm=work.dice_ppm,
        work_signature=ZERO_SIGNATURE,
    )
    train_digest = get_train_data_digest(template.prev_hash, task_mode, task)
    payload = compute_work_payload(work.model_digest, train_digest, template.task_id, work.dice_ppm)
    header = replace(header, work_signature=keypair.sign(b"work", payload)).signed_by(keypair)
    return Block(header, body)


def assemble_block(
    state: State,
    params: ChainParams,
    keypair: KeyPair,
    *,
    slot: int,
    timestamp: int,
    commit: Commit,
    work: WorkProof,
    transactions: tuple[Transaction, ...] = (),
    key_reveals: tuple[KeyReveal, ...] = (),
    task_mode: int = 0,
    evidence: tuple[ClaimEvidence, ...] = (),
) -> Block:
    """A signed block on top of `state` carrying `work`; `state` itself is not changed."""
    template = make_block_template(state, params, tuple(transactions), tuple(evidence))
    return complete_block(
        template,
        params,
        keypair,
        slot=slot,
        timestamp=timestamp,
        commit=commit,
        work=work,
        task=get_task_submission(state, params, template.task_id),
        key_reveals=key_reveals,
        task_mode=task_mode,
    )
