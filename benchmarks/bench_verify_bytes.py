"""Bytes a verifier fetches for one claim, against the whole trajectory: a 270 MB model trained 100 epochs.

    python benchmarks/bench_verify_bytes.py [--model-mb 270] [--epochs 100] [--draws 2000] [--json]

Sizes are real: a small 2D U-Net is trained for one epoch by the real trainer
with Adam and with SGD (momentum), and its checkpoint and model files are
encoded by the real encoders (pouw.seg.weights). Each blob is then scaled
linearly to a model whose weights take `--model-mb` MB (the tensors dominate
the blobs; the fixed metadata is under a kilobyte). The checkpoints a
verifier fetches come from the real plan (`consensus.work.compute_work_plan`,
the main network's replay parameters) over `--draws` replay seeds; the
figure is the worst draw (three disjoint segments, none ending at the last
checkpoint) and the mean. The whole trajectory is every checkpoint plus the
model file, what a verifier fetched before plans existed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.fixtures import make_next_block, make_test_params, make_keypair  # noqa: E402
from consensus.genesis import make_main_params  # noqa: E402
from consensus.rules import compute_trajectory_root  # noqa: E402
from consensus.state import State  # noqa: E402
from consensus.transition import apply_genesis  # noqa: E402
from consensus.work import compute_work_plan  # noqa: E402
from pouw.blobstore import BlobStore  # noqa: E402
from pouw.seg.data import synthetic_dataset  # noqa: E402
from pouw.seg.spec import ModelSpec, TrainSpec  # noqa: E402
from pouw.seg.train import train  # noqa: E402
from pouw.types import CheckpointRef  # noqa: E402

SPEC = ModelSpec("unet2d", 1, 2, 8, (32, 32))


def measure_blob_sizes(optimizer: str) -> tuple[int, int]:
    """(checkpoint bytes, model bytes) of a real one-epoch run of SPEC with `optimizer`."""
    tspec = TrainSpec(learning_rate=0.01, batch_size=4, loss="dice", optimizer=optimizer, max_epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        store = BlobStore(Path(tmp))
        data = synthetic_dataset(b"bench-verify-bytes", 16, SPEC)
        run = train(SPEC, tspec, data, b"\x07" * 32, time.time() + 120, store, progress=False, num_threads=1)
        return store.size(run.checkpoint_digests[-1]), len(run.model_file)


def measure(optimizer: str, model_mb: float, epochs: int, draws: int, base_block) -> dict:
    ck_bytes, model_bytes = measure_blob_sizes(optimizer)
    scale = model_mb * 1e6 / model_bytes
    ck_size, model_size = int(ck_bytes * scale), int(model_bytes * scale)
    params = make_main_params()
    worst, total_fetched = 0, 0
    for salt in range(draws):
        # Declared update norms: distinct, so top-Q picks two segments and the draw a third.
        refs = tuple(CheckpointRef(hashlib.sha256(b"%d/%d" % (salt, i)).digest(), ck_size,
                                   0 if i == 0 else 1_000_000 + (i * 7919 + salt * 104729) % 1_000_003)
                     for i in range(epochs + 1))
        block = retarget(base_block, refs, salt)
        plan = compute_work_plan(block, params)
        fetched = model_size + sum(refs[i].size for i in plan.checkpoints)
        worst = max(worst, fetched)
        total_fetched += fetched
    trajectory = model_size + (epochs + 1) * ck_size
    return {
        "optimizer": optimizer, "checkpoint_over_model": round(ck_bytes / model_bytes, 4),
        "model_bytes": model_size, "checkpoint_bytes": ck_size, "trajectory_bytes": trajectory,
        "worst_fetched_bytes": worst, "worst_ratio": round(worst / trajectory, 4),
        "mean_ratio": round(total_fetched / draws / trajectory, 4),
        "replayed_segments": params.replay_top_q + params.replay_random,
    }


def make_base_block():
    """A real block for height 1 of a fresh chain (genesis state over a plain dict)."""
    params = make_test_params("bench")
    state = State.from_mapping({})
    apply_genesis(state, params)
    return make_next_block(state, params, make_keypair("bench"))


def retarget(block, refs, salt: int):
    """`block` with work declaring `refs` (all the plan reads: the refs, the commit's root and the replay seed)."""
    header = dataclasses.replace(block.header, prev_hash=hashlib.sha256(b"draw%d" % salt).digest())
    body = dataclasses.replace(
        block.body,
        work=dataclasses.replace(block.body.work, checkpoints=refs),
        commit=dataclasses.replace(block.body.commit, trajectory_root=compute_trajectory_root(refs)),
    )
    return dataclasses.replace(block, header=header, body=body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-mb", type=float, default=270.0)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    base = make_base_block()
    rows = [measure(opt, args.model_mb, args.epochs, args.draws, base) for opt in ("adam", "sgd")]
    if args.json:
        print(json.dumps({"model_mb": args.model_mb, "epochs": args.epochs, "draws": args.draws, "rows": rows}))
        return 0
    print(f"bytes a verifier fetches per claim: {args.model_mb:g} MB model, {args.epochs} epochs, {args.draws} replay draws")
    for r in rows:
        print(f"  {r['optimizer']:4s}: checkpoint = {r['checkpoint_over_model']:.2f} x model; trajectory "
              f"{r['trajectory_bytes'] / 1e9:.1f} GB; fetched worst {r['worst_fetched_bytes'] / 1e9:.2f} GB "
              f"= {100 * r['worst_ratio']:.2f}% (mean {100 * r['mean_ratio']:.2f}%; goal at most 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
