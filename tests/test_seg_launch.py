"""Several devices, one model: the miner's own DDP launcher, from `parse_devices` to a verified block.

CPU processes stand in for GPUs (gloo instead of NCCL); the checkpoints,
seeds and positions are the same, and a one-process replay must verify a
two-process run.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time

import pytest
from click.testing import CliRunner

from pouw.blobstore import BlobStore
from pouw.seg.dice import evaluate
from pouw.seg.launch import parse_devices, train_on_devices
from pouw.seg.train import DeadlineError, TrainError
from pouw.seg.verify import REPLAY_TOLERANCE, spot_check, verify_work

from tests.seg_fixtures import SEED, small_data, small_spec, small_train_spec


def test_parse_devices():
    assert parse_devices("cpu", cuda_count=0) == ("cpu",)
    assert parse_devices("cpu,cpu", cuda_count=0) == ("cpu", "cpu")
    assert parse_devices("cuda:0, cuda:1", cuda_count=2) == ("cuda:0", "cuda:1")
    assert parse_devices("all", cuda_count=3) == ("cuda:0", "cuda:1", "cuda:2")
    for bad, match in [("all", "no CUDA"), ("cuda:2", "not available"), ("gpu", "not a device"),
                       ("cpu,cuda:0", "all CPU or all CUDA"), ("cuda:0,cuda:0", "twice")]:
        with pytest.raises(ValueError, match=match):
            parse_devices(bad, cuda_count=1 if "cuda:0" in bad else 0)


def _no_ranks_left():
    return not [p for p in multiprocessing.active_children() if p.name.startswith("pouw-train-rank")]


@pytest.mark.slow
def test_two_processes_train_one_model_that_one_process_verifies(tmp_path):
    spec, tspec = small_spec(), small_train_spec(epochs=3)
    train_ds, test_ds = small_data(spec)
    store = BlobStore(tmp_path / "store")
    r = train_on_devices(("cpu", "cpu"), spec, tspec, train_ds, SEED, time.time() + 120, store, progress=False,
                         num_threads=2)
    assert _no_ranks_left()
    assert r.world_size == 2 and r.stop_reason == "max_epochs" and r.checkpoint_positions == (0, 2, 4, 6)
    assert len(r.update_norms) == 3
    store.put_bytes(r.model_file)
    distances = [spot_check(store, r.checkpoint_digests, i, train_ds) for i in range(1, 4)]
    assert max(distances) <= REPLAY_TOLERANCE
    dice = evaluate(r.model_file, spec, test_ds).dice_ppm
    report = verify_work(model_spec=spec, train_spec=tspec, model_digest=r.model_digest,
                         checkpoint_digests=r.checkpoint_digests, claimed_dice_ppm=dice, blob_store=store,
                         test_dataset=test_ds, train_dataset=train_ds, spot_check_seed=b"\x01" * 32, train_seed=SEED)
    assert report.segments == 3


class _DiesOnArrival:
    """Unpickles into an immediate exit: a rank that dies without a word (as when the OS kills it)."""

    def __reduce__(self):
        return (os._exit, (3,))


@pytest.mark.slow
def test_rank_failures_surface_and_every_rank_is_reaped(tmp_path):
    spec, tspec = small_spec(), small_train_spec()
    train_ds, _ = small_data(spec)
    store = BlobStore(tmp_path / "store")
    with pytest.raises(TrainError, match=r"rank [01] \(pouw-train-rank[01]\) failed: .*precision must be"):
        train_on_devices(("cpu", "cpu"), spec, tspec, train_ds, SEED, time.time() + 60, store, progress=False,
                         precision="fp8")
    assert _no_ranks_left()
    with pytest.raises(DeadlineError, match="rank"):
        train_on_devices(("cpu", "cpu"), spec, tspec, train_ds, SEED, time.time() + 0.5, store, progress=False)
    assert _no_ranks_left()
    with pytest.raises(TrainError, match="exited with code 3 without a result"):
        train_on_devices(("cpu", "cpu"), spec, tspec, _DiesOnArrival(), SEED, time.time() + 60, store,
                         progress=False)
    assert _no_ranks_left()
    with pytest.raises(TrainError, match="multiple of the 3 devices"):
        train_on_devices(("cpu",) * 3, spec, tspec, train_ds, SEED, time.time() + 60, store, progress=False)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_miner_cli_devices_mines_a_block_a_full_node_verifies(tmp_path):
    """`pouw miner start --devices cpu,cpu` against a real full node: two training processes, one verified block."""
    from consensus.genesis import make_devnet_params
    from consensus.rules import compute_standing_seed
    from fullnode.config import NodeConfig
    from fullnode.node import FullNode
    from pouw.cli import main
    from pouw.seg.data import synthetic_dataset
    from pouw.keys import KeyPair

    params = make_devnet_params(int(time.time()) + 2, phase1_seconds=30, phase2_seconds=12)
    node = FullNode(NodeConfig(datadir=tmp_path / "node", params=params, rpc_port=0), log_fn=lambda m: None).start()
    try:
        seed = hashlib.sha256(b"devices-miner").digest()
        result = CliRunner().invoke(main, [
            "miner", "start", "--node", node.rpc.url, "--node-datadir", str(node.datadir), "--key-seed", seed.hex(),
            "--datadir", str(tmp_path / "miner"), "--devices", "cpu,cpu", "--threads", "2", "--once", "--json",
        ])
        assert result.exit_code == 0, result.output
        assert _no_ranks_left()
        events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
        assert [e for e in events if e["event"] == "claim"] and not [e for e in events if e["event"] == "error"]
        deadline = time.time() + 60
        while node.chain.tip_height < 1 and time.time() < deadline:
            time.sleep(0.2)
        block = node.chain.get_block_at(1)
        assert block is not None and block.header.miner == KeyPair.from_seed(seed).public_key
        # The node verified one segment; replay every one of them here, on one process.
        work = block.body.work
        miner_store = BlobStore(tmp_path / "miner" / "blobs")
        standing = params.standing_task
        train_set = synthetic_dataset(compute_standing_seed(block.header.prev_hash, "train"), standing.train_count,
                                      standing.model)
        from pouw.seg.checkpoints import load_checkpoint

        assert load_checkpoint(miner_store, work.checkpoint_digests[1]).world_size == 2
        for i in range(1, len(work.checkpoint_digests)):
            assert spot_check(miner_store, work.checkpoint_digests, i, train_set) <= REPLAY_TOLERANCE
    finally:
        node.stop()


def test_miner_cli_refuses_bad_device_options():
    from pouw.cli import main

    def start(*args):
        return CliRunner().invoke(main, ["miner", "start", "--key-seed", "00" * 32, *args])

    both = start("--device", "cpu", "--devices", "cpu,cpu")
    assert both.exit_code == 2 and "not both" in both.output
    bad = start("--devices", "gpu0")
    assert bad.exit_code == 2 and "not a device" in bad.output
    several = start("--device", "cpu,cpu")
    assert several.exit_code == 2 and "--devices" in several.output
    import torch

    if not torch.cuda.is_available():
        missing = start("--devices", "all")
        assert missing.exit_code == 1 and "no CUDA device" in missing.output
