"""What a task asks for: the model (ModelSpec) and how to train it (TrainSpec).

Both are frozen wire dataclasses (canonical msgpack, see pouw.encoding) that
travel inside the task-submission transaction; they validate themselves on
construction so a bad spec can neither be built nor decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

from pouw.encoding import MaxLen

ARCHITECTURES = ("unet2d", "unet3d", "fcn")
LOSSES = ("dice", "dicece")
OPTIMIZERS = ("adam", "sgd")
PREPROCESS = ("resize", "crop", "patch")

# Limits keep a task runnable and a verifier's work bounded.
MAX_CHANNELS = 16
MAX_CLASSES = 64
MAX_BASE_FILTERS = 512
MAX_PATCH_SIDE = 1024
MAX_PATCH_VOXELS = 512 * 512 * 128
MAX_EPOCHS = 100_000
MAX_BATCH = 4096
UNET_DEPTH = 4
"""Resolution steps of the U-Net (the paper's configuration)."""
FCN_DEPTH = 3
"""Pooling steps of the FCN encoder."""


class SpecError(ValueError):
    """A model or training specification that cannot be used."""


def get_spatial_divisor(architecture: str) -> int:
    """Every patch side must be a multiple of this (one halving per down step)."""
    return 2 ** (UNET_DEPTH - 1) if architecture.startswith("unet") else 2**FCN_DEPTH


@dataclass(frozen=True)
class ModelSpec:
    """The network a task trains and the shape of its input."""

    architecture: Annotated[str, MaxLen(16)]
    """Network family: "unet2d", "unet3d" or "fcn" (2D or 3D from patch_size)."""
    in_channels: int
    """Image channels (modalities) per voxel."""
    num_classes: int
    """Output classes including background (label values 0..num_classes-1)."""
    base_filters: int
    """Filters of the first resolution step; each deeper step doubles them."""
    patch_size: tuple[int, ...]
    """Spatial size every image is brought to: (H, W) or (H, W, D)."""
    preprocess: Annotated[str, MaxLen(16)] = "resize"
    """How images reach patch_size: "resize" (interpolate), "crop" (centre crop/pad), or "patch" (kept whole:
    training samples patch_size patches, Dice uses sliding windows over the whole image)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SpecError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        _check_int("in_channels", self.in_channels, 1, MAX_CHANNELS)
        _check_int("num_classes", self.num_classes, 2, MAX_CLASSES)
        _check_int("base_filters", self.base_filters, 1, MAX_BASE_FILTERS)
        if not isinstance(self.patch_size, tuple) or len(self.patch_size) not in (2, 3):
            raise SpecError(f"patch_size must be a tuple of 2 or 3 ints, got {self.patch_size!r}")
        want_dims = {"unet2d": 2, "unet3d": 3}.get(self.architecture)
        if want_dims is not None and len(self.patch_size) != want_dims:
            raise SpecError(f"{self.architecture} needs a patch_size of {want_dims} sides, got {self.patch_size}")
        div = get_spatial_divisor(self.architecture)
        for side in self.patch_size:
            _check_int("patch_size side", side, div, MAX_PATCH_SIDE)
            if side % div:
                raise SpecError(f"{self.architecture} patch sides must be multiples of {div}, got {self.patch_size}")
        if math.prod(self.patch_size) > MAX_PATCH_VOXELS:
            raise SpecError(f"patch_size {self.patch_size} exceeds {MAX_PATCH_VOXELS} voxels")
        if self.preprocess not in PREPROCESS:
            raise SpecError(f"preprocess must be one of {', '.join(PREPROCESS)}, got {self.preprocess!r}")


@dataclass(frozen=True)
class TrainSpec:
    """Hyperparameters every miner of a task uses."""

    learning_rate: float
    """Optimizer step size, in (0, 10]."""
    batch_size: int
    """Images per optimizer step (over all data-parallel workers together)."""
    loss: Annotated[str, MaxLen(16)]
    """Training loss: "dice" (MONAI DiceLoss) or "dicece" (DiceCELoss), softmax over classes."""
    optimizer: Annotated[str, MaxLen(16)]
    """"adam" or "sgd"."""
    max_epochs: int
    """Upper bound on epochs; miners stop earlier when their deadline comes."""
    weight_decay: float = 0.0
    """L2 penalty passed to the optimizer, in [0, 1]."""
    momentum: float = 0.9
    """SGD momentum in [0, 1) (ignored by Adam)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_float("learning_rate", self.learning_rate, 0.0, 10.0, low_open=True)
        _check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        if self.loss not in LOSSES:
            raise SpecError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        _check_int("max_epochs", self.max_epochs, 1, MAX_EPOCHS)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_float("momentum", self.momentum, 0.0, 1.0, high_open=True)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(f"{name} must be in {low}..{high}, got {value}")


def _check_float(name, value, low, high, *, low_open=False, high_open=False) -> None:
    # Wire floats must be floats: an int would encode differently.
    if not isinstance(value, float):
        raise SpecError(f"{name} must be a float, got {value!r}")
    if not math.isfinite(value):
        raise SpecError(f"{name} must be finite, got {value}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise SpecError(f"{name} must be in {lo}{low}, {high}{hi}, got {value}")


__all__ = ["ModelSpec", "TrainSpec", "SpecError", "ARCHITECTURES", "LOSSES", "OPTIMIZERS", "get_spatial_divisor"]
