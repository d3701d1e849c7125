"""Model and checkpoint files: canonical, deterministic, and safe to load.

A miner's files are untrusted, so nothing here unpickles. Both formats are
msgpack arrays (bytes as msgpack bin):

Model file (its SHA-256 is the model digest)::

    ["pouw-model", 1, encode(ModelSpec), [[name, dtype, [shape...], raw], ...]]

with tensors sorted by name, ``raw`` the C-order little-endian bytes. The same
weights always give the same bytes. Loading checks the spec, then that the
tensors are exactly the state dict of that architecture (names, shapes,
dtypes) and finite.

Checkpoint file (one per segment, checkpoint 0 = initial weights)::

    ["pouw-ckpt", 2, index, position, prev_digest, seed, encode(ModelSpec), encode(TrainSpec),
     data_digest, world_size, precision, mean_loss, model_file_bytes, optimizer_state]

``position`` is the number of optimizer steps trained before the checkpoint
(pouw.seg.trajectory says where each may lie); ``precision`` how the miner
computed ("fp32" or "bf16", replays always run fp32). ``prev_digest`` is the
SHA-256 of the previous checkpoint file (32 zero bytes for checkpoint 0), so
the digests form a hash chain. ``optimizer_state`` is
``[[param_index, [[key, value], ...]], ...]`` sorted, values tensors
``["t", dtype, shape, raw]``, ``["f", x]``, ``["i", n]`` or ``["n"]``.

A checkpoint is one self-contained blob: what a replay of the next segment
needs (weights, optimizer state, seed, position) plus the links of the chain.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import torch
from torch import nn

from pouw.encoding import DecodeError, decode, encode
from pouw.seg.spec import ModelSpec, SpecError, TrainSpec

MODEL_MAGIC = "pouw-model"
CKPT_MAGIC = "pouw-ckpt"
FORMAT_VERSION = 1
"""Version of the model file format."""
CKPT_VERSION = 2
"""Version of the checkpoint format (2: segments, positions and precision)."""
PRECISIONS = ("fp32", "bf16")
"""How a miner may compute: fp32, or bf16 autocast (weights and optimizer stay fp32)."""
MAX_MODEL_FILE = 16 << 30
ZERO_DIGEST = bytes(32)

_DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class WeightsError(ValueError):
    """A model or checkpoint file that is malformed or does not fit its spec."""


def compute_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# -- tensors -------------------------------------------------------------------


def encode_tensor(t: torch.Tensor) -> list:
    t = t.detach().cpu().contiguous()
    if t.dtype not in _DTYPE_NAMES:
        raise WeightsError(f"cannot store tensors of dtype {t.dtype}")
    arr = t.numpy()
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return [_DTYPE_NAMES[t.dtype], list(t.shape), arr.tobytes()]


def decode_tensor(item: object, where: str) -> torch.Tensor:
    if not (isinstance(item, list) and len(item) == 3):
        raise WeightsError(f"{where}: expected [dtype, shape, bytes]")
    dtype_name, shape, raw = item
    if dtype_name not in _DTYPES:
        raise WeightsError(f"{where}: unknown dtype {dtype_name!r}")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise WeightsError(f"{where}: bad shape {shape!r}")
    if not isinstance(raw, bytes):
        raise WeightsError(f"{where}: tensor data must be bytes")
    dtype = _DTYPES[dtype_name]
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
    if len(raw) != math.prod(shape) * np_dtype.itemsize:
        raise WeightsError(f"{where}: {len(raw)} bytes do not fill shape {shape} of {dtype_name}")
    arr = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    return torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))


def _unpack(data: bytes, what: str) -> list:
    if len(data) > MAX_MODEL_FILE:
        raise WeightsError(f"{what} is larger than {MAX_MODEL_FILE} bytes")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=0, max_ext_len=0,
                              max_bin_len=len(data), max_str_len=1 << 16, max_array_len=1 << 24)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WeightsError(f"{what} is not a valid msgpack file ({type(exc).__name__})") from exc
    if not isinstance(obj, list) or not obj:
        raise WeightsError(f"{what} is not a pouw file")
    return obj


# -- model files ---------------------------------------------------------------


def encode_model(model: nn.Module | dict, spec: ModelSpec) -> bytes:
    """The canonical model file bytes of a model (or its state dict)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = [[name, *encode_tensor(state[name])] for name in sorted(state)]
    return msgpack.packb([MODEL_MAGIC, FORMAT_VERSION, encode(spec), tensors], use_bin_type=True)


