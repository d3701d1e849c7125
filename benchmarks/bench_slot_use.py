"""How much of a slot the miner spends in training steps: one real round against a real full node.

    python benchmarks/bench_slot_use.py [--quick] [--json] [--devices cpu]

A FullNode (libp2p, LevelDB, RPC, blob server) runs in this process with the
chain parameters of the scenario and a genesis a few seconds away; the real
miner (`miner.loop.Miner`, the code `pouw miner start` runs) mines the first
height with `--once`. The trainer's own figures (time inside optimizer
steps, why it stopped) are read from the TrainResult the round produced; the
round's events give when training started and ended.

Scenarios: the devnet and the main parameters with their standing task as
`consensus.genesis` defines it today (so a harder standing task is measured
as soon as it lands), and the devnet with a standing task whose epoch limit
is out of reach, which shows how much of its budget the trainer itself uses.
The main scenario lasts one whole main slot (12 minutes); --quick leaves it out.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.genesis import make_devnet_params, make_main_params  # noqa: E402
from fullnode.config import NodeConfig  # noqa: E402
from fullnode.node import FullNode  # noqa: E402
from miner.events import Reporter  # noqa: E402
from miner.loop import Miner, MinerConfig  # noqa: E402
from miner.node import NodeLink  # noqa: E402
from pouw.keys import KeyPair  # noqa: E402
from pouw.rpc import RpcClient  # noqa: E402
import pouw.seg.launch as launch  # noqa: E402

MINER = KeyPair.from_seed(hashlib.sha256(b"bench-slot-use").digest())


def get_scenarios(quick: bool) -> dict:
    start = int(time.time())
    devnet = make_devnet_params(start)
    scenarios = {
        "devnet": devnet,
        "devnet, standing task without epoch limit": dataclasses.replace(
            devnet, standing_task=dataclasses.replace(devnet.standing_task, train=dataclasses.replace(
                devnet.standing_task.train, max_epochs=100_000))),
    }
    if not quick:
        scenarios["main"] = dataclasses.replace(make_main_params(), genesis_time=start)
    return scenarios


def run_round(params, root: Path, devices: tuple[str, ...], threads: int) -> dict:
    """Mine height 1 once; returns the round's timing."""
    params = dataclasses.replace(params, genesis_time=int(time.time()) + 4)
    results = []
    real = launch.train_on_devices

    def observed(*args, **kwargs):  # the real trainer; its result is kept for the figures
        result = real(*args, **kwargs)
        results.append(result)
        return result

    node = FullNode(NodeConfig(datadir=root / "node", params=params), log_fn=lambda m: None).start()
    launch.train_on_devices = observed
    try:
        time.sleep(max(0.0, params.genesis_time - time.time()))  # the miner meets slot 0 at its start
        reporter = Reporter(as_json=True, stream=io.StringIO())
        link = NodeLink(RpcClient(node.rpc.url, datadir=node.datadir, timeout=30), reporter)
        config = MinerConfig(keypair=MINER, workdir=root / "miner", device=devices[0], devices=devices,
                             threads=threads, progress=False)
        stop = threading.Event()
        claims = Miner(link, config, reporter).run(once=True, stop=stop)
    finally:
        launch.train_on_devices = real
        node.stop()
    events = {e["event"]: e for e in reporter.history}
    slot = params.phase1_seconds + params.phase2_seconds
    if not claims or not results:
        return {"error": "no claim", "events": [e["event"] for e in reporter.history]}
    r = results[0]
    train_start, trained = events["train"]["time"], events["trained"]["time"]
    return {
        "phase1_s": params.phase1_seconds, "phase2_s": params.phase2_seconds,
        "standing_task": f"{params.standing_task.model.architecture} f{params.standing_task.model.base_filters} "
                         f"{params.standing_task.model.patch_size} x{params.standing_task.train_count}, "
                         f"max_epochs {params.standing_task.train.max_epochs}",
        "budget_s": events["train"]["seconds"], "train_call_s": trained - train_start,
        "step_s": r.step_seconds, "steps": r.steps, "epochs": r.epochs, "stop_reason": r.stop_reason,
        "slot_fraction_in_steps": r.step_seconds / slot,
        "phase1_fraction_in_steps": r.step_seconds / params.phase1_seconds,
        "budget_fraction_in_steps": r.step_seconds / events["train"]["seconds"],
        "dice_ppm": claims[0].dice_ppm,
    }


def warm_up() -> None:
    """Pay what a miner process pays once in its life (torch's first optimizer imports its compiler stack)."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def run(quick: bool, devices: tuple[str, ...], threads: int) -> dict:
    warm_up()
    out = {"quick": quick, "devices": list(devices), "threads": threads, "scenarios": {}}
    with tempfile.TemporaryDirectory() as d:
        for i, (name, params) in enumerate(get_scenarios(quick).items()):
            out["scenarios"][name] = run_round(params, Path(d) / str(i), devices, threads)
    return out


def print_human(res: dict) -> None:
    print(f"one real round per scenario, training on {','.join(res['devices'])} with {res['threads']} threads")
    for name, s in res["scenarios"].items():
        if "error" in s:
            print(f"{name}: {s['error']} ({s['events']})")
            continue
        print(f"{name}: slot {s['phase1_s']} + {s['phase2_s']} s, standing task {s['standing_task']}")
        print(f"  training budget {s['budget_s']:.1f} s; trainer ran {s['train_call_s']:.1f} s, "
              f"{s['step_s']:.1f} s in {s['steps']} steps ({s['epochs']} epochs), stopped: {s['stop_reason']}")
        print(f"  in training steps: {100 * s['slot_fraction_in_steps']:.1f}% of the slot, "
              f"{100 * s['phase1_fraction_in_steps']:.1f}% of Phase 1, {100 * s['budget_fraction_in_steps']:.1f}% "
              f"of the training budget; Dice {s['dice_ppm'] / 1e6:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="devnet scenarios only (no 12-minute main slot)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--devices", default="cpu", help="what the miner trains on (as pouw miner start --devices)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    res = run(args.quick, launch.parse_devices(args.devices), args.threads)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_human(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
