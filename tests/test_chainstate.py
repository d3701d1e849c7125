"""The chain state over LevelDB: the block road, atomic connect/disconnect, reorgs, restarts, damage."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dataclasses

import plyvel
import pytest
from chainutil import MemoryChain, submit, unchecked_work, with_deep_finality

from consensus.chainstate import BlockStatus, ChainState
from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params, make_transfer
from consensus.genesis import COIN
from consensus.transition import InvalidBlock
from pouw.chaindb import StoreError
from pouw.encoding import encode
from pouw.types import Block

ALICE, BOB, M1, M2 = (make_keypair(n) for n in ("alice", "bob", "m1", "m2"))
# Deep enough for the reorganisation machinery tests; the finality window has its own tests below.
PARAMS = with_deep_finality(make_test_params("alice", "bob"))
LABELS: dict[bytes, str] = {}


def build_branch(base: MemoryChain, count: int, miner, dice: int, tag: str, slot_offset: int = 0) -> list:
    """`count` blocks on top of `base` (which is advanced), with transfers and tasks that differ per tag."""
    blocks = []
    for i in range(count):
        state = base.state()
        height = state.get_status().height + 1
        nonce_a = state.get_account(ALICE.public_key).nonce
        nonce_b = state.get_account(BOB.public_key).nonce
        txs = (
            make_transfer(ALICE, miner.public_key, 1000 + i, nonce_a),
            make_transfer(BOB, ALICE.public_key, 7 + height, nonce_b),
        )
        if i % 3 == 0:
            task = make_task(ALICE, (52 + i) * COIN, nonce_a + 1, f"{tag}-{height}")
            LABELS[task.task_id] = f"{tag}-{height}"
            txs += (task,)
        slot = state.get_status().min_slot + slot_offset
        block = make_next_block(
            state, base.params, miner, transactions=txs, dice_ppm=dice, slot=slot, salt=tag.encode(), task_labels=LABELS
        )
        base.apply(block)
        blocks.append(block)
    return blocks


def replay_dump(tmp_path: Path, blocks: list, name: str) -> bytes:
    with ChainState.open(tmp_path / name, PARAMS) as store:
        for block in blocks:
            submit(store, block)
        return store.state_dump()


def test_connect_disconnect_restores_state_exactly(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 3, M1, 900_000, "a")
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        dumps = [store.state_dump()]
        for block in blocks:
            assert submit(store, block).status is BlockStatus.CONNECTED
            dumps.append(store.state_dump())
        assert store.tip_hash == blocks[-1].hash
        for expected in reversed(dumps[:-1]):
            store.disconnect_tip()
            assert store.state_dump() == expected
        store.check_consistency()


@pytest.mark.parametrize("depth", list(range(1, 21)))
def test_reorg_of_any_depth_equals_replay(tmp_path, depth):
    total = 20
    chain_a = MemoryChain(PARAMS)
    fork_height = total - depth
    shared = build_branch(chain_a, fork_height, M1, 900_000, "shared")
    # Branch B starts from the fork point, at later slots, and is one block longer (standing-task blocks weigh nothing).
    chain_b = MemoryChain(PARAMS)
    for block in shared:
        chain_b.apply(block)
    a_tail = build_branch(chain_a, depth, M1, 500_000, "a")
    b_tail = build_branch(chain_b, depth + 1, M2, 950_000, "b", slot_offset=1)
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in shared + a_tail:
            submit(store, block)
        assert store.tip_hash == a_tail[-1].hash
        for block in b_tail:
            submit(store, block)
        assert store.tip_hash == b_tail[-1].hash
        assert store.get_hash_at(fork_height + 1) == b_tail[0].hash
        dump = store.state_dump()
        store.check_consistency()
    assert dump == replay_dump(tmp_path, shared + b_tail, "replay")


def test_a_split_within_the_finality_window_heals_a_deeper_one_needs_the_operator(tmp_path):
    params = make_test_params("alice", "bob")
    R = params.finality_depth
    shared = MemoryChain(params)
    base = build_branch(shared, 1, M1, 900_000, "shared")
    branches = {}
    for tag, miner, length, offset in (("ours", M1, R + 3, 0), ("short", M2, R + 1, 1), ("long", M2, R + 4, 0)):
        chain = MemoryChain(params)
        for block in base:
            chain.apply(block)
        branches[tag] = build_branch(chain, length, miner, 900_000, tag, slot_offset=offset)
    ours, short, long = branches["ours"], branches["short"], branches["long"]

    # A split R deep: the longer branch takes over by itself.
    with ChainState.open(tmp_path / "heals", params) as store:
        for block in base + ours[:R]:
            assert submit(store, block).status is BlockStatus.CONNECTED
        results = [submit(store, block) for block in short]
        assert results[-1].status is BlockStatus.CONNECTED and store.tip_hash == short[-1].hash
        store.check_consistency()

    # A split deeper than R: refused with a clear reason, never stored; the operator's commands resolve it.
    with ChainState.open(tmp_path / "deep", params) as store:
        for block in base + ours:
            assert submit(store, block).status is BlockStatus.CONNECTED
        first = submit(store, long[0])
        assert first.status is BlockStatus.REFUSED and "deeper than the finality window" in first.reason
        assert "pouw chain invalidate" in first.reason
        assert store.get_index(long[0].hash) is None and store.tip_hash == ours[-1].hash
        store.invalidate_block(ours[0].hash)
        assert store.tip_hash == base[-1].hash
        assert submit(store, ours[-1]).status is BlockStatus.INVALID
        for block in long:
            assert submit(store, block).status is BlockStatus.CONNECTED
        assert store.tip_hash == long[-1].hash
        # Reconsidering makes our branch a valid candidate again; the longer one stays the tip.
        store.reconsider_block(ours[0].hash)
        assert store.get_invalid_reason(ours[-1].hash) is None and store.tip_hash == long[-1].hash
        store.check_consistency()


def test_invalid_block_on_better_branch_is_never_stored(tmp_path):
    chain_a = MemoryChain(PARAMS)
    a = build_branch(chain_a, 2, M1, 900_000, "a")
    chain_b = MemoryChain(PARAMS)
    b = build_branch(chain_b, 3, M2, 950_000, "b", slot_offset=1)
    verified_bad = {b[1].hash}

    def check_work(candidate):
        if candidate.block.hash in verified_bad:
            raise InvalidBlock("work: recomputed Dice does not match the claim")

    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in a:
            submit(store, block, check_work)
        assert submit(store, b[0], check_work).status is BlockStatus.SIDE_BRANCH
        result = submit(store, b[1], check_work)
        assert result.status is BlockStatus.INVALID and "recomputed Dice" in result.reason
        assert store.get_index(b[1].hash) is None, "an invalid block must not be stored"
        result = submit(store, b[2], check_work)
        assert result.status is BlockStatus.INVALID and result.reason == "parent block is invalid"
        # b[0] alone has 1 high-accuracy block; a has 2: the node stays on a, never having left it.
        assert store.tip_hash == a[-1].hash
        store.check_consistency()


def test_unknown_parent_is_missing_data_not_invalid(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 2, M1, 900_000, "a")
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        result = submit(store, blocks[1])
        assert result.status is BlockStatus.MISSING and result.reason == "parent block is unknown"
        assert submit(store, blocks[0]).status is BlockStatus.CONNECTED
        assert submit(store, blocks[1]).status is BlockStatus.CONNECTED


def test_a_block_breaking_a_cheap_rule_never_reaches_the_work_check(tmp_path):
    chain = MemoryChain(PARAMS)
    [block] = build_branch(chain, 1, M1, 900_000, "a")
    bad_timestamp = Block(dataclasses.replace(block.header, timestamp=0).signed_by(M1), block.body)
    wrong_task = Block(dataclasses.replace(block.header, task_id=b"\x05" * 32).signed_by(M1), block.body)
    checked = []
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for bad, fragment in ((bad_timestamp, "not in Phase 2"), (wrong_task, "not the task selected")):
            result = submit(store, bad, lambda c: checked.append(c.block.hash))
            assert result.status is BlockStatus.INVALID and fragment in result.reason
        assert checked == []
        assert submit(store, block, lambda c: checked.append(c.block.hash)).status is BlockStatus.CONNECTED
        assert checked == [block.hash]


def test_a_block_from_the_future_is_refused_but_not_remembered(tmp_path):
    chain = MemoryChain(PARAMS)
    [block] = build_branch(chain, 1, M1, 900_000, "a")
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        early = block.header.timestamp - PARAMS.clock_skew_seconds - 1
        result = store.process_new_block(block, early, unchecked_work)
        assert result.status is BlockStatus.REFUSED and "from the future" in result.reason
        assert store.process_new_block(block, block.header.timestamp, unchecked_work).status is BlockStatus.CONNECTED


def test_reopen_keeps_tip_and_state(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 4, M1, 900_000, "a")
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            submit(store, block)
        dump = store.state_dump()
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        assert store.tip_hash == blocks[-1].hash
        assert store.state_dump() == dump


def test_other_network_database_is_refused(tmp_path):
    ChainState.open(tmp_path / "db", PARAMS).close()
    other = make_test_params("alice")
    with pytest.raises(StoreError, match="belongs to another network"):
        ChainState.open(tmp_path / "db", other)


def test_damaged_state_record_is_refused(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 2, M1, 900_000, "a")
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            submit(store, block)
    db = plyvel.DB(str(tmp_path / "db"))
    key, value = next(iter(db.iterator(prefix=b"Sa")))
    db.put(key, value[:-1] + bytes([value[-1] ^ 1]))
    db.close()
    with pytest.raises(StoreError, match="state checksum does not match"):
        ChainState.open(tmp_path / "db", PARAMS)


def test_damaged_height_index_is_refused(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 2, M1, 900_000, "a")
    with ChainState.open(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            submit(store, block)
    db = plyvel.DB(str(tmp_path / "db"))
    db.delete(b"H" + (2).to_bytes(8, "big"))
    db.close()
    with pytest.raises(StoreError, match="height index does not end at the tip"):
        ChainState.open(tmp_path / "db", PARAMS)


def test_garbage_files_are_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "db"
    ChainState.open(path, PARAMS).close()
    for f in path.iterdir():
        if f.name.startswith("MANIFEST"):
            f.write_bytes(os.urandom(200))
    with pytest.raises(StoreError, match="corrupted|cannot open"):
        ChainState.open(path, PARAMS)


def test_second_opener_gets_a_clear_message(tmp_path):
    with ChainState.open(tmp_path / "db", PARAMS):
        with pytest.raises(StoreError, match="another pouw node"):
            ChainState.open(tmp_path / "db", PARAMS)


KILL_WORKER = r"""
import sys
from pathlib import Path
from pouw.encoding import decode
from pouw.types import Block
from consensus.chainstate import ChainState
from consensus.fixtures import make_test_params
sys.path.insert(0, "tests")
from chainutil import with_deep_finality
params = with_deep_finality(make_test_params("alice", "bob"))
blocks = [decode(Block, bytes.fromhex(line)) for line in Path(sys.argv[2]).read_text().split()]
store = ChainState.open(sys.argv[1], params)
for block in blocks:
    parent = store.get_index(block.header.prev_hash)
    if store.get_index(block.hash) is None:
        store.store_valid_block(block, parent)
