"""3D patch tasks on the CPU: training patches per second against a plain MONAI loop, and replay seconds per claim.

    python benchmarks/bench_3d.py [--quick] [--json]

Task: MONAI 3D U-Net (pouw's unet3d) on 96^3 patches cut from whole synthetic
volumes (MONAI create_test_image_3d, 112^3), batch 2, DiceCE, Adam
(quick: 8 base filters, 30 s of training; full: 16 filters, 120 s).

* pouw: `pouw.seg.train.train`, what the miner runs (patch sampling from the
  memory-mapped cases, checkpoints every segment, the deadline budget);
* plain: a MONAI tutorial loop in the same process, same network, optimizer,
  loss, batch and threads, patches by `RandCropByPosNegLabeld` from volumes in
  memory, no checkpoints.
Wall time on a shared machine swings with other processes' load; CPU time
(this process, all threads) is reported beside it.

* replay seconds per claim: what a verifier spends on the claim's training
  check, one segment (`trajectory.compute_segment_steps` steps) replayed by
  `verify.replay_checkpoint_segment` on one thread; and the sliding-window
  Dice of the test volumes on one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pouw.blobstore import BlobStore  # noqa: E402
from pouw.seg.data import make_volume_dataset, synthetic_dataset  # noqa: E402
from pouw.seg.dice import evaluate  # noqa: E402
from pouw.seg.spec import ModelSpec, TrainSpec  # noqa: E402
from pouw.seg.train import init_model, make_loss, make_optimizer, train  # noqa: E402
from pouw.seg.verify import load_checkpoint_blob, replay_checkpoint_segment  # noqa: E402

SEED = bytes(range(32))
PATCH = (96, 96, 96)
VOLUME = 112


def make_volumes(seed: bytes, count: int, filters: int):
    big = ModelSpec("unet3d", 1, 2, filters, (VOLUME,) * 3)
    ds = synthetic_dataset(seed, count, big)
    return make_volume_dataset([ds.images[i].numpy() for i in range(count)], [ds.labels[i, 0].numpy() for i in range(count)],
                               ds.names, 2)


def plain_monai_loop(spec: ModelSpec, tspec: TrainSpec, volumes, steps: int) -> tuple[float, float]:
    """Patches per wall second and per CPU second of a MONAI tutorial loop, timed from model construction
    (as the trainer's own figures include its first step)."""
    from monai.transforms import RandCropByPosNegLabeld

    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=PATCH, pos=1, neg=1,
                                  num_samples=1)
    crop.set_random_state(seed=0)
    cases = [{"image": volumes.images[i], "label": volumes.labels[i][None]} for i in range(len(volumes))]
    started, cpu = time.perf_counter(), time.process_time()
    model = init_model(spec, SEED)
    opt = make_optimizer(model, tspec)
    loss_fn = make_loss(tspec)
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = [crop(cases[i])[0] for i in rng.choice(len(cases), tspec.batch_size, replace=False)]
        x = torch.stack([torch.as_tensor(b["image"]) for b in batch])
        y = torch.stack([torch.as_tensor(b["label"]) for b in batch])
        opt.zero_grad()
        loss = loss_fn(model(x), y.long())
        loss.backward()
        opt.step()
    patches = steps * tspec.batch_size
    return patches / (time.perf_counter() - started), patches / (time.process_time() - cpu)


def run(quick: bool) -> dict:
    filters = 8 if quick else 16
    budget = 30.0 if quick else 120.0
    spec = ModelSpec("unet3d", 1, 2, filters, PATCH, preprocess="patch")
    tspec = TrainSpec(0.01, 2, "dicece", "adam", 100_000)
    train_set = make_volumes(SEED, 8 if quick else 16, filters)
    test_set = make_volumes(SEED + b"test", 2, filters)
    threads = torch.get_num_threads()
    out: dict = {"quick": quick, "threads": threads, "base_filters": filters, "patch": list(PATCH),
                 "volume": [VOLUME] * 3, "batch": tspec.batch_size}
    plain_steps = 4 if quick else 8
    with tempfile.TemporaryDirectory() as d:
        plain_a = plain_monai_loop(spec, tspec, train_set, plain_steps)
        store = BlobStore(Path(d) / "store")
        cpu = time.process_time()
        r = train(spec, tspec, train_set, SEED, time.time() + budget, store, progress=False, num_threads=threads)
        cpu = time.process_time() - cpu
        plain_b = plain_monai_loop(spec, tspec, train_set, plain_steps)
        plain = (plain_a[0] + plain_b[0]) / 2
        plain_cpu = (plain_a[1] + plain_b[1]) / 2
        ours = r.steps * tspec.batch_size / r.step_seconds
        ours_cpu = r.steps * tspec.batch_size / cpu  # the whole call: set-up, saves and all
        out["training"] = {
            "plain_patches_per_s": plain, "pouw_patches_per_s": ours, "ratio": ours / plain,
            "plain_patches_per_cpu_s": plain_cpu, "pouw_patches_per_cpu_s": ours_cpu, "ratio_cpu": ours_cpu / plain_cpu,
            "pouw_patches_per_s_wall": r.steps * tspec.batch_size / r.wall_seconds, "steps": r.steps,
            "segment_steps": r.segment_steps, "checkpoints": len(r.checkpoint_digests), "budget_s": budget,
            "wall_s": r.wall_seconds,
        }
        index = 2 if len(r.checkpoint_digests) > 2 else 1  # a full segment when there is one
        before = load_checkpoint_blob(store, r.checkpoint_digests[index - 1], index - 1)
        after = load_checkpoint_blob(store, r.checkpoint_digests[index], index)
        t0 = time.perf_counter()
        distance = replay_checkpoint_segment(before, after, train_set)
        replay = time.perf_counter() - t0
        store.put_bytes(r.model_file)
        t0 = time.perf_counter()
        dice = evaluate(r.model_file, spec, test_set)
        dice_s = time.perf_counter() - t0
        out["verification"] = {
            "replayed_steps": after.position - before.position, "replay_s_per_claim": replay,
            "replay_s_per_step": replay / (after.position - before.position), "replay_distance": distance,
            "dice_s": dice_s, "test_volumes": len(test_set), "dice": dice.dice,
        }
    return out


def print_human(res: dict) -> None:
    t, v = res["training"], res["verification"]
    print(f"unet3d f{res['base_filters']} on {tuple(res['patch'])} patches of {tuple(res['volume'])} volumes, "
          f"batch {res['batch']}, {res['threads']} threads")
    print(f"training: pouw {t['pouw_patches_per_s']:.2f} patches/s in steps ({t['pouw_patches_per_s_wall']:.2f} over "
          f"its whole {t['wall_s']:.0f} s call), plain MONAI loop {t['plain_patches_per_s']:.2f} patches/s "
          f"-> {100 * t['ratio']:.1f}%; per CPU second (pouw: its whole call) {t['pouw_patches_per_cpu_s']:.2f} vs "
          f"{t['plain_patches_per_cpu_s']:.2f} -> {100 * t['ratio_cpu']:.1f}%; {t['steps']} steps, "
          f"segments of <= {t['segment_steps']} steps, {t['checkpoints']} checkpoints")
    print(f"verification (1 thread): replay of one segment ({v['replayed_steps']} steps) {v['replay_s_per_claim']:.1f} s "
          f"per claim ({v['replay_s_per_step']:.2f} s/step, distance {v['replay_distance']:.4f}); "
          f"sliding-window Dice of {v['test_volumes']} volumes {v['dice_s']:.1f} s (Dice {v['dice']:.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 filters, 30 s of training")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    res = run(args.quick)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_human(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
