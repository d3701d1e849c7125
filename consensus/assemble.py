"""Building a block candidate that satisfies the rules (used by miners and tests)."""

from __future__ import annotations

from dataclasses import replace

from pouw.encoding import encode
from pouw.keys import KeyPair
from pouw.types import (
    MODE_NO_TRAIN_KEY,
    ZERO_HASH,
    ZERO_SIGNATURE,
    Block,
    BlockBody,
    BlockHeader,
    ChainParams,
    Commit,
    KeyReveal,
    Transaction,
    WorkProof,
)
from consensus.rules import (
    compute_body_root,
    compute_commit_binding,
    compute_unselected_root,
    compute_work_payload,
)
from consensus.state import State
from consensus.transition import (
    InvalidBlock,
    get_train_data_digest,
    process_rewards,
    process_schedule,
    process_transaction,
)


def get_work_task_id(state: State, params: ChainParams, height: int, task_mode: int) -> bytes:
    """The task a miner must train for `height` in `task_mode`."""
    scheduled = state.get_status().scheduled[0]
    if scheduled.height != height:
        raise InvalidBlock(f"state tip does not precede height {height}")
    return params.standing_task.task_id if task_mode == MODE_NO_TRAIN_KEY else scheduled.task_id


def make_commit(keypair: KeyPair, height: int, slot: int, task_id: bytes, model_digest: bytes) -> Commit:
    """A signed Phase-1 commit to `model_digest`."""
    binding = compute_commit_binding(model_digest, keypair.public_key)
    return Commit(height, slot, task_id, keypair.public_key, binding).signed_by(keypair)


def select_transactions(state: State, candidates: list[Transaction], height: int, params: ChainParams) -> list[Transaction]:
    """The candidates that apply in order on `state`, skipping any that do not, within block limits."""
    trial = state.child()
    chosen: list[Transaction] = []
    size = 0
    for tx in candidates:
        if len(chosen) >= params.max_block_transactions:
            break
        tx_size = len(encode(tx))
        if size + tx_size > params.max_block_size - 64 * 1024:  # room for work and commit
            break
        attempt = trial.child()
        try:
            process_transaction(attempt, tx, height, params)
        except InvalidBlock:
            continue
        trial.absorb(attempt)
        chosen.append(tx)
        size += tx_size
    return chosen


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
) -> Block:
    """A signed block on top of `state` carrying `work`; `state` itself is not changed."""
    status = state.get_status()
    height = status.height + 1
    task_id = status.scheduled[0].task_id
    body = BlockBody(transactions=tuple(transactions), key_reveals=tuple(key_reveals), commit=commit, work=work)
    header = BlockHeader(
        height=height,
        slot=slot,
        prev_hash=status.tip_hash,
        body_root=compute_body_root(body),
        timestamp=timestamp,
        size=len(encode(body)),
        task_id=task_id,
        task_mode=task_mode,
        unselected_root=ZERO_HASH,
        miner=keypair.public_key,
        dice_ppm=work.dice_ppm,
        work_signature=ZERO_SIGNATURE,
    )
    # The unfinished-task root is the queue after this block: simulate it.
    trial = state.child()
    task = None if task_id == params.standing_task.task_id else trial.get_task(task_id)
    fees = 0
    for tx in body.transactions:
        process_transaction(trial, tx, height, params)
        fees += tx.fee
    process_rewards(trial, header, task, fees, params)
    header = replace(header, unselected_root=compute_unselected_root(process_schedule(trial, header, params)))
    payload = compute_work_payload(work.model_digest, get_train_data_digest(header, task), task_id, work.dice_ppm)
    header = replace(header, work_signature=keypair.sign(b"work", payload)).signed_by(keypair)
    return Block(header, body)
