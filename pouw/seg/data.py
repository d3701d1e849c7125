"""Segmentation datasets: loading, validation, preprocessing, on-disk cache, synthetic data.

Accepted layout (Medical Segmentation Decathlon / nnU-Net)::

    DATASET/dataset.json
    DATASET/imagesTr/<case>.<ext>  or  <case>_0000.<ext>, <case>_0001.<ext>, ...
    DATASET/labelsTr/<case>.<ext>
    DATASET/imagesTs/...           labelled test split
    DATASET/labelsTs/<case>.<ext>

with <ext> one of .nii.gz, .nii, .png, .tif, .tiff. ``dataset.json`` gives the
classes ("labels": MSD {"0": "background", ...} or nnU-Net v2 {"background": 0,
...}), optionally the channels ("modality" or "channel_names") and optionally
explicit case lists ("training" / "test" with "image" and "label" paths).

Every problem is a DataError naming the file. After loading, each image is
brought to the model's patch size (``resize``, centre ``crop``/pad) or, with
``preprocess="patch"``, kept whole (padded up to the patch size where
smaller) for patch sampling; each channel is z-score normalised.

Preprocessed cases go to an on-disk cache (``.npy`` files, images float32,
labels uint8) that is memory-mapped, so a dataset never has to fit in RAM:
``SegDataset`` (fixed-shape, one stacked array) for resize/crop,
``VolumeDataset`` (one array per case) for patch tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from pouw.seg import synthetic
from pouw.seg.spec import ModelSpec

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".tif", ".tiff")
SPLIT_DIRS = {"train": ("imagesTr", "labelsTr", "training"), "test": ("imagesTs", "labelsTs", "test")}
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
CACHE_DIR_NAME = ".pouw-cache"
"""Folder inside a dataset folder that holds its preprocessed, memory-mapped cases."""
CACHE_VERSION = 1
MAX_VOLUME_VOXELS = 1 << 28
"""Largest whole volume a patch task may hold (e.g. 512 x 512 x 1024): bounds a verifier's inference memory."""


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file."""


def _check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, where: str) -> None:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(f"{where}: labels outside 0..{num_classes - 1}")


@dataclass(frozen=True, eq=False)
class SegDataset:
    """Preprocessed images and label maps, all of the model's patch size (resize and crop tasks)."""

    images: torch.Tensor
    """float32 (N, C, *patch), z-score normalised per image and channel (may be memory-mapped)."""
    labels: torch.Tensor
    """uint8 (N, 1, *patch), values in 0..num_classes-1 (other integer types are converted)."""
    names: tuple[str, ...]
    """Case names, in order."""
    num_classes: int
    """Classes including background."""
    source: Path | None = None
    """Cache folder the arrays are mapped from (None: in memory); pickling reopens it instead of copying."""

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise DataError("dataset has no cases")
        if self.images.dtype != torch.float32:
            raise DataError("dataset images must be float32")
        if self.labels.dtype.is_floating_point or self.labels.dtype == torch.bool or self.labels.is_complex():
            raise DataError("dataset labels must be an integer type")
        if self.images.shape[0] != n or self.labels.shape[0] != n:
            raise DataError("dataset images, labels and names differ in count")
        if self.images.shape[2:] != self.labels.shape[2:] or self.labels.shape[1] != 1:
            raise DataError(f"image shape {tuple(self.images.shape)} does not match labels {tuple(self.labels.shape)}")
        for i in range(n):  # case by case: a mapped dataset is never read whole into memory
            if not torch.isfinite(self.images[i]).all():
                raise DataError(f"dataset image {self.names[i]} contains NaN or infinite values")
            _check_labels(self.labels[i], self.num_classes, f"dataset case {self.names[i]}")
        if self.labels.dtype != torch.uint8:
            object.__setattr__(self, "labels", self.labels.to(torch.uint8))

    def __len__(self) -> int:
        return len(self.names)

    def __reduce__(self):
        if self.source is not None:
            return (open_cached_dataset, (self.source,))
        return (SegDataset, (self.images, self.labels, self.names, self.num_classes))

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    def get_shape(self, i: int) -> tuple[int, ...]:
        """Spatial shape of case i."""
        return tuple(self.images.shape[2:])

    def get_case(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (C, *spatial) float32 and label map (1, *spatial) uint8 of case i."""
        return self.images[i], self.labels[i]

    def subset(self, indices: Sequence[int]) -> "SegDataset":
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return SegDataset(self.images[idx], self.labels[idx], tuple(self.names[i] for i in idx.tolist()), self.num_classes)


@dataclass(frozen=True, eq=False)
class VolumeDataset:
    """Whole preprocessed volumes of any size (patch tasks); training samples patches from them."""

    images: tuple[np.ndarray, ...]
    """Per case float32 (C, *spatial), z-score normalised, each side at least the patch (may be memory-mapped)."""
    labels: tuple[np.ndarray, ...]
    """Per case uint8 (*spatial)."""
    foreground: tuple[np.ndarray, ...]
    """Per case int64 flat indices of the voxels with a label > 0 (for foreground-centred patches)."""
    names: tuple[str, ...]
    """Case names, in order."""
    num_classes: int
    """Classes including background."""
    source: Path | None = None
    """Cache folder the arrays are mapped from (None: in memory); pickling reopens it instead of copying."""

    def __post_init__(self) -> None:
        n = len(self.names)
        if n == 0:
            raise DataError("dataset has no cases")
        if not len(self.images) == len(self.labels) == len(self.foreground) == n:
            raise DataError("dataset images, labels and names differ in count")
        chans = {int(im.shape[0]) for im in self.images}
        if len(chans) != 1:
            raise DataError("dataset cases differ in channel count")
        for name, im, lab in zip(self.names, self.images, self.labels):
            if im.dtype != np.float32 or lab.dtype != np.uint8 or tuple(im.shape[1:]) != tuple(lab.shape):
                raise DataError(f"dataset case {name}: need float32 (C, *spatial) and uint8 (*spatial) of one shape")

    def __len__(self) -> int:
        return len(self.names)

    def __reduce__(self):
        if self.source is not None:
            return (open_cached_dataset, (self.source,))
        return (VolumeDataset, (self.images, self.labels, self.foreground, self.names, self.num_classes))

    @property
    def in_channels(self) -> int:
        return int(self.images[0].shape[0])

    def get_shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.labels[i].shape)

    def get_case(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (C, *spatial) float32 and label map (1, *spatial) uint8 of case i (read from the cache now)."""
        return torch.from_numpy(np.array(self.images[i])), torch.from_numpy(np.array(self.labels[i]))[None]

    def subset(self, indices: Sequence[int]) -> "VolumeDataset":
        idx = list(indices)
        return VolumeDataset(tuple(self.images[i] for i in idx), tuple(self.labels[i] for i in idx),
                             tuple(self.foreground[i] for i in idx), tuple(self.names[i] for i in idx),
                             self.num_classes)


Dataset = Union[SegDataset, VolumeDataset]
"""Either dataset kind; training, Dice and verification take both."""


def compute_dataset_digest(ds: Dataset) -> bytes:
    """SHA-256 over names, classes, and each case's shape, image and label bytes; binds checkpoints to the data.

    Streams case by case (a mapped dataset is not read into memory at once)
    and is remembered on the dataset object, which is immutable.
    """
    memo = ds.__dict__.get("_digest_memo")
    if memo is not None:
        return memo
    h = hashlib.sha256(b"pouw/dataset/v2\x00")
    h.update(json.dumps([list(ds.names), ds.num_classes, ds.in_channels]).encode())
    for i in range(len(ds)):
        image, label = ds.get_case(i)
        h.update(json.dumps(list(image.shape)).encode())
        h.update(memoryview(np.ascontiguousarray(image.numpy(), dtype="<f4")).cast("B"))
        h.update(memoryview(np.ascontiguousarray(label.numpy(), dtype=np.uint8)).cast("B"))
    digest = h.digest()
    object.__setattr__(ds, "_digest_memo", digest)
    return digest


# -- reading files -----------------------------------------------------------


def get_suffix(path: Path) -> str | None:
    """The recognised image suffix of `path` (".nii.gz", ".png", ...), or None."""
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


def read_array(path: Path) -> np.ndarray:
    """Read one NIfTI, PNG or TIFF file as a numpy array (native dtype)."""
    suffix = get_suffix(path)
    if suffix is None:
        raise DataError(f"{path}: unsupported file type (use {', '.join(IMAGE_SUFFIXES)})")
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            arr = np.asanyarray(nib.load(str(path)).dataobj)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                arr = np.array(im)
        else:
            import tifffile

            arr = tifffile.imread(str(path))
    except DataError:
        raise
    except Exception as exc:  # every reader has its own error types
        raise DataError(f"{path}: cannot read image file ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: unsupported data type {arr.dtype} (need integer or float voxels)")
    return arr


def to_channel_first(arr: np.ndarray, spatial_dims: int, channels: int, path: Path) -> np.ndarray:
    """Bring an image array to (C, *spatial), accepting the usual storage orders."""
    a = arr
    if spatial_dims == 2:
        if a.ndim == 4 and a.shape[2] == 1:  # NIfTI (H, W, 1, C)
            a = a[:, :, 0, :]
        if a.ndim == 3 and a.shape[-1] == 1 and channels == 1:  # NIfTI (H, W, 1)
            a = a[..., 0]
        if a.ndim == 3 and a.shape[-1] == 4 and channels == 3:  # RGBA PNG: drop alpha
            a = a[..., :3]
        if a.ndim == 2:
            a = a[None]
        elif a.ndim == 3 and a.shape[-1] == channels:
            a = np.moveaxis(a, -1, 0)
        elif a.ndim == 3 and a.shape[0] == channels:
            pass
        else:
            raise DataError(f"{path}: image of shape {arr.shape} is not a 2D image with {channels} channel(s)")
    else:
        if a.ndim == 3:
            a = a[None]
        elif a.ndim == 4 and a.shape[-1] == channels:  # MSD stores channels last
            a = np.moveaxis(a, -1, 0)
        else:
            raise DataError(f"{path}: image of shape {arr.shape} is not a 3D volume with {channels} channel(s)")
    if a.shape[0] != channels:
        raise DataError(f"{path}: image has {a.shape[0]} channel(s), the task expects {channels}")
    return a


def to_label_map(arr: np.ndarray, spatial_dims: int, num_classes: int, path: Path) -> np.ndarray:
    """Check a label array and return it as uint8 (*spatial) (at most 64 classes, see spec.MAX_CLASSES)."""
    a = arr
    while a.ndim > spatial_dims and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != spatial_dims:
        raise DataError(f"{path}: label map of shape {arr.shape} is not {spatial_dims}D with one channel")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError(f"{path}: label map contains NaN or infinite values")
        if not np.array_equal(a, np.round(a)):
            raise DataError(f"{path}: label map has non-integer values")
    values = np.unique(a)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8].tolist())
        raise DataError(f"{path}: label values {shown} are outside the declared classes 0..{num_classes - 1}")
    return a.astype(np.uint8)


