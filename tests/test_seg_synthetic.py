"""The standing task's synthetic generator (pouw.seg.synthetic): exact, self-contained, deterministic."""

import dataclasses
import hashlib
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from consensus.genesis import make_devnet_params, make_main_params
from pouw.blobstore import BlobStore
from pouw.seg import synthetic
from pouw.seg.data import (
    DataError, compute_dataset_digest, compute_normalised, load_dataset, make_synthetic_case, synthetic_dataset,
    write_synthetic_dataset_dir,
)
from pouw.seg.spec import ModelSpec
from pouw.seg.train import replay_segment, train
from pouw.seg.verify import REPLAY_TOLERANCE
from pouw.seg.checkpoints import load_checkpoint
from pouw.seg.weights import decode_model

SEED = bytes(range(32))
SPEC_2D = ModelSpec("unet2d", 1, 3, 8, (32, 32))
SPEC_3D = ModelSpec("unet3d", 2, 3, 4, (16, 16, 24))
SPECS = [SPEC_2D, SPEC_3D, ModelSpec("fcn", 3, 5, 4, (64, 48)), make_main_params().standing_task.model]


# -- the random words ---------------------------------------------------------------


def test_words_follow_the_documented_formula():
    # Block k of a stream = SHA-256(DOMAIN || seed || u64be(index) || u8(stream) || u64be(k)); 4 big-endian words each.
    words = synthetic.compute_words(b"seed", 7, 2, 10)
    expected = []
    for k in range(3):
        d = hashlib.sha256(b"pouw/synthetic/v2\x00" + b"seed" + (7).to_bytes(8, "big") + bytes([2]) + k.to_bytes(8, "big")).digest()
        expected += [int.from_bytes(d[i: i + 8], "big") for i in range(0, 32, 8)]
    assert words.dtype == np.uint64 and [int(w) for w in words] == expected[:10]


def test_scene_stream_reads_the_same_words_in_order():
    stream = synthetic.WordStream(b"seed", 3, synthetic.STREAM_SCENE)
    assert [stream.next_word() for _ in range(9)] == [int(w) for w in synthetic.compute_words(b"seed", 3, 0, 9)]


def test_draw_int_is_multiply_shift():
    assert synthetic.draw_int(0, 5, 9) == 5
    assert synthetic.draw_int(2**64 - 1, 5, 9) == 9
    assert synthetic.draw_int(2**63, 0, 9) == 5  # floor(2**63 * 10 / 2**64)
    assert synthetic.draw_int(2**62, -3, 4) == -1
    with pytest.raises(synthetic.SyntheticError):
        synthetic.draw_int(0, 2, 1)


def test_irwin_hall_noise_is_centred_sum_of_four_fields():
    words = np.array([0, 2**64 - 1, 0x0001_0002_0003_0004], dtype=np.uint64)
    assert synthetic.compute_irwin_hall(words).tolist() == [-131070, 131070, 10 - 131070]


# -- determinism --------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "x".join(map(str, s.patch_size)))
def test_same_seed_same_bytes_other_index_or_seed_differs(spec):
    img, lab = synthetic.make_integer_case(SEED, 3, spec)
    img2, lab2 = synthetic.make_integer_case(SEED, 3, spec)
    assert img.tobytes() == img2.tobytes() and lab.tobytes() == lab2.tobytes()
    other_index = synthetic.make_integer_case(SEED, 4, spec)
    other_seed = synthetic.make_integer_case(SEED[:-1] + b"\x00", 3, spec)
    for other in (other_index, other_seed):
        assert not np.array_equal(other[0], img) and not np.array_equal(other[1], lab)


def test_dataset_is_its_cases_in_order():
    ds = synthetic_dataset(SEED, 3, SPEC_2D)
    for i in range(3):
        img, lab = synthetic.make_normalised_case(SEED, i, SPEC_2D)
        assert np.array_equal(ds.images[i].numpy(), img) and np.array_equal(ds.labels[i, 0].numpy(), lab)
    assert ds.names == ("synthetic_0000", "synthetic_0001", "synthetic_0002")


def test_no_library_rng_is_used():
    """The global numpy and torch RNGs neither change the output nor are consumed by it."""
    np.random.seed(1)
    torch.manual_seed(1)
    a = synthetic_dataset(SEED, 3, SPEC_3D)
    np.random.seed(12345)
    torch.manual_seed(12345)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    b = synthetic_dataset(SEED, 3, SPEC_3D)
    assert compute_dataset_digest(a) == compute_dataset_digest(b)
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(torch.get_rng_state(), torch_state)


