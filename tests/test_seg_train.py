import os
import time

import pytest
import torch

from pouw.blobstore import BlobStore
from pouw.seg.data import SegDataset
from pouw.seg.determinism import compute_batches, compute_epoch_order
from pouw.seg.dice import DICE_TOLERANCE_PPM, compute_ppm, evaluate
from pouw.seg.train import DeadlineError, TrainError, train
from pouw.seg.weights import ZERO_DIGEST, decode_checkpoint

from tests.seg_fixtures import SEED, run_small_training, small_data, small_spec, small_train_spec


def test_training_is_deterministic_and_checkpoints_every_epoch(tmp_path):
    spec, tspec, train_ds, test_ds, store, r1 = run_small_training(tmp_path / "a")
    *_, r2 = run_small_training(tmp_path / "b")
    *_, r3 = run_small_training(tmp_path / "c", seed=b"\x01" * 32)
    assert r1.epochs == 3 and r1.stop_reason == "max_epochs"
    assert r1.checkpoint_digests == r2.checkpoint_digests and r1.model_digest == r2.model_digest
    assert r3.checkpoint_digests[0] != r1.checkpoint_digests[0] and r3.model_digest != r1.model_digest
    assert len(r1.checkpoint_digests) == 4
    prev = ZERO_DIGEST
    for i, d in enumerate(r1.checkpoint_digests):
        assert store.verify(d)
        ck = decode_checkpoint(store.get_bytes(d))
        assert ck.epoch == i and ck.prev_digest == prev and ck.seed == SEED and ck.world_size == 1
        prev = d
    assert ck.model_digest == r1.model_digest
    assert all(l > 0 for l in r1.epoch_losses)
    d1 = evaluate(r1.model_file, spec, test_ds)
    d2 = evaluate(r2.model_file, spec, test_ds)
    assert d1 == d2 and len(d1.per_image) == len(test_ds)


def test_seed_derivation():
    o = compute_epoch_order(SEED, 1, 10)
    assert sorted(o) == list(range(10)) and o == compute_epoch_order(SEED, 1, 10) != compute_epoch_order(SEED, 2, 10)
    assert compute_batches(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert compute_batches([0, 1], 4) == [[0, 1]]


def test_deadline_already_past(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    with pytest.raises(DeadlineError, match="already past"):
        train(spec, small_train_spec(), ds, SEED, time.time() - 1, BlobStore(tmp_path), progress=False)


def test_deadline_budget_stops_in_time(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    deadline = time.time() + 3.0
    r = train(spec, small_train_spec(epochs=100_000), ds, SEED, deadline, BlobStore(tmp_path), progress=False)
    # Never past the deadline by more than one batch (tiny here).
    assert time.time() <= deadline + 0.5
    assert r.stop_reason == "deadline" and 1 <= r.epochs < 100_000
    assert len(r.checkpoint_digests) == r.epochs + 1 and r.planned_epochs >= 1


def test_non_finite_loss_is_a_clear_error(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    huge = SegDataset(ds.images / ds.images.abs().max() * 3e38, ds.labels, ds.names, ds.num_classes)  # overflows in the first conv
    with pytest.raises(TrainError, match="non-finite loss"):
        train(spec, small_train_spec(), huge, SEED, time.time() + 60, BlobStore(tmp_path), progress=False)


def test_bad_inputs(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    with pytest.raises(ValueError, match="32 bytes"):
        train(spec, small_train_spec(), ds, b"short", time.time() + 60, BlobStore(tmp_path), progress=False)
    with pytest.raises(TrainError, match="patch"):
        train(small_spec(patch=(64, 64)), small_train_spec(), ds, SEED, time.time() + 60, BlobStore(tmp_path),
              progress=False)


def test_dice_ppm_encoding():
    assert compute_ppm(0.5) == 500_000 and compute_ppm(1.0) == 1_000_000 and compute_ppm(0.0000005) == 0
    with pytest.raises(ValueError):
        compute_ppm(1.5)
    assert DICE_TOLERANCE_PPM == 1000


def _ddp_worker(rank, world, port, root, result_path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        spec = small_spec()
        ds, _ = small_data(spec)
        r = train(spec, small_train_spec(epochs=2), ds, SEED, time.time() + 120, BlobStore(root), progress=False)
        if rank == 0:
            torch.save({"digests": list(r.checkpoint_digests), "world": r.world_size}, result_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_workers_replays_on_one(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from pouw.seg.verify import spot_check

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "store"), str(tmp_path / "r.pt")), nprocs=2, join=True)
    res = torch.load(tmp_path / "r.pt")
    assert res["world"] == 2 and len(res["digests"]) == 3
    store = BlobStore(tmp_path / "store")
    spec = small_spec()
    ds, _ = small_data(spec)
    # A single-process verifier replays a 2-worker epoch within tolerance.
    assert spot_check(store, res["digests"], 2, ds) < 0.05
