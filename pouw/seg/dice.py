"""Dice on a test set, computed the same way on every node.

* Each test image goes through the network alone (batch of one, fp32, eval
  mode, deterministic algorithms, DETERMINISTIC_THREADS threads), so the
  result does not depend on batch size or machine thread count. An image
  larger than the patch (patch tasks) is predicted whole by MONAI
  ``sliding_window_inference`` (patch-sized windows, overlap SW_OVERLAP,
  gaussian blending).
* Prediction = argmax over classes; per foreground class the Dice
  ``2|P∩G| / (|P| + |G|)`` from exact voxel counts (a confusion matrix), which
  is what MONAI ``DiceMetric(include_background=False, ignore_empty=False)``
  gives on one-hot maps (a class absent from both prediction and ground truth
  scores 1, absent from ground truth only 0) without its one-hot memory; an
  image's Dice is the mean over its classes.
* The task's Dice is the mean over images, encoded as
  ``round(mean * 1_000_000)`` (parts per million, ties to even).
* Verifiers accept a claim whose Dice is within DICE_TOLERANCE_PPM of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pouw.seg.data import Dataset, SegDataset
from pouw.seg.determinism import DETERMINISTIC_THREADS, deterministic_mode
from pouw.seg.spec import ModelSpec
from pouw.seg.weights import load_model

PPM = 1_000_000
DICE_TOLERANCE_PPM = 1_000
"""0.001 Dice: absorbs pixels whose argmax flips between float libraries; exact on the same platform."""
SW_OVERLAP = 0.25
"""Overlap of neighbouring sliding windows (MONAI's default)."""
CONFUSION_CHUNK = 1 << 24
"""Voxels counted at once (bounds the memory of the confusion matrix pass)."""


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


def predict_logits(model: nn.Module, image: torch.Tensor, patch: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Logits (1, K, *spatial) of one image (C, *spatial): one pass, or sliding windows when larger than the patch."""
    from monai.inferers import sliding_window_inference

    x = image[None].to(device)
    if tuple(image.shape[1:]) == tuple(patch):
        return model(x).float()
    return sliding_window_inference(x, roi_size=tuple(patch), sw_batch_size=1, predictor=model, overlap=SW_OVERLAP,
                                    mode="gaussian").float()


def predict_case(model: nn.Module, image: torch.Tensor, patch: tuple[int, ...], device: str | torch.device = "cpu",
                 name: str = "") -> torch.Tensor:
    """Label map (1, *spatial) uint8 of one image, on the CPU."""
    dev = torch.device(device)
    with torch.no_grad():
        logits = predict_logits(model.to(dev).eval(), image, patch, dev)
        if not torch.isfinite(logits).all():
            raise ValueError(f"model output is not finite on test image {name}")
        return logits.argmax(dim=1).to(torch.uint8).cpu()


def predict(model: nn.Module, dataset: SegDataset, device: str = "cpu") -> torch.Tensor:
    """Label maps (N, 1, *patch) of a fixed-shape dataset, predicted one image at a time."""
    patch = dataset.get_shape(0)
    return torch.stack([predict_case(model, dataset.get_case(i)[0], patch, device, dataset.names[i])
                        for i in range(len(dataset))])


def compute_confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 voxel counts, row = true class, column = predicted class."""
    flat_pred = pred.reshape(-1)
    flat_label = label.reshape(-1)
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    for i in range(0, flat_pred.numel(), CONFUSION_CHUNK):
        code = flat_label[i: i + CONFUSION_CHUNK].long() * num_classes + flat_pred[i: i + CONFUSION_CHUNK].long()
        counts += torch.bincount(code, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def compute_dice_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """float64 Dice of each foreground class: 2 tp / (|truth| + |prediction|), 1 when both are empty."""
    k = confusion.shape[0]
    tp = confusion.diagonal().to(torch.float64)
    truth = confusion.sum(dim=1).to(torch.float64)
    predicted = confusion.sum(dim=0).to(torch.float64)
    denominator = truth + predicted
    dice = torch.where(denominator > 0, 2.0 * tp / denominator.clamp(min=1), torch.ones(k, dtype=torch.float64))
    return dice[1:]


def compute_dice_scores(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, num_classes-1) float64 Dice per image and foreground class (label maps (N, 1, *spatial))."""
    return torch.stack([compute_dice_from_confusion(compute_confusion(p, l, num_classes)) for p, l in zip(pred, labels)])


def evaluate(
    model: bytes | Path | str | nn.Module,
    model_spec: ModelSpec,
    dataset: Dataset,
    device: str = "cpu",
    num_threads: int | None = DETERMINISTIC_THREADS,
) -> DiceResult:
    """Dice of a model (file bytes, file path or module) on a labelled dataset of either kind."""
    if dataset.num_classes != model_spec.num_classes:
        raise ValueError(f"test set has {dataset.num_classes} classes, the model {model_spec.num_classes}")
    patch = tuple(model_spec.patch_size)
    if dataset.in_channels != model_spec.in_channels:
        raise ValueError("test set images do not match the model spec's channels")
    if isinstance(dataset, SegDataset) and dataset.get_shape(0) != patch:
        raise ValueError("test set images do not match the model spec's patch size")
    scores = []
    with deterministic_mode(num_threads, device=device):
        net = model if isinstance(model, nn.Module) else load_model(model, model_spec)
        for i in range(len(dataset)):
            image, label = dataset.get_case(i)
            pred = predict_case(net, image, patch, device, dataset.names[i])
            scores.append(compute_dice_from_confusion(compute_confusion(pred, label, model_spec.num_classes)))
    table = torch.stack(scores)
    per_image = table.mean(dim=1)
    mean = float(per_image.mean())
    return DiceResult(
        dice_ppm=compute_ppm(mean),
        per_image=tuple(compute_ppm(float(v)) for v in per_image),
        per_class=tuple(compute_ppm(float(v)) for v in table.mean(dim=0)),
        names=dataset.names,
    )


__all__ = ["evaluate", "DiceResult", "predict", "predict_case", "compute_dice_scores", "compute_confusion",
           "compute_dice_from_confusion", "compute_ppm", "is_within_tolerance", "DICE_TOLERANCE_PPM", "PPM",
           "SW_OVERLAP"]
