"""Full-node verification of a miner's claim, from its blobs.

Primitives (each cheap check before the expensive ones; failures raise
WorkInvalid(reason)):

* ``check_checkpoint``: one checkpoint on its own: index, link to the
  previous digest, the task's specs, seed, training-data digest, worker
  count, a position the segment rule allows, a decodable model;
* ``check_initial_checkpoint``: checkpoint 0 holds exactly the initial
  weights of the seed and no optimizer state;
* ``replay_checkpoint_segment``: replay checkpoint i-1 to i on the
  verifier's copy of the training data; returns the distance
  ``||w_replay - w_i|| / ||w_i - w_(i-1)||``;
* ``compute_update_norm`` (float64 L2 of a segment's weight update).

``verify_work`` runs them all for a claim: model blob, every checkpoint,
Dice within the tolerance, then one segment chosen by a seed the miner
could not know (``compute_spot_check_segment``) replayed within
REPLAY_TOLERANCE.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from pouw.blobstore import BlobStore
from pouw.seg.data import Dataset, compute_dataset_digest
from pouw.seg.dice import DICE_TOLERANCE_PPM, DiceResult, evaluate, is_within_tolerance
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.train import TrainError, init_model, replay_segment
from pouw.seg.trajectory import MAX_CHECKPOINTS, Layout, make_layout
from pouw.seg.weights import (
    ZERO_DIGEST, Checkpoint, WeightsError, compute_shard_bounds, compute_update_norm, decode_model, encode_model,
    select_state_shards,
)
from pouw.seg.checkpoints import load_checkpoint

REPLAY_TOLERANCE = 0.05
"""Max ||replayed - claimed|| / ||claimed - previous|| (L2 over all float weights) of a replayed segment.

Set from measurement (benchmarks/bench_replay_tolerance.py, docs/useful_work.md §7)."""
MAX_CHECKPOINT_BYTES = 4 << 30


class WorkInvalid(Exception):
    """A claim that fails verification; `reason` says which check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifyReport:
    """What a verification measured."""

    dice: DiceResult
    """The recomputed Dice."""
    spot_check_segment: int
    """Index i of the replayed segment (checkpoint i-1 to i)."""
    replay_distance: float
    """Its relative distance."""
    segments: int
    """Segments in the claim (checkpoints - 1)."""


def compute_spot_check_segment(seed: bytes, n_segments: int) -> int:
    """The segment (1..n_segments) to replay, from a seed the miner could not know when training."""
    if n_segments < 1:
        raise ValueError("need at least one trained segment")
    h = hashlib.sha256(b"pouw/spot-check/v1\x00" + bytes(seed)).digest()
    return 1 + int.from_bytes(h[:8], "big") % n_segments


def compute_replay_distance(replayed: dict, prev: dict, claimed: dict) -> float:
    """||replayed - claimed|| / ||claimed - prev|| over all floating-point tensors (0 if both are 0)."""
    diff = 0.0
    step = 0.0
    for name, ref in claimed.items():
        if not ref.is_floating_point():
            continue
        r = ref.double()
        diff += float((replayed[name].double() - r).pow(2).sum())
        step += float((r - prev[name].double()).pow(2).sum())
    if diff == 0.0:
        return 0.0
    return (diff ** 0.5) / max(step ** 0.5, 1e-30)


def load_checkpoint_blob(store: BlobStore, digest: bytes, index: int, shards=None,
                         parts_size: int | None = None) -> Checkpoint:
    """Read, hash-check and parse checkpoint `index` with the optimizer-state `shards` (None: whole; see load_checkpoint)."""
    if not store.has(digest):
        raise WorkInvalid(f"checkpoint {index} ({digest.hex()[:16]}) is not available")
    try:
        return load_checkpoint(store, digest, shards, parts_size)
    except WeightsError as exc:
        raise WorkInvalid(f"checkpoint {index}: {exc}") from exc


