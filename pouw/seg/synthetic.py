"""The synthetic segmentation scenes of the standing task: a consensus generator.

Every full node regenerates the standing task's images to recompute a
block's Dice, so a case must come out bit for bit the same on every
machine and with every version of numpy, torch or MONAI. Hence:

* Every random number is a 64-bit word of SHA-256 in counter mode
  (`compute_words`); integers are drawn from words by integer arithmetic
  only (`draw_int`). No library RNG is used.
* Scenes are painted with integer arithmetic (int64, far from overflow for
  any valid ModelSpec), so the raw image is an exact integer array. The raw
  float image is that integer times 2**-20, exact in float32; the normalised
  image needs one correctly rounded sqrt per channel and one division per
  voxel. No exp, log, trigonometry, library blur or float reduction whose
  order could vary. Neither torch nor MONAI is imported.

The rules, precise enough for another implementation, are in
docs/useful_work.md §9. Changing any constant or step
below changes the standing task's data, i.e. forks the chain: such a change
must be deliberate and come with a new DOMAIN version.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from pouw.seg.spec import ModelSpec

DOMAIN = b"pouw/synthetic/v2\x00"
"""Domain tag of every SHA-256 block the generator draws."""
STREAM_SCENE = 0
"""Stream of the scene draws (levels, gradients, objects, noise amplitudes)."""
STREAM_NOISE = 1
"""Stream of channel c's per-voxel noise is STREAM_NOISE + c."""

UNIT_SHIFT = 20
"""Intensity 1.0 is 2**UNIT_SHIFT in the final integer image (raw float = integer / 2**20)."""
NOISE_AMPLITUDE = (2, 8)
"""Per image and channel, noise = a * IH(w), a drawn in this range: sigma = a * 0.0361 intensity (0.07..0.29)."""
CONTRAST = (256, 1023)
"""Object contrast per channel, in 1/1024 of an intensity unit (0.25 .. 1.0); classes take bands of it."""
LEVEL_MAX = 1024
"""Background level per channel in 0..LEVEL_MAX / 1024."""
GRADIENT_DIVISOR = 4
"""The background ramp along each axis stays within +-1/GRADIENT_DIVISOR intensity."""
RADIUS_DIVISOR = 4
"""Largest object radius is max(RADIUS_MIN + 1, min(patch) // RADIUS_DIVISOR)."""
RADIUS_MIN = 2
"""Smallest object radius (the small ones are the hard ones)."""
DENSITY = (4, 2)
"""Objects asked for per image: V // (4 * r_max**d) .. V // (2 * r_max**d), at least one per foreground class."""
PLACEMENT_ATTEMPTS = 16
"""Candidates drawn per object; the first that overlaps no placed object is kept, else none."""
GAP = 1
"""Least empty voxels between the bounding boxes of two objects (so the blur does not merge them)."""
STRIPE_PERIOD = (2, 4)
"""Half-period of the stripe texture, in voxels."""

ELLIPSE, BOX, CROSS, DIAMOND = range(4)
FAMILIES = (ELLIPSE, BOX, CROSS, DIAMOND)
"""Shape families; every object draws one (shape is a nuisance: classes differ by contrast band)."""


class SyntheticError(ValueError):
    """A synthetic case that cannot be generated (bad seed or index)."""


# -- randomness ---------------------------------------------------------------------


def _prefix(seed: bytes, index: int, stream: int) -> bytes:
    """DOMAIN || seed || u64be(index) || u8(stream), then u64be(counter) per block.

    Every field after the seed has a fixed length, so the message is unambiguous.
    """
    if not isinstance(seed, (bytes, bytearray)) or len(seed) == 0:
        raise SyntheticError("synthetic seed must be non-empty bytes")
    if not 0 <= index < 2**64:
        raise SyntheticError(f"synthetic case index {index} outside 0..2**64-1")
    return DOMAIN + bytes(seed) + index.to_bytes(8, "big") + stream.to_bytes(1, "big")


def compute_words(seed: bytes, index: int, stream: int, count: int) -> np.ndarray:
    """Words 0..count-1 of a stream: block k gives words 4k..4k+3 (big-endian u64s of its digest)."""
    base = hashlib.sha256(_prefix(seed, index, stream))
    blocks = (count + 3) // 4
    out = bytearray(32 * blocks)
    for k in range(blocks):
        h = base.copy()
        h.update(k.to_bytes(8, "big"))
        out[32 * k: 32 * k + 32] = h.digest()
    return np.frombuffer(bytes(out), dtype=">u8")[:count].astype(np.uint64)


