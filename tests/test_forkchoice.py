"""Fork choice: most useful high-accuracy models wins, like with like; deterministic and independent of arrival order."""

from __future__ import annotations

import dataclasses
import random

from chainutil import MemoryChain, submit, with_deep_finality
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params
from consensus.genesis import COIN
from consensus.rules import compute_tie_value, get_scheduled_task_id
from consensus.forkchoice import ChainScore, compute_child_score, compute_confirmations, is_better
from consensus.state import State, apply_changes
from consensus.transition import apply_block
from consensus.chainstate import ChainState

# Within the finality window the choice is a pure function of the blocks; the tree tests stay inside it.
PARAMS = with_deep_finality(make_test_params("alice"))
DEVNET = make_test_params("alice")
MINERS = [make_keypair(f"m{i}") for i in range(3)]
ALICE = make_keypair("alice")

tree_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=1000), st.sampled_from([100_000, 500_000, 800_000, 950_000]), st.integers(0, 2)),
    min_size=1,
    max_size=9,
)


def build_tree(spec) -> list:
    """Blocks of a random tree: node i hangs under an earlier node (or genesis)."""
    genesis = MemoryChain(PARAMS)
    datas = [dict(genesis.data)]
    blocks = [None]
    parents = [None]
    for i, (parent_pick, dice, slot_skip) in enumerate(spec):
        parent = parent_pick % len(datas)
        data = dict(datas[parent])
        state = State.from_mapping(data)
        slot = state.get_status().min_slot + slot_skip
        block = make_next_block(state, PARAMS, MINERS[i % 3], dice_ppm=dice, slot=slot, salt=bytes([i]))
        st_ = State.from_mapping(data)
        apply_block(st_, block, PARAMS)
        apply_changes(data, st_.changes())
        datas.append(data)
        blocks.append(block)
        parents.append(parent)
    return blocks[1:], parents[1:]


def topological_orders(parents, rng, count):
    orders = []
    for _ in range(count):
        placed, order, pending = {0}, [], list(range(1, len(parents) + 1))
        while pending:
            ready = [n for n in pending if parents[n - 1] in placed]
            n = rng.choice(ready)
            pending.remove(n)
            placed.add(n)
            order.append(n - 1)
        orders.append(order)
    return orders


@settings(max_examples=15)
@given(spec=tree_strategy, seed=st.integers(0, 1000))
def test_arrival_order_does_not_change_the_choice(tmp_path_factory, spec, seed):
    blocks, parents = build_tree(spec)
    tips = set()
    for order in topological_orders(parents, random.Random(seed), 3):
        path = tmp_path_factory.mktemp("fc")
        with ChainState.open(path / "db", PARAMS) as store:
            for i in order:
                submit(store, blocks[i])
            tips.add(store.tip_hash)
            best_score = store.get_index(store.tip_hash).score
            for block_hash, index in store.iter_index():
                assert not is_better(index.score, best_score)
    assert len(tips) == 1


score_strategy = st.builds(
    ChainScore,
    hi_count=st.integers(0, 10**6),
    duty_count=st.integers(0, 2 * 10**6),
    dice_sum=st.integers(0, 10**12),
    height=st.integers(0, 10**6),
    tie_value=st.binary(min_size=32, max_size=32),
    tip_hash=st.binary(min_size=32, max_size=32),
)


@given(parent=score_strategy, dice=st.integers(0, 1_000_000))
def test_an_extension_always_beats_its_prefix(parent, dice):
    chain = MemoryChain(PARAMS)
    block = make_next_block(chain.state(), PARAMS, MINERS[0], dice_ppm=dice)
    parent = dataclasses.replace(parent, height=block.header.height - 1)
    child = compute_child_score(parent, block, PARAMS)
    assert is_better(child, parent)
    assert not is_better(parent, child)


@given(a=score_strategy, b=score_strategy)
def test_comparison_is_a_strict_total_order(a, b):
    if a == b:
        assert not is_better(a, b)
    else:
        assert is_better(a, b) != is_better(b, a)


def test_more_useful_high_accuracy_models_beat_a_longer_chain(tmp_path):
    params = with_deep_finality(DEVNET, 8)
    prefix = MemoryChain(params)
    tasks = [make_task(ALICE, (60 + i) * COIN, i, f"fc-{i}") for i in range(2)]
    labels = {t.task_id: f"fc-{i}" for i, t in enumerate(tasks)}
    blocks = [make_next_block(prefix.state(), params, MINERS[0], transactions=tuple(tasks))]
    prefix.apply(blocks[0])
    while get_scheduled_task_id(prefix.state().get_status()) not in labels:
        blocks.append(make_next_block(prefix.state(), params, MINERS[0], task_labels=labels))
        prefix.apply(blocks[-1])
    branches = {}
    for name, miner, dice, carry_test, length in (("useful", MINERS[1], 850_000, True, 2), ("downgraded", MINERS[2], 999_000, False, 5)):
        chain = MemoryChain(params)
        for block in blocks:
            chain.apply(block)
        branches[name] = []
        for _ in range(length):
            block = make_next_block(chain.state(), params, miner, task_labels=labels, dice_ppm=dice, carry_test_key=carry_test)
            chain.apply(block)
            branches[name].append(block)
    assert [b.header.task_mode for b in branches["downgraded"][:2]] == [2, 2]
    with ChainState.open(tmp_path / "db", params) as store:
        for block in blocks + branches["downgraded"] + branches["useful"]:
            submit(store, block)
        assert store.tip_hash == branches["useful"][-1].hash
        assert store.get_tip_score().hi_count == 2
        # Confirmations count useful high-accuracy blocks after a block, not blocks.
        assert compute_confirmations(store.get_headers_after(branches["useful"][0].hash), params) == 1
        assert compute_confirmations([b.header for b in branches["downgraded"]], params) == 0


def test_equal_scores_are_decided_by_the_ungrindable_tie_value(tmp_path):
    chains = [MemoryChain(PARAMS) for _ in range(2)]
    blocks = [make_next_block(c.state(), PARAMS, MINERS[i], dice_ppm=900_000, salt=bytes([i])) for i, c in enumerate(chains)]
    want = min(blocks, key=lambda b: compute_tie_value(b.header.prev_hash, b.header.miner))
    for order in (blocks, blocks[::-1]):
        path = tmp_path / f"db{order is blocks}"
        with ChainState.open(path, PARAMS) as store:
            for b in order:
                submit(store, b)
            assert store.tip_hash == want.hash
    # The same miner cannot change its tie value by re-rolling the block (other salt, other timestamp).
    again = make_next_block(chains[0].state(), PARAMS, MINERS[0], dice_ppm=900_000, salt=b"re-roll")
    assert compute_tie_value(again.header.prev_hash, again.header.miner) == compute_tie_value(blocks[0].header.prev_hash, MINERS[0].public_key)
