"""Tiled inference shared by every model (``InferenceMixin``) and ``sr-arch infer``.

An LR image is cut into equally sized, overlapping tiles; tiles are run through the network in
batches, and the outputs are put back together with weights that ramp linearly across the middle of
each overlap (pixels next to a tile edge, which lack context, get ~0 weight), so that no seam shows.
``tile_size: auto`` resolves the tile side once, on the first image:

* CPU: the **fastest** tile (``fastest_tile_size``). The forward is timed on crops of the image at a few small
  probe sides, a cost model ``a + b * area + c * area**2`` is fitted (a: per-call overhead; window attention
  and convolutions are linear in the area, ESRT's band attention quadratic), and every candidate side, the
  whole image included, is scored by its number of tiles (with the overlap) times the predicted time per
  tile. With ``max_memory`` only tiles that fit it are candidates.
* CUDA: the largest tile whose forward pass fits ``max_memory`` (default: the free device memory), from peak
  memory measured on three small probe tiles (the allocator's peak; on CPU the bytes of live tensors,
  tracked by ``PeakMemoryTracker``): on a GPU larger tiles are faster as long as they fit.

Option block (top level ``tile:`` like HAT's official files, or ``val.tile:``)::

    tile: {tile_size: 256, tile_pad: 32, batch_size: 4}   # tile_pad = overlap, LR pixels
    tile: {tile_size: auto}                                # CPU: fastest tile; CUDA: largest that fits
    tile: {tile_size: auto, max_memory: 8GB}
"""
from __future__ import annotations

