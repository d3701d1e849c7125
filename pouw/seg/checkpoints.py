"""Checkpoints in a blob store: a header blob naming a weights blob and the optimizer-state shards.

The header's digest is the checkpoint's digest (what the trajectory commits
and the next checkpoint links to). Splitting the optimizer state lets a
verifier read all of it where a replay starts and only a drawn shard where a
replay ends (consensus.work.compute_work_plan); the weights blob is a model
file, so the last checkpoint's weights are the claimed model blob itself.
"""

from __future__ import annotations

import hashlib

from pouw.blobstore import BlobError, BlobStore
from pouw.seg.weights import (
    MAX_CHECKPOINT_HEADER_BYTES,
    MAX_MODEL_FILE,
    Checkpoint,
    CheckpointHeader,
    PartRef,
    WeightsError,
    assemble_optimizer_state,
    decode_checkpoint_header,
    decode_state_shard,
    split_checkpoint,
)


def put_checkpoint(store: BlobStore, ck: Checkpoint, shard_count: int | None = None) -> bytes:
    """Store a whole checkpoint (parts first, header last); returns its digest (the header's SHA-256)."""
    header, parts = split_checkpoint(ck, shard_count)
    for part in parts:
        store.put_bytes(part)
    return store.put_bytes(header)


def read_part(store: BlobStore, ref: PartRef, what: str) -> bytes:
    """A part's bytes, checked against its reference; raises WeightsError."""
    if not store.has(ref.digest):
        raise WeightsError(f"{what} ({ref.digest.hex()[:16]}) is not available")
    data = store.get_bytes(ref.digest, max_size=MAX_MODEL_FILE)
    if len(data) != ref.size or hashlib.sha256(data).digest() != ref.digest:
        raise WeightsError(f"{what} does not hash to its digest or has another size")
    return data


def read_checkpoint_header(store: BlobStore, digest: bytes, parts_size: int | None = None) -> CheckpointHeader:
    """The header of checkpoint `digest`, hash-checked; `parts_size` (a CheckpointRef's) is checked when given."""
    if not store.has(digest):
        raise WeightsError(f"checkpoint {digest.hex()[:16]} is not available")
    try:
        data = store.get_bytes(digest, max_size=MAX_CHECKPOINT_HEADER_BYTES)
    except BlobError:
        raise WeightsError(f"checkpoint header is larger than {MAX_CHECKPOINT_HEADER_BYTES} bytes") from None
    if hashlib.sha256(data).digest() != digest:
        raise WeightsError("checkpoint header does not hash to its digest")
    header = decode_checkpoint_header(data)
    if parts_size is not None and header.parts_size != parts_size:
        raise WeightsError(f"checkpoint names {header.parts_size} bytes of parts, its reference declares {parts_size}")
    return header


def get_header_parts(header: CheckpointHeader, shards=None) -> list[PartRef]:
    """The blobs of `header` a load with `shards` reads: the weights, then those shards (None: all)."""
    picked = range(len(header.shards)) if shards is None else sorted(shards)
    return [header.weights] + [header.shards[s] for s in picked]


def load_checkpoint(store: BlobStore, digest: bytes, shards=None, parts_size: int | None = None) -> Checkpoint:
    """Read checkpoint `digest`: header, weights and the optimizer-state shards `shards` (None: all, whole).

    With `shards`, the optimizer state holds only those shards' slices
    (Checkpoint.state_shards). Raises WeightsError for a missing or
    malformed blob.
    """
    header = read_checkpoint_header(store, digest, parts_size)
    count = len(header.shards)
    picked = tuple(range(count)) if shards is None else tuple(sorted(set(shards)))
    if any(not 0 <= s < count for s in picked):
        raise WeightsError(f"checkpoint {header.index} has {count} optimizer-state shards, shard {max(picked)} asked")
    model_file = read_part(store, header.weights, f"checkpoint {header.index} weights")
    slices = {s: decode_state_shard(read_part(store, header.shards[s], f"checkpoint {header.index} shard {s}"), header, s)
              for s in picked}
    whole = shards is None or len(picked) == count
    return Checkpoint(header.index, header.position, header.prev_digest, header.seed, header.model_spec,
                      header.train_spec, header.data_digest, header.world_size, header.precision, header.mean_loss,
                      model_file, assemble_optimizer_state(header, slices, whole), count, None if whole else picked)


def get_checkpoint_part_digests(store: BlobStore, digest: bytes) -> list[bytes]:
    """Every blob a held checkpoint header names (none when the header is absent or unreadable): pruning's input."""
    try:
        header = read_checkpoint_header(store, digest)
    except (WeightsError, BlobError, OSError):
        return []
    return [p.digest for p in get_header_parts(header)]


__all__ = ["put_checkpoint", "load_checkpoint", "read_checkpoint_header", "read_part", "get_header_parts",
           "get_checkpoint_part_digests"]
