"""The task pool: pending submissions as a max-heap in consensus's queue order, and `pouw task list` rows."""

from __future__ import annotations

import pytest
from chainutil import MemoryChain
from hypothesis import given, strategies as st

from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params
from consensus.genesis import COIN
from consensus.rules import TASK_PENDING, TASK_SCHEDULED, TASK_WAITING, compute_insert_queue
from mempool.errors import MempoolReject
from mempool.taskpool import TaskPool, compute_task_listing
from mempool.txpool import TxPool
from pouw.types import QueueEntry

ALICE, BOB, CAROL, MINER = (make_keypair(n) for n in ("alice", "bob", "carol", "miner"))


def test_max_heap_by_reward():
    pool = TaskPool()
    tasks = [make_task(ALICE, r * COIN, 0, f"t{r}") for r in (3, 7, 5)]
    for t in tasks:
        pool.add(t)
    assert pool.peek().reward == 7 * COIN
    assert [t.reward for t in pool.ranked()] == [7 * COIN, 5 * COIN, 3 * COIN]
    assert pool.pop().reward == 7 * COIN and len(pool) == 2
    assert pool.pop().reward == 5 * COIN
    assert pool.pop().reward == 3 * COIN
    assert pool.pop() is None and pool.peek() is None


def test_equal_rewards_break_ties_by_lower_task_id_like_consensus():
    pool = TaskPool()
    tasks = [make_task(ALICE, (50 + 2) * COIN, 0, f"tie{i}") for i in range(6)]
    for t in tasks:
        pool.add(t)
    order = [t.task_id for t in pool.ranked()]
    assert order == sorted(t.task_id for t in tasks)
    queue: tuple[QueueEntry, ...] = ()
    for t in tasks:
        queue = compute_insert_queue(queue, QueueEntry(t.reward, t.task_id))
    assert order == [q.task_id for q in queue]


def test_remove_and_duplicates():
    pool = TaskPool()
    a, b = make_task(ALICE, (50 + 2) * COIN, 0, "a"), make_task(BOB, (50 + 9) * COIN, 0, "b")
    pool.add(a)
    pool.add(b)
    with pytest.raises(MempoolReject) as info:
        pool.add(a)
    assert info.value.reason == "duplicate"
    assert pool.remove(b.task_id) == b
    assert pool.remove(b.task_id) is None
    assert b.task_id not in pool and a.task_id in pool and pool.get(a.task_id) == a
    assert pool.peek() == a  # the removed best is skipped
    with pytest.raises(MempoolReject) as info:
        pool.add("task")
    assert info.value.reason == "malformed"


@given(st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=40))
def test_heap_matches_sorted_order_under_removals(ops):
    pool = TaskPool()
    live = {}
    for i, (reward, remove_one) in enumerate(ops):
        t = make_task(ALICE, (50 + reward) * COIN, 0, f"p{i}")
        pool.add(t)
        live[t.task_id] = t
        if remove_one and live:
            victim = sorted(live)[len(live) // 2]
            pool.remove(victim)
            del live[victim]
    expected = sorted(live.values(), key=lambda t: (-t.reward, t.task_id))
    assert pool.ranked() == expected
    assert pool.peek() == (expected[0] if expected else None)
    popped = []
    while (t := pool.pop()) is not None:
        popped.append(t)
    assert popped == expected


def test_listing_merges_chain_queue_with_pending():
    params = make_test_params("alice", "bob", "carol")
    chain = MemoryChain(params)
    t9, t5 = make_task(ALICE, (50 + 9) * COIN, 0, "nine"), make_task(BOB, (50 + 5) * COIN, 0, "five")
    # Block 1 confirms both; once mature the best is scheduled (for height 2 + M + 1), the other waits in the queue.
    chain.apply(make_next_block(chain.state(), params, MINER, transactions=(t9, t5)))
    for _ in range(params.task_maturity_blocks):
        chain.apply(make_next_block(chain.state(), params, MINER))
    tip = chain.state().get_status().height
    pool = TxPool(params)
    t7 = make_task(CAROL, (50 + 7) * COIN, 0, "seven")
    t3 = make_task(ALICE, (50 + 3) * COIN, 1, "three")
    pool.add(t7, chain.state())
    pool.add(t3, chain.state())
    rows = compute_task_listing(chain.state(), pool.tasks, params)
    assert [(r.status, r.height) for r in rows[:2]] == [(TASK_SCHEDULED, tip + 1), (TASK_SCHEDULED, tip + 2)]
    assert rows[0].task_id == params.standing_task.task_id and rows[0].title == "standing task"
    assert rows[1].task_id == t9.task_id and rows[1].reward == 59 * COIN and rows[1].title == "test task nine"
    assert [(r.task_id, r.status) for r in rows[2:]] == [
        (t7.task_id, TASK_PENDING),
        (t5.task_id, TASK_WAITING),
        (t3.task_id, TASK_PENDING),
    ]
