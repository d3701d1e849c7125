"""Deterministic, deadline-bounded training with a checkpoint per segment.

Rules (see docs/useful_work.md §5):

* Initial weights come from ``torch.manual_seed(derive_int_seed(seed, "init"))``;
  step t's input from ``pouw.seg.batches`` (epoch order and patches fixed by
  the seed); checkpoints at the positions ``pouw.seg.trajectory`` plans.
* The deadline is checked between chunks of steps: a chunk is started only
  if SAFETY x the slowest step so far, times its length, still fits before
  the deadline with twice the slowest checkpoint save kept in hand. When
  nothing more fits, the steps since the last checkpoint become a last,
  shorter segment. So the trainer uses its whole budget and never runs past
  its deadline by more than one step.
* Precision: fp32 everywhere by default, TF32 off on CUDA: that is what a
  CPU replay reproduces within REPLAY_TOLERANCE. bf16 autocast (weights,
  gradients and optimizer state fp32, no loss scaling, no skipped steps, the
  first FP32_WARMUP_STEPS steps fp32) is available for measurement: its
  replays land up to 0.16 away, as far as forged segments (docs/useful_work.md §7).
  Replays always run fp32.
* Several processes (torch.distributed initialised, see pouw.seg.launch):
  DistributedDataParallel, each rank taking its slice of every global batch;
  rank 0 writes the blobs and returns the result.
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

from pouw.blobstore import BlobStore
from pouw.seg.batches import BatchSource, iter_batches
from pouw.seg.data import Dataset, SegDataset, compute_dataset_digest
from pouw.seg.determinism import DETERMINISTIC_THREADS, check_seed, derive_int_seed, deterministic_mode
from pouw.seg.models import build_model
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.trajectory import MAX_CHECKPOINTS, Layout, make_layout
from pouw.seg.weights import (
    PRECISIONS, ZERO_DIGEST, Checkpoint, compute_digest, compute_update_norm, decode_model, split_checkpoint,
    encode_model,
)

SAFETY = 1.25
"""Start a chunk of steps only if SAFETY x its estimated time still fits before the deadline."""
FP32_WARMUP_STEPS = 4
"""The first steps of a bf16 run are fp32: Adam's first updates are sign(gradient), and a gradient near
zero takes a random sign under bf16 rounding (measured: bf16 from step 0 puts the fp32 replay of the
first segment up to 0.34 away, with these steps fp32 the first segments stay below 0.08)."""
MAX_PENDING_WRITES = 1
"""Checkpoint blobs being written while training goes on; the next save waits for them."""


class TrainError(RuntimeError):
    """Training could not produce even one segment (deadline, NaN loss, bad input)."""


class DeadlineError(TrainError):
    """The deadline is already past, or too close for one step."""


@dataclass(frozen=True)
class TrainResult:
    """What a miner commits to and claims."""

    model_digest: bytes
    """SHA-256 of the final model file (the last checkpoint's weights)."""
    checkpoint_digests: tuple[bytes, ...]
    """Checkpoint 0 (initial weights), then one per segment."""
    checkpoint_positions: tuple[int, ...]
    """Optimizer steps done before each checkpoint."""
    update_norms: tuple[float, ...]
    """For checkpoint i >= 1: L2 norm of its weights minus checkpoint i-1's (weights.compute_update_norm)."""
    segment_losses: tuple[float, ...]
    """Mean training loss of each segment."""
    segment_seconds: tuple[float, ...]
    """Wall time of each segment, its checkpoint save included."""
    steps: int
    """Optimizer steps trained."""
    epochs: int
    """Whole epochs trained."""
    steps_per_epoch: int
    """Optimizer steps in one epoch."""
    segment_steps: int
    """Most steps between two checkpoints (trajectory.compute_segment_steps)."""
    stop_reason: str
    """"max_epochs", "deadline", "checkpoint limit" or "non-finite loss"."""
    seed: bytes
    """The training seed."""
    data_digest: bytes
    """compute_dataset_digest of the training set."""
    world_size: int
    """Data-parallel workers."""
    device: str
    """Device of rank 0."""
    precision: str
    """"fp32" or "bf16"."""
    model_file: bytes
    """The final model file."""
    step_seconds: float
    """Time spent in training steps (all chunks), the rest of the wall time being set-up and saves."""
    wall_seconds: float
    """Time from the call to the return."""

    @property
    def epoch_losses(self) -> tuple[float, ...]:
        """Deprecated name of segment_losses (a segment is at most an epoch)."""
        return self.segment_losses


# -- set-up ------------------------------------------------------------------------------


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
    """Load a copy of `state` (load_state_dict would keep the very tensors, and the steps change them in place)."""
    sd = optimizer.state_dict()
    sd["state"] = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in slot.items()}
                   for i, slot in state.items()}
    optimizer.load_state_dict(sd)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" is fp32 on every device: the only precision whose replays stay well inside the tolerance."""
    if precision == "auto":
        return "fp32"
    if precision not in PRECISIONS:
        raise TrainError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def check_train_inputs(model_spec: ModelSpec, train_spec: TrainSpec, dataset: Dataset, world: int) -> None:
    """Refuse data that does not fit the task before any work is done."""
    model_spec.validate()
    train_spec.validate()
    if dataset.num_classes != model_spec.num_classes or dataset.in_channels != model_spec.in_channels:
        raise TrainError("dataset classes/channels do not match the model spec")
    patch = tuple(model_spec.patch_size)
    if isinstance(dataset, SegDataset):
        if dataset.get_shape(0) != patch:
            raise TrainError(f"dataset images are {dataset.get_shape(0)}, the spec's patch is {patch}")
    elif any(any(s < p for s, p in zip(dataset.get_shape(i), patch)) for i in range(len(dataset))):
        raise TrainError(f"a volume is smaller than the spec's patch {patch}")
    n = len(dataset)
    if world > 1 and (train_spec.batch_size % world or n < train_spec.batch_size):
        raise TrainError(
            f"batch size {train_spec.batch_size} must be a multiple of the {world} workers and at most the {n} images"
        )


