"""The state transition: every rule of apply_block, valid and invalid."""

from __future__ import annotations

import dataclasses

import pytest
from chainutil import MemoryChain

from consensus.assemble import assemble_block, make_commit
from consensus.clock import get_phase2_start, get_slot_start
from consensus.fixtures import (
    make_checkpoint_refs,
    make_keypair,
    make_next_block,
    make_task,
    make_task_keys,
    make_test_params,
    make_transfer,
)
from consensus.genesis import COIN
from consensus.rules import compute_body_root, compute_trajectory_root, get_scheduled_task_id
from consensus.transition import InvalidBlock, apply_block
from pouw.encoding import encode
from pouw.types import (
    KEY_TEST,
    KEY_TRAIN,
    MODE_NO_TEST_KEY,
    MODE_NO_TRAIN_KEY,
    MODE_NORMAL,
    MODE_STALE,
    Block,
    CheckpointRef,
    KeyReveal,
    ScheduledTask,
    WorkProof,
)

ALICE, BOB, MINER, OTHER = (make_keypair(n) for n in ("alice", "bob", "miner", "other"))


@pytest.fixture
def chain() -> MemoryChain:
    return MemoryChain(make_test_params("alice", "bob"))


def resign(block: Block, **header_changes) -> Block:
    """The block with header fields changed and the header signed again by the miner."""
    header = dataclasses.replace(block.header, **header_changes).signed_by(MINER)
    return Block(header, block.body)


def rebody(block: Block, **body_changes) -> Block:
    """The block with body fields changed, header root/size fixed and re-signed."""
    body = dataclasses.replace(block.body, **body_changes)
    return resign(Block(block.header, body), body_root=compute_body_root(body), size=len(encode(body)))


def expect_invalid(chain: MemoryChain, block: Block, fragment: str) -> None:
    before = dict(chain.data)
    with pytest.raises(InvalidBlock, match=fragment):
        chain.apply(block)
    assert chain.data == before, "a rejected block must not change the state"


def test_valid_block_pays_miner_and_moves_coins(chain):
    p = chain.params
    tx = make_transfer(ALICE, BOB.public_key, 7 * COIN, 0, fee=5000)
    block = make_next_block(chain.state(), p, MINER, transactions=(tx,))
    chain.apply(block)
    state = chain.state()
    assert state.get_account(MINER.public_key).balance == p.block_reward + 5000
    assert state.get_account(ALICE.public_key).balance == 1_000_000 * COIN - 7 * COIN - 5000
    assert state.get_account(ALICE.public_key).nonce == 1
    assert state.get_account(BOB.public_key).balance == 1_000_000 * COIN + 7 * COIN
    status = state.get_status()
    assert status.height == 1 and status.tip_hash == block.hash
    assert status.supply == 2_000_000 * COIN + p.block_reward
    entry = state.get_history(1)
    assert entry.winner == MINER.public_key and entry.dice_ppm == block.header.dice_ppm


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(height=5), "commit is for another height"),  # the commit binds the height: caught before any state is read
        (dict(prev_hash=b"\x01" * 32), "prev_hash is not the tip"),
        (dict(timestamp=0), "not in Phase 2"),
        (dict(task_mode=7), "unknown task mode"),
        (dict(dice_ppm=1_000_001), "exceeds"),
        (dict(task_id=b"\x02" * 32), "not the task selected"),
        (dict(unselected_root=b"\x03" * 32), "unselected_root"),
        (dict(size=1), "header size"),
        (dict(body_root=b"\x04" * 32), "body_root"),
    ],
)
def test_header_rules(chain, change, fragment):
    block = make_next_block(chain.state(), chain.params, MINER)
    expect_invalid(chain, resign(block, **change), fragment)


def test_height_must_follow_the_tip(chain):
    stale = make_next_block(chain.state(), chain.params, MINER)
    chain.apply(make_next_block(chain.state(), chain.params, MINER, salt=b"first"))
    expect_invalid(chain, stale, "height 1 does not follow tip height 1")


def test_header_signature_must_be_the_miners(chain):
    block = make_next_block(chain.state(), chain.params, MINER)
    forged = Block(dataclasses.replace(block.header, signature=OTHER.sign(b"header", block.header.signing_payload())), block.body)
    expect_invalid(chain, forged, "bad header signature")


