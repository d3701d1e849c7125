"""Dice on a test set, computed the same way on every node.

* Each test image goes through the network alone (batch of one, fp32, eval
  mode, deterministic algorithms, DETERMINISTIC_THREADS threads), so the
  result does not depend on batch size or machine thread count.
* Prediction = argmax over classes; MONAI ``DiceMetric`` (one-hot, float64,
  ``include_background=False``, ``ignore_empty=False``: a class absent from
  both prediction and ground truth scores 1, absent from ground truth only 0)
  gives one Dice per foreground class; an image's Dice is their mean.
* The task's Dice is the mean over images, encoded as
  ``round(mean * 1_000_000)`` (parts per million, ties to even).
* Verifiers accept a claim whose Dice is within DICE_TOLERANCE_PPM of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pouw.seg.data import SegDataset
from pouw.seg.determinism import DETERMINISTIC_THREADS, deterministic_mode
from pouw.seg.spec import ModelSpec
from pouw.seg.weights import load_model

PPM = 1_000_000
DICE_TOLERANCE_PPM = 1_000
"""0.001 Dice: absorbs pixels whose argmax flips between float libraries; exact on the same platform."""


@dataclass(frozen=True)
class DiceResult:
    dice_ppm: int
    """Mean Dice over test images, parts per million."""
    per_image: tuple[int, ...]
    """Dice of each test image (ppm), in dataset order."""
    per_class: tuple[int, ...]
    """Mean Dice of each foreground class over images (ppm)."""
    names: tuple[str, ...]

    @property
    def dice(self) -> float:
        return self.dice_ppm / PPM


def compute_ppm(value: float) -> int:
    """Dice as integer parts per million (round half to even)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Dice {value} outside [0, 1]")
    return int(round(value * PPM))


def is_within_tolerance(claimed_ppm: int, measured_ppm: int, tolerance_ppm: int = DICE_TOLERANCE_PPM) -> bool:
    return abs(int(claimed_ppm) - int(measured_ppm)) <= tolerance_ppm


def predict(model: nn.Module, dataset: SegDataset, device: str = "cpu") -> torch.Tensor:
    """Label maps (N, 1, *patch) predicted one image at a time."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    out = []
    with torch.no_grad():
        for i in range(len(dataset)):
            logits = model(dataset.images[i: i + 1].to(dev)).float()
            if not torch.isfinite(logits).all():
                raise ValueError(f"model output is not finite on test image {dataset.names[i]}")
            out.append(logits.argmax(dim=1, keepdim=True).cpu())
    return torch.cat(out)


def compute_dice_scores(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, num_classes-1) float64 Dice per image and foreground class, by MONAI DiceMetric."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False, num_classes=None)
    y_pred = one_hot(pred.long(), num_classes, dtype=torch.float64)
    y = one_hot(labels.long(), num_classes, dtype=torch.float64)
    scores = metric(y_pred, y).to(torch.float64)
    if not torch.isfinite(scores).all():
        raise ValueError("Dice computation produced NaN")
    return scores


def evaluate(
    model: bytes | Path | str | nn.Module,
    model_spec: ModelSpec,
    dataset: SegDataset,
    device: str = "cpu",
    num_threads: int | None = DETERMINISTIC_THREADS,
) -> DiceResult:
    """Dice of a model (file bytes, file path or module) on a labelled dataset."""
    if dataset.num_classes != model_spec.num_classes:
        raise ValueError(f"test set has {dataset.num_classes} classes, the model {model_spec.num_classes}")
    if tuple(dataset.images.shape[2:]) != tuple(model_spec.patch_size) or dataset.images.shape[1] != model_spec.in_channels:
        raise ValueError("test set images do not match the model spec's channels and patch size")
    with deterministic_mode(num_threads, device=device):
        net = model if isinstance(model, nn.Module) else load_model(model, model_spec)
        pred = predict(net, dataset, device)
        scores = compute_dice_scores(pred, dataset.labels, model_spec.num_classes)
    per_image = scores.mean(dim=1)
    mean = float(per_image.mean())
    return DiceResult(
        dice_ppm=compute_ppm(mean),
        per_image=tuple(compute_ppm(float(v)) for v in per_image),
        per_class=tuple(compute_ppm(float(v)) for v in scores.mean(dim=0)),
        names=dataset.names,
    )


__all__ = ["evaluate", "DiceResult", "predict", "compute_dice_scores", "compute_ppm", "is_within_tolerance",
           "DICE_TOLERANCE_PPM", "PPM"]
