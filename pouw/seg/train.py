"""Deterministic, deadline-bounded training with a checkpoint per epoch.

Rules (see docs/useful_work.md):

* Initial weights come from ``torch.manual_seed(derive_int_seed(seed, "init"))``;
  the order of epoch e from ``compute_epoch_order(seed, e, n)``; batches are
  consecutive slices of ``batch_size`` (full batches only).
* Epoch 1 is measured. Epoch e+1 starts only if
  ``now + SAFETY * slowest_epoch <= deadline``; inside an epoch the deadline is
  checked before every batch (keeping twice the slowest checkpoint write in
  hand) and an epoch cut short is thrown away, so the trainer never runs past
  its deadline by more than one batch and never returns a half-trained epoch.
* Checkpoint 0 (initial weights) and one checkpoint per finished epoch go to
  the blob store; the model is the weights of the last checkpoint.
* CUDA: mixed precision (fp16 autocast + GradScaler). Several processes
  (torchrun, torch.distributed initialised): DistributedDataParallel, each
  rank taking its slice of every global batch; rank 0 writes the blobs.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pouw.blobstore import BlobStore
from pouw.seg.data import SegDataset, compute_dataset_digest
from pouw.seg.determinism import (
    check_seed, compute_batches, compute_epoch_order, derive_int_seed, deterministic_mode,
)
from pouw.seg.models import build_model
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.weights import ZERO_DIGEST, Checkpoint, compute_digest, encode_checkpoint, encode_model

SAFETY = 1.25
"""Start another epoch only if SAFETY x the slowest epoch so far still fits before the deadline."""


class TrainError(RuntimeError):
    """Training could not produce even one epoch (deadline, NaN loss, bad input)."""


class DeadlineError(TrainError):
    """The deadline is already past, or too close for one epoch."""


@dataclass(frozen=True)
class TrainResult:
    """What a miner commits to and claims."""

    model_digest: bytes
    checkpoint_digests: tuple[bytes, ...]
    """Checkpoint of epoch 0 (initial weights), 1, ..., epochs."""
    epochs: int
    epoch_losses: tuple[float, ...]
    epoch_seconds: tuple[float, ...]
    planned_epochs: int
    """Epochs the budget allowed after measuring epoch 1."""
    stop_reason: str
    """"max_epochs", "deadline" or "non-finite loss"."""
    seed: bytes
    data_digest: bytes
    world_size: int
    device: str
    model_file: bytes


class _Interrupted(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def get_dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_loss(train_spec: TrainSpec) -> nn.Module:
    from monai.losses import DiceCELoss, DiceLoss

    if train_spec.loss == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def make_optimizer(model: nn.Module, train_spec: TrainSpec) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor path gives the same numbers on every machine.
    if train_spec.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train_spec.learning_rate,
                                weight_decay=train_spec.weight_decay, foreach=False)
    return torch.optim.SGD(model.parameters(), lr=train_spec.learning_rate, momentum=train_spec.momentum,
                           weight_decay=train_spec.weight_decay, foreach=False)


def init_model(model_spec: ModelSpec, seed: bytes) -> nn.Module:
    """The initial network: weights fixed by the seed."""
    torch.manual_seed(derive_int_seed(seed, "init"))
    return build_model(model_spec)


def get_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    return {k: dict(v) for k, v in optimizer.state_dict()["state"].items()}


def set_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    dataset: SegDataset,
    batches: list[list[int]],
    *,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    scaler: "torch.amp.GradScaler | None" = None,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> float:
    """One epoch over `batches` (global index lists); returns the mean loss.

    Raises _Interrupted if `should_stop()` turns true or the loss is not finite.
    """
    model.train()
    total = 0.0
    for step, batch in enumerate(batches):
        if should_stop is not None and should_stop():
            raise _Interrupted("deadline")
        if world > 1:
            per = len(batch) // world
            batch = batch[rank * per: (rank + 1) * per]
        idx = torch.as_tensor(batch, dtype=torch.long)
        x = dataset.images[idx].to(device, non_blocking=True)
        y = dataset.labels[idx].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _Interrupted("non-finite loss")
        total += value
        if on_batch is not None:
            on_batch()
    return total / max(1, len(batches))


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (stop decisions must match)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_batching(n: int, train_spec: TrainSpec, world: int) -> None:
    if world > 1 and (train_spec.batch_size % world or n < train_spec.batch_size):
        raise TrainError(
            f"batch size {train_spec.batch_size} must be a multiple of the {world} workers and at most the {n} images"
        )


def train(
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    dataset: SegDataset,
    seed: bytes,
    deadline: float,
    blob_store: BlobStore,
    device: str = "cpu",
    progress: bool = True,
    num_threads: int | None = None,
    deterministic: bool = False,
) -> TrainResult:
    """Train until `max_epochs` or the deadline (time.time() based), checkpointing every epoch.

    CPU training is bit-for-bit reproducible at a given thread count without
    torch's deterministic-algorithm switch (which costs about 20% here);
    `deterministic=True` turns it on anyway (and on CUDA, where it matters).
    Verification never needs bitwise equality: replays have a tolerance.
    """
    seed = check_seed(seed)
    model_spec.validate()
    train_spec.validate()
    if dataset.num_classes != model_spec.num_classes or dataset.images.shape[1] != model_spec.in_channels:
        raise TrainError("dataset classes/channels do not match the model spec")
    if tuple(dataset.images.shape[2:]) != tuple(model_spec.patch_size):
        raise TrainError(f"dataset images are {tuple(dataset.images.shape[2:])}, the spec's patch is {model_spec.patch_size}")
    if time.time() >= deadline:
        raise DeadlineError("the training deadline is already past")
    rank, world = get_dist_info()
    check_batching(len(dataset), train_spec, world)
    dev = torch.device(device)
    use_amp = dev.type == "cuda"

    with deterministic_mode(num_threads, device=str(dev), algorithms=deterministic or dev.type == "cuda"):
        base = init_model(model_spec, seed).to(dev)
        model: nn.Module = base
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(base, device_ids=[dev.index] if dev.type == "cuda" else None)
        optimizer = make_optimizer(base, train_spec)
        loss_fn = make_loss(train_spec)
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        data_digest = compute_dataset_digest(dataset)

        save_seconds = [0.0]
        # Blob writes (hash + write + fsync) overlap the next epoch; a single
        # worker keeps them in order. Encoding is done here, on a snapshot.
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pouw-ckpt") if rank == 0 else None
        pending: list[Future] = []

        def put(data: bytes) -> None:
            t = time.time()
            blob_store.put_bytes(data)
            save_seconds[0] = max(save_seconds[0], time.time() - t)

        def save(epoch: int, prev: bytes, loss: float) -> tuple[bytes, bytes]:
            t = time.time()
            model_file = encode_model(base, model_spec)
            ck = Checkpoint(epoch, prev, seed, model_spec, train_spec, data_digest, world, loss, model_file,
                            get_optimizer_state(optimizer))
            data = encode_checkpoint(ck)
            if writer is not None:
                pending.append(writer.submit(put, data))
            save_seconds[0] = max(save_seconds[0], time.time() - t)
            return compute_digest(data), model_file

        digest, model_file = save(0, ZERO_DIGEST, 0.0)
        digests = [digest]
        losses: list[float] = []
        seconds: list[float] = []
        planned = train_spec.max_epochs
        stop_reason = "max_epochs"
        bar = _progress_bar(train_spec.max_epochs, progress and rank == 0)
        n = len(dataset)
        try:
            for epoch in range(1, train_spec.max_epochs + 1):
                if seconds and _agree(time.time() + SAFETY * max(seconds) > deadline, world, dev):
                    stop_reason = "deadline"
                    break
                batches = compute_batches(compute_epoch_order(seed, epoch, n), train_spec.batch_size)
                started = time.time()
                try:
                    loss = run_epoch(
                        model, optimizer, loss_fn, dataset, batches, device=dev, rank=rank, world=world,
                        scaler=scaler, should_stop=lambda: _agree(time.time() + 2 * save_seconds[0] >= deadline, world, dev),
                    )
                except _Interrupted as stop:
                    stop_reason = stop.reason
                    break
                digest, model_file = save(epoch, digests[-1], loss)
                digests.append(digest)
                losses.append(loss)
                seconds.append(time.time() - started)
                if epoch == 1:
                    left = deadline - time.time()
                    planned = max(1, min(train_spec.max_epochs, 1 + int(left // (SAFETY * seconds[0]))))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", planned=planned)
        finally:
            bar.close()
            if writer is not None:
                writer.shutdown(wait=True)
        for f in pending:
            f.result()  # a failed checkpoint write fails the run
    if not losses:
        if stop_reason == "deadline":
            raise DeadlineError("the deadline came before the first epoch finished")
        raise TrainError(f"training stopped in epoch 1: {stop_reason}")
    return TrainResult(
        model_digest=compute_digest(model_file),
        checkpoint_digests=tuple(digests),
        epochs=len(losses),
        epoch_losses=tuple(losses),
        epoch_seconds=tuple(seconds),
        planned_epochs=planned,
        stop_reason=stop_reason,
        seed=seed,
        data_digest=data_digest,
        world_size=world,
        device=str(dev),
        model_file=model_file,
    )


def replay_epoch(ck: Checkpoint, dataset: SegDataset, device: str = "cpu",
                 num_threads: int | None = None) -> dict[str, torch.Tensor]:
    """Re-run epoch ck.epoch + 1 from checkpoint `ck` on one process; returns the new state dict.

    The global batches are the same as in training whatever the miner's world
    size was, so the result matches the next checkpoint up to float rounding.
    """
    from pouw.seg.weights import decode_model

    dev = torch.device(device)
    with deterministic_mode(num_threads, device=str(dev)):
        model = build_model(ck.model_spec)
        model.load_state_dict(decode_model(ck.model_file, ck.model_spec), strict=True)
        model.to(dev)
        optimizer = make_optimizer(model, ck.train_spec)
        set_optimizer_state(optimizer, ck.optimizer_state)
        loss_fn = make_loss(ck.train_spec)
        order = compute_epoch_order(ck.seed, ck.epoch + 1, len(dataset))
        try:
            run_epoch(model, optimizer, loss_fn, dataset, compute_batches(order, ck.train_spec.batch_size), device=dev)
        except _Interrupted as stop:
            raise TrainError(f"replay of epoch {ck.epoch + 1} failed: {stop.reason}") from None
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="epoch", disable=not enabled, leave=False)


__all__ = [
    "train", "TrainResult", "TrainError", "DeadlineError", "replay_epoch", "run_epoch", "init_model",
    "make_loss", "make_optimizer", "get_dist_info", "SAFETY",
]
