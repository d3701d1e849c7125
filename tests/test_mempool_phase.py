"""Phase-1 commit pool and Phase-2 claim pool: windows, bindings, one per miner, ranking."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from chainutil import MemoryChain

from consensus.assemble import make_commit
from consensus.clock import get_phase2_start, get_slot_start
from consensus.fixtures import make_checkpoint_refs, make_keypair, make_next_block, make_test_params
from mempool.claimpool import ClaimPool
from mempool.commitpool import CommitPool
from mempool.errors import MempoolReject
from pouw.encoding import encode, hash_of
from pouw.types import Block, Claim, Commit

M1, M2, M3 = (make_keypair(n) for n in ("miner-1", "miner-2", "miner-3"))


@pytest.fixture
def chain() -> MemoryChain:
    return MemoryChain(make_test_params("alice"))


def work_task(chain: MemoryChain) -> bytes:
    return chain.state().get_status().scheduled[0].task_id


def digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def expect_reject(reason: str, fn, *args, **kwargs) -> MempoolReject:
    with pytest.raises(MempoolReject) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


def phase1(params, slot: int = 0, offset: float = 5) -> float:
    return get_slot_start(params, slot) + offset


def phase2(params, slot: int = 0, offset: float = 3) -> float:
    return get_phase2_start(params, slot) + offset


# --- commits -------------------------------------------------------------------


def test_commit_accepted_in_phase1_and_found(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p)
    commit = make_commit(M1, 1, 0, task, digest("model-1"), make_checkpoint_refs(digest("model-1")))
    commit_id = pool.add(commit, now=phase1(p), tip_height=0, expected_task_id=task)
    assert commit_id == hash_of(commit) and commit_id in pool and len(pool) == 1
    assert pool.get(M1.public_key, 1, 0) == commit
    assert pool.get(M2.public_key, 1, 0) is None and pool.get(M1.public_key, 1, 1) is None
    assert pool.has_binding(M1.public_key, 1, 0, task, commit.binding)
    assert not pool.has_binding(M1.public_key, 1, 0, task, digest("other"))
    assert not pool.has_binding(M1.public_key, 1, 0, digest("other task"), commit.binding)
    assert pool.get_record(M1.public_key, 1, 0).received_at == phase1(p)


def test_commit_window_is_phase1_of_its_slot_with_skew(chain):
    p, task = chain.params, work_task(chain)
    skew = p.clock_skew_seconds
    assert skew >= 1
    start, end = get_slot_start(p, 0), get_phase2_start(p, 0)
    for now, ok in [
        (start - skew - 0.5, False),
        (start - skew, True),
        (end - 1, True),
        (end + skew - 0.5, True),  # a slow clock's Phase 1 still
        (end + skew, False),
        (phase2(p), False),
        (phase1(p, slot=1), False),  # a later slot's Phase 1 does not take slot 0's commits
    ]:
        pool = CommitPool(p)
        commit = make_commit(M1, 1, 0, task, digest("m"), make_checkpoint_refs(digest("m")))
        if ok:
            pool.add(commit, now=now, tip_height=0, expected_task_id=task)
        else:
            expect_reject("wrong-phase", pool.add, commit, now=now, tip_height=0, expected_task_id=task)


def test_commit_height_and_task_must_match(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p)
    expect_reject("wrong-height", pool.add, make_commit(M1, 2, 0, task, digest("m"), make_checkpoint_refs(digest("m"))), now=phase1(p), tip_height=0, expected_task_id=task)
    expect_reject("wrong-height", pool.add, make_commit(M1, 0, 0, task, digest("m"), make_checkpoint_refs(digest("m"))), now=phase1(p), tip_height=0, expected_task_id=task)
    other = digest("not this task")
    expect_reject("wrong-task", pool.add, make_commit(M1, 1, 0, other, digest("m"), make_checkpoint_refs(digest("m"))), now=phase1(p), tip_height=0, expected_task_id=task)
    # Several acceptable tasks (selected and standing, around the key deadline).
    pool.add(make_commit(M1, 1, 0, other, digest("m"), make_checkpoint_refs(digest("m"))), now=phase1(p), tip_height=0, expected_task_id=(task, other))


def test_commit_signature_checked(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p)
    commit = make_commit(M1, 1, 0, task, digest("m"), make_checkpoint_refs(digest("m")))
    forged = dataclasses.replace(commit, binding=digest("stolen"))
    expect_reject("bad-signature", pool.add, forged, now=phase1(p), tip_height=0, expected_task_id=task)
    impostor = dataclasses.replace(commit, miner=M2.public_key)
    expect_reject("bad-signature", pool.add, impostor, now=phase1(p), tip_height=0, expected_task_id=task)
    # A forgery does not take the miner's place.
    pool.add(commit, now=phase1(p), tip_height=0, expected_task_id=task)


def test_one_commit_per_miner_per_height_and_slot(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p)
    first = make_commit(M1, 1, 0, task, digest("first"), make_checkpoint_refs(digest("first")))
    pool.add(first, now=phase1(p), tip_height=0, expected_task_id=task)
    expect_reject("duplicate", pool.add, first, now=phase1(p, offset=6), tip_height=0, expected_task_id=task)
    second = make_commit(M1, 1, 0, task, digest("second"), make_checkpoint_refs(digest("second")))
    expect_reject("duplicate-miner", pool.add, second, now=phase1(p, offset=6), tip_height=0, expected_task_id=task)
    assert pool.get(M1.public_key, 1, 0) == first  # first seen wins
    pool.add(make_commit(M2, 1, 0, task, digest("m2"), make_checkpoint_refs(digest("m2"))), now=phase1(p, offset=7), tip_height=0, expected_task_id=task)
    # The next slot (the same height when slot 0 made no block) takes a new commit.
    pool.add(Commit(1, 1, task, M1.public_key, first.binding, first.trajectory_root).signed_by(M1), now=phase1(p, slot=1), tip_height=0, expected_task_id=task)
    assert [c.miner for c in pool.get_commits(1, 0)] == [M1.public_key, M2.public_key]
    assert len(pool.get_commits(1)) == 3


def test_commit_pool_limit(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p, max_commits=1)
    pool.add(make_commit(M1, 1, 0, task, digest("m"), make_checkpoint_refs(digest("m"))), now=phase1(p), tip_height=0, expected_task_id=task)
    expect_reject("pool-full", pool.add, make_commit(M2, 1, 0, task, digest("m"), make_checkpoint_refs(digest("m"))), now=phase1(p), tip_height=0, expected_task_id=task)


def test_commit_prune(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p)
    c1 = make_commit(M1, 1, 0, task, digest("m"), make_checkpoint_refs(digest("m")))
    pool.add(c1, now=phase1(p), tip_height=0, expected_task_id=task)
    c2 = make_commit(M1, 2, 1, task, digest("m"), make_checkpoint_refs(digest("m")))
    pool.add(c2, now=phase1(p, slot=1), tip_height=1, expected_task_id=task)
    assert pool.prune(2) == 1
    assert pool.get(M1.public_key, 1, 0) is None and hash_of(c1) not in pool and hash_of(c2) in pool
    # After pruning, the same commit can be added again (e.g. after a reorg back).
    pool.add(c1, now=phase1(p), tip_height=0, expected_task_id=task)


@pytest.mark.parametrize(
    "thing",
    [
        None,
        b"commit",
        Commit(1, 0, bytes(31), M1.public_key, bytes(32), bytes(32)),
        Commit(-1, 0, bytes(32), M1.public_key, bytes(32), bytes(32)),
        Commit(1, 0, bytes(32), "miner", bytes(32), bytes(32)),
        Commit(1, 0, bytes(32), M1.public_key, bytes(32), bytes(31)),
        Block,
    ],
)
def test_malformed_commits(chain, thing):
    expect_reject("malformed", CommitPool(chain.params).add, thing, now=0, tip_height=0, expected_task_id=bytes(32))


def test_commit_from_bytes(chain):
    p, task = chain.params, work_task(chain)
    pool = CommitPool(p)
    commit = make_commit(M1, 1, 0, task, digest("m"), make_checkpoint_refs(digest("m")))
    assert pool.add_encoded(encode(commit), now=phase1(p), tip_height=0, expected_task_id=task) == hash_of(commit)
    expect_reject("malformed", pool.add_encoded, encode(commit)[:-1], now=phase1(p), tip_height=0, expected_task_id=task)
    expect_reject("malformed", pool.add_encoded, None, now=phase1(p), tip_height=0, expected_task_id=task)


# --- claims ----------------------------------------------------------------------


def make_candidate(chain: MemoryChain, miner, dice: int, salt: bytes = b"", slot: int = 0) -> Block:
    return make_next_block(chain.state(), chain.params, miner, dice_ppm=dice, salt=salt, slot=slot)


def committed_pools(chain: MemoryChain, *blocks: Block) -> tuple[CommitPool, ClaimPool]:
    commits = CommitPool(chain.params)
    for block in blocks:
        commits.add(block.body.commit, now=phase1(chain.params, block.header.slot), tip_height=0, expected_task_id=work_task(chain))
    return commits, ClaimPool(chain.params, commits)


def test_claim_accepted_in_phase2_when_committed(chain):
    p = chain.params
    block = make_candidate(chain, M1, 900_000)
    other = make_candidate(chain, M2, 800_000)
    _, claims = committed_pools(chain, block, other)
    block_hash = claims.add(Claim(block), now=phase2(p), tip_hash=chain.state().get_status().tip_hash)
    assert block_hash == block.hash and block_hash in claims and len(claims) == 1
    assert claims.get(block_hash) == Claim(block) and claims.get(other.hash) is None
    assert claims.add_encoded(encode(Claim(other)), now=phase2(p)) == other.hash
    assert len(claims) == 2


def test_claim_window_is_phase2_of_its_slot(chain):
    p = chain.params
    block = make_candidate(chain, M1, 900_000)
    skew = p.clock_skew_seconds
    for now, ok in [
        (phase1(p), False),
        (get_phase2_start(p, 0) - skew, True),
        (get_slot_start(p, 1) + skew - 0.5, True),
        (get_slot_start(p, 1) + skew, False),
        (phase2(p, slot=1), False),
    ]:
        _, claims = committed_pools(chain, block)
        if ok:
            claims.add(Claim(block), now=now)
        else:
            expect_reject("wrong-phase", claims.add, Claim(block), now=now)


def test_claim_without_commit_is_discarded(chain):
    p = chain.params
    block = make_candidate(chain, M1, 900_000)
    _, claims = committed_pools(chain)
    expect_reject("not-committed", claims.add, Claim(block), now=phase2(p))
    # A commit to a different model by the same miner does not cover it either.
    other = make_candidate(chain, M1, 900_000, salt=b"other model")
    _, claims = committed_pools(chain, other)
    expect_reject("not-committed", claims.add, Claim(block), now=phase2(p))


def test_claim_must_agree_with_its_commit(chain):
    p = chain.params
    block = make_candidate(chain, M1, 900_000)
    _, claims = committed_pools(chain, block)
    work = block.body.work
    for body in (
        dataclasses.replace(block.body, work=dataclasses.replace(work, model_digest=digest("swapped"))),
        dataclasses.replace(block.body, work=dataclasses.replace(work, dice_ppm=950_000)),
    ):
        expect_reject("commit-mismatch", claims.add, Claim(Block(block.header, body)), now=phase2(p))
    # A copied model claimed by another miner: the binding names the first miner.
    copied = dataclasses.replace(block.header, miner=M2.public_key).signed_by(M2)
    expect_reject("commit-mismatch", claims.add, Claim(Block(copied, block.body)), now=phase2(p))
    over = dataclasses.replace(block.header, dice_ppm=1_000_001).signed_by(M1)
    expect_reject("commit-mismatch", claims.add, Claim(Block(over, block.body)), now=phase2(p))


def test_claim_signature_parent_and_duplicates(chain):
    p = chain.params
    block = make_candidate(chain, M1, 900_000)
    _, claims = committed_pools(chain, block)
    unsigned = Block(dataclasses.replace(block.header, signature=bytes(64)), block.body)
    expect_reject("bad-signature", claims.add, Claim(unsigned), now=phase2(p))
    expect_reject("wrong-parent", claims.add, Claim(block), now=phase2(p), tip_hash=digest("elsewhere"))
    claims.add(Claim(block), now=phase2(p))
    expect_reject("duplicate", claims.add, Claim(block), now=phase2(p))
    # Same miner, same commit, another candidate (different Dice): first seen wins.
    again = make_candidate(chain, M1, 950_000)
    assert again.hash != block.hash
    expect_reject("commit-mismatch", claims.add, Claim(Block(again.header, block.body)), now=phase2(p))
    expect_reject("duplicate-miner", claims.add, Claim(again), now=phase2(p))
    assert claims.ranked() == [Claim(block)]


def test_claims_ranked_by_dice_then_block_hash(chain):
    p = chain.params
    low = make_candidate(chain, M1, 700_000)
    tie_a = make_candidate(chain, M2, 900_000)
    tie_b = make_candidate(chain, M3, 900_000)
    _, claims = committed_pools(chain, low, tie_a, tie_b)
    for block in (low, tie_b, tie_a):
        claims.add(Claim(block), now=phase2(p))
    ties = sorted([tie_a, tie_b], key=lambda b: b.hash)
    assert [c.block for c in claims.ranked()] == ties + [low]
    assert claims.ranked(height=1, slot=0) == claims.ranked()
    assert claims.ranked(height=2) == [] and claims.ranked(slot=1) == []
    assert claims.best_unverified().block == ties[0]
    claims.mark_rejected(ties[0].hash, "dice does not reproduce")
    assert claims.get_rejection(ties[0].hash) == "dice does not reproduce"
    assert [c.block for c in claims.ranked()] == [ties[1], low]
    assert [c.block for c in claims.ranked(include_rejected=True)] == ties + [low]
    assert claims.best_unverified().block == ties[1]
    claims.mark_verified(ties[1].hash)
    assert claims.is_verified(ties[1].hash)
    assert claims.best_unverified().block == low
    claims.mark_rejected(low.hash, "bad checkpoint")
    assert claims.best_unverified() is None
    claims.mark_verified(low.hash)  # a rejected claim stays rejected
    assert not claims.is_verified(low.hash)


def test_claim_prune(chain):
    p = chain.params
    block = make_candidate(chain, M1, 900_000)
    commits, claims = committed_pools(chain, block)
    claims.add(Claim(block), now=phase2(p))
    claims.mark_rejected(block.hash, "x")
    assert claims.prune(1) == 0 and claims.prune(2) == 1
    assert len(claims) == 0 and claims.get_rejection(block.hash) is None
    claims.add(Claim(block), now=phase2(p))  # the miner's place was freed too


@pytest.mark.parametrize("thing", [None, b"claim", Claim("block"), Claim(None)])
def test_malformed_claims(chain, thing):
    _, claims = committed_pools(chain)
    expect_reject("malformed", claims.add, thing, now=phase2(chain.params))


def test_claim_without_commit_or_work_is_malformed(chain):
    block = make_candidate(chain, M1, 900_000)
    _, claims = committed_pools(chain, block)
    bare = Block(block.header, dataclasses.replace(block.body, commit=None))
    expect_reject("malformed", claims.add, Claim(bare), now=phase2(chain.params))
    expect_reject("malformed", claims.add_encoded, b"\x91\xc0", now=phase2(chain.params))