class WordStream:
    """Sequential 64-bit words of one stream (the scene draws)."""

    def __init__(self, seed: bytes, index: int, stream: int) -> None:
        self._base = hashlib.sha256(_prefix(seed, index, stream))
        self._counter = 0
        self._words: list[int] = []

    def next_word(self) -> int:
        if not self._words:
            h = self._base.copy()
            h.update(self._counter.to_bytes(8, "big"))
            d = h.digest()
            self._words = [int.from_bytes(d[i: i + 8], "big") for i in range(24, -1, -8)]
            self._counter += 1
        return self._words.pop()

    def draw_int(self, lo: int, hi: int) -> int:
        """An integer in lo..hi (inclusive) from the next word."""
        return draw_int(self.next_word(), lo, hi)


def draw_int(word: int, lo: int, hi: int) -> int:
    """lo + floor(word * (hi - lo + 1) / 2**64): multiply-shift, no rejection (bias < 2**-40 here)."""
    if hi < lo:
        raise SyntheticError(f"empty range {lo}..{hi}")
    return lo + ((word * (hi - lo + 1)) >> 64)


def compute_irwin_hall(words: np.ndarray) -> np.ndarray:
    """Sum of the four 16-bit fields of each word, centred: int64 in -131070..131070 (sigma ~ 37837.7)."""
    w = words.astype(np.uint64)
    mask = np.uint64(0xFFFF)
    total = (w & mask) + ((w >> np.uint64(16)) & mask) + ((w >> np.uint64(32)) & mask) + (w >> np.uint64(48))
    return total.astype(np.int64) - 2 * 0xFFFF


# -- scene ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene."""

    label: int
    """Class written to the label map (0: a dark distractor of the background class)."""
    family: int
    """ELLIPSE, BOX, CROSS or DIAMOND."""
    centre: tuple[int, ...]
    """Voxel index of the centre, per axis."""
    radii: tuple[int, ...]
    """Half-extent per axis, in voxels."""
    contrast: tuple[int, ...]
    """Intensity added per channel, in 1/1024 units (negative: a dark distractor)."""
    stripe_axis: int
    """Axis of the stripe texture, or -1 for a flat object."""
    stripe_half: int
    """Half-period of the stripes in voxels (0 when flat)."""
    stripe_phase: int
    """Offset of the stripes, 0..2*stripe_half-1."""


@dataclass(frozen=True)
class Scene:
    """Everything drawn from the scene stream for one case."""

    levels: tuple[int, ...]
    """Background level per channel, 1/1024 units."""
    gradients: tuple[tuple[int, ...], ...]
    """Background ramp per channel and axis."""
    objects: tuple[SceneObject, ...]
    """The placed objects; their bounding boxes, grown by GAP, are disjoint."""
    noise: tuple[int, ...]
    """Noise amplitude a per channel."""


