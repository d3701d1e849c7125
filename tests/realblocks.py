"""Real blocks for node tests: the standing task trained with the real trainer, scored, committed and signed.

What the miner does in a round, without its clock: `mine_standing_block`
trains the standing task of the next height for a couple of seconds, puts
the model and checkpoints into the miner's blob store, and builds the block
on a template, so a full node that receives it fetches the blobs and
verifies the work for real.
"""

from __future__ import annotations

import functools
import importlib
import time
from pathlib import Path

import torch

from consensus.assemble import complete_block, make_block_template, make_commit
from consensus.clock import get_phase2_start
from consensus.rules import compute_training_seed, get_scheduled_task_id, is_standing_task
from consensus.state import State
from consensus.work import get_work_data, make_checkpoint_refs
from pouw.blobstore import BlobStore
from pouw.keys import KeyPair
from pouw.seg.dice import evaluate
from pouw.seg.train import train
from pouw.types import KEY_TRAIN, MODE_NORMAL, Block, ChainParams, KeyReveal, Transaction, WorkProof


@functools.cache
def warm_up_trainer() -> None:
    """Import what the first training step imports lazily (monai's networks, torch's compiler hooks, about 3 s
    cold), so the few seconds a test gives training are spent training."""
    importlib.import_module("monai.networks.nets")
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def mine_standing_block(
    state: State,
    params: ChainParams,
    keypair: KeyPair,
    blobs: BlobStore,
    link: str,
    workdir: Path,
    *,
    slot: int | None = None,
    transactions: tuple[Transaction, ...] = (),
    next_train_key: bytes | None = None,
    seconds: float = 8.0,
) -> Block:
    """A real block for the next height on `state`, whose task must be the standing task.

    `next_train_key` is the training key of the next height's published task,
    which the block then carries (so that task can be scored).
    """
    status = state.get_status()
    assert is_standing_task(params, get_scheduled_task_id(status)), "the next height does not mine the standing task"
    slot = status.min_slot if slot is None else slot
    data = get_work_data(None, params, status.tip_hash, MODE_NORMAL, {}, blobs, workdir)
    seed = compute_training_seed(status.tip_hash, keypair.public_key)
    warm_up_trainer()
    result = train(data.model, data.train, data.train_set, seed, time.time() + seconds, blobs, progress=False, num_threads=1)
    blobs.put_bytes(result.model_file)
    dice = evaluate(result.model_file, data.model, data.score_set).dice_ppm
    checkpoints = make_checkpoint_refs(result.checkpoint_digests, result.update_norms, blobs)
    commit = make_commit(keypair, status.height + 1, slot, get_scheduled_task_id(status), result.model_digest, checkpoints)
    work = WorkProof(result.model_digest, len(result.model_file), checkpoints, (link,), dice)
    template = make_block_template(state, params, tuple(transactions))
    timestamp = get_phase2_start(params, slot) + 1
    reveals = () if next_train_key is None else (KeyReveal(status.scheduled[1].task_id, KEY_TRAIN, next_train_key),)
    return complete_block(template, params, keypair, slot=slot, timestamp=timestamp, commit=commit, work=work, task=None,
                          key_reveals=reveals)
