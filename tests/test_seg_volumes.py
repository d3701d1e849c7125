"""Real-format 3D tasks end to end: NIfTI volumes of different sizes, patch training, sliding-window Dice.

unet3d and the 3D FCN are trained through the miner's own function
(`pouw.seg.launch.train_on_devices`), then `verify_work` accepts the claim
and refuses tampered versions of it.
"""

from __future__ import annotations

import dataclasses
import time

import msgpack
import nibabel as nib
import numpy as np
import pytest
import torch

from pouw.blobstore import BlobStore
from pouw.seg.data import VolumeDataset, load_dataset
from pouw.seg.dice import evaluate
from pouw.seg.launch import train_on_devices
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.verify import WorkInvalid, verify_work
from pouw.seg.checkpoints import load_checkpoint, put_checkpoint
from pouw.seg.weights import Checkpoint, decode_model, encode_model, split_checkpoint

SEED = bytes(range(32))
SHAPES = [(20, 18, 22), (24, 16, 20), (18, 22, 16), (22, 20, 18), (16, 24, 20), (20, 20, 20), (26, 18, 16), (18, 16, 24)]


def write_nifti_task(root, rng: np.random.Generator):
    """An MSD-layout folder of small volumes: a bright ball (label 1) in noise, each volume its own size."""
    import json

    for split, names in (("Tr", range(6)), ("Ts", range(6, 8))):
        (root / f"images{split}").mkdir(parents=True, exist_ok=True)
        (root / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in names:
            shape = SHAPES[i]
            grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
            centre = np.array([rng.integers(5, s - 5) for s in shape]).reshape(3, 1, 1, 1)
            label = (np.sqrt(((grid - centre) ** 2).sum(0)) < rng.uniform(3, 5)).astype(np.uint8)
            image = (200 * label + rng.normal(100, 30, size=shape)).astype(np.int16)  # CT-like integers
            affine = np.diag([1.5, 1.5, 2.0, 1.0])
            nib.save(nib.Nifti1Image(image, affine), str(root / f"images{split}" / f"case{i:03d}.nii.gz"))
            nib.save(nib.Nifti1Image(label, affine), str(root / f"labels{split}" / f"case{i:03d}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"name": "balls", "modality": {"0": "CT"},
                                                   "labels": {"0": "background", "1": "ball"}}))
    return root


@pytest.fixture(scope="module")
def nifti_task(tmp_path_factory):
    return write_nifti_task(tmp_path_factory.mktemp("balls"), np.random.default_rng(11))


def _claim(tmp_path, nifti_task, arch):
    spec = ModelSpec(arch, 1, 2, 4, (16, 16, 16), preprocess="patch")
    tspec = TrainSpec(0.01, 2, "dicece", "adam", 4)
    train_set = load_dataset(nifti_task, "train", spec)
    test_set = load_dataset(nifti_task, "test", spec)
    assert isinstance(train_set, VolumeDataset) and train_set.get_shape(1) == (24, 16, 20)
    store = BlobStore(tmp_path / "store")
    r = train_on_devices(("cpu",), spec, tspec, train_set, SEED, time.time() + 300, store, progress=False,
                         num_threads=2)
    store.put_bytes(r.model_file)
    dice = evaluate(r.model_file, spec, test_set)
    kw = dict(model_spec=spec, train_spec=tspec, model_digest=r.model_digest, checkpoint_digests=r.checkpoint_digests,
              claimed_dice_ppm=dice.dice_ppm, blob_store=store, test_dataset=test_set, train_dataset=train_set,
              train_seed=SEED)
    return r, kw


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet3d", "fcn"])
def test_3d_task_trained_claimed_and_verified(tmp_path, nifti_task, arch):
    r, kw = _claim(tmp_path, nifti_task, arch)
    n = len(r.checkpoint_digests) - 1
    assert r.stop_reason == "max_epochs" and r.steps == 12 and n == 4
    for seed in (bytes([i]) * 32 for i in range(6)):  # several spot-checked segments
        report = verify_work(**kw, spot_check_seed=seed)
        assert report.dice.dice_ppm == kw["claimed_dice_ppm"]
    # The publisher's overlays work on whole volumes (middle slice).
    from pouw.seg.report import write_prediction_overlays

    pngs = write_prediction_overlays(tmp_path / "overlays", r.model_file, kw["model_spec"], kw["test_dataset"])
    assert len(pngs) == 2 and all(p.stat().st_size > 0 for p in pngs)

    # Tampered: a better Dice than the model has.
    with pytest.raises(WorkInvalid, match="claimed Dice"):
        verify_work(**{**kw, "claimed_dice_ppm": kw["claimed_dice_ppm"] + 5_000}, spot_check_seed=b"\x00" * 32)
    # Tampered: one segment's weights nudged, the chain re-linked and re-hashed.
    store, spec = kw["blob_store"], kw["model_spec"]
    cks = [load_checkpoint(store, d) for d in r.checkpoint_digests]
    torch.manual_seed(1)
    nudged = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v
              for k, v in decode_model(cks[2].model_file, spec).items()}
    cks[2] = dataclasses.replace(cks[2], model_file=encode_model(nudged, spec))
    digests = []
    for i, ck in enumerate(cks):
        ck = dataclasses.replace(ck, prev_digest=digests[-1] if digests else ck.prev_digest)
        digests.append(put_checkpoint(store, ck))
    from pouw.seg.verify import compute_spot_check_segment

    seed = next(bytes([i]) * 32 for i in range(256) if compute_spot_check_segment(bytes([i]) * 32, n) == 2)
    with pytest.raises(WorkInvalid, match="spot check of segment 2"):
        verify_work(**{**kw, "checkpoint_digests": tuple(digests)}, spot_check_seed=seed)
    # Tampered: trained on other data than the task's (the verifier's own copy decides).
    other = load_dataset(nifti_task, "test", spec)
    with pytest.raises(WorkInvalid, match="other data"):
        verify_work(**{**kw, "train_dataset": other}, spot_check_seed=b"\x00" * 32)


def test_checkpoint_format_is_version_3(tmp_path):
    ck = Checkpoint(0, 0, bytes(32), SEED, ModelSpec("fcn", 1, 2, 4, (16, 16, 16), "patch"),
                    TrainSpec(0.01, 2, "dice", "adam", 1), bytes(32), 1, "bf16", 0.0, b"m", {})
    store = BlobStore(tmp_path)
    header, parts = split_checkpoint(ck)
    assert msgpack.unpackb(header)[:2] == ["pouw-ckpt", 3] and parts == [b"m"]
    assert load_checkpoint(store, put_checkpoint(store, ck)) == ck