# -- dataset.json and case lists --------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What dataset.json declares."""

    root: Path
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    raw: dict


@dataclass(frozen=True)
class Case:
    """One image (one or more channel files) and its label file."""

    name: str
    image_paths: tuple[Path, ...]
    label_path: Path


def read_dataset_info(root: Path | str) -> DatasetInfo:
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: dataset.json is missing")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or "labels" not in raw:
        raise DataError(f"{path}: must be an object with a \"labels\" entry")
    return DatasetInfo(root, _parse_classes(raw["labels"], path), _parse_channels(raw, path), raw)


def _parse_classes(labels: object, path: Path) -> tuple[str, ...]:
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: \"labels\" must be a non-empty object")
    by_id: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2: name -> id
            cid, name = v, k
        elif isinstance(k, str) and k.isdigit():  # MSD: "id" -> name
            cid, name = int(k), str(v)
        else:
            raise DataError(f"{path}: cannot read class entry {k!r}: {v!r} (regions are not supported)")
        if cid in by_id:
            raise DataError(f"{path}: class id {cid} declared twice")
        by_id[cid] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: class ids must be 0..K-1, got {sorted(by_id)}")
    if len(by_id) < 2:
        raise DataError(f"{path}: need background and at least one foreground class")
    return tuple(by_id[i] for i in range(len(by_id)))


