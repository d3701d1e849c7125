import json
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

from pouw.seg.data import (
    CACHE_DIR_NAME, DataError, SegDataset, VolumeDataset, compute_cropped, compute_dataset_digest, compute_normalised,
    load_dataset, synthetic_dataset, validate_dataset_dir, write_dataset_dir, write_synthetic_dataset_dir,
)
from pouw.seg.spec import ModelSpec

from tests.seg_fixtures import SEED, small_spec


def test_synthetic_is_deterministic_and_valid():
    spec = small_spec(classes=3)
    a = synthetic_dataset(SEED, 4, spec)
    b = synthetic_dataset(SEED, 4, spec)
    c = synthetic_dataset(b"other", 4, spec)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (4, 1, 32, 32) and set(a.labels.unique().tolist()) <= {0, 1, 2}
    assert compute_dataset_digest(a) == compute_dataset_digest(b) != compute_dataset_digest(c)
    # per-image normalisation
    assert abs(float(a.images[0].mean())) < 1e-4 and abs(float(a.images[0].std(unbiased=False)) - 1) < 1e-3


def test_synthetic_3d_and_multichannel():
    spec = ModelSpec("unet3d", 2, 2, 4, (16, 16, 16))
    ds = synthetic_dataset(SEED, 2, spec)
    assert ds.images.shape == (2, 2, 16, 16, 16) and ds.labels.shape == (2, 1, 16, 16, 16)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".png", ".tif"])
def test_2d_formats_load(tmp_path, suffix):
    spec = small_spec()
    d = write_synthetic_dataset_dir(tmp_path / "ds", SEED, 3, 2, spec, suffix=suffix)
    tr = load_dataset(d, "train", spec)
    te = load_dataset(d, "test", spec)
    assert tr.names == ("train_000", "train_001", "train_002") and len(te) == 2
    assert tr.labels.max() == 1


def test_3d_nifti_resize_and_crop(tmp_path):
    raw = ModelSpec("unet3d", 1, 2, 4, (24, 24, 24))
    d = write_synthetic_dataset_dir(tmp_path / "ds", SEED, 2, 1, raw, suffix=".nii.gz")
    for mode in ("resize", "crop"):
        spec = ModelSpec("unet3d", 1, 2, 4, (16, 16, 32), preprocess=mode)
        ds = load_dataset(d, "train", spec)
        assert ds.images.shape == (2, 1, 16, 16, 32) and ds.labels.dtype == torch.uint8


def test_crop_pads_with_background():
    img = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    lab = np.ones((4, 6), dtype=np.int64)
    ci, cl = compute_cropped(img, lab, (8, 2))
    assert ci.shape == (2, 8, 2) and cl.shape == (8, 2)
    assert cl[0].sum() == 0 and cl[2:6].all() and np.array_equal(ci[0, 2:6], img[0, :, 2:4])


def test_normalise_flat_channel():
    out = compute_normalised(np.full((1, 4, 4), 7.0))
    assert np.all(out == 0)


def test_msd_lists_and_nnunet_channel_files(tmp_path):
    spec = ModelSpec("unet2d", 2, 2, 4, (32, 32))
    rng = np.random.default_rng(0)
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    training = []
    for i in range(2):
        for c in range(2):  # nnU-Net style channel files
            nib.save(nib.Nifti1Image(rng.normal(size=(32, 32)).astype(np.float32), np.eye(4)),
                     str(root / "imagesTr" / f"case{i}_{c:04d}.nii.gz"))
        nib.save(nib.Nifti1Image((rng.random((32, 32)) > 0.5).astype(np.uint8), np.eye(4)),
                 str(root / "labelsTr" / f"case{i}.nii.gz"))
        training.append({"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/case{i}.nii.gz"})
    # MSD multi-channel single file (H, W, C) in the test split, listed as plain names
    nib.save(nib.Nifti1Image(rng.normal(size=(32, 32, 2)).astype(np.float32), np.eye(4)),
             str(root / "imagesTs" / "t0.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(root / "labelsTs" / "t0.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({
        "modality": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1},
        "training": training, "test": ["./imagesTs/t0.nii.gz"]}))
    tr = load_dataset(root, "train", spec)
    te = load_dataset(root, "test", spec)
    assert tr.images.shape == (2, 2, 32, 32) and te.images.shape == (1, 2, 32, 32)
    validate_dataset_dir(root)