def test_timestamp_in_phase1_is_rejected(chain):
    block = make_next_block(chain.state(), chain.params, MINER)
    expect_invalid(chain, resign(block, timestamp=get_slot_start(chain.params, block.header.slot) + 1), "not in Phase 2")


def test_slot_must_increase(chain):
    chain.apply(make_next_block(chain.state(), chain.params, MINER, slot=3))
    block = make_next_block(chain.state(), chain.params, MINER, slot=3)
    expect_invalid(chain, block, "slot 3 is not after")


def test_skipped_slots_are_allowed(chain):
    chain.apply(make_next_block(chain.state(), chain.params, MINER, slot=0))
    chain.apply(make_next_block(chain.state(), chain.params, MINER, slot=9))
    assert chain.state().get_status().min_slot == 10


def test_transaction_rules(chain):
    p = chain.params
    cases = [
        (make_transfer(ALICE, BOB.public_key, 1, 1), "nonce 1 is not the account's next nonce 0"),
        (make_transfer(MINER, BOB.public_key, 1, 0), "balance 0 is below"),
        (make_transfer(ALICE, BOB.public_key, 0, 0), "transfer of zero coins"),
        (dataclasses.replace(make_transfer(ALICE, BOB.public_key, 5, 0), amount=6), "bad signature"),
        (make_transfer(ALICE, BOB.public_key, 2**64 - 1, 0, fee=10), "overflows|below"),
    ]
    for tx, fragment in cases:
        block = make_next_block(chain.state(), p, MINER)
        expect_invalid(chain, rebody(block, transactions=(tx,)), fragment)


def test_double_spend_in_one_block_is_rejected(chain):
    a = make_transfer(ALICE, BOB.public_key, 1, 0)
    b = make_transfer(ALICE, MINER.public_key, 1, 0)
    block = make_next_block(chain.state(), chain.params, MINER)
    expect_invalid(chain, rebody(block, transactions=(a, b)), "transaction 1: nonce 0")


def test_commit_binding_rules(chain):
    p = chain.params
    block = make_next_block(chain.state(), p, MINER)
    work = block.body.work
    # The commit binds another model.
    wrong_model = make_commit(MINER, 1, block.header.slot, p.standing_task.task_id, b"\x09" * 32, make_checkpoint_refs(b"\x09" * 32))
    expect_invalid(chain, rebody(block, commit=wrong_model), "does not match the commit binding")
    # Another miner's commit re-claimed under our key.
    theirs = make_commit(OTHER, 1, block.header.slot, p.standing_task.task_id, work.model_digest, make_checkpoint_refs(work.model_digest))
    expect_invalid(chain, rebody(block, commit=theirs), "commit was made by another miner")
    for change, fragment in [
        (dict(height=2), "another height"),
        (dict(slot=block.header.slot + 1), "another slot"),
        (dict(task_id=b"\x05" * 32), "another task"),
    ]:
        commit = dataclasses.replace(block.body.commit, **change).signed_by(MINER)
        expect_invalid(chain, rebody(block, commit=commit), fragment)
    unsigned = dataclasses.replace(block.body.commit, signature=OTHER.sign(b"commit", block.body.commit.signing_payload()))
    expect_invalid(chain, rebody(block, commit=unsigned), "bad commit signature")


def test_the_commit_fixes_the_whole_trajectory(chain):
    block = make_next_block(chain.state(), chain.params, MINER)
    work = block.body.work
    spliced = dataclasses.replace(work, checkpoints=work.checkpoints[:-1] + (CheckpointRef(b"\x0a" * 32, 1000, 3000, 5),))
    expect_invalid(chain, rebody(block, work=spliced), "not the committed trajectory")
    short = dataclasses.replace(work, checkpoints=work.checkpoints[:1])
    commit = dataclasses.replace(block.body.commit, trajectory_root=compute_trajectory_root(short.checkpoints)).signed_by(MINER)
    expect_invalid(chain, rebody(block, work=short, commit=commit), "at least one trained segment")
    moved = dataclasses.replace(work, checkpoints=(dataclasses.replace(work.checkpoints[0], update_norm=1),) + work.checkpoints[1:])
    commit = dataclasses.replace(block.body.commit, trajectory_root=compute_trajectory_root(moved.checkpoints)).signed_by(MINER)
    expect_invalid(chain, rebody(block, work=moved, commit=commit), "checkpoint 0 declares a weight update")


