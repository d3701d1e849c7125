"""Mode downgrade: a miner may not pick an easier scoring set than the chain allows.

The attack (on the old rules): with both keys out, a miner declared mode 1 (train
and score the synthetic standing task) or mode 2 (score on the training set),
reached a Dice the honest miner's real test set does not give, and its block
replaced the honest one on every node. Now the chain decides the mode: the
training key is carried by the parent, so mode 1 is invalid when it is on chain;
a block that omits the test key (mode 2) weighs nothing in fork choice, so it
loses to any sibling that scored the task on its test set, whatever the Dice.
"""

from __future__ import annotations

import pytest
from chainutil import MemoryChain, submit

from consensus.chainstate import BlockStatus, ChainState
from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params
from consensus.genesis import COIN
from consensus.rules import get_scheduled_task_id
from pouw.types import MODE_NO_TEST_KEY, MODE_NO_TRAIN_KEY, MODE_NORMAL

PUBLISHER, HONEST, CHEAT = (make_keypair(n) for n in ("publisher", "honest", "cheat"))
PARAMS = make_test_params("publisher", "honest", "cheat")


def chain_to_the_task() -> tuple[MemoryChain, list, dict]:
    """Genesis, a block with one task, standing blocks until the task's height is next (its training key on chain)."""
    chain = MemoryChain(PARAMS)
    task = make_task(PUBLISHER, 60 * COIN, 0, "mode-task")
    labels = {task.task_id: "mode-task"}
    blocks = [make_next_block(chain.state(), PARAMS, HONEST, transactions=(task,))]
    chain.apply(blocks[-1])
    while get_scheduled_task_id(chain.state().get_status()) != task.task_id:
        blocks.append(make_next_block(chain.state(), PARAMS, HONEST, task_labels=labels))
        chain.apply(blocks[-1])
    assert chain.state().get_status().train_key
    return chain, blocks, labels


def test_declaring_mode_1_while_the_training_key_is_on_chain_is_invalid(tmp_path):
    chain, blocks, labels = chain_to_the_task()
    cheat = make_next_block(chain.state(), PARAMS, CHEAT, task_labels=labels, dice_ppm=990_000,
                            carry_test_key=False, task_mode=MODE_NO_TRAIN_KEY)
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            assert submit(store, block).status is BlockStatus.CONNECTED
        result = submit(store, cheat)
        assert result.status is BlockStatus.INVALID and "not the mode 2 the chain dictates" in result.reason


@pytest.mark.parametrize("cheat_first", [True, False])
def test_a_downgraded_block_loses_to_the_honest_one_whatever_its_dice_and_arrival(tmp_path, cheat_first):
    chain, blocks, labels = chain_to_the_task()
    honest = make_next_block(chain.state(), PARAMS, HONEST, task_labels=labels, dice_ppm=600_000)
    cheat = make_next_block(chain.state(), PARAMS, CHEAT, task_labels=labels, dice_ppm=980_000, carry_test_key=False)
    assert honest.header.task_mode == MODE_NORMAL and cheat.header.task_mode == MODE_NO_TEST_KEY
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            submit(store, block)
        first, second = (cheat, honest) if cheat_first else (honest, cheat)
        submit(store, first)
        submit(store, second)
        assert store.tip_hash == honest.hash
        # Even a long run of downgraded blocks on top does not outweigh one useful block here (within the window).
        assert store.get_tip_score().duty_count > store.get_index(cheat.hash).score.duty_count
