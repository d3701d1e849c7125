"""Replay distances of honest and forged work: where REPLAY_TOLERANCE comes from.

    python benchmarks/bench_replay_tolerance.py [--quick] [--json]

No GPU is needed: every effect GPU training has on a CPU replay is simulated
on the CPU with the real trainer and the real verifier:

* thread count: the miner trains with 2 threads, the verifier replays with 1
  (another order of every float reduction, as a GPU's kernels have);
* data parallelism: 2 processes (gloo, DistributedDataParallel: the gradient
  all-reduce adds in another order and each rank computes its half of the
  batch), and the same with 2 threads each;
* mixed precision: bf16 autocast (weights, gradients and optimizer state fp32,
  the first FP32_WARMUP_STEPS steps fp32), alone and with the two above; and
  bf16 from the first step.

Every segment of every run is replayed on one process, one thread, fp32
(what `verify_work` does); the distance is the larger of the weights' and the
Adam momentum's, each relative to its own change over the segment. Forged
segments of the fp32 runs are measured the same way: an interpolated path,
noise of 10% of a segment's step, a doubled step. The tolerance is
MARGIN x the largest honest fp32 distance and must stay well below the
smallest forged one; the bf16 figures show why the miner trains fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pouw.blobstore import BlobStore  # noqa: E402
from pouw.seg.data import make_volume_dataset, synthetic_dataset  # noqa: E402
from pouw.seg.launch import train_on_devices  # noqa: E402
from pouw.seg.spec import ModelSpec, TrainSpec  # noqa: E402
from pouw.seg.train import replay_segment  # noqa: E402
from pouw.seg.verify import REPLAY_TOLERANCE, compute_momentum_distance, compute_replay_distance  # noqa: E402
from pouw.seg.checkpoints import load_checkpoint  # noqa: E402
from pouw.seg.weights import decode_model  # noqa: E402

SEED = bytes(range(32))
MARGIN = 2.0
"""Tolerance = MARGIN x the largest honest distance measured."""


def make_volumes(spec: ModelSpec, count: int, side: int):
    """Synthetic whole volumes larger than the patch (MONAI's generator at `side`^3), as a patch task sees them."""
    big = ModelSpec(spec.architecture, spec.in_channels, spec.num_classes, spec.base_filters, (side,) * 3)
    ds = synthetic_dataset(SEED + b"volumes", count, big)
    return make_volume_dataset([ds.images[i].numpy() for i in range(count)], [ds.labels[i, 0].numpy() for i in range(count)],
                               ds.names, spec.num_classes)


def get_tasks(quick: bool) -> list[dict]:
    """(name, specs, dataset, epochs): the chain's standing tasks, other losses and optimizers, FCN, 3D patch tasks."""
    tasks = [
        dict(name="standing-devnet unet2d f8 32^2 adam dice", spec=ModelSpec("unet2d", 1, 2, 8, (32, 32)),
             train=TrainSpec(0.01, 8, "dice", "adam", 6), data=lambda s: synthetic_dataset(SEED, 32, s)),
        dict(name="fcn2d f8 64^2 adam dicece", spec=ModelSpec("fcn", 1, 2, 8, (64, 64)),
             train=TrainSpec(0.01, 8, "dicece", "adam", 4), data=lambda s: synthetic_dataset(SEED, 32, s)),
        dict(name="unet3d f8 patch 32^3 of 48^3 adam dicece", spec=ModelSpec("unet3d", 1, 2, 8, (32, 32, 32), "patch"),
             train=TrainSpec(0.01, 2, "dicece", "adam", 3), data=lambda s: make_volumes(s, 8, 48)),
    ]
    if quick:
        return tasks
    return tasks + [
        dict(name="standing-main unet2d f8 64^2 adam dice (16-step segments)", spec=ModelSpec("unet2d", 1, 2, 8, (64, 64)),
             train=TrainSpec(0.01, 8, "dice", "adam", 4), data=lambda s: synthetic_dataset(SEED, 128, s)),
        dict(name="unet2d f16 64^2 sgd dicece", spec=ModelSpec("unet2d", 1, 3, 16, (64, 64)),
             train=TrainSpec(0.05, 8, "dicece", "sgd", 5), data=lambda s: synthetic_dataset(SEED, 32, s)),
        dict(name="unet2d f8 32^2 adam dice (128-step segments)", spec=ModelSpec("unet2d", 1, 2, 8, (32, 32)),
             train=TrainSpec(0.003, 4, "dice", "adam", 2), data=lambda s: synthetic_dataset(SEED, 512, s)),
        dict(name="fcn3d f8 patch 32^3 of 40^3 adam dice", spec=ModelSpec("fcn", 1, 2, 8, (32, 32, 32), "patch"),
             train=TrainSpec(0.01, 2, "dice", "adam", 3), data=lambda s: make_volumes(s, 8, 40)),
    ]


EFFECTS = {
    "fp32, threads 2 vs 1": dict(devices=("cpu",), threads=2, precision="fp32"),
    "fp32, DDP 2 ranks": dict(devices=("cpu", "cpu"), threads=2, precision="fp32"),
    "fp32, DDP 2 ranks x 2 threads": dict(devices=("cpu", "cpu"), threads=4, precision="fp32"),
    "bf16 autocast": dict(devices=("cpu",), threads=1, precision="bf16"),
    "bf16 + DDP 2 ranks x 2 threads": dict(devices=("cpu", "cpu"), threads=4, precision="bf16"),
    "bf16 from step 0 (no fp32 warm-up)": dict(devices=("cpu",), threads=1, precision="bf16", warmup=0),
}
"""Simulated effects; the fp32 ones are what the miner does (GPU: fp32, TF32 off)."""


def run_training(task: dict, dataset, effect: dict, store: BlobStore, seed: bytes = SEED):
    import pouw.seg.train as trainer

    warmup = trainer.FP32_WARMUP_STEPS
    if "warmup" in effect:
        trainer.FP32_WARMUP_STEPS = effect["warmup"]
    try:
        return train_on_devices(effect["devices"], task["spec"], task["train"], dataset, seed, time.time() + 3600,
                                store, progress=False, num_threads=effect["threads"], precision=effect["precision"])
    finally:
        trainer.FP32_WARMUP_STEPS = warmup


def measure_segments(store: BlobStore, digests, dataset) -> list[tuple[float, float]]:
    """(weights distance, momentum distance) of every segment, replayed as a verifier does."""
    cks = [load_checkpoint(store, d) for d in digests]
    out = []
    for before, after in zip(cks, cks[1:]):
        weights, state = replay_segment(before, after.position, dataset)
        prev = decode_model(before.model_file, before.model_spec)
        claimed = decode_model(after.model_file, after.model_spec)
        out.append((compute_replay_distance(weights, prev, claimed), compute_momentum_distance(state, before, after)))
    return out


def measure_forgeries(dataset, store: BlobStore, digests) -> dict[str, float]:
    """The smallest distance each kind of forged segment reaches (weights distance)."""
    cks = [load_checkpoint(store, d) for d in digests]
    states = [decode_model(ck.model_file, ck.model_spec) for ck in cks]
    forged: dict[str, list[float]] = {"interpolated path": [], "noise 10% of the step": [], "doubled step": []}
    init, final = states[0], states[-1]
    n = len(states) - 1
    gen = torch.Generator().manual_seed(0)
    for i in range(1, n + 1):
        weights, _ = replay_segment(cks[i - 1], cks[i].position, dataset)
        prev, honest = states[i - 1], states[i]

        def dist(claimed):
            return compute_replay_distance(weights, prev, claimed)

        interp = {k: init[k] + (final[k] - init[k]) * (i / n) if v.is_floating_point() else v for k, v in honest.items()}
        interp_prev = {k: init[k] + (final[k] - init[k]) * ((i - 1) / n) if v.is_floating_point() else v
                       for k, v in honest.items()}
        forged["interpolated path"].append(compute_replay_distance(
            replay_segment(_with_weights(cks[i - 1], interp_prev), cks[i].position, dataset)[0], interp_prev, interp))
        step = math.sqrt(sum(float((honest[k].double() - prev[k].double()).pow(2).sum())
                             for k in honest if honest[k].is_floating_point()))
        noise = {k: torch.randn(v.shape, generator=gen) for k, v in honest.items() if v.is_floating_point()}
        scale = 0.1 * step / math.sqrt(sum(float(t.double().pow(2).sum()) for t in noise.values()))
        forged["noise 10% of the step"].append(dist({k: honest[k] + scale * noise[k] if k in noise else honest[k]
                                                     for k in honest}))
        forged["doubled step"].append(dist({k: prev[k] + 2 * (honest[k] - prev[k]) if honest[k].is_floating_point()
                                            else honest[k] for k in honest}))
    return {k: min(v) for k, v in forged.items() if v}


def _with_weights(ck, state):
    from dataclasses import replace

    from pouw.seg.weights import encode_model

    return replace(ck, model_file=encode_model(state, ck.model_spec))


def summarise(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {"n": int(arr.size), "max": float(arr.max()), "p99": float(np.percentile(arr, 99)),
            "median": float(np.median(arr))}


def run(quick: bool) -> dict:
    out: dict = {"quick": quick, "tasks": {}, "effects": {}, "forgeries": {}, "tolerance_in_code": REPLAY_TOLERANCE}
    all_by_effect: dict[str, list[float]] = {}
    forged_min: dict[str, float] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for t, task in enumerate(get_tasks(quick)):
            dataset = task["data"](task["spec"])
            rows = {}
            for e, (name, effect) in enumerate(EFFECTS.items()):
                store = BlobStore(tmp / f"t{t}e{e}")
                result = run_training(task, dataset, effect, store)
                pairs = measure_segments(store, result.checkpoint_digests, dataset)
                both = [max(a, b) for a, b in pairs]
                rows[name] = {"segments": len(pairs), "segment_steps": result.segment_steps,
                              "weights": summarise([a for a, _ in pairs]), "momentum": summarise([b for _, b in pairs]),
                              "distance": summarise(both)}
                all_by_effect.setdefault(name, []).extend(both)
                if e == 0:
                    for kind, v in measure_forgeries(dataset, store, result.checkpoint_digests).items():
                        forged_min[kind] = min(forged_min.get(kind, math.inf), v)
            out["tasks"][task["name"]] = rows
    honest = [v for k, vs in all_by_effect.items() if k.startswith("fp32") for v in vs]
    mixed = [v for k, vs in all_by_effect.items() if k.startswith("bf16 ") and "no fp32" not in k for v in vs]
    out["effects"] = {k: summarise(v) for k, v in all_by_effect.items()}
    out["honest_fp32"] = summarise(honest)
    out["bf16"] = summarise(mixed)
    out["forgeries"] = forged_min
    out["recommended_tolerance"] = MARGIN * out["honest_fp32"]["max"]
    out["smallest_forgery"] = min(forged_min.values())
    out["seconds"] = time.time() - started
    return out


def print_human(res: dict) -> None:
    print("replay distance = ||replayed - claimed|| / ||claimed - previous||, max of weights and Adam momentum;")
    print("training on the CPU with the effect, replay fp32 on 1 thread as verify_work does\n")
    for task, rows in res["tasks"].items():
        print(task)
        for name, r in rows.items():
            d, w, m = r["distance"], r["weights"], r["momentum"]
            print(f"  {name:38s} {r['segments']:3d} segments of <= {r['segment_steps']:3d} steps: max {d['max']:.4f} "
                  f"p99 {d['p99']:.4f} median {d['median']:.4f} (weights max {w['max']:.4f}, momentum max {m['max']:.4f})")
    print("\nall tasks, by effect:")
    for name, s in res["effects"].items():
        print(f"  {name:38s} n={s['n']:4d} max {s['max']:.4f} p99 {s['p99']:.4f} median {s['median']:.4f}")
    h, b = res["honest_fp32"], res["bf16"]
    print(f"honest fp32 (what the miner does): n={h['n']} max {h['max']:.4f} p99 {h['p99']:.4f}")
    print(f"bf16 autocast with the fp32 warm-up: n={b['n']} max {b['max']:.4f} p99 {b['p99']:.4f}")
    print("forged segments (of the fp32 runs), smallest distance reached:")
    for kind, v in res["forgeries"].items():
        print(f"  {kind:38s} {v:.3f}")
    print(f"recommended tolerance {MARGIN:g} x max honest fp32 = {res['recommended_tolerance']:.4f}; "
          f"smallest forgery {res['smallest_forgery']:.3f}; REPLAY_TOLERANCE in the code = {res['tolerance_in_code']}")
    print(f"({res['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="three tasks instead of seven")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run(args.quick)
    print(json.dumps(res, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        print_human(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