def check_checkpoint(ck: Checkpoint, index: int, prev_digest: bytes, *, model_spec: ModelSpec,
                     train_spec: TrainSpec, layout: Layout, is_last: bool, train_seed: bytes | None = None,
                     data_digest: bytes | None = None, world_size: int | None = None) -> dict[str, torch.Tensor]:
    """Check one checkpoint's metadata and link on its own; returns its weights.

    `prev_digest` is checkpoint index-1's digest (32 zero bytes for 0),
    `layout` the verifier's (trajectory.make_layout of the task and its
    training set), `is_last` whether it ends the claim (only the last may end
    its segment early). `train_seed`, `data_digest` and `world_size` are
    checked when given.
    """
    if ck.index != index:
        raise WorkInvalid(f"checkpoint {index} says it is checkpoint {ck.index}")
    if ck.prev_digest != prev_digest:
        raise WorkInvalid(f"checkpoint {index} does not link to checkpoint {index - 1}")
    if ck.model_spec != model_spec or ck.train_spec != train_spec:
        raise WorkInvalid(f"checkpoint {index} was trained with other specs than the task's")
    if train_seed is not None and ck.seed != train_seed:
        raise WorkInvalid(f"checkpoint {index} was trained with a different seed")
    if data_digest is not None and ck.data_digest != data_digest:
        raise WorkInvalid(f"checkpoint {index} was trained on other data than the task's training set")
    if world_size is not None and ck.world_size != world_size:
        raise WorkInvalid(f"checkpoint {index} changes the worker count mid-run")
    if ck.world_size > 1 and train_spec.batch_size % ck.world_size:
        raise WorkInvalid(f"checkpoint {index}: {ck.world_size} workers cannot split batches of {train_spec.batch_size}")
    if not layout.is_valid_position(index, ck.position, is_last):
        raise WorkInvalid(f"checkpoint {index} lies at step {ck.position}, not where the segment rule puts it")
    try:
        return decode_model(ck.model_file, model_spec)
    except WeightsError as exc:
        raise WorkInvalid(f"checkpoint {index}: {exc}") from exc


def check_initial_checkpoint(ck: Checkpoint, model_spec: ModelSpec, train_seed: bytes | None = None) -> None:
    """Checkpoint 0 must be the seed's initial weights, with no optimizer state: no pre-trained start."""
    seed = ck.seed if train_seed is None else train_seed
    if ck.index != 0 or ck.position != 0 or ck.optimizer_state or ck.shard_count:
        raise WorkInvalid("checkpoint 0 is not a fresh start")
    if ck.model_file != encode_model(init_model(model_spec, seed), model_spec):
        raise WorkInvalid("checkpoint 0 is not the initial weights given by the training seed")


MOMENTUM_KEYS = {"adam": "exp_avg", "sgd": "momentum_buffer"}
"""The optimizer state that steers the next steps: replays check it as they check the weights."""


def check_optimizer_state(ck: Checkpoint) -> None:
    """The optimizer state fits the network and the position.

    One entry per parameter at most, each with exactly the optimizer's keys,
    tensors of the parameter's shape, finite; Adam's step count equals the
    checkpoint's position (it sets the bias correction).
    """
    from pouw.seg.models import build_model

    with torch.device("meta"):
        params = list(build_model(ck.model_spec).parameters())
    keys = {"adam": {"step", "exp_avg", "exp_avg_sq"}, "sgd": {"momentum_buffer"}}[ck.train_spec.optimizer]
    for idx, slot in ck.optimizer_state.items():
        if not (isinstance(idx, int) and 0 <= idx < len(params)) or set(slot) != keys:
            raise WorkInvalid(f"checkpoint {ck.index}: optimizer state does not fit the network")
        shape = params[idx].shape
        if ck.state_shards is not None:  # a partial load holds the 1-D concatenation of its shards' slices
            shape = torch.Size([sum(hi - lo for lo, hi in (compute_shard_bounds(shape.numel(), s, ck.shard_count)
                                                             for s in ck.state_shards))])
        for key, value in slot.items():
            if key == "step":
                ok = (isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0
                      and value.is_floating_point() and float(value) == float(ck.position))
            else:
                ok = (value is None and key == "momentum_buffer") or (
                    isinstance(value, torch.Tensor) and value.shape == shape
                    and value.dtype == torch.float32 and bool(torch.isfinite(value).all()))
            if not ok:
                raise WorkInvalid(f"checkpoint {ck.index}: optimizer state {idx}/{key} does not fit the network")


