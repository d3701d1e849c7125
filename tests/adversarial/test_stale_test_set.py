"""The test set is never known while its models train.

The attack (on the old rules): the test key of a height's task was revealed in
Phase 2 of a slot that then passed without a block; the next slot mined the
same height on the same task, and its miners trained knowing the test set. Now
a published task is scored only by a block in the slot right after its
parent's; a later block must mine the standing task (mode 3) and the task's
escrow goes back to its publisher, who was not at fault.
"""

from __future__ import annotations

from chainutil import MemoryChain, submit

from consensus.chainstate import BlockStatus, ChainState
from consensus.fixtures import make_keypair, make_next_block, make_task, make_task_keys, make_test_params
from consensus.genesis import COIN
from consensus.rules import get_scheduled_task_id, get_task_status, TASK_EXPIRED
from pouw.types import KEY_TEST, MODE_NORMAL, MODE_STALE, KeyReveal

PUBLISHER, MINER = make_keypair("stale-publisher"), make_keypair("stale-miner")
PARAMS = make_test_params("stale-publisher", "stale-miner")


def test_a_height_whose_slot_passed_cannot_score_its_task_on_the_now_public_test_set(tmp_path):
    chain = MemoryChain(PARAMS)
    task = make_task(PUBLISHER, 60 * COIN, 0, "stale")
    labels = {task.task_id: "stale"}
    blocks = [make_next_block(chain.state(), PARAMS, MINER, transactions=(task,))]
    chain.apply(blocks[-1])
    while get_scheduled_task_id(chain.state().get_status()) != task.task_id:
        blocks.append(make_next_block(chain.state(), PARAMS, MINER, task_labels=labels))
        chain.apply(blocks[-1])
    fresh = chain.state().get_status().min_slot
    public_test_key = KeyReveal(task.task_id, KEY_TEST, make_task_keys("stale")[1])
    # The slot `fresh` passed without a block; a miner who saw the test key there claims mode 0 in the next slot.
    cheat = make_next_block(chain.state(), PARAMS, MINER, task_labels=labels, slot=fresh + 1, task_mode=MODE_NORMAL)
    from dataclasses import replace

    from consensus.assemble import assemble_block
    cheat = assemble_block(chain.state(), PARAMS, MINER, slot=fresh + 1, timestamp=cheat.header.timestamp,
                           commit=replace(cheat.body.commit), work=cheat.body.work, key_reveals=(public_test_key,),
                           task_mode=MODE_NORMAL)
    honest_late = make_next_block(chain.state(), PARAMS, MINER, task_labels=labels, slot=fresh + 1)
    assert honest_late.header.task_mode == MODE_STALE
    publisher_before = chain.state().get_account(PUBLISHER.public_key).balance
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            submit(store, block)
        result = submit(store, cheat)
        assert result.status is BlockStatus.INVALID
        assert submit(store, honest_late).status is BlockStatus.CONNECTED
        state = store.state()
        assert get_task_status(state, task.task_id).status == TASK_EXPIRED
        assert state.get_account(PUBLISHER.public_key).balance == publisher_before + 60 * COIN
