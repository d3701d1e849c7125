"""Seeds, data order and deterministic execution.

Everything random in training is derived from one 32-byte seed with a domain
tag, so a verifier holding the seed reproduces initial weights and the batch
order of any epoch. The seed itself is a consensus value
(`consensus.rules.compute_training_seed`) that callers pass in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Iterator

import torch

SEED_SIZE = 32
DETERMINISTIC_THREADS = 1
"""Thread count for evaluation and replays: fixes the order of float reductions."""


def derive_seed(seed: bytes, label: str) -> bytes:
    """An independent 32-byte sub-seed of `seed` for one purpose."""
    return hashlib.sha256(b"pouw/seed/v1\x00" + label.encode() + b"\x00" + bytes(seed)).digest()


def derive_int_seed(seed: bytes, label: str) -> int:
    """A 63-bit integer sub-seed (torch.manual_seed / torch.Generator)."""
    return int.from_bytes(derive_seed(seed, label)[:8], "big") >> 1


def compute_epoch_order(seed: bytes, epoch: int, n: int) -> list[int]:
    """The sample order of `epoch` (1-based): a permutation of range(n)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_int_seed(seed, f"order/{epoch}"))
    return torch.randperm(n, generator=g).tolist()


def compute_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """Global batches of one epoch: full batches only; one batch of all when n < batch_size."""
    if len(order) < batch_size:
        return [list(order)]
    return [order[i: i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def check_seed(seed: bytes) -> bytes:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_SIZE:
        raise ValueError(f"training seed must be {SEED_SIZE} bytes")
    return bytes(seed)


@contextlib.contextmanager
def deterministic_mode(num_threads: int | None = DETERMINISTIC_THREADS, device: str = "cpu",
                       algorithms: bool = True) -> Iterator[None]:
    """Deterministic algorithms (unless `algorithms` is False) and optionally a fixed thread count.

    On CUDA it also turns TF32 off (fp32 matmuls and convolutions keep their
    23-bit mantissa, so fp32 work stays replayable on a CPU) and cuDNN's
    benchmark mode off (it picks algorithms by timing).
    """
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    cuda = str(device).startswith("cuda")
    prev_cuda = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
    # Some CUDA kernels (3D interpolation backward) have no deterministic form: warn, not fail.
    # The switch is only touched when asked for: its first use imports torch's compiler stack (seconds).
    if algorithms:
        torch.use_deterministic_algorithms(True, warn_only=cuda)
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if algorithms:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        if cuda:
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark) = prev_cuda
        if num_threads:
            torch.set_num_threads(prev_threads)
