"""A verifier reads one drawn shard of the optimizer state where a replay ends, and still catches a forged momentum.

Checkpoints are stored as a header naming a weights blob and optimizer-state
shards (pouw/seg/checkpoints.py). The plan reads the whole state where each
replayed segment starts and one shard, drawn from the replay seed, where it
ends: that is what keeps a verified claim under 5% of its trajectory.

The attacks, each against a real chain state, a real blob server and a
verifier that fetches only what its plan asks for:

* forged momentum: the miner makes up checkpoint 2's Adam momentum so that
  segment 3 replays exactly onto weights it chose, and records what that
  replay gives. Comparing weights only, segment 2 passes; the drawn shard of
  checkpoint 2's momentum does not;
* a lying header: a checkpoint reference declares fewer bytes of parts than
  its header names (a smaller claim bond), or more; the block is refused
  and the verifier never downloads those parts.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from chainutil import MemoryChain

import consensus.work
from consensus.assemble import assemble_block, make_commit
from consensus.chainstate import BlockStatus, ChainState
from consensus.clock import get_phase2_start
from consensus.fixtures import make_keypair, make_test_params
from consensus.rules import compute_training_seed
from consensus.work import compute_work_plan, get_work_blobs, get_work_data, make_checkpoint_refs
from fullnode.fetch import BlobFetcher
from fullnode.verification import WorkChecker
from pouw.blobserve import BlobServer
from pouw.blobstore import BlobStore
from pouw.seg.checkpoints import load_checkpoint, put_checkpoint, read_checkpoint_header
from pouw.seg.dice import evaluate
from pouw.seg.train import replay_segment, train
from pouw.seg.verify import compute_replay_distance
from pouw.seg.weights import ZERO_DIGEST, Checkpoint, compute_update_norm, decode_model, encode_model
from pouw.types import MODE_NORMAL, WorkProof

pytestmark = pytest.mark.slow

MINER = make_keypair("shard-forger")
PARAMS = make_test_params("shard-forger")
SHARDS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A fresh chain, an honest run of the standing task, and the miner's blob server."""
    tmp = tmp_path_factory.mktemp("sampled-state")
    chain = MemoryChain(PARAMS)
    state = chain.state()
    blobs = BlobStore(tmp / "miner-blobs")
    tip = state.get_status().tip_hash
    data = get_work_data(None, PARAMS, tip, MODE_NORMAL, {}, blobs, tmp / "work")
    seed = compute_training_seed(tip, MINER.public_key)
    honest = train(data.model, data.train, data.train_set, seed, time.time() + 6, blobs, progress=False, num_threads=1)
    server = BlobServer(blobs).start()
    try:
        yield dict(tmp=tmp, state=state, blobs=blobs, data=data, seed=seed, honest=honest, url=server.url, dice={})
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def planned_reads(monkeypatch):
    """These trajectories are small; the plan reads them as it reads a large one (not whole)."""
    monkeypatch.setattr(consensus.work, "FULL_TRAJECTORY_BYTES", 0)


def store_chain(w, weights, positions, opts, salt: int) -> list[bytes]:
    """A linked checkpoint chain over these weights and optimizer states, stored in SHARDS shards each.

    `salt` changes only the last checkpoint (its mean loss): another trajectory root, so another draw.
    """
    first = load_checkpoint(w["blobs"], w["honest"].checkpoint_digests[0])
    prev, digests = ZERO_DIGEST, []
    last = len(weights) - 1
    for i, (wts, position, opt) in enumerate(zip(weights, positions, opts)):
        ck = Checkpoint(i, position, prev, w["seed"], w["data"].model, w["data"].train, first.data_digest, 1, "fp32",
                        0.5 + (salt * 1e-3 if i == last else 0.0), encode_model(wts, w["data"].model), opt)
        prev = put_checkpoint(w["blobs"], ck, SHARDS if opt else 0)
        digests.append(prev)
    return digests


def make_block(w, digests, refs=None):
    spec = w["data"].model
    cks = [load_checkpoint(w["blobs"], d) for d in digests]
    model_file = cks[-1].model_file
    model_digest = w["blobs"].put_bytes(model_file)
    if refs is None:
        weights = [decode_model(c.model_file, spec) for c in cks]
        norms = [compute_update_norm(a, b) for a, b in zip(weights, weights[1:])]
        refs = make_checkpoint_refs(tuple(digests), tuple(norms), w["blobs"])
    dice = w["dice"].get(model_digest)
    if dice is None:
        dice = w["dice"][model_digest] = evaluate(model_file, spec, w["data"].score_set).dice_ppm
    commit = make_commit(MINER, 1, 0, PARAMS.standing_task.task_id, model_digest, refs)
    work = WorkProof(model_digest, len(model_file), refs, (w["url"],), dice)
    return assemble_block(w["state"], PARAMS, MINER, slot=0, timestamp=get_phase2_start(PARAMS, 0) + 1,
                          commit=commit, work=work)


def judge(w, block, name):
    """The block down a real chain state's road; the verifier's own store starts empty and fetches over HTTP."""
    store = BlobStore(w["tmp"] / f"verifier-{name}")
    checker = WorkChecker(PARAMS, store, BlobFetcher(store), w["tmp"] / f"verify-{name}")
    with ChainState.open(w["tmp"] / f"chain-{name}", PARAMS) as chain:
        return chain.process_new_block(block, time.time(), checker), store


