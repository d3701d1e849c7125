"""What a hostile message costs the decoder, next to what a valid one costs.

    python benchmarks/bench_decode.py [--quick] [--json]

A sync response (fullnode.messages.BlocksResponse, up to MAX_SYNC_RESPONSE
bytes) is the largest message a peer can make a node decode. For each
hostile 23 MiB message the benchmark reports the peak memory (tracemalloc)
and the seconds `pouw.encoding.decode` needs to refuse it, next to:

  * `decode` of a valid sync response of the same size (64 real blocks of
    ~370 KB of signed transfers), the work a node does anyway;
  * `msgpack.unpackb` of the same hostile bytes with the limits the decoder
    used before it read against the type (materialise everything, check
    after): what the attack cost before.

Throughput: `decode` of the valid sync response and of one real block of
2,000 transfers, against `msgpack.unpackb` of the same bytes in the same
run (unpackb checks nothing; decode also checks every field and re-encodes
to prove the bytes canonical).
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402

from consensus.fixtures import make_keypair, make_next_block, make_test_params, make_transfer  # noqa: E402
from consensus.state import State, apply_changes  # noqa: E402
from consensus.transition import apply_genesis  # noqa: E402
from fullnode.messages import MAX_SYNC_BLOCKS, MAX_SYNC_RESPONSE, BlocksResponse  # noqa: E402
from pouw.encoding import DecodeError, decode, encode  # noqa: E402
from pouw.types import Block  # noqa: E402

MiB = 1 << 20
HOSTILE_SIZE = 23 * MiB
SENDERS = [make_keypair(f"decode{i}") for i in range(20)]
PARAMS = make_test_params(*[f"decode{i}" for i in range(20)])


def _array32(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def make_hostile(size: int) -> dict[str, bytes]:
    """Hostile sync responses of about `size` bytes, each valid msgpack."""
    per = 1 << 20  # the old decoder's max_array_len
    count = (size - 8) // (per + 5)
    empties = b"\x91\xdc" + struct.pack(">H", count) + (_array32(per) + b"\x90" * per) * count
    ints = size - 8
    return {
        # The attack: arrays of a million empty arrays (each a list object once unpacked).
        "arrays of 1M empty arrays": empties,
        # One array header announcing ~24 M one-byte items.
        "one array of 24M tiny ints": b"\x91" + _array32(ints) + b"\x00" * ints,
        # [[[[...]]]] as deep as the bytes go.
        "deep nesting": b"\x91" * (size - 1) + b"\x90",
        # A block slot holding a string as long as the message.
        "string where a block goes": b"\x91\x91\xdb" + struct.pack(">I", size - 8) + b"a" * (size - 8),
    }


def make_block(transfers: int, salt: bytes = b"") -> Block:
    data: dict = {}
    state = State.from_mapping(data)
    apply_genesis(state, PARAMS)
    apply_changes(data, state.changes())
    state = State.from_mapping(data)
    txs = tuple(
        make_transfer(SENDERS[i % len(SENDERS)], SENDERS[(i + 1) % len(SENDERS)].public_key, 1 + i, i // len(SENDERS))
        for i in range(transfers)
    )
    return make_next_block(state, PARAMS, make_keypair("decode-miner"), transactions=txs, salt=salt)


def make_valid_response(size: int) -> bytes:
    """A canonical BlocksResponse of MAX_SYNC_BLOCKS real blocks, about `size` bytes."""
    per_block = size // MAX_SYNC_BLOCKS
    block = encode(make_block(2000))
    transfers = 2000 * per_block // len(block)
    block = encode(make_block(transfers))
    return encode(BlocksResponse(tuple(bytes(bytearray(block)) for _ in range(MAX_SYNC_BLOCKS))))


def measure(fn, data: bytes) -> dict:
    """Seconds and tracemalloc peak bytes of one call; the outcome (ok or the error)."""
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    try:
        result = fn(data)
        outcome = "ok"
    except (DecodeError, ValueError, msgpack.UnpackException) as exc:
        result = None
        outcome = f"refused: {str(exc)[:90]}"
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return {"seconds": seconds, "peak_bytes": peak, "outcome": outcome}


def old_unpack(data: bytes):
    """What decode did first before it read against the type: unpack everything."""
    return msgpack.unpackb(
        data, raw=False, strict_map_key=True, max_bin_len=len(data), max_str_len=len(data),
        max_array_len=1 << 20, max_map_len=0, max_ext_len=0,
    )


def decode_response(data: bytes):
    return decode(BlocksResponse, data, max_size=MAX_SYNC_RESPONSE)


def best_of(fn, data: bytes, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t)
    return min(times)


def run(quick: bool) -> dict:
    runs = 3 if quick else 10
    valid = make_valid_response(HOSTILE_SIZE)
    out: dict = {"hostile_bytes": HOSTILE_SIZE, "valid_response_bytes": len(valid), "hostile": {}}
    out["valid_decode"] = measure(decode_response, valid)
    for name, data in make_hostile(HOSTILE_SIZE).items():
        row = {"bytes": len(data), "decode": measure(decode_response, data)}
        if not quick or name != "arrays of 1M empty arrays":
            row["materialise_first"] = measure(old_unpack, data)
        out["hostile"][name] = row

    block_bytes = encode(make_block(2000, b"t"))
    out["throughput"] = {}
    for label, fn, raw, data in (
        ("sync response 23 MiB", decode_response, old_unpack, valid),
        ("block of 2,000 transfers", lambda d: decode(Block, d), msgpack.unpackb, block_bytes),
    ):
        d = best_of(fn, data, runs)
        u = best_of(raw, data, runs)
        out["throughput"][label] = {
            "bytes": len(data), "decode_s": d, "unpackb_s": u,
            "decode_MBps": len(data) / d / 1e6, "unpackb_MBps": len(data) / u / 1e6, "ratio_decode_to_unpackb": u / d,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs; skip the slowest materialise-first case")
    ap.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = ap.parse_args()
    res = run(args.quick)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    v = res["valid_decode"]
    print(f"decode of a sync response (limit {MAX_SYNC_RESPONSE >> 20} MiB): peak memory and seconds\n")
    print(f"{'message':32} {'decode':>22} {'materialise first (before)':>30}")
    print(f"{'valid, ' + str(res['valid_response_bytes'] >> 20) + ' MiB of real blocks':32} "
          f"{v['peak_bytes'] / 1e6:9.1f} MB {v['seconds']:8.4f} s")
    for name, row in res["hostile"].items():
        d = row["decode"]
        line = f"{name:32} {d['peak_bytes'] / 1e6:9.1f} MB {d['seconds']:8.4f} s"
        m = row.get("materialise_first")
        if m:
            line += f" {m['peak_bytes'] / 1e6:12.1f} MB {m['seconds']:8.3f} s"
        print(line)
        print(f"{'':32} {d['outcome']}")
    print("\nthroughput (best of runs)")
    for label, t in res["throughput"].items():
        print(f"  {label:26} decode {t['decode_MBps']:8.1f} MB/s   msgpack.unpackb {t['unpackb_MBps']:8.1f} MB/s"
              f"   decode/unpackb speed {t['ratio_decode_to_unpackb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
