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
    # (name, what): hex; images = SHA-256 of the float32 (N, C, *patch) bytes, labels = of the int64 (N, 1, *patch) bytes,
    # dataset_digest = compute_dataset_digest ("pouw/dataset/v2", labels as uint8).
    ("devnet", "images"): "9b2f9c103aae9d7a95b0968b4053e36622c9d9c4ca6fb24ff8a69580b42ec434",
    ("devnet", "labels"): "26ed7d2d0aa4852dfaa639ab9ee2d5581da411f251a49e05560bbcdc99a12e23",
    ("devnet", "dataset_digest"): "3df328db3add84ebf0c8a8a6ef3cdc0d95d1654a6c16d8876d1b0ffa865e9b30",
    ("main", "images"): "d2898501e315699562c19c13667624f93730ae91054843deb8e5a244aa9e76b0",
    ("main", "labels"): "1182bbf9802b07eb4f518f3cfff6fa16cd86a77a39bf42c0eb7120374c74bf25",
    ("main", "dataset_digest"): "948b44c80c03905f09a89e03ebd3de39a5e94c69919e8944cc2ac86da3cb702a",
    ("3d", "images"): "161d0345ae2452978cda2c293c0d913b5834ded0c8160dc4d3cd3d0e65e7d592",
    ("3d", "labels"): "a0a097a032b7a6c643e6765335435ca81e2eb85ba881e7a99443f24372dc673f",
    ("3d", "dataset_digest"): "d2d858743273b07a48a3931b19c382d34d40f7c075d02f9074ba032670c3c3a8",
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
        return hashlib.sha256(ds.labels.numpy().astype("<i8").tobytes()).hexdigest()
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


# -- chain identity and consensus seeds (consensus.genesis, consensus.rules) ------------------
# The training seed, commit binding, body root and Merkle roots are pinned in
# tests/test_known_answers_consensus.py.
# The chain id hashes every chain parameter, so any change of a consensus
# parameter (a standing-task field, a bond, a phase length) moves these pins.

CHAIN_PINS = {
    # network: (chain id, genesis block hash)
    "devnet": ("0d91204a99add894b0617cda4774b185034a563ceff36e87146c4f3c4ae3534d",
               "a775d2a629ff8d1809d336f0b727291b281b1509184aa3daaba66018ada6ffc7"),
    "main": ("34acbf6fc2e027a9fe28b721e87c069f34e95242630f581442e55bb7ac73f9d3",
             "2fbcc48e66672df3a1ae1f7ad23239f10c082c92e4491b6863700d1eb20f78d3"),
}
STANDING_SEEDS = ("ba911395bf8eed89f255a8f88e98ba2cf6ae7a96ff97138086dd8b621571ee8b",
                  "2a6f00d0637f26b8a0a4442f4700127e349ded149ad61df6d280b4fec607e0c4")
"""compute_standing_seed(SEED, "train") and (SEED, "test")."""
REPLAY_SEED = "a1d13cd4d8ab83c51b1d0602814397eae3eb5e0102a406466052db661ec02d97"
"""compute_replay_seed(SEED, reversed SEED, zero trajectory root, no keys)."""
REPLAY_SEGMENTS = [13, 17, 22]
"""compute_replay_segments(REPLAY_SEED, 26 checkpoints with norms (i * 7919) % 101, top 2, 1 drawn)."""


@pytest.mark.parametrize("network", list(CHAIN_PINS))
def test_chain_id_and_genesis_hash(network):
    from consensus.transition import make_genesis_block

    params = make_devnet_params(genesis_time=0) if network == "devnet" else make_main_params()
    assert (params.chain_id.hex(), make_genesis_block(params).hash.hex()) == CHAIN_PINS[network]


def test_standing_seeds():
    from consensus.rules import compute_standing_seed

    assert (compute_standing_seed(SEED, "train").hex(), compute_standing_seed(SEED, "test").hex()) == STANDING_SEEDS


def test_replay_seed_and_segments():
    from consensus.rules import compute_replay_seed, compute_replay_segments
    from pouw.types import CheckpointRef

    seed = compute_replay_seed(SEED, SEED[::-1], bytes(32), ())
    assert seed.hex() == REPLAY_SEED
    checkpoints = [CheckpointRef(bytes([i]) * 32, 100, 300, (i * 7919) % 101) for i in range(26)]
    assert compute_replay_segments(seed, checkpoints, 2, 1) == REPLAY_SEGMENTS

