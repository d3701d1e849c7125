"""Sync speed and block propagation between real full nodes on loopback.

Run: python benchmarks/bench_sync.py [--quick] [--json]

1. Sync: node A holds a chain of N blocks (100 transfers each); a fresh node
   B connects and syncs it over libp2p, validating every block with the
   consensus rules (the blocks' made-up models are below the high-accuracy
   threshold and both nodes run `--verify high`, so this measures the chain
   machinery, not Dice recomputation; see bench_useful_work for that).
   Printed next to the rate at which the same blocks connect from disk in
   the same run (ChainState.process_new_block without a network).
2. Propagation: 5 nodes in a line (each bootstraps from the previous one);
   a block submitted to the first is gossiped, validated and connected by
   all; the time until the last one has it.
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

from benchmarks.bench_chain import MINERS, PARAMS, build_blocks, unchecked_work  # noqa: E402
from consensus.chainstate import ChainState  # noqa: E402
from fullnode.config import VERIFY_HIGH, NodeConfig  # noqa: E402
from fullnode.node import FullNode  # noqa: E402


def start_node(root: Path, name: str, bootstrap: list[str]) -> FullNode:
    config = NodeConfig(datadir=root / name, params=PARAMS, rpc_port=0, bootstrap=bootstrap, verify=VERIFY_HIGH)
    return FullNode(config, log_fn=lambda msg: None).start()


def wait_for(predicate, timeout: float) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("timed out")
        time.sleep(0.005)
    return time.perf_counter() - start


def bench_sync(count: int, root: Path) -> dict:
    blocks, _ = build_blocks(count, 100, MINERS[0], 500_000)
    with ChainState.open(root / "local", PARAMS) as local:
        t = time.perf_counter()
        for block in blocks:
            local.process_new_block(block, time.time(), unchecked_work)
        local_rate = count / (time.perf_counter() - t)
    a = start_node(root, "a", [])
    try:
        for block in blocks:
            a.core.process_block(block, time.time())
        b = start_node(root, "b", a.p2p_addrs())
        try:
            seconds = wait_for(lambda: b.chain.tip_height == count, 600)
        finally:
            b.stop()
    finally:
        a.stop()
    return {"blocks": count, "seconds": seconds, "blocks_per_second": count / seconds, "local_connect_blocks_per_second": local_rate}


def bench_propagation(repeats: int, root: Path) -> dict:
    blocks, _ = build_blocks(repeats, 10, MINERS[0], 500_000)
    nodes: list[FullNode] = []
    try:
        for i in range(5):
            nodes.append(start_node(root, f"p{i}", nodes[-1].p2p_addrs() if nodes else []))
        time.sleep(3)  # let the gossip mesh form (heartbeat 1 s)
        times = []
        for block in blocks:
            t = time.perf_counter()
            nodes[0].take_block(block, None)
            times.append(t + wait_for(lambda: all(n.chain.tip_hash == block.hash for n in nodes), 60) - t)
    finally:
        for node in reversed(nodes):
            node.stop()
    return {"nodes": 5, "blocks": repeats, "mean_ms": 1000 * statistics.mean(times), "max_ms": 1000 * max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        sync = bench_sync(40 if args.quick else 200, root)
        prop = bench_propagation(3 if args.quick else 10, root)
    result = {"sync": sync, "propagation": prop}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"sync of {sync['blocks']} blocks (100 transfers each) over libp2p: {sync['blocks_per_second']:.1f} blocks/s "
          f"({sync['seconds']:.1f} s); connecting the same blocks from disk: {sync['local_connect_blocks_per_second']:.1f} blocks/s "
          f"(ratio {sync['blocks_per_second'] / sync['local_connect_blocks_per_second']:.2f})")
    print(f"block reaching all of {prop['nodes']} nodes in a line: mean {prop['mean_ms']:.0f} ms, max {prop['max_ms']:.0f} ms over {prop['blocks']} blocks")


if __name__ == "__main__":
    main()
