"""``sr-arch prepare subimages``: crop large images into overlapping sub-images for faster loading.

The same crops as BasicSR's ``scripts/data_preparation/extract_subimages.py``: windows of
``crop_size`` every ``step`` pixels, plus a last window flush with the bottom / right border when the
remainder exceeds ``thresh_size``; sub-image ``k`` (row-major, from 1) of ``0001.png`` is
``0001_s{k:03d}.png``. With ``--scale s`` the input is an LR folder: crop, step and threshold are the
HR values divided by ``s`` and a trailing ``x{s}`` is dropped from the names (DIV2K's ``0001x2.png``),
so LR and HR sub-images pair by name.

Differences from BasicSR's script, each deliberate:

* outputs are always PNG (BasicSR keeps the input extension, so JPEG inputs were re-encoded lossily);
* only a trailing ``x{s}`` is removed (BasicSR removes every ``x2``/``x3``/``x4``/``x8`` in the name);
* images smaller than the crop are skipped and counted (BasicSR crashes on them);
* ``--align`` (default 1 = BasicSR) moves the last window to a multiple of ``align`` HR pixels, so that
  HR and LR sub-images stay aligned even when the HR size is not a multiple of the scale (use 12 for
  x2/x3/x4 from one HR folder). An HR run warns, naming the images and scales, when an LR run would not
  pair with it;
* a run that writes no sub-image (every image smaller than the crop, or unreadable) fails and leaves
  nothing behind (BasicSR leaves an empty folder that later runs skip as done).
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sr_arch.data.prepare.common import (
    BadImages,
    CorruptImageError,
    PrepareError,
    StagedOutput,
    add_common_arguments,
    list_images,
    plural,
    positive_int,
    read_image,
    run_tasks,
    write_png,
)

#: LR scales whose sub-images ``misaligned_scales`` checks against an HR run's
CHECKED_SCALES = (2, 3, 4)


@dataclass
class SubimageResult:
    """What ``extract_subimages`` did; ``misaligned`` maps a scale to the HR images (path, HxW) whose
    sub-images an LR run at that scale would not match (see ``misaligned_scales``)."""

    output: str
    skipped_complete: bool = False
    images: int = 0
    subimages: int = 0
    too_small: list[str] = field(default_factory=list)
    misaligned: dict[int, list[str]] = field(default_factory=dict)
    bad: BadImages = field(default_factory=BadImages)


def crop_positions(size: int, crop: int, step: int, thresh: int = 0, align: int = 1) -> list[int]:
    """Top (or left) offsets of the windows along one axis of ``size`` pixels, BasicSR's rule.

    ``align`` > 1 rounds the extra border window down to a multiple of ``align``.
    Returns [] when ``size < crop``.
    """
    if size < crop:
        return []
    positions = list(range(0, size - crop + 1, step))
    if size - (positions[-1] + crop) > thresh:
        last = (size - crop) // align * align
        if last > positions[-1]:
            positions.append(last)
    return positions


def misaligned_scales(height: int, width: int, crop: int, step: int, thresh: int = 0, align: int = 1,
                      scales: Sequence[int] = CHECKED_SCALES) -> list[int]:
    """Scales at which the sub-images of an HR image of ``height`` x ``width`` and those of its LR differ.

    An LR run (``--scale s``) places its windows on the LR size times s, i.e. the HR size rounded down to
    a multiple of s; when that moves or drops the border window, HR and LR sub-images no longer pair
    (different counts, shifted content). Scales that do not divide ``crop`` / ``step`` (or ``align``) are
    not checked: an LR run cannot use them.
    """
    found = []
    for s in scales:
        if crop % s or step % s or (align > 1 and align % s):
            continue
        if any(crop_positions(size, crop, step, thresh, align)
               != crop_positions(size // s * s, crop, step, thresh, align) for size in (height, width)):
            found.append(s)
    return found


def strip_scale_suffix(stem: str, scale: int) -> str:
    """``0001x2`` -> ``0001`` for scale 2; other names unchanged."""
    return re.sub(rf'x{scale}$', '', stem) if scale > 1 else stem


@dataclass(frozen=True)
class _Task:
    path: str
    stem: str
    output_dir: str
    crop: int
    step: int
    thresh: int
    align: int
    scale: int
    compression_level: int


def _crop_one(task: _Task) -> tuple[str, str, CorruptImageError | None]:
    """Write every sub-image of one image; returns (stem, 'count height width', error); count -1 = smaller
    than the crop."""
    try:
        img = read_image(task.path)
    except CorruptImageError as err:
        return task.stem, '', err
    count = _write_crops(task, img)
    return task.stem, f'{count} {img.shape[0]} {img.shape[1]}', None


def _write_crops(task: _Task, img: np.ndarray) -> int:
    s = task.scale
    # positions are computed on the HR grid (LR size * s) so that HR and LR crops correspond
    tops = [p // s for p in crop_positions(img.shape[0] * s, task.crop, task.step, task.thresh, task.align)]
    lefts = [p // s for p in crop_positions(img.shape[1] * s, task.crop, task.step, task.thresh, task.align)]
    if not tops or not lefts:
        return -1
    size = task.crop // s
    index = 0
    for top in tops:
        for left in lefts:
            index += 1
            patch = np.ascontiguousarray(img[top:top + size, left:left + size, ...])
            write_png(os.path.join(task.output_dir, f'{task.stem}_s{index:03d}.png'), patch, task.compression_level)
    return index


def extract_subimages(inputs: str | Sequence[str], output: str, crop_size: int = 480, step: int = 240,
                      thresh_size: int = 0, scale: int = 1, align: int = 1, compression_level: int = 3,
                      workers: int = 0, on_error: str = 'stop', overwrite: bool = False) -> SubimageResult:
    """Crop every image of the ``inputs`` folders into ``output`` (see the module docstring).

    Args:
        inputs: one folder or several (e.g. DIV2K_train_HR and Flickr2K_HR for DF2K); names must not clash.
        crop_size, step, thresh_size: in HR pixels; divided by ``scale`` for an LR folder.
        scale: 1 for HR folders, s for an ``X{s}`` LR folder.
        align: the extra border window is moved to a multiple of ``align`` HR pixels (1 = BasicSR).
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    for name, value in (('crop_size', crop_size), ('step', step), ('scale', scale), ('align', align)):
        if value <= 0:
            raise PrepareError(f'--{name.replace("_", "-")} must be positive, got {value}')
    if scale > 1:
        for name, value in (('crop_size', crop_size), ('step', step)):
            if value % scale:
                raise PrepareError(f'--{name.replace("_", "-")} {value} is not divisible by --scale {scale}; '
                                   'give HR values that are')
        if align > 1 and align % scale:
            raise PrepareError(f'--align {align} must be a multiple of --scale {scale}')
    result = SubimageResult(output=output, bad=BadImages(on_error))
    staged = StagedOutput(output, dict(step='subimages', inputs=[os.path.abspath(p) for p in inputs],
                                       crop_size=crop_size, step_size=step, thresh_size=thresh_size, scale=scale,
                                       align=align, compression_level=compression_level), overwrite)
    if staged.complete:
        print(f'{output} already exists: skipped (pass --overwrite to rebuild it)')
        result.skipped_complete = True
        return result

    sources: dict[str, str] = {}
    for folder in inputs:
        for rel in list_images(folder):
            stem = strip_scale_suffix(os.path.splitext(rel)[0], scale)
            path = os.path.join(folder, rel)
            if stem in sources:
                raise PrepareError(f'two inputs give the same sub-image names {stem}_s*.png: {sources[stem]} and '
                                   f'{path}')
            sources[stem] = path
    if not sources:
        raise PrepareError(f'no images found in {", ".join(inputs)}')

    staged.begin()
    try:
        tasks = [_Task(path, stem, staged.partial, crop_size, step, thresh_size, align, scale, compression_level)
                 for stem, path in sorted(sources.items()) if not staged.is_done(stem)]
        progress = f'subimages -> {os.path.basename(output)}'
        for stem, info, error in run_tasks(_crop_one, tasks, workers, desc=progress):
            if error is not None:
                result.bad.add(error)
                continue
            staged.mark_done(stem, info)
        sizes = []
        for stem, info in staged.done.items():
            count, height, width = (int(v) for v in info.split())
            sizes.append((stem, height, width))
            if count < 0:
                result.too_small.append(f'{sources.get(stem, stem)} ({height}x{width})')
            else:
                result.images += 1
                result.subimages += count
        if not result.subimages:
            staged.discard()
            raise PrepareError(_nothing_written(inputs, crop_size, scale, result))
        if scale == 1:
            for stem, height, width in sizes:
                for s in misaligned_scales(height, width, crop_size, step, thresh_size, align):
                    result.misaligned.setdefault(s, []).append(f'{sources[stem]} ({height}x{width})')
        staged.commit()
    finally:
        staged.close()
    return result


