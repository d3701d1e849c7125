"""Verification in worker processes: real blocks, a real chain store, real spawned workers.

The issue this answers: claims were verified one after another in the node's
own thread, and a long verification held up everything queued behind it. Now
the recomputation runs in a pool of processes, judgements (valid, invalid)
cross back intact, a worker that dies gives no judgement at all, and the node
keeps answering RPC while a block is being verified.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time

import pytest

from consensus.assemble import complete_block, make_block_template
from consensus.chainstate import BlockStatus, ChainState
from consensus.fixtures import make_keypair, make_test_params
from consensus.work import unpack_split
from fullnode.config import NodeConfig
from fullnode.fetch import BlobFetcher
from fullnode.node import FullNode
from fullnode.verification import WorkChecker
from pouw.blobstore import BlobStore
from pouw.rpc import RpcClient
from pouw.seg.data import load_dataset, write_synthetic_dataset_dir
from pouw.taskpack import pack_dataset

from realblocks import mine_standing_block
from tests.seg_fixtures import SEED, small_spec

pytestmark = pytest.mark.slow

MINER = make_keypair("pool-miner")
PARAMS = make_test_params("pool-miner")


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A real block for height 1 of a fresh chain, its blobs, and a copy that claims a Dice 0.2 too high."""
    tmp = tmp_path_factory.mktemp("pool")
    blobs = BlobStore(tmp / "blobs")
    with ChainState.open(tmp / "chain0", PARAMS) as chain:
        state = chain.state()
        block = mine_standing_block(state, PARAMS, MINER, blobs, "http://127.0.0.1:9/none", tmp / "work0", seconds=6)
        work = block.body.work
        lie = complete_block(make_block_template(state, PARAMS, ()), PARAMS, MINER, slot=block.header.slot,
                             timestamp=block.header.timestamp, commit=block.body.commit,
                             work=dataclasses.replace(work, dice_ppm=min(1_000_000, work.dice_ppm + 200_000)), task=None)
    return dict(tmp=tmp, blobs=blobs, block=block, lie=lie, now=block.header.timestamp + 1)


def make_checker(tmp, blobs, workers=1):
    return WorkChecker(PARAMS, blobs, BlobFetcher(blobs), tmp / "work", workers=workers)


def test_judgements_cross_back_from_the_worker_process(mined, tmp_path):
    checker = make_checker(tmp_path, mined["blobs"]).start()
    try:
        with ChainState.open(tmp_path / "chain", PARAMS) as chain:
            lie = chain.process_new_block(mined["lie"], mined["now"], checker)
            assert lie.status is BlockStatus.INVALID and "claimed Dice" in lie.reason
            honest = chain.process_new_block(mined["block"], mined["now"], checker)
            assert honest.status is BlockStatus.CONNECTED, honest.reason
        assert checker.verified == 1, "the honest block is counted as verified, the lie is not"
        assert checker._pool is not None and checker._pool._processes, "the work ran in a worker process"
    finally:
        checker.close()


def test_a_worker_killed_mid_check_gives_no_judgement(mined, tmp_path):
    checker = make_checker(tmp_path, mined["blobs"])
    try:
        with ChainState.open(tmp_path / "chain", PARAMS) as chain:
            results = []
            thread = threading.Thread(target=lambda: results.append(chain.process_new_block(mined["block"], mined["now"], checker)))
            thread.start()
            deadline = time.time() + 60
            while not (checker._pool and checker._pool._processes) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # inside the worker's import or its verification
            for process in list(checker._pool._processes.values()):
                process.kill()
            thread.join(120)
            assert results and results[0].status is BlockStatus.MISSING, results
            assert "worker" in results[0].reason
            assert chain.get_index(mined["block"].hash) is None and mined["block"].hash not in chain._invalid
            # The next check starts a new pool and judges the block.
            again = chain.process_new_block(mined["block"], mined["now"], checker)
            assert again.status is BlockStatus.CONNECTED, again.reason
    finally:
        checker.close()


def test_rpc_answers_within_a_second_while_a_block_is_verified(mined, tmp_path):
    datadir = tmp_path / "node"
    node = FullNode(NodeConfig(datadir=datadir, params=PARAMS, verify_workers=1))
    copy_blobs(mined["blobs"], node.blobs)
    node.start()
    try:
        rpc = RpcClient(node.rpc.url, datadir=datadir, timeout=10)
        result = []
        worker = threading.Thread(target=lambda: result.append(node.core.process_block(mined["block"], mined["now"])))
        started = time.monotonic()
        worker.start()
        slowest, calls = 0.0, 0
        while worker.is_alive():
            t0 = time.monotonic()
            rpc.call("getinfo")
            slowest = max(slowest, time.monotonic() - t0)
            calls += 1
            time.sleep(0.05)
        took = time.monotonic() - started
        assert result and result[0].status is BlockStatus.CONNECTED, result
        assert took > 1.0 and calls > 5, f"the verification was too short to show anything ({took:.1f} s)"
        assert slowest < 1.0, f"an RPC call took {slowest:.2f} s while a block was verified"
        assert rpc.call("getinfo")["height"] == 1
    finally:
        node.stop()
    assert all(not p.is_alive() for p in multiprocessing.active_children() if p.name.startswith("SpawnProcess"))


def copy_blobs(source: BlobStore, target: BlobStore) -> None:
    for path in source.blob_dir.rglob("*"):
        if path.is_file():
            target.put_bytes(path.read_bytes())


def unpack_in_process(blob_path, key, folder, out):
    try:
        unpack_split(blob_path, key, folder, "train")
        out.put(sorted(p.name for p in folder.rglob("*") if p.is_file()))
    except Exception as exc:  # reported to the test
        out.put(repr(exc))


def test_a_split_unpacked_by_several_processes_at_once_is_whole(tmp_path):
    """Workers share the work folder: concurrent unpacks of one split all end with the whole split, no scratch left."""
    source = write_synthetic_dataset_dir(tmp_path / "ds", SEED, 6, 2, small_spec(), suffix=".nii.gz")
    packed = pack_dataset(source, tmp_path / "out", tmp_path / "keys")
    folder = tmp_path / "work" / "task-train"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=unpack_in_process, args=(packed.train.path, packed.train.key, folder, out)) for _ in range(3)]
    for p in procs:
        p.start()
    answers = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(a == answers[0] for a in answers) and isinstance(answers[0], list), answers
    assert len(load_dataset(folder, "train", small_spec())) == 6
    assert [p.name for p in folder.parent.iterdir()] == ["task-train"], "no scratch folder is left behind"