print("ready", flush=True)
while True:
    while store.tip_height < len(blocks):
        store.connect_block(blocks[store.tip_height])
    while store.tip_height > 0:
        store.disconnect_tip()
"""


@pytest.mark.slow
def test_kill_at_any_moment_leaves_a_consistent_database(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 6, M1, 900_000, "a")
    dumps = {}
    with ChainState.open(tmp_path / "ref", PARAMS) as ref:
        dumps[ref.tip_hash] = ref.state_dump()
        for block in blocks:
            submit(ref, block)
            dumps[block.hash] = ref.state_dump()
    listing = tmp_path / "blocks.txt"
    listing.write_text("\n".join(encode(b).hex() for b in blocks))
    rng = random.Random(7)
    db = tmp_path / "db"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", KILL_WORKER, str(db), str(listing)], stdout=subprocess.PIPE, env=env,
                                cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.01, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Reopening activates the best chain again: every block is stored and valid, so it ends on the last one.
        with ChainState.open(db, PARAMS) as store:
            assert store.tip_hash == blocks[-1].hash
            assert store.state_dump() == dumps[store.tip_hash]


STORE_ONLY_WORKER = r"""
import sys, time
from pathlib import Path
from pouw.encoding import decode
from pouw.types import Block
from consensus.chainstate import ChainState
from consensus.fixtures import make_test_params
sys.path.insert(0, "tests")
from chainutil import with_deep_finality
params = with_deep_finality(make_test_params("alice", "bob"))
honest = [decode(Block, bytes.fromhex(line)) for line in Path(sys.argv[2]).read_text().split()]
better = [decode(Block, bytes.fromhex(line)) for line in Path(sys.argv[3]).read_text().split()]
store = ChainState.open(sys.argv[1], params)
for block in honest:
    store.process_new_block(block, time.time(), lambda candidate: None)