@dataclass
class Session:
    """The live training objects of one process."""

    model: nn.Module
    """What the steps call (DistributedDataParallel around `base` when world > 1)."""
    base: nn.Module
    """The network itself, whose state dict the checkpoints hold."""
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    precision: str
    rank: int = 0
    world: int = 1


def open_session(model_spec: ModelSpec, train_spec: TrainSpec, seed: bytes, device: torch.device, precision: str,
                 rank: int, world: int) -> Session:
    """Initial network (on `device`, wrapped for DDP when world > 1), optimizer and loss."""
    base = init_model(model_spec, seed).to(device)
    model: nn.Module = base
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(base, device_ids=[device.index] if device.type == "cuda" else None)
    return Session(model, base, make_optimizer(base, train_spec), make_loss(train_spec), device, precision, rank, world)


# -- steps -------------------------------------------------------------------------------


def get_autocast(session: Session, step: int):
    """The precision context of step `step`."""
    if session.precision == "fp32" or step < FP32_WARMUP_STEPS:
        return contextlib.nullcontext()
    return torch.autocast(device_type=session.device.type, dtype=torch.bfloat16)


def run_steps(session: Session, source: BatchSource, start: int, stop: int) -> torch.Tensor:
    """Train steps start..stop-1; returns the sum of their losses (a 0-d tensor on the device, not synced)."""
    session.model.train()
    total = torch.zeros((), dtype=torch.float32, device=session.device)
    for step, (x, y) in enumerate(iter_batches(source, start, stop), start):
        x = x.to(session.device, non_blocking=True)
        y = y.to(session.device, non_blocking=True).long()
        session.optimizer.zero_grad(set_to_none=True)
        with get_autocast(session, step):
            logits = session.model(x)
        loss = session.loss_fn(logits.float(), y)
        loss.backward()
        session.optimizer.step()
        total += loss.detach()
    return total


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agree_min(value: int, session: Session) -> int:
    """The smallest `value` over all ranks (decisions about stopping must match)."""
    if session.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=session.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def agree_mean_loss(loss_sum: torch.Tensor, steps: int, session: Session) -> float:
    """Mean loss per step over all ranks (every rank gets the same float)."""
    total = loss_sum.detach().reshape(1).to(torch.float64)
    if session.world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total.item()) / (steps * session.world)


