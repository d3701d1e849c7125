"""Result figures for `pouw task results`, drawn with PIL.

* ``write_overlay_png``: an image with prediction against ground truth
  (the paper's Figures 6 and 8): true positives yellow, ground truth missed
  green, false positives red, with a legend of the three colours and the
  case's Dice on the figure; 3D volumes show their middle slice.
* ``write_dice_plot_png``: Dice per epoch or per block (Figures 7 and 9),
  with the legend beside the axes so it never hides a point.
* ``compute_dice_per_checkpoint``: the Dice of every checkpoint of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pouw.blobstore import BlobStore
from pouw.seg.data import SegDataset
from pouw.seg.dice import evaluate, predict_case
from pouw.seg.spec import ModelSpec
from pouw.seg.checkpoints import load_checkpoint
from pouw.seg.weights import load_model

_TP = np.array([255, 220, 0], dtype=np.float32)
_FN = np.array([0, 200, 0], dtype=np.float32)
_FP = np.array([230, 0, 0], dtype=np.float32)

OVERLAY_LEGEND = (
    ("true positive", (255, 220, 0)),
    ("false negative (missed)", (0, 200, 0)),
    ("false positive", (230, 0, 0)),
)
"""The overlay's colours as drawn in its legend: (label, RGB)."""

_ROW = 16
"""Height in pixels of one line of text (title, legend entries)."""
_SWATCH = 10
"""Side of a legend colour square."""
_MIN_FIGURE_WIDTH = 200
"""Overlays narrower than this get white margins so the legend text fits."""


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _middle_slice(a: np.ndarray) -> np.ndarray:
    """(H, W) of a (H, W) or (H, W, D) array."""
    return a[..., a.shape[-1] // 2] if a.ndim == 3 else a


def compute_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 overlay of foreground (any class > 0) prediction against ground truth."""
    img = _middle_slice(np.asarray(image, dtype=np.float64))
    t = _middle_slice(np.asarray(truth)) > 0
    p = _middle_slice(np.asarray(pred)) > 0
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    gray = np.clip((img - lo) / max(hi - lo, 1e-8), 0, 1) * 255
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    for mask, colour in ((t & p, _TP), (t & ~p, _FN), (~t & p, _FP)):
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return rgb.round().astype(np.uint8)


@dataclass(frozen=True)
class OverlayLayout:
    """Where the parts of an overlay figure lie, in pixels (left, top, right, bottom; right/bottom exclusive)."""

    size: tuple[int, int]
    """Width and height of the whole figure."""
    title_box: tuple[int, int, int, int]
    """The line with the case's name and Dice."""
    image_box: tuple[int, int, int, int]
    """The scaled overlay."""
    swatches: tuple[tuple[int, int, int, int], ...]
    """One colour square per OVERLAY_LEGEND entry, in its order."""


def compute_overlay_layout(image_size: tuple[int, int]) -> OverlayLayout:
    """Title line on top, the image, then one legend line per colour (the legend never covers the image)."""
    iw, ih = image_size
    width = max(iw, _MIN_FIGURE_WIDTH)
    x0 = (width - iw) // 2
    image_box = (x0, _ROW, x0 + iw, _ROW + ih)
    legend_top = image_box[3] + 4
    swatches = tuple(
        (4, legend_top + k * _ROW + 3, 4 + _SWATCH, legend_top + k * _ROW + 3 + _SWATCH) for k in range(len(OVERLAY_LEGEND))
    )
    height = legend_top + len(OVERLAY_LEGEND) * _ROW + 2
    return OverlayLayout((width, height), (0, 0, width, _ROW), image_box, swatches)


def write_overlay_png(path: Path | str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                      scale: int = 4, title: str | None = None, dice: float | None = None) -> Path:
    """An overlay figure: `title` and `dice` on top, the overlay, and a legend of its three colours below."""
    rgb = compute_overlay(image, truth, pred)
    im = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    layout = compute_overlay_layout(im.size)
    canvas = Image.new("RGB", layout.size, "white")
    canvas.paste(im, layout.image_box[:2])
    draw = ImageDraw.Draw(canvas)
    font = _font()
    heading = "  ".join(part for part in (title, None if dice is None else f"Dice {dice:.3f}") if part)
    if heading:
        draw.text((4, 2), heading, fill="black", font=font)
    for (label, colour), box in zip(OVERLAY_LEGEND, layout.swatches):
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=colour)
        draw.text((box[2] + 6, box[1] - 2), label, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_prediction_overlays(out_dir: Path | str, model_file: bytes, spec: ModelSpec, dataset: SegDataset,
                              limit: int = 8) -> list[Path]:
    """Overlay PNGs for the first `limit` test images, titled with their Dice."""
    model = load_model(model_file, spec)
    sub = dataset.subset(range(min(limit, len(dataset))))
    dice = evaluate(model, spec, sub)
    paths = []
    for i, name in enumerate(sub.names):
        image, label = sub.get_case(i)  # whole volumes too (patch tasks)
        pred = predict_case(model, image, tuple(spec.patch_size))
        paths.append(write_overlay_png(Path(out_dir) / f"{name}_overlay.png", image[0].numpy(),
                                       label[0].numpy(), pred[0].numpy(), title=name, dice=dice.per_image[i] / 1e6))
    return paths


def compute_dice_per_checkpoint(store: BlobStore, checkpoint_digests: Sequence[bytes], spec: ModelSpec,
                                dataset: SegDataset) -> list[float]:
    """Dice on `dataset` of each checkpoint's weights (epoch 0 first; only the headers and weights are read)."""
    out = []
    for d in checkpoint_digests:
        ck = load_checkpoint(store, d, shards=())
        out.append(evaluate(ck.model_file, spec, dataset).dice)
    return out


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(start, hi + step * 1e-6, step)]