def compute_model_digest(data: bytes) -> bytes:
    """Model digest = SHA-256 of the model file bytes."""
    return compute_digest(data)


def decode_model(data: bytes, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Parse a model file and check it is a finite state dict of `spec`'s network."""
    from pouw.seg.models import build_model

    obj = _unpack(data, "model file")
    if len(obj) != 4 or obj[0] != MODEL_MAGIC:
        raise WeightsError("model file: not a pouw model file (bad magic)")
    if obj[1] != FORMAT_VERSION:
        raise WeightsError(f"model file: unsupported version {obj[1]!r}")
    if not isinstance(obj[2], bytes):
        raise WeightsError("model file: model spec must be bytes")
    try:
        file_spec = decode(ModelSpec, obj[2])
    except (DecodeError, SpecError) as exc:
        raise WeightsError(f"model file: bad model spec ({exc})") from exc
    if file_spec != spec:
        raise WeightsError(f"model file is for {file_spec}, the task declares {spec}")
    if not isinstance(obj[3], list):
        raise WeightsError("model file: tensor list missing")
    expected = get_expected_state(spec)
    state: dict[str, torch.Tensor] = {}
    names = []
    for i, item in enumerate(obj[3]):
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)):
            raise WeightsError(f"model file: tensor entry {i} is malformed")
        name = item[0]
        names.append(name)
        if name in state:
            raise WeightsError(f"model file: tensor {name!r} appears twice")
        state[name] = decode_tensor(item[1:], f"model file tensor {name!r}")
    if names != sorted(names):
        raise WeightsError("model file: tensors are not sorted by name (not canonical)")
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsError(
            f"model file is not a state dict of {spec.architecture}: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, ref in expected.items():
        t = state[name]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise WeightsError(
                f"model file tensor {name!r} is {t.dtype} {tuple(t.shape)}, {spec.architecture} needs {ref.dtype} {tuple(ref.shape)}"
            )
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise WeightsError(f"model file tensor {name!r} has NaN or infinite values")
    return state


def get_expected_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Names, shapes and dtypes of `spec`'s state dict (built on the meta device: no memory)."""
    from pouw.seg.models import build_model

    with torch.device("meta"):
        return build_model(spec).state_dict()


def load_model(source: bytes | Path | str, spec: ModelSpec) -> nn.Module:
    """A network of `spec` with the weights from a model file (bytes or path)."""
    from pouw.seg.models import build_model

    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    state = decode_model(bytes(data), spec)
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    return model


# -- checkpoints -------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What a replay of the next segment needs, plus the links of the hash chain."""

    index: int
    """Place in the run: 0 for the initial weights, then 1, 2, ..."""
    position: int
    """Optimizer steps trained before this checkpoint."""
    prev_digest: bytes
    """SHA-256 of checkpoint index-1 (32 zero bytes for checkpoint 0)."""
    seed: bytes
    """The 32-byte training seed."""
    model_spec: ModelSpec
    """The task's network."""
    train_spec: TrainSpec
    """The task's hyperparameters."""
    data_digest: bytes
    """compute_dataset_digest of the training set."""
    world_size: int
    """Data-parallel workers the miner trained with."""
    precision: str
    """"fp32" or "bf16" (how the miner computed; informational: replays run fp32)."""
    mean_loss: float
    """Mean training loss over the segment ending here (0 for checkpoint 0)."""
    model_file: bytes
    """The weights, as a model file."""
    optimizer_state: dict
    """The optimizer's per-parameter state."""

    @property
    def model_digest(self) -> bytes:
        return compute_model_digest(self.model_file)


def encode_optimizer_state(state: dict) -> list:
    out = []
    for idx in sorted(state):
        entries = []
        for key in sorted(state[idx]):
            v = state[idx][key]
            if isinstance(v, torch.Tensor):
                entries.append([key, ["t", *encode_tensor(v)]])
            elif isinstance(v, bool) or v is None:
                entries.append([key, ["n"]] if v is None else [key, ["i", int(v)]])
            elif isinstance(v, int):
                entries.append([key, ["i", v]])
            elif isinstance(v, float):
                entries.append([key, ["f", v]])
            else:
                raise WeightsError(f"cannot store optimizer state {key!r} of type {type(v).__name__}")
        out.append([int(idx), entries])
    return out


def decode_optimizer_state(obj: object) -> dict:
    if not isinstance(obj, list):
        raise WeightsError("checkpoint: optimizer state must be a list")
    state: dict = {}
    for item in obj:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and isinstance(item[1], list)):
            raise WeightsError("checkpoint: malformed optimizer state entry")
        idx, entries = item
        slot = {}
        for e in entries:
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], list) and e[1]):
                raise WeightsError("checkpoint: malformed optimizer state value")
            key, val = e
            kind = val[0]
            if kind == "t" and len(val) == 4:
                slot[key] = decode_tensor(val[1:], f"checkpoint optimizer {idx}/{key}")
            elif kind == "f" and len(val) == 2 and isinstance(val[1], float):
                slot[key] = val[1]
            elif kind == "i" and len(val) == 2 and isinstance(val[1], int):
                slot[key] = val[1]
            elif kind == "n" and len(val) == 1:
                slot[key] = None
            else:
                raise WeightsError(f"checkpoint: bad optimizer value for {idx}/{key}")
        state[idx] = slot
    return state


