"""Known answers: values every node must compute the same, pinned as literals.

A failing test here is a consensus change: nodes built from this code would
fork from nodes built from the code that pinned the value. Such a change
must be deliberate and versioned (a new domain tag, a new network, a note in
docs/protocol.md), never the side effect of a refactor or a dependency
upgrade. Do not update a pin to make a test pass without that decision.

One test per pinned value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from functools import lru_cache

import pytest

from consensus.genesis import make_devnet_params, make_main_params
from pouw.blobstore import BlobStore
from pouw.seg import synthetic
from pouw.seg.data import SegDataset, compute_dataset_digest, synthetic_dataset
from pouw.seg.dice import DICE_TOLERANCE_PPM, evaluate
from pouw.seg.spec import ModelSpec
from pouw.seg.train import init_model, train
from pouw.seg.weights import encode_model

SEED = bytes(range(32))
"""The fixed 32-byte seed every pin below is computed from."""

# -- synthetic data of the standing task (pouw.seg.synthetic, "pouw/synthetic/v2") ---------

SYNTHETIC_WORDS = (0x2F52B210B7203C66, 0xCA4335CA2F6AFC35, 0xF71CD6B87C9B39A8, 0x2083AE6A7A44FB80)
"""compute_words(SEED, index 0, scene stream, 4): the first block of the generator's RNG."""

DEVNET = make_devnet_params(genesis_time=0).standing_task
MAIN = make_main_params().standing_task
DATASETS = {
    # name: (spec, cases): the standing tasks' training sets, and a small multi-channel 3D one.
    "devnet": (DEVNET.model, DEVNET.train_count),
    "main": (MAIN.model, MAIN.train_count),
    "3d": (ModelSpec("unet3d", 2, 3, 4, (16, 16, 24)), 4),
}
DATASET_PINS = {
    # (name, what): hex; images = SHA-256 of the float32 (N, C, *patch) bytes, labels = of the int64 (N, 1, *patch) bytes.
    ("devnet", "images"): "9b2f9c103aae9d7a95b0968b4053e36622c9d9c4ca6fb24ff8a69580b42ec434",
    ("devnet", "labels"): "26ed7d2d0aa4852dfaa639ab9ee2d5581da411f251a49e05560bbcdc99a12e23",
    ("devnet", "dataset_digest"): "58ba9c7e864fe97b5ee8af0b391192aa28f73a79a9bf89a0c51cb662902ca213",
    ("main", "images"): "d2898501e315699562c19c13667624f93730ae91054843deb8e5a244aa9e76b0",
    ("main", "labels"): "1182bbf9802b07eb4f518f3cfff6fa16cd86a77a39bf42c0eb7120374c74bf25",
    ("main", "dataset_digest"): "cd95b01063dc9b544d82c4f24357ef006ae0dcb9105feda0ed3314af0d75cd38",
    ("3d", "images"): "161d0345ae2452978cda2c293c0d913b5834ded0c8160dc4d3cd3d0e65e7d592",
    ("3d", "labels"): "a0a097a032b7a6c643e6765335435ca81e2eb85ba881e7a99443f24372dc673f",
    ("3d", "dataset_digest"): "438f650f5bf4cd42691b324498f0c5cc84de153738def764c31943b03ff27a05",
}


@lru_cache(maxsize=None)
def get_dataset(name: str) -> SegDataset:
    spec, count = DATASETS[name]
    return synthetic_dataset(SEED, count, spec)


def compute_pinned(name: str, what: str) -> str:
    ds = get_dataset(name)
    if what == "images":
        return hashlib.sha256(ds.images.numpy().tobytes()).hexdigest()
    if what == "labels":
        return hashlib.sha256(ds.labels.numpy().tobytes()).hexdigest()
    return compute_dataset_digest(ds).hex()


def test_synthetic_rng_first_words():
    assert tuple(int(w) for w in synthetic.compute_words(SEED, 0, synthetic.STREAM_SCENE, 4)) == SYNTHETIC_WORDS


@pytest.mark.parametrize("name, what", list(DATASET_PINS), ids=[f"{n}-{w}" for n, w in DATASET_PINS])
def test_standing_dataset(name, what):
    assert compute_pinned(name, what) == DATASET_PINS[(name, what)]


# -- Dice of a fixed model on fixed data (pouw.seg.dice.evaluate) ---------------------------
# Verifiers accept a claim within DICE_TOLERANCE_PPM of their own figure, so a
# pin holds to that tolerance: a drift inside it cannot split nodes, one
# beyond it would. On one platform the figure is exact.

DICE_INITIAL_PPM = 165_885
"""Devnet standing model, initial weights init_model(spec, SEED), on 16 test cases of seed SEED + b"/test"."""
DICE_TRAINED_PPM = 630_043
"""The same after 3 epochs of the real trainer (1 thread) on 32 cases of seed SEED + b"/train"."""


@lru_cache(maxsize=None)
def get_dice_data() -> tuple[SegDataset, SegDataset]:
    return synthetic_dataset(SEED + b"/train", 32, DEVNET.model), synthetic_dataset(SEED + b"/test", 16, DEVNET.model)


def test_dice_of_initial_weights():
    _, test_set = get_dice_data()
    model_file = encode_model(init_model(DEVNET.model, SEED), DEVNET.model)
    measured = evaluate(model_file, DEVNET.model, test_set).dice_ppm
    assert abs(measured - DICE_INITIAL_PPM) <= DICE_TOLERANCE_PPM, measured


def test_dice_after_three_epochs(tmp_path):
    train_set, test_set = get_dice_data()
    tspec = dataclasses.replace(DEVNET.train, max_epochs=3)
    r = train(DEVNET.model, tspec, train_set, SEED, time.time() + 600, BlobStore(tmp_path), progress=False, num_threads=1)
    assert r.epochs == 3
    measured = evaluate(r.model_file, DEVNET.model, test_set).dice_ppm
    assert abs(measured - DICE_TRAINED_PPM) <= DICE_TOLERANCE_PPM, measured