@pytest.fixture()
def ds_dir(tmp_path):
    return write_synthetic_dataset_dir(tmp_path / "ds", SEED, 3, 2, small_spec(), suffix=".nii.gz")


def _save(path, arr):
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def test_error_missing_label(ds_dir):
    (ds_dir / "labelsTr" / "train_002.nii.gz").unlink()
    with pytest.raises(DataError, match="train_002.*missing|missing.*train_002"):
        load_dataset(ds_dir, "train", small_spec())


def test_error_missing_dataset_json(ds_dir):
    (ds_dir / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json is missing"):
        load_dataset(ds_dir, "train", small_spec())


def test_error_shape_mismatch(ds_dir):
    _save(ds_dir / "labelsTr" / "train_001.nii.gz", np.zeros((16, 32), np.uint8))
    with pytest.raises(DataError, match="train_001.*does not match"):
        load_dataset(ds_dir, "train", small_spec())


def test_error_labels_outside_classes(ds_dir):
    lab = np.zeros((32, 32), np.uint8)
    lab[3, 3] = 7
    _save(ds_dir / "labelsTs" / "test_000.nii.gz", lab)
    with pytest.raises(DataError, match=r"test_000.*label values 7 .*0\.\.1"):
        load_dataset(ds_dir, "test", small_spec())


def test_error_fractional_and_nan_labels(ds_dir):
    lab = np.zeros((32, 32), np.float32)
    lab[0, 0] = 0.5
    _save(ds_dir / "labelsTr" / "train_000.nii.gz", lab)
    with pytest.raises(DataError, match="non-integer"):
        load_dataset(ds_dir, "train", small_spec())
    img = np.zeros((32, 32), np.float32)
    img[1, 1] = np.nan
    _save(ds_dir / "labelsTr" / "train_000.nii.gz", np.zeros((32, 32), np.uint8))
    _save(ds_dir / "imagesTr" / "train_000.nii.gz", img)
    with pytest.raises(DataError, match="train_000.*NaN"):
        load_dataset(ds_dir, "train", small_spec())


def test_error_empty_split(ds_dir):
    for p in (ds_dir / "imagesTs").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="test split is empty"):
        load_dataset(ds_dir, "test", small_spec())


def test_error_corrupt_nifti(ds_dir):
    (ds_dir / "imagesTr" / "train_000.nii.gz").write_bytes(b"\x1f\x8b garbage that is not gzip")
    with pytest.raises(DataError, match="train_000.*cannot read"):
        load_dataset(ds_dir, "train", small_spec())


def test_error_wrong_dtype(ds_dir):
    _save(ds_dir / "imagesTr" / "train_000.nii.gz", np.zeros((32, 32), np.complex64))
    with pytest.raises(DataError, match="train_000.*data type"):
        load_dataset(ds_dir, "train", small_spec())


def test_error_spec_mismatch(ds_dir):
    with pytest.raises(DataError, match="classes"):
        load_dataset(ds_dir, "train", small_spec(classes=3))
    with pytest.raises(DataError, match="channel"):
        load_dataset(ds_dir, "train", ModelSpec("unet2d", 3, 2, 4, (32, 32)))


