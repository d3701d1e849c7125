import numpy as np
from PIL import Image

from pouw.seg.report import (
    compute_dice_per_checkpoint, compute_overlay, write_dice_plot_png, write_overlay_png, write_prediction_overlays,
)

from tests.seg_fixtures import run_small_training, small_train_spec


def test_overlay_colours(tmp_path):
    img = np.zeros((8, 8))
    truth = np.zeros((8, 8), int)
    pred = np.zeros((8, 8), int)
    truth[0, 0] = pred[0, 0] = 1  # TP
    truth[0, 1] = 1  # FN
    pred[0, 2] = 1  # FP
    rgb = compute_overlay(img, truth, pred)
    assert rgb[0, 0, 0] > 100 and rgb[0, 0, 1] > 100 and rgb[0, 0, 2] == 0
    assert rgb[0, 1, 1] > 50 and rgb[0, 1, 0] == 0
    assert rgb[0, 2, 0] > 100 and rgb[0, 2, 1] == 0
    assert (rgb[5, 5] == 0).all()
    p = write_overlay_png(tmp_path / "o.png", img, truth, pred, scale=2, title="x")
    assert Image.open(p).size == (16, 32)
    vol = compute_overlay(np.zeros((4, 4, 6)), np.ones((4, 4, 6)), np.ones((4, 4, 6)))
    assert vol.shape == (4, 4, 3)


def test_plot_and_results_from_a_run(tmp_path):
    spec, tspec, train_ds, test_ds, store, r = run_small_training(tmp_path, tspec=small_train_spec(epochs=2))
    dice = compute_dice_per_checkpoint(store, r.checkpoint_digests, spec, test_ds)
    assert len(dice) == 3 and all(0 <= d <= 1 for d in dice) and dice[-1] > dice[0]
    p = write_dice_plot_png(tmp_path / "plot.png", {"miner A": list(enumerate(dice))}, title="Dice per epoch")
    im = np.asarray(Image.open(p).convert("RGB"))
    assert im.shape == (400, 640, 3)
    assert ((im[..., 0] == 31) & (im[..., 1] == 119)).sum() > 20  # the series was drawn
    paths = write_prediction_overlays(tmp_path / "ov", r.model_file, spec, test_ds, limit=2)
    assert len(paths) == 2 and all(p.exists() for p in paths)