def test_generator_imports_neither_torch_nor_monai():
    """Only numpy and the standard library touch the data: a torch or MONAI upgrade cannot change it."""
    code = (
        "import sys\n"
        "from pouw.seg import synthetic\n"
        "from pouw.seg.spec import ModelSpec\n"
        "synthetic.make_normalised_case(b'x', 0, ModelSpec('unet3d', 2, 3, 4, (16, 16, 16)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai', 'scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_seed_and_count_are_refused():
    with pytest.raises(DataError, match="seed"):
        synthetic_dataset(b"", 2, SPEC_2D)
    with pytest.raises(DataError, match="at least one"):
        synthetic_dataset(SEED, 0, SPEC_2D)
    with pytest.raises(DataError, match="index"):
        make_synthetic_case(SEED, 2**64, SPEC_2D)


# -- what the cases look like ---------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "x".join(map(str, s.patch_size)))
def test_shapes_dtypes_and_classes(spec):
    img, lab = make_synthetic_case(SEED, 0, spec)
    assert img.dtype == np.float32 and img.shape == (spec.in_channels, *spec.patch_size)
    assert lab.dtype == np.int64 and lab.shape == tuple(spec.patch_size)
    assert 0 <= lab.min() and lab.max() < spec.num_classes
    # The raw float image is the exact integer image / 2**20.
    exact, _ = synthetic.make_integer_case(SEED, 0, spec)
    assert np.array_equal(img.astype(np.float64) * 2**20, exact.astype(np.float64))
    ds = synthetic_dataset(SEED, 2, spec)
    assert ds.images.shape == (2, spec.in_channels, *spec.patch_size) and ds.labels.shape == (2, 1, *spec.patch_size)


@pytest.mark.parametrize("spec", SPECS + [make_devnet_params().standing_task.model], ids=lambda s: f"{s.num_classes}cls")
def test_every_class_appears_across_a_dataset(spec):
    labels = synthetic_dataset(SEED, 8, spec).labels
    assert set(labels.unique().tolist()) == set(range(spec.num_classes))


def test_every_foreground_class_is_placed_in_every_standing_image():
    # The scene places one object of each foreground class before any other object.
    for params in (make_devnet_params(), make_main_params()):
        spec = params.standing_task.model
        for i in range(16):
            lab = synthetic.make_integer_case(SEED, i, spec)[1]
            assert set(np.unique(lab).tolist()) == set(range(spec.num_classes))


def test_objects_are_disjoint_inside_the_image_with_their_class_band():
    spec = ModelSpec("unet2d", 2, 4, 8, (64, 64))
    for i in range(10):
        scene = synthetic.draw_scene(SEED, i, spec)
        objs = scene.objects
        for a in range(len(objs)):
            o = objs[a]
            assert all(r <= c <= s - 1 - r for c, r, s in zip(o.centre, o.radii, spec.patch_size))
            lo, hi = synthetic.get_contrast_band(o.label, spec.num_classes)
            assert all(lo <= abs(k) <= hi and (k < 0) == (o.label == 0) for k in o.contrast)
            assert not any(synthetic.is_overlapping(o, objs[b]) for b in range(a))


def test_class_bands_are_disjoint_with_gaps():
    for k in (2, 3, 4, 9, 64):
        bands = [synthetic.get_contrast_band(c, k) for c in range(1, k)]
        assert all(lo <= hi for lo, hi in bands)
        assert all(bands[i][1] < bands[i + 1][0] - 1 for i in range(len(bands) - 1))


def test_painted_object_adds_its_contrast_where_its_label_is():
    spec = ModelSpec("unet2d", 2, 3, 8, (32, 32))
    scene = synthetic.draw_scene(SEED, 5, spec)
    clean, label = synthetic.paint_scene(scene, tuple(spec.patch_size))
    empty = synthetic.Scene(scene.levels, scene.gradients, (), scene.noise)
    background, _ = synthetic.paint_scene(empty, tuple(spec.patch_size))
    for o in scene.objects:
        box = tuple(slice(c - r, c + r + 1) for c, r in zip(o.centre, o.radii))
        for c, k in enumerate(o.contrast):
            diff = (clean[c] - background[c])[box][label[box] == o.label]
            half = abs(k) // 2 * (1 if k >= 0 else -1)
            assert diff.size and set(np.unique(diff).tolist()) <= {k, k - half}
    # Distractors (class 0) only ever darken the background.
    assert (clean[:, label == 0] <= background[:, label == 0]).all()


@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_shape_families_are_symmetric_and_fill_their_centre(family):
    radii = (4, 3)
    obj = synthetic.SceneObject(1, family, (10, 10), radii, (500,), -1, 0, 0)
    offsets = [np.arange(-4, 5).reshape(-1, 1), np.arange(-3, 4).reshape(1, -1)]
    mask = np.broadcast_to(synthetic.compute_shape_mask(obj, offsets), (9, 7))
    assert mask[4, 3] and mask[0, 3] and mask[8, 3] and mask[4, 0] and mask[4, 6]
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask[:, ::-1])
    assert mask[0, 0] == (family == synthetic.BOX)