def test_work_must_agree_with_header(chain):
    block = make_next_block(chain.state(), chain.params, MINER, dice_ppm=900_000)
    work = dataclasses.replace(block.body.work, dice_ppm=950_000)
    expect_invalid(chain, rebody(block, work=work), "different Dice")
    no_checkpoints = dataclasses.replace(block.body.work, checkpoints=())
    expect_invalid(chain, rebody(block, work=no_checkpoints), "at least one trained segment")


def test_work_signature_is_checked(chain):
    block = make_next_block(chain.state(), chain.params, MINER)
    expect_invalid(chain, resign(block, work_signature=b"\x00" * 64), "bad work signature")


def advance_to_task(chain, task_id, labels, *, carry_key: bool = True) -> None:
    """Apply standing-task blocks until the next height mines `task_id` (the last one carries its training key or not)."""
    p = chain.params
    while get_scheduled_task_id(chain.state().get_status()) != task_id:
        last = chain.state().get_status().scheduled[1].task_id == task_id
        chain.apply(make_next_block(chain.state(), p, MINER, task_labels=labels, carry_next_train_key=carry_key or not last))


def test_task_selection_waits_for_maturity_then_highest_reward_first(chain):
    p = chain.params
    low = make_task(ALICE, 60 * COIN, 0, "low")
    high = make_task(BOB, 90 * COIN, 0, "high")
    labels = {low.task_id: "low", high.task_id: "high"}
    chain.apply(make_next_block(chain.state(), p, MINER, transactions=(low, high)))  # height 1
    # Included at height 1, the tasks may be selected from block 1 + M on: block 4 selects height 6.
    for height in range(2, 2 + p.task_maturity_blocks):
        status = chain.state().get_status()
        assert status.scheduled[1].task_id == p.standing_task.task_id, f"selected before maturity at {height - 1}"
        chain.apply(make_next_block(chain.state(), p, MINER, task_labels=labels))
    status = chain.state().get_status()
    assert status.height == 1 + p.task_maturity_blocks
    assert status.scheduled[1] == ScheduledTask(status.height + 2, high.task_id)
    assert [q.task_id for q in status.unselected] == [low.task_id]
    advance_to_task(chain, high.task_id, labels)
    assert chain.state().get_status().train_key == make_task_keys("high")[0], "the parent carries the training key"
    balance = chain.state().get_account(MINER.public_key).balance
    block = make_next_block(chain.state(), p, MINER, task_labels=labels)
    assert block.header.task_id == high.task_id and block.header.task_mode == MODE_NORMAL
    assert [(r.task_id, r.which) for r in block.body.key_reveals] == [(high.task_id, KEY_TEST), (low.task_id, KEY_TRAIN)]
    chain.apply(block)
    # A published task pays its escrow and fees; it mints nothing.
    assert chain.state().get_account(MINER.public_key).balance == balance + 90 * COIN
    assert chain.state().get_task(high.task_id).escrow == 0
    block = make_next_block(chain.state(), p, MINER, task_labels=labels)
    assert block.header.task_id == low.task_id and block.header.task_mode == MODE_NORMAL
    chain.apply(block)
    assert chain.state().get_status().scheduled[1].task_id == p.standing_task.task_id


def test_equal_rewards_are_ordered_by_task_id(chain):
    p = chain.params
    a = make_task(ALICE, 60 * COIN, 0, "a")
    b = make_task(BOB, 60 * COIN, 0, "b")
    chain.apply(make_next_block(chain.state(), p, MINER, transactions=(a, b)))
    for _ in range(p.task_maturity_blocks):
        chain.apply(make_next_block(chain.state(), p, MINER))
    assert chain.state().get_status().scheduled[1].task_id == min(a.task_id, b.task_id)


def test_task_submission_escrows_reward(chain):
    p = chain.params
    task = make_task(ALICE, 60 * COIN, 0, "x", fee=2000)
    chain.apply(make_next_block(chain.state(), p, MINER, transactions=(task,)))
    state = chain.state()
    assert state.get_account(ALICE.public_key).balance == 1_000_000 * COIN - 60 * COIN - 2000
    assert state.get_task(task.task_id).escrow == 60 * COIN
    assert state.get_status().supply == 2_000_000 * COIN + p.block_reward