# -- the budget --------------------------------------------------------------------------


@dataclass
class Budget:
    """How many steps may still start before the deadline, from what steps and saves have cost so far."""

    deadline: float
    save_seconds: float = 0.0
    """Slowest checkpoint save (encode + write) so far."""
    chunks: list = field(default_factory=list)
    """Seconds per step of each chunk so far."""

    def get_step_seconds(self) -> float | None:
        """Slowest per-step time of the recent chunks (the first, warm-up chunk only while it is alone)."""
        recent = self.chunks[1:][-8:] or self.chunks
        return max(recent) if recent else None

    def get_safe_steps(self, now: float) -> int:
        """Steps the next chunk may run: half of what fits, so later chunks re-measure; 0 when nothing fits."""
        left = self.deadline - now - 2.0 * self.save_seconds
        per_step = self.get_step_seconds()
        if left <= 0:
            return 0
        if per_step is None:
            return 1
        fits = int(left // (SAFETY * per_step))
        return fits if fits <= 1 else fits // 2

    def record_chunk(self, seconds: float, steps: int) -> None:
        self.chunks.append(seconds / steps)

    def record_save(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds, seconds)


# -- checkpoints -------------------------------------------------------------------------


class CheckpointWriter:
    """Encodes checkpoints on rank 0 and writes them to the blob store in the background, in order."""

    def __init__(self, store: BlobStore, budget: Budget, *, seed: bytes, model_spec: ModelSpec,
                 train_spec: TrainSpec, data_digest: bytes, world: int, precision: str, enabled: bool) -> None:
        self.store = store
        self.budget = budget
        self.meta = dict(seed=seed, model_spec=model_spec, train_spec=train_spec, data_digest=data_digest,
                         world_size=world, precision=precision)
        self.enabled = enabled
        self.digests: list[bytes] = []
        self.positions: list[int] = []
        self.norms: list[float] = []
        self.model_file = b""
        self._weights: dict[str, torch.Tensor] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pouw-ckpt") if enabled else None
        self._pending: list[Future] = []

    def save(self, session: Session, position: int, mean_loss: float) -> None:
        """Checkpoint the session's weights and optimizer state at `position` (no-op off rank 0)."""
        self.positions.append(position)
        if not self.enabled:
            return
        started = time.time()
        weights = {k: v.detach().to("cpu", copy=True) for k, v in session.base.state_dict().items()}
        model_file = encode_model(weights, self.meta["model_spec"])
        prev = self.digests[-1] if self.digests else ZERO_DIGEST
        ck = Checkpoint(len(self.digests), position, prev, model_file=model_file, mean_loss=mean_loss,
                        optimizer_state=get_optimizer_state(session.optimizer), **self.meta)
        header, parts = split_checkpoint(ck)
        if self._weights is not None:
            self.norms.append(compute_update_norm(self._weights, weights))
        self._weights = weights
        self.digests.append(compute_digest(header))
        self.model_file = model_file
        self._wait(MAX_PENDING_WRITES - 1)
        self._pending.append(self._pool.submit(self._put, parts + [header], time.time() - started))

    def _put(self, blobs: list[bytes], encode_seconds: float) -> None:
        """Write a checkpoint's parts, then its header (a header in the store names parts already there)."""
        started = time.time()
        for data in blobs:
            self.store.put_bytes(data)
        self.budget.record_save(encode_seconds + time.time() - started)

    def _wait(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()  # a failed checkpoint write fails the run

    def close(self) -> None:
        """Wait for every write; raises the first write error."""
        if self._pool is None:
            return
        try:
            self._wait(0)
        finally:
            self._pool.shutdown(wait=True)


# -- progress ----------------------------------------------------------------------------


class Progress:
    """A step bar on stderr (rank 0 only)."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="training", unit="step", disable=not enabled, leave=False)

    def update(self, steps: int, layout: Layout, position: int, checkpoints: int, loss: float | None = None) -> None:
        self.bar.update(steps)
        post = {"epoch": layout.get_epoch(max(0, position - 1)), "ckpt": checkpoints}
        if loss is not None:
            post["loss"] = f"{loss:.4f}"
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()


# -- the run -----------------------------------------------------------------------------


@dataclass
class Run:
    """What the segment loop produced."""

    stop_reason: str = "max_epochs"
    losses: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    step_seconds: float = 0.0


def run_segment(session: Session, source: BatchSource, budget: Budget, start: int, end: int,
                progress: Progress, checkpoints: int) -> tuple[int, torch.Tensor, float, bool]:
    """Train from `start` towards `end` in chunks the budget allows; (reached, loss sum, step time, deadline hit)."""
    position = start
    loss_sum = torch.zeros((), dtype=torch.float32, device=session.device)
    step_seconds = 0.0
    while position < end:
        steps = min(agree_min(budget.get_safe_steps(time.time()), session), end - position)
        if steps <= 0:
            return position, loss_sum, step_seconds, True
        started = time.perf_counter()
        loss_sum = loss_sum + run_steps(session, source, position, position + steps)
        synchronize(session.device)
        elapsed = time.perf_counter() - started
        budget.record_chunk(elapsed, steps)
        step_seconds += elapsed
        position += steps
        progress.update(steps, source.layout, position, checkpoints)
    return position, loss_sum, step_seconds, False


def run_trajectory(session: Session, source: BatchSource, layout: Layout, budget: Budget, writer: CheckpointWriter,
                   progress: Progress) -> Run:
    """Segments until max_epochs, the deadline, the checkpoint limit or a non-finite loss."""
    run = Run()
    position = 0
    while True:
        if position >= layout.total_steps:
            run.stop_reason = "max_epochs"
            return run
        if len(writer.positions) >= MAX_CHECKPOINTS:
            run.stop_reason = "checkpoint limit"
            return run
        started = time.time()
        reached, loss_sum, step_seconds, late = run_segment(
            session, source, budget, position, layout.get_next_boundary(position), progress, len(writer.positions))
        run.step_seconds += step_seconds
        if reached > position:
            loss = agree_mean_loss(loss_sum, reached - position, session)
            if not math.isfinite(loss):
                run.stop_reason = "non-finite loss"  # the segment is thrown away
                return run
            writer.save(session, reached, loss)
            run.losses.append(loss)
            run.seconds.append(time.time() - started)
            progress.update(0, layout, reached, len(writer.positions), loss)
            position = reached
        if late:
            run.stop_reason = "deadline"
            return run


def train(
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    dataset: Dataset,
    seed: bytes,
    deadline: float,
    blob_store: BlobStore,
    device: str = "cpu",
    progress: bool = True,
    num_threads: int | None = None,
    deterministic: bool = False,
    precision: str = "auto",
) -> TrainResult | None:
    """Train until `max_epochs` or the deadline (time.time() based), checkpointing every segment.

    Returns the result on rank 0 (always, in a single process) and None on
    the other ranks of a data-parallel run. CPU training is bit-for-bit
    reproducible at a given thread count without torch's
    deterministic-algorithm switch (which costs about 20% here);
    `deterministic=True` turns it on anyway (and on CUDA, where it matters).
    Verification never needs bitwise equality: replays have a tolerance.
    """
    began = time.time()
    seed = check_seed(seed)
    rank, world = get_dist_info()
    check_train_inputs(model_spec, train_spec, dataset, world)
    if time.time() >= deadline:
        raise DeadlineError("the training deadline is already past")
    dev = torch.device(device)
    mode = resolve_precision(precision, dev)
    layout = make_layout(model_spec, train_spec, len(dataset))
    with deterministic_mode(num_threads, device=str(dev), algorithms=deterministic or dev.type == "cuda"):
        session = open_session(model_spec, train_spec, seed, dev, mode, rank, world)
        source = BatchSource(dataset, seed, layout, train_spec.batch_size, model_spec.patch_size, rank, world,
                             pin=dev.type == "cuda")
        budget = Budget(deadline)
        writer = CheckpointWriter(blob_store, budget, seed=seed, model_spec=model_spec, train_spec=train_spec,
                                  data_digest=compute_dataset_digest(dataset) if rank == 0 else ZERO_DIGEST,
                                  world=world, precision=mode,
                                  enabled=rank == 0)
        bar = Progress(layout.total_steps, progress and rank == 0)
        try:
            writer.save(session, 0, 0.0)
            run = run_trajectory(session, source, layout, budget, writer, bar)
        finally:
            bar.close()
            writer.close()
    if not run.losses:
        if run.stop_reason == "deadline":
            raise DeadlineError("the deadline came before the first step finished")
        raise TrainError(f"training stopped in the first segment: {run.stop_reason}")
    if rank != 0:
        return None
    steps = writer.positions[-1]
    return TrainResult(
        model_digest=compute_digest(writer.model_file),
        checkpoint_digests=tuple(writer.digests),
        checkpoint_positions=tuple(writer.positions),
        update_norms=tuple(writer.norms),
        segment_losses=tuple(run.losses),
        segment_seconds=tuple(run.seconds),
        steps=steps,
        epochs=steps // layout.steps_per_epoch,
        steps_per_epoch=layout.steps_per_epoch,
        segment_steps=layout.segment_steps,
        stop_reason=run.stop_reason,
        seed=seed,
        data_digest=writer.meta["data_digest"],
        world_size=world,
        device=str(dev),
        precision=mode,
        model_file=writer.model_file,
        step_seconds=run.step_seconds,
        wall_seconds=time.time() - began,
    )


# -- replay ------------------------------------------------------------------------------


def replay_segment(ck: Checkpoint, end_position: int, dataset: Dataset, device: str = "cpu",
                   num_threads: int | None = DETERMINISTIC_THREADS) -> tuple[dict[str, torch.Tensor], dict]:
    """Re-run steps ck.position..end_position-1 from checkpoint `ck` on one process, in fp32.

    Returns the new state dict and optimizer state (on the CPU). The global
    batches are the same as in training whatever the miner's world size was,
    so the result matches the next checkpoint up to float rounding. Raises
    TrainError when the checkpoint's optimizer state does not fit the network
    or the loss turns non-finite.
    """
    if end_position <= ck.position:
        raise TrainError("a segment must contain at least one step")
    dev = torch.device(device)
    layout = make_layout(ck.model_spec, ck.train_spec, len(dataset))
    with deterministic_mode(num_threads, device=str(dev)):
        model = build_model(ck.model_spec)
        model.load_state_dict(decode_model(ck.model_file, ck.model_spec), strict=True)
        model.to(dev)
        optimizer = make_optimizer(model, ck.train_spec)
        try:
            set_optimizer_state(optimizer, ck.optimizer_state)
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainError(f"checkpoint {ck.index}: optimizer state does not load: {exc}") from None
        # Anything else that goes wrong here (out of memory) is the verifier's problem, not the claim's.
        session = Session(model, model, optimizer, make_loss(ck.train_spec), dev, "fp32")
        source = BatchSource(dataset, ck.seed, layout, ck.train_spec.batch_size, ck.model_spec.patch_size)
        loss = float(run_steps(session, source, ck.position, end_position))
        if not math.isfinite(loss):
            raise TrainError(f"replay from checkpoint {ck.index} gives a non-finite loss")
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state = {i: {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in slot.items()}
                 for i, slot in get_optimizer_state(optimizer).items()}
        return weights, state


__all__ = [
    "train", "TrainResult", "TrainError", "DeadlineError", "replay_segment", "run_steps", "init_model",
    "make_loss", "make_optimizer", "get_dist_info", "SAFETY", "FP32_WARMUP_STEPS", "Session", "open_session",
    "Budget", "CheckpointWriter",
]
