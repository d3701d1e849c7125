"""Model and checkpoint files: canonical, deterministic, and safe to load.

A miner's files are untrusted, so nothing here unpickles. Both formats are
msgpack arrays (bytes as msgpack bin):

Model file (its SHA-256 is the model digest)::

    ["pouw-model", 1, encode(ModelSpec), [[name, dtype, [shape...], raw], ...]]

with tensors sorted by name, ``raw`` the C-order little-endian bytes. The same
weights always give the same bytes. Loading checks the spec, then that the
tensors are exactly the state dict of that architecture (names, shapes,
dtypes) and finite.

Checkpoint (one per segment, checkpoint 0 = initial weights): a header blob,
whose SHA-256 is the checkpoint digest, naming the blobs of its parts::

    ["pouw-ckpt", 3, index, position, prev_digest, seed, encode(ModelSpec), encode(TrainSpec),
     data_digest, world_size, precision, mean_loss, [weights_digest, weights_size],
     [[param_index, key, dtype, [shape...]], ...], scalars, [[shard_digest, shard_size], ...]]

``position`` is the number of optimizer steps trained before the checkpoint
(pouw.seg.trajectory says where each may lie); ``precision`` how the miner
computed ("fp32" or "bf16", replays always run fp32). ``prev_digest`` is the
previous checkpoint's header digest (32 zero bytes for checkpoint 0), so the
digests form a hash chain. The weights blob is a model file (the last
checkpoint's is the claimed model). The optimizer's tensors (one entry of the
sorted layout each) are split into S shards (S = 0 with no state, else 1 to
MAX_STATE_SHARDS)::

    ["pouw-state", 1, index, shard, S, [raw slice per layout entry]]

shard ``s`` holding elements ``[n*s//S, n*(s+1)//S)`` of each flattened
tensor of ``n`` elements; ``scalars`` (Adam's 0-d step counts, absent
buffers) is ``[[param_index, [[key, value], ...]], ...]`` with values
``["t", dtype, shape, raw]``, ``["f", x]``, ``["i", n]`` or ``["n"]``.

A replay needs the whole state where it starts; where it ends a verifier
reads one drawn shard, and every tensor has a slice in every shard.
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
from pouw.types import MAX_CHECKPOINT_HEADER_BYTES

MODEL_MAGIC = "pouw-model"
CKPT_MAGIC = "pouw-ckpt"
FORMAT_VERSION = 1
"""Version of the model file format."""
CKPT_VERSION = 3
"""Version of the checkpoint header format (3: weights and optimizer-state shards in blobs of their own)."""
SHARD_MAGIC = "pouw-state"
SHARD_VERSION = 1
"""Version of the optimizer-state shard format."""
MAX_STATE_SHARDS = 32
"""Most shards a checkpoint's optimizer state is split into: a segment's end check reads at least 1/32 of it."""
STATE_SHARD_BYTES = 1 << 20
"""A miner splits the optimizer state into shards of about this many bytes (at most MAX_STATE_SHARDS)."""
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
class CheckpointMeta:
    """What a checkpoint says of itself: its place in the run, the links of the hash chain, how it was trained."""

    index: int
    """Place in the run: 0 for the initial weights, then 1, 2, ..."""
    position: int
    """Optimizer steps trained before this checkpoint."""
    prev_digest: bytes
    """SHA-256 of checkpoint index-1's header (32 zero bytes for checkpoint 0)."""
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


@dataclass(frozen=True)
class Checkpoint(CheckpointMeta):
    """What a replay of the next segment needs, plus the links of the hash chain (as loaded, in memory)."""

    model_file: bytes
    """The weights, as a model file."""
    optimizer_state: dict
    """The optimizer's per-parameter state (with `state_shards`, only those shards of its tensors)."""
    shard_count: int = 0
    """Shards the optimizer state's tensors are stored in (0: none, as at checkpoint 0)."""
    state_shards: tuple[int, ...] | None = None
    """None: `optimizer_state` is whole; else the shards loaded, each sharded tensor the 1-D concatenation of their
    slices (`select_state_shards`)."""

    @property
    def model_digest(self) -> bytes:
        return compute_model_digest(self.model_file)