@pytest.mark.parametrize(
    "change, fragment",
    [
        (dict(reward=49 * COIN), "below the minimum"),
        (dict(test_blob=None), "are the same"),
    ],
)
def test_task_submission_rules(chain, change, fragment):
    task = make_task(ALICE, 60 * COIN, 0, "x")
    if "test_blob" in change:
        change = dict(test_blob=task.train_blob)
    bad = dataclasses.replace(task, **change).signed_by(ALICE)
    block = make_next_block(chain.state(), chain.params, MINER)
    expect_invalid(chain, rebody(block, transactions=(bad,)), fragment)


def test_task_keys_shared_are_rejected(chain):
    task = make_task(ALICE, 60 * COIN, 0, "x")
    shared = dataclasses.replace(task.test_blob, key_commitment=task.train_blob.key_commitment)
    bad = dataclasses.replace(task, test_blob=shared).signed_by(ALICE)
    block = make_next_block(chain.state(), chain.params, MINER)
    expect_invalid(chain, rebody(block, transactions=(bad,)), "share a key")


def _chain_at_task(chain, *, carry_key: bool = True) -> tuple[bytes, dict]:
    task = make_task(ALICE, 60 * COIN, 0, "k")
    labels = {task.task_id: "k"}
    chain.apply(make_next_block(chain.state(), chain.params, MINER, transactions=(task,)))
    advance_to_task(chain, task.task_id, labels, carry_key=carry_key)
    return task.task_id, labels


def test_key_reveals_must_match_commitments(chain):
    task_id, labels = _chain_at_task(chain)
    block = make_next_block(chain.state(), chain.params, MINER, task_labels=labels)
    assert block.header.task_id == task_id
    expect_invalid(chain, rebody(block, key_reveals=(KeyReveal(task_id, KEY_TEST, b"\x07" * 32),)), "does not match its commitment")
    expect_invalid(chain, rebody(block, key_reveals=block.body.key_reveals * 2), "second key reveal must be the next task's training key")
    chain.apply(block)


def test_the_next_training_key_must_be_the_next_tasks(chain):
    task = make_task(ALICE, 60 * COIN, 0, "n")
    labels = {task.task_id: "n"}
    chain.apply(make_next_block(chain.state(), chain.params, MINER, transactions=(task,)))
    while chain.state().get_status().scheduled[1].task_id != task.task_id:
        chain.apply(make_next_block(chain.state(), chain.params, MINER))
    block = make_next_block(chain.state(), chain.params, MINER, task_labels=labels)
    [reveal] = block.body.key_reveals
    assert reveal == KeyReveal(task.task_id, KEY_TRAIN, make_task_keys("n")[0])
    expect_invalid(chain, rebody(block, key_reveals=(KeyReveal(task.task_id, KEY_TRAIN, b"\x01" * 32),)), "does not match")
    expect_invalid(chain, rebody(block, key_reveals=(KeyReveal(b"\x09" * 32, KEY_TRAIN, reveal.key),)), "next task's training key")


def test_a_mode_the_chain_does_not_dictate_is_invalid(chain):
    """Mode downgrade: with the training key on chain, neither mode 1 nor an omitted test key posing as mode 1 passes."""
    task_id, labels = _chain_at_task(chain)
    block = make_next_block(chain.state(), chain.params, MINER, task_labels=labels, carry_test_key=False, task_mode=MODE_NO_TRAIN_KEY)
    expect_invalid(chain, block, "not the mode 2 the chain dictates")
    block = make_next_block(chain.state(), chain.params, MINER, task_labels=labels, task_mode=MODE_NO_TEST_KEY)
    expect_invalid(chain, block, "not the mode 0 the chain dictates")


def test_missing_training_key_forces_the_standing_task_and_burns_what_the_block_mints(chain):
    task_id, labels = _chain_at_task(chain, carry_key=False)
    p = chain.params
    before = chain.state()
    alice, supply = before.get_account(ALICE.public_key).balance, before.get_status().supply
    block = make_next_block(before, p, MINER, task_labels=labels)
    assert block.header.task_mode == MODE_NO_TRAIN_KEY
    assert block.body.commit.task_id == p.standing_task.task_id
    assert block.body.key_reveals == ()
    expect_invalid(chain, make_next_block(before, p, MINER, task_labels=labels, task_mode=MODE_NORMAL), "the chain dictates")
    chain.apply(block)
    state = chain.state()
    assert state.get_account(ALICE.public_key).balance == alice + 60 * COIN - p.block_reward
    assert state.get_status().supply == supply + p.block_reward - p.block_reward
    assert state.get_task(task_id).escrow == 0


