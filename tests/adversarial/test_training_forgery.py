"""Training that cannot be forged or re-rolled: a splice, a re-rolled interpolation and an over-long run are refused.

The attacks (on the old rules): only checkpoint 0 was tied to the training seed
and one epoch was replayed, chosen from values the miner knew. A model
trained elsewhere, spliced in after one honest epoch, passed; on the standing
task a miner re-rolled its trajectory until an honest epoch was drawn (24 of
25 epochs forged, Dice 0.9955 beating an honest 0.9860); a trajectory longer
than the task's max_epochs was accepted.

Now the Phase-1 commit fixes the whole trajectory (its Merkle root over every
checkpoint's digest, size and declared update norm); the verifier replays the
segments with the largest declared updates (Proof-of-Learning's top-Q) and
segments drawn from keys revealed after the commit; every declared norm it can
check is checked, and their sum must cover the distance from the seed's
initial weights to the model; positions follow the segment rule up to the
task's max_epochs. Every block here is real (real training, real blobs) and
goes down a real ChainState's block road with the node's own work check.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from chainutil import MemoryChain

from consensus.assemble import assemble_block, make_commit
from consensus.chainstate import BlockStatus, ChainState
from consensus.clock import get_phase2_start
from consensus.fixtures import make_keypair, make_test_params
from consensus.rules import compute_training_seed
from consensus.work import get_work_data, make_checkpoint_refs
from fullnode.fetch import BlobFetcher
from fullnode.verification import WorkChecker
from pouw.blobstore import BlobStore
from pouw.seg.checkpoints import load_checkpoint, put_checkpoint
from pouw.seg.dice import evaluate
from pouw.seg.train import train
from pouw.seg.weights import (
    ZERO_DIGEST, Checkpoint, compute_update_norm, decode_model, encode_model,
)
from pouw.types import MODE_NORMAL, WorkProof

pytestmark = pytest.mark.slow

MINER = make_keypair("forger")
PARAMS = make_test_params("forger")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fresh chain, the standing task's data for height 1, and an honest run of a few segments."""
    tmp = tmp_path_factory.mktemp("forgery")
    chain = MemoryChain(PARAMS)
    state = chain.state()
    status = state.get_status()
    blobs = BlobStore(tmp / "blobs")
    data = get_work_data(None, PARAMS, status.tip_hash, MODE_NORMAL, {}, blobs, tmp / "work")
    seed = compute_training_seed(status.tip_hash, MINER.public_key)
    honest = train(data.model, data.train, data.train_set, seed, time.time() + 6, blobs, progress=False, num_threads=1)
    # A better model "trained elsewhere": another seed, longer.
    foreign = train(data.model, data.train, data.train_set, b"\x42" * 32, time.time() + 12, blobs, progress=False, num_threads=1)
    return dict(tmp=tmp, chain=chain, state=state, blobs=blobs, data=data, seed=seed, honest=honest, foreign=foreign)


def checkpoints_of(w, digests):
    return [load_checkpoint(w["blobs"], d) for d in digests]


def forge(w, weights_list, positions, opt_states, train_spec=None):
    """A properly linked checkpoint chain over arbitrary weights: what a forger can always write."""
    first = checkpoints_of(w, w["honest"].checkpoint_digests[:1])[0]
    prev, digests = ZERO_DIGEST, []
    for i, (weights, position, opt) in enumerate(zip(weights_list, positions, opt_states)):
        # Adam's step count must equal the position: a forger rewrites it.
        opt = {k: {**slot, **({"step": torch.tensor(float(position))} if "step" in slot else {})} for k, slot in opt.items()}
        ck = Checkpoint(i, position, prev, w["seed"], w["data"].model, train_spec or w["data"].train, first.data_digest,
                        1, "fp32", 0.5, encode_model(weights, w["data"].model), opt)
        prev = put_checkpoint(w["blobs"], ck)
        digests.append(prev)
    return digests


def make_block(w, digests, norms=None, salt: int = 0):
    """The block a miner claims with for these checkpoints (declared norms: the true ones unless given)."""
    cks = checkpoints_of(w, digests)
    spec = w["data"].model
    weights = [decode_model(c.model_file, spec) for c in cks]
    if norms is None:
        norms = [compute_update_norm(a, b) for a, b in zip(weights, weights[1:])]
    model_file = cks[-1].model_file
    model_digest = w["blobs"].put_bytes(model_file)
    refs = make_checkpoint_refs(tuple(digests), tuple(norms), w["blobs"])
    dice = evaluate(model_file, spec, w["data"].score_set).dice_ppm
    commit = make_commit(MINER, 1, 0, PARAMS.standing_task.task_id, model_digest, refs)
    work = WorkProof(model_digest, len(model_file), refs, ("http://127.0.0.1:1",), dice)
    return assemble_block(w["state"], PARAMS, MINER, slot=0, timestamp=get_phase2_start(PARAMS, 0) + 1 + salt,
                          commit=commit, work=work)


