#!/usr/bin/env python
"""Build a real 2D segmentation example from the nuclei image in the stardist wheel.

Source: ``stardist/data/images/img2d.tif`` and ``mask2d.tif`` (a 512x512
fluorescence image of nuclei with a hand-annotated instance mask, from the
BBBC038 / Data Science Bowl 2018 collection, CC0). Install the wheel without
its heavy dependencies: ``pip install --no-deps stardist tifffile``.

The image is cut into non-overlapping square tiles; whole tile columns on the
right go to the test split, the rest to training, so no pixel is in both.
Instance labels become a binary mask (background 0, nucleus 1). Output is the
MSD / nnU-Net layout with PNG files::

    python scripts/make_nuclei_example.py OUT_DIR [--tile 64] [--test-columns 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pouw.seg.data import write_dataset_dir  # noqa: E402


def find_stardist_images() -> tuple[Path, Path]:
    """Paths of img2d.tif and mask2d.tif inside the installed stardist package (not imported)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("stardist is not installed: pip install --no-deps stardist tifffile")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
    img, mask = root / "img2d.tif", root / "mask2d.tif"
    if not (img.is_file() and mask.is_file()):
        raise SystemExit(f"nuclei example files not found under {root}")
    return img, mask


def compute_tiles(image: np.ndarray, mask: np.ndarray, tile: int, test_columns: int):
    """(train, test) lists of (name, image (1, t, t) uint8, binary label) tiles, no overlap."""
    rows, cols = image.shape[0] // tile, image.shape[1] // tile
    if test_columns < 1 or test_columns >= cols:
        raise SystemExit(f"--test-columns must be between 1 and {cols - 1}")
    scale = 255.0 / max(float(image.max()), 1.0) if image.max() > 255 else 1.0
    img8 = np.clip(np.round(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    train, test = [], []
    for r in range(rows):
        for c in range(cols):
            sl = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
            case = (f"nuclei_r{r}c{c}", img8[sl][None], (mask[sl] > 0).astype(np.uint8))
            (test if c >= cols - test_columns else train).append(case)
    return train, test


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--tile", type=int, default=64, help="tile side in pixels (default 64)")
    ap.add_argument("--test-columns", type=int, default=2, help="tile columns on the right kept for testing")
    ap.add_argument("--image", type=Path, help="img2d.tif (default: from the stardist wheel)")
    ap.add_argument("--mask", type=Path, help="mask2d.tif (default: from the stardist wheel)")
    args = ap.parse_args(argv)
    import tifffile

    img_path, mask_path = (args.image, args.mask) if args.image and args.mask else find_stardist_images()
    image, mask = tifffile.imread(str(img_path)), tifffile.imread(str(mask_path))
    if image.shape != mask.shape or image.ndim != 2:
        raise SystemExit(f"expected two 2D arrays of one shape, got {image.shape} and {mask.shape}")
    train, test = compute_tiles(image, mask, args.tile, args.test_columns)
    write_dataset_dir(args.out_dir, train, test, ["background", "nucleus"], ["fluorescence"], suffix=".png",
                      name="nuclei-bbbc038")
    print(f"wrote {len(train)} training and {len(test)} test tiles of {args.tile}x{args.tile} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