def test_normalisation_is_the_exact_z_score():
    img, _ = synthetic.make_integer_case(SEED, 1, SPEC_3D)
    out = synthetic.compute_normalised_exact(img)
    x = img.astype(np.float64)
    ref = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    assert out.dtype == np.float32 and np.allclose(out, ref, rtol=0, atol=1e-6)
    assert np.allclose(out, compute_normalised(img), rtol=0, atol=1e-6)
    assert np.all(synthetic.compute_normalised_exact(np.full((1, 4, 4), 7, dtype=np.int64)) == 0)


# -- dataset folders (tests, examples, devnet tasks) -----------------------------------


def test_written_folder_loads_back_to_the_generator_output(tmp_path):
    spec = SPEC_2D
    folder = write_synthetic_dataset_dir(tmp_path / "ds", SEED, 3, 2, spec, suffix=".nii.gz")
    loaded = load_dataset(folder, "train", spec)
    for i in range(3):
        img, lab = synthetic.make_normalised_case(SEED + b"/train", i, spec)
        assert np.array_equal(loaded.labels[i, 0].numpy(), lab)
        assert np.allclose(loaded.images[i].numpy(), img, rtol=0, atol=1e-5)


def test_script_writes_a_loadable_3d_dataset(tmp_path):
    from scripts.make_synthetic_dataset import main

    assert main([str(tmp_path / "s"), "--train", "2", "--test", "1", "--size", "16", "16", "16", "--classes", "3",
                 "--channels", "2"]) == 0
    ds = load_dataset(tmp_path / "s", "train", ModelSpec("unet3d", 2, 3, 4, (16, 16, 16)))
    assert ds.images.shape == (2, 2, 16, 16, 16) and set(ds.labels.unique().tolist()) == {0, 1, 2}


# -- a second implementation, written from docs/useful_work.md §9 alone -----------------
# Pure Python integers, math.sqrt and struct's float32 rounding: if it agrees with
# the module bit for bit, the document is exact enough for another implementation.


