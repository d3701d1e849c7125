"""Dice: exact voxel counts agree with MONAI DiceMetric; whole volumes are scored by sliding windows."""

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from pouw.seg.data import make_volume_dataset
from pouw.seg.dice import SW_OVERLAP, compute_dice_scores, evaluate
from pouw.seg.spec import ModelSpec
from pouw.seg.train import init_model


def _monai_dice(pred, labels, k):
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    return metric(one_hot(pred.long(), k, dtype=torch.float64), one_hot(labels.long(), k, dtype=torch.float64))


def test_counts_give_monai_dice_exactly():
    g = torch.Generator().manual_seed(0)
    k = 4
    pred = torch.randint(0, k, (6, 1, 9, 11), generator=g)
    labels = torch.randint(0, k, (6, 1, 9, 11), generator=g)
    labels[0] = 0  # classes absent from the truth: 0 if predicted, 1 if not
    pred[1] = 0
    labels[1] = 0
    labels[2][labels[2] == 3] = 1  # class 3 absent from truth only
    ours = compute_dice_scores(pred.to(torch.uint8), labels.to(torch.uint8), k)
    assert torch.equal(ours, _monai_dice(pred, labels, k).to(torch.float64))
    assert ours[1].tolist() == [1.0, 1.0, 1.0]


def test_volume_dice_uses_sliding_windows_over_the_whole_volume():
    spec = ModelSpec("unet3d", 1, 2, 4, (16, 16, 16), preprocess="patch")
    rng = np.random.default_rng(5)
    shapes = [(24, 20, 16), (16, 16, 16)]
    images = [rng.normal(size=(1, *s)).astype(np.float32) for s in shapes]
    labels = [(rng.random(s) > 0.7).astype(np.uint8) for s in shapes]
    ds = make_volume_dataset(images, labels, ("a", "b"), 2)
    model = init_model(spec, b"\x02" * 32).eval()
    result = evaluate(model, spec, ds)
    expected = []
    with torch.no_grad():
        for im, lab in zip(images, labels):
            x = torch.from_numpy(im)[None]
            logits = sliding_window_inference(x, (16, 16, 16), 1, model, overlap=SW_OVERLAP, mode="gaussian")
            pred = logits.argmax(dim=1, keepdim=True)
            expected.append(float(_monai_dice(pred, torch.from_numpy(lab)[None, None], 2).mean()))
    assert result.per_image == tuple(int(round(v * 1_000_000)) for v in expected)