def find_block(w, weights, positions, opts, wanted):
    """Re-store the chain (another mean loss each time: another trajectory root, another draw) until `wanted(plan)`."""
    for salt in range(50):
        digests = store_chain(w, weights, positions, opts, salt)
        block = make_block(w, digests)
        plan = compute_work_plan(block, PARAMS)
        if wanted(plan):
            return block, plan
    raise AssertionError("no draw gave the wanted plan")


def honest_parts(w):
    cks = [load_checkpoint(w["blobs"], d) for d in w["honest"].checkpoint_digests]
    spec = w["data"].model
    return cks, [decode_model(c.model_file, spec) for c in cks], [c.position for c in cks], [c.optimizer_state for c in cks]


def test_an_honest_claim_passes_with_one_shard_read_where_each_replay_ends(world):
    w = world
    cks, weights, positions, opts = honest_parts(w)
    assert len(cks) >= 4

    def reads_a_sampled_end(plan):
        return any(i not in plan.whole and i != len(cks) - 1 for i in plan.segments)

    block, plan = find_block(w, weights, positions, opts, reads_a_sampled_end)
    result, store = judge(w, block, "honest")
    assert result.status is BlockStatus.CONNECTED, result.reason
    refs = block.body.work.checkpoints
    for i, ref in enumerate(refs):
        header = read_checkpoint_header(w["blobs"], ref.digest)
        held = [store.has(s.digest) for s in header.shards]
        if i in plan.whole:
            assert all(held), f"checkpoint {i} starts a replay: its whole state is read"
        elif i in plan.segments:
            assert sum(held) == 1, f"checkpoint {i} ends a replay: one drawn shard is read, {sum(held)} were"
        else:
            assert not any(held), f"checkpoint {i} is read for nothing but its header and weights"
        assert store.has(ref.digest) == (i in plan.checkpoints)
    fetched = sum(store.size(d) for d in store.iter_digests())
    assert fetched == sum(get_work_blobs(block, PARAMS, store).values())
    trajectory = sum(r.size + r.parts_size for r in refs)
    assert fetched < trajectory


def test_a_forged_momentum_is_caught_in_the_drawn_shard(world):
    """Attack: made-up momentum at checkpoint 2 steers segment 3 exactly; the replay of segment 2 sees it."""
    w = world
    cks, weights, positions, opts = honest_parts(w)
    forged_opt = {i: dict(slot) for i, slot in opts[2].items()}
    for slot in forged_opt.values():
        # A push in one direction, small enough that segment 3's update does not stand out (top-Q would replay it).
        slot["exp_avg"] = slot["exp_avg"] + 0.5 * slot["exp_avg"].abs().mean()
    weights, opts = list(weights), list(opts)
    opts[2] = forged_opt
    for j in range(3, len(cks)):  # segment 3 lands where the forged momentum steers it; the rest follows honestly
        start = dataclasses.replace(cks[j - 1], model_file=encode_model(weights[j - 1], w["data"].model),
                                    optimizer_state=opts[j - 1])
        weights[j], opts[j] = replay_segment(start, cks[j].position, w["data"].train_set)
    # Comparing weights only, segment 2 passes: its weights are the honest ones.
    replayed, _ = replay_segment(cks[1], cks[2].position, w["data"].train_set)
    assert compute_replay_distance(replayed, weights[1], weights[2]) <= 0.05
    block, plan = find_block(w, weights, positions, opts, lambda p: 2 in p.segments and 2 not in p.whole)
    result, store = judge(w, block, "forged-momentum")
    assert result.status is BlockStatus.INVALID and "replay of segment 2" in result.reason, result.reason
    header = read_checkpoint_header(w["blobs"], block.body.work.checkpoints[2].digest)
    assert sum(store.has(s.digest) for s in header.shards) == 1


@pytest.mark.parametrize("delta", [-1, +1], ids=["understated", "overstated"])
def test_a_reference_that_does_not_match_its_header_is_refused_before_its_parts_are_fetched(world, delta):
    w = world
    cks, weights, positions, opts = honest_parts(w)
    digests = store_chain(w, weights, positions, opts, 0)
    honest = make_block(w, digests)
    refs = list(honest.body.work.checkpoints)
    k = max(range(1, len(refs)), key=lambda i: refs[i].update_norm)  # top-Q: read whatever the draw
    refs[k] = dataclasses.replace(refs[k], parts_size=refs[k].parts_size + delta)
    block = make_block(w, digests, tuple(refs))
    assert k in compute_work_plan(block, PARAMS).checkpoints
    result, store = judge(w, block, f"lying-ref-{delta}")
    assert result.status is BlockStatus.INVALID and f"checkpoint {k}" in result.reason, result.reason
    assert "parts" in result.reason, result.reason
    header = read_checkpoint_header(w["blobs"], refs[k].digest)
    assert store.has(refs[k].digest)
    named = [p.digest for p in header.shards] + [header.weights.digest]
    assert not any(store.has(d) for d in named), "the lying header's parts were fetched"
