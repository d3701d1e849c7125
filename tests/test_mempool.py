"""The transaction pool: admission rules, replacement, limits and eviction, block selection, reorgs."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import pytest
from chainutil import MemoryChain

from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params, make_transfer
from consensus.genesis import COIN
from consensus.state import State
from consensus.transition import apply_block
from mempool.errors import REASONS, MempoolReject
from mempool.txpool import (
    DEFAULT_MIN_FEE_RATE,
    TxPool,
    compute_fee_rate,
    compute_signing_payload,
    decode_transaction,
    is_replacement_fee_enough,
)
from pouw.encoding import encode
from consensus.chainstate import ChainState
from pouw.types import Account, TaskSubmission, Transfer, get_tx_id

ALICE, BOB, CAROL, DAVE, MINER = (make_keypair(n) for n in ("alice", "bob", "carol", "dave", "miner"))
SINK = make_keypair("sink").public_key


@pytest.fixture
def chain() -> MemoryChain:
    return MemoryChain(make_test_params("alice", "bob", "carol"))


def small_chain(amount: int = 10_000, **changes) -> MemoryChain:
    params = make_test_params("alice", "bob", "carol", amount=amount)
    return MemoryChain(dataclasses.replace(params, **changes) if changes else params)


def expect_reject(reason: str, fn, *args, **kwargs) -> MempoolReject:
    with pytest.raises(MempoolReject) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


def check_invariants(pool: TxPool, state: State) -> None:
    """Every account chain is gapless from the on-chain nonce and affordable; totals agree."""
    total_bytes = 0
    count = 0
    tasks = set()
    for sender, chain in pool._chains.items():
        account = state.get_account(sender)
        assert chain, "empty chains are forgotten"
        assert [e.nonce for e in chain] == list(range(account.nonce, account.nonce + len(chain)))
        assert sum(e.cost for e in chain) == pool.get_spent(sender) <= account.balance
        assert len(chain) <= pool.max_per_account
        for e in chain:
            assert pool.get(e.tx_id) is e.tx and get_tx_id(e.tx) == e.tx_id
            total_bytes += e.size
            count += 1
            if isinstance(e.tx, TaskSubmission):
                tasks.add(e.tx_id)
    assert count == len(pool) and total_bytes == pool.bytes_used
    assert count <= pool.max_count and total_bytes <= pool.max_bytes
    assert {t.task_id for t in pool.tasks.ranked()} == tasks


# --- admission ----------------------------------------------------------------


def test_add_returns_id_and_is_found(chain):
    pool = TxPool(chain.params)
    tx = make_transfer(ALICE, BOB.public_key, 5, 0)
    tx_id = pool.add(tx, chain.state())
    assert tx_id == get_tx_id(tx)
    assert tx_id in pool and pool.get(tx_id) == tx and len(pool) == 1
    assert pool.bytes_used == len(encode(tx))
    entry = pool.get_entry(tx_id)
    assert entry.fee_rate == compute_fee_rate(tx.fee, len(encode(tx))) and entry.sender == ALICE.public_key
    assert pool.get(b"\x00" * 32) is None and b"\x00" * 32 not in pool


def test_add_encoded_matches_add(chain):
    pool = TxPool(chain.params)
    tx = make_transfer(ALICE, BOB.public_key, 5, 0)
    assert pool.add_encoded(encode(tx), chain.state()) == get_tx_id(tx)
    assert pool.get(get_tx_id(tx)) == tx
    task = make_task(BOB, (50 + 2) * COIN, 0)
    assert pool.add_encoded(bytearray(encode(task)), chain.state()) == task.task_id


def test_duplicate_is_rejected(chain):
    pool = TxPool(chain.params)
    tx = make_transfer(ALICE, BOB.public_key, 5, 0)
    pool.add(tx, chain.state())
    expect_reject("duplicate", pool.add, tx, chain.state())
    expect_reject("duplicate", pool.add_encoded, encode(tx), chain.state())
    assert len(pool) == 1


def test_bad_signature_is_rejected_and_remembered(chain, monkeypatch):
    pool = TxPool(chain.params)
    good = make_transfer(ALICE, BOB.public_key, 5, 0)
    forged = dataclasses.replace(good, amount=6)  # signature no longer covers the fields
    expect_reject("bad-signature", pool.add, forged, chain.state())
    wrong_key = Transfer(ALICE.public_key, BOB.public_key, 5, 1000, 0).signed_by(BOB)
    expect_reject("bad-signature", pool.add, wrong_key, chain.state())
    assert len(pool) == 0
    # The refusal is remembered: the second attempt does not verify again.
    import mempool.txpool as txpool_module

    def boom(*_):
        raise AssertionError("verified twice")

    monkeypatch.setattr(txpool_module, "is_tx_signature_valid", boom)
    expect_reject("bad-signature", pool.add, forged, chain.state())
    monkeypatch.undo()
    assert pool.add(good, chain.state()) == get_tx_id(good)


def test_nonce_too_low_after_block(chain):
    pool = TxPool(chain.params)
    chain.apply(make_next_block(chain.state(), chain.params, MINER, transactions=(make_transfer(ALICE, SINK, 5, 0),)))
    expect_reject("nonce-too-low", pool.add, make_transfer(ALICE, BOB.public_key, 7, 0), chain.state())
    pool.add(make_transfer(ALICE, BOB.public_key, 7, 1), chain.state())


def test_nonce_chain_must_be_gapless(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    expect_reject("nonce-gap-too-large", pool.add, make_transfer(ALICE, BOB.public_key, 5, 1), state)
    pool.add(make_transfer(ALICE, BOB.public_key, 5, 0), state)
    expect_reject("nonce-gap-too-large", pool.add, make_transfer(ALICE, BOB.public_key, 5, 2), state)
    pool.add(make_transfer(ALICE, BOB.public_key, 5, 1), state)
    pool.add(make_transfer(ALICE, BOB.public_key, 5, 2), state)
    assert [tx.nonce for tx in pool.get_account_txs(ALICE.public_key)] == [0, 1, 2]
    assert pool.get_pending_nonce(ALICE.public_key, state) == 3
    assert pool.get_pending_nonce(BOB.public_key, state) == 0


def test_too_many_pending_per_account(chain):
    pool = TxPool(chain.params, max_per_account=2)
    state = chain.state()
    pool.add(make_transfer(ALICE, BOB.public_key, 5, 0), state)
    pool.add(make_transfer(ALICE, BOB.public_key, 5, 1), state)
    expect_reject("too-many-pending", pool.add, make_transfer(ALICE, BOB.public_key, 5, 2), state)
    pool.add(make_transfer(BOB, ALICE.public_key, 5, 0), state)


def test_balance_counts_pending_spending():
    chain = small_chain(amount=10_000)
    pool = TxPool(chain.params, min_fee_rate=0)
    state = chain.state()
    pool.add(make_transfer(ALICE, BOB.public_key, 6000, 0, fee=1000), state)
    err = expect_reject("insufficient-balance", pool.add, make_transfer(ALICE, BOB.public_key, 3001, 1, fee=1000), state)
    assert "10000" in err.message
    pool.add(make_transfer(ALICE, BOB.public_key, 2000, 1, fee=1000), state)  # exactly the balance
    assert pool.get_spent(ALICE.public_key) == 10_000
    expect_reject("insufficient-balance", pool.add, make_transfer(ALICE, BOB.public_key, 1, 2, fee=0), state)
    check_invariants(pool, state)


def test_incoming_pending_transfers_do_not_fund(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    pool.add(make_transfer(ALICE, DAVE.public_key, 10 * COIN, 0), state)
    expect_reject("insufficient-balance", pool.add, make_transfer(DAVE, BOB.public_key, 1 * COIN, 0), state)


def test_fee_rate_floor(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    cheap = make_transfer(ALICE, BOB.public_key, 5, 0, fee=100)
    assert compute_fee_rate(100, len(encode(cheap))) < DEFAULT_MIN_FEE_RATE
    expect_reject("fee-too-low", pool.add, cheap, state)
    # Exactly at the floor is accepted.
    size = len(encode(make_transfer(ALICE, BOB.public_key, 5, 0, fee=200)))
    at_floor = make_transfer(ALICE, BOB.public_key, 5, 0, fee=-(-DEFAULT_MIN_FEE_RATE * size // 1000))
    assert compute_fee_rate(at_floor.fee, len(encode(at_floor))) >= DEFAULT_MIN_FEE_RATE
    pool.add(at_floor, state)
    free_pool = TxPool(chain.params, min_fee_rate=0)
    free_pool.add(make_transfer(ALICE, BOB.public_key, 5, 0, fee=0), state)


def test_fee_rate_formula():
    assert compute_fee_rate(1000, 142) == 7042
    assert compute_fee_rate(0, 100) == 0
    assert compute_fee_rate(1, 1001) == 0


def test_zero_amount_and_low_reward_rejected(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    expect_reject("zero-amount", pool.add, make_transfer(ALICE, BOB.public_key, 0, 0), state)
    expect_reject("reward-too-low", pool.add, make_task(ALICE, chain.params.min_task_reward - 1, 0), state)


def test_other_consensus_rules_reject_as_invalid(chain):
    pool = TxPool(chain.params)
    task = make_task(ALICE, (50 + 2) * COIN, 0)
    same_blobs = dataclasses.replace(task, test_blob=task.train_blob).signed_by(ALICE)
    err = expect_reject("invalid", pool.add, same_blobs, chain.state())
    assert "same" in err.message


# --- replacement ----------------------------------------------------------------


def test_replacement_needs_ten_percent_and_higher_fee(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    old = make_transfer(ALICE, BOB.public_key, 5, 0, fee=10_000)
    pool.add(old, state)
    too_little = make_transfer(ALICE, BOB.public_key, 5, 0, fee=10_999)  # +9.99%
    assert len(encode(too_little)) == len(encode(old))
    expect_reject("replacement-fee-too-low", pool.add, too_little, state)
    enough = make_transfer(ALICE, BOB.public_key, 5, 0, fee=11_000)  # +10% exactly
    pool.add(enough, state)
    assert get_tx_id(old) not in pool and get_tx_id(enough) in pool and len(pool) == 1
    assert pool.bytes_used == len(encode(enough))
    check_invariants(pool, state)


def test_replacement_fee_rule():
    assert is_replacement_fee_enough(1000, 100, 1100, 100)
    assert not is_replacement_fee_enough(1000, 100, 1099, 100)
    assert is_replacement_fee_enough(1000, 100, 2200, 200)
    assert not is_replacement_fee_enough(1000, 100, 2199, 200)  # bigger, so it must pay per byte
    assert not is_replacement_fee_enough(1000, 200, 1000, 100)  # the absolute fee must rise too


def test_replacement_with_same_fee_but_higher_rate_is_refused(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    long = make_task(ALICE, (50 + 2) * COIN, 0, "x" * 190, fee=5000)
    short = make_task(ALICE, (50 + 2) * COIN, 0, "x", fee=5000)
    pool.add(long, state)
    assert len(encode(long)) * 10 > len(encode(short)) * 11  # far more than 10% cheaper per byte
    expect_reject("replacement-fee-too-low", pool.add, short, state)


def test_replacement_in_middle_keeps_descendants_and_rechecks_balance():
    chain = small_chain(amount=10_000)
    pool = TxPool(chain.params, min_fee_rate=0)
    state = chain.state()
    a0 = make_transfer(ALICE, BOB.public_key, 1000, 0, fee=100)
    a1 = make_transfer(ALICE, BOB.public_key, 1000, 1, fee=100)
    a2 = make_transfer(ALICE, BOB.public_key, 7000, 2, fee=100)
    for tx in (a0, a1, a2):
        pool.add(tx, state)
    # The replacement would overspend once the later nonces are counted.
    expect_reject("insufficient-balance", pool.add, make_transfer(ALICE, BOB.public_key, 2000, 1, fee=200), state)
    r1 = make_transfer(ALICE, BOB.public_key, 1500, 1, fee=200)
    pool.add(r1, state)
    assert pool.get_account_txs(ALICE.public_key) == [a0, r1, a2]
    check_invariants(pool, state)


def test_task_replaced_by_transfer_leaves_task_pool(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    task = make_task(ALICE, (50 + 2) * COIN, 0, fee=2000)
    pool.add(task, state)
    assert task.task_id in pool.tasks
    pool.add(make_transfer(ALICE, BOB.public_key, 5, 0, fee=10_000), state)
    assert task.task_id not in pool.tasks and len(pool.tasks) == 0


# --- limits and eviction -----------------------------------------------------------


def test_full_pool_evicts_lowest_fee_rate():
    params = make_test_params("alice", "bob", "carol", "dave")
    state = MemoryChain(params).state()
    pool = TxPool(params, max_count=3)
    low = make_transfer(ALICE, SINK, 5, 0, fee=1000)
    mid = make_transfer(BOB, SINK, 5, 0, fee=2000)
    high = make_transfer(CAROL, SINK, 5, 0, fee=3000)
    for tx in (low, mid, high):
        pool.add(tx, state)
    rich = make_transfer(DAVE, SINK, 5, 0, fee=5000)
    pool.add(rich, state)
    assert get_tx_id(low) not in pool and get_tx_id(rich) in pool and len(pool) == 3
    # A newcomer below the cheapest remaining tail is refused and changes nothing.
    before = {e.tx_id for e in pool.iter_entries()}
    err = expect_reject("pool-full", pool.add, make_transfer(ALICE, SINK, 5, 0, fee=1500), state)
    assert "fee rate" in err.message
    # Equal fee rate does not evict either: the newcomer must pay strictly more.
    expect_reject("pool-full", pool.add, make_transfer(ALICE, SINK, 5, 0, fee=2000), state)
    assert {e.tx_id for e in pool.iter_entries()} == before
    check_invariants(pool, state)


def test_child_may_evict_others_but_never_its_parent():
    params = make_test_params("alice", "bob", "carol")
    state = MemoryChain(params).state()
    pool = TxPool(params, max_count=3)
    a0 = make_transfer(ALICE, SINK, 5, 0, fee=1000)
    b0 = make_transfer(BOB, SINK, 5, 0, fee=2000)
    c0 = make_transfer(CAROL, SINK, 5, 0, fee=3000)
    for tx in (a0, b0, c0):
        pool.add(tx, state)
    # Appending makes a0 a non-tail, so the cheapest evictable tail is b0.
    a1 = make_transfer(ALICE, SINK, 5, 1, fee=5000)
    pool.add(a1, state)
    assert pool.get_account_txs(ALICE.public_key) == [a0, a1] and get_tx_id(b0) not in pool
    # A child paying less than every other tail would have to evict itself: refused.
    expect_reject("pool-full", pool.add, make_transfer(CAROL, SINK, 5, 1, fee=1500), state)
    check_invariants(pool, state)


def test_eviction_takes_tails_and_never_leaves_a_gap():
    params = make_test_params("alice", "bob", "carol", "dave")
    state = MemoryChain(params).state()
    pool = TxPool(params, max_count=3)
    a0 = make_transfer(ALICE, SINK, 5, 0, fee=1000)  # the cheapest, but its child protects it
    a1 = make_transfer(ALICE, SINK, 5, 1, fee=9000)
    b0 = make_transfer(BOB, SINK, 5, 0, fee=2000)
    for tx in (a0, a1, b0):
        pool.add(tx, state)
    pool.add(make_transfer(CAROL, SINK, 5, 0, fee=3000), state)
    assert get_tx_id(b0) not in pool and get_tx_id(a0) in pool and get_tx_id(a1) in pool
    check_invariants(pool, state)
    # Now the cheapest tail is carol (3000) and then a1 (9000): a newcomer at 4000 evicts carol only.
    pool.add(make_transfer(DAVE, SINK, 5, 0, fee=4000), state)
    assert [tx.nonce for tx in pool.get_account_txs(ALICE.public_key)] == [0, 1]
    assert pool.get_account_txs(CAROL.public_key) == []
    check_invariants(pool, state)


def test_eviction_by_bytes_may_take_several():
    params = make_test_params("alice", "bob", "carol", "dave")
    state = MemoryChain(params).state()
    size = len(encode(make_transfer(ALICE, SINK, 5, 0, fee=1000)))
    task = make_task(DAVE, (50 + 2) * COIN, 0, "big" * 60, fee=60_000)
    # Room for three transfers, or the task and one transfer: the task must evict two.
    pool = TxPool(params, max_bytes=max(3 * size, len(encode(task)) + size) + 2)
    assert len(encode(task)) > size
    for key, fee in ((ALICE, 1000), (BOB, 1100), (CAROL, 5000)):
        pool.add(make_transfer(key, SINK, 5, 0, fee=fee), state)
    pool.add(task, state)
    assert task.task_id in pool and task.task_id in pool.tasks
    assert pool.bytes_used <= pool.max_bytes
    assert pool.get_account_txs(ALICE.public_key) == [] and pool.get_account_txs(BOB.public_key) == []
    check_invariants(pool, state)


def test_refused_replacement_in_full_pool_restores_the_old(chain):
    state = chain.state()
    a0 = make_transfer(ALICE, SINK, 5, 0, fee=1000)
    b0 = make_transfer(BOB, SINK, 5, 0, fee=100_000)
    pool = TxPool(chain.params, max_bytes=len(encode(a0)) + len(encode(b0)) + 1)
    pool.add(a0, state)
    pool.add(b0, state)
    # A bigger replacement pushes the pool over its bytes; the only cheaper tail is itself.
    bigger = make_transfer(ALICE, SINK, 2**40, 0, fee=1200)
    assert len(encode(bigger)) > len(encode(a0))
    expect_reject("pool-full", pool.add, bigger, state)
    assert pool.get_account_txs(ALICE.public_key) == [a0] and get_tx_id(b0) in pool
    check_invariants(pool, state)


# --- blocks ----------------------------------------------------------------------


def test_select_for_block_orders_by_fee_rate_and_nonce(chain):
    pool = TxPool(chain.params)
    state = chain.state()
    a0 = make_transfer(ALICE, SINK, 5, 0, fee=1000)
    a1 = make_transfer(ALICE, SINK, 5, 1, fee=50_000)
    b0 = make_transfer(BOB, SINK, 5, 0, fee=3000)
    c0 = make_transfer(CAROL, SINK, 5, 0, fee=2000)
    for tx in (a0, a1, b0, c0):
        pool.add(tx, state)
    chosen = pool.select_for_block(state)
    assert chosen == [b0, c0, a0, a1]
    assert pool.select_for_block(state, max_count=2) == [b0, c0]
    size = len(encode(a0))
    assert pool.select_for_block(state, max_bytes=3 * size) == [b0, c0, a0]
    # The selection is a valid block body.
    block = make_next_block(state, chain.params, MINER, transactions=tuple(chosen))
    apply_block(chain.state(), block, chain.params)


def test_select_for_block_skips_what_no_longer_applies():
    chain = small_chain(amount=1_000 * COIN, max_unselected_tasks=1)
    p = chain.params
    pool = TxPool(p)
    state = chain.state()
    t1 = make_task(ALICE, (50 + 2) * COIN, 0, "one", fee=9000)
    t2 = make_task(BOB, (50 + 3) * COIN, 0, "two", fee=8000)
    after = make_transfer(BOB, SINK, 5, 1, fee=50_000)
    c0 = make_transfer(CAROL, SINK, 5, 0, fee=1000)
    for tx in (t1, t2, after, c0):
        pool.add(tx, state)
    chosen = pool.select_for_block(state)
    # Only one task fits the queue; bob's task fails, so his later nonce cannot follow.
    assert chosen == [t1, c0]
    chain.apply(make_next_block(state, p, MINER, transactions=tuple(chosen)))


def test_remove_for_block_drops_included_and_invalidated():
    chain = small_chain(amount=10_000)
    p = chain.params
    pool = TxPool(p, min_fee_rate=0)
    state = chain.state()
    a0 = make_transfer(ALICE, SINK, 1000, 0, fee=100)
    a1 = make_transfer(ALICE, SINK, 1000, 1, fee=100)
    b0 = make_transfer(BOB, SINK, 1000, 0, fee=100)
    b1 = make_transfer(BOB, SINK, 1000, 1, fee=100)
    c0 = make_transfer(CAROL, SINK, 1000, 0, fee=100)
    for tx in (a0, a1, b0, b1, c0):
        pool.add(tx, state)
    # The block has a0, and a conflicting bob nonce 0 that spends nearly everything.
    b0_other = make_transfer(BOB, SINK, 9000, 0, fee=100)
    block = make_next_block(state, p, MINER, transactions=(a0, b0_other))
    chain.apply(block)
    removed = pool.remove_for_block(block, chain.state())
    assert set(removed) == {get_tx_id(a0), get_tx_id(b0), get_tx_id(b1)}
    assert pool.get_account_txs(ALICE.public_key) == [a1]
    assert pool.get_account_txs(BOB.public_key) == []
    assert pool.get_account_txs(CAROL.public_key) == [c0]
    check_invariants(pool, chain.state())


def test_task_confirmed_leaves_task_pool(chain):
    p = chain.params
    pool = TxPool(p)
    task = make_task(ALICE, (50 + 2) * COIN, 0)
    pool.add(task, chain.state())
    assert pool.tasks.peek() == task
    block = make_next_block(chain.state(), p, MINER, transactions=tuple(pool.select_for_block(chain.state())))
    chain.apply(block)
    pool.remove_for_block(block, chain.state())
    assert len(pool) == 0 and len(pool.tasks) == 0


def test_stale_pool_resyncs_on_add(chain):
    """A pool that missed a block still admits correctly against the state it is given."""
    p = chain.params
    pool = TxPool(p)
    a0 = make_transfer(ALICE, SINK, 5, 0)
    pool.add(a0, chain.state())
    chain.apply(make_next_block(chain.state(), p, MINER, transactions=(a0,)))
    pool.add(make_transfer(ALICE, SINK, 5, 1), chain.state())
    assert [tx.nonce for tx in pool.get_account_txs(ALICE.public_key)] == [1]
    check_invariants(pool, chain.state())


def test_reorg_readds_disconnected_transactions(tmp_path):
    params = make_test_params("alice", "bob")
    pool = TxPool(params)
    with ChainState.open(tmp_path / "chain", params) as store:
        a0 = make_transfer(ALICE, SINK, 5, 0)
        a1 = make_transfer(ALICE, SINK, 5, 1)
        fund = make_transfer(BOB, DAVE.public_key, 10 * COIN, 0)
        for tx in (a0, a1, fund):
            pool.add(tx, store.state())
        block = make_next_block(store.state(), params, MINER, transactions=(a0, fund))
        store.store_valid_block(block, store.get_index(block.header.prev_hash))
        store.connect_block(block)
        assert set(pool.remove_for_block(block, store.state())) == {get_tx_id(a0), get_tx_id(fund)}
        a2 = make_transfer(ALICE, SINK, 5, 2)
        d0 = make_transfer(DAVE, SINK, 1 * COIN, 0)  # spends coins the block gave dave
        pool.add(a2, store.state())
        pool.add(d0, store.state())
        check_invariants(pool, store.state())

        disconnected = store.disconnect_tip()
        assert disconnected.hash == block.hash
        readded = pool.readd_for_disconnect(disconnected, store.state())
        assert set(readded) == {get_tx_id(a0), get_tx_id(fund)}
        assert pool.get_account_txs(ALICE.public_key) == [a0, a1, a2]
        assert get_tx_id(d0) not in pool, "dave's funding went away with the block"
        check_invariants(pool, store.state())
        # The pool can fill the replacement block.
        chosen = pool.select_for_block(store.state())
        assert set(map(get_tx_id, chosen)) == {get_tx_id(t) for t in (a0, a1, a2, fund)}
        again = make_next_block(store.state(), params, MINER, transactions=tuple(chosen), salt=b"2")
        store.store_valid_block(again, store.get_index(again.header.prev_hash))
        store.connect_block(again)
        pool.remove_for_block(again, store.state())
        assert len(pool) == 0


def test_revalidate_drops_everything_a_state_no_longer_covers():
    chain = small_chain(amount=10_000)
    pool = TxPool(chain.params, min_fee_rate=0)
    state = chain.state()
    pool.add(make_transfer(ALICE, SINK, 5000, 0, fee=0), state)
    pool.add(make_transfer(ALICE, SINK, 4000, 1, fee=0), state)
    poorer = State.from_mapping(dict(chain.data))
    poorer.set_account(ALICE.public_key, Account(6000, 0))
    removed = pool.revalidate(poorer)
    assert len(removed) == 1 and [tx.nonce for tx in pool.get_account_txs(ALICE.public_key)] == [0]


# --- batches, malformed input ------------------------------------------------------


def test_add_many_with_threads_matches_sequential(chain):
    state = chain.state()
    txs = [make_transfer(key, SINK, 5, n, fee=1000 + n) for n in range(5) for key in (ALICE, BOB, CAROL)]
    txs.append(dataclasses.replace(make_transfer(CAROL, SINK, 5, 5), amount=99))  # forged
    txs.append(txs[1])  # duplicate
    txs.append(make_transfer(ALICE, SINK, 5, 9))  # gap
    txs.append("not a transaction")
    sequential = TxPool(chain.params)
    expected = []
    for tx in txs:
        try:
            expected.append(sequential.add(tx, state))
        except MempoolReject as exc:
            expected.append(exc.reason)
    threaded = TxPool(chain.params)
    with ThreadPoolExecutor(2) as executor:
        got = threaded.add_many(txs, state, executor)
    assert [r.reason if isinstance(r, MempoolReject) else r for r in got] == expected
    assert expected[-4:] == ["bad-signature", "duplicate", "nonce-gap-too-large", "malformed"]
    no_threads = TxPool(chain.params).add_many(txs, state)
    assert [r.reason if isinstance(r, MempoolReject) else r for r in no_threads] == expected


@pytest.mark.parametrize(
    "thing",
    [
        None,
        42,
        b"\x92\x01",
        "transfer",
        Transfer(b"short", BOB.public_key, 5, 1000, 0),
        Transfer(ALICE.public_key, BOB.public_key, -5, 1000, 0),
        Transfer(ALICE.public_key, BOB.public_key, 2**64, 1000, 0),
        Transfer(ALICE.public_key, BOB.public_key, True, 1000, 0),
        Transfer(ALICE.public_key, BOB.public_key, 5, 1000, 0, signature="x" * 64),
        dataclasses.replace(make_task(ALICE, (50 + 2) * COIN, 0), title=7),
        dataclasses.replace(make_task(ALICE, (50 + 2) * COIN, 0), model="unet"),
    ],
)
def test_malformed_objects_are_rejected(chain, thing):
    expect_reject("malformed", TxPool(chain.params).add, thing, chain.state())


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x92\x01\x96", b"\x92\x03\x90", encode(make_transfer(ALICE, BOB.public_key, 5, 0)) + b"\x00", "text", None],
)
def test_malformed_bytes_are_rejected(chain, data):
    expect_reject("malformed", TxPool(chain.params).add_encoded, data, chain.state())


def test_non_canonical_encoding_is_rejected(chain):
    good = encode(make_transfer(ALICE, BOB.public_key, 5, 0))
    # amount 5 re-encoded as uint8 (0xcc 0x05) instead of a fixint.
    at = good.index(b"\x05\xcd")
    bad = good[:at] + b"\xcc\x05" + good[at + 1 :]
    expect_reject("malformed", TxPool(chain.params).add_encoded, bad, chain.state())


def test_fast_paths_agree_with_the_codec():
    tx = make_transfer(ALICE, BOB.public_key, 123_456_789, 7, fee=2**40)
    data = encode(tx)
    assert decode_transaction(data, 1 << 20) == tx
    assert compute_signing_payload(tx, data) == tx.signing_payload()
    task = make_task(ALICE, (50 + 2) * COIN, 0)
    assert compute_signing_payload(task, encode(task)) == task.signing_payload()


def test_reject_reasons_are_known():
    with pytest.raises(ValueError):
        MempoolReject("made-up")
    assert len(set(REASONS)) == len(REASONS)
    assert str(MempoolReject("duplicate", "x")) == "duplicate: x"


def test_bad_limits_are_refused(chain):
    with pytest.raises(ValueError):
        TxPool(chain.params, max_count=0)
