import numpy as np
from PIL import Image

from pouw.seg.report import (
    OVERLAY_LEGEND, PLOT_COLOURS, compute_dice_per_checkpoint, compute_overlay, compute_overlay_layout,
    compute_plot_layout, write_dice_plot_png, write_overlay_png, write_prediction_overlays,
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
    vol = compute_overlay(np.zeros((4, 4, 6)), np.ones((4, 4, 6)), np.ones((4, 4, 6)))
    assert vol.shape == (4, 4, 3)


def _box(im: np.ndarray, box) -> np.ndarray:
    left, top, right, bottom = box
    return im[top:bottom, left:right]


def test_overlay_has_a_legend_of_its_colours_and_the_dice(tmp_path):
    img = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    truth = np.zeros((64, 64), int)
    pred = np.zeros((64, 64), int)
    truth[10:30, 10:30] = 1
    pred[20:40, 20:40] = 1
    path = write_overlay_png(tmp_path / "o.png", img, truth, pred, scale=4, title="case_7", dice=0.25)
    im = np.asarray(Image.open(path).convert("RGB"))
    layout = compute_overlay_layout((256, 256))
    assert im.shape == (layout.size[1], layout.size[0], 3)
    # The overlay itself is pasted whole, below the title and above the legend.
    expected = np.asarray(Image.fromarray(compute_overlay(img, truth, pred)).resize((256, 256), Image.NEAREST))
    assert (_box(im, layout.image_box) == expected).all()
    # Each legend swatch is filled with its colour, and the three colours are the overlay's TP, FN, FP hues.
    names = [label for label, _ in OVERLAY_LEGEND]
    assert names == ["true positive", "false negative (missed)", "false positive"]
    for (label, colour), box in zip(OVERLAY_LEGEND, layout.swatches):
        assert (_box(im, box) == np.array(colour, dtype=np.uint8)).all(), label
        left, top, right, bottom = box
        label_area = im[top - 2:bottom + 2, right + 4:right + 110]
        assert (label_area.sum(axis=-1) < 200).sum() > 20, f"no label text beside the {label} swatch"
    swatch_colours = [im[box[1] + 2, box[0] + 2].astype(int) for box in layout.swatches]
    x0, y0 = layout.image_box[:2]
    tp, fn, fp = (im[y0 + v * 4 + 2, x0 + v * 4 + 2].astype(int) for v in (25, 12, 35))  # a TP, an FN, an FP pixel
    for overlay_px, swatch in zip((tp, fn, fp), swatch_colours):
        # A blend of the swatch colour with gray: its dominant channels are the swatch's.
        assert np.argmax(overlay_px - overlay_px.mean()) == np.argmax(swatch - swatch.mean())
    # The title line carries the text; another Dice gives another title line and the same picture.
    title = _box(im, layout.title_box)
    assert (title.sum(axis=-1) < 200).sum() > 30
    other = np.asarray(Image.open(write_overlay_png(tmp_path / "p.png", img, truth, pred, title="case_7", dice=0.75)))
    assert (_box(other, layout.title_box) != title).any()
    assert (_box(other, layout.image_box) == _box(im, layout.image_box)).all()


def test_small_overlays_are_widened_for_the_legend(tmp_path):
    p = write_overlay_png(tmp_path / "o.png", np.zeros((8, 8)), np.zeros((8, 8), int), np.zeros((8, 8), int),
                          scale=2, title="x")
    layout = compute_overlay_layout((16, 16))
    assert Image.open(p).size == layout.size and layout.size[0] >= 200


def _series_pixels(im: np.ndarray, colour) -> np.ndarray:
    return (im == np.array(colour, dtype=np.uint8)).all(axis=-1)


def test_plot_legend_never_covers_the_curve(tmp_path):
    # Points in every corner of the data range, the top right (where legends usually sit) included.
    rising = [(e, min(1.0, e / 10)) for e in range(15)]
    flat_high = [(e, 0.97) for e in range(15)]
    series = {"test Dice": rising, "a much longer series name than usual": flat_high}
    path = write_dice_plot_png(tmp_path / "plot.png", series, title="Dice per epoch")
    im = np.asarray(Image.open(path).convert("RGB"))
    layout = compute_plot_layout(series, (640, 400))
    left, top, right, bottom = layout.legend_box
    a_left, a_top, a_right, a_bottom = layout.axes_box
    assert right <= 640 and bottom <= 400
    assert left > a_right or top > a_bottom, "the legend box overlaps the plotting area"
    for k, s in enumerate(series.values()):
        colour = PLOT_COLOURS[k]
        for x, y in s:
            px, py = layout.to_px(x, y)
            assert not (left - 3 <= px <= right + 3 and top - 3 <= py <= bottom + 3), (x, y)
            # The point is drawn in its colour at its place: nothing was painted over it.
            assert _series_pixels(im[int(py) - 1:int(py) + 2, int(px) - 1:int(px) + 2], colour).any(), (k, x, y)
        # The series colour appears in the legend (its swatch) and nowhere else outside the axes.
        mask = _series_pixels(im, colour)
        legend = mask[top:bottom + 1, left:right + 1].sum()
        assert legend >= 50
        inside_axes = mask[a_top - 3:a_bottom + 4, a_left - 3:a_right + 4].sum()
        assert legend + inside_axes == mask.sum()
    # The legend frame is drawn where the layout says.
    assert (im[top, left:right + 1] == 160).all()


def test_plot_and_results_from_a_run(tmp_path):
    spec, tspec, train_ds, test_ds, store, r = run_small_training(tmp_path, tspec=small_train_spec(epochs=2))
    dice = compute_dice_per_checkpoint(store, r.checkpoint_digests, spec, test_ds)
    assert len(dice) == 3 and all(0 <= d <= 1 for d in dice) and dice[-1] > dice[0]
    p = write_dice_plot_png(tmp_path / "plot.png", {"miner A": list(enumerate(dice))}, title="Dice per epoch")
    im = np.asarray(Image.open(p).convert("RGB"))
    assert im.shape == (400, 640, 3)
    assert _series_pixels(im, PLOT_COLOURS[0]).sum() > 20  # the series was drawn
    paths = write_prediction_overlays(tmp_path / "ov", r.model_file, spec, test_ds, limit=2)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    layout = compute_overlay_layout((spec.patch_size[1] * 4, spec.patch_size[0] * 4))
    first = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert (_box(first, layout.swatches[0]) == np.array(OVERLAY_LEGEND[0][1], dtype=np.uint8)).all()
