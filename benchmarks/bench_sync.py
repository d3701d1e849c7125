"""Sync speed and block propagation between real full nodes on loopback.

Run: python benchmarks/bench_sync.py [--quick] [--json]

1. Sync against connecting from disk, in the same run, several rounds
   interleaved (the machine is shared: one round alone says little):
   - from disk: N blocks (100 transfers each) are read from a file, decoded
     and taken down `ChainState.process_new_block` of a fresh chain state with
     the node's own signature checker;
   - sync: node A holds the same blocks; a fresh node B connects to it and
     syncs them over libp2p (status, pipelined blocks requests, every block
     down the same road), timed from B's start until its tip is block N.
   The blocks carry made-up models, so both sides skip only the Dice
   recomputation: the baseline's work check accepts, and B runs with
   `--assume-valid` naming block N (A holds R + 1 blocks more, so block N is
   buried deeper than the finality window R, and B stops at N: it cannot
   verify the made-up work near A's tip). Every other rule is checked on
   both sides. Printed per round and as the median, with the spread of the
   ratios (the noise) and the load average when the benchmark started.
2. Propagation: 5 nodes in a line (each bootstraps from the previous one);
   a block with a real model (the standing task, trained for a few seconds)
   is taken by the first node, which verifies and announces it; the time
   from then until the last one has connected it (each node verifies the
   work before it announces the block on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # realblocks: a real block of the standing task, as the tests make it

from benchmarks.bench_chain import MINERS, PARAMS, build_blocks, unchecked_work  # noqa: E402
from consensus.chainstate import BlockStatus, ChainState  # noqa: E402
from consensus.sigcheck import SignatureChecker  # noqa: E402
from fullnode.config import NodeConfig  # noqa: E402
from fullnode.node import FullNode  # noqa: E402
from pouw.encoding import decode, encode  # noqa: E402
from pouw.types import Block  # noqa: E402


def start_node(root: Path, name: str, bootstrap: list[str], params=PARAMS, assume_valid: bytes | None = None) -> FullNode:
    config = NodeConfig(datadir=root / name, params=params, rpc_port=0, bootstrap=bootstrap, assume_valid=assume_valid)
    return FullNode(config, log_fn=lambda msg: None).start()


def wait_for(predicate, timeout: float) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("timed out")
        time.sleep(0.005)
    return time.perf_counter() - start


def write_block_file(blocks: list[Block], path: Path) -> None:
    """The blocks' canonical encodings, each after its 4-byte length."""
    with open(path, "wb") as f:
        for block in blocks:
            raw = encode(block)
            f.write(struct.pack(">I", len(raw)) + raw)


def connect_from_disk(path: Path, count: int, datadir: Path) -> tuple[float, float]:
    """(wall s, CPU s) to read, decode and connect the first `count` blocks of the file into a fresh chain state."""
    checker = SignatureChecker()
    try:
        with ChainState.open(datadir, PARAMS, sigcheck=checker) as local:
            wall, cpu = time.perf_counter(), time.process_time()
            with open(path, "rb") as f:
                for _ in range(count):
                    (size,) = struct.unpack(">I", f.read(4))
                    result = local.process_new_block(decode(Block, f.read(size)), time.time(), unchecked_work)
                    assert result.status is BlockStatus.CONNECTED, result
            return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        checker.close()


def sync_once(source: FullNode, target: Block, count: int, datadir: Path) -> tuple[float, float]:
    """(wall s, CPU s of this process, both nodes) for a fresh node to start and sync up to `target`."""
    wall, cpu = time.perf_counter(), time.process_time()
    config = NodeConfig(datadir=datadir, params=PARAMS, rpc_port=0, bootstrap=source.p2p_addrs(), assume_valid=target.hash)
    node = FullNode(config, log_fn=lambda msg: None).start()
    try:
        wait_for(lambda: node.chain.tip_height >= count, 600)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        assert node.chain.get_hash_at(count) == target.hash
    finally:
        node.stop()
    return seconds, cpu_seconds


