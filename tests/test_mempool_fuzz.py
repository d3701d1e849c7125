"""Property tests: garbage never crashes a pool, and the tx pool's invariants survive any sequence of events."""

from __future__ import annotations

import dataclasses

from chainutil import MemoryChain
from hypothesis import given, settings, strategies as st
from test_mempool import check_invariants

from consensus.assemble import make_commit
from consensus.clock import get_phase2_start, get_slot_start
from consensus.fixtures import make_checkpoint_refs, make_keypair, make_next_block, make_task, make_test_params, make_transfer
from consensus.genesis import COIN
from consensus.transition import apply_block
from mempool.claimpool import ClaimPool
from mempool.commitpool import CommitPool
from mempool.errors import MempoolReject
from mempool.txpool import TxPool, decode_transaction
from pouw.encoding import DecodeError, decode, encode
from pouw.types import Claim, Transaction, Transfer, get_tx_id

NAMES = ("alice", "bob", "carol", "dave")
KEYS = [make_keypair(n) for n in NAMES]
MINER = make_keypair("miner")
SINK = make_keypair("sink").public_key
PARAMS = make_test_params(*NAMES, amount=20_000)
BASE = MemoryChain(PARAMS)

VALID_TX = [
    encode(make_transfer(KEYS[0], SINK, 5, 0)),
    encode(make_transfer(KEYS[1], SINK, 2**33, 0, fee=2**20)),
    encode(make_task(KEYS[2], 1 * COIN, 0, "fuzz")),
]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        elif op == "delete":
            del data[at]
        elif op == "truncate":
            del data[at:]
        else:
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0x92, 0xC0, 0xC4, 0xCC, 0xCF, 0xD0, 0xDC, 0xFF]))
    return bytes(data)


wire = st.one_of(st.binary(max_size=300), mutated(VALID_TX))


@given(wire)
def test_garbage_bytes_are_accepted_or_rejected_with_a_reason(data):
    pool = TxPool(PARAMS, min_fee_rate=0)
    try:
        tx_id = pool.add_encoded(data, BASE.state())
    except MempoolReject as exc:
        assert exc.reason
    else:
        assert tx_id in pool
    # The other route: the codec, then add.
    try:
        tx = decode(Transaction, data)
    except DecodeError:
        return
    try:
        TxPool(PARAMS, min_fee_rate=0).add(tx, BASE.state())
    except MempoolReject as exc:
        assert exc.reason


@given(wire)
def test_fast_transfer_decoder_agrees_with_the_codec(data):
    try:
        expected = decode(Transaction, data)
    except DecodeError:
        expected = None
    try:
        got = decode_transaction(data, 1 << 20)
    except DecodeError:
        got = None
    assert got == expected


anything = st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=5), st.binary(max_size=70), st.floats())


@given(
    st.one_of(
        anything,
        st.builds(Transfer, anything, anything, anything, anything, anything, anything),
        st.builds(
            Transfer,
            st.just(KEYS[0].public_key),
            st.binary(min_size=32, max_size=32),
            st.integers(-5, 2**65),
            st.integers(-5, 2**65),
            st.integers(-1, 3),
            st.binary(min_size=64, max_size=64),
        ),
    )
)
def test_random_objects_never_crash_add(thing):
    try:
        TxPool(PARAMS, min_fee_rate=0).add(thing, BASE.state())
    except MempoolReject as exc:
        assert exc.reason


G = PARAMS.genesis_time
TASK = BASE.state().get_status().scheduled[0].task_id
VALID_COMMIT = encode(make_commit(MINER, 1, 0, TASK, bytes(32), make_checkpoint_refs(bytes(32))))
CANDIDATE = make_next_block(BASE.state(), PARAMS, MINER)
VALID_CLAIM = encode(Claim(CANDIDATE))


@given(st.one_of(st.binary(max_size=200), mutated([VALID_COMMIT])), st.floats(G - 100, G + 100))
def test_commit_pool_garbage(data, now):
    pool = CommitPool(PARAMS)
    try:
        pool.add_encoded(data, now=now, tip_height=0, expected_task_id=TASK)
    except MempoolReject as exc:
        assert exc.reason


@given(st.one_of(st.binary(max_size=200), mutated([VALID_CLAIM])))
def test_claim_pool_garbage(data):
    commits = CommitPool(PARAMS)
    commits.add(CANDIDATE.body.commit, now=get_slot_start(PARAMS, 0) + 1, tip_height=0, expected_task_id=TASK)
    pool = ClaimPool(PARAMS, commits)
    try:
        pool.add_encoded(data, now=get_phase2_start(PARAMS, 0) + 1)
    except MempoolReject as exc:
        assert exc.reason


# --- the tx pool under random events ----------------------------------------------------

tx_event = st.tuples(
    st.just("tx"),
    st.integers(0, len(KEYS) - 1),  # sender
    st.sampled_from([-2, -1, -1, 0, 0, 0, 1]),  # nonce offset from the next pending nonce (<0: replace)
    st.sampled_from([0, 500, 1000, 1500, 4000, 9000]),  # fee
    st.sampled_from([1, 100, 3000, 9000, 15000]),  # amount (balances are 20,000)
)
event = st.one_of(tx_event, tx_event, tx_event, tx_event, st.tuples(st.just("mine")), st.tuples(st.just("undo")))


