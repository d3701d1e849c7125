"""The CUDA path: training a CPU verifier replays within the tolerance, and DDP over NCCL.

Skipped with a reason where no CUDA device exists; the CPU-side simulation of
every effect (threads, DDP, bf16) is benchmarks/bench_replay_tolerance.py.
"""

from __future__ import annotations

import time

import pytest
import torch

from pouw.blobstore import BlobStore
from pouw.seg.dice import evaluate
from pouw.seg.launch import train_on_devices
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.train import train
from pouw.seg.verify import REPLAY_TOLERANCE, spot_check, verify_work

from tests.seg_fixtures import small_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def _replay_distances(store, result, train_set):
    return [spot_check(store, result.checkpoint_digests, i, train_set, device="cpu")
            for i in range(1, len(result.checkpoint_digests))]


@pytest.mark.parametrize("arch", ["unet2d", "fcn"])
def test_cuda_training_replays_on_cpu_every_segment(tmp_path, arch):
    spec = ModelSpec(arch, 1, 2, 16, (64, 64))
    tspec = TrainSpec(0.01, 8, "dicece", "adam", 8)
    train_set, test_set = small_data(spec, n_train=64, n_test=8)
    store = BlobStore(tmp_path / "blobs")
    seed = b"\x07" * 32
    result = train(spec, tspec, train_set, seed, time.time() + 300, store, device="cuda:0", progress=False)
    assert result.device.startswith("cuda") and result.precision == "fp32" and result.epochs == 8
    distances = _replay_distances(store, result, train_set)
    print(f"{arch}: CUDA fp32 -> CPU fp32 replay distances: max {max(distances):.4f}, all {distances}")
    assert max(distances) <= REPLAY_TOLERANCE
    # For the record (no assertion): how far bf16 autocast on this GPU lands (docs/useful_work.md §7).
    mixed = train(spec, tspec, train_set, seed, time.time() + 300, BlobStore(tmp_path / "bf16"), device="cuda:0",
                  progress=False, precision="bf16")
    print(f"{arch}: CUDA bf16 -> CPU fp32 replay distances: {_replay_distances(BlobStore(tmp_path / 'bf16'), mixed, train_set)}")
    store.put_bytes(result.model_file)
    dice = evaluate(result.model_file, spec, test_set).dice_ppm
    report = verify_work(
        model_spec=spec, train_spec=tspec, model_digest=result.model_digest,
        checkpoint_digests=result.checkpoint_digests, claimed_dice_ppm=dice, blob_store=store,
        test_dataset=test_set, train_dataset=train_set, spot_check_seed=b"\x09" * 32, train_seed=seed,
    )
    assert report.segments == 8
    # A full node with a GPU may replay on it; its Dice is not bit-identical to the CPU's (printed, for --verify-device).
    on_gpu = [spot_check(store, result.checkpoint_digests, i, train_set, device="cuda:0") for i in (1, 8)]
    assert max(on_gpu) <= REPLAY_TOLERANCE
    print(f"{arch}: Dice on CPU {dice} ppm, on GPU {evaluate(result.model_file, spec, test_set, device='cuda:0').dice_ppm} ppm")


def test_nccl_process_group_trains_what_one_cpu_process_verifies(tmp_path):
    """NCCL through the miner's launcher: every GPU of this machine, or a one-rank group on a one-GPU machine."""
    devices = tuple(f"cuda:{i}" for i in range(min(2, torch.cuda.device_count())))
    spec = ModelSpec("unet3d", 1, 2, 8, (32, 32, 32))
    tspec = TrainSpec(0.01, 2 * len(devices), "dice", "adam", 3)
    train_set, _ = small_data(spec, n_train=8)
    store = BlobStore(tmp_path / "blobs")
    result = train_on_devices(devices, spec, tspec, train_set, b"\x08" * 32, time.time() + 300, store,
                              progress=False, process_group=True)
    assert result.world_size == len(devices)
    distances = [spot_check(store, result.checkpoint_digests, i, train_set)
                 for i in range(1, len(result.checkpoint_digests))]
    assert max(distances) <= REPLAY_TOLERANCE
