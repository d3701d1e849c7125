"""Shared helpers for the useful-work tests (imported explicitly, not a conftest)."""

from __future__ import annotations

import time
from pathlib import Path

from pouw.blobstore import BlobStore
from pouw.seg.data import synthetic_dataset
from pouw.seg.spec import ModelSpec, TrainSpec

SEED = bytes(range(32))


def small_spec(arch: str = "unet2d", patch=(32, 32), classes: int = 2, filters: int = 4) -> ModelSpec:
    return ModelSpec(arch, 1, classes, filters, tuple(patch))


def small_train_spec(epochs: int = 3, batch: int = 4, lr: float = 1e-2, optimizer: str = "adam",
                     loss: str = "dice") -> TrainSpec:
    return TrainSpec(lr, batch, loss, optimizer, epochs)


def small_data(spec: ModelSpec, n_train: int = 8, n_test: int = 4):
    """Synthetic training and test sets of the spec's patch size."""
    return synthetic_dataset(b"train" + SEED, n_train, spec), synthetic_dataset(b"test" + SEED, n_test, spec)


def run_small_training(tmp_path: Path, spec: ModelSpec | None = None, tspec: TrainSpec | None = None,
                       seed: bytes = SEED, budget: float = 120.0, precision: str = "auto"):
    from pouw.seg.train import train

    spec = spec or small_spec()
    tspec = tspec or small_train_spec()
    train_ds, test_ds = small_data(spec)
    store = BlobStore(tmp_path / "store")
    result = train(spec, tspec, train_ds, seed, time.time() + budget, store, progress=False, precision=precision)
    return spec, tspec, train_ds, test_ds, store, result
