"""Result figures for `pouw task results`, drawn with PIL.

* ``write_overlay_png``: an image with prediction against ground truth
  (the paper's Figures 6 and 8): true positives yellow, ground truth missed
  green, false positives red; 3D volumes show their middle slice.
* ``write_dice_plot_png``: Dice per epoch or per block (Figures 7 and 9).
* ``compute_dice_per_checkpoint``: the Dice of every checkpoint of a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pouw.blobstore import BlobStore
from pouw.seg.data import SegDataset
from pouw.seg.dice import evaluate, predict_case
from pouw.seg.spec import ModelSpec
from pouw.seg.weights import decode_checkpoint, load_model

_TP = np.array([255, 220, 0], dtype=np.float32)
_FN = np.array([0, 200, 0], dtype=np.float32)
_FP = np.array([230, 0, 0], dtype=np.float32)


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


def write_overlay_png(path: Path | str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                      scale: int = 4, title: str | None = None) -> Path:
    rgb = compute_overlay(image, truth, pred)
    im = Image.fromarray(rgb).resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    if title:
        canvas = Image.new("RGB", (im.width, im.height + 16), "white")
        canvas.paste(im, (0, 16))
        ImageDraw.Draw(canvas).text((2, 2), title, fill="black", font=ImageFont.load_default())
        im = canvas
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
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
        title = f"{name}  Dice {dice.per_image[i] / 1e6:.3f}"
        paths.append(write_overlay_png(Path(out_dir) / f"{name}_overlay.png", image[0].numpy(),
                                       label[0].numpy(), pred[0].numpy(), title=title))
    return paths


def compute_dice_per_checkpoint(store: BlobStore, checkpoint_digests: Sequence[bytes], spec: ModelSpec,
                                dataset: SegDataset) -> list[float]:
    """Dice on `dataset` of each checkpoint's weights (epoch 0 first)."""
    out = []
    for d in checkpoint_digests:
        ck = decode_checkpoint(store.get_bytes(d))
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


def write_dice_plot_png(path: Path | str, series: dict[str, Sequence[tuple[float, float]]], *,
                        title: str = "Dice", xlabel: str = "epoch", ylabel: str = "Dice",
                        size: tuple[int, int] = (640, 400), y_range: tuple[float, float] | None = (0.0, 1.0)) -> Path:
    """Line plot of one or more named (x, y) series, e.g. Dice per epoch or per block."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    w, h = size
    left, right, top, bottom = 60, 20, 30, 45
    im = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(im)
    font = ImageFont.load_default()
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

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    dr.rectangle([left, top, w - right, h - bottom], outline="black")
    for yt in _nice_ticks(y0, y1):
        _, py = to_px(x0, yt)
        dr.line([left - 4, py, w - right, py], fill=(225, 225, 225))
        dr.text((4, py - 6), f"{yt:.2f}", fill="black", font=font)
    for xt in _nice_ticks(x0, x1, 6):
        px, _ = to_px(xt, y0)
        dr.line([px, h - bottom, px, h - bottom + 4], fill="black")
        dr.text((px - 8, h - bottom + 6), f"{xt:g}", fill="black", font=font)
    dr.text((w // 2 - 20, h - 18), xlabel, fill="black", font=font)
    dr.text((4, top - 22), ylabel, fill="black", font=font)
    dr.text((w // 2 - 40, 8), title, fill="black", font=font)
    for k, (name, s) in enumerate(series.items()):
        c = colours[k % len(colours)]
        line = [to_px(x, y) for x, y in s]
        if len(line) > 1:
            dr.line(line, fill=c, width=2)
        for px, py in line:
            dr.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
        dr.text((w - right - 120, top + 6 + 14 * k), f"- {name}", fill=c, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


__all__ = ["compute_overlay", "write_overlay_png", "write_prediction_overlays", "compute_dice_per_checkpoint",
           "write_dice_plot_png"]