def judge(w, block, name):
    """The block down a real chain state's road with the node's work check (every blob is local)."""
    checker = WorkChecker(PARAMS, w["blobs"], BlobFetcher(w["blobs"]), w["tmp"] / f"verify-{name}")
    with ChainState.open(w["tmp"] / f"chain-{name}", PARAMS) as chain:
        return chain.process_new_block(block, time.time(), checker)


def test_an_honest_trajectory_always_passes(world):
    w = world
    assert len(w["honest"].checkpoint_digests) >= 4
    result = judge(w, make_block(w, w["honest"].checkpoint_digests), "honest")
    assert result.status is BlockStatus.CONNECTED, result.reason


def test_a_model_trained_elsewhere_spliced_in_after_honest_segments_is_refused(world):
    w = world
    honest = checkpoints_of(w, w["honest"].checkpoint_digests)
    foreign = checkpoints_of(w, w["foreign"].checkpoint_digests)
    spec = w["data"].model
    keep = 2
    weights = [decode_model(c.model_file, spec) for c in honest[: keep + 1]]
    weights += [decode_model(c.model_file, spec) for c in foreign[len(foreign) - (len(honest) - keep - 1):]]
    digests = forge(w, weights, [c.position for c in honest], [c.optimizer_state for c in honest[:keep + 1]]
                    + [c.optimizer_state for c in foreign[len(foreign) - (len(honest) - keep - 1):]])
    # Declared truthfully, the jump is the largest update: top-Q replays it.
    result = judge(w, make_block(w, digests), "splice")
    assert result.status is BlockStatus.INVALID and "replay of segment" in result.reason, result.reason
    # Declared small to dodge top-Q: the norm itself is caught when its segment is fetched, the sum when the
    # norms no longer add up, and otherwise a foreign segment (trained under another seed) fails its replay.
    true = [compute_update_norm(a, b) for a, b in zip(weights, weights[1:])]
    understated = true[:keep] + [min(true[:keep]) / 10] + true[keep + 1:]
    result = judge(w, make_block(w, digests, understated, salt=1), "splice-hidden")
    assert result.status is BlockStatus.INVALID, result.reason
    assert any(r in result.reason for r in ("declares an update norm", "add up to less", "replay of segment")), result.reason


def test_an_interpolated_trajectory_is_refused_however_often_it_is_rerolled(world):
    w = world
    honest = checkpoints_of(w, w["honest"].checkpoint_digests)
    spec = w["data"].model
    init = decode_model(honest[0].model_file, spec)
    good = decode_model(checkpoints_of(w, w["foreign"].checkpoint_digests[-1:])[0].model_file, spec)
    n = len(honest) - 1
    weights = [{k: init[k] + (good[k] - init[k]) * (i / n) for k in init} for i in range(n + 1)]
    weights[0] = init
    for reroll in range(4):  # each re-roll changes the trajectory root, so the random draws; top-Q does not move
        opt = [c.optimizer_state for c in honest]
        digests = forge(w, weights, [c.position for c in honest], opt[:1] + [dict(opt[i]) for i in range(1, n)] + [opt[n]])
        block = make_block(w, digests, salt=reroll)
        result = judge(w, block, f"reroll-{reroll}")
        assert result.status is BlockStatus.INVALID and "replay of segment" in result.reason, result.reason


def test_a_trajectory_longer_than_the_tasks_max_epochs_is_refused(world):
    w = world
    data = w["data"]
    longer = dataclasses.replace(data.train, max_epochs=data.train.max_epochs + 5)
    run = train(data.model, longer, data.train_set, w["seed"], time.time() + 60, w["blobs"], progress=False, num_threads=1)
    cks = checkpoints_of(w, run.checkpoint_digests)
    assert cks[-1].position > data.train.max_epochs * (len(data.train_set) // data.train.batch_size)
    spec = data.model
    digests = forge(w, [decode_model(c.model_file, spec) for c in cks], [c.position for c in cks],
                    [c.optimizer_state for c in cks], train_spec=data.train)
    result = judge(w, make_block(w, digests), "too-long")
    assert result.status is BlockStatus.INVALID and "segment rule" in result.reason, result.reason