def _parse_channels(raw: dict, path: Path) -> tuple[str, ...]:
    chans = raw.get("channel_names", raw.get("modality", {"0": "image"}))
    if not isinstance(chans, dict) or not chans:
        raise DataError(f"{path}: \"channel_names\"/\"modality\" must be a non-empty object")
    try:
        keys = sorted(int(k) for k in chans)
    except ValueError as exc:
        raise DataError(f"{path}: channel keys must be \"0\", \"1\", ...") from exc
    if keys != list(range(len(keys))):
        raise DataError(f"{path}: channel keys must be 0..C-1, got {keys}")
    return tuple(str(chans[str(k)]) for k in keys)


def list_cases(info: DatasetInfo, split: str) -> list[Case]:
    """The cases of a split, from dataset.json lists or by scanning the folders."""
    if split not in SPLIT_DIRS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    img_dir, lab_dir, key = SPLIT_DIRS[split]
    entries = info.raw.get(key)
    if isinstance(entries, list) and entries and all(isinstance(e, dict) for e in entries):
        cases = [_case_from_entry(info, e, lab_dir) for e in entries]
    elif isinstance(entries, list) and entries and all(isinstance(e, str) for e in entries):
        # MSD test lists give images only: labels are looked up in labelsTs.
        cases = [_case_from_entry(info, {"image": e}, lab_dir) for e in entries]
    else:
        cases = _scan_cases(info, info.root / img_dir, info.root / lab_dir)
    if not cases:
        raise DataError(f"{info.root}: the {split} split is empty (no images in {img_dir}/)")
    return cases


