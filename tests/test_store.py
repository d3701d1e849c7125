"""The LevelDB chain store: atomic connect/disconnect, reorgs, restarts, damage."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import plyvel
import pytest
from chainutil import MemoryChain

from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params, make_transfer
from consensus.genesis import COIN
from consensus.transition import InvalidBlock
from pouw.encoding import encode
from pouw.store import STATUS_INVALID, ChainStore, StoreError

ALICE, BOB, M1, M2 = (make_keypair(n) for n in ("alice", "bob", "m1", "m2"))
PARAMS = make_test_params("alice", "bob")
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
            task = make_task(ALICE, (2 + i) * COIN, nonce_a + 1, f"{tag}-{height}")
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
    with ChainStore(tmp_path / name, PARAMS) as store:
        for block in blocks:
            store.submit_block(block)
        return store.state_dump()


def test_connect_disconnect_restores_state_exactly(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 3, M1, 900_000, "a")
    with ChainStore(tmp_path / "db", PARAMS) as store:
        dumps = [store.state_dump()]
        for block in blocks:
            assert store.submit_block(block)
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
    # Branch B starts from the fork point, at later slots, and has more high-accuracy blocks.
    chain_b = MemoryChain(PARAMS)
    for block in shared:
        chain_b.apply(block)
    a_tail = build_branch(chain_a, depth, M1, 500_000, "a")
    b_tail = build_branch(chain_b, depth, M2, 950_000, "b", slot_offset=1)
    with ChainStore(tmp_path / "db", PARAMS) as store:
        for block in shared + a_tail:
            store.submit_block(block)
        assert store.tip_hash == a_tail[-1].hash
        for block in b_tail:
            store.submit_block(block)
        assert store.tip_hash == b_tail[-1].hash
        assert store.get_hash_at(fork_height + 1) == b_tail[0].hash
        dump = store.state_dump()
        store.check_consistency()
    assert dump == replay_dump(tmp_path, shared + b_tail, "replay")


def test_lower_scoring_branch_does_not_take_over(tmp_path):
    chain_a = MemoryChain(PARAMS)
    a = build_branch(chain_a, 3, M1, 900_000, "a")
    chain_b = MemoryChain(PARAMS)
    b = build_branch(chain_b, 4, M2, 100_000, "b", slot_offset=1)
    with ChainStore(tmp_path / "db", PARAMS) as store:
        for block in a + b:
            store.submit_block(block)
        # Three high-accuracy blocks beat four low-accuracy ones.
        assert store.tip_hash == a[-1].hash


def test_invalid_block_on_better_branch_falls_back(tmp_path):
    chain_a = MemoryChain(PARAMS)
    a = build_branch(chain_a, 2, M1, 900_000, "a")
    chain_b = MemoryChain(PARAMS)
    b = build_branch(chain_b, 3, M2, 950_000, "b", slot_offset=1)
    verified_bad = {b[1].hash}

    def verify_work(block, state):
        if block.hash in verified_bad:
            raise InvalidBlock("recomputed Dice does not match the claim")

    with ChainStore(tmp_path / "db", PARAMS, verify_work=verify_work) as store:
        for block in a:
            store.submit_block(block)
        store.submit_block(b[0])
        with pytest.raises(InvalidBlock, match="recomputed Dice"):
            store.submit_block(b[1])
        assert store.get_index(b[1].hash).status == STATUS_INVALID
        with pytest.raises(InvalidBlock, match="parent block is invalid"):
            store.submit_block(b[2])
        # b[0] alone has 1 high-accuracy block; a has 2: the node is back on a.
        assert store.tip_hash == a[-1].hash
        store.check_consistency()


def test_unknown_parent_is_rejected(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 2, M1, 900_000, "a")
    with ChainStore(tmp_path / "db", PARAMS) as store:
        with pytest.raises(InvalidBlock, match="parent block is unknown"):
            store.submit_block(blocks[1])


def test_reopen_keeps_tip_and_state(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 4, M1, 900_000, "a")
    with ChainStore(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            store.submit_block(block)
        dump = store.state_dump()
    with ChainStore(tmp_path / "db", PARAMS) as store:
        assert store.tip_hash == blocks[-1].hash
        assert store.state_dump() == dump


def test_other_network_database_is_refused(tmp_path):
    ChainStore(tmp_path / "db", PARAMS).close()
    other = make_test_params("alice")
    with pytest.raises(StoreError, match="belongs to another network"):
        ChainStore(tmp_path / "db", other)


def test_damaged_state_record_is_refused(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 2, M1, 900_000, "a")
    with ChainStore(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            store.submit_block(block)
    db = plyvel.DB(str(tmp_path / "db"))
    key, value = next(iter(db.iterator(prefix=b"Sa")))
    db.put(key, value[:-1] + bytes([value[-1] ^ 1]))
    db.close()
    with pytest.raises(StoreError, match="state checksum does not match"):
        ChainStore(tmp_path / "db", PARAMS)


def test_damaged_height_index_is_refused(tmp_path):
    chain = MemoryChain(PARAMS)
    blocks = build_branch(chain, 2, M1, 900_000, "a")
    with ChainStore(tmp_path / "db", PARAMS) as store:
        for block in blocks:
            store.submit_block(block)
    db = plyvel.DB(str(tmp_path / "db"))
    db.delete(b"H" + (2).to_bytes(8, "big"))
    db.close()
    with pytest.raises(StoreError, match="height index does not end at the tip"):
        ChainStore(tmp_path / "db", PARAMS)


def test_garbage_files_are_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "db"
    ChainStore(path, PARAMS).close()
    for f in path.iterdir():
        if f.name.startswith("MANIFEST"):
            f.write_bytes(os.urandom(200))
    with pytest.raises(StoreError, match="corrupted|cannot open"):
        ChainStore(path, PARAMS)


def test_second_opener_gets_a_clear_message(tmp_path):
    with ChainStore(tmp_path / "db", PARAMS):
        with pytest.raises(StoreError, match="another pouw node"):
            ChainStore(tmp_path / "db", PARAMS)


KILL_WORKER = r"""
import sys
from pathlib import Path
from pouw.encoding import decode
from pouw.types import Block
from pouw.store import ChainStore
from consensus.fixtures import make_test_params
params = make_test_params("alice", "bob")
blocks = [decode(Block, bytes.fromhex(line)) for line in Path(sys.argv[2]).read_text().split()]
store = ChainStore(sys.argv[1], params)
for block in blocks:
    store.add_block(block)
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
    with ChainStore(tmp_path / "ref", PARAMS) as ref:
        dumps[ref.tip_hash] = ref.state_dump()
        for block in blocks:
            ref.submit_block(block)
            dumps[block.hash] = ref.state_dump()
    listing = tmp_path / "blocks.txt"
    listing.write_text("\n".join(encode(b).hex() for b in blocks))
    rng = random.Random(7)
    db = tmp_path / "db"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", KILL_WORKER, str(db), str(listing)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.01, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with ChainStore(db, PARAMS) as store:
            assert store.tip_hash in dumps
            assert store.state_dump() == dumps[store.tip_hash]
