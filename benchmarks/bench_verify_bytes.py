"""Bytes a verifier fetches for one claim, against the whole trajectory: a 270 MB model trained 100 epochs.

    python benchmarks/bench_verify_bytes.py [--model-mb 270] [--epochs 100] [--draws 2000] [--json]

Sizes are real: a small 2D U-Net is trained for one epoch by the real trainer
with Adam and with SGD (momentum), and its last checkpoint is stored by the
real encoder (pouw.seg.checkpoints): a header, a weights blob (a model file)
and optimizer-state shards. Each part is then scaled linearly to a model
whose weights take `--model-mb` MB (the tensors dominate; the fixed metadata
is under a kilobyte), split into as many shards as a miner makes for that
size (pouw.seg.weights.compute_shard_count), and real headers naming those
parts are written to a blob store. What a verifier fetches is what the real
code asks for: `consensus.work.get_work_blobs` over those headers, with the
main network's replay parameters, for `--draws` replay seeds and declared
norms (so the replayed segments land anywhere); the figure is the worst draw
and the mean. The whole trajectory is every checkpoint: headers, weights
(the last checkpoint's weights are the model) and shards.
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
from consensus.work import get_work_blobs  # noqa: E402
from pouw.blobstore import BlobStore  # noqa: E402
from pouw.seg.checkpoints import read_checkpoint_header  # noqa: E402
from pouw.seg.data import synthetic_dataset  # noqa: E402
from pouw.seg.spec import ModelSpec, TrainSpec  # noqa: E402
from pouw.seg.train import train  # noqa: E402
from pouw.seg.weights import PartRef, compute_shard_count, encode_checkpoint_header  # noqa: E402
from pouw.types import CheckpointRef  # noqa: E402

SPEC = ModelSpec("unet2d", 1, 2, 8, (32, 32))


def measure_template(optimizer: str):
    """The header of the last checkpoint of a real one-epoch run of SPEC with `optimizer`, and its state's bytes."""
    tspec = TrainSpec(learning_rate=0.01, batch_size=4, loss="dice", optimizer=optimizer, max_epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        store = BlobStore(Path(tmp))
        data = synthetic_dataset(b"bench-verify-bytes", 16, SPEC)
        run = train(SPEC, tspec, data, b"\x07" * 32, time.time() + 120, store, progress=False, num_threads=1)
        header = read_checkpoint_header(store, run.checkpoint_digests[-1])
        return header, sum(s.size for s in header.shards)


def write_trajectory(store: BlobStore, template, model_size: int, state_size: int, epochs: int, salt: bytes):
    """Headers of a scaled trajectory in `store`: checkpoint 0 (weights only), then `epochs` with sharded state.

    Returns [(header digest, header size, parts size)], the model digest."""
    count = compute_shard_count(state_size)
    shard_size = state_size // count
    out, model_digest = [], None
    for i in range(epochs + 1):
        def part(name: str, size: int) -> PartRef:
            return PartRef(hashlib.sha256(salt + b"%s/%d" % (name.encode(), i)).digest(), size)
        weights = part("weights", model_size)
        shards = () if i == 0 else tuple(part(f"shard{s}", shard_size) for s in range(count))
        header = dataclasses.replace(template, index=i, weights=weights, shards=shards,
                                     state_layout=template.state_layout if shards else (),
                                     state_scalars=template.state_scalars if shards else {})
        data = encode_checkpoint_header(header)
        out.append((store.put_bytes(data), len(data), header.parts_size))
        model_digest = weights.digest
    return out, model_digest


def measure(optimizer: str, model_mb: float, epochs: int, draws: int, base_block, store: BlobStore) -> dict:
    template, real_state = measure_template(optimizer)
    scale = model_mb * 1e6 / template.weights.size
    model_size, state_size = int(template.weights.size * scale), int(real_state * scale)
    leaves, model_digest = write_trajectory(store, template, model_size, state_size, epochs, optimizer.encode())
    params = make_main_params()
    worst, total_fetched = 0, 0
    for salt in range(draws):
        # Declared update norms drawn at random: top-Q picks two segments anywhere (apart, mostly) and the seed a third.
        refs = tuple(CheckpointRef(d, size, parts, 0 if i == 0 else 1_000_000 + int.from_bytes(
                         hashlib.sha256(b"norm%d/%d" % (salt, i)).digest()[:4], "big") % 1_000_000)
                     for i, (d, size, parts) in enumerate(leaves))
        block = retarget(base_block, refs, model_digest, model_size, salt)
        fetched = sum(get_work_blobs(block, params, store).values())
        worst = max(worst, fetched)
        total_fetched += fetched
    trajectory = sum(size + parts for _, size, parts in leaves)
    return {
        "optimizer": optimizer, "state_over_model": round(real_state / template.weights.size, 4),
        "model_bytes": model_size, "state_bytes": state_size, "shards": compute_shard_count(state_size),
        "trajectory_bytes": trajectory, "worst_fetched_bytes": worst, "worst_ratio": round(worst / trajectory, 4),
        "mean_ratio": round(total_fetched / draws / trajectory, 4),
        "replayed_segments": params.replay_top_q + params.replay_random,
    }


def make_base_block():
    """A real block for height 1 of a fresh chain (genesis state over a plain dict)."""
    params = make_test_params("bench")
    state = State.from_mapping({})
    apply_genesis(state, params)
    return make_next_block(state, params, make_keypair("bench"))


def retarget(block, refs, model_digest: bytes, model_size: int, salt: int):
    """`block` with work declaring `refs` and the model (all the plan reads: the refs, the commit's root, the seed)."""
    header = dataclasses.replace(block.header, prev_hash=hashlib.sha256(b"draw%d" % salt).digest())
    body = dataclasses.replace(
        block.body,
        work=dataclasses.replace(block.body.work, checkpoints=refs, model_digest=model_digest, model_size=model_size),
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
    with tempfile.TemporaryDirectory() as tmp:
        store = BlobStore(Path(tmp))
        rows = [measure(opt, args.model_mb, args.epochs, args.draws, base, store) for opt in ("adam", "sgd")]
    if args.json:
        print(json.dumps({"model_mb": args.model_mb, "epochs": args.epochs, "draws": args.draws, "rows": rows}))
        return 0
    print(f"bytes a verifier fetches per claim: {args.model_mb:g} MB model, {args.epochs} epochs, {args.draws} replay draws")
    for r in rows:
        print(f"  {r['optimizer']:4s}: state = {r['state_over_model']:.2f} x model in {r['shards']} shards; trajectory "
              f"{r['trajectory_bytes'] / 1e9:.1f} GB; fetched worst {r['worst_fetched_bytes'] / 1e9:.2f} GB "
              f"= {100 * r['worst_ratio']:.2f}% (mean {100 * r['mean_ratio']:.2f}%; goal at most 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