def _resolve(info: DatasetInfo, rel: str) -> Path:
    p = (info.root / rel).resolve()
    if not p.is_relative_to(info.root.resolve()):
        raise DataError(f"{info.root / 'dataset.json'}: path {rel!r} points outside the dataset")
    return p


def _case_from_entry(info: DatasetInfo, entry: dict, lab_dir: str) -> Case:
    if "image" not in entry:
        raise DataError(f"{info.root / 'dataset.json'}: case entry {entry!r} has no \"image\"")
    img = _resolve(info, str(entry["image"]))
    suffix = get_suffix(img)
    if suffix is None:
        raise DataError(f"{img}: unsupported file type (use {', '.join(IMAGE_SUFFIXES)})")
    stem = img.name[: -len(suffix)]
    label = _resolve(info, str(entry["label"])) if "label" in entry else info.root / lab_dir / img.name
    if img.is_file():
        paths: tuple[Path, ...] = (img,)
    else:
        # nnU-Net v1 conversions keep the MSD names but split channels into _0000 files.
        paths = tuple(img.parent / f"{stem}_{c:04d}{suffix}" for c in range(len(info.channel_names)))
        if not all(p.is_file() for p in paths):
            raise DataError(f"{img}: image file is missing")
    if not label.is_file():
        raise DataError(f"{label}: label file is missing for case {stem}")
    return Case(stem, paths, label)


def _scan_cases(info: DatasetInfo, img_dir: Path, lab_dir: Path) -> list[Case]:
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: folder is missing")
    groups: dict[str, dict[int, Path]] = {}
    suffixes: dict[str, str] = {}
    for p in sorted(img_dir.iterdir()):
        suffix = get_suffix(p)
        if suffix is None or p.name.startswith("."):
            continue
        stem = p.name[: -len(suffix)]
        m = _CHANNEL_RE.match(stem)
        case, ch = (m["case"], int(m["ch"])) if m else (stem, 0)
        if ch in groups.setdefault(case, {}):
            raise DataError(f"{p}: case {case} has channel {ch} twice")
        groups[case][ch] = p
        suffixes[case] = suffix
    cases = []
    n_ch = len(info.channel_names)
    for case, chans in groups.items():
        if len(chans) == 1 and n_ch > 1:
            paths = (next(iter(chans.values())),)  # one multi-channel file
        else:
            if sorted(chans) != list(range(n_ch)):
                raise DataError(f"{img_dir}: case {case} has channel files {sorted(chans)}, expected 0..{n_ch - 1}")
            paths = tuple(chans[c] for c in range(n_ch))
        label = _find_label(lab_dir, case, suffixes[case])
        cases.append(Case(case, paths, label))
    return cases