@settings(max_examples=80)
@given(st.lists(event, min_size=1, max_size=30), st.integers(2, 6), st.integers(1, 3))
def test_pool_invariants_hold_through_random_events(events, max_count, per_account):
    chain = MemoryChain(PARAMS)
    pool = TxPool(PARAMS, max_count=max_count, max_bytes=max_count * 142 - 100, max_per_account=per_account, min_fee_rate=0)
    history = []  # (data before, block)
    for ev in events:
        state = chain.state()
        if ev[0] == "tx":
            _, who, offset, fee, amount = ev
            key = KEYS[who]
            nonce = max(0, pool.get_pending_nonce(key.public_key, state) + offset)
            tx = make_transfer(key, SINK, amount, nonce, fee=fee)
            try:
                pool.add(tx, state)
            except MempoolReject:
                pass
        elif ev[0] == "mine":
            chosen = pool.select_for_block(state)
            block = make_next_block(state, PARAMS, MINER, transactions=tuple(chosen), slot=len(history) + state.get_status().min_slot)
            before = dict(chain.data)
            chain.apply(block)
            history.append((before, block))
            removed = pool.remove_for_block(block, chain.state())
            assert {get_tx_id(t) for t in chosen} <= set(removed)
        elif history:
            before, block = history.pop()
            chain.data = before
            pool.readd_for_disconnect(block, chain.state())
        check_invariants(pool, chain.state())
    chosen = pool.select_for_block(chain.state())
    assert len(chosen) == len(pool)  # a consistent pool is minable in full
    apply_block(chain.state(), make_next_block(chain.state(), PARAMS, MINER, transactions=tuple(chosen)), PARAMS)


def test_random_events_example_with_replacements():
    """A fixed run through the same machinery (replacement after a block and a reorg)."""
    chain = MemoryChain(PARAMS)
    pool = TxPool(PARAMS, min_fee_rate=0)
    a = KEYS[0]
    pool.add(make_transfer(a, SINK, 100, 0, fee=100), chain.state())
    block = make_next_block(chain.state(), PARAMS, MINER, transactions=tuple(pool.select_for_block(chain.state())))
    before = dict(chain.data)
    chain.apply(block)
    pool.remove_for_block(block, chain.state())
    assert len(pool) == 0
    chain.data = before
    pool.readd_for_disconnect(block, chain.state())
    replacement = make_transfer(a, SINK, 100, 0, fee=200)
    pool.add(replacement, chain.state())
    assert pool.get_account_txs(a.public_key) == [replacement]
    check_invariants(pool, chain.state())


def test_seeded_simulation_reaches_every_pool_rule():
    """A long seeded run mixing transfers, tasks, blocks and reorgs; every rule must fire, invariants always hold."""
    import collections
    import random

    params = make_test_params(*NAMES, amount=30 * COIN)
    chain = MemoryChain(params)
    pool = TxPool(params, max_count=8, max_bytes=1800, max_per_account=3, min_fee_rate=1000)
    rng = random.Random(1234)
    reasons: collections.Counter = collections.Counter()
    history = []
    labels: dict[bytes, str] = {}
    evicted = 0
    for step in range(500):
        state = chain.state()
        roll = rng.random()
        if roll < 0.85:
            key = rng.choice(KEYS)
            nonce = max(0, pool.get_pending_nonce(key.public_key, state) + rng.choice([-2, -1, 0, 0, 0, 1]))
            fee = rng.choice([100, 300, 1000, 2000, 5000, 20_000, 80_000])
            if rng.random() < 0.2:
                label = f"sim{step}" * rng.randint(1, 20)
                tx = make_task(key, (50 + 1) * COIN, nonce, label, fee=fee * 4)
                labels[tx.task_id] = label
            else:
                tx = make_transfer(key, SINK, rng.choice([1, COIN // 2, 2 * COIN, 12 * COIN]), nonce, fee=fee)
            if rng.random() < 0.08:
                tx = dataclasses.replace(tx, fee=tx.fee + 1)  # the signature no longer covers it
            before_ids = {e.tx_id for e in pool.iter_entries()}
            replaced = {e.tx_id for e in pool.iter_entries() if e.sender == key.public_key and e.nonce == tx.nonce}
            try:
                pool.add(tx, state)
                reasons["accepted"] += 1
                evicted += len(before_ids - replaced - {e.tx_id for e in pool.iter_entries()})
            except MempoolReject as exc:
                reasons[exc.reason] += 1
                assert {e.tx_id for e in pool.iter_entries()} == before_ids, "a refusal changes nothing"
        elif roll < 0.95 or not history:
            chosen = pool.select_for_block(state)
            block = make_next_block(state, params, MINER, transactions=tuple(chosen), task_labels=labels)
            before = dict(chain.data)
            chain.apply(block)
            history.append((before, block))
            pool.remove_for_block(block, chain.state())
            reasons["block"] += 1
        else:
            before, block = history.pop()
            chain.data = before
            pool.readd_for_disconnect(block, chain.state())
            reasons["reorg"] += 1
        check_invariants(pool, chain.state())
    for reason in (
        "accepted",
        "block",
        "reorg",
        "pool-full",
        "fee-too-low",
        "insufficient-balance",
        "replacement-fee-too-low",
        "nonce-gap-too-large",
        "nonce-too-low",
        "too-many-pending",
        "bad-signature",
    ):
        assert reasons[reason] > 0, (reason, reasons)
    assert evicted > 0, reasons