def get_momentum(ck_state: dict, key: str) -> dict[str, torch.Tensor]:
    """The momentum tensors of an optimizer state, named by parameter index (absent ones left out)."""
    return {str(i): slot[key] for i, slot in ck_state.items() if isinstance(slot.get(key), torch.Tensor)}


def compute_momentum_distance(replayed: dict, before: Checkpoint, after: Checkpoint) -> float:
    """compute_replay_distance of the momentum buffers (a missing buffer counts as zeros).

    When `after` holds only some shards of its state, the distance is taken
    over those shards' coordinates of every buffer (the same slices of the
    replayed and the previous buffers).
    """
    key = MOMENTUM_KEYS[after.train_spec.optimizer]
    claimed = get_momentum(after.optimizer_state, key)
    replayed = get_momentum(replayed, key)
    if set(claimed) != set(replayed):
        return float("inf")
    prev = get_momentum(before.optimizer_state, key)
    prev = {k: prev.get(k, torch.zeros_like(v)) for k, v in replayed.items()}
    if after.state_shards is not None:
        def pick(t):
            return select_state_shards(t, after.state_shards, after.shard_count)
        replayed = {k: pick(v) for k, v in replayed.items()}
        prev = {k: pick(v) for k, v in prev.items()}
    return compute_replay_distance(replayed, prev, claimed)


def replay_checkpoint_segment(before: Checkpoint, after: Checkpoint, train_dataset: Dataset, device: str = "cpu",
                              before_weights: dict | None = None, after_weights: dict | None = None) -> float:
    """Replay checkpoint `before` to `after` (consecutive, both already checked); returns the relative distance.

    The distance is the larger of the weights' and the momentum buffers'
    (each relative to its own change over the segment), so neither the
    weights nor the state that steers the next segment can be forged.
    """
    if after.index != before.index + 1 or after.position <= before.position:
        raise WorkInvalid(f"checkpoints {before.index} and {after.index} do not bound a segment")
    if before.state_shards is not None:
        raise ValueError("a replay starts from a whole optimizer state (load the checkpoint with every shard)")
    prev_state = before_weights if before_weights is not None else decode_model(before.model_file, before.model_spec)
    next_state = after_weights if after_weights is not None else decode_model(after.model_file, after.model_spec)
    check_optimizer_state(before)
    check_optimizer_state(after)
    try:
        weights, state = replay_segment(before, after.position, train_dataset, device=device)
    except TrainError as exc:
        raise WorkInvalid(str(exc)) from exc
    return max(compute_replay_distance(weights, prev_state, next_state), compute_momentum_distance(state, before, after))


def check_checkpoint_chain(
    store: BlobStore,
    checkpoint_digests: Sequence[bytes],
    model_file: bytes,
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    train_dataset: Dataset,
    train_seed: bytes | None = None,
) -> bytes:
    """Check every checkpoint (see check_checkpoint) and checkpoint 0; returns the training seed used."""
    if len(checkpoint_digests) < 2:
        raise WorkInvalid("a claim needs the initial checkpoint and at least one trained segment")
    if len(checkpoint_digests) > MAX_CHECKPOINTS:
        raise WorkInvalid(f"a claim carries at most {MAX_CHECKPOINTS} checkpoints")
    layout = make_layout(model_spec, train_spec, len(train_dataset))
    data_digest = compute_dataset_digest(train_dataset)
    first = load_checkpoint_blob(store, bytes(checkpoint_digests[0]), 0)
    seed = train_seed if train_seed is not None else first.seed
    prev = ZERO_DIGEST
    last: Checkpoint | None = None
    for i, digest in enumerate(checkpoint_digests):
        ck = first if i == 0 else load_checkpoint_blob(store, bytes(digest), i)
        check_checkpoint(ck, i, prev, model_spec=model_spec, train_spec=train_spec, layout=layout,
                         is_last=i == len(checkpoint_digests) - 1, train_seed=seed, data_digest=data_digest,
                         world_size=first.world_size)
        if i == 0:
            check_initial_checkpoint(ck, model_spec, seed)
        prev = bytes(digest)
        last = ck
    assert last is not None
    if last.model_file != model_file:
        raise WorkInvalid("the last checkpoint's weights are not the claimed model")
    return seed


