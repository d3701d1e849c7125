import hashlib

import pytest
import torch

from pouw.seg.dice import evaluate
from pouw.seg.train import init_model
from pouw.seg.verify import (
    REPLAY_TOLERANCE, WorkInvalid, compute_spot_check_epoch, spot_check, verify_work,
)
from pouw.seg.weights import ZERO_DIGEST, Checkpoint, decode_checkpoint, decode_model, encode_checkpoint, encode_model

from tests.seg_fixtures import run_small_training, small_train_spec


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("honest")
    spec, tspec, train_ds, test_ds, store, r = run_small_training(tmp, tspec=small_train_spec(epochs=4))
    store.put_bytes(r.model_file)
    dice = evaluate(r.model_file, spec, test_ds)
    return dict(spec=spec, tspec=tspec, train_ds=train_ds, test_ds=test_ds, store=store, r=r, dice=dice)


def _kwargs(h, **over):
    r = h["r"]
    kw = dict(model_spec=h["spec"], train_spec=h["tspec"], model_digest=r.model_digest,
              checkpoint_digests=r.checkpoint_digests, claimed_dice_ppm=h["dice"].dice_ppm, blob_store=h["store"],
              test_dataset=h["test_ds"], train_dataset=h["train_ds"], spot_check_seed=b"\x05" * 32,
              train_seed=r.seed)
    kw.update(over)
    return kw


def _seed_for_epoch(epoch, n):
    for i in range(1000):
        s = hashlib.sha256(i.to_bytes(4, "big")).digest()
        if compute_spot_check_epoch(s, n) == epoch:
            return s
    raise AssertionError


def test_spot_check_epoch_choice():
    seen = {compute_spot_check_epoch(hashlib.sha256(bytes([i])).digest(), 5) for i in range(100)}
    assert seen == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError):
        compute_spot_check_epoch(b"x", 0)


def test_honest_run_passes_every_epoch(honest):
    n = honest["r"].epochs
    for epoch in range(1, n + 1):
        rep = verify_work(**_kwargs(honest, spot_check_seed=_seed_for_epoch(epoch, n)))
        assert rep.spot_check_epoch == epoch and rep.replay_distance <= REPLAY_TOLERANCE
        assert rep.dice.dice_ppm == honest["dice"].dice_ppm


def test_wrong_dice_and_seed(honest):
    with pytest.raises(WorkInvalid, match="claimed Dice"):
        verify_work(**_kwargs(honest, claimed_dice_ppm=min(1_000_000, honest["dice"].dice_ppm + 5000)))
    with pytest.raises(WorkInvalid, match="different seed"):
        verify_work(**_kwargs(honest, train_seed=b"\x03" * 32))


def test_model_not_last_checkpoint(honest):
    h = honest
    other = encode_model(init_model(h["spec"], b"\x04" * 32), h["spec"])
    d = h["store"].put_bytes(other)
    with pytest.raises(WorkInvalid, match="last checkpoint"):
        verify_work(**_kwargs(h, model_digest=d))


def test_broken_sequence(honest):
    digests = honest["r"].checkpoint_digests
    with pytest.raises(WorkInvalid, match="epoch"):
        verify_work(**_kwargs(honest, checkpoint_digests=(digests[0], digests[2], digests[1], digests[3], digests[4])))
    with pytest.raises(WorkInvalid, match="not available"):
        verify_work(**_kwargs(honest, checkpoint_digests=digests[:-1] + (b"\x00" * 32,)))
    with pytest.raises(WorkInvalid, match="trained epoch"):
        verify_work(**_kwargs(honest, checkpoint_digests=digests[:1]))


def _forge_chain(h, states):
    """Write a properly linked checkpoint chain holding arbitrary weights."""
    store, spec, tspec, r = h["store"], h["spec"], h["tspec"], h["r"]
    first = decode_checkpoint(store.get_bytes(r.checkpoint_digests[0]))
    prev = ZERO_DIGEST
    digests = []
    for i, st in enumerate(states):
        ck = Checkpoint(i, prev, r.seed, spec, tspec, first.data_digest, 1, 0.5, encode_model(st, spec), {})
        prev = store.put_bytes(encode_checkpoint(ck))
        digests.append(prev)
    model = encode_model(states[-1], spec)
    md = store.put_bytes(model)
    return md, tuple(digests)


def test_forged_interpolated_checkpoints_fail_spot_check(honest):
    """A miner who got a good model elsewhere and fakes the training path by interpolation."""
    h = honest
    init = decode_model(decode_checkpoint(h["store"].get_bytes(h["r"].checkpoint_digests[0])).model_file, h["spec"])
    final = decode_model(h["r"].model_file, h["spec"])
    n = h["r"].epochs
    states = [{k: init[k] + (final[k] - init[k]) * (i / n) if init[k].is_floating_point() else final[k]
               for k in init} for i in range(n + 1)]
    states[-1] = final
    md, digests = _forge_chain(h, states)
    for epoch in range(1, n + 1):
        with pytest.raises(WorkInvalid, match="spot check"):
            verify_work(**_kwargs(h, model_digest=md, checkpoint_digests=digests,
                                  spot_check_seed=_seed_for_epoch(epoch, n)))


def test_forged_initial_weights_fail(honest):
    h = honest
    final = decode_model(h["r"].model_file, h["spec"])
    md, digests = _forge_chain(h, [final, final])  # "pre-trained" start
    with pytest.raises(WorkInvalid, match="initial weights"):
        verify_work(**_kwargs(h, model_digest=md, checkpoint_digests=digests))


def test_tampered_epoch_detected_by_replay(honest):
    h = honest
    store, r = h["store"], h["r"]
    d = spot_check(store, r.checkpoint_digests, 2, h["train_ds"])
    assert d <= REPLAY_TOLERANCE
    states = [decode_model(decode_checkpoint(store.get_bytes(x)).model_file, h["spec"]) for x in r.checkpoint_digests]
    torch.manual_seed(0)
    states[2] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in states[2].items()}
    md, digests = _forge_chain(h, states)
    assert spot_check(store, digests, 2, h["train_ds"]) > REPLAY_TOLERANCE