def _nothing_written(inputs: Sequence[str], crop_size: int, scale: int, result: SubimageResult) -> str:
    """Why a run produced no sub-image, with what to change."""
    where = ', '.join(inputs)
    if result.too_small:
        crop = crop_size // scale
        return (f'no sub-images written: all {plural(len(result.too_small), "image")} in {where} are smaller than the '
                f'crop ({crop}x{crop} pixels), e.g. {", ".join(result.too_small[:3])}; pass a smaller --crop-size')
    return f'nothing written: no image of {where} could be read ({result.bad.one_line()})'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--input', '-i', nargs='+', required=True,
                        help='input folder(s); several are merged into one output (DF2K = DIV2K + Flickr2K)')
    parser.add_argument('--output', '-o', required=True, help='output folder, e.g. datasets/DF2K/DF2K_HR_sub')
    parser.add_argument('--crop-size', type=positive_int, default=480, help='HR crop size (default 480)')
    parser.add_argument('--step', type=positive_int, default=240, help='HR step between crops (default 240)')
    parser.add_argument('--thresh-size', type=int, default=0,
                        help='a border remainder larger than this gets an extra, border-flush crop (default 0)')
    parser.add_argument('--scale', type=positive_int, default=1,
                        help='the input is an LR x{scale} folder: crop/step/thresh are divided by it and a trailing '
                             '"x{scale}" is dropped from the names (default 1: HR)')
    parser.add_argument('--align', type=positive_int, default=1,
                        help='round the border crop down to a multiple of this many HR pixels; 12 keeps x2/x3/x4 '
                             'LR crops aligned with the HR ones for any image size (default 1: as BasicSR)')
    parser.add_argument('--compression-level', type=int, default=3, choices=range(10), metavar='0-9',
                        help='PNG compression level (default 3, as BasicSR)')
    add_common_arguments(parser)