def get_radius_range(patch: tuple[int, ...]) -> tuple[int, int]:
    """(r_min, r_max) of objects for a patch size."""
    return RADIUS_MIN, max(RADIUS_MIN + 1, min(patch) // RADIUS_DIVISOR)


def get_object_count_range(patch: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    """(least, most) objects per image: scale-free density, at least one per foreground class."""
    _, r_max = get_radius_range(patch)
    volume = math.prod(patch)
    unit = r_max ** len(patch)
    lo = max(num_classes - 1, volume // (DENSITY[0] * unit))
    hi = max(lo, volume // (DENSITY[1] * unit))
    return lo, hi


def get_gradient_max(side: int) -> int:
    """Largest |g| along an axis of `side` voxels (ramp g * (2x - side + 1), 1/1024 units)."""
    return 1024 // (GRADIENT_DIVISOR * side)


def draw_object(rs: WordStream, label: int, patch: tuple[int, ...], channels: int, num_classes: int) -> SceneObject:
    """One object of class `label` (0: a dark distractor); draws in the documented order."""
    dims = len(patch)
    r_min, r_max = get_radius_range(patch)
    family = FAMILIES[rs.draw_int(0, len(FAMILIES) - 1)]
    r = rs.draw_int(r_min, r_max)
    radii = tuple(rs.draw_int(max(1, (2 * r) // 3), r) for _ in range(dims))
    # The whole object lies inside the image (get_radius_range keeps 2r+1 <= every side).
    centre = tuple(rs.draw_int(ri, s - 1 - ri) for ri, s in zip(radii, patch))
    lo, hi = get_contrast_band(label, num_classes)
    sign = -1 if label == 0 else 1
    contrast = tuple(sign * rs.draw_int(lo, hi) for _ in range(channels))
    striped = rs.draw_int(0, 1)
    if striped:
        axis = rs.draw_int(0, dims - 1)
        half = rs.draw_int(*STRIPE_PERIOD)
        phase = rs.draw_int(0, 2 * half - 1)
    else:
        axis, half, phase = -1, 0, 0
    return SceneObject(label, family, centre, radii, contrast, axis, half, phase)


def get_contrast_band(label: int, num_classes: int) -> tuple[int, int]:
    """Contrast range of a class: CONTRAST cut into 2(K-1)-1 equal parts, class k takes part 2(k-1).

    The parts between classes stay empty, so a class is told by its contrast
    relative to the local background; distractors (class 0) take the whole range, darkening.
    """
    lo, hi = CONTRAST
    if label == 0:
        return lo, hi
    width = (hi - lo + 1) // (2 * (num_classes - 1) - 1)
    start = lo + 2 * (label - 1) * width
    return start, start + width - 1


def draw_scene(seed: bytes, index: int, spec: ModelSpec) -> Scene:
    """All scene draws of case `index`, from stream STREAM_SCENE, in the documented order."""
    patch = tuple(spec.patch_size)
    rs = WordStream(seed, index, STREAM_SCENE)
    levels, gradients = [], []
    for _ in range(spec.in_channels):
        levels.append(rs.draw_int(0, LEVEL_MAX))
        gradients.append(tuple(rs.draw_int(-get_gradient_max(s), get_gradient_max(s)) for s in patch))
    lo, hi = get_object_count_range(patch, spec.num_classes)
    count = rs.draw_int(lo, hi)
    forced = spec.num_classes - 1
    labels = list(range(1, forced + 1)) + [rs.draw_int(0, spec.num_classes - 1) for _ in range(count - forced)]
    objects: list[SceneObject] = []
    for label in labels:
        for _ in range(PLACEMENT_ATTEMPTS):
            obj = draw_object(rs, label, patch, spec.in_channels, spec.num_classes)
            if not any(is_overlapping(obj, other) for other in objects):
                objects.append(obj)
                break
    noise = tuple(rs.draw_int(*NOISE_AMPLITUDE) for _ in range(spec.in_channels))
    return Scene(tuple(levels), tuple(gradients), tuple(objects), noise)


def is_overlapping(a: SceneObject, b: SceneObject) -> bool:
    """Whether the bounding boxes of two objects, grown by GAP voxels, meet on every axis."""
    return all(abs(ca - cb) <= ra + rb + GAP for ca, cb, ra, rb in zip(a.centre, b.centre, a.radii, b.radii))


# -- painting --------------------------------------------------------------------------


def compute_shape_mask(obj: SceneObject, offsets: list[np.ndarray]) -> np.ndarray:
    """Which voxels of a box (given as broadcast per-axis offsets from the centre) the object covers."""
    r = obj.radii
    if obj.family == BOX:
        return _all(np.abs(o) <= ri for o, ri in zip(offsets, r))
    if obj.family == DIAMOND:
        # sum |d_i| / r_i <= 1, times prod r.
        full = math.prod(r)
        return sum(np.abs(o) * (full // ri) for o, ri in zip(offsets, r)) <= full
    if obj.family == CROSS:
        # One bar per axis, of half-width t = max(1, min(r) // 3).
        t = max(1, min(r) // 3)
        inside = _all(np.abs(o) <= ri for o, ri in zip(offsets, r))
        wide = sum((np.abs(o) > t).astype(np.int64) for o in offsets)
        return inside & (wide <= 1)
    # ELLIPSE: sum d_i^2 / r_i^2 <= 1, times prod r_j^2.
    full = math.prod(ri * ri for ri in r)
    return sum(o * o * (full // (ri * ri)) for o, ri in zip(offsets, r)) <= full


def _all(parts) -> np.ndarray:
    out = None
    for p in parts:
        out = p if out is None else out & p
    return out


def compute_stripes(obj: SceneObject, offsets: list[np.ndarray]) -> np.ndarray | int:
    """1 where the stripe texture halves the contrast, else 0 (plain 0 for a flat object)."""
    if obj.stripe_axis < 0:
        return 0
    # Offsets are >= -radius; shift by the radius so floor division sees non-negative numbers.
    o = offsets[obj.stripe_axis] + obj.radii[obj.stripe_axis] + obj.stripe_phase
    return (o // obj.stripe_half) % 2


def paint_scene(scene: Scene, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(clean int64 image (C, *patch) in 1/1024 units, int64 label map): background ramp plus objects."""
    dims = len(patch)
    grids = np.indices(patch, dtype=np.int64)
    clean = np.empty((len(scene.levels), *patch), dtype=np.int64)
    for c, (level, gradient) in enumerate(zip(scene.levels, scene.gradients)):
        clean[c] = level + sum(g * (2 * grids[i] - (patch[i] - 1)) for i, g in enumerate(gradient))
    label = np.zeros(patch, dtype=np.int64)
    for obj in scene.objects:
        box = tuple(slice(ci - ri, ci + ri + 1) for ci, ri in zip(obj.centre, obj.radii))
        offsets = [
            np.arange(-ri, ri + 1, dtype=np.int64).reshape([-1 if j == i else 1 for j in range(dims)])
            for i, ri in enumerate(obj.radii)
        ]
        mask = np.broadcast_to(compute_shape_mask(obj, offsets), tuple(2 * ri + 1 for ri in obj.radii))
        stripes = np.broadcast_to(compute_stripes(obj, offsets), mask.shape)
        for c, k in enumerate(obj.contrast):
            half = abs(k) // 2 * (1 if k >= 0 else -1)  # stripes halve the contrast, rounding toward 0
            clean[c][box] += np.where(mask, k - stripes * half, 0)
        label[box] = np.where(mask, obj.label, label[box])
    return clean, label


def compute_blurred(clean: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] along every spatial axis, edge voxels repeated; scales by 4**dims."""
    out = clean
    for axis in range(1, clean.ndim):
        n = out.shape[axis]
        prev = np.take(out, [0] + list(range(n - 1)), axis=axis)
        nxt = np.take(out, list(range(1, n)) + [n - 1], axis=axis)
        out = prev + 2 * out + nxt
    return out


def make_integer_case(seed: bytes, index: int, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """(int64 image (C, *patch), intensity 1.0 = 2**UNIT_SHIFT; int64 label map): the exact case."""
    patch = tuple(spec.patch_size)
    dims = len(patch)
    scene = draw_scene(seed, index, spec)
    clean, label = paint_scene(scene, patch)
    # 1/1024 units, times 4**dims by the blur, times this, reach 2**UNIT_SHIFT per intensity.
    scale = 1 << (UNIT_SHIFT - 10 - 2 * dims)
    image = compute_blurred(clean) * scale
    voxels = math.prod(patch)
    for c in range(spec.in_channels):
        noise = compute_irwin_hall(compute_words(seed, index, STREAM_NOISE + c, voxels)).reshape(patch)
        image[c] += scene.noise[c] * noise
    return image, label


def compute_normalised_exact(image: np.ndarray) -> np.ndarray:
    """Per-channel z-score of an int64 image: (N*x - S1) / sqrt(N*S2 - S1**2), float64 then float32.

    S1, S2 and the radicand are exact integers; int->float, sqrt and division
    are correctly rounded, so the result is fixed by IEEE-754. A flat channel is 0.
    """
    out = np.zeros(image.shape, dtype=np.float32)
    n = math.prod(image.shape[1:])
    for c in range(image.shape[0]):
        x = image[c].reshape(-1, image.shape[-1])
        s1 = int(x.sum())
        s2 = sum(int(v) for v in (x * x).sum(axis=1))  # rows stay far below 2**63
        radicand = n * s2 - s1 * s1
        if radicand > 0:
            out[c] = ((n * image[c] - s1).astype(np.float64) / math.sqrt(float(radicand))).astype(np.float32)
    return out


def make_synthetic_case(seed: bytes, index: int, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """One raw case: float32 image (C, *patch) = integer image / 2**20 (exact), int64 label map."""
    image, label = make_integer_case(seed, index, spec)
    return (image.astype(np.float64) / float(1 << UNIT_SHIFT)).astype(np.float32), label


def make_normalised_case(seed: bytes, index: int, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """One case as the standing task trains on it: z-scored float32 image, int64 label map."""
    image, label = make_integer_case(seed, index, spec)
    return compute_normalised_exact(image), label


__all__ = [
    "DOMAIN", "SyntheticError", "compute_words", "draw_int", "compute_irwin_hall",
    "draw_scene", "paint_scene", "compute_blurred", "make_integer_case", "compute_normalised_exact",
    "make_synthetic_case", "make_normalised_case",
]