# accept_block stores a validated block, then activates; stop between the two, as a kill can.
for block in better:
    store.store_valid_block(block, store.get_index(block.header.prev_hash))
print("stored", store.tip_hash.hex(), flush=True)
time.sleep(3600)
"""


@pytest.mark.slow
def test_killed_after_storing_a_better_branch_the_node_comes_back_on_it(tmp_path):
    chain_a = MemoryChain(PARAMS)
    a = build_branch(chain_a, 3, M1, 500_000, "a")
    chain_b = MemoryChain(PARAMS)
    b = build_branch(chain_b, 4, M2, 950_000, "b", slot_offset=1)
    (tmp_path / "a.txt").write_text("\n".join(encode(x).hex() for x in a))
    (tmp_path / "b.txt").write_text("\n".join(encode(x).hex() for x in b))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    db = tmp_path / "db"
    proc = subprocess.Popen([sys.executable, "-c", STORE_ONLY_WORKER, str(db), str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
                            stdout=subprocess.PIPE, env=env, cwd=Path(__file__).resolve().parents[1])
    line = proc.stdout.readline().split()
    assert line[0] == b"stored" and bytes.fromhex(line[1].decode()) == a[-1].hash  # still on the worse tip
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with ChainState.open(db, PARAMS) as store:
        assert store.tip_hash == b[-1].hash
        store.check_consistency()
        dump = store.state_dump()
    assert dump == replay_dump(tmp_path, b, "replay")
