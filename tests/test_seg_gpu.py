"""The CUDA path: mixed-precision training, and a CPU verifier accepting the GPU-trained work."""

from __future__ import annotations

import time

import pytest
import torch
from seg_fixtures import small_data, small_spec, small_train_spec

from pouw.blobstore import BlobStore
from pouw.seg.dice import evaluate
from pouw.seg.train import train
from pouw.seg.verify import verify_work

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_cuda_mixed_precision_training_verifies_on_cpu(tmp_path):
    spec, tspec = small_spec(), small_train_spec(epochs=4)
    train_set, test_set = small_data(spec)
    store = BlobStore(tmp_path / "blobs")
    seed = b"\x07" * 32
    result = train(spec, tspec, train_set, seed, time.time() + 120, store, device="cuda:0", progress=False)
    assert result.device.startswith("cuda") and result.epochs == 4
    store.put_bytes(result.model_file)
    dice = evaluate(result.model_file, spec, test_set).dice_ppm
    report = verify_work(
        model_spec=spec, train_spec=tspec, model_digest=result.model_digest,
        checkpoint_digests=result.checkpoint_digests, claimed_dice_ppm=dice, blob_store=store,
        test_dataset=test_set, train_dataset=train_set, spot_check_seed=b"\x09" * 32, train_seed=seed,
    )
    assert report.epochs == 4
