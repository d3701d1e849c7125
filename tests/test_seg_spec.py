import pytest

from pouw.encoding import DecodeError, decode, encode
from pouw.seg.spec import ModelSpec, SpecError, TrainSpec


def test_roundtrip_encoding():
    m = ModelSpec("unet3d", 2, 4, 16, (32, 32, 16))
    t = TrainSpec(1e-3, 2, "dicece", "sgd", 50, weight_decay=1e-5, momentum=0.9)
    assert decode(ModelSpec, encode(m)) == m
    assert decode(TrainSpec, encode(t)) == t


def test_fields_have_docstrings():
    import inspect

    from pouw.seg import spec

    src = inspect.getsource(spec)
    for cls in (ModelSpec, TrainSpec):
        for name in cls.__dataclass_fields__:
            line = next(l for l in src.splitlines() if l.strip().startswith(f"{name}:"))
            nxt = src.splitlines()[src.splitlines().index(line) + 1].strip()
            assert nxt.startswith('"""'), name


@pytest.mark.parametrize("kwargs, msg", [
    (dict(architecture="resnet"), "architecture"),
    (dict(in_channels=0), "in_channels"),
    (dict(num_classes=1), "num_classes"),
    (dict(base_filters=True), "base_filters"),
    (dict(patch_size=(64,)), "patch_size"),
    (dict(patch_size=(60, 64)), "multiples of 8"),
    (dict(architecture="unet3d"), "3 sides"),
    (dict(patch_size=[64, 64]), "tuple"),
    (dict(preprocess="warp"), "preprocess"),
])
def test_model_spec_errors(kwargs, msg):
    base = dict(architecture="unet2d", in_channels=1, num_classes=2, base_filters=8, patch_size=(64, 64))
    base.update(kwargs)
    with pytest.raises(SpecError, match=msg):
        ModelSpec(**base)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(learning_rate=float("nan")), "finite"),
    (dict(learning_rate=1), "float"),
    (dict(batch_size=0), "batch_size"),
    (dict(loss="l2"), "loss"),
    (dict(optimizer="lbfgs"), "optimizer"),
    (dict(max_epochs=0), "max_epochs"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(momentum=1.0), "momentum"),
])
def test_train_spec_errors(kwargs, msg):
    base = dict(learning_rate=1e-3, batch_size=4, loss="dice", optimizer="adam", max_epochs=5)
    base.update(kwargs)
    with pytest.raises(SpecError, match=msg):
        TrainSpec(**base)


def test_decode_rejects_invalid_spec():
    good = encode(ModelSpec("unet2d", 1, 2, 8, (64, 64)))
    bad = good.replace(b"unet2d", b"unetXd")
    with pytest.raises(DecodeError, match="architecture"):
        decode(ModelSpec, bad)
