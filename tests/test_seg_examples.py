import importlib.util

import pytest

from pouw.seg.data import load_dataset
from pouw.seg.spec import ModelSpec


@pytest.mark.skipif(importlib.util.find_spec("stardist") is None, reason="stardist wheel not installed")
def test_nuclei_example_has_disjoint_splits(tmp_path):
    from scripts.make_nuclei_example import main

    assert main([str(tmp_path / "nuclei"), "--tile", "64", "--test-columns", "2"]) == 0
    spec = ModelSpec("unet2d", 1, 2, 8, (64, 64))
    train = load_dataset(tmp_path / "nuclei", "train", spec)
    test = load_dataset(tmp_path / "nuclei", "test", spec)
    assert len(train) == 48 and len(test) == 16
    assert not set(train.names) & set(test.names)
    # test tiles are the two right-most columns only
    assert all(int(n.split("c")[-1]) >= 6 for n in test.names)
    assert 0.05 < float(train.labels.float().mean()) < 0.6


def test_synthetic_script(tmp_path):
    from scripts.make_synthetic_dataset import main

    assert main([str(tmp_path / "s"), "--train", "3", "--test", "2", "--size", "32", "32", "--format", ".png"]) == 0
    ds = load_dataset(tmp_path / "s", "test", ModelSpec("fcn", 1, 2, 4, (32, 32)))
    assert len(ds) == 2
