"""Networks a task can ask for.

* ``unet2d`` / ``unet3d``: MONAI ``UNet`` set up like the paper's U-Net: four
  resolution steps with filters (f, 2f, 4f, 8f), two 3x3(x3) convolutions per
  step (a residual unit of two sub-units), instance norm, PReLU.
* ``fcn``: a fully convolutional network written with plain torch layers
  (MONAI's FCN needs torchvision): three encoder stages of two convolutions
  and max pooling, a 1x1 classifier, and FCN-8s style skip fusion with
  interpolation back to the input size. 2D or 3D from the patch size.

No batch norm and no dropout anywhere, so a model's output depends only on
its weights and input: training replays and evaluation are reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pouw.seg.spec import FCN_DEPTH, UNET_DEPTH, ModelSpec


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network for `spec` (seed torch first for fixed weights)."""
    spec.validate()
    if spec.architecture in ("unet2d", "unet3d"):
        return build_unet(spec)
    return FCN(spec.spatial_dims, spec.in_channels, spec.num_classes, spec.base_filters)


def build_unet(spec: ModelSpec) -> nn.Module:
    from monai.networks.nets import UNet

    f = spec.base_filters
    return UNet(
        spatial_dims=spec.spatial_dims,
        in_channels=spec.in_channels,
        out_channels=spec.num_classes,
        channels=tuple(f * 2**i for i in range(UNET_DEPTH)),
        strides=(2,) * (UNET_DEPTH - 1),
        kernel_size=3,
        up_kernel_size=3,
        num_res_units=2,
        norm="INSTANCE",
        dropout=0.0,
    )


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(dims: int):
    return nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d


class _TwoConv(nn.Sequential):
    def __init__(self, dims: int, cin: int, cout: int) -> None:
        conv, norm = _conv(dims), _norm(dims)
        super().__init__(
            conv(cin, cout, 3, padding=1), norm(cout, affine=True), nn.ReLU(inplace=True),
            conv(cout, cout, 3, padding=1), norm(cout, affine=True), nn.ReLU(inplace=True),
        )


class FCN(nn.Module):
    """FCN-8s style network: encoder, per-scale score layers, upsample and sum."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, base_filters: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        conv = _conv(spatial_dims)
        widths = [base_filters * 2**i for i in range(FCN_DEPTH + 1)]
        self.stages = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.stages.append(_TwoConv(spatial_dims, cin, w))
            cin = w
        # Score layers on the three deepest scales (1/8, 1/4, 1/2 of the input).
        self.scores = nn.ModuleList(conv(w, num_classes, 1) for w in widths[1:])
        self.pool = nn.MaxPool2d(2) if spatial_dims == 2 else nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        feats = []
        h = x
        for i, stage in enumerate(self.stages):
            if i:
                h = self.pool(h)
            h = stage(h)
            feats.append(h)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        out = self.scores[-1](feats[-1])
        for score, feat in zip(reversed(self.scores[:-1]), reversed(feats[1:-1])):
            out = F.interpolate(out, size=feat.shape[2:], mode=mode, align_corners=False) + score(feat)
        return F.interpolate(out, size=size, mode=mode, align_corners=False)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["build_model", "build_unet", "FCN", "count_parameters"]
