"""Chain-core figures: connecting and disconnecting a block of 1,000 transfers, and a reorg of depth 20.

Run: python benchmarks/bench_chain.py [--quick] [--json]

Each figure is printed next to what this machine does in the same run: the
time pynacl needs to verify the block's 1,000 signatures on one core, which
is the floor for a cold connect.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nacl.signing  # noqa: E402

from consensus.fixtures import make_keypair, make_next_block, make_test_params, make_transfer  # noqa: E402
from consensus.sigcheck import SignatureChecker  # noqa: E402
from consensus.state import State, apply_changes  # noqa: E402
from consensus.transition import apply_block, apply_genesis  # noqa: E402
from consensus.chainstate import ChainState  # noqa: E402

ACCOUNTS = [make_keypair(f"bench{i}") for i in range(50)]
MINERS = [make_keypair("miner-a"), make_keypair("miner-b")]
PARAMS = make_test_params(*[f"bench{i}" for i in range(50)])


def build_blocks(count: int, txs_per_block: int, miner, dice: int, start: dict | None = None, slot_offset: int = 0, salt=b""):
    """`count` blocks of transfers on top of `start` (a state mapping), and the final mapping."""
    data = dict(start) if start is not None else None
    if data is None:
        data = {}
        s = State.from_mapping(data)
        apply_genesis(s, PARAMS)
        apply_changes(data, s.changes())
    blocks = []
    for b in range(count):
        state = State.from_mapping(data)
        txs = []
        nonces = {}
        for i in range(txs_per_block):
            sender = ACCOUNTS[i % len(ACCOUNTS)]
            nonce = nonces.get(sender.public_key, state.get_account(sender.public_key).nonce)
            nonces[sender.public_key] = nonce + 1
            txs.append(make_transfer(sender, ACCOUNTS[(i + 1) % len(ACCOUNTS)].public_key, 1 + b, nonce))
        slot = state.get_status().min_slot + slot_offset
        block = make_next_block(state, PARAMS, miner, transactions=tuple(txs), dice_ppm=dice, slot=slot, salt=salt)
        applied = State.from_mapping(data)
        apply_block(applied, block, PARAMS)
        apply_changes(data, applied.changes())
        blocks.append(block)
    return blocks, data


def unchecked_work(candidate) -> None:
    """The blocks here carry made-up models: these figures are the chain machinery's, not the work check's."""


def raw_verify_seconds(block) -> float:
    """Seconds pynacl needs to verify the block's transaction signatures on one core."""
    items = [(tx.sender, b"pouw/v1/transfer\x00" + tx.signing_payload(), tx.signature) for tx in block.body.transactions]
    start = time.perf_counter()
    for pk, msg, sig in items:
        nacl.signing.VerifyKey(pk).verify(msg, sig)
    return time.perf_counter() - start


def bench_connect(repeats: int, tmp: Path) -> dict:
    blocks, _ = build_blocks(1, 1000, MINERS[0], 900_000)
    block = blocks[0]
    checker = SignatureChecker()
    connect, disconnect, raw = [], [], []
    with ChainState.open(tmp / "connect", PARAMS, sigcheck=checker) as store:
        store.store_valid_block(block, store.get_index(block.header.prev_hash))
        for _ in range(repeats):
            raw.append(raw_verify_seconds(block))
            t = time.perf_counter()
            store.connect_block(block)
            connect.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.disconnect_tip()
            disconnect.append(time.perf_counter() - t)
    checker.close()
    return {
        "transactions": len(block.body.transactions),
        "connect_ms": 1000 * statistics.median(connect),
        "disconnect_ms": 1000 * statistics.median(disconnect),
        "raw_verify_1000_ms": 1000 * statistics.median(raw),
        "goal_ms": 100,
    }


def bench_reorg(depth: int, txs: int, tmp: Path) -> dict:
    shared, base = build_blocks(2, txs, MINERS[0], 900_000)
    a, _ = build_blocks(depth, txs, MINERS[0], 500_000, start=base, salt=b"a")
    b, _ = build_blocks(depth, txs, MINERS[1], 950_000, start=base, slot_offset=1, salt=b"b")
    checker = SignatureChecker()
    with ChainState.open(tmp / "reorg", PARAMS, sigcheck=checker) as store:
        for block in shared + a:
            store.process_new_block(block, time.time(), unchecked_work)
        for block in b[:-1]:
            store.process_new_block(block, time.time(), unchecked_work)  # validated side branch, not yet better
        t = time.perf_counter()
        store.store_valid_block(b[-1], store.get_index(b[-1].header.prev_hash))
        store.activate_best_chain(hint=b[-1].hash)  # the tip of b now outscores a: disconnect `depth`, connect `depth`
        reorg = time.perf_counter() - t
        assert store.tip_hash == b[-1].hash
    checker.close()
    return {"depth": depth, "transactions_per_block": txs, "reorg_ms": 1000 * reorg, "per_block_ms": 1000 * reorg / (2 * depth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        connect = bench_connect(3 if args.quick else 10, tmp)
        reorg = bench_reorg(20, 100 if args.quick else 1000, tmp)
    result = {"connect": connect, "reorg": reorg}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    c = connect
    print(f"block of {c['transactions']} transfers (median):")
    print(f"  connect    {c['connect_ms']:7.1f} ms  (goal < {c['goal_ms']} ms; raw Ed25519 verify of its 1000 signatures on one core: {c['raw_verify_1000_ms']:.1f} ms, ratio {c['connect_ms'] / c['raw_verify_1000_ms']:.2f}x)")
    print(f"  disconnect {c['disconnect_ms']:7.1f} ms  (goal < {c['goal_ms']} ms)")
    r = reorg
    print(f"reorg of depth {r['depth']} ({r['transactions_per_block']} transfers per block): {r['reorg_ms']:.0f} ms, {r['per_block_ms']:.1f} ms per connect or disconnect")


if __name__ == "__main__":
    main()
