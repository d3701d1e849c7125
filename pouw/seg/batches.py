"""The input of every optimizer step, as a pure function of the seed and the step number.

Step t (0-based) of a run belongs to epoch ``e = t // m + 1`` (m steps per
epoch) and takes batch ``t % m`` of that epoch's order
(``determinism.compute_epoch_order``). With W data-parallel workers rank r
takes slice ``[r*B/W, (r+1)*B/W)`` of every global batch, so a one-process
replay sees the same global batches.

Fixed-shape datasets (resize/crop tasks) feed whole images. Volume datasets
(patch tasks) feed one patch per case: with probability POSITIVE_FRACTION
centred on a random foreground voxel, otherwise on a uniformly random voxel,
shifted to lie inside the volume (MONAI ``RandCropByPosNegLabeld``'s idea,
at a cost that does not grow with the volume). The draws come from a numpy
``RandomState`` seeded by ``derive_int_seed(seed, "patch/<e>/<case>") mod 2**32``,
so any worker and any replay cut the same patch.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from pouw.seg.data import Dataset, SegDataset
from pouw.seg.determinism import compute_epoch_order, derive_int_seed
from pouw.seg.trajectory import Layout

POSITIVE_FRACTION = 0.5
"""Share of patches centred on foreground (MONAI RandCropByPosNegLabeld with pos=1, neg=1)."""


def compute_patch_start(seed: bytes, epoch: int, case: int, shape: tuple[int, ...], patch: tuple[int, ...],
                        foreground: np.ndarray) -> tuple[int, ...]:
    """The first voxel of the patch case `case` gives in `epoch` (the case's sides are at least the patch)."""
    rs = np.random.RandomState(derive_int_seed(seed, f"patch/{epoch}/{case}") % (1 << 32))
    positive = rs.random_sample() < POSITIVE_FRACTION
    if positive and len(foreground):
        centre = np.unravel_index(int(foreground[rs.randint(len(foreground))]), shape)
    else:
        centre = tuple(rs.randint(side) for side in shape)
    return tuple(int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre, patch, shape))


class BatchSource:
    """This worker's (images, labels) of any step; labels stay uint8 until they reach the device."""

    def __init__(self, dataset: Dataset, seed: bytes, layout: Layout, batch_size: int, patch: tuple[int, ...],
                 rank: int = 0, world: int = 1, pin: bool = False) -> None:
        self.dataset = dataset
        self.seed = seed
        self.layout = layout
        self.batch_size = batch_size
        self.patch = tuple(patch)
        self.rank = rank
        self.world = world
        self.pin = pin
        self._orders: dict[int, list[int]] = {}

    def get_order(self, epoch: int) -> list[int]:
        """The sample order of `epoch` (the last two are remembered)."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = compute_epoch_order(self.seed, epoch, len(self.dataset))
        return self._orders[epoch]

    def get_global_batch(self, step: int) -> list[int]:
        """Case indices of the global batch of `step`."""
        order = self.get_order(self.layout.get_epoch(step))
        if len(order) < self.batch_size:
            return order
        k = step % self.layout.steps_per_epoch
        return order[k * self.batch_size: (k + 1) * self.batch_size]

    def get_worker_cases(self, step: int) -> list[int]:
        batch = self.get_global_batch(step)
        if self.world == 1:
            return batch
        per = len(batch) // self.world
        return batch[self.rank * per: (self.rank + 1) * per]

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cases = self.get_worker_cases(step)
        if isinstance(self.dataset, SegDataset):
            idx = torch.as_tensor(cases, dtype=torch.long)
            x, y = self.dataset.images[idx], self.dataset.labels[idx]
        else:
            x, y = self._cut_patches(self.layout.get_epoch(step), cases)
        if self.pin:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _cut_patches(self, epoch: int, cases: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.dataset
        images, labels = [], []
        for case in cases:
            shape = ds.get_shape(case)
            start = compute_patch_start(self.seed, epoch, case, shape, self.patch, ds.foreground[case])
            box = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
            images.append(np.ascontiguousarray(ds.images[case][(slice(None), *box)]))
            labels.append(np.ascontiguousarray(ds.labels[case][box])[None])
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def iter_batches(source: BatchSource, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of steps start..stop-1, the next one read in a background thread while this one trains."""
    if stop <= start:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pouw-batch") as pool:
        ahead: Future = pool.submit(source.get, start)
        for step in range(start, stop):
            batch = ahead.result()
            if step + 1 < stop:
                ahead = pool.submit(source.get, step + 1)
            yield batch


__all__ = ["BatchSource", "iter_batches", "compute_patch_start", "POSITIVE_FRACTION"]