def verify_work(
    *,
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    model_digest: bytes,
    checkpoint_digests: Sequence[bytes],
    claimed_dice_ppm: int,
    blob_store: BlobStore,
    test_dataset: Dataset,
    train_dataset: Dataset,
    spot_check_seed: bytes,
    train_seed: bytes | None = None,
    dice_tolerance_ppm: int = DICE_TOLERANCE_PPM,
    replay_tolerance: float = REPLAY_TOLERANCE,
    device: str = "cpu",
) -> VerifyReport:
    """Verify a claim end to end (Dice and replay on `device`); raises WorkInvalid, returns the measured figures."""
    if not blob_store.has(model_digest):
        raise WorkInvalid(f"model blob {bytes(model_digest).hex()[:16]} is not available")
    model_file = blob_store.get_bytes(model_digest, max_size=MAX_CHECKPOINT_BYTES)
    if hashlib.sha256(model_file).digest() != bytes(model_digest):
        raise WorkInvalid("model blob does not hash to the claimed model digest")
    try:
        decode_model(model_file, model_spec)
    except WeightsError as exc:
        raise WorkInvalid(str(exc)) from exc
    check_checkpoint_chain(blob_store, checkpoint_digests, model_file, model_spec, train_spec, train_dataset,
                           train_seed)

    try:
        dice = evaluate(model_file, model_spec, test_dataset, device=device)
    except ValueError as exc:  # a model whose output overflows
        raise WorkInvalid(f"Dice: {exc}") from None
    if not is_within_tolerance(claimed_dice_ppm, dice.dice_ppm, dice_tolerance_ppm):
        raise WorkInvalid(f"claimed Dice {claimed_dice_ppm} ppm, measured {dice.dice_ppm} ppm")

    n_segments = len(checkpoint_digests) - 1
    index = compute_spot_check_segment(spot_check_seed, n_segments)
    distance = spot_check(blob_store, checkpoint_digests, index, train_dataset, device)
    if not distance <= replay_tolerance:
        raise WorkInvalid(
            f"spot check of segment {index} failed: replay lands {distance:.4g} away (tolerance {replay_tolerance})"
        )
    return VerifyReport(dice, index, distance, n_segments)


def spot_check(store: BlobStore, checkpoint_digests: Sequence[bytes], index: int, train_dataset: Dataset,
               device: str = "cpu") -> float:
    """Replay segment `index` (checkpoint index-1 to index); returns the relative distance."""
    before = load_checkpoint_blob(store, bytes(checkpoint_digests[index - 1]), index - 1)
    after = load_checkpoint_blob(store, bytes(checkpoint_digests[index]), index)
    try:
        return replay_checkpoint_segment(before, after, train_dataset, device)
    except WeightsError as exc:
        raise WorkInvalid(f"checkpoint {index - 1} or {index}: {exc}") from exc


__all__ = [
    "WorkInvalid", "VerifyReport", "verify_work", "check_checkpoint", "check_initial_checkpoint",
    "check_checkpoint_chain", "check_optimizer_state", "replay_checkpoint_segment", "spot_check",
    "compute_momentum_distance",
    "compute_spot_check_segment", "compute_replay_distance", "compute_update_norm", "load_checkpoint_blob",
    "REPLAY_TOLERANCE",
]