PLOT_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
"""Series colours, in series order (repeating)."""


@dataclass(frozen=True)
class PlotLayout:
    """Where a Dice plot's parts lie, in pixels, and how data maps onto them."""

    size: tuple[int, int]
    """Width and height of the figure."""
    axes_box: tuple[int, int, int, int]
    """The plotting area (left, top, right, bottom): every point lies inside it."""
    legend_box: tuple[int, int, int, int]
    """The legend, right of the plotting area (it never covers a point)."""
    x_range: tuple[float, float]
    """Data x at the left and right edge of the axes."""
    y_range: tuple[float, float]
    """Data y at the bottom and top edge of the axes."""

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of a data point."""
        left, top, right, bottom = self.axes_box
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))


def compute_plot_layout(series: dict[str, Sequence[tuple[float, float]]], size: tuple[int, int] = (640, 400),
                        y_range: tuple[float, float] | None = (0.0, 1.0)) -> PlotLayout:
    """The axes and a legend column beside them, sized for the series names."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("nothing to plot")
    xs = [p[0] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    y0, y1 = y_range if y_range else (min(p[1] for p in pts), max(p[1] for p in pts))
    if y1 == y0:
        y1 = y0 + 1
    w, h = size
    font = _font()
    text_width = max(int(font.getlength(name)) for name in series)
    legend_width = min(_SWATCH + 6 + text_width + 12, w // 3)
    top, bottom = 30, h - 45
    legend_right = w - 8
    legend_left = legend_right - legend_width
    axes = (60, top, legend_left - 12, bottom)
    legend = (legend_left, top, legend_right, top + 6 + _ROW * len(series))
    return PlotLayout(size, axes, legend, (float(x0), float(x1)), (float(y0), float(y1)))


def write_dice_plot_png(path: Path | str, series: dict[str, Sequence[tuple[float, float]]], *,
                        title: str = "Dice", xlabel: str = "epoch", ylabel: str = "Dice",
                        size: tuple[int, int] = (640, 400), y_range: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """Line plot of one or more named (x, y) series, e.g. Dice per epoch or per block; the legend sits beside the axes."""
    layout = compute_plot_layout(series, size, y_range)
    w, h = size
    left, top, right, bottom = layout.axes_box
    im = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(im)
    font = _font()
    for yt in _nice_ticks(*layout.y_range):
        _, py = layout.to_px(layout.x_range[0], yt)
        dr.line([left - 4, py, right, py], fill=(225, 225, 225))
        dr.text((4, py - 6), f"{yt:.2f}", fill="black", font=font)
    dr.rectangle([left, top, right, bottom], outline="black")
    for xt in _nice_ticks(*layout.x_range, 6):
        px, _ = layout.to_px(xt, layout.y_range[0])
        dr.line([px, bottom, px, bottom + 4], fill="black")
        dr.text((px - 8, bottom + 6), f"{xt:g}", fill="black", font=font)
    dr.text(((left + right) // 2 - 20, h - 18), xlabel, fill="black", font=font)
    dr.text((4, top - 22), ylabel, fill="black", font=font)
    dr.text(((left + right) // 2 - int(font.getlength(title)) // 2, 8), title, fill="black", font=font)
    lx0, ly0, lx1, ly1 = layout.legend_box
    dr.rectangle([lx0, ly0, lx1, ly1], outline=(160, 160, 160))
    for k, (name, s) in enumerate(series.items()):
        c = PLOT_COLOURS[k % len(PLOT_COLOURS)]
        line = [layout.to_px(x, y) for x, y in s]
        if len(line) > 1:
            dr.line(line, fill=c, width=2)
        for px, py in line:
            dr.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
        sy = ly0 + 6 + _ROW * k
        dr.rectangle([lx0 + 6, sy, lx0 + 6 + _SWATCH - 1, sy + _SWATCH - 1], fill=c)
        dr.text((lx0 + 6 + _SWATCH + 6, sy - 2), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


__all__ = ["OVERLAY_LEGEND", "PLOT_COLOURS", "OverlayLayout", "PlotLayout", "compute_overlay", "compute_overlay_layout",
           "compute_plot_layout", "write_overlay_png", "write_prediction_overlays", "compute_dice_per_checkpoint",
           "write_dice_plot_png"]

