"""Full-node verification of a miner's claim, from its blobs.

Checks, cheapest first; the first failure raises WorkInvalid(reason):

1. model blob present and hashing to ``model_digest``;
2. checkpoint sequence: every blob hashes to its digest, checkpoint i has
   epoch i and links to checkpoint i-1's digest (epoch 0 to 32 zero bytes),
   all carry the task's specs, the same seed (the expected training seed when
   given) and training-data digest; checkpoint 0 holds exactly the initial
   weights the seed gives; the last checkpoint's model file is the model blob;
3. Dice recomputed on the test set within the tolerance of the claim;
4. Proof-of-Learning spot check: epoch e = compute_spot_check_epoch(seed, n)
   is replayed from checkpoint e-1 on the verifier's copy of the training
   data and must land within REPLAY_TOLERANCE of checkpoint e (relative to
   the size of that epoch's own update).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence


from pouw.blobstore import BlobStore
from pouw.seg.data import SegDataset, compute_dataset_digest
from pouw.seg.dice import DICE_TOLERANCE_PPM, DiceResult, evaluate, is_within_tolerance
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.train import TrainError, init_model, replay_epoch
from pouw.seg.weights import ZERO_DIGEST, Checkpoint, WeightsError, decode_checkpoint, decode_model, encode_model

REPLAY_TOLERANCE = 0.05
"""Max ||replayed - claimed|| / ||claimed - previous|| (L2 over all float weights) for the spot-checked epoch."""
MAX_CHECKPOINT_BYTES = 4 << 30


class WorkInvalid(Exception):
    """A claim that fails verification; `reason` says which check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifyReport:
    dice: DiceResult
    spot_check_epoch: int
    replay_distance: float
    epochs: int


def compute_spot_check_epoch(seed: bytes, n_epochs: int) -> int:
    """The epoch (1..n_epochs) to replay, from a seed the miner could not know when training."""
    if n_epochs < 1:
        raise ValueError("need at least one trained epoch")
    h = hashlib.sha256(b"pouw/spot-check/v1\x00" + bytes(seed)).digest()
    return 1 + int.from_bytes(h[:8], "big") % n_epochs


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


def load_checkpoint_blob(store: BlobStore, digest: bytes, index: int) -> Checkpoint:
    if not store.has(digest):
        raise WorkInvalid(f"checkpoint {index} ({digest.hex()[:16]}) is not available")
    data = store.get_bytes(digest, max_size=MAX_CHECKPOINT_BYTES)
    if hashlib.sha256(data).digest() != digest:
        raise WorkInvalid(f"checkpoint {index} does not hash to its digest")
    try:
        return decode_checkpoint(data)
    except WeightsError as exc:
        raise WorkInvalid(f"checkpoint {index}: {exc}") from exc


def check_checkpoint_chain(
    store: BlobStore,
    checkpoint_digests: Sequence[bytes],
    model_file: bytes,
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    train_seed: bytes | None = None,
    data_digest: bytes | None = None,
) -> bytes:
    """Check the checkpoint hash chain (see module doc); returns the training seed used."""
    if len(checkpoint_digests) < 2:
        raise WorkInvalid("a claim needs the initial checkpoint and at least one trained epoch")
    seed = train_seed
    prev = ZERO_DIGEST
    last: Checkpoint | None = None
    for i, digest in enumerate(checkpoint_digests):
        ck = load_checkpoint_blob(store, bytes(digest), i)
        if ck.epoch != i:
            raise WorkInvalid(f"checkpoint {i} says epoch {ck.epoch}")
        if ck.prev_digest != prev:
            raise WorkInvalid(f"checkpoint {i} does not link to checkpoint {i - 1}")
        if ck.model_spec != model_spec or ck.train_spec != train_spec:
            raise WorkInvalid(f"checkpoint {i} was trained with other specs than the task's")
        if seed is None:
            seed = ck.seed
        elif ck.seed != seed:
            raise WorkInvalid(f"checkpoint {i} was trained with a different seed")
        if data_digest is not None and ck.data_digest != data_digest:
            raise WorkInvalid(f"checkpoint {i} was trained on other data than the task's training set")
        if last is not None and (ck.world_size != last.world_size or ck.data_digest != last.data_digest):
            raise WorkInvalid(f"checkpoint {i} changes the worker count or data digest mid-run")
        try:
            decode_model(ck.model_file, model_spec)
        except WeightsError as exc:
            raise WorkInvalid(f"checkpoint {i}: {exc}") from exc
        if i == 0 and ck.model_file != encode_model(init_model(model_spec, ck.seed), model_spec):
            raise WorkInvalid("checkpoint 0 is not the initial weights given by the training seed")
        prev = bytes(digest)
        last = ck
    assert last is not None
    if last.model_file != model_file:
        raise WorkInvalid("the last checkpoint's weights are not the claimed model")
    return seed  # type: ignore[return-value]


