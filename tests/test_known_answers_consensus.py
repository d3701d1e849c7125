"""Known answers for consensus values: a change here forks the chain.

Each literal below was computed once by this code and written down. If one of
these tests fails, a consensus value changed: that is a fork, and it must be a
deliberate, versioned change (new domain tag, new chain parameters), with the
literal updated in the same commit that says why.
"""

from __future__ import annotations

import hashlib

from consensus.fixtures import make_keypair, make_transfer
from consensus.rules import (
    compute_body_root,
    compute_commit_binding,
    compute_merkle_root,
    compute_training_seed,
    compute_trajectory_root,
)
from pouw.blobcrypt import key_commitment
from pouw.types import BlockBody, CheckpointRef, Commit, KeyReveal, WorkProof

KP = make_keypair("known-answer")
PREV = bytes(range(32))
MODEL = bytes(range(32, 64))
KEY = bytes(range(1, 33))


def test_test_key_pair_is_what_it_was():
    assert KP.public_key.hex() == "db15c689d97b93834c0a0e4a075362c856d0eb673d9c4b074d7f502848fd0c50"


def test_training_seed():
    seed = compute_training_seed(PREV, KP.public_key)
    assert seed == hashlib.sha256(b"pouw/train-seed/v1\x00" + PREV + KP.public_key).digest()  # docs/useful_work.md §5
    assert seed.hex() == "e4574e231077cef17e98bbee0b2c8f6b1f38faed35c39c9e4587f142b00bb65e"


def test_commit_binding():
    binding = compute_commit_binding(MODEL, KP.public_key)
    assert binding == hashlib.sha256(MODEL + KP.public_key).digest()  # docs/protocol.md §7
    assert binding.hex() == "ab3b45ef525897468be358499db7f1dcd586b3bccdbd60f585b880afbbd7d539"


def test_key_commitment():
    assert key_commitment(KEY).hex() == "b6eeffe5f4e35d20a0565bb17942852e247952c633c45082e4b98fdd35f743ca"


def test_merkle_root_of_three_leaves():
    leaf = [hashlib.sha256(b"\x00" + x).digest() for x in (b"a", b"b", b"c")]
    expected = hashlib.sha256(b"\x01" + hashlib.sha256(b"\x01" + leaf[0] + leaf[1]).digest() + leaf[2]).digest()
    root = compute_merkle_root([b"a", b"b", b"c"])
    assert root == expected  # docs/protocol.md §6: the odd node is carried up, not duplicated
    assert root.hex() == "36642e73c2540ab121e3a6bf9545b0a24982cd830eb13d3cd19de3ce6c021ec1"


def test_body_root_and_transaction_signature():
    transfer = make_transfer(KP, bytes(32), 5, 0, fee=1000)
    assert transfer.signature.hex() == (
        "3012f9f06f1a64a850d47d29a9e9364641b3992b0e6a35ff3dbae22ca1cf5be8"
        "104aa0410f84d4d02212f0f99ef04c5fa01e629fe6a5eb84f81b416020a06b0d"
    )
    refs = (CheckpointRef(bytes(32), 1000, 3000, 0), CheckpointRef(bytes([1]) * 32, 1000, 3000, 123456))
    root = compute_trajectory_root(refs)
    assert root.hex() == "a54698a1e18a5955d4393db436f619ae9459f57cdff63231c64bbe8b3d2e9bdd"
    commit = Commit(1, 2, bytes(32), KP.public_key, compute_commit_binding(MODEL, KP.public_key), root).signed_by(KP)
    work = WorkProof(MODEL, 1234, refs, ("http://127.0.0.1:1",), 900_000)
    body = BlockBody((transfer,), (KeyReveal(bytes(32), 0, KEY),), commit, work)
    # body root v2 (docs/protocol.md §6): commit, work, key reveals, transactions root, evidence root.
    assert compute_body_root(body).hex() == "ebe7955aab7ef6106f7b86bf8a415dad07eccfe00fc58a4bdcfda86138b0f685"
