"""The standing task: does it saturate within a phase, and what does its data cost?

    python benchmarks/bench_standing.py [--quick] [--json] [--main-full]

For the devnet and main standing tasks (consensus/genesis.py) it trains with
the real trainer (`pouw.seg.train.train`) on one CPU thread, on the data a
node would generate for one block, and reports the Dice (`pouw.seg.dice.evaluate`)
reached by the end of Phase 1 (deadline = phase length - 2 s) and with twice
that budget. The target: clearly below 0.99 (claims rarely tie, the hardware
has work for the whole phase) yet well above chance (the block proves learning).

Main's Phase 1 is 600 s. By default its two budgets are extrapolated: a
probe measures seconds per epoch, the trainer's own budget rule
(`SAFETY` x the slowest epoch must fit) turns each budget into an epoch
count (at most `max_epochs`), and one run of that many epochs is scored at
both counts. `--main-full` runs the real 598 s and 1198 s deadlines instead.
`--quick` measures the devnet only.

Generation speed is set against hashlib SHA-256 measured in the same run:
bulk throughput, and the rate of short messages like the generator's blocks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from consensus.genesis import make_devnet_params, make_main_params  # noqa: E402
from consensus.rules import compute_standing_seed, compute_training_seed  # noqa: E402
from pouw.blobstore import BlobStore  # noqa: E402
from pouw.seg import synthetic  # noqa: E402
from pouw.seg.data import synthetic_dataset  # noqa: E402
from pouw.seg.dice import evaluate  # noqa: E402
from pouw.seg.report import compute_dice_per_checkpoint  # noqa: E402
from pouw.seg.train import SAFETY, train  # noqa: E402

PREV_HASH = hashlib.sha256(b"bench-standing/prev").digest()
MINER = hashlib.sha256(b"bench-standing/miner").digest()
DEADLINE_MARGIN = 2.0
"""Seconds before Phase 2 at which training must be over (a miner's commit margin)."""
TARGET = (0.5, 0.99)
"""Dice at the end of a phase should lie strictly between these."""


def bench_hashlib() -> dict:
    """SHA-256 on this machine: bulk MB/s and short messages (the generator's block size) per second."""
    data = bytes(64 << 20)
    t = time.perf_counter()
    hashlib.sha256(data).digest()
    bulk = len(data) / (time.perf_counter() - t)
    msg = synthetic.DOMAIN + bytes(32) + bytes(8) + bytes(1)
    base = hashlib.sha256(msg)
    n = 200_000
    t = time.perf_counter()
    for k in range(n):
        h = base.copy()
        h.update(k.to_bytes(8, "big"))
        h.digest()
    small = n / (time.perf_counter() - t)
    return {"bulk_MB_per_s": bulk / 1e6, "short_hashes_per_s": small}


def make_data(standing) -> tuple:
    """One block's standing data (train, test), as a node regenerates it, and the seconds it took."""
    spec = standing.model
    t = time.perf_counter()
    train_set = synthetic_dataset(compute_standing_seed(PREV_HASH, "train"), standing.train_count, spec)
    test_set = synthetic_dataset(compute_standing_seed(PREV_HASH, "test"), standing.test_count, spec)
    return train_set, test_set, time.perf_counter() - t


def summarise_generation(name: str, standing, seconds: float, hashes: dict) -> dict:
    """Images per second against hashlib's short-message rate."""
    spec = standing.model
    images = standing.train_count + standing.test_count
    # Noise takes one word per voxel and channel, 4 words per SHA-256 block; the scene a few blocks more.
    blocks_per_image = spec.in_channels * math.ceil(math.prod(spec.patch_size) / 4)
    per_s = images / seconds
    return {
        "network": name,
        "images": images,
        "seconds": seconds,
        "images_per_s": per_s,
        "noise_blocks_per_image": blocks_per_image,
        "hashing_share": per_s * blocks_per_image / hashes["short_hashes_per_s"],
    }


def run_deadline(standing, train_set, test_set, budget: float, tmp: Path) -> dict:
    """The real trainer against a real deadline; Dice of its final model."""
    seed = compute_training_seed(PREV_HASH, MINER)
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        t = time.time()
        r = train(standing.model, standing.train, train_set, seed, t + budget, BlobStore(Path(d)),
                  progress=False, num_threads=1)
        used = time.time() - t
    dice = evaluate(r.model_file, standing.model, test_set).dice
    return {"budget_s": budget, "epochs": r.epochs, "stop_reason": r.stop_reason, "used_s": used,
            "seconds_per_epoch": sum(r.epoch_seconds) / r.epochs, "dice": dice, "measured": "deadline"}


def get_epochs_in_budget(seconds_per_epoch: float, budget: float, max_epochs: int) -> int:
    """Epochs the trainer finishes: epoch e+1 starts only if e*t + SAFETY*t <= budget."""
    fit = 1 + max(0, math.floor((budget - SAFETY * seconds_per_epoch) / seconds_per_epoch))
    return max(1, min(max_epochs, fit))


def run_extrapolated(standing, train_set, test_set, budgets: list[float], tmp: Path, probe_epochs: int = 3) -> list[dict]:
    """Seconds per epoch from a probe, epochs per budget by the trainer's rule, Dice at those checkpoints."""
    seed = compute_training_seed(PREV_HASH, MINER)
    probe_spec = dataclasses.replace(standing.train, max_epochs=probe_epochs)
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        probe = train(standing.model, probe_spec, train_set, seed, time.time() + 3600, BlobStore(Path(d)),
                      progress=False, num_threads=1)
    per_epoch = max(probe.epoch_seconds)
    counts = [get_epochs_in_budget(per_epoch, b, standing.train.max_epochs) for b in budgets]
    run_spec = dataclasses.replace(standing.train, max_epochs=max(counts))
    with tempfile.TemporaryDirectory(dir=tmp) as d:
        store = BlobStore(Path(d))
        r = train(standing.model, run_spec, train_set, seed, time.time() + 86_400, store, progress=False, num_threads=1)
        dice = compute_dice_per_checkpoint(store, [r.checkpoint_digests[c] for c in counts], standing.model, test_set)
    return [
        {"budget_s": b, "epochs": c, "stop_reason": "max_epochs" if c == standing.train.max_epochs else "deadline",
         "seconds_per_epoch": per_epoch, "dice": d, "measured": "extrapolated"}
        for b, c, d in zip(budgets, counts, dice)
    ]


def bench_network(name: str, params, hashes: dict, tmp: Path, extrapolate: bool) -> dict:
    standing = params.standing_task
    train_set, test_set, seconds = make_data(standing)
    budgets = [params.phase1_seconds - DEADLINE_MARGIN, 2 * params.phase1_seconds - DEADLINE_MARGIN]
    if extrapolate:
        runs = run_extrapolated(standing, train_set, test_set, budgets, tmp)
    else:
        runs = [run_deadline(standing, train_set, test_set, b, tmp) for b in budgets]
    end = runs[0]["dice"]
    return {
        "network": name,
        "phase1_s": params.phase1_seconds,
        "model": f"{standing.model.architecture} base {standing.model.base_filters}, "
                 f"{'x'.join(map(str, standing.model.patch_size))}, {standing.model.num_classes} classes",
        "train_count": standing.train_count,
        "test_count": standing.test_count,
        "max_epochs": standing.train.max_epochs,
        "generation": summarise_generation(name, standing, seconds, hashes),
        "end_of_phase": runs[0],
        "twice_the_budget": runs[1],
        "target_met": TARGET[0] < end < TARGET[1],
    }


def run(quick: bool, main_full: bool) -> dict:
    torch.set_num_threads(1)
    from pouw.seg.determinism import deterministic_mode

    with deterministic_mode(None):  # torch's one-time import cost stays out of every figure
        pass
    hashes = bench_hashlib()
    nets = [("devnet", make_devnet_params(genesis_time=0))]
    if not quick:
        nets.append(("main", make_main_params()))
    out: dict = {"quick": quick, "threads": 1, "hashlib": hashes, "networks": []}
    with tempfile.TemporaryDirectory() as d:
        for name, params in nets:
            extrapolate = name == "main" and not main_full
            out["networks"].append(bench_network(name, params, hashes, Path(d), extrapolate))
    return out


def print_human(res: dict) -> None:
    h = res["hashlib"]
    print(f"hashlib SHA-256: {h['bulk_MB_per_s']:.0f} MB/s bulk, {h['short_hashes_per_s'] / 1e6:.2f} M short messages/s")
    for t in res["networks"]:
        g = t["generation"]
        print(f"{t['network']} standing task ({t['model']}, {t['train_count']} train / {t['test_count']} test, "
              f"at most {t['max_epochs']} epochs), Phase 1 = {t['phase1_s']} s, 1 CPU thread:")
        print(f"  generation       {g['images']} images in {g['seconds']:.2f} s = {g['images_per_s']:.0f} images/s; "
              f"{g['noise_blocks_per_image']} SHA-256 blocks each = {100 * g['hashing_share']:.0f}% of that time "
              f"at hashlib's short-message rate")
        for key, label in (("end_of_phase", "end of phase"), ("twice_the_budget", "twice the budget")):
            r = t[key]
            print(f"  {label:16s} {r['budget_s']:6.0f} s: {r['epochs']:3d} epochs ({r['stop_reason']}, "
                  f"{r['seconds_per_epoch']:.2f} s/epoch, {r['measured']}) -> Dice {r['dice']:.4f}")
        print(f"  target {TARGET[0]} < Dice at end of phase < {TARGET[1]}: {'met' if t['target_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the devnet only")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--main-full", action="store_true", help="run main's real 600 s and 1200 s budgets")
    args = ap.parse_args(argv)
    res = run(args.quick, args.main_full)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_human(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
