"""Useful-work benchmarks: training throughput, Dice verification, decryption, digests, Dice in a budget.

    python -m benchmarks.bench_useful_work [--quick] [--json]
    python benchmarks/bench_useful_work.py [--quick] [--json]

Every ratio compares two measurements taken in the same run on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pouw.blobcrypt import ABYTES, HEADER_SIZE, PREFIX_SIZE, decrypt_file, encrypt_file, generate_key  # noqa: E402
from pouw.blobstore import BlobStore, compute_file_digest  # noqa: E402
from pouw.seg.data import load_dataset, synthetic_dataset  # noqa: E402
from pouw.seg.dice import evaluate  # noqa: E402
from pouw.seg.spec import ModelSpec, TrainSpec  # noqa: E402
from pouw.seg.train import init_model, make_loss, make_optimizer, train  # noqa: E402
from pouw.seg.verify import verify_work  # noqa: E402
from pouw.seg.weights import compute_model_digest, encode_model  # noqa: E402

SEED = hashlib.sha256(b"bench").digest()


def bench_training_throughput(quick: bool, tmp: Path) -> dict:
    """pouw train() against a plain MONAI loop: same UNet, data, batch size, epochs and threads.

    Both are timed in wall time and in CPU time (this process, all threads):
    on a shared machine other processes stall a loop's threads (OpenMP waits
    at every barrier for a descheduled thread), which wall time counts and CPU
    time does not. Rounds are interleaved, best of five each.
    """
    spec = ModelSpec("unet2d", 1, 2, 16, (64, 64))
    epochs = 3 if quick else 6
    tspec = TrainSpec(1e-3, 8, "dice", "adam", epochs)
    data = synthetic_dataset(SEED, 64, spec)
    n = len(data)
    threads = torch.get_num_threads()

    def plain_loop() -> tuple[float, float]:
        # What a MONAI tutorial does, minus data augmentation; timed from model
        # construction to trained weights, like train() (which also checkpoints).
        t0, c0 = time.perf_counter(), time.process_time()
        model = init_model(spec, SEED)
        opt = make_optimizer(model, tspec)
        loss_fn = make_loss(tspec)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(n)
            for i in range(0, n - tspec.batch_size + 1, tspec.batch_size):
                idx = perm[i: i + tspec.batch_size]
                opt.zero_grad()
                loss = loss_fn(model(data.images[idx]), data.labels[idx].long())
                loss.backward()
                opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    def pouw_loop(k: int) -> tuple[float, float]:
        store = BlobStore(tmp / f"tp{k}")
        t0, c0 = time.perf_counter(), time.process_time()
        train(spec, tspec, data, SEED, time.time() + 3600, store, progress=False, num_threads=threads)
        return time.perf_counter() - t0, time.process_time() - c0

    plain_loop()  # warm-up: oneDNN builds its kernels on the first passes
    pouw_loop(-1)
    plain, ours = [float("inf")] * 2, [float("inf")] * 2
    for k in range(5):
        plain = [min(a, b) for a, b in zip(plain, plain_loop())]
        ours = [min(a, b) for a, b in zip(ours, pouw_loop(k))]
    images = epochs * (n // tspec.batch_size) * tspec.batch_size
    return {
        "plain_images_per_s": images / plain[0],
        "pouw_images_per_s": images / ours[0],
        "ratio": plain[0] / ours[0],
        "plain_images_per_cpu_s": images / plain[1],
        "pouw_images_per_cpu_s": images / ours[1],
        "ratio_cpu": plain[1] / ours[1],
        "goal_ratio": 0.95,
        "epochs": epochs,
        "threads": threads,
    }


def bench_dice_verification(quick: bool, tmp: Path) -> dict:
    spec = ModelSpec("unet2d", 1, 2, 16, (64, 64))
    tspec = TrainSpec(1e-2, 8, "dice", "adam", 2)
    train_ds = synthetic_dataset(SEED, 16, spec)
    test_ds = synthetic_dataset(SEED + b"t", 16 if quick else 64, spec)
    store = BlobStore(tmp / "dv")
    r = train(spec, tspec, train_ds, SEED, time.time() + 3600, store, progress=False)
    store.put_bytes(r.model_file)
    t0 = time.perf_counter()
    dice = evaluate(r.model_file, spec, test_ds)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    verify_work(model_spec=spec, train_spec=tspec, model_digest=r.model_digest, checkpoint_digests=r.checkpoint_digests,
                claimed_dice_ppm=dice.dice_ppm, blob_store=store, test_dataset=test_ds, train_dataset=train_ds,
                spot_check_seed=SEED)
    t_verify = time.perf_counter() - t0
    return {"test_images": len(test_ds), "dice_seconds": t_eval, "dice_ms_per_image": 1000 * t_eval / len(test_ds),
            "verify_work_seconds": t_verify, "dice_ppm": dice.dice_ppm}


def bench_decryption(quick: bool, tmp: Path) -> dict:
    from nacl import bindings as sodium

    size = (16 if quick else 128) << 20
    src = tmp / "plain.bin"
    src.write_bytes(os.urandom(size))
    key = generate_key()
    encrypt_file(src, tmp / "enc.bin", key)
    t0 = time.perf_counter()
    decrypt_file(tmp / "enc.bin", tmp / "dec.bin", key)
    ours = time.perf_counter() - t0

    # Raw pynacl: same chunks already in memory, no file I/O, no checks of ours.
    blob = (tmp / "enc.bin").read_bytes()
    chunk = int.from_bytes(blob[8:12], "big") + ABYTES
    header = blob[PREFIX_SIZE: PREFIX_SIZE + HEADER_SIZE]
    body = memoryview(blob)[PREFIX_SIZE + HEADER_SIZE:]
    ad = blob[:PREFIX_SIZE]
    state = sodium.crypto_secretstream_xchacha20poly1305_state()
    t0 = time.perf_counter()
    sodium.crypto_secretstream_xchacha20poly1305_init_pull(state, header, key)
    out = io.BytesIO()
    for i in range(0, len(body), chunk):
        m, _ = sodium.crypto_secretstream_xchacha20poly1305_pull(state, bytes(body[i: i + chunk]), ad)
        out.write(m)
    raw = time.perf_counter() - t0
    mb = size / 1e6
    return {"megabytes": mb, "pouw_MB_per_s": mb / ours, "raw_pynacl_MB_per_s": mb / raw, "ratio": raw / ours}


def bench_model_digest(quick: bool, tmp: Path) -> dict:
    spec = ModelSpec("unet2d", 1, 2, 32 if quick else 64, (64, 64))
    model = init_model(spec, SEED)
    t0 = time.perf_counter()
    data = encode_model(model, spec)
    t_encode = time.perf_counter() - t0
    path = tmp / "model.bin"
    path.write_bytes(data)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        d1 = compute_file_digest(path)
    ours_file = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        d2 = compute_model_digest(data)
    ours_mem = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        d3 = hashlib.sha256(data).digest()
    plain = (time.perf_counter() - t0) / reps
    assert d1 == d2 == d3
    return {"model_bytes": len(data), "encode_seconds": t_encode, "digest_file_seconds": ours_file,
            "digest_bytes_seconds": ours_mem, "hashlib_seconds": plain, "ratio_file": plain / ours_file,
            "ratio_bytes": plain / ours_mem}


def bench_dice_in_budget(name: str, spec: ModelSpec, tspec: TrainSpec, train_ds, test_ds, budget: float,
                         goal: float, tmp: Path) -> dict:
    store = BlobStore(tmp / f"budget-{name}")
    t0 = time.time()
    r = train(spec, tspec, train_ds, SEED, t0 + budget, store, progress=False,
              num_threads=torch.get_num_threads())
    used = time.time() - t0
    dice = evaluate(r.model_file, spec, test_ds)
    return {"task": name, "budget_s": budget, "used_s": used, "epochs": r.epochs, "dice": dice.dice,
            "goal": goal, "met": dice.dice >= goal, "train_images": len(train_ds), "test_images": len(test_ds)}


def get_nuclei_dir(tmp: Path) -> Path | None:
    try:
        from scripts.make_nuclei_example import main as make_nuclei
    except ImportError:
        return None
    out = tmp / "nuclei"
    try:
        make_nuclei([str(out)])
    except SystemExit as exc:
        if exc.code not in (0, None):
            return None
    return out if (out / "dataset.json").exists() else None


def run(quick: bool, threads: int | None = None) -> dict:
    budget = 15.0 if quick else 60.0
    if threads:
        torch.set_num_threads(threads)
    out: dict = {"quick": quick, "torch_threads": torch.get_num_threads()}
    # One-time cost per process: torch imports its compiler stack on the first
    # use_deterministic_algorithms call; keep it out of every figure.
    from pouw.seg.determinism import deterministic_mode

    with deterministic_mode(None):
        pass
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out["training_throughput"] = bench_training_throughput(quick, tmp)
        out["dice_verification"] = bench_dice_verification(quick, tmp)
        out["decryption"] = bench_decryption(quick, tmp)
        out["model_digest"] = bench_model_digest(quick, tmp)
        spec = ModelSpec("unet2d", 1, 2, 16, (64, 64))
        out["synthetic_budget"] = bench_dice_in_budget(
            "synthetic-2d", spec, TrainSpec(1e-2, 8, "dice", "adam", 10_000),
            synthetic_dataset(SEED, 64, spec), synthetic_dataset(SEED + b"test", 16, spec), budget, 0.9, tmp)
        nuclei = get_nuclei_dir(tmp)
        if nuclei is None:
            out["nuclei_budget"] = {"skipped": "stardist wheel not installed (pip install --no-deps stardist)"}
        else:
            nspec = ModelSpec("unet2d", 1, 2, 16, (64, 64))
            out["nuclei_budget"] = bench_dice_in_budget(
                "nuclei-bbbc038", nspec, TrainSpec(1e-2, 8, "dicece", "adam", 10_000),
                load_dataset(nuclei, "train", nspec), load_dataset(nuclei, "test", nspec), budget, 0.8, tmp)
    return out


def print_human(res: dict) -> None:
    tp = res["training_throughput"]
    print(f"training throughput ({tp['threads']} threads): pouw {tp['pouw_images_per_s']:.1f} img/s, plain MONAI loop "
          f"{tp['plain_images_per_s']:.1f} img/s -> {100 * tp['ratio']:.1f}%; per CPU second "
          f"{tp['pouw_images_per_cpu_s']:.1f} vs {tp['plain_images_per_cpu_s']:.1f} -> {100 * tp['ratio_cpu']:.1f}% "
          f"(goal >= 95%)")
    dv = res["dice_verification"]
    print(f"Dice verification: {dv['dice_seconds']:.2f} s for {dv['test_images']} images "
          f"({dv['dice_ms_per_image']:.1f} ms/image); full verify_work {dv['verify_work_seconds']:.2f} s")
    de = res["decryption"]
    print(f"decryption: pouw {de['pouw_MB_per_s']:.0f} MB/s vs raw pynacl {de['raw_pynacl_MB_per_s']:.0f} MB/s "
          f"-> {100 * de['ratio']:.1f}%")
    md = res["model_digest"]
    print(f"model digest ({md['model_bytes'] / 1e6:.1f} MB): file {md['digest_file_seconds'] * 1e3:.1f} ms, "
          f"bytes {md['digest_bytes_seconds'] * 1e3:.1f} ms, hashlib {md['hashlib_seconds'] * 1e3:.1f} ms "
          f"-> {100 * md['ratio_file']:.1f}% / {100 * md['ratio_bytes']:.1f}%; encode {md['encode_seconds'] * 1e3:.1f} ms")
    for key in ("synthetic_budget", "nuclei_budget"):
        b = res[key]
        if "skipped" in b:
            print(f"{key}: skipped ({b['skipped']})")
            continue
        print(f"{b['task']}: {b['budget_s']:.0f} s CPU budget -> {b['epochs']} epochs in {b['used_s']:.1f} s, "
              f"Dice {b['dice']:.4f} (goal {b['goal']}: {'met' if b['met'] else 'NOT met'})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and 15 s training budgets")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every figure (default: all cores)")
    args = ap.parse_args(argv)
    res = run(args.quick, args.threads)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_human(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
