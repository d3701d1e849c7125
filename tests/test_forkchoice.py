"""Fork choice: most high-accuracy models wins; deterministic and independent of arrival order."""

from __future__ import annotations

import dataclasses
import random

from chainutil import MemoryChain, submit
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.fixtures import make_keypair, make_next_block, make_test_params
from consensus.forkchoice import ChainScore, compute_child_score, compute_confirmations, is_better
from consensus.state import State, apply_changes
from consensus.transition import apply_block
from consensus.chainstate import ChainState

PARAMS = make_test_params("alice")
MINERS = [make_keypair(f"m{i}") for i in range(3)]

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
    dice_sum=st.integers(0, 10**12),
    height=st.integers(0, 10**6),
    tip_hash=st.binary(min_size=32, max_size=32),
)


@given(parent=score_strategy, dice=st.integers(0, 1_000_000))
def test_an_extension_always_beats_its_prefix(parent, dice):
    chain = MemoryChain(PARAMS)
    header = make_next_block(chain.state(), PARAMS, MINERS[0], dice_ppm=dice).header
    parent = dataclasses.replace(parent, height=header.height - 1)
    child = compute_child_score(parent, header, PARAMS)
    assert is_better(child, parent)
    assert not is_better(parent, child)


@given(a=score_strategy, b=score_strategy)
def test_comparison_is_a_strict_total_order(a, b):
    if a == b:
        assert not is_better(a, b)
    elif a.tip_hash != b.tip_hash or (a.hi_count, a.dice_sum, a.height) != (b.hi_count, b.dice_sum, b.height):
        assert is_better(a, b) != is_better(b, a) or (a.hi_count, a.dice_sum, a.height, a.tip_hash) == (b.hi_count, b.dice_sum, b.height, b.tip_hash)


def test_more_high_accuracy_models_beats_longer_chain(tmp_path):
    long_chain = MemoryChain(PARAMS)
    low = []
    for i in range(5):
        block = make_next_block(long_chain.state(), PARAMS, MINERS[0], dice_ppm=700_000, salt=b"l")
        long_chain.apply(block)
        low.append(block)
    short_chain = MemoryChain(PARAMS)
    high = []
    for i in range(2):
        block = make_next_block(short_chain.state(), PARAMS, MINERS[1], dice_ppm=850_000, salt=b"h")
        short_chain.apply(block)
        high.append(block)
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in low + high:
            submit(store, block)
        assert store.tip_hash == high[-1].hash
        # Confirmations count high-accuracy blocks after a block, not blocks.
        assert compute_confirmations(store.get_headers_after(high[0].hash), PARAMS) == 1
        assert compute_confirmations([b.header for b in low], PARAMS) == 0


def test_equal_scores_prefer_the_lower_hash(tmp_path):
    chains = [MemoryChain(PARAMS) for _ in range(2)]
    blocks = [make_next_block(c.state(), PARAMS, MINERS[0], dice_ppm=900_000, salt=bytes([i])) for i, c in enumerate(chains)]
    want = min(blocks, key=lambda b: b.hash)
    for order in (blocks, blocks[::-1]):
        path = tmp_path / f"db{order is blocks}"
        with ChainState.open(path, PARAMS) as store:
            for b in order:
                submit(store, b)
            assert store.tip_hash == want.hash