@dataclass(frozen=True)
class PartRef:
    """A blob a checkpoint header names."""

    digest: bytes
    """SHA-256 of the blob."""
    size: int
    """Its size in bytes."""


@dataclass(frozen=True)
class CheckpointHeader(CheckpointMeta):
    """A checkpoint as stored: its metadata and the blobs holding its weights and optimizer state."""

    weights: PartRef
    """The model file of its weights (for the last checkpoint, the claimed model itself)."""
    state_layout: tuple[tuple[int, str, str, tuple[int, ...]], ...]
    """(parameter index, key, dtype, shape) of every optimizer tensor stored in shards, sorted."""
    state_scalars: dict
    """The rest of the optimizer state (Adam's step counts, absent buffers), by parameter index and key."""
    shards: tuple[PartRef, ...]
    """The optimizer-state shards: shard s holds slice `compute_shard_bounds(numel, s, len(shards))` of each tensor."""

    @property
    def parts_size(self) -> int:
        """Bytes of every blob it names: the weights and all shards."""
        return self.weights.size + sum(p.size for p in self.shards)


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


def compute_shard_bounds(numel: int, shard: int, shard_count: int) -> tuple[int, int]:
    """The slice [lo, hi) of a flattened tensor of `numel` elements that shard `shard` of `shard_count` holds."""
    return numel * shard // shard_count, numel * (shard + 1) // shard_count


def select_state_shards(tensor: torch.Tensor, shards, shard_count: int) -> torch.Tensor:
    """The 1-D concatenation of `tensor`'s slices in `shards` (increasing), as a partial load holds them."""
    flat = tensor.detach().reshape(-1)
    pieces = [flat[slice(*compute_shard_bounds(flat.numel(), s, shard_count))] for s in sorted(shards)]
    return torch.cat(pieces) if pieces else flat[:0]


def compute_state_shard_count(state: dict) -> int:
    """Shards a miner splits `state` into: about STATE_SHARD_BYTES each, at most MAX_STATE_SHARDS (0 when empty)."""
    total = sum(v.numel() * v.element_size() for slot in state.values() for v in slot.values()
                if is_sharded_value(v))
    return compute_shard_count(total)


