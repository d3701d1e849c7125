"""Private forks: censoring, scheduling easy tasks, downgrading; and the finality window.

The attacks (on the old rules): fork choice counted every block at Dice >= 0.8
whatever it was measured on, so an attacker mining alone on the synthetic
standing task (no task submissions, or mode-1 blocks) outscored an honest chain
that mined hard real tasks at Dice 0.6-0.85, even with half as many blocks, and
honest nodes reorganised to it. Now only useful blocks weigh (a published task
scored on its test set), branches a node may switch to fork at most
`finality_depth` blocks deep, and tasks mature for longer than that, so
competing branches train the same tasks and their Dice is compared like with like.
"""

from __future__ import annotations

from chainutil import MemoryChain, submit, with_deep_finality

from consensus.chainstate import BlockStatus, ChainState
from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params
from consensus.genesis import COIN
from consensus.rules import get_scheduled_task_id, is_standing_task

PUBLISHER, HONEST, ATTACKER = (make_keypair(n) for n in ("fork-publisher", "fork-honest", "fork-attacker"))


def prefix_with_tasks(params, count: int):
    """A chain where `count` published tasks are about to be mined (the next height is the first one)."""
    chain = MemoryChain(params)
    tasks = [make_task(PUBLISHER, (60 + i) * COIN, i, f"hard-{i}") for i in range(count)]
    labels = {t.task_id: f"hard-{i}" for i, t in enumerate(tasks)}
    blocks = [make_next_block(chain.state(), params, HONEST, transactions=tuple(tasks))]
    chain.apply(blocks[-1])
    while get_scheduled_task_id(chain.state().get_status()) not in labels:
        blocks.append(make_next_block(chain.state(), params, HONEST, task_labels=labels))
        chain.apply(blocks[-1])
    return blocks, labels


def extend(params, base: list, count: int, miner, labels, **kwargs) -> list:
    chain = MemoryChain(params)
    for block in base:
        chain.apply(block)
    out = []
    for _ in range(count):
        block = make_next_block(chain.state(), params, miner, task_labels=labels, salt=miner.public_key[:4], **kwargs)
        chain.apply(block)
        out.append(block)
    return out


def honest_branch(params, base, labels, count):
    chain = MemoryChain(params)
    for block in base:
        chain.apply(block)
    out = []
    for i in range(count):
        dice = 600_000 + 50_000 * (i % 6)  # hard real tasks: 0.6 to 0.85
        out.append(make_next_block(chain.state(), params, HONEST, task_labels=labels, dice_ppm=dice))
        chain.apply(out[-1])
    return out


def test_a_censoring_fork_of_easy_blocks_loses_even_when_longer(tmp_path):
    params = with_deep_finality(make_test_params("fork-publisher"), 12)
    base, labels = prefix_with_tasks(params, 4)
    honest = honest_branch(params, base, labels, 6)
    assert sum(1 for b in honest if not is_standing_task(params, b.header.task_id)) == 4
    # The attacker mines alone: it omits every key (mode 2, then mode 1 on the following tasks), scores 0.99
    # on easy data, and has more blocks than the honest chain.
    attacker = extend(params, base, 9, ATTACKER, labels, dice_ppm=990_000, carry_test_key=False, carry_next_train_key=False)
    assert {b.header.task_mode for b in attacker if not is_standing_task(params, b.header.task_id)} <= {1, 2}
    for first, second in ((attacker, honest), (honest, attacker)):
        with ChainState.open(tmp_path / f"db-{first is honest}", params) as store:
            for block in base + first + second:
                submit(store, block)
            assert store.tip_hash == honest[-1].hash, "the node followed the censoring fork"


def test_a_fork_cannot_schedule_its_own_easy_tasks_within_the_finality_window(tmp_path):
    params = make_test_params("fork-publisher", "fork-attacker")
    base, labels = prefix_with_tasks(params, 2)
    easy = make_task(ATTACKER, 500 * COIN, 0, "easy")  # outbids every honest task
    easy_labels = {**labels, easy.task_id: "easy"}
    attacker = extend(params, base, 1, ATTACKER, easy_labels, transactions=(easy,))
    attacker += extend(params, base + attacker, params.task_maturity_blocks + 2, ATTACKER, easy_labels)
    honest = honest_branch(params, base, labels, params.finality_depth + 1)
    # Both branches train the same tasks at the same heights until the easy task matures...
    for h, a in zip(honest, attacker):
        assert h.header.task_id == a.header.task_id
    first_easy = next(i for i, b in enumerate(attacker) if b.header.task_id == easy.task_id)
    assert first_easy >= params.task_maturity_blocks + 1 > params.finality_depth
    # ... and a node on the honest tip never considers a branch that deep.
    with ChainState.open(tmp_path / "db", params) as store:
        for block in base + honest:
            assert submit(store, block).status is BlockStatus.CONNECTED
        results = [submit(store, block) for block in attacker]
        assert any(r.status is BlockStatus.REFUSED and "finality window" in r.reason for r in results)
        assert store.tip_hash == honest[-1].hash
        assert all(store.get_index(b.hash) is None for b in attacker[first_easy:])
