import time

import pytest

from pouw.blobstore import BlobStore
from pouw.seg.data import SegDataset
from pouw.seg.determinism import compute_batches, compute_epoch_order
from pouw.seg.dice import DICE_TOLERANCE_PPM, compute_ppm, evaluate
from pouw.seg.train import DeadlineError, TrainError, train
from pouw.seg.trajectory import make_layout
from pouw.seg.checkpoints import load_checkpoint
from pouw.seg.weights import ZERO_DIGEST, compute_update_norm, decode_model

from tests.seg_fixtures import SEED, run_small_training, small_data, small_spec, small_train_spec


def test_training_is_deterministic_and_checkpoints_every_segment(tmp_path):
    spec, tspec, train_ds, test_ds, store, r1 = run_small_training(tmp_path / "a")
    *_, r2 = run_small_training(tmp_path / "b")
    *_, r3 = run_small_training(tmp_path / "c", seed=b"\x01" * 32)
    assert r1.epochs == 3 and r1.steps == 6 and r1.stop_reason == "max_epochs"
    assert r1.checkpoint_digests == r2.checkpoint_digests and r1.model_digest == r2.model_digest
    assert r3.checkpoint_digests[0] != r1.checkpoint_digests[0] and r3.model_digest != r1.model_digest
    # 8 images in batches of 4: two steps per epoch, an epoch end closes every segment.
    assert r1.checkpoint_positions == (0, 2, 4, 6) and len(r1.checkpoint_digests) == 4
    prev = ZERO_DIGEST
    weights = []
    for i, d in enumerate(r1.checkpoint_digests):
        assert store.verify(d)
        ck = load_checkpoint(store, d)
        assert ck.index == i and ck.position == 2 * i and ck.prev_digest == prev and ck.seed == SEED
        assert ck.world_size == 1 and ck.precision == "fp32"
        weights.append(decode_model(ck.model_file, spec))
        prev = d
    assert ck.model_digest == r1.model_digest
    assert r1.update_norms == tuple(compute_update_norm(a, b) for a, b in zip(weights, weights[1:]))
    assert all(n > 0 for n in r1.update_norms) and all(l > 0 for l in r1.segment_losses)
    d1 = evaluate(r1.model_file, spec, test_ds)
    d2 = evaluate(r2.model_file, spec, test_ds)
    assert d1 == d2 and len(d1.per_image) == len(test_ds)


def test_long_epochs_are_cut_into_segments(tmp_path, monkeypatch):
    """A segment holds at most compute_segment_steps steps, so a replay never costs a whole epoch."""
    import pouw.seg.trajectory as trajectory

    monkeypatch.setattr(trajectory, "MAX_SEGMENT_STEPS", 3)
    spec = small_spec()
    ds, _ = small_data(spec, n_train=16)  # 8 steps of 2 per epoch
    r = train(spec, small_train_spec(epochs=2, batch=2), ds, SEED, time.time() + 120, BlobStore(tmp_path),
              progress=False)
    assert r.segment_steps == 3 and r.checkpoint_positions == (0, 3, 6, 8, 11, 14, 16)


def test_seed_derivation():
    o = compute_epoch_order(SEED, 1, 10)
    assert sorted(o) == list(range(10)) and o == compute_epoch_order(SEED, 1, 10) != compute_epoch_order(SEED, 2, 10)
    assert compute_batches(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert compute_batches([0, 1], 4) == [[0, 1]]


def test_deadline_already_past(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    with pytest.raises(DeadlineError, match="already past"):
        train(spec, small_train_spec(), ds, SEED, time.time() - 1, BlobStore(tmp_path), progress=False)


def test_deadline_budget_is_used_to_the_end(tmp_path):
    """No early stop while time is left: training runs to the deadline (minus about one step and a save)."""
    spec = small_spec()
    ds, _ = small_data(spec)
    deadline = time.time() + 6.0
    r = train(spec, small_train_spec(epochs=100_000), ds, SEED, deadline, BlobStore(tmp_path), progress=False)
    returned = time.time()
    # A step and a save take well under 0.1 s here; the slack of 1.5 s is for a CPU shared with other work.
    assert returned <= deadline + 1.5  # never past the deadline by more than a step
    assert deadline - returned < 1.5  # and the budget was used
    assert r.stop_reason == "deadline" and r.steps > 2
    layout = make_layout(spec, small_train_spec(epochs=100_000), len(ds))
    n = len(r.checkpoint_positions)
    assert all(layout.is_valid_position(i, p, i == n - 1) for i, p in enumerate(r.checkpoint_positions))
    assert r.step_seconds <= r.wall_seconds


def test_non_finite_loss_is_a_clear_error(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    huge = SegDataset(ds.images / ds.images.abs().max() * 3e38, ds.labels, ds.names, ds.num_classes)  # overflows in the first conv
    with pytest.raises(TrainError, match="non-finite loss"):
        train(spec, small_train_spec(), huge, SEED, time.time() + 60, BlobStore(tmp_path), progress=False)


def test_bad_inputs(tmp_path):
    spec = small_spec()
    ds, _ = small_data(spec)
    with pytest.raises(ValueError, match="32 bytes"):
        train(spec, small_train_spec(), ds, b"short", time.time() + 60, BlobStore(tmp_path), progress=False)
    with pytest.raises(TrainError, match="patch"):
        train(small_spec(patch=(64, 64)), small_train_spec(), ds, SEED, time.time() + 60, BlobStore(tmp_path),
              progress=False)


def test_dice_ppm_encoding():
    assert compute_ppm(0.5) == 500_000 and compute_ppm(1.0) == 1_000_000 and compute_ppm(0.0000005) == 0
    with pytest.raises(ValueError):
        compute_ppm(1.5)
    assert DICE_TOLERANCE_PPM == 1000
