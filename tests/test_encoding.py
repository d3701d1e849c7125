"""Canonical encoding: determinism, exact round trips, strict rejection of bad bytes."""

from __future__ import annotations

import dataclasses

import pytest
from chainutil import MemoryChain
from hypothesis import given
from hypothesis import strategies as st

from consensus.fixtures import make_keypair, make_next_block, make_task, make_test_params, make_transfer
from consensus.genesis import COIN
from pouw.encoding import DecodeError, decode, encode, hash_of
from consensus.chainstate import BlockIndex, Undo
from pouw.types import (
    Account,
    Block,
    BlockBody,
    BlockHeader,
    ChainParams,
    ChainStatus,
    Claim,
    Commit,
    HistoryEntry,
    KeyReveal,
    TaskRecord,
    TaskSubmission,
    Transfer,
    WorkProof,
)

ALICE, BOB, MINER = make_keypair("alice"), make_keypair("bob"), make_keypair("miner")
PARAMS = make_test_params("alice", "bob")


def sample_block() -> Block:
    chain = MemoryChain(PARAMS)
    txs = (make_transfer(ALICE, BOB.public_key, 5, 0), make_task(BOB, (50 + 3) * COIN, 0, "enc"))
    return make_next_block(chain.state(), PARAMS, MINER, transactions=txs)


BLOCK = sample_block()
SAMPLES = [
    BLOCK,
    BLOCK.header,
    BLOCK.body,
    BLOCK.body.commit,
    BLOCK.body.work,
    Claim(BLOCK),
    BLOCK.body.transactions[0],
    BLOCK.body.transactions[1],
    KeyReveal(b"\x01" * 32, 1, b"\x02" * 32),
    PARAMS,
    Account(5, 6),
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_round_trip_is_exact_and_stable(obj):
    data = encode(obj)
    assert encode(obj) == data
    back = decode(type(obj), data)
    assert back == obj
    assert encode(back) == data
    assert hash_of(back) == hash_of(obj)


def test_equal_objects_built_separately_encode_equally():
    a = make_transfer(ALICE, BOB.public_key, 5, 0)
    b = make_transfer(make_keypair("alice"), make_keypair("bob").public_key, 5, 0)
    assert a is not b and encode(a) == encode(b)


def test_transactions_decode_through_the_union():
    from pouw.types import Transaction

    for tx in BLOCK.body.transactions:
        assert decode(Transaction, encode(tx)) == tx


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (encode([1, 2]), "expected"),
        (encode([1, [1, 2, 3, 4, 5, 6]]), "expected"),
    ],
)
def test_garbage_is_rejected(bad, fragment):
    with pytest.raises(DecodeError, match=fragment):
        decode(Transfer, bad)


def test_unknown_field_is_rejected():
    tx = BLOCK.body.transactions[0]
    tag, fields = [1, list(dataclasses.astuple(tx))]
    with pytest.raises(DecodeError, match="expected 6 fields, got 7"):
        decode(Transfer, encode([tag, fields + [0]]))


def test_wrong_type_and_length_are_rejected():
    tx = BLOCK.body.transactions[0]
    fields = list(dataclasses.astuple(tx))
    with pytest.raises(DecodeError, match="expected int"):
        decode(Transfer, encode([1, fields[:2] + ["5"] + fields[3:]]))
    with pytest.raises(DecodeError, match="expected 32 bytes"):
        decode(Transfer, encode([1, [b"\x01" * 31] + fields[1:]]))
    with pytest.raises(DecodeError, match="unsigned"):
        decode(Transfer, encode([1, fields[:2] + [-1] + fields[3:]]))
    with pytest.raises(DecodeError, match="unknown type tag"):
        decode(Transfer, encode([9, fields]))


def test_oversized_message_is_rejected():
    with pytest.raises(DecodeError, match="exceeds limit"):
        decode(Block, encode(BLOCK), max_size=100)


def test_non_canonical_integer_width_is_rejected():
    import msgpack

    data = bytearray(msgpack.packb([1, 2]))
    # 0xcf = uint64 holding the value 1: valid msgpack, not canonical.
    wide = b"\x92\xcf" + (1).to_bytes(8, "big") + b"\x02"
    assert msgpack.unpackb(wide) == [1, 2] and bytes(data) != wide
    from pouw.types import ScheduledTask

    with pytest.raises(DecodeError):
        decode(ScheduledTask, b"\x92\xcf" + (1).to_bytes(8, "big") + b"\xc4\x20" + b"\x00" * 32)


def test_bad_spec_inside_a_task_is_a_decode_error():
    task = BLOCK.body.transactions[1]
    plain = encode(task)
    # Patch the architecture string inside the encoding.
    bad = plain.replace(b"unet2d", b"unet9d")
    with pytest.raises(DecodeError, match="architecture"):
        decode(TaskSubmission, bad)


ALL_TYPES = [Block, BlockHeader, BlockBody, Commit, WorkProof, Claim, Transfer, TaskSubmission, KeyReveal, ChainParams,
             Account, TaskRecord, ChainStatus, HistoryEntry, BlockIndex, Undo]


@given(data=st.binary(max_size=600), cls=st.sampled_from(ALL_TYPES))
def test_random_bytes_give_decode_error_or_a_canonical_object(data, cls):
    try:
        obj = decode(cls, data)
    except DecodeError:
        return
    assert encode(obj) == data


@given(position=st.integers(min_value=0), value=st.integers(min_value=0, max_value=255), cut=st.booleans())
def test_mutated_blocks_decode_or_fail_cleanly(position, value, cut):
    data = bytearray(encode(BLOCK))
    position %= len(data)
    if cut:
        data = data[:position]
    else:
        data[position] = value
    try:
        obj = decode(Block, bytes(data))
    except DecodeError:
        return
    assert encode(obj) == bytes(data)


@given(
    amount=st.integers(min_value=0, max_value=2**64 - 1),
    fee=st.integers(min_value=0, max_value=2**64 - 1),
    nonce=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_transfer_round_trip_property(amount, fee, nonce):
    tx = Transfer(ALICE.public_key, BOB.public_key, amount, fee, nonce).signed_by(ALICE)
    assert decode(Transfer, encode(tx)) == tx
    assert tx.is_signature_valid()
