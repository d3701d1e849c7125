import hashlib
import time

import pytest
import torch

from pouw.blobstore import BlobStore
from pouw.seg.dice import evaluate
from pouw.seg.train import init_model
from pouw.seg.trajectory import make_layout
from pouw.seg.verify import (
    REPLAY_TOLERANCE, WorkInvalid, check_checkpoint, check_initial_checkpoint, compute_replay_distance,
    compute_spot_check_segment,
    compute_update_norm, load_checkpoint_blob, replay_checkpoint_segment, spot_check, verify_work,
)
from pouw.seg.checkpoints import load_checkpoint, put_checkpoint
from pouw.seg.weights import ZERO_DIGEST, Checkpoint, decode_model, encode_model

from tests.seg_fixtures import run_small_training, small_data, small_spec, small_train_spec


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


def _seed_for_segment(index, n):
    for i in range(1000):
        s = hashlib.sha256(i.to_bytes(4, "big")).digest()
        if compute_spot_check_segment(s, n) == index:
            return s
    raise AssertionError


def test_spot_check_segment_choice():
    seen = {compute_spot_check_segment(hashlib.sha256(bytes([i])).digest(), 5) for i in range(100)}
    assert seen == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError):
        compute_spot_check_segment(b"x", 0)


def test_honest_run_passes_every_segment(honest):
    n = len(honest["r"].checkpoint_digests) - 1
    for index in range(1, n + 1):
        rep = verify_work(**_kwargs(honest, spot_check_seed=_seed_for_segment(index, n)))
        assert rep.spot_check_segment == index and rep.replay_distance <= REPLAY_TOLERANCE
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
    with pytest.raises(WorkInvalid, match="says it is checkpoint"):
        verify_work(**_kwargs(honest, checkpoint_digests=(digests[0], digests[2], digests[1], digests[3], digests[4])))
    with pytest.raises(WorkInvalid, match="not available"):
        verify_work(**_kwargs(honest, checkpoint_digests=digests[:-1] + (b"\x00" * 32,)))
    with pytest.raises(WorkInvalid, match="trained segment"):
        verify_work(**_kwargs(honest, checkpoint_digests=digests[:1]))


def _forge_chain(h, states, opt_states=None, positions=None):
    """Write a properly linked checkpoint chain holding arbitrary weights (and optimizer states)."""
    store, spec, tspec, r = h["store"], h["spec"], h["tspec"], h["r"]
    honest = [load_checkpoint(store, d) for d in r.checkpoint_digests]
    prev = ZERO_DIGEST
    digests = []
    for i, st in enumerate(states):
        opt = opt_states[i] if opt_states is not None else honest[min(i, len(honest) - 1)].optimizer_state
        pos = positions[i] if positions is not None else honest[min(i, len(honest) - 1)].position
        ck = Checkpoint(i, pos, prev, r.seed, spec, tspec, honest[0].data_digest, 1, "fp32", 0.5,
                        encode_model(st, spec), opt)
        prev = put_checkpoint(store, ck)
        digests.append(prev)
    model = encode_model(states[-1], spec)
    md = store.put_bytes(model)
    return md, tuple(digests)


def _weights(h, digests=None):
    return [decode_model(load_checkpoint(h["store"], x).model_file, h["spec"])
            for x in (digests or h["r"].checkpoint_digests)]


def test_forged_interpolated_checkpoints_fail_spot_check(honest):
    """A miner who got a good model elsewhere and fakes the training path by interpolation."""
    h = honest
    init = decode_model(load_checkpoint(h["store"], h["r"].checkpoint_digests[0]).model_file, h["spec"])
    final = decode_model(h["r"].model_file, h["spec"])
    n = len(h["r"].checkpoint_digests) - 1
    states = [{k: init[k] + (final[k] - init[k]) * (i / n) if init[k].is_floating_point() else final[k]
               for k in init} for i in range(n + 1)]
    states[-1] = final
    md, digests = _forge_chain(h, states)
    for index in range(1, n + 1):
        with pytest.raises(WorkInvalid, match="spot check"):
            verify_work(**_kwargs(h, model_digest=md, checkpoint_digests=digests,
                                  spot_check_seed=_seed_for_segment(index, n)))


def test_forged_initial_weights_fail(honest):
    h = honest
    final = decode_model(h["r"].model_file, h["spec"])
    md, digests = _forge_chain(h, [final, final], opt_states=[{}, {}])  # "pre-trained" start
    with pytest.raises(WorkInvalid, match="initial weights"):
        verify_work(**_kwargs(h, model_digest=md, checkpoint_digests=digests))


def test_tampered_segment_detected_by_replay(honest):
    h = honest
    store, r = h["store"], h["r"]
    d = spot_check(store, r.checkpoint_digests, 2, h["train_ds"])
    assert d <= REPLAY_TOLERANCE
    states = _weights(h)
    torch.manual_seed(0)
    states[2] = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in states[2].items()}
    md, digests = _forge_chain(h, states)
    assert spot_check(store, digests, 2, h["train_ds"]) > REPLAY_TOLERANCE


