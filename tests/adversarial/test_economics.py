"""Economics: a publisher dealing a task to its own miner, and a publisher squatting the queue, gain nothing.

The attacks (on the old rules): a publisher who gave its own miner the test
labels won the 50-coin block reward and got its own escrow back (+49.9999 coins
a win); a publisher outbidding every honest task and never revealing its keys
held every height for nothing but fees. Now a published task mints nothing (its
escrow is the prize), and a task whose training key never reaches the chain
burns what its block mints (at least the block reward comes out of its escrow).
"""

from __future__ import annotations

from chainutil import MemoryChain

from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params
from consensus.genesis import COIN
from consensus.rules import get_scheduled_task_id
from pouw.types import MODE_NO_TRAIN_KEY, MODE_NORMAL

PUBLISHER, MINER, HONEST_PUBLISHER, OTHER = (make_keypair(n) for n in ("self-dealer", "own-miner", "honest-pub", "other"))
PARAMS = make_test_params("self-dealer", "own-miner", "honest-pub", "other")


def wealth(chain: MemoryChain, *keys) -> int:
    state = chain.state()
    return sum(state.get_account(k.public_key).balance for k in keys)


def test_a_publisher_and_its_own_miner_end_with_no_more_than_they_started_with_less_fees():
    chain = MemoryChain(PARAMS)
    start = wealth(chain, PUBLISHER, MINER)
    task = make_task(PUBLISHER, 60 * COIN, 0, "dealt", fee=10_000)
    labels = {task.task_id: "dealt"}
    chain.apply(make_next_block(chain.state(), PARAMS, OTHER, transactions=(task,)))
    while get_scheduled_task_id(chain.state().get_status()) != task.task_id:
        chain.apply(make_next_block(chain.state(), PARAMS, OTHER, task_labels=labels))
    # The colluding miner wins the task's height with a perfect Dice (it had the labels).
    block = make_next_block(chain.state(), PARAMS, MINER, task_labels=labels, dice_ppm=1_000_000)
    assert block.header.task_mode == MODE_NORMAL
    chain.apply(block)
    assert wealth(chain, PUBLISHER, MINER) == start - task.fee  # the escrow came back; nothing was minted


def test_squatting_the_queue_with_tasks_whose_keys_never_come_costs_what_the_blocks_mint():
    chain = MemoryChain(PARAMS)
    honest = make_task(HONEST_PUBLISHER, 100 * COIN, 0, "honest")
    squats = [make_task(PUBLISHER, 100 * COIN + 1 + i, i, f"squat-{i}", fee=10_000) for i in range(3)]
    labels = {honest.task_id: "honest"}
    start = wealth(chain, PUBLISHER)
    supply = chain.state().get_status().supply
    chain.apply(make_next_block(chain.state(), PARAMS, OTHER, transactions=(honest, *squats)))
    held = 0
    while held < len(squats):
        block = make_next_block(chain.state(), PARAMS, OTHER, task_labels=labels)
        if block.header.task_id in {t.task_id for t in squats}:
            assert block.header.task_mode == MODE_NO_TRAIN_KEY  # no key was ever carried: the standing task is mined
            held += 1
        chain.apply(block)
    spent = start - wealth(chain, PUBLISHER)
    assert spent == len(squats) * PARAMS.block_reward + sum(t.fee for t in squats)
    # The squatter burned exactly what its held heights minted: squatting creates no coins for anybody.
    blocks_mined = chain.state().get_status().height
    standing_or_held = sum(1 for h in range(1, blocks_mined + 1) if chain.state().get_history(h).task_id != honest.task_id)
    assert chain.state().get_status().supply == supply + standing_or_held * PARAMS.block_reward - len(squats) * PARAMS.block_reward
    # ... and the honest task is mined right after them.
    while chain.state().get_history(chain.state().get_status().height).task_id != honest.task_id:
        chain.apply(make_next_block(chain.state(), PARAMS, OTHER, task_labels=labels))
    assert chain.state().get_history(chain.state().get_status().height).task_mode == MODE_NORMAL