def test_missing_test_key_pays_the_escrow_and_mints_nothing(chain):
    task_id, labels = _chain_at_task(chain)
    miner_before = chain.state().get_account(MINER.public_key).balance
    block = make_next_block(chain.state(), chain.params, MINER, task_labels=labels, carry_test_key=False)
    assert block.header.task_mode == MODE_NO_TEST_KEY and block.body.key_reveals == ()
    chain.apply(block)
    assert chain.state().get_account(MINER.public_key).balance == miner_before + 60 * COIN


def test_a_task_whose_slot_passed_expires_and_is_refunded(chain):
    """The test key was due in the slot after the parent's; a later slot may know it: the task cannot be scored any more."""
    task_id, labels = _chain_at_task(chain)
    p = chain.params
    late = chain.state().get_status().min_slot + 1
    alice = chain.state().get_account(ALICE.public_key).balance
    block = make_next_block(chain.state(), p, MINER, task_labels=labels, slot=late)
    assert block.header.task_mode == MODE_STALE and block.body.commit.task_id == p.standing_task.task_id
    test_key = KeyReveal(task_id, KEY_TEST, make_task_keys("k")[1])
    expect_invalid(chain, make_next_block(chain.state(), p, MINER, task_labels=labels, slot=late, task_mode=MODE_NORMAL), "dictates")
    expect_invalid(chain, rebody(block, key_reveals=(test_key,)), "test key may only be carried by a block that scores")
    chain.apply(block)
    assert chain.state().get_account(ALICE.public_key).balance == alice + 60 * COIN
    assert chain.state().get_account(MINER.public_key).balance > 0


def test_standing_task_cannot_use_a_fallback_mode(chain):
    block = make_next_block(chain.state(), chain.params, MINER, task_mode=MODE_NO_TEST_KEY)
    expect_invalid(chain, block, "not the mode 0 the chain dictates")


def test_block_size_and_count_limits():
    params = make_test_params("alice", "bob")
    params = dataclasses.replace(params, max_block_transactions=2)
    chain = MemoryChain(params)
    txs = tuple(make_transfer(ALICE, BOB.public_key, 1, n) for n in range(3))
    block = make_next_block(chain.state(), params, MINER)
    expect_invalid(chain, rebody(block, transactions=txs), "3 transactions exceed 2")
    small = dataclasses.replace(make_test_params("alice", "bob"), max_block_size=500)
    chain = MemoryChain(small)
    block = make_next_block(chain.state(), small, MINER)
    expect_invalid(chain, rebody(block, transactions=txs[:2]), "exceeds 500")


def test_genesis_schedules_the_standing_task():
    params = make_test_params("alice")
    chain = MemoryChain(params)
    status = chain.state().get_status()
    assert status.height == 0 and status.tip_hash == chain.genesis.hash
    assert all(s.task_id == params.standing_task.task_id for s in status.scheduled)
    assert chain.state().get_account(ALICE.public_key).balance == 1_000_000 * COIN


def test_miner_cannot_mint_with_forged_phase2_timestamp_of_other_slot(chain):
    block = make_next_block(chain.state(), chain.params, MINER, slot=2)
    expect_invalid(chain, resign(block, timestamp=get_phase2_start(chain.params, 5) + 1), "not in Phase 2 of slot 2")


def test_assemble_rejects_unknown_work_task(chain):
    p = chain.params
    state = chain.state()
    commit = make_commit(MINER, 1, 0, p.standing_task.task_id, b"\x01" * 32, make_checkpoint_refs(b"\x01" * 32))
    work = WorkProof(b"\x01" * 32, 10, make_checkpoint_refs(b"\x01" * 32), (), 1)
    block = assemble_block(state, p, MINER, slot=0, timestamp=get_phase2_start(p, 0), commit=commit, work=work, task_mode=MODE_NORMAL)
    apply_block(chain.state(), block, p)
