"""Training on several devices: one model, DistributedDataParallel, started by the miner itself.

``train_on_devices(devices, ...)`` runs ``pouw.seg.train.train`` in-process
for one device. For W > 1 devices it spawns W processes (torch
multiprocessing, ``spawn``); they meet through a TCPStore this process
holds on a free loopback port (no port race, no torchrun) and form a
process group (NCCL on CUDA, gloo on CPU). Each rank trains its slice of
every global batch; rank 0 writes the checkpoints and sends the result
back. The checkpoints, seeds and positions are those of a one-device run,
so a one-process replay verifies them (docs/useful_work.md §5).

Every rank's failure comes back as a TrainError naming the rank (the kind,
DeadlineError or TrainError, is kept); a rank that dies without a word
(killed, out of memory) is reported with its exit code. All ranks are
stopped and reaped before this function returns or raises, whatever
happened (Ctrl-C included), and on Linux a rank also ends when the miner
process itself is killed.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
from pathlib import Path

from pouw.blobstore import BlobStore
from pouw.seg.data import Dataset
from pouw.seg.spec import ModelSpec, TrainSpec
from pouw.seg.train import DeadlineError, TrainError, TrainResult, train

LOOPBACK = "127.0.0.1"
JOIN_GRACE_SECONDS = 60.0
"""How long past the deadline the ranks may take to finish (the last save, start-up on a loaded machine)."""
POLL_SECONDS = 0.2


def parse_devices(text: str, cuda_count: int | None = None) -> tuple[str, ...]:
    """Devices from a comma list ("cuda:0,cuda:1", "cpu", "cpu,cpu") or "all" (every CUDA device).

    Raises ValueError for an unknown name, a CUDA index this machine lacks,
    a repeated CUDA device, or a mix of CPU and CUDA. Several "cpu" entries
    mean that many CPU processes (tests, and machines without a GPU).
    """
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = text.strip()
    if text == "all":
        if cuda_count == 0:
            raise ValueError("no CUDA device on this machine (use cpu)")
        return tuple(f"cuda:{i}" for i in range(cuda_count))
    devices = tuple(d.strip() for d in text.split(","))
    for d in devices:
        if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit()):
            raise ValueError(f"{d!r} is not a device (use cpu, cuda:N or all)")
        if d.startswith("cuda:") and int(d[5:]) >= cuda_count:
            raise ValueError(f"device {d} is not available on this machine ({cuda_count} CUDA device(s))")
    kinds = {d.split(":")[0] for d in devices}
    if len(kinds) > 1:
        raise ValueError("devices must be all CPU or all CUDA")
    cuda = [d for d in devices if d != "cpu"]
    if len(set(cuda)) != len(cuda):
        raise ValueError("a CUDA device is listed twice")
    return devices


def train_on_devices(
    devices: tuple[str, ...] | list[str],
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    dataset: Dataset,
    seed: bytes,
    deadline: float,
    blob_store: BlobStore,
    progress: bool = True,
    num_threads: int | None = None,
    precision: str = "auto",
    process_group: bool = False,
) -> TrainResult:
    """Train one model on `devices` together; the result is rank 0's (see module doc).

    `num_threads` is the CPU thread budget of the whole run, shared among
    the ranks. `process_group` runs even a single device as a one-rank
    process group in its own process (exercises NCCL on a one-GPU machine).
    """
    devices = tuple(devices)
    if not devices:
        raise TrainError("no device to train on")
    if len(devices) == 1 and not process_group:
        result = train(model_spec, train_spec, dataset, seed, deadline, blob_store, device=devices[0],
                       progress=progress, num_threads=num_threads, precision=precision)
        assert result is not None
        return result
    world = len(devices)
    if train_spec.batch_size % world:
        raise TrainError(f"batch size {train_spec.batch_size} must be a multiple of the {world} devices")
    threads = max(1, (num_threads or os.cpu_count() or 1) // world)
    job = dict(model_spec=model_spec, train_spec=train_spec, dataset=dataset, seed=seed, deadline=deadline,
               store_root=str(blob_store.root), progress=progress, threads=threads, precision=precision)
    return _run_ranks(devices, job)


def _run_ranks(devices: tuple[str, ...], job: dict) -> TrainResult:
    import torch.distributed as dist
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    world = len(devices)
    timeout = max(60.0, job["deadline"] - time.time() + JOIN_GRACE_SECONDS)
    store = dist.TCPStore(LOOPBACK, 0, world_size=None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=_rank_main, args=(rank, devices, store.port, timeout, job, results),
                         name=f"pouw-train-rank{rank}", daemon=True) for rank in range(world)]
    try:
        for p in procs:
            p.start()
        return _collect(procs, results, job["deadline"] + JOIN_GRACE_SECONDS)
    finally:
        _stop(procs)
        del store


def _collect(procs, results, hard_deadline: float) -> TrainResult:
    """Wait for every rank; the first failure (reported or silent) stops the run."""
    reported: dict[int, object] = {}
    while len(reported) < len(procs):
        while not results.empty():
            kind, rank, payload = results.get()
            if kind == "error":
                error_cls = DeadlineError if payload[0] == "DeadlineError" else TrainError
                raise error_cls(f"rank {rank} ({procs[rank].name}) failed: {payload[1]}")
            reported[rank] = payload
        for rank, p in enumerate(procs):
            if rank not in reported and p.exitcode is not None and results.empty():
                raise TrainError(f"rank {rank} exited with code {p.exitcode} without a result"
                                 + (" (killed by a signal)" if p.exitcode < 0 else ""))
        if time.time() > hard_deadline:
            raise TrainError(f"ranks {sorted(set(range(len(procs))) - set(reported))} did not finish in time")
        time.sleep(POLL_SECONDS)
    result = reported[0]
    assert isinstance(result, TrainResult)
    return result


def _stop(procs) -> None:
    """Reap every rank: those still running get SIGTERM, then SIGKILL."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is None:
            continue
        p.join(5.0)
        if p.is_alive():
            p.kill()
            p.join(5.0)


def _die_with_parent() -> None:
    """Ask Linux to end this rank when the miner process dies, however it dies (no orphans holding a GPU)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own clean-up still reaps the ranks


def _rank_main(rank: int, devices: tuple[str, ...], port: int, timeout: float, job: dict, results) -> None:
    """One rank: join the group, train, report (the result on rank 0, an error on any rank)."""
    _die_with_parent()
    import torch
    import torch.distributed as dist

    device = devices[rank]
    try:
        torch.set_num_threads(job["threads"])
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        store = dist.TCPStore(LOOPBACK, port, is_master=False, timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", store=store, rank=rank,
                                world_size=len(devices), timeout=datetime.timedelta(seconds=timeout))
        try:
            result = train(job["model_spec"], job["train_spec"], job["dataset"], job["seed"], job["deadline"],
                           BlobStore(Path(job["store_root"])), device=device, progress=job["progress"] and rank == 0,
                           num_threads=job["threads"], precision=job["precision"])
        finally:
            dist.destroy_process_group()
        results.put(("ok", rank, result))
    except BaseException as exc:  # every failure must reach the parent, which stops the other ranks
        detail = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, TrainError):
            detail += "\n" + "".join(traceback.format_exception(exc)[-6:])
        results.put(("error", rank, (type(exc).__name__, detail)))


__all__ = ["parse_devices", "train_on_devices", "LOOPBACK"]