def _reference_case(seed: bytes, index: int, patch: tuple[int, ...], channels: int, classes: int):
    import itertools
    import math
    import struct

    def words(stream):
        k = 0
        while True:
            block = hashlib.sha256(b"pouw/synthetic/v2\x00" + seed + index.to_bytes(8, "big") + bytes([stream])
                                   + k.to_bytes(8, "big")).digest()
            for j in range(4):
                yield int.from_bytes(block[8 * j: 8 * j + 8], "big")
            k += 1

    scene = words(0)

    def draw(lo, hi):
        return lo + ((next(scene) * (hi - lo + 1)) >> 64)

    d, K = len(patch), classes
    r_max, r_min = max(3, min(patch) // 4), 2
    V = math.prod(patch)
    n_lo = max(K - 1, V // (4 * r_max**d))
    n_hi = max(n_lo, V // (2 * r_max**d))
    g = [1024 // (4 * s) for s in patch]
    w = 768 // (2 * (K - 1) - 1)

    def band(k):
        return (256, 1023) if k == 0 else (256 + 2 * (k - 1) * w, 256 + 2 * (k - 1) * w + w - 1)

    levels, grads = [], []
    for _ in range(channels):
        levels.append(draw(0, 1024))
        grads.append([draw(-gi, gi) for gi in g])
    n = draw(n_lo, n_hi)
    labels = list(range(1, K)) + [draw(0, K - 1) for _ in range(n - (K - 1))]
    placed = []
    for lab in labels:
        for _ in range(16):
            fam = draw(0, 3)
            r = draw(r_min, r_max)
            radii = [draw(max(1, (2 * r) // 3), r) for _ in range(d)]
            centre = [draw(ri, s - 1 - ri) for ri, s in zip(radii, patch)]
            lo, hi = band(lab)
            contrast = [draw(lo, hi) * (-1 if lab == 0 else 1) for _ in range(channels)]
            stripe = (draw(0, d - 1), draw(2, 4)) if draw(0, 1) else None
            if stripe:
                stripe = (*stripe, draw(0, 2 * stripe[1] - 1))
            obj = (lab, fam, centre, radii, contrast, stripe)
            if all(any(abs(c - c2) > r_ + r2 + 1 for c, c2, r_, r2 in zip(centre, o[2], radii, o[3])) for o in placed):
                placed.append(obj)
                break
    noise_amp = [draw(2, 8) for _ in range(channels)]

    def covers(fam, o, r):
        P, Q = math.prod(r), math.prod(x * x for x in r)
        if fam == 1:
            return True
        if fam == 0:
            return sum(oi * oi * (Q // (ri * ri)) for oi, ri in zip(o, r)) <= Q
        if fam == 3:
            return sum(abs(oi) * (P // ri) for oi, ri in zip(o, r)) <= P
        t = max(1, min(r) // 3)
        return sum(abs(oi) > t for oi in o) <= 1

    voxels = list(itertools.product(*[range(s) for s in patch]))
    clean = [{x: levels[c] + sum(grads[c][i] * (2 * x[i] - (patch[i] - 1)) for i in range(d)) for x in voxels}
             for c in range(channels)]
    label = {x: 0 for x in voxels}
    for lab, fam, centre, radii, contrast, stripe in placed:
        for x in voxels:
            o = [xi - ci for xi, ci in zip(x, centre)]
            if all(abs(oi) <= ri for oi, ri in zip(o, radii)) and covers(fam, o, radii):
                label[x] = lab
                for c in range(channels):
                    k = contrast[c]
                    half = (abs(k) // 2) * (1 if k >= 0 else -1)
                    on = stripe and ((o[stripe[0]] + radii[stripe[0]] + stripe[2]) // stripe[1]) % 2 == 1
                    clean[c][x] += k - (half if on else 0)
    out = []
    for c in range(channels):
        a = clean[c]
        for i in range(d):
            def nb(x, step, i=i):
                y = list(x)
                y[i] = min(max(y[i] + step, 0), patch[i] - 1)
                return tuple(y)
            a = {x: a[nb(x, -1)] + 2 * a[x] + a[nb(x, 1)] for x in voxels}
        ws = words(1 + c)
        image = {}
        for x in voxels:  # C order
            wv = next(ws)
            ih = sum((wv >> s) & 0xFFFF for s in (0, 16, 32, 48)) - 131070
            image[x] = a[x] * 2 ** (20 - 10 - 2 * d) + noise_amp[c] * ih
        s1, s2 = sum(image.values()), sum(v * v for v in image.values())
        root = math.sqrt(float(V * s2 - s1 * s1))
        out.append([struct.unpack("f", struct.pack("f", float(V * image[x] - s1) / root))[0] for x in voxels])
    return out, [label[x] for x in voxels]


@pytest.mark.parametrize("patch, channels, classes", [((16, 24), 2, 3), ((8, 8, 16), 1, 4)])
def test_a_second_implementation_from_the_docs_agrees_bit_for_bit(patch, channels, classes):
    spec = ModelSpec("unet2d" if len(patch) == 2 else "unet3d", channels, classes, 4, patch)
    for index in range(3):
        ref_images, ref_labels = _reference_case(SEED, index, patch, channels, classes)
        img, lab = synthetic.make_normalised_case(SEED, index, spec)
        assert lab.ravel().tolist() == ref_labels
        assert np.array_equal(img.reshape(channels, -1), np.array(ref_images, dtype=np.float32))


# -- the devnet standing task against the spot check ----------------------------------------


def test_devnet_standing_epochs_replay_at_another_thread_count(tmp_path):
    """Trained on 2 threads, replayed on 1: inside half of REPLAY_TOLERANCE (8 steps an epoch keep rounding small)."""
    standing = make_devnet_params(genesis_time=0).standing_task
    assert standing.train_count // standing.train.batch_size == 8
    data = synthetic_dataset(SEED, standing.train_count, standing.model)
    store = BlobStore(tmp_path)
    tspec = dataclasses.replace(standing.train, max_epochs=3)
    r = train(standing.model, tspec, data, SEED, time.time() + 300, store, progress=False, num_threads=2)

    def flat(state):
        return torch.cat([v.flatten().double() for _, v in sorted(state.items()) if v.is_floating_point()])

    for e in (1, 3):
        prev, cur = (load_checkpoint(store, r.checkpoint_digests[i]) for i in (e - 1, e))
        before, after = flat(decode_model(prev.model_file, standing.model)), flat(decode_model(cur.model_file, standing.model))
        replayed = flat(replay_segment(prev, cur.position, data, num_threads=1)[0])
        assert float((replayed - after).norm() / (after - before).norm()) < REPLAY_TOLERANCE / 2