def test_forged_momentum_is_caught_where_it_was_made(honest):
    """Attack: steer segment 3 by a made-up Adam momentum in checkpoint 2, then record what the replay of
    segment 3 gives (so segment 3 replays exactly). The replay of segment 2 compares the momentum too."""
    h = honest
    store, r, spec = h["store"], h["r"], h["spec"]
    cks = [load_checkpoint(store, x) for x in r.checkpoint_digests]
    forged_opt = {i: dict(slot) for i, slot in cks[2].optimizer_state.items()}
    for slot in forged_opt.values():
        slot["exp_avg"] = slot["exp_avg"] + 50 * slot["exp_avg"].abs().mean()  # a push in one direction
    forged2 = Checkpoint(2, cks[2].position, r.checkpoint_digests[1], r.seed, spec, h["tspec"], cks[2].data_digest, 1,
                         "fp32", 0.5, cks[2].model_file, forged_opt)
    from pouw.seg.train import replay_segment

    steered, steered_opt = replay_segment(forged2, cks[3].position, h["train_ds"])
    states = _weights(h)
    states[3] = steered
    opts = [ck.optimizer_state for ck in cks]
    opts[2], opts[3] = forged_opt, steered_opt
    md, digests = _forge_chain(h, states[:4], opts[:4])
    assert spot_check(store, digests, 3, h["train_ds"]) <= REPLAY_TOLERANCE  # segment 3 alone looks honest
    # Comparing weights only (the old rule) lets segment 2 pass as well: its weights are the honest ones.
    replayed, _ = replay_segment(cks[1], cks[2].position, h["train_ds"])
    assert compute_replay_distance(replayed, states[1], states[2]) <= REPLAY_TOLERANCE
    dice = evaluate(store.get_bytes(md), spec, h["test_ds"]).dice_ppm
    kw = _kwargs(h, model_digest=md, checkpoint_digests=digests, claimed_dice_ppm=dice)
    verify_work(**{**kw, "spot_check_seed": _seed_for_segment(3, 3)})
    with pytest.raises(WorkInvalid, match="spot check of segment 2"):
        verify_work(**{**kw, "spot_check_seed": _seed_for_segment(2, 3)})


def test_forged_adam_step_count_is_refused(honest):
    """Attack: a smaller Adam step count inflates the bias correction (bigger steps than the task's)."""
    h = honest
    cks = [load_checkpoint(h["store"], x) for x in h["r"].checkpoint_digests]
    opts = [ck.optimizer_state for ck in cks]
    opts[1] = {i: {**slot, "step": torch.tensor(1.0)} for i, slot in opts[1].items()}
    md, digests = _forge_chain(h, _weights(h), opts)
    with pytest.raises(WorkInvalid, match="optimizer state"):
        verify_work(**_kwargs(h, model_digest=md, checkpoint_digests=digests, spot_check_seed=_seed_for_segment(2, 4)))


def test_checkpoint_off_the_segment_grid_is_refused(honest):
    """Attack: fewer steps than the segment rule asks (cheaper replays of a shorter, easier path)."""
    h = honest
    positions = list(h["r"].checkpoint_positions)
    positions[2] -= 1  # a short segment that is not the last
    md, digests = _forge_chain(h, _weights(h), positions=positions)
    with pytest.raises(WorkInvalid, match="segment rule"):
        verify_work(**_kwargs(h, model_digest=md, checkpoint_digests=digests))


def test_verifier_primitives(honest):
    """The pieces the full node orchestrates: each checkpoint alone, checkpoint 0, one segment, update norms."""
    h = honest
    store, r, spec, tspec = h["store"], h["r"], h["spec"], h["tspec"]
    layout = make_layout(spec, tspec, len(h["train_ds"]))
    cks = [load_checkpoint_blob(store, d, i) for i, d in enumerate(r.checkpoint_digests)]
    check_initial_checkpoint(cks[0], spec, r.seed)
    with pytest.raises(WorkInvalid, match="fresh start|initial weights"):
        check_initial_checkpoint(cks[1], spec, r.seed)
    weights = []
    for i, ck in enumerate(cks):
        prev = ZERO_DIGEST if i == 0 else r.checkpoint_digests[i - 1]
        weights.append(check_checkpoint(ck, i, prev, model_spec=spec, train_spec=tspec, layout=layout,
                                        is_last=i == len(cks) - 1, train_seed=r.seed, data_digest=r.data_digest))
    with pytest.raises(WorkInvalid, match="does not link"):
        check_checkpoint(cks[2], 2, ZERO_DIGEST, model_spec=spec, train_spec=tspec, layout=layout, is_last=False)
    assert r.update_norms == tuple(compute_update_norm(a, b) for a, b in zip(weights, weights[1:]))
    assert replay_checkpoint_segment(cks[1], cks[2], h["train_ds"]) <= REPLAY_TOLERANCE
    with pytest.raises(WorkInvalid, match="do not bound a segment"):
        replay_checkpoint_segment(cks[1], cks[3], h["train_ds"])


def test_training_on_more_threads_verifies_on_one(tmp_path):
    """A miner's thread count changes the order of float reductions; the one-thread replay stays within tolerance."""
    from pouw.seg.train import train

    spec, tspec = small_spec("fcn", patch=(64, 64), filters=8), small_train_spec(epochs=3, loss="dicece")
    train_ds, _ = small_data(spec, n_train=16)
    store = BlobStore(tmp_path)
    r = train(spec, tspec, train_ds, b"\x06" * 32, time.time() + 120, store, progress=False, num_threads=2)
    distances = [spot_check(store, r.checkpoint_digests, i, train_ds) for i in range(1, len(r.checkpoint_digests))]
    assert 0 < max(distances) <= REPLAY_TOLERANCE