def bench_sync(count: int, rounds: int, root: Path) -> dict:
    load = os.getloadavg()[0]
    blocks, _ = build_blocks(count + PARAMS.finality_depth + 1, 100, MINERS[0], 500_000)
    write_block_file(blocks, root / "blocks.bin")
    source = start_node(root, "source", [])
    try:
        for block in blocks:  # the source's own history: stored without recomputing its made-up work
            assert source.chain.process_new_block(block, time.time(), unchecked_work).is_valid
        runs = []
        for i in range(rounds):
            local_s, local_cpu = connect_from_disk(root / "blocks.bin", count, root / f"local{i}")
            sync_s, sync_cpu = sync_once(source, blocks[count - 1], count, root / f"sync{i}")
            runs.append({"local_seconds": local_s, "local_cpu_seconds": local_cpu, "sync_seconds": sync_s,
                         "sync_cpu_seconds": sync_cpu, "ratio": local_s / sync_s})
    finally:
        source.stop()
    ratios = [r["ratio"] for r in runs]
    return {
        "blocks": count,
        "transactions_per_block": 100,
        "rounds": runs,
        "blocks_per_second": count / statistics.median(r["sync_seconds"] for r in runs),
        "local_connect_blocks_per_second": count / statistics.median(r["local_seconds"] for r in runs),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cpu_ratio_median": statistics.median(r["local_cpu_seconds"] / r["sync_cpu_seconds"] for r in runs),
        "goal_ratio": 0.8,
        "load_average_at_start": load,
        "cpu_count": os.cpu_count(),
    }


def bench_propagation(repeats: int, root: Path) -> dict:
    from consensus.fixtures import make_test_params
    from realblocks import mine_standing_block

    params = make_test_params("alice")
    nodes: list[FullNode] = []
    try:
        for i in range(5):
            nodes.append(start_node(root, f"p{i}", nodes[-1].p2p_addrs() if nodes else [], params=params))
        time.sleep(3)  # let the gossip mesh form (heartbeat 1 s)
        times = []
        first = nodes[0]
        for i in range(repeats):
            block = mine_standing_block(first.chain.state(), params, MINERS[0], first.blobs, first.get_blob_url(),
                                        root / f"miner{i}", seconds=6.0)
            assert first.take_block(block, None).status is BlockStatus.CONNECTED  # verified, then announced
            times.append(wait_for(lambda: all(n.chain.tip_hash == block.hash for n in nodes), 120))
    finally:
        for node in reversed(nodes):
            node.stop()
    return {"nodes": 5, "blocks": repeats, "mean_s": statistics.mean(times), "max_s": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer blocks and rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        sync = bench_sync(60 if args.quick else 200, 1 if args.quick else 5, root)
        prop = bench_propagation(1 if args.quick else 3, root)
    result = {"sync": sync, "propagation": prop}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    s = sync
    print(f"sync of {s['blocks']} blocks ({s['transactions_per_block']} transfers each) over libp2p against connecting "
          f"them from disk, {len(s['rounds'])} rounds (load average {s['load_average_at_start']:.1f} on "
          f"{s['cpu_count']} cores at the start):")
    for i, r in enumerate(s["rounds"]):
        print(f"  round {i + 1}: from disk {r['local_seconds']:.2f} s, sync {r['sync_seconds']:.2f} s, ratio {r['ratio']:.2f} "
              f"(CPU {r['local_cpu_seconds']:.2f} s vs {r['sync_cpu_seconds']:.2f} s, both nodes)")
    print(f"  median: sync {s['blocks_per_second']:.1f} blocks/s, from disk {s['local_connect_blocks_per_second']:.1f} blocks/s, "
          f"ratio {s['ratio_median']:.2f} (spread {s['ratio_min']:.2f}-{s['ratio_max']:.2f}; goal {s['goal_ratio']}); "
          f"CPU-time ratio {s['cpu_ratio_median']:.2f}")
    p = prop
    print(f"a real block reaching all of {p['nodes']} nodes in a line (each verifies its work first): "
          f"mean {p['mean_s']:.1f} s, max {p['max_s']:.1f} s over {p['blocks']} blocks")


if __name__ == "__main__":
    main()