def misalignment_warning(misaligned: dict[int, list[str]], total: int) -> str:
    """The warning printed for ``SubimageResult.misaligned``: which scales, how many images, what to do."""
    scales = sorted(misaligned)
    paths = sorted({path for found in misaligned.values() for path in found})
    return (f'warning: {plural(len(paths), "image")} of {total} have sides that are not multiples of '
            f'{" / ".join(map(str, scales))} (e.g. {", ".join(paths[:3])}): the sub-images of their '
            f'{"/".join(f"x{s}" for s in scales)} LR (subimages --scale s) will not pair with these by count and '
            'position. Run both the HR and the LR extraction with --align 12 (add --overwrite here) to keep x2/x3/x4 '
            'aligned, or mod-crop the HR first (prepare bicubic --hr-output).')


def run(args: argparse.Namespace) -> int:
    result = extract_subimages(args.input, args.output, args.crop_size, args.step, args.thresh_size, args.scale,
                               args.align, args.compression_level, args.workers, args.on_error, args.overwrite)
    if not result.skipped_complete:
        print(f'{result.output}: {plural(result.subimages, "sub-image")} from {plural(result.images, "image")}')
    if result.too_small:
        print(f'skipped {plural(len(result.too_small), "image")} smaller than the crop: '
              f'{", ".join(result.too_small[:10])}')
    if result.misaligned:
        print(misalignment_warning(result.misaligned, result.images + len(result.too_small)))
    if result.bad.errors:
        print(result.bad.summary())
    return 0