def encode_checkpoint(ck: Checkpoint) -> bytes:
    return msgpack.packb(
        [CKPT_MAGIC, CKPT_VERSION, ck.index, ck.position, ck.prev_digest, ck.seed, encode(ck.model_spec),
         encode(ck.train_spec), ck.data_digest, ck.world_size, ck.precision, float(ck.mean_loss), ck.model_file,
         encode_optimizer_state(ck.optimizer_state)],
        use_bin_type=True,
    )


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Parse a checkpoint file (the model inside is checked by `decode_model` when used)."""
    obj = _unpack(data, "checkpoint")
    if len(obj) < 2 or obj[0] != CKPT_MAGIC:
        raise WeightsError("checkpoint: not a pouw checkpoint file (bad magic)")
    if obj[1] != CKPT_VERSION:
        raise WeightsError(f"checkpoint: unsupported version {obj[1]!r}")
    if len(obj) != 14:
        raise WeightsError("checkpoint: wrong number of fields")
    _, _, index, position, prev, seed, mspec, tspec, data_digest, world, precision, loss, model_file, opt = obj
    for name, v in (("index", index), ("position", position)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise WeightsError(f"checkpoint: bad {name}")
    for name, v in (("prev_digest", prev), ("seed", seed), ("data_digest", data_digest)):
        if not (isinstance(v, bytes) and len(v) == 32):
            raise WeightsError(f"checkpoint: {name} must be 32 bytes")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise WeightsError("checkpoint: bad world size")
    if precision not in PRECISIONS:
        raise WeightsError(f"checkpoint: unknown precision {precision!r}")
    if not isinstance(loss, float) or not math.isfinite(loss):
        raise WeightsError("checkpoint: mean loss must be a finite float")
    if not isinstance(model_file, bytes) or not isinstance(mspec, bytes) or not isinstance(tspec, bytes):
        raise WeightsError("checkpoint: model and specs must be bytes")
    try:
        model_spec = decode(ModelSpec, mspec)
        train_spec = decode(TrainSpec, tspec)
    except (DecodeError, SpecError) as exc:
        raise WeightsError(f"checkpoint: bad spec ({exc})") from exc
    return Checkpoint(index, position, prev, seed, model_spec, train_spec, data_digest, world, precision, loss,
                      model_file, decode_optimizer_state(opt))


def compute_update_norm(prev_weights: dict[str, torch.Tensor], next_weights: dict[str, torch.Tensor]) -> float:
    """L2 norm, in float64, of next - prev over all floating-point tensors (names in sorted order).

    Each tensor's sum of squares is numpy's pairwise float64 sum (single
    threaded, no BLAS), added in name order, so the same two files give the
    same float whatever the machine's thread count.
    """
    total = 0.0
    for name in sorted(next_weights):
        new = next_weights[name]
        if not new.is_floating_point():
            continue
        diff = new.detach().cpu().numpy().astype(np.float64) - prev_weights[name].detach().cpu().numpy().astype(np.float64)
        total += float(np.sum(diff * diff))
    return math.sqrt(total)


__all__ = [
    "WeightsError", "Checkpoint", "encode_model", "decode_model", "load_model", "compute_model_digest",
    "encode_checkpoint", "decode_checkpoint", "encode_tensor", "decode_tensor", "ZERO_DIGEST", "PRECISIONS",
    "compute_update_norm", "CKPT_VERSION",
]
