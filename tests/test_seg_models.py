import io

import msgpack
import pytest
import torch

from pouw.encoding import encode
from pouw.seg.models import build_model, count_parameters
from pouw.seg.spec import ModelSpec
from pouw.seg.weights import (
    WeightsError, compute_model_digest, decode_checkpoint_header, decode_model, encode_model, load_model,
)


@pytest.mark.parametrize("spec, shape", [
    (ModelSpec("unet2d", 1, 3, 4, (32, 32)), (2, 1, 32, 32)),
    (ModelSpec("unet3d", 2, 2, 4, (16, 16, 16)), (1, 2, 16, 16, 16)),
    (ModelSpec("fcn", 1, 2, 4, (32, 48)), (2, 1, 32, 48)),
    (ModelSpec("fcn", 1, 4, 4, (16, 16, 8)), (1, 1, 16, 16, 8)),
])
def test_models_forward_shapes(spec, shape):
    model = build_model(spec)
    out = model(torch.zeros(shape))
    assert out.shape == (shape[0], spec.num_classes, *shape[2:])


def test_unet_is_four_steps_filters_doubling():
    model = build_model(ModelSpec("unet2d", 1, 2, 8, (64, 64)))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    widths = sorted({m.out_channels for m in convs})
    assert {8, 16, 32, 64} <= set(widths)
    assert all(m.kernel_size in ((3, 3), (1, 1)) for m in convs)
    assert count_parameters(model) > 0


def test_model_file_roundtrip_and_digest_stable():
    spec = ModelSpec("fcn", 1, 2, 4, (32, 32))
    torch.manual_seed(0)
    m = build_model(spec)
    a = encode_model(m, spec)
    b = encode_model({k: v.clone() for k, v in m.state_dict().items()}, spec)
    assert a == b and compute_model_digest(a) == compute_model_digest(b)
    m2 = load_model(a, spec)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def _file(spec_bytes, tensors):
    return msgpack.packb(["pouw-model", 1, spec_bytes, tensors], use_bin_type=True)


def test_model_file_rejections():
    unet = ModelSpec("unet2d", 1, 2, 4, (32, 32))
    fcn = ModelSpec("fcn", 1, 2, 4, (32, 32))
    data = encode_model(build_model(unet), unet)
    with pytest.raises(WeightsError, match="task declares"):
        decode_model(data, fcn)
    tensors = msgpack.unpackb(data, raw=False)[3]
    with pytest.raises(WeightsError, match="not a state dict of fcn"):
        decode_model(_file(encode(fcn), tensors), fcn)
    bad_shape = [list(t) for t in tensors]
    j = next(i for i, t in enumerate(tensors) if len(t[2]) >= 2)
    bad_shape[j][2] = [1] * len(bad_shape[j][2])
    bad_shape[j][3] = bad_shape[j][3][:4]
    with pytest.raises(WeightsError, match="needs"):
        decode_model(_file(encode(unet), bad_shape), unet)
    short = [list(t) for t in tensors]
    short[0][3] = short[0][3][:-1]
    with pytest.raises(WeightsError, match="do not fill"):
        decode_model(_file(encode(unet), short), unet)
    nan_state = build_model(unet).state_dict()
    first = next(k for k, v in nan_state.items() if v.is_floating_point())
    nan_state[first] = nan_state[first].clone().fill_(float("nan"))
    with pytest.raises(WeightsError, match="NaN"):
        decode_model(encode_model(nan_state, unet), unet)
    with pytest.raises(WeightsError, match="sorted"):
        decode_model(_file(encode(unet), list(reversed(tensors))), unet)
    buf = io.BytesIO()
    torch.save(build_model(unet).state_dict(), buf)  # a pickle: never loaded
    with pytest.raises(WeightsError):
        decode_model(buf.getvalue(), unet)
    with pytest.raises(WeightsError):
        decode_model(b"\xff\xfe garbage", unet)
    with pytest.raises(WeightsError):
        decode_checkpoint_header(data)