def _find_label(lab_dir: Path, case: str, suffix: str) -> Path:
    candidates = [lab_dir / f"{case}{suffix}"] + [lab_dir / f"{case}{s}" for s in IMAGE_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"{lab_dir / (case + suffix)}: label file is missing for case {case}")


# -- preprocessing ------------------------------------------------------------


def compute_normalised(image: np.ndarray) -> np.ndarray:
    """Per-channel z-score in float64, returned as float32 (flat channels become 0)."""
    x = image.astype(np.float64)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    return ((x - mean) / np.maximum(std, 1e-8)).astype(np.float32)


def compute_resized(image: np.ndarray, label: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate image (linear) and label (nearest) to `patch`."""
    if tuple(image.shape[1:]) == tuple(patch):
        return image.astype(np.float32), label
    mode = "bilinear" if len(patch) == 2 else "trilinear"
    img = F.interpolate(torch.from_numpy(image.astype(np.float32))[None], size=patch, mode=mode, align_corners=False)
    lab = F.interpolate(torch.from_numpy(label.astype(np.float32))[None, None], size=patch, mode="nearest-exact")
    return img[0].numpy(), lab[0, 0].numpy().round().astype(np.uint8)


def compute_cropped(image: np.ndarray, label: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Centre crop, or pad (image with its minimum, label with background), to `patch`."""
    img = image.astype(np.float32)
    lab = label
    pad_img = []
    pad_lab = []
    slices = [slice(None)]
    for size, want in zip(image.shape[1:], patch):
        if size >= want:
            start = (size - want) // 2
            slices.append(slice(start, start + want))
            pad_lab.append((0, 0))
        else:
            slices.append(slice(None))
            before = (want - size) // 2
            pad_lab.append((before, want - size - before))
    img = img[tuple(slices)]
    lab = lab[tuple(slices[1:])]
    pad_img = [(0, 0)] + pad_lab
    fill = float(img.min()) if img.size else 0.0
    img = np.pad(img, pad_img, mode="constant", constant_values=fill)
    lab = np.pad(lab, pad_lab, mode="constant", constant_values=0)
    return img, lab


def compute_padded(image: np.ndarray, label: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Centre pad (image with its minimum, label with background) each side shorter than `patch`; never crop."""
    target = tuple(max(size, want) for size, want in zip(image.shape[1:], patch))
    return compute_cropped(image, label, target)


def preprocess_case(image: np.ndarray, label: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(C, *spatial) image + label map -> normalised float32 image and uint8 label.

    resize/crop: brought to the patch size; patch: kept whole, padded up to
    the patch size where smaller.
    """
    patch = tuple(spec.patch_size)
    if spec.preprocess == "crop":
        img, lab = compute_cropped(image, label, patch)
    elif spec.preprocess == "patch":
        img, lab = compute_padded(image, label, patch)
    else:
        img, lab = compute_resized(image, label, patch)
    return compute_normalised(img), lab.astype(np.uint8)


def load_case(case: Case, info: DatasetInfo, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    n_ch = len(info.channel_names)
    dims = spec.spatial_dims
    if len(case.image_paths) == 1:
        image = to_channel_first(read_array(case.image_paths[0]), dims, n_ch, case.image_paths[0])
    else:
        parts = [to_channel_first(read_array(p), dims, 1, p) for p in case.image_paths]
        for p, part in zip(case.image_paths[1:], parts[1:]):
            if part.shape != parts[0].shape:
                raise DataError(f"{p}: channel shape {part.shape[1:]} differs from {parts[0].shape[1:]}")
        image = np.concatenate(parts, axis=0)
    if not np.isfinite(image).all():
        raise DataError(f"{case.image_paths[0]}: image contains NaN or infinite values")
    label = to_label_map(read_array(case.label_path), dims, len(info.class_names), case.label_path)
    if tuple(image.shape[1:]) != tuple(label.shape):
        raise DataError(
            f"{case.label_path}: label shape {tuple(label.shape)} does not match image shape {tuple(image.shape[1:])}"
        )
    return preprocess_case(image, label, spec)


def check_info_matches(info: DatasetInfo, spec: ModelSpec) -> None:
    path = info.root / "dataset.json"
    if len(info.class_names) != spec.num_classes:
        raise DataError(f"{path}: declares {len(info.class_names)} classes, the task model has {spec.num_classes}")
    if len(info.channel_names) != spec.in_channels:
        raise DataError(f"{path}: declares {len(info.channel_names)} channel(s), the task model has {spec.in_channels}")


def load_dataset(dataset_dir: Path | str, split: str, spec: ModelSpec, cache_dir: Path | str | None = None) -> Dataset:
    """Load, validate and preprocess one split ("train" or "test") of a dataset folder.

    The preprocessed cases are written once to a cache folder and
    memory-mapped from there (default ``DATASET/.pouw-cache/<split>-<key>``,
    the key binding the spec and every source file's name, size and mtime);
    when the folder cannot be written the cases stay in memory. Returns a
    SegDataset for resize/crop tasks and a VolumeDataset for patch tasks.
    """
    info = read_dataset_info(dataset_dir)
    check_info_matches(info, spec)
    cases = list_cases(info, split)
    root = Path(cache_dir) if cache_dir is not None else info.root / CACHE_DIR_NAME
    folder = root / f"{split}-{compute_cache_key(info, split, spec, cases)[:24]}"
    if (folder / "meta.json").is_file():
        try:
            return open_cached_dataset(folder)
        except (DataError, OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache is rebuilt from the source files
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=root))
    except OSError:
        return _load_in_memory(cases, info, spec)
    try:
        _write_cache(tmp, cases, info, spec)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process cached it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_cached_dataset(folder)


def compute_cache_key(info: DatasetInfo, split: str, spec: ModelSpec, cases: Sequence[Case]) -> str:
    """Hex key of a split's cache: the spec, the cache format and each source file's name, size and mtime."""
    from pouw.encoding import encode

    h = hashlib.sha256(b"pouw/data-cache/v%d\x00" % CACHE_VERSION + encode(spec) + split.encode())
    for case in cases:
        for path in (*case.image_paths, case.label_path):
            st = path.stat()
            h.update(json.dumps([case.name, str(path.relative_to(info.root)), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


def _load_in_memory(cases: Sequence[Case], info: DatasetInfo, spec: ModelSpec) -> Dataset:
    loaded = [load_case(c, info, spec) for c in cases]
    names = tuple(c.name for c in cases)
    if spec.preprocess == "patch":
        return make_volume_dataset([img for img, _ in loaded], [lab for _, lab in loaded], names, spec.num_classes)
    return SegDataset(torch.from_numpy(np.stack([img for img, _ in loaded])),
                      torch.from_numpy(np.stack([lab[None] for _, lab in loaded])), names, spec.num_classes)


def _write_cache(folder: Path, cases: Sequence[Case], info: DatasetInfo, spec: ModelSpec) -> None:
    """Preprocess case by case into `folder` (never more than one case in memory)."""
    names = [c.name for c in cases]
    meta = {"version": CACHE_VERSION, "kind": "volumes" if spec.preprocess == "patch" else "stack",
            "names": names, "num_classes": spec.num_classes}
    if meta["kind"] == "stack":
        n, patch = len(cases), tuple(spec.patch_size)
        images = np.lib.format.open_memmap(folder / "images.npy", "w+", np.float32, (n, spec.in_channels, *patch))
        labels = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.uint8, (n, 1, *patch))
        for i, case in enumerate(cases):
            images[i], labels[i, 0] = load_case(case, info, spec)
        images.flush()
        labels.flush()
        del images, labels
    else:
        for i, case in enumerate(cases):
            image, label = load_case(case, info, spec)
            if label.size > MAX_VOLUME_VOXELS:
                raise DataError(f"{case.label_path}: {label.size} voxels, more than the {MAX_VOLUME_VOXELS} a case may have")
            np.save(folder / f"{i:06d}-image.npy", image)
            np.save(folder / f"{i:06d}-label.npy", label)
            np.save(folder / f"{i:06d}-fg.npy", compute_foreground(label))
    (folder / "meta.json").write_text(json.dumps(meta))


def open_cached_dataset(folder: Path | str) -> Dataset:
    """Memory-map a cache folder written by load_dataset (copy-on-write: nothing is written back)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise DataError(f"{folder}: cache of another version")
    names, k = tuple(meta["names"]), int(meta["num_classes"])
    if meta["kind"] == "stack":
        images = np.load(folder / "images.npy", mmap_mode="c")
        labels = np.load(folder / "labels.npy", mmap_mode="c")
        return SegDataset(torch.from_numpy(images), torch.from_numpy(labels), names, k, source=folder)
    n = len(names)
    return VolumeDataset(
        tuple(np.load(folder / f"{i:06d}-image.npy", mmap_mode="r") for i in range(n)),
        tuple(np.load(folder / f"{i:06d}-label.npy", mmap_mode="r") for i in range(n)),
        tuple(np.load(folder / f"{i:06d}-fg.npy", mmap_mode="r") for i in range(n)),
        names, k, source=folder,
    )


def compute_foreground(label: np.ndarray) -> np.ndarray:
    """Flat int64 indices of the voxels labelled > 0."""
    return np.flatnonzero(np.asarray(label).reshape(-1)).astype(np.int64)


def make_volume_dataset(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], names: Sequence[str],
                        num_classes: int) -> VolumeDataset:
    """An in-memory VolumeDataset from preprocessed cases (checks labels, finds the foreground)."""
    ims = tuple(np.ascontiguousarray(im, dtype=np.float32) for im in images)
    labs = []
    for name, im, lab in zip(names, ims, labels):
        if not np.isfinite(im).all():
            raise DataError(f"dataset image {name} contains NaN or infinite values")
        _check_labels(np.asarray(lab), num_classes, f"dataset case {name}")
        labs.append(np.ascontiguousarray(lab, dtype=np.uint8))
    return VolumeDataset(ims, tuple(labs), tuple(compute_foreground(lab) for lab in labs), tuple(names), num_classes)


def validate_dataset_dir(dataset_dir: Path | str, spatial_dims: int | None = None) -> DatasetInfo:
    """Check both splits without a model spec (used before packing a task).

    Reads every file, checks label values and image/label shapes. The spatial
    dimensionality is taken from the first image when not given.
    """
    info = read_dataset_info(dataset_dir)
    n_ch = len(info.channel_names)
    for split in ("train", "test"):
        for case in list_cases(info, split):
            first = read_array(case.image_paths[0])
            dims = spatial_dims or _guess_spatial_dims(first, n_ch if len(case.image_paths) == 1 else 1)
            chans = [to_channel_first(first, dims, n_ch if len(case.image_paths) == 1 else 1, case.image_paths[0])]
            for p in case.image_paths[1:]:
                chans.append(to_channel_first(read_array(p), dims, 1, p))
            if not all(np.isfinite(c).all() for c in chans):
                raise DataError(f"{case.image_paths[0]}: image contains NaN or infinite values")
            label = to_label_map(read_array(case.label_path), dims, len(info.class_names), case.label_path)
            if tuple(chans[0].shape[1:]) != tuple(label.shape):
                raise DataError(
                    f"{case.label_path}: label shape {tuple(label.shape)} does not match image shape {tuple(chans[0].shape[1:])}"
                )
    return info


def _guess_spatial_dims(arr: np.ndarray, channels: int) -> int:
    # (H, W), (H, W, 1) and (H, W, C<=4) are 2D; anything else is a volume.
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] <= max(4, channels)):
        return 2
    return 3


# -- synthetic data -------------------------------------------------------------
# The generator is pouw.seg.synthetic (a consensus rule: SHA-256 counter-mode
# randomness, integer painting); these wrappers give it the dataset shapes.


def make_synthetic_case(seed: bytes, index: int, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """One raw synthetic image (C, *patch), float32, and its int64 label map."""
    try:
        return synthetic.make_synthetic_case(seed, index, spec)
    except synthetic.SyntheticError as exc:
        raise DataError(str(exc)) from None


def synthetic_dataset(seed: bytes, count: int, spec: ModelSpec) -> SegDataset:
    """`count` synthetic cases, deterministic from `seed`, normalised exactly (no files needed)."""
    if not isinstance(seed, (bytes, bytearray)) or len(seed) == 0:
        raise DataError("synthetic dataset seed must be non-empty bytes")
    if count < 1:
        raise DataError("synthetic dataset needs at least one case")
    cases = [synthetic.make_normalised_case(bytes(seed), i, spec) for i in range(count)]
    images = np.stack([img for img, _ in cases])
    labels = np.stack([lab[None] for _, lab in cases])
    names = tuple(f"synthetic_{i:04d}" for i in range(count))
    return SegDataset(torch.from_numpy(images), torch.from_numpy(labels), names, spec.num_classes)


# -- writing dataset folders -----------------------------------------------------


def write_array(path: Path, arr: np.ndarray) -> None:
    """Write an array as NIfTI (identity affine), PNG or TIFF by suffix."""
    suffix = get_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".nii", ".nii.gz"):
        import nibabel as nib

        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    elif suffix == ".png":
        from PIL import Image

        Image.fromarray(arr).save(path)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(str(path), arr)
    else:
        raise DataError(f"{path}: unsupported file type")


def write_dataset_dir(
    out_dir: Path | str,
    train: Iterable[tuple[str, np.ndarray, np.ndarray]],
    test: Iterable[tuple[str, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    channel_names: Sequence[str] = ("image",),
    suffix: str = ".nii.gz",
    name: str = "dataset",
) -> Path:
    """Write (name, image (C, *spatial), label) cases in the MSD/nnU-Net layout.

    Images are stored channels-last for multi-channel NIfTI/PNG and as
    separate ``_0000`` files for TIFF; labels as uint8 (uint16 beyond 255 classes).
    """
    out = Path(out_dir)
    counts = {}
    for split, cases in (("train", train), ("test", test)):
        img_dir, lab_dir, _ = SPLIT_DIRS[split]
        n = 0
        for case, image, label in cases:
            image = np.asarray(image)
            if suffix == ".png" and image.dtype != np.uint8:
                raise DataError("PNG images must be uint8; scale them first")
            if image.shape[0] == 1:
                write_array(out / img_dir / f"{case}{suffix}", image[0])
            elif suffix in (".tif", ".tiff"):
                for c in range(image.shape[0]):
                    write_array(out / img_dir / f"{case}_{c:04d}{suffix}", image[c])
            else:
                write_array(out / img_dir / f"{case}{suffix}", np.moveaxis(image, 0, -1))
            write_array(out / lab_dir / f"{case}{suffix}", np.asarray(label).astype(np.uint8 if len(class_names) <= 256 else np.uint16))
            n += 1
        counts[split] = n
    meta = {
        "name": name,
        "channel_names": {str(i): c for i, c in enumerate(channel_names)},
        "labels": {str(i): c for i, c in enumerate(class_names)},
        "numTraining": counts["train"],
        "numTest": counts["test"],
        "file_ending": suffix,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def write_synthetic_dataset_dir(out_dir: Path | str, seed: bytes, n_train: int, n_test: int, spec: ModelSpec,
                                suffix: str = ".nii.gz") -> Path:
    """A synthetic dataset folder (raw, unnormalised intensities) for tests, examples and the devnet."""
    def cases(tag: bytes, n: int, prefix: str):
        for i in range(n):
            img, lab = make_synthetic_case(seed + tag, i, spec)
            if suffix == ".png":
                # Raw intensities lie around 0..2.5 with noise; map 0..2.5 to 0..250.
                img = (np.clip(img, 0.0, 2.55) * 100).round().astype(np.uint8)
            yield f"{prefix}_{i:03d}", img, lab

    return write_dataset_dir(
        out_dir, cases(b"/train", n_train, "train"), cases(b"/test", n_test, "test"),
        ["background"] + [f"class{i}" for i in range(1, spec.num_classes)],
        [f"ch{c}" for c in range(spec.in_channels)], suffix, name="synthetic",
    )