def compute_shard_count(state_bytes: int) -> int:
    """Shards for an optimizer state of `state_bytes` bytes: about STATE_SHARD_BYTES each, 1 to MAX_STATE_SHARDS."""
    if state_bytes <= 0:
        return 0
    return max(1, min(MAX_STATE_SHARDS, -(-state_bytes // STATE_SHARD_BYTES)))


def is_sharded_value(value: object) -> bool:
    """True for the optimizer values stored in shards: tensors of at least one dimension."""
    return isinstance(value, torch.Tensor) and value.dim() >= 1


def split_checkpoint(ck: Checkpoint, shard_count: int | None = None) -> tuple[bytes, list[bytes]]:
    """A whole checkpoint as stored: (header bytes, part blobs: the weights model file, then each shard)."""
    if ck.state_shards is not None:
        raise WeightsError("only a whole checkpoint can be stored")
    layout, scalars = [], {}
    for idx in sorted(ck.optimizer_state):
        for key in sorted(ck.optimizer_state[idx]):
            value = ck.optimizer_state[idx][key]
            if is_sharded_value(value):
                if value.dtype not in _DTYPE_NAMES:
                    raise WeightsError(f"cannot store tensors of dtype {value.dtype}")
                layout.append((int(idx), key, _DTYPE_NAMES[value.dtype], tuple(value.shape), value))
            else:
                scalars.setdefault(int(idx), {})[key] = value
    count = compute_state_shard_count(ck.optimizer_state) if shard_count is None else shard_count
    if not (0 <= count <= MAX_STATE_SHARDS) or (count == 0) != (not layout):
        raise WeightsError(f"a checkpoint with {len(layout)} optimizer tensors cannot have {count} shards")
    shards = []
    for s in range(count):
        raws = [encode_tensor(select_state_shards(t, (s,), count))[2] for *_, t in layout]
        shards.append(msgpack.packb([SHARD_MAGIC, SHARD_VERSION, ck.index, s, count, raws], use_bin_type=True))
    parts = [ck.model_file] + shards
    refs = [PartRef(compute_digest(p), len(p)) for p in parts]
    header = CheckpointHeader(ck.index, ck.position, ck.prev_digest, ck.seed, ck.model_spec, ck.train_spec,
                              ck.data_digest, ck.world_size, ck.precision, float(ck.mean_loss), refs[0],
                              tuple((i, k, d, shape) for i, k, d, shape, _ in layout), scalars, tuple(refs[1:]))
    return encode_checkpoint_header(header), parts


def encode_checkpoint_header(header: CheckpointHeader) -> bytes:
    """The header blob's bytes (its SHA-256 is the checkpoint's digest); raises WeightsError past the size bound."""
    data = msgpack.packb(
        [CKPT_MAGIC, CKPT_VERSION, header.index, header.position, header.prev_digest, header.seed,
         encode(header.model_spec), encode(header.train_spec), header.data_digest, header.world_size,
         header.precision, float(header.mean_loss), [header.weights.digest, header.weights.size],
         [[i, k, d, list(shape)] for i, k, d, shape in header.state_layout], encode_optimizer_state(header.state_scalars),
         [[r.digest, r.size] for r in header.shards]],
        use_bin_type=True,
    )
    if len(data) > MAX_CHECKPOINT_HEADER_BYTES:
        raise WeightsError(f"checkpoint header of {len(data)} bytes exceeds {MAX_CHECKPOINT_HEADER_BYTES}")
    return data


def _decode_part_ref(obj: object, what: str) -> PartRef:
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], bytes) and len(obj[0]) == 32
            and isinstance(obj[1], int) and not isinstance(obj[1], bool) and 0 < obj[1] <= MAX_MODEL_FILE):
        raise WeightsError(f"checkpoint: bad {what} reference")
    return PartRef(obj[0], obj[1])


def decode_checkpoint_header(data: bytes) -> CheckpointHeader:
    """Parse a checkpoint header (bounded: at most MAX_CHECKPOINT_HEADER_BYTES; parts are checked when read)."""
    if len(data) > MAX_CHECKPOINT_HEADER_BYTES:
        raise WeightsError(f"checkpoint header is larger than {MAX_CHECKPOINT_HEADER_BYTES} bytes")
    obj = _unpack(data, "checkpoint")
    if len(obj) < 2 or obj[0] != CKPT_MAGIC:
        raise WeightsError("checkpoint: not a pouw checkpoint file (bad magic)")
    if obj[1] != CKPT_VERSION:
        raise WeightsError(f"checkpoint: unsupported version {obj[1]!r}")
    if len(obj) != 16:
        raise WeightsError("checkpoint: wrong number of fields")
    _, _, index, position, prev, seed, mspec, tspec, data_digest, world, precision, loss, wref, layout, scalars, srefs = obj
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
    if not isinstance(mspec, bytes) or not isinstance(tspec, bytes):
        raise WeightsError("checkpoint: specs must be bytes")
    try:
        model_spec = decode(ModelSpec, mspec)
        train_spec = decode(TrainSpec, tspec)
    except (DecodeError, SpecError) as exc:
        raise WeightsError(f"checkpoint: bad spec ({exc})") from exc
    if not (isinstance(layout, list) and isinstance(srefs, list) and len(srefs) <= MAX_STATE_SHARDS):
        raise WeightsError("checkpoint: bad optimizer-state layout or shard list")
    entries = []
    for e in layout:
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], int) and not isinstance(e[0], bool)
                and e[0] >= 0 and isinstance(e[1], str) and e[2] in _DTYPES and isinstance(e[3], list) and e[3]
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in e[3])):
            raise WeightsError("checkpoint: malformed optimizer-state layout entry")
        entries.append((e[0], e[1], e[2], tuple(e[3])))
    if [x[:2] for x in entries] != sorted({x[:2] for x in entries}):
        raise WeightsError("checkpoint: optimizer-state layout is not sorted or repeats an entry")
    if (not entries) != (not srefs):
        raise WeightsError("checkpoint: optimizer tensors need at least one shard, shards need tensors")
    state_scalars = decode_optimizer_state(scalars)
    if any(is_sharded_value(v) for slot in state_scalars.values() for v in slot.values()):
        raise WeightsError("checkpoint: optimizer tensors must be stored in shards")
    if any(key in state_scalars.get(idx, {}) for idx, key, _, _ in entries):
        raise WeightsError("checkpoint: an optimizer value is stored twice")
    return CheckpointHeader(index, position, prev, seed, model_spec, train_spec, data_digest, world, precision, loss,
                            _decode_part_ref(wref, "weights"), tuple(entries), state_scalars,
                            tuple(_decode_part_ref(r, "shard") for r in srefs))