def verify_work(
    *,
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    model_digest: bytes,
    checkpoint_digests: Sequence[bytes],
    claimed_dice_ppm: int,
    blob_store: BlobStore,
    test_dataset: SegDataset,
    train_dataset: SegDataset,
    spot_check_seed: bytes,
    train_seed: bytes | None = None,
    dice_tolerance_ppm: int = DICE_TOLERANCE_PPM,
    replay_tolerance: float = REPLAY_TOLERANCE,
    device: str = "cpu",
) -> VerifyReport:
    """Verify a claim end to end; raises WorkInvalid, returns the measured figures."""
    if not blob_store.has(model_digest):
        raise WorkInvalid(f"model blob {bytes(model_digest).hex()[:16]} is not available")
    model_file = blob_store.get_bytes(model_digest, max_size=MAX_CHECKPOINT_BYTES)
    if hashlib.sha256(model_file).digest() != bytes(model_digest):
        raise WorkInvalid("model blob does not hash to the claimed model digest")
    try:
        decode_model(model_file, model_spec)
    except WeightsError as exc:
        raise WorkInvalid(str(exc)) from exc
    data_digest = compute_dataset_digest(train_dataset)
    seed = check_checkpoint_chain(blob_store, checkpoint_digests, model_file, model_spec, train_spec,
                                  train_seed, data_digest)

    dice = evaluate(model_file, model_spec, test_dataset, device=device)
    if not is_within_tolerance(claimed_dice_ppm, dice.dice_ppm, dice_tolerance_ppm):
        raise WorkInvalid(f"claimed Dice {claimed_dice_ppm} ppm, measured {dice.dice_ppm} ppm")

    n_epochs = len(checkpoint_digests) - 1
    epoch = compute_spot_check_epoch(spot_check_seed, n_epochs)
    distance = spot_check(blob_store, checkpoint_digests, epoch, train_dataset, device)
    if not distance <= replay_tolerance:
        raise WorkInvalid(
            f"spot check of epoch {epoch} failed: replay lands {distance:.4g} away (tolerance {replay_tolerance})"
        )
    _ = seed
    return VerifyReport(dice, epoch, distance, n_epochs)


def spot_check(store: BlobStore, checkpoint_digests: Sequence[bytes], epoch: int, train_dataset: SegDataset,
               device: str = "cpu") -> float:
    """Replay `epoch` from checkpoint epoch-1; returns the relative distance to checkpoint `epoch`."""
    before = load_checkpoint_blob(store, bytes(checkpoint_digests[epoch - 1]), epoch - 1)
    after = load_checkpoint_blob(store, bytes(checkpoint_digests[epoch]), epoch)
    try:
        replayed = replay_epoch(before, train_dataset, device=device, num_threads=1)
    except TrainError as exc:
        raise WorkInvalid(str(exc)) from exc
    prev_state = decode_model(before.model_file, before.model_spec)
    next_state = decode_model(after.model_file, after.model_spec)
    return compute_replay_distance(replayed, prev_state, next_state)


__all__ = [
    "WorkInvalid", "VerifyReport", "verify_work", "check_checkpoint_chain", "spot_check",
    "compute_spot_check_epoch", "compute_replay_distance", "REPLAY_TOLERANCE",
]

