#!/usr/bin/env python
"""Write a synthetic segmentation dataset folder (MSD / nnU-Net layout).

    python scripts/make_synthetic_dataset.py OUT_DIR [--train 32] [--test 8] [--size 64 64 [D]]
        [--classes 2] [--channels 1] [--format .nii.gz|.nii|.png|.tif] [--seed TEXT]

Same generator as the chain's standing task (pouw.seg.synthetic): case i of
the training split is drawn from seed SHA-256(TEXT) + b"/train", of the test
split from SHA-256(TEXT) + b"/test". Images are the raw intensities (the
loader normalises them); PNG maps 0..2.55 to 0..255.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pouw.seg.data import write_synthetic_dataset_dir  # noqa: E402
from pouw.seg.spec import ModelSpec, SpecError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--size", type=int, nargs="+", default=[64, 64], help="2 or 3 sides, multiples of 8")
    ap.add_argument("--classes", type=int, default=2, help="classes including background")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nii", ".png", ".tif"])
    ap.add_argument("--seed", default="pouw-synthetic")
    args = ap.parse_args(argv)
    arch = "unet2d" if len(args.size) == 2 else "unet3d"
    try:
        spec = ModelSpec(arch, args.channels, args.classes, 8, tuple(args.size))
    except SpecError as exc:
        ap.error(str(exc))
    seed = hashlib.sha256(args.seed.encode()).digest()
    out = write_synthetic_dataset_dir(args.out_dir, seed, args.train, args.test, spec, suffix=args.format)
    print(f"wrote {args.train} training and {args.test} test cases to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