def decode_state_shard(data: bytes, header: CheckpointHeader, shard: int) -> list[torch.Tensor]:
    """Parse shard `shard` of `header`'s optimizer state: one 1-D slice per layout entry."""
    count = len(header.shards)
    obj = _unpack(data, "optimizer-state shard")
    if len(obj) != 6 or obj[0] != SHARD_MAGIC or obj[1] != SHARD_VERSION:
        raise WeightsError("optimizer-state shard: not a pouw shard file")
    if obj[2] != header.index or obj[3] != shard or obj[4] != count:
        raise WeightsError(f"optimizer-state shard {shard} belongs to another checkpoint or split")
    raws = obj[5]
    if not (isinstance(raws, list) and len(raws) == len(header.state_layout)):
        raise WeightsError("optimizer-state shard: wrong number of slices")
    out = []
    for (idx, key, dtype, shape), raw in zip(header.state_layout, raws):
        lo, hi = compute_shard_bounds(math.prod(shape), shard, count)
        out.append(decode_tensor([dtype, [hi - lo], raw], f"optimizer-state shard {shard} {idx}/{key}"))
    return out


def assemble_optimizer_state(header: CheckpointHeader, slices: dict[int, list[torch.Tensor]], whole: bool) -> dict:
    """The optimizer state from the header's scalars and the shards' slices (`slices[s]`: decode_state_shard).

    `whole`: every shard is given and tensors take their shapes; else each is
    the 1-D concatenation of the given shards' slices.
    """
    state = {idx: dict(slot) for idx, slot in header.state_scalars.items()}
    order = sorted(slices)
    for n, (idx, key, _, shape) in enumerate(header.state_layout):
        pieces = [slices[s][n] for s in order]
        flat = torch.cat(pieces) if pieces else torch.empty(0, dtype=_DTYPES[header.state_layout[n][2]])
        state.setdefault(idx, {})[key] = flat.reshape(shape) if whole else flat
    return state


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
    "PartRef", "CheckpointHeader", "split_checkpoint", "encode_checkpoint_header", "decode_checkpoint_header", "decode_state_shard",
    "assemble_optimizer_state", "compute_shard_bounds", "select_state_shards", "compute_state_shard_count", "compute_shard_count",
    "MAX_STATE_SHARDS", "MAX_CHECKPOINT_HEADER_BYTES", "encode_tensor", "decode_tensor", "ZERO_DIGEST", "PRECISIONS",
    "compute_update_norm", "CKPT_VERSION",
]