def test_error_bad_classes_json(ds_dir):
    meta = json.loads((ds_dir / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "2": "gap"}
    (ds_dir / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="0..K-1"):
        load_dataset(ds_dir, "train", small_spec())


def test_png_palette_labels_and_rgb(tmp_path):
    spec = ModelSpec("fcn", 3, 3, 4, (32, 32))
    rng = np.random.default_rng(1)
    cases = [(f"c{i}", rng.integers(0, 255, size=(3, 40, 40)).astype(np.uint8),
              rng.integers(0, 3, size=(40, 40))) for i in range(2)]
    d = write_dataset_dir(tmp_path / "rgb", cases, cases[:1], ["bg", "a", "b"], ["r", "g", "b"], suffix=".png")
    ds = load_dataset(d, "train", spec)
    assert ds.images.shape == (2, 3, 32, 32) and ds.labels.max() <= 2


def test_loaded_data_is_cached_on_disk_and_mapped(tmp_path):
    """A split is preprocessed once into .npy files and memory-mapped; labels are uint8, not int64."""
    spec = small_spec()
    d = write_synthetic_dataset_dir(tmp_path / "ds", SEED, 3, 2, spec, suffix=".nii.gz")
    a = load_dataset(d, "train", spec)
    [folder] = (d / CACHE_DIR_NAME).iterdir()
    assert a.source == folder and a.labels.dtype == torch.uint8 and a.labels.element_size() == 1
    assert isinstance(np.load(folder / "images.npy", mmap_mode="r"), np.memmap)
    stamp = (folder / "images.npy").stat().st_mtime_ns
    b = load_dataset(d, "train", spec)  # reopened, not rebuilt
    assert (folder / "images.npy").stat().st_mtime_ns == stamp
    assert torch.equal(a.images, b.images) and compute_dataset_digest(a) == compute_dataset_digest(b)
    # Pickling (how data reaches other training processes) names the cache instead of copying the arrays.
    assert len(pickle.dumps(a)) < 1000 and torch.equal(pickle.loads(pickle.dumps(a)).images, a.images)
    # A changed source file makes a new cache; the digest follows the data.
    _save(d / "imagesTr" / "train_000.nii.gz", np.ones((32, 32), np.float32))
    c = load_dataset(d, "train", spec)
    assert c.source != folder and compute_dataset_digest(c) != compute_dataset_digest(a)


def test_damaged_cache_is_rebuilt(tmp_path):
    spec = small_spec()
    d = write_synthetic_dataset_dir(tmp_path / "ds", SEED, 2, 1, spec, suffix=".nii.gz")
    a = load_dataset(d, "train", spec)
    digest, folder = compute_dataset_digest(a), a.source
    del a  # (never rewrite a mapped file in place: the cache only ever replaces whole folders)
    (folder / "images.npy").unlink()
    (folder / "images.npy").write_bytes(b"not numpy")
    b = load_dataset(d, "train", spec)
    assert compute_dataset_digest(b) == digest


def test_patch_task_keeps_whole_volumes(tmp_path):
    """preprocess="patch": volumes of any size stay whole (padded up to the patch), with their foreground."""
    rng = np.random.default_rng(3)
    shapes = [(20, 24, 28), (36, 12, 16)]
    cases = []
    for i, shape in enumerate(shapes):
        lab = np.zeros(shape, np.uint8)
        lab[4:9, 3:8, 2:6] = 1
        cases.append((f"v{i}", rng.normal(size=(1, *shape)).astype(np.float32), lab))
    d = write_dataset_dir(tmp_path / "vol", cases, cases[:1], ["bg", "organ"], suffix=".nii.gz")
    spec = ModelSpec("unet3d", 1, 2, 4, (16, 16, 16), preprocess="patch")
    ds = load_dataset(d, "train", spec)
    assert isinstance(ds, VolumeDataset) and len(ds) == 2
    assert ds.get_shape(0) == (20, 24, 28) and ds.get_shape(1) == (36, 16, 16)  # second padded to the patch
    image, label = ds.get_case(1)
    assert image.dtype == torch.float32 and label.dtype == torch.uint8 and label.shape == (1, 36, 16, 16)
    assert int(label.sum()) == 5 * 5 * 4 and len(ds.foreground[1]) == 5 * 5 * 4
    assert isinstance(ds.images[0], np.memmap)
    again = pickle.loads(pickle.dumps(ds))
    assert compute_dataset_digest(again) == compute_dataset_digest(ds)


def test_dataset_checks_labels_and_converts_them():
    images = torch.zeros(2, 1, 8, 8)
    ds = SegDataset(images, torch.ones(2, 1, 8, 8, dtype=torch.int64), ("a", "b"), 2)
    assert ds.labels.dtype == torch.uint8
    with pytest.raises(DataError, match="labels outside"):
        SegDataset(images, torch.full((2, 1, 8, 8), 2, dtype=torch.int64), ("a", "b"), 2)
    with pytest.raises(DataError, match="integer"):
        SegDataset(images, torch.zeros(2, 1, 8, 8), ("a", "b"), 2)
