"""Checkpoints in a blob store: a header, a weights blob and optimizer-state shards (pouw/seg/checkpoints.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pouw.blobstore import BlobStore
from pouw.seg.checkpoints import get_checkpoint_part_digests, load_checkpoint, put_checkpoint, read_checkpoint_header
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.train import get_optimizer_state, init_model, make_optimizer
from pouw.seg.weights import (
    MAX_STATE_SHARDS, STATE_SHARD_BYTES, Checkpoint, PartRef, WeightsError, compute_shard_count,
    decode_checkpoint_header, encode_checkpoint_header, encode_model, select_state_shards,
)
from pouw.types import MAX_CHECKPOINT_HEADER_BYTES

SPEC = ModelSpec("unet2d", 1, 2, 4, (16, 16))
TSPEC = TrainSpec(0.01, 2, "dice", "adam", 1)
SEED = b"\x05" * 32


def trained_checkpoint(index: int = 1) -> Checkpoint:
    """A checkpoint after two real Adam steps (every state tensor non-zero)."""
    torch.manual_seed(0)
    model = init_model(SPEC, SEED)
    opt = make_optimizer(model, TSPEC)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 1, 16, 16)).square().mean().backward()
        opt.step()
    return Checkpoint(index, 2, b"\x01" * 32, SEED, SPEC, TSPEC, b"\x02" * 32, 1, "fp32", 0.25,
                      encode_model(model, SPEC), get_optimizer_state(opt))


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for idx in a:
        assert sorted(a[idx]) == sorted(b[idx])
        for key, v in a[idx].items():
            assert torch.equal(v, b[idx][key]) if isinstance(v, torch.Tensor) else v == b[idx][key]


def test_a_whole_load_gives_back_the_checkpoint_stored_in_shards(tmp_path):
    store = BlobStore(tmp_path)
    ck = trained_checkpoint()
    digest = put_checkpoint(store, ck, 5)
    back = load_checkpoint(store, digest)
    assert back.state_shards is None and back.shard_count == 5
    assert back.model_file == ck.model_file and back.position == ck.position and back.prev_digest == ck.prev_digest
    assert_same_state(back.optimizer_state, ck.optimizer_state)
    header = read_checkpoint_header(store, digest)
    assert header.weights.digest == ck.model_digest  # the weights blob is the model file itself
    assert len(get_checkpoint_part_digests(store, digest)) == 6


def test_a_partial_load_holds_the_same_slices_of_every_tensor(tmp_path):
    store = BlobStore(tmp_path)
    ck = trained_checkpoint()
    digest = put_checkpoint(store, ck, 5)
    part = load_checkpoint(store, digest, shards=(3, 1))
    assert part.state_shards == (1, 3)
    for idx, slot in ck.optimizer_state.items():
        assert torch.equal(part.optimizer_state[idx]["step"], slot["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(part.optimizer_state[idx][key], select_state_shards(slot[key], (1, 3), 5))
    # Reading the slices takes only those shards' blobs: the others may be gone.
    header = read_checkpoint_header(store, digest)
    for s in (0, 2, 4):
        store.delete(header.shards[s].digest)
    assert load_checkpoint(store, digest, shards=(1, 3)).state_shards == (1, 3)
    with pytest.raises(WeightsError, match="not available"):
        load_checkpoint(store, digest)


def test_parts_that_do_not_belong_are_refused(tmp_path):
    store = BlobStore(tmp_path)
    one, two = trained_checkpoint(1), trained_checkpoint(2)
    h1 = read_checkpoint_header(store, put_checkpoint(store, one, 4))
    h2 = read_checkpoint_header(store, put_checkpoint(store, two, 4))
    # A header naming another checkpoint's shard (same bytes would hash right: the shard says whose it is).
    mixed = dataclasses.replace(h1, shards=(h2.shards[0],) + h1.shards[1:])
    digest = store.put_bytes(encode_checkpoint_header(mixed))
    with pytest.raises(WeightsError, match="another checkpoint"):
        load_checkpoint(store, digest)
    # A part whose size is not the one named.
    lying = dataclasses.replace(h1, weights=PartRef(h1.weights.digest, h1.weights.size + 1))
    with pytest.raises(WeightsError, match="another size"):
        load_checkpoint(store, store.put_bytes(encode_checkpoint_header(lying)))
    # A reference declaring other part sizes than the header names.
    with pytest.raises(WeightsError, match="parts"):
        read_checkpoint_header(store, store.put_bytes(encode_checkpoint_header(h1)), parts_size=h1.parts_size - 1)


def test_headers_are_bounded_and_shard_counts_follow_the_state(tmp_path):
    h = read_checkpoint_header(BlobStore(tmp_path), put_checkpoint(BlobStore(tmp_path), trained_checkpoint(), 2))
    with pytest.raises(WeightsError, match="exceeds"):
        encode_checkpoint_header(dataclasses.replace(h, state_scalars={i: {"step": 1.0} for i in range(10_000)}))
    with pytest.raises(WeightsError, match="larger than"):
        decode_checkpoint_header(b"\x00" * (MAX_CHECKPOINT_HEADER_BYTES + 1))
    with pytest.raises(WeightsError, match="shard"):
        decode_checkpoint_header(encode_checkpoint_header(dataclasses.replace(h, shards=h.shards * 20)))
    assert compute_shard_count(0) == 0
    assert compute_shard_count(1) == 1
    assert compute_shard_count(3 * STATE_SHARD_BYTES) == 3
    assert compute_shard_count(10**12) == MAX_STATE_SHARDS