import logging
import math
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: network forward on a (N, C, h, w) LR batch -> (N, C', s*h, s*w); padding is the caller's business
Forward = Callable[[Tensor], Tensor]

_SIZE_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
               'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40, 'K': 2**10, 'M': 2**20, 'G': 2**30}


def format_size(num_bytes: float) -> str:
    """``512 B``, ``1.5 KiB``, ``64 MiB``, ``2.0 GiB``."""
    for unit, factor in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
        if num_bytes >= factor:
            value = num_bytes / factor
            return f'{value:.1f} {unit}' if value < 10 else f'{value:.0f} {unit}'
    return f'{num_bytes:.0f} B'


def parse_memory_size(value: int | float | str, key: str = 'max_memory') -> int:
    """``8GB`` / ``512MiB`` / ``1.5G`` / a number of bytes -> bytes. Raises ValueError naming ``key``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f'{key} must be positive, got {value!r}')
        return int(value)
    match = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*', str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"{key} must be a positive size such as 8GB, 512MiB or a number of bytes, got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class TileOptions:
    """Parsed ``tile:`` block. ``tile_size`` None means 'auto' (``max_memory``, if set, bounds it).

    ``tile_pad`` defaults to min(32, tile_size // 4).
    """

    tile_size: int | None
    tile_pad: int = 32
    batch_size: int = 1
    max_memory: int | None = None

    @classmethod
    def from_opt(cls, opt: Mapping[str, Any] | None, where: str = 'tile',
                 names: Mapping[str, str] | None = None) -> 'TileOptions | None':
        """Validate an option block; None/empty -> None (no tiling).

        Errors name ``where.<key>``, or ``names[key]`` when given: a command line passes its flags
        (``{'max_memory': '--max-memory', ...}``) so that messages name options that exist.
        """
        if not opt:
            return None

        def label(key: str) -> str:
            return (names or {}).get(key) or f'{where}.{key}'

        if not isinstance(opt, Mapping):
            raise ValueError(f'{where} must be a mapping with tile_size / tile_pad / batch_size, got {opt!r}')
        unknown = set(opt) - {'tile_size', 'tile_pad', 'batch_size', 'max_memory'}
        if unknown:
            raise ValueError(f'{where}: unknown key(s) {sorted(unknown)}; '
                             'expected tile_size, tile_pad, batch_size, max_memory')
        raw_size = opt.get('tile_size')
        if raw_size is None:
            raise ValueError(f"{label('tile_size')} is required (a positive integer or 'auto')")
        max_memory = None
        if raw_size == 'auto':
            tile_size = None
            if opt.get('max_memory') is not None:
                max_memory = parse_memory_size(opt['max_memory'], label('max_memory'))
        else:
            if opt.get('max_memory') is not None:
                raise ValueError(f"{label('max_memory')} only applies to tile_size: auto (tile_size is {raw_size!r})")
            tile_size = _positive_int(raw_size, label('tile_size'), "or 'auto'")
        default_pad = min(32, tile_size // 4) if tile_size is not None else 32
        tile_pad = opt.get('tile_pad', default_pad)
        if isinstance(tile_pad, bool) or not isinstance(tile_pad, int) or tile_pad < 0:
            raise ValueError(f"{label('tile_pad')} must be an integer >= 0, got {tile_pad!r}")
        if tile_size is not None and tile_pad >= tile_size:
            raise ValueError(f"{label('tile_pad')} ({tile_pad}) must be smaller than {label('tile_size')} "
                             f'({tile_size})')
        batch_size = _positive_int(opt.get('batch_size', 1), label('batch_size'))
        return cls(tile_size, tile_pad, batch_size, max_memory)


def _positive_int(value: Any, key: str, extra: str = '') -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{key} must be a positive integer{" " + extra if extra else ""}, got {value!r}')
    return value


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``, neighbours sharing >= ``overlap``.

    The last tile is shifted back to end at ``length``, so all tiles have the same size.
    """
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(length: int, ramp: int, rise: bool, fall: bool, device: torch.device) -> Tensor:
    """1-D blending weights over a tile's output: 1 inside, lowered towards an edge shared with a neighbour.

    Across the ``ramp`` samples next to a shared edge the weight is ~0 for the outer quarter (where the
    tile lacks context), rises linearly over the middle half and is 1 for the inner quarter; the
    neighbour covers the outer quarter with weight 1, since neighbours overlap by at least ``ramp``.
    """
    weights = torch.ones(length, device=device)
    ramp = min(ramp, length)
    if ramp > 0:
        distance = torch.arange(ramp, device=device, dtype=torch.float32) + 0.5
        edge = ((distance - ramp / 4) / (ramp / 2)).clamp(1e-4, 1.0)
        if rise:
            weights[:ramp] = torch.minimum(weights[:ramp], edge)
        if fall:
            weights[-ramp:] = torch.minimum(weights[-ramp:], edge.flip(0))
    return weights


def tiled_forward(forward: Forward, lq: Tensor, scale: int, tile_size: int, overlap: int, batch_size: int = 1,
                  output_device: torch.device | str | None = None,
                  progress: Callable[[int, int], Any] | None = None) -> Tensor:
    """Run ``forward`` over overlapping tiles of ``lq`` and blend the outputs.

    Args:
        forward: network forward on a (N, C, th, tw) batch of tiles -> (N, C', scale*th, scale*tw).
        lq: (B, C, H, W) LR images.
        scale: upscaling factor of ``forward``.
        tile_size: LR tile side; an image no larger than a tile is run in one piece (output identical).
        overlap: LR pixels shared by neighbouring tiles, blended with linear ramps.
        batch_size: tiles per ``forward`` call.
        output_device: where the full-size output is assembled (default: ``lq``'s device). 'cpu' keeps
            a large output off the GPU.
        progress: called as ``progress(tiles done, tiles in all)`` after each batch of tiles (e.g. a
            ``TileProgressBar``); not called for an image that is one tile.

    Returns:
        (B, C', scale*H, scale*W) on ``output_device``.
    """
    b, _, h, w = lq.shape
    tile_h, tile_w = min(tile_size, h), min(tile_size, w)
    if tile_h == h and tile_w == w:
        out = forward(lq)
        return out if output_device is None else out.to(output_device)
    output_device = torch.device(output_device) if output_device is not None else lq.device
    positions = [(y, x) for y in tile_starts(h, tile_h, overlap) for x in tile_starts(w, tile_w, overlap)]
    ramp = overlap * scale
    out = weight_sum = None
    for first in range(0, len(positions), batch_size):
        group = positions[first:first + batch_size]
        batch = torch.cat([lq[..., y:y + tile_h, x:x + tile_w] for y, x in group])
        result = forward(batch).to(output_device)
        if out is None:  # accumulated in float32 whatever the network's dtype
            out = torch.zeros(b, result.shape[1], h * scale, w * scale, device=output_device)
            weight_sum = torch.zeros(1, 1, h * scale, w * scale, device=output_device)
            out_dtype = result.dtype
        for i, (y, x) in enumerate(group):
            rows = _ramp(tile_h * scale, ramp, rise=y > 0, fall=y + tile_h < h, device=output_device)
            cols = _ramp(tile_w * scale, ramp, rise=x > 0, fall=x + tile_w < w, device=output_device)
            weight = rows[:, None] * cols[None, :]
            region = (..., slice(y * scale, (y + tile_h) * scale), slice(x * scale, (x + tile_w) * scale))
            out[region] += result[i * b:(i + 1) * b].float() * weight
            weight_sum[region] += weight
        if progress is not None:
            progress(first + len(group), len(positions))
    return (out / weight_sum).to(out_dtype)


class TileProgressBar:
    """A ``progress`` callback for ``tiled_forward``: one transient tqdm bar of tiles per tiled image."""

    def __init__(self, file: Any = None, description: str = 'tiles') -> None:
        self.file = file
        self.description = description
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, unit='tile', desc=self.description, leave=False, file=self.file)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None


class PeakMemoryTracker(TorchDispatchMode):
    """Peak bytes of tensors created inside the ``with`` block and alive at the same time (any device).

    Tracks the storages of op outputs (views share their base's storage, so count once) and frees them
    when their storage is released; tensors that existed before (weights, the input) are not counted.
    On CPU this is the only peak measure; on CUDA prefer ``torch.cuda.max_memory_allocated``, which
    also sees the allocator's workspaces (``measure_peak_memory`` does).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._alive: dict[Any, int] = {}

    def _release(self, key: Any) -> None:
        self.live_bytes -= self._alive.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, Tensor):
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() and storage.data_ptr() in inputs:  # in-place op or view of an input
                continue
            key = (storage.device, storage.data_ptr()) if storage.data_ptr() else ('id', id(storage))
            if key in self._alive:
                continue
            self._alive[key] = storage.nbytes()
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._release, key)
        return out


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str) -> int:
    """Peak bytes allocated while running ``fn()`` on ``device``, above what was allocated before."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - baseline
    with PeakMemoryTracker() as tracker:
        fn()
    return tracker.peak_bytes


def auto_tile_size(forward: Forward, channels: int, max_memory: int, device: torch.device | str,
                   dtype: torch.dtype = torch.float32, multiple: int = 1, batch_size: int = 1,
                   probe_sides: tuple[int, int, int] = (32, 64, 96), largest: int | None = None,
                   budget_name: str = 'tile.max_memory') -> int:
    """Largest tile side whose forward pass is predicted to fit ``max_memory`` bytes.

    Peak memory is measured for square probe tiles (sides rounded up to ``multiple``) and fitted as
    ``a + b * area + c * area**2`` (window attention is linear in the area, ESRT's band attention
    quadratic). The result is a multiple of ``multiple``, capped at ``largest`` when given.

    Raises:
        ValueError: the budget does not even fit the smallest probe tile.
    """
    sides = sorted({multiple * math.ceil(side / multiple) for side in probe_sides})
    while len(sides) < 3:
        sides.append(sides[-1] + multiple)
    areas, peaks = [], []
    with torch.no_grad():
        for side in sides:
            probe = torch.rand(batch_size, channels, side, side, device=device, dtype=dtype)
            peaks.append(measure_peak_memory(lambda: forward(probe), device))
            areas.append(side * side)
    if peaks[0] > max_memory:
        raise ValueError(f'{budget_name} ({format_size(max_memory)}) is too small: a {sides[0]}x{sides[0]} tile '
                         f'already needs {format_size(peaks[0])}')
    c2, c1, c0 = np.polyfit(np.array(areas, dtype=np.float64), np.array(peaks, dtype=np.float64), 2)
    c2, c1 = max(c2, 0.0), max(c1, 0.0)
    budget = max_memory - c0
    if c2 > 0:
        area = (-c1 + math.sqrt(c1 * c1 + 4 * c2 * budget)) / (2 * c2)
    else:
        area = budget / c1 if c1 > 0 else float('inf')
    side = int(math.sqrt(area)) if math.isfinite(area) else (largest or 1 << 16)
    side = max(sides[0], side // multiple * multiple)
    if largest is not None:
        side = min(side, multiple * math.ceil(largest / multiple))
    return side


#: candidate tile sides of ``fastest_tile_size`` (rounded up to the network's multiple), besides the whole image
CANDIDATE_SIDES = (48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
#: candidates up to this side are timed; larger ones (and the whole image) are predicted from the fitted cost
PROBE_MAX_SIDE = 128


def tiles_per_image(height: int, width: int, side: int, overlap: int) -> int:
    """How many tiles ``tiled_forward`` cuts an (height, width) image into with ``side`` and ``overlap``."""
    tile_h, tile_w = min(side, height), min(side, width)
    if tile_h == height and tile_w == width:
        return 1
    overlap = min(overlap, side - 1)
    return len(tile_starts(height, tile_h, overlap)) * len(tile_starts(width, tile_w, overlap))


@dataclass(frozen=True)
class TileChoice:
    """What ``fastest_tile_size`` decided: the side (>= both image sides: the whole image in one piece) and the
    predicted seconds per image of every candidate side (``whole`` marks the whole-image candidate)."""

    side: int
    whole: int
    predicted: dict[int, float]

    def describe(self) -> str:
        def name(side: int) -> str:
            return 'whole image' if side == self.whole else str(side)
        others = ', '.join(f'{name(side)}: {seconds:.2f} s' for side, seconds in sorted(self.predicted.items()))
        return f'{name(self.side)} (predicted per image: {others})'


def _time_forward(forward: Forward, tile: Tensor) -> float:
    """Process CPU seconds of one ``forward(tile)`` (CPU time: less disturbed by other processes than wall time)."""
    start = time.process_time()
    forward(tile)
    return time.process_time() - start


def fastest_tile_size(forward: Forward, lq: Tensor, overlap: int, multiple: int = 1, batch_size: int = 1,
                      largest: int | None = None, candidates: tuple[int, ...] = CANDIDATE_SIDES,
                      probe_max: int = PROBE_MAX_SIDE,
                      timer: Callable[[Forward, Tensor], float] | None = None) -> TileChoice:
    """The tile side (multiple of ``multiple``) that predicts the shortest time for ``lq`` (see the module doc).

    The forward is timed (process CPU time) on crops of ``lq``'s first image at the candidate sides up to
    ``probe_max``, the whole image included when it is that small, after one untimed warm-up pass; the
    other candidates are predicted from the fitted cost. Images no larger than the smallest candidate run
    whole, unprobed.

    Args:
        forward: network forward on a (N, C, h, w) batch (any h, w).
        lq: (B, C, H, W) LR batch; only its first image is probed.
        overlap: tile overlap (``tile_pad``) in LR pixels.
        multiple: tile sides are multiples of this.
        batch_size: tiles per forward call.
        largest: no candidate above this side (a memory limit; the whole image is then a candidate only when
            it fits).
        timer: seconds of ``forward(tile)`` (default: process CPU time of one call).

    Returns:
        the ``TileChoice``.
    """
    height, width = lq.shape[-2:]

    def round_up(side: int) -> int:
        return multiple * math.ceil(side / multiple)

    full = round_up(max(height, width))  # a side that covers the whole image
    sides = sorted({round_up(side) for side in candidates if round_up(side) < max(height, width)})
    if largest is not None and largest < full:
        sides = [side for side in sides if side <= largest] or [round_up(min(largest, full))]
    else:
        sides.append(full)
    if len(sides) == 1:
        return TileChoice(sides[0], full, {})
    probes = [side for side in sides if side <= probe_max] or sides[:1]
    image = lq[:1]

    def crop(side: int) -> Tensor:
        tile = image[..., :min(side, height), :min(side, width)]
        return tile.expand(batch_size, *tile.shape[1:]) if batch_size > 1 else tile

    measured: dict[int, float] = {}
    with torch.no_grad():
        forward(crop(probes[0]))  # warm-up: threads, allocator, caches
        for side in probes:
            tile = crop(side)
            measured[tile.shape[-2] * tile.shape[-1]] = (timer or _time_forward)(forward, tile)
    areas = np.array(list(measured), dtype=np.float64)
    seconds = np.array(list(measured.values()), dtype=np.float64)
    degree = min(2, len(areas) - 1)
    coefficients = np.polyfit(areas, seconds, degree) if degree > 0 else np.array([seconds[0] / areas[0], 0.0])
    c2, c1, c0 = (max(float(c), 0.0) for c in np.concatenate([np.zeros(3 - len(coefficients)), coefficients]))
    predicted: dict[int, float] = {}
    for side in sides:
        area = min(side, height) * min(side, width)
        per_call = measured.get(area, c0 + c1 * area + c2 * area * area)
        predicted[side] = math.ceil(tiles_per_image(height, width, side, overlap) / batch_size) * per_call
    best = min(predicted, key=lambda side: (predicted[side], -side))
    return TileChoice(best, full, predicted)


class Tiler:
    """Tiled forward for one ``TileOptions``; resolves ``tile_size: auto`` once, on the first call.

    ``budget_name`` is how errors and ``auto_reason`` name the memory budget (``tile.max_memory``, ``--max-memory``);
    ``auto_reason`` says why 'auto' chose ``tile_size`` once it has.
    """

    def __init__(self, options: TileOptions, multiple: int = 1, output_device: torch.device | str | None = None,
                 progress: Callable[[int, int], Any] | None = None, budget_name: str = 'tile.max_memory'):
        self.options = options
        self.multiple = max(1, multiple)
        self.output_device = output_device
        self.progress = progress  # see tiled_forward
        self.budget_name = budget_name
        self.auto_reason = ''
        self.tile_size = options.tile_size
        self.choice: TileChoice | None = None

    @property
    def chosen_automatically(self) -> bool:
        """True once ``tile_size: auto`` has been resolved to ``self.tile_size``."""
        return self.options.tile_size is None and self.tile_size is not None

    def resolve_tile_size(self, forward: Forward, lq: Tensor) -> int:
        """The tile side to use; for 'auto', decided once (probes run on ``lq``'s device and dtype)."""
        if self.tile_size is not None:
            return self.tile_size
        budget = self.options.max_memory
        if lq.device.type == 'cuda':
            if budget is None:
                budget = int(0.9 * torch.cuda.mem_get_info(lq.device)[0])
            self.tile_size = auto_tile_size(forward, lq.shape[1], budget, lq.device, lq.dtype,
                                            multiple=self.multiple, batch_size=self.options.batch_size,
                                            budget_name=self.budget_name)
            self.auto_reason = f'the largest within {self.budget_name} {format_size(budget)}'
        else:
            largest = None
            if budget is not None:
                largest = auto_tile_size(forward, lq.shape[1], budget, lq.device, lq.dtype, multiple=self.multiple,
                                         batch_size=self.options.batch_size, budget_name=self.budget_name)
            self.choice = fastest_tile_size(forward, lq, self.options.tile_pad, self.multiple,
                                            self.options.batch_size, largest)
            self.tile_size = self.choice.side
            within = f', within {self.budget_name} {format_size(budget)}' if budget is not None else ''
            self.auto_reason = f'the fastest{within}: {self.choice.describe()}'
        logging.getLogger('basicsr').info(f'tile_size auto: {self.tile_size} ({self.auto_reason}, '
                                          f'measured on {lq.device})')
        return self.tile_size

    def __call__(self, forward: Forward, lq: Tensor, scale: int) -> Tensor:
        """(B, C, H, W) -> (B, C', scale*H, scale*W), tiled as configured."""
        tile_size = self.resolve_tile_size(forward, lq)
        overlap = min(self.options.tile_pad, tile_size - 1)
        return tiled_forward(forward, lq, scale, tile_size, overlap, self.options.batch_size, self.output_device,
                             self.progress)
